//! The pure algorithms behind SORT and THREAD (RFC 5256): the base subject
//! (§2.1), the sort keys of §3 and RFC 5957 (DISPLAYFROM, DISPLAYTO), and
//! THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §2.2 and §3, the
//! latter in [`references`]). Everything works on the envelope the store
//! precomputes (with the References field); no bodies.

use std::cmp::Ordering;

use crate::command::{SortCriterion, SortKey};
use crate::model::{Address, Envelope, MessageMeta};

/// Decodes RFC 2047 encoded words of a header value into UTF-8.
fn decode_header(raw: &[u8]) -> String {
    let mut msg = b"Subject: ".to_vec();
    msg.extend_from_slice(raw);
    msg.extend_from_slice(b"\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse(&msg)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start of `s`: its length.
fn blob_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(['[', ']'])?;
    if rest[end..].starts_with('[') {
        return None;
    }
    let after = &rest[end + 1..];
    let trimmed = after.trim_start_matches([' ', '\t']);
    Some(s.len() - trimmed.len())
}

/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`: its length.
fn refwd_len(s: &str) -> Option<usize> {
    let lower = s.get(..3).unwrap_or(s).to_ascii_lowercase();
    let n = if lower.starts_with("re") {
        2
    } else if lower.starts_with("fwd") {
        3
    } else if lower.starts_with("fw") {
        2
    } else {
        return None;
    };
    let mut rest = s[n..].trim_start_matches([' ', '\t']);
    if let Some(b) = blob_len(rest) {
        rest = &rest[b..];
    }
    let rest = rest.strip_prefix(':')?;
    Some(s.len() - rest.len())
}

/// `subj-leader = (*subj-blob subj-refwd) / WSP`: its length.
fn leader_len(s: &str) -> Option<usize> {
    if s.starts_with([' ', '\t']) {
        return Some(1);
    }
    let mut i = 0;
    loop {
        if let Some(n) = refwd_len(&s[i..]) {
            return Some(i + n);
        }
        i += blob_len(&s[i..])?;
    }
}

/// The base subject (RFC 5256 §2.1) and whether the subject marked a
/// reply or forward. Comparison uses i;unicode-casemap-like upper case.
#[must_use]
pub fn base_subject(raw: &[u8]) -> (String, bool) {
    // (1) decode, collapse whitespace runs to one space.
    let decoded = decode_header(raw);
    let mut s = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut is_reply = false;
    loop {
        // (2) subj-trailer: "(fwd)" / WSP.
        loop {
            let t = s.trim_end_matches([' ', '\t']);
            let t = match t.len().checked_sub(5) {
                Some(i) if t.is_char_boundary(i) && t[i..].eq_ignore_ascii_case("(fwd)") => {
                    is_reply = true;
                    &t[..i]
                }
                _ => t,
            };
            if t.len() == s.len() {
                break;
            }
            s = t.to_string();
        }
        // (3)-(5) subj-leader and a leading subj-blob, until no change.
        loop {
            let before = s.len();
            while let Some(n) = leader_len(&s) {
                if s[..n].trim().is_empty() {
                    s = s[n..].to_string();
                    continue;
                }
                is_reply = true;
                s = s[n..].to_string();
            }
            if let Some(n) = blob_len(&s)
                && !s[n..].is_empty()
            {
                s = s[n..].to_string();
            }
            if s.len() == before {
                break;
            }
        }
        // (6) "[fwd:" ... "]".
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
            is_reply = true;
            continue;
        }
        break;
    }
    (s.to_uppercase(), is_reply)
}

/// The sent date (RFC 5256 §2.2): the Date header in UTC, or the internal
/// date when it is missing or unparsable.
#[must_use]
pub fn sent_date(m: &MessageMeta) -> i64 {
    envelope(m)
        .and_then(|e| e.date.as_deref())
        .and_then(|d| {
            let d = String::from_utf8_lossy(d);
            chrono::DateTime::parse_from_rfc2822(d.trim()).ok()
        })
        .map_or_else(|| m.internal_date.unwrap_or(0), |d| d.timestamp())
}

fn envelope(m: &MessageMeta) -> Option<&Envelope> {
    m.structure.as_ref()?.envelope.as_ref()
}

/// The addr-mailbox of the first address, casemapped (RFC 5256 §3 CC,
/// FROM, TO).
fn first_mailbox(list: &[Address]) -> String {
    list.first()
        .and_then(|a| a.mailbox.as_deref())
        .map(|m| decode_header(m).to_uppercase())
        .unwrap_or_default()
}

/// RFC 5957 §3: the display name of the first address if it has a
/// non-empty one, else its addr-spec; casemapped.
fn display(list: &[Address]) -> String {
    let Some(a) = list.first() else {
        return String::new();
    };
    if let Some(n) = a.name.as_deref() {
        let n = decode_header(n);
        if !n.trim().is_empty() {
            return n.trim().to_uppercase();
        }
    }
    let mut spec = String::from_utf8_lossy(a.mailbox.as_deref().unwrap_or_default()).into_owned();
    if let Some(h) = a.host.as_deref() {
        spec.push('@');
        spec.push_str(&String::from_utf8_lossy(h));
    }
    spec.to_uppercase()
}

/// One message's precomputed sort keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Num(i64),
    Text(String),
}

fn value(m: &MessageMeta, key: SortKey) -> Value {
    let env = envelope(m);
    let list = |f: fn(&Envelope) -> &Vec<Address>| env.map(f).map(Vec::as_slice).unwrap_or(&[]);
    match key {
        SortKey::Arrival => Value::Num(m.internal_date.unwrap_or(0)),
        SortKey::Date => Value::Num(sent_date(m)),
        SortKey::Size => Value::Num(i64::try_from(m.size).unwrap_or(i64::MAX)),
        SortKey::Subject => Value::Text(
            env.and_then(|e| e.subject.as_deref())
                .map(|s| base_subject(s).0)
                .unwrap_or_default(),
        ),
        SortKey::Cc => Value::Text(first_mailbox(list(|e| &e.cc))),
        SortKey::From => Value::Text(first_mailbox(list(|e| &e.from))),
        SortKey::To => Value::Text(first_mailbox(list(|e| &e.to))),
        SortKey::DisplayFrom => Value::Text(display(list(|e| &e.from))),
        SortKey::DisplayTo => Value::Text(display(list(|e| &e.to))),
    }
}

fn cmp_value(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Num(_), Value::Text(_)) => Ordering::Less,
        (Value::Text(_), Value::Num(_)) => Ordering::Greater,
    }
}

/// Sorts messages by `criteria` (RFC 5256 §3); ties keep mailbox order
/// (UID order, which is sequence order). Returns UIDs.
#[must_use]
pub fn sort(messages: &[MessageMeta], criteria: &[SortCriterion]) -> Vec<u32> {
    let mut rows: Vec<(u32, Vec<Value>)> = messages
        .iter()
        .map(|m| (m.uid, criteria.iter().map(|c| value(m, c.key)).collect()))
        .collect();
    rows.sort_by(|(ua, va), (ub, vb)| {
        for (i, c) in criteria.iter().enumerate() {
            let o = cmp_value(&va[i], &vb[i]);
            let o = if c.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        ua.cmp(ub)
    });
    rows.into_iter().map(|(u, _)| u).collect()
}

/// A sequence set that keeps `nums` in their order (RFC 5267 §3.1 ALL):
/// runs of consecutive ascending numbers become `a:b`.
#[must_use]
pub fn ordered_set(nums: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < nums.len() {
        let mut j = i;
        while j + 1 < nums.len() && nums[j].checked_add(1) == Some(nums[j + 1]) {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}:{}", nums[i], nums[j]));
        } else {
            out.push_str(&nums[i].to_string());
        }
        i = j + 1;
    }
    out
}

/// A thread: a message and its children (RFC 5256 §4 `thread-list`).
/// `uid` is `None` for a dummy parent that stands for a message not in the
/// mailbox (THREAD=REFERENCES keeps one only at the top, with two or more
/// children: `thread-nested`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub uid: Option<u32>,
    pub children: Vec<Thread>,
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): sort by base subject then sent
/// date; each run of equal base subjects is a thread whose first message
/// is the parent of the rest; threads ordered by their first's sent date.
#[must_use]
pub fn ordered_subject(messages: &[MessageMeta]) -> Vec<Thread> {
    let mut rows: Vec<(String, i64, u32)> = messages
        .iter()
        .map(|m| {
            let subj = envelope(m)
                .and_then(|e| e.subject.as_deref())
                .map(|s| base_subject(s).0)
                .unwrap_or_default();
            (subj, sent_date(m), m.uid)
        })
        .collect();
    rows.sort();
    let mut threads: Vec<(i64, Thread)> = Vec::new();
    let mut last: Option<&str> = None;
    for (subj, date, uid) in &rows {
        let leaf = Thread {
            uid: Some(*uid),
            children: Vec::new(),
        };
        match (last, threads.last_mut()) {
            (Some(l), Some((_, t))) if l == subj => t.children.push(leaf),
            _ => threads.push((*date, leaf)),
        }
        last = Some(subj);
    }
    threads.sort_by_key(|(d, t)| (*d, t.uid));
    threads.into_iter().map(|(_, t)| t).collect()
}

/// `thread-list` / `thread-members` (RFC 5256 §4), numbers via `num`.
pub fn write_thread(out: &mut String, t: &Thread, num: &impl Fn(u32) -> u32, top: bool) {
    let Some(uid) = t.uid else {
        // A dummy parent: `thread-nested`, a list of its children's lists.
        out.push('(');
        for c in &t.children {
            out.push('(');
            write_thread(out, c, num, false);
            out.push(')');
        }
        out.push(')');
        return;
    };
    if top {
        out.push('(');
    }
    out.push_str(&num(uid).to_string());
    match t.children.as_slice() {
        [] => {}
        [only] => {
            out.push(' ');
            write_thread(out, only, num, false);
        }
        many => {
            out.push(' ');
            for c in many {
                out.push('(');
                write_thread(out, c, num, false);
                out.push(')');
            }
        }
    }
    if top {
        out.push(')');
    }
}

mod references;
pub use references::references;

#[cfg(test)]
mod tests;
