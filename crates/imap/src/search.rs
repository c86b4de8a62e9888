//! SEARCH (RFC 9051 §6.4.4) with ESEARCH return options (RFC 4731) and
//! CONDSTORE's MODSEQ key (RFC 7162 §3.1.5). Session notions (sequence
//! numbers, \Recent, NEW, OLD) become UID sets here; the store evaluates
//! the rest.

use std::fmt::Write as _;

use mailstore_api::pb;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{SearchKey, SearchReturn};
use crate::io::Io;
use crate::response::{self, Status};
use crate::session::{Selected, Session, store_error, uid_set};

fn key(k: pb::search_key::Key) -> pb::SearchKey {
    pb::SearchKey { key: Some(k) }
}

fn uids_key(uids: &[u32]) -> pb::SearchKey {
    use pb::search_key::Key;
    if uids.is_empty() {
        // An empty UidSet means "all" to the store: say "none" instead.
        key(Key::Not(Box::new(key(Key::All(true)))))
    } else {
        key(Key::Uids(uid_set(uids)))
    }
}

fn has_modseq(k: &SearchKey) -> bool {
    match k {
        SearchKey::ModSeq(_) => true,
        SearchKey::And(v) => v.iter().any(has_modseq),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::Not(a) => has_modseq(a),
        _ => false,
    }
}

/// Converts a parsed key for the store (bounded recursion: the parser
/// limits nesting depth).
fn convert(k: &SearchKey, mb: &Selected) -> pb::SearchKey {
    use pb::search_key::Key;
    let recent: Vec<u32> = mb
        .uids
        .iter()
        .copied()
        .filter(|&u| u >= mb.recent_floor)
        .collect();
    let range = |since: &Option<i64>, before: &Option<i64>| pb::DateRange {
        since_day: *since,
        before_day: *before,
    };
    match k {
        SearchKey::All => key(Key::All(true)),
        SearchKey::And(v) => key(Key::AllOf(pb::SearchKeys {
            keys: v.iter().map(|k| convert(k, mb)).collect(),
        })),
        SearchKey::Or(a, b) => key(Key::AnyOf(pb::SearchKeys {
            keys: vec![convert(a, mb), convert(b, mb)],
        })),
        SearchKey::Not(a) => key(Key::Not(Box::new(convert(a, mb)))),
        SearchKey::SeqSet(s) => uids_key(&mb.resolve(s, false)),
        SearchKey::Uid(s) => uids_key(&mb.resolve(s, true)),
        SearchKey::Flag(f) if f == "\\Recent" => uids_key(&recent),
        SearchKey::NoFlag(f) if f == "\\Recent" => key(Key::Not(Box::new(uids_key(&recent)))),
        SearchKey::Flag(f) => key(Key::HasFlag(f.clone())),
        SearchKey::NoFlag(f) => key(Key::LacksFlag(f.clone())),
        SearchKey::Recent => uids_key(&recent),
        SearchKey::New => key(Key::AllOf(pb::SearchKeys {
            keys: vec![uids_key(&recent), key(Key::LacksFlag("\\Seen".into()))],
        })),
        SearchKey::Old => key(Key::Not(Box::new(uids_key(&recent)))),
        SearchKey::Date { since, before } => key(Key::InternalDate(range(since, before))),
        SearchKey::SentDate { since, before } => key(Key::SentDate(range(since, before))),
        SearchKey::Larger(n) => key(Key::Larger(*n)),
        SearchKey::Smaller(n) => key(Key::Smaller(*n)),
        SearchKey::Header(f, v) => key(Key::Header(pb::HeaderMatch {
            field: f.clone(),
            value: v.clone(),
        })),
        SearchKey::Body(s) => key(Key::Body(s.clone())),
        SearchKey::Text(s) => key(Key::Text(s.clone())),
        SearchKey::ModSeq(n) => key(Key::ModseqMin(*n)),
    }
}

impl Session {
    /// SEARCH / UID SEARCH.
    pub(crate) async fn search<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        uid: bool,
        ret: Option<SearchReturn>,
        k: &SearchKey,
    ) -> Status {
        let modseq = has_modseq(k);
        if modseq {
            self.enabled.condstore = true;
        }
        // IMAP4rev2 always answers ESEARCH (RFC 9051 §6.4.4).
        let ret = ret.or_else(|| {
            self.enabled
                .rev2
                .then(|| SearchReturn::default().normalised())
        });
        let mut client = self.shared.store.mailboxes.clone();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        let req = pb::SearchRequest {
            mailbox_id: mb.id,
            key: Some(convert(k, mb)),
        };
        let r = match client.search(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => return store_error(&e),
        };
        // Only messages this session knows about; numbers as asked.
        let mut nums: Vec<u32> = if uid {
            r.uids
                .iter()
                .copied()
                .filter(|&u| mb.seq_of(u).is_some())
                .collect()
        } else {
            r.uids.iter().filter_map(|&u| mb.seq_of(u)).collect()
        };
        nums.sort_unstable();
        nums.dedup();
        let mut line = String::new();
        match ret {
            Some(ret) => {
                let _ = write!(line, "* ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                if let (true, Some(v)) = (ret.min, nums.first()) {
                    let _ = write!(line, " MIN {v}");
                }
                if let (true, Some(v)) = (ret.max, nums.last()) {
                    let _ = write!(line, " MAX {v}");
                }
                if ret.count {
                    let _ = write!(line, " COUNT {}", nums.len());
                }
                if ret.all && !nums.is_empty() {
                    let _ = write!(line, " ALL {}", response::seq_set_string(&nums));
                }
                if modseq && !nums.is_empty() {
                    let _ = write!(line, " MODSEQ {}", r.highest_modseq);
                }
            }
            None => {
                line.push_str("* SEARCH");
                for n in &nums {
                    let _ = write!(line, " {n}");
                }
                if modseq && !nums.is_empty() {
                    let _ = write!(line, " (MODSEQ {})", r.highest_modseq);
                }
            }
        }
        line.push_str("\r\n");
        io.write(line.as_bytes());
        Status::ok("SEARCH completed")
    }
}
