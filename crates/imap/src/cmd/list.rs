//! LIST and LSUB (RFC 9051 §6.3.9, RFC 3501 §6.3.9), with LIST-EXTENDED
//! (RFC 5258), LIST-STATUS (RFC 5819) and SPECIAL-USE (RFC 6154); STATUS
//! (RFC 9051 §6.3.11, RFC 8438 SIZE) and NAMESPACE (RFC 2342).

use std::collections::BTreeMap;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{ListReturn, ListSelect, StatusItem};
use crate::io::Io;
use crate::mailbox_name::{self, Pattern};
use crate::model::MailboxInfo;
use crate::mutf7;
use crate::response::{Code, Status};
use crate::session::Session;
use crate::store::store_error;

/// Most patterns in one LIST (RFC 5258 §3 allows a list of them).
const MAX_PATTERNS: usize = 32;
/// Matching work (pattern × name characters) one LIST may spend: about a
/// tenth of a second of one core.
const MAX_WORK: usize = 64 * 1024 * 1024;

/// One LIST candidate.
#[derive(Default)]
struct Entry {
    mailbox: Option<MailboxInfo>,
    subscribed: bool,
    has_children: bool,
    /// A descendant is subscribed (RFC 5258 §3.5 CHILDINFO).
    subscribed_child: bool,
}

impl Session {
    /// Decodes a LIST pattern: mUTF-7 unless UTF-8 is on; wildcards pass.
    fn pattern_in(&self, raw: &[u8]) -> String {
        if self.utf8() {
            String::from_utf8_lossy(raw).into_owned()
        } else {
            mutf7::decode(raw).unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// LIST and LSUB.
    pub(super) async fn list<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        reference: &[u8],
        patterns: &[Vec<u8>],
        select: &ListSelect,
        ret: &ListReturn,
        extended: bool,
        lsub: bool,
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        let word = if lsub { "LSUB" } else { "LIST" };
        // RFC 9051 §6.3.9: an empty pattern asks for the delimiter.
        if !lsub && patterns.len() == 1 && patterns[0].is_empty() {
            io.write(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
            return Status::ok("LIST completed");
        }
        let reference = self.pattern_in(reference);
        let pats: Vec<String> = patterns
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let p = self.pattern_in(p);
                if reference.is_empty() || p.starts_with('/') {
                    p
                } else if reference.ends_with('/') {
                    format!("{reference}{p}")
                } else {
                    format!("{reference}/{p}")
                }
            })
            .collect();
        // Threat model T50: LIST over a huge hierarchy stays bounded.
        if pats.len() > MAX_PATTERNS {
            return Status::no("Too many patterns").with(Code::Limit);
        }
        let percent = pats.iter().any(|p| p.contains('%'));
        let pats: Vec<Pattern> = pats.iter().map(|p| Pattern::new(p)).collect();
        if pats
            .iter()
            .any(|p| p.wildcards() > mailbox_name::MAX_WILDCARDS)
        {
            return Status::no(format!(
                "At most {} wildcards in a pattern",
                mailbox_name::MAX_WILDCARDS
            ))
            .with(Code::Limit);
        }
        let store = self.store();
        let with_counts = !ret.status.is_empty();
        let boxes = match store.list_mailboxes(user_id, with_counts).await {
            Ok(r) => r,
            Err(e) => return store_error(&e),
        };
        let want_subs = lsub || select.subscribed || ret.subscribed;
        let subs = if want_subs {
            match store.list_subscriptions(user_id).await {
                Ok(r) => r,
                Err(e) => return store_error(&e),
            }
        } else {
            Vec::new()
        };
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for mb in boxes {
            let name = mb.name.clone();
            let e = entries.entry(name.clone()).or_default();
            e.subscribed |= mb.subscribed;
            e.mailbox = Some(mb);
            // Parents that do not exist are implied (\Noselect).
            let mut cur = name.as_str();
            while let Some(i) = cur.rfind('/') {
                cur = &cur[..i];
                entries.entry(cur.to_string()).or_default().has_children = true;
            }
        }
        for s in &subs {
            entries.entry(s.clone()).or_default().subscribed = true;
        }
        let subscribed: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.subscribed)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &subscribed {
            let mut cur = n.as_str();
            while let Some(i) = cur.rfind('/') {
                cur = &cur[..i];
                entries.entry(cur.to_string()).or_default().subscribed_child = true;
            }
        }
        // Fix up has_children for existing parents.
        let names: Vec<String> = entries.keys().cloned().collect();
        for n in &names {
            let mut cur = n.as_str();
            while let Some(i) = cur.rfind('/') {
                cur = &cur[..i];
                if let Some(e) = entries.get_mut(cur)
                    && (e.mailbox.is_some() || e.subscribed)
                {
                    e.has_children = true;
                }
            }
        }
        let (mut work, mut shown) = (0usize, 0usize);
        for (name, e) in &entries {
            let mut hit = false;
            for p in &pats {
                let (m, w) = p.matches(name);
                work += w;
                if m {
                    hit = true;
                    break;
                }
            }
            if work > MAX_WORK {
                return Status::no("LIST too expensive, use a narrower pattern").with(Code::Limit);
            }
            if !hit {
                continue;
            }
            let exists = e.mailbox.is_some();
            let special = e
                .mailbox
                .as_ref()
                .map(|m| m.special_use.clone())
                .unwrap_or_default();
            // RFC 5258 §3.5: CHILDINFO tells of a subscribed descendant
            // the patterns do not list themselves.
            let mut childinfo = select.recursive_match && select.subscribed && e.subscribed_child;
            if childinfo {
                let prefix = format!("{name}/");
                childinfo = subscribed
                    .iter()
                    .filter(|n| n.starts_with(&prefix))
                    .any(|n| {
                        !pats.iter().any(|p| {
                            let (m, w) = p.matches(n);
                            work += w;
                            m
                        })
                    });
            }
            // RFC 3501 §6.3.9: LSUB with "%" shows the unsubscribed parent
            // of a subscribed mailbox the "%" stops at, as \Noselect.
            let lsub_parent = lsub && percent && !e.subscribed && e.subscribed_child;
            if lsub || select.subscribed {
                if !e.subscribed && !childinfo && !lsub_parent {
                    continue;
                }
            } else if !exists && !e.has_children {
                // Subscribed-only names are not shown by plain LIST.
                continue;
            }
            if select.special_use && special.is_empty() {
                continue;
            }
            let mut attrs: Vec<String> = Vec::new();
            if !exists || lsub_parent {
                if extended && (select.subscribed || ret.subscribed) && !e.has_children {
                    attrs.push("\\NonExistent".into());
                } else {
                    attrs.push("\\Noselect".into());
                }
            }
            if !lsub {
                attrs.push(if e.has_children {
                    "\\HasChildren".into()
                } else {
                    "\\HasNoChildren".into()
                });
                if (select.subscribed || ret.subscribed) && e.subscribed {
                    attrs.push("\\Subscribed".into());
                }
                if !special.is_empty() {
                    attrs.push(format!("\\{special}"));
                }
            }
            let mut line = format!("* {word} ({}) \"/\" ", attrs.join(" ")).into_bytes();
            self.mailbox_out(&mut line, name);
            if childinfo {
                line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            line.extend_from_slice(b"\r\n");
            shown += 1;
            if shown > self.cfg().max_list_results {
                return Status::no(format!(
                    "More than {} mailboxes match, use a narrower pattern",
                    self.cfg().max_list_results
                ))
                .with(Code::Limit);
            }
            io.write(&line);
            if let (false, Some(mb)) = (ret.status.is_empty(), &e.mailbox) {
                let st = self.status_line(mb, &ret.status);
                io.write(&st);
            }
            // Stream a long answer with the socket's back-pressure.
            if io.maybe_flush().await.is_err() {
                return Status::no("Connection failed").with(Code::Unavailable);
            }
        }
        Status::ok(format!("{word} completed"))
    }

    /// NAMESPACE (RFC 2342): one personal namespace, "/" separated.
    pub(super) fn namespace<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>) -> Status {
        io.write(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
        Status::ok("NAMESPACE completed")
    }

    /// `* STATUS name (items)` from a store mailbox.
    pub(crate) fn status_line(&self, mb: &MailboxInfo, items: &[StatusItem]) -> Vec<u8> {
        let mut out = b"* STATUS ".to_vec();
        self.mailbox_out(&mut out, &mb.name);
        out.extend_from_slice(b" (");
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            let s = match it {
                StatusItem::Messages => format!("MESSAGES {}", mb.messages),
                StatusItem::Recent => format!("RECENT {}", mb.recent),
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
                StatusItem::Unseen => format!("UNSEEN {}", mb.unseen),
                StatusItem::Deleted => format!("DELETED {}", mb.deleted),
                StatusItem::Size => format!("SIZE {}", mb.size),
                StatusItem::HighestModseq => format!("HIGHESTMODSEQ {}", mb.highestmodseq),
                StatusItem::DeletedStorage => format!("DELETED-STORAGE {}", mb.deleted_size),
                StatusItem::MailboxId => {
                    format!("MAILBOXID ({})", crate::objectid::mailbox_id(mb.id))
                }
            };
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b")\r\n");
        out
    }

    /// STATUS (RFC 9051 §6.3.11).
    pub(super) async fn status<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        items: &[StatusItem],
    ) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        match self.store().get_mailbox(user_id, &name, false).await {
            Ok(mb) => {
                let line = self.status_line(&mb, items);
                io.write(&line);
                Status::ok("STATUS completed")
            }
            Err(e) => store_error(&e),
        }
    }
}
