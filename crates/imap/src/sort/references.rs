//! THREAD=REFERENCES (RFC 5256 §2.2 and §3): threads from the
//! Message-ID / References / In-Reply-To fields ("JWZ" threading), then
//! top-level threads with the same base subject gathered, every set of
//! siblings ordered by sent date.
//!
//! Bounds: each message contributes at most [`MAX_REFS`] of its nearest
//! references (the store keeps the last 4 KiB of the field), so the work is
//! linear in the number of messages; a mailbox's messages stored before
//! References was recorded thread by In-Reply-To (RFC 5256 §2.2 step 1A).

use std::collections::HashMap;

use super::{Thread, base_subject, envelope, sent_date};
use crate::model::MessageMeta;

/// References used per message (the last ones: nearest ancestors).
const MAX_REFS: usize = 64;

/// The msg-ids (`<...>`, without the brackets) in a field, in order.
fn msg_ids(raw: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(open) = rest.iter().position(|&b| b == b'<') {
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|&b| b == b'>') else {
            break;
        };
        let id = after[..close].trim_ascii();
        if !id.is_empty() && !id.iter().any(|b| b.is_ascii_whitespace() || *b == b'<') {
            out.push(id);
        }
        rest = &after[close + 1..];
    }
    out
}

/// One container of the algorithm: a message of the mailbox (`msg`, its
/// index in UID order) or a dummy for an id only referred to.
#[derive(Default)]
struct Node {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest {
    nodes: Vec<Node>,
}

impl Forest {
    fn add(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Node {
            msg,
            ..Node::default()
        });
        self.nodes.len() - 1
    }

    /// Whether `a` is `b` or one of `b`'s ancestors.
    fn is_ancestor_or_self(&self, a: usize, mut b: usize) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.nodes[b].parent {
                Some(p) => b = p,
                None => return false,
            }
        }
    }
}

/// Step 1 (RFC 5256 §2.2 "REFERENCES" (1)): containers linked by
/// Message-ID and References (In-Reply-To when there is no References).
fn link(messages: &[MessageMeta]) -> Forest {
    let mut f = Forest { nodes: Vec::new() };
    let mut by_id: HashMap<&[u8], usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let env = envelope(m);
        // (A) The message's own container; a missing or repeated
        // Message-ID gets a unique one.
        let own = env
            .and_then(|e| e.message_id.as_deref())
            .and_then(|raw| msg_ids(raw).first().copied());
        let me = match own {
            Some(id) => match by_id.get(id) {
                Some(&n) if f.nodes[n].msg.is_none() => {
                    f.nodes[n].msg = Some(i);
                    n
                }
                Some(_) => f.add(Some(i)),
                None => {
                    let n = f.add(Some(i));
                    by_id.insert(id, n);
                    n
                }
            },
            None => f.add(Some(i)),
        };
        let refs: Vec<&[u8]> = match env.and_then(|e| e.references.as_deref()).map(msg_ids) {
            Some(r) if !r.is_empty() => r,
            _ => env
                .and_then(|e| e.in_reply_to.as_deref())
                .map(msg_ids)
                .and_then(|r| r.first().copied())
                .into_iter()
                .collect(),
        };
        let refs = &refs[refs.len().saturating_sub(MAX_REFS)..];
        // (B) Each reference the parent of the next, unless already linked
        // or the link would make a loop.
        let mut prev: Option<usize> = None;
        for id in refs {
            let n = match by_id.get(id) {
                Some(&n) => n,
                None => {
                    let n = f.add(None);
                    by_id.insert(id, n);
                    n
                }
            };
            if let Some(p) = prev
                && f.nodes[n].parent.is_none()
                && !f.is_ancestor_or_self(n, p)
            {
                f.nodes[n].parent = Some(p);
            }
            prev = Some(n);
        }
        // (C) The last reference is the message's parent, replacing any
        // presumed one; none when it has no references (or a loop).
        f.nodes[me].parent = match prev {
            Some(p) if !f.is_ancestor_or_self(me, p) => Some(p),
            _ => None,
        };
    }
    for n in 0..f.nodes.len() {
        if let Some(p) = f.nodes[n].parent {
            f.nodes[p].children.push(n);
        }
    }
    f
}

/// Step 4: dummies without children go; a dummy's children take its place,
/// except at the top where a dummy with two or more children stays.
fn prune(f: &mut Forest, level: Vec<usize>, top: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for n in level {
        let kids = std::mem::take(&mut f.nodes[n].children);
        let kids = prune(f, kids, false);
        if f.nodes[n].msg.is_some() || (top && kids.len() > 1) {
            f.nodes[n].children = kids;
            out.push(n);
        } else {
            out.extend(kids);
        }
    }
    out
}

/// The sort key of a container: sent date then mailbox order; a dummy
/// sorts as its first child (RFC 5256 §2.2 steps (5) and (6)).
fn key(f: &Forest, messages: &[MessageMeta], n: usize) -> (i64, usize) {
    match f.nodes[n].msg {
        Some(i) => (sent_date(&messages[i]), i),
        None => f.nodes[n]
            .children
            .first()
            .map_or((i64::MAX, usize::MAX), |&c| key(f, messages, c)),
    }
}

/// Sorts every set of siblings below `level` (children first), then
/// `level` itself.
fn sort_level(f: &mut Forest, messages: &[MessageMeta], level: &mut [usize]) {
    for &n in level.iter() {
        let mut kids = std::mem::take(&mut f.nodes[n].children);
        sort_level(f, messages, &mut kids);
        f.nodes[n].children = kids;
    }
    level.sort_by_key(|&n| key(f, messages, n));
}

/// The base subject of a top-level container and whether it was a reply or
/// forward; a dummy speaks through its first child.
fn subject(f: &Forest, messages: &[MessageMeta], n: usize) -> (String, bool) {
    let i = match f.nodes[n].msg {
        Some(i) => Some(i),
        None => f.nodes[n].children.first().and_then(|&c| f.nodes[c].msg),
    };
    i.and_then(|i| envelope(&messages[i]))
        .and_then(|e| e.subject.as_deref())
        .map(base_subject)
        .unwrap_or_default()
}

/// Step (5): top-level threads with the same base subject are gathered.
fn gather_subjects(f: &mut Forest, messages: &[MessageMeta], roots: Vec<usize>) -> Vec<usize> {
    let subjects: Vec<(String, bool)> = roots.iter().map(|&r| subject(f, messages, r)).collect();
    // (B) One container per subject: a dummy wins over a message, a
    // message over a reply.
    let mut table: HashMap<&str, usize> = HashMap::new();
    for (k, (s, reply)) in subjects.iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        match table.get(s.as_str()) {
            None => {
                table.insert(s, k);
            }
            Some(&t) => {
                let (t_dummy, k_dummy) = (
                    f.nodes[roots[t]].msg.is_none(),
                    f.nodes[roots[k]].msg.is_none(),
                );
                if (k_dummy && !t_dummy) || (subjects[t].1 && !reply && !t_dummy) {
                    table.insert(s, k);
                }
            }
        }
    }
    // (C) The others join the table's container (which may change: the
    // holder of a subject and whether it is a reply).
    let mut holder: HashMap<&str, (usize, bool)> = table
        .iter()
        .map(|(s, &k)| (*s, (roots[k], subjects[k].1)))
        .collect();
    let mut out = Vec::new();
    for (k, (s, reply)) in subjects.iter().enumerate() {
        let r = roots[k];
        let Some(&anchor) = table.get(s.as_str()).filter(|_| !s.is_empty()) else {
            out.push(r);
            continue;
        };
        if anchor == k {
            continue;
        }
        let (t, t_reply) = holder[s.as_str()];
        let t_dummy = f.nodes[t].msg.is_none();
        let r_dummy = f.nodes[r].msg.is_none();
        if t_dummy && r_dummy {
            let kids = std::mem::take(&mut f.nodes[r].children);
            f.nodes[t].children.extend(kids);
        } else if t_dummy || (!t_reply && *reply) {
            f.nodes[t].children.push(r);
        } else if r_dummy || (t_reply && !*reply) {
            f.nodes[r].children.push(t);
            holder.insert(s, (r, *reply));
        } else {
            let d = f.add(None);
            f.nodes[d].children = vec![t, r];
            holder.insert(s, (d, false));
        }
    }
    out.extend(holder.into_values().map(|(n, _)| n));
    out
}

fn build(f: &Forest, n: usize, messages: &[MessageMeta]) -> Thread {
    Thread {
        uid: f.nodes[n].msg.map(|i| messages[i].uid),
        children: f.nodes[n]
            .children
            .iter()
            .map(|&c| build(f, c, messages))
            .collect(),
    }
}

/// THREAD=REFERENCES over `messages` (in UID order, which stands for the
/// mailbox order that breaks ties of sent date).
#[must_use]
pub fn references(messages: &[MessageMeta]) -> Vec<Thread> {
    let mut f = link(messages);
    // (2) The root set.
    let roots: Vec<usize> = (0..f.nodes.len())
        .filter(|&n| f.nodes[n].parent.is_none())
        .collect();
    let mut roots = prune(&mut f, roots, true);
    sort_level(&mut f, messages, &mut roots);
    let mut roots = gather_subjects(&mut f, messages, roots);
    // (6) Every set of siblings by sent date, the youngest sets first.
    sort_level(&mut f, messages, &mut roots);
    roots.iter().map(|&r| build(&f, r, messages)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Envelope, Structure};

    fn m(uid: u32, date: &str, subject: &str, id: &str, refs: &str, irt: &str) -> MessageMeta {
        let opt = |s: &str| (!s.is_empty()).then(|| s.as_bytes().to_vec());
        MessageMeta {
            uid,
            internal_date: Some(i64::from(uid)),
            structure: Some(Structure {
                envelope: Some(Envelope {
                    date: opt(date),
                    subject: opt(subject),
                    message_id: opt(id),
                    references: opt(refs),
                    in_reply_to: opt(irt),
                    ..Envelope::default()
                }),
                parts: Vec::new(),
            }),
            ..MessageMeta::default()
        }
    }

    fn render(messages: &[MessageMeta]) -> String {
        let mut s = String::new();
        for t in references(messages) {
            crate::sort::write_thread(&mut s, &t, &|u| u, true);
        }
        s
    }

    fn d(day: u32) -> String {
        format!("{day:02} Nov 2026 10:00:00 +0000")
    }

    #[test]
    fn replies_nest_under_their_parents() {
        let msgs = [
            m(1, &d(1), "Plan", "<a@x>", "", ""),
            m(2, &d(2), "Re: Plan", "<b@x>", "<a@x>", ""),
            m(3, &d(3), "Re: Plan", "<c@x>", "<a@x> <b@x>", ""),
            m(4, &d(4), "Re: Plan", "<e@x>", "<a@x>", ""),
            m(5, &d(5), "Other", "<f@x>", "", ""),
        ];
        assert_eq!(render(&msgs), "(1 (2 3)(4))(5)");
    }

    #[test]
    fn in_reply_to_is_used_without_references() {
        let msgs = [
            m(1, &d(1), "Plan", "<a@x>", "", ""),
            m(2, &d(2), "Re: Plan", "<b@x>", "", "<a@x>"),
        ];
        assert_eq!(render(&msgs), "(1 2)");
    }

    #[test]
    fn a_missing_parent_becomes_a_dummy_only_with_two_children() {
        // <gone@x> is not in the mailbox: two replies to it share a dummy;
        // one reply alone is promoted to the top.
        let msgs = [
            m(1, &d(2), "Re: Gone", "<b@x>", "<gone@x>", ""),
            m(2, &d(3), "Re: Gone", "<c@x>", "<gone@x>", ""),
            m(3, &d(1), "Re: Lonely", "<e@x>", "<nowhere@x>", ""),
        ];
        assert_eq!(render(&msgs), "(3)((1)(2))");
    }

    #[test]
    fn same_subject_threads_are_gathered() {
        // No references between them: the original and a later "Re:" of
        // the same base subject end up in one thread, the reply below.
        let msgs = [
            m(1, &d(1), "Lunch", "<a@x>", "", ""),
            m(2, &d(2), "Re: Lunch", "<b@x>", "", ""),
            m(3, &d(3), "Lunch", "<c@x>", "", ""),
        ];
        // 1 and 3 are both originals: a dummy holds them, 2 goes under 1.
        assert_eq!(render(&msgs), "((1 2)(3))");
    }

    #[test]
    fn loops_and_duplicates_do_not_hang_or_lose_messages() {
        let msgs = [
            m(1, &d(1), "A", "<a@x>", "<b@x>", ""),
            m(2, &d(2), "B", "<b@x>", "<a@x>", ""),
            m(3, &d(3), "C", "<a@x>", "", ""),
            m(4, &d(4), "D", "", "<a@x> <a@x> <bad", ""),
        ];
        let out = render(&msgs);
        for uid in ["1", "2", "3", "4"] {
            assert!(
                out.split(|c: char| !c.is_ascii_digit()).any(|t| t == uid),
                "{uid} missing in {out}"
            );
        }
        // 2 claims 1 as its reply and 1 claims 2: the first link wins.
        assert_eq!(out, "(2 1 4)(3)");
    }

    #[test]
    fn ties_in_date_keep_mailbox_order() {
        let msgs = [
            m(1, &d(1), "X", "<a@x>", "", ""),
            m(2, &d(1), "Y", "<b@x>", "", ""),
        ];
        assert_eq!(render(&msgs), "(1)(2)");
    }

    #[test]
    fn msg_ids_are_taken_from_angle_brackets() {
        assert_eq!(
            msg_ids(b" <a@x>\t(comment) <b@y>  <> < c@z > <broken"),
            vec![&b"a@x"[..], b"b@y", b"c@z"]
        );
    }
}
