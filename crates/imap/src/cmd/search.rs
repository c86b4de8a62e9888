//! SEARCH (RFC 9051 §6.4.4) with ESEARCH return options (RFC 4731) and
//! CONDSTORE's MODSEQ key (RFC 7162 §3.1.5). Session notions (sequence
//! numbers, \Recent, NEW, OLD) become UID sets here; the store evaluates
//! the rest.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{SearchKey, SearchReturn};
use crate::io::Io;
use crate::model::Query;
use crate::response::{self, Status};
use crate::selected::Selected;
use crate::session::Session;
use crate::store::{Store, store_error};

/// The highest MODSEQ of some messages (`None` if the store fails).
async fn highest_modseq_of(store: &Store, mailbox_id: u64, uids: &[u32]) -> Option<u64> {
    let mut stream = store
        .fetch_meta(mailbox_id, Some(uids), 0, false)
        .await
        .ok()?;
    let mut highest = 0;
    while let Some(batch) = stream.next_batch().await.ok()? {
        for m in batch {
            highest = highest.max(m.modseq);
        }
    }
    Some(highest)
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

/// Converts a parsed key into the program the store evaluates (bounded
/// recursion: the parser limits nesting depth).
pub(super) fn convert(k: &SearchKey, mb: &Selected) -> Query {
    let recent = || -> Vec<u32> {
        mb.uids
            .iter()
            .copied()
            .filter(|&u| mb.is_recent(u))
            .collect()
    };
    match k {
        SearchKey::All => Query::All,
        SearchKey::And(v) => Query::AllOf(v.iter().map(|k| convert(k, mb)).collect()),
        SearchKey::Or(a, b) => Query::AnyOf(vec![convert(a, mb), convert(b, mb)]),
        SearchKey::Not(a) => Query::Not(Box::new(convert(a, mb))),
        SearchKey::SeqSet(s) => Query::Uids(mb.resolve(s, false)),
        SearchKey::Uid(s) => Query::Uids(mb.resolve(s, true)),
        SearchKey::Flag(f) if f == "\\Recent" => Query::Uids(recent()),
        SearchKey::NoFlag(f) if f == "\\Recent" => Query::Not(Box::new(Query::Uids(recent()))),
        SearchKey::Flag(f) => Query::HasFlag(f.clone()),
        SearchKey::NoFlag(f) => Query::LacksFlag(f.clone()),
        SearchKey::Recent => Query::Uids(recent()),
        SearchKey::New => Query::AllOf(vec![
            Query::Uids(recent()),
            Query::LacksFlag("\\Seen".into()),
        ]),
        SearchKey::Old => Query::Not(Box::new(Query::Uids(recent()))),
        SearchKey::Date { since, before } => Query::InternalDate {
            since: *since,
            before: *before,
        },
        SearchKey::SentDate { since, before } => Query::SentDate {
            since: *since,
            before: *before,
        },
        SearchKey::Larger(n) => Query::Larger(*n),
        SearchKey::Smaller(n) => Query::Smaller(*n),
        SearchKey::Header(f, v) => Query::Header {
            field: f.clone(),
            value: v.clone(),
        },
        SearchKey::Body(s) => Query::Body(s.clone()),
        SearchKey::Text(s) => Query::Text(s.clone()),
        SearchKey::ModSeq(n) => Query::ModSeqMin(*n),
    }
}

/// What `RETURN (SAVE ...)` keeps (RFC 5182 §2.4): only the MIN and/or
/// MAX message when those are all that was asked besides SAVE, else every
/// match. `nums` are in result order, UIDs or sequence numbers.
pub(super) fn saved_uids(
    mb: &Selected,
    nums: &[u32],
    uid: bool,
    ret: Option<&SearchReturn>,
) -> Vec<u32> {
    let picked: Vec<u32> = match ret {
        Some(r) if (r.min || r.max) && !(r.all || r.count) => {
            let mut v = Vec::new();
            if r.min {
                v.extend(nums.first().copied());
            }
            if r.max {
                v.extend(nums.last().copied());
            }
            v
        }
        _ => nums.to_vec(),
    };
    let mut out: Vec<u32> = if uid {
        picked
    } else {
        picked
            .iter()
            .filter_map(|&s| mb.uids.get((s as usize).checked_sub(1)?).copied())
            .collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

impl Session {
    /// SEARCH / UID SEARCH.
    pub(super) async fn search<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        uid: bool,
        ret: Option<SearchReturn>,
        k: &SearchKey,
    ) -> Status {
        let modseq = has_modseq(k);
        if modseq {
            self.enable_condstore(io);
        }
        // IMAP4rev2 always answers ESEARCH (RFC 9051 §6.4.4).
        let ret = ret.or_else(|| {
            self.enabled
                .rev2
                .then(|| SearchReturn::default().normalised())
        });
        let store = self.store();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        let save = ret.as_ref().is_some_and(|r| r.save);
        let r = match store.search(mb.id, &convert(k, mb)).await {
            Ok(r) => r,
            Err(e) => {
                // RFC 5182 §2.1: a failed SEARCH ... SAVE empties `$`.
                if save {
                    mb.saved.clear();
                }
                return store_error(&e);
            }
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
        if save {
            mb.saved = saved_uids(mb, &nums, uid, ret.as_ref());
        }
        let mut line = String::new();
        match ret {
            // RFC 5182 §2.1: SAVE alone answers no ESEARCH.
            Some(ret) if ret.save && !(ret.min || ret.max || ret.all || ret.count) => {
                return Status::ok("SEARCH completed, result saved");
            }
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
                    // RFC 4731 §3.2 / RFC 7162 §3.1.5: with only MIN and/or
                    // MAX, MODSEQ is the highest of the messages returned.
                    let highest = if ret.all || ret.count {
                        r.highest_modseq
                    } else {
                        let mut shown = Vec::new();
                        if ret.min {
                            shown.extend(nums.first().copied());
                        }
                        if ret.max {
                            shown.extend(nums.last().copied());
                        }
                        let shown: Vec<u32> = if uid {
                            shown
                        } else {
                            shown
                                .iter()
                                .filter_map(|&s| mb.uids.get(s as usize - 1).copied())
                                .collect()
                        };
                        highest_modseq_of(&store, mb.id, &shown)
                            .await
                            .unwrap_or(r.highest_modseq)
                    };
                    let _ = write!(line, " MODSEQ {highest}");
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
