//! The selected mailbox as this session sees it (RFC 9051 §2.3.1.2:
//! sequence numbers are per session), and how it is kept in step with
//! changes made elsewhere: the store's `Watch` stream marks it dirty, and
//! `Session::sync` (`cmd/sync.rs`) reports EXPUNGE, EXISTS, RECENT and FLAGS at the
//! points RFC 9051 §7.4.1 allows.

use crate::command::SeqSet;
use crate::flag_column::FlagColumn;
use crate::response::{self, Code, Status};

/// The system flags every mailbox supports (RFC 9051 §2.3.2).
pub const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
/// Most keywords one session tracks and announces.
pub const MAX_KEYWORDS: usize = 1000;

/// The selected mailbox: this session's view of it (RFC 9051 §2.3.1.2:
/// sequence numbers are per session).
pub struct Selected {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: u32,
    /// UIDs in sequence-number order (index + 1 = sequence number).
    pub uids: Vec<u32>,
    /// Flags known to the client, parallel to `uids`.
    pub flags: FlagColumn,
    /// UID ranges `[from, to)` that are \Recent for this session: the
    /// ranges it claimed from the store (RFC 3501 §2.3.2: one session
    /// only sees a message as \Recent), or, read-only, saw at EXAMINE.
    pub recent: Vec<(u32, u32)>,
    /// UIDNEXT up to which this session has claimed \Recent; `u32::MAX`
    /// when it never claims (EXAMINE).
    pub claimed_to: u32,
    /// Keywords announced to the client in FLAGS / PERMANENTFLAGS (shared
    /// copies, [`crate::intern`]).
    pub keywords: Vec<std::sync::Arc<str>>,
    /// Highest MODSEQ of the changes this session has reported.
    pub flags_mark: u64,
    /// MODSEQ up to which expunges have been reported.
    pub expunge_mark: u64,
    pub watch: Option<Watch>,
    /// The saved search result `$` (RFC 5182 §2.1), as UIDs.
    pub saved: Vec<u32>,
}

impl Selected {
    /// The untagged FLAGS and PERMANENTFLAGS responses for the keywords
    /// announced so far (RFC 9051 §7.3.5, §7.1).
    #[must_use]
    pub fn flags_responses(&self) -> Vec<u8> {
        let kw: String = self.keywords.iter().map(|k| format!(" {k}")).collect();
        let mut out = format!("* FLAGS ({SYSTEM_FLAGS}{kw})\r\n").into_bytes();
        let perm = if self.read_only {
            String::new()
        } else {
            format!("{SYSTEM_FLAGS}{kw} \\*")
        };
        out.extend_from_slice(
            &Status::ok("Permanent flags")
                .with(Code::PermanentFlags(perm))
                .encode(None),
        );
        out
    }

    /// Records the keywords of `flags` the client has not been told of
    /// and returns the FLAGS / PERMANENTFLAGS announcing them (empty when
    /// none is new): a client may not see a keyword in a FETCH before it
    /// appears in FLAGS (RFC 9051 §7.3.5). At most [`MAX_KEYWORDS`] are
    /// tracked.
    pub fn announce(&mut self, flags: &[String]) -> Vec<u8> {
        let mut new = false;
        for f in flags {
            if !f.starts_with('\\')
                && self.keywords.len() < MAX_KEYWORDS
                && !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(f))
            {
                self.keywords.push(crate::intern::name(f));
                new = true;
            }
        }
        if new {
            self.flags_responses()
        } else {
            Vec::new()
        }
    }

    /// Forgets the expunged `gone` UIDs (sorted or not) and returns what
    /// tells the client: `* n EXPUNGE` per message, ascending, each number
    /// counted after the previous removals (RFC 9051 §7.5.1), or, with QRESYNC
    /// enabled, one `* VANISHED uid-set` (RFC 7162 §3.2.10).
    pub fn remove(&mut self, gone: &[u32], vanished: bool) -> Vec<u8> {
        let mut gone = gone.to_vec();
        gone.sort_unstable();
        gone.dedup();
        let mut idx: Vec<usize> = gone
            .iter()
            .filter_map(|u| self.uids.binary_search(u).ok())
            .collect();
        if idx.is_empty() {
            return Vec::new();
        }
        let removed: Vec<u32> = idx.iter().map(|&i| self.uids[i]).collect();
        let mut out = Vec::new();
        if vanished {
            out = format!("* VANISHED {}\r\n", response::seq_set_string(&removed)).into_bytes();
        }
        // Ascending removal with EXPUNGE numbers adjusted for the earlier
        // ones (the order the store returns and clients expect).
        for (k, i) in idx.iter_mut().enumerate() {
            let at = *i - k;
            if !vanished {
                out.extend_from_slice(&response::expunge(at + 1));
            }
            *i = at;
        }
        let dropped: std::collections::HashSet<u32> = removed.into_iter().collect();
        let uids = &self.uids;
        self.flags
            .retain_indices(|i| uids.get(i).is_none_or(|u| !dropped.contains(u)));
        self.uids.retain(|u| !dropped.contains(u));
        out
    }

    /// Whether `uid` is \Recent in this session.
    #[must_use]
    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|&(a, b)| (a..b).contains(&uid))
    }

    /// Adds a claimed range, merging it with the last one when adjacent.
    pub fn add_recent(&mut self, from: u32, to: u32) {
        if from >= to {
            return;
        }
        if let Some(last) = self.recent.last_mut()
            && last.1 == from
        {
            last.1 = to;
            return;
        }
        self.recent.push((from, to));
    }

    /// How many of the known messages are \Recent in this session.
    #[must_use]
    pub fn recent_count(&self) -> usize {
        self.uids.iter().filter(|&&u| self.is_recent(u)).count()
    }

    /// Sequence number of `uid`, if the client knows it.
    #[must_use]
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids
            .binary_search(&uid)
            .ok()
            .map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX))
    }

    /// Resolves a sequence set (or UID set with `uid`) to the UIDs of
    /// messages the client knows, ascending, without duplicates. Work is
    /// bounded by the set's size and the mailbox's (threat model T33).
    #[must_use]
    pub fn resolve(&self, set: &SeqSet, uid: bool) -> Vec<u32> {
        if set.is_saved() {
            // Expunged messages drop out of `$` (RFC 5182 §2.1).
            let mut v: Vec<u32> = self
                .saved
                .iter()
                .copied()
                .filter(|&u| self.seq_of(u).is_some())
                .collect();
            v.sort_unstable();
            v.dedup();
            return v;
        }
        let n = self.uids.len();
        if n == 0 {
            return Vec::new();
        }
        let mut idx_ranges: Vec<(usize, usize)> = Vec::with_capacity(set.0.len());
        let last_uid = self.uids[n - 1];
        for r in &set.0 {
            if uid {
                let a = r.first.unwrap_or(last_uid);
                let b = r.last.unwrap_or(last_uid);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let start = self.uids.partition_point(|&u| u < lo);
                let end = self.uids.partition_point(|&u| u <= hi);
                if start < end {
                    idx_ranges.push((start, end));
                }
            } else {
                let a = r.first.map_or(n, |v| v as usize);
                let b = r.last.map_or(n, |v| v as usize);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let hi = hi.min(n);
                if lo >= 1 && lo <= hi {
                    idx_ranges.push((lo - 1, hi));
                }
            }
        }
        idx_ranges.sort_unstable();
        let mut out = Vec::new();
        let mut next = 0usize;
        for (s, e) in idx_ranges {
            let s = s.max(next);
            if s < e {
                out.extend_from_slice(&self.uids[s..e]);
                next = e;
            }
        }
        out
    }
}

/// The selected mailbox's place in the process's change stream (IDLE,
/// NOOP): see [`crate::watch_hub`].
pub type Watch = crate::watch_hub::Registration;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SeqRange;

    fn sel(uids: &[u32]) -> Selected {
        Selected {
            id: 1,
            name: "INBOX".into(),
            read_only: false,
            uidvalidity: 1,
            uids: uids.to_vec(),
            saved: Vec::new(),
            flags: uids.iter().map(|_| Vec::new()).collect(),
            recent: Vec::new(),
            claimed_to: u32::MAX,
            keywords: Vec::new(),
            flags_mark: 0,
            expunge_mark: 0,
            watch: None,
        }
    }

    fn set(v: &[(Option<u32>, Option<u32>)]) -> SeqSet {
        SeqSet(
            v.iter()
                .map(|&(first, last)| SeqRange { first, last })
                .collect(),
        )
    }

    #[test]
    fn resolve_sets() {
        let s = sel(&[3, 5, 9, 10]);
        assert_eq!(
            s.resolve(&set(&[(Some(1), None)]), false),
            vec![3, 5, 9, 10]
        );
        assert_eq!(
            s.resolve(&set(&[(Some(2), Some(3)), (Some(1), Some(1))]), false),
            vec![3, 5, 9]
        );
        assert_eq!(s.resolve(&set(&[(Some(4), Some(9))]), true), vec![5, 9]);
        // RFC 9051 §6.4.8: n:* includes the last UID even when n is larger.
        assert_eq!(s.resolve(&set(&[(Some(100), None)]), true), vec![10]);
        assert_eq!(
            s.resolve(&set(&[(Some(5), Some(7))]), false),
            Vec::<u32>::new()
        );
        assert_eq!(
            sel(&[]).resolve(&set(&[(Some(1), None)]), true),
            Vec::<u32>::new()
        );
        // 1:4294967295 over and over: bounded work, no overflow.
        let big = set(&vec![(Some(1), Some(u32::MAX)); 10_000]);
        assert_eq!(s.resolve(&big, false), vec![3, 5, 9, 10]);
        assert_eq!(s.resolve(&big, true), vec![3, 5, 9, 10]);
    }

    #[test]
    fn removal_reports_expunge_or_vanished() {
        let mut s = sel(&[3, 5, 9, 10, 12]);
        // Unknown UIDs and duplicates are ignored; numbers count earlier removals.
        assert_eq!(
            s.remove(&[10, 4, 5, 5], false),
            b"* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n".to_vec()
        );
        assert_eq!(s.uids, vec![3, 9, 12]);
        assert_eq!(s.flags.len(), 3);
        // RFC 7162 §3.2.10: one VANISHED with the UIDs, compressed.
        let mut s = sel(&[3, 4, 5, 9]);
        assert_eq!(
            s.remove(&[5, 3, 4, 7], true),
            b"* VANISHED 3:5\r\n".to_vec()
        );
        assert_eq!(s.uids, vec![9]);
        assert!(s.remove(&[1], true).is_empty());
    }

    #[test]
    fn saved_result_resolves_without_expunged_messages() {
        let mut s = sel(&[3, 5, 9, 10]);
        assert!(s.resolve(&SeqSet::saved(), false).is_empty());
        s.saved = vec![9, 4, 3, 9];
        // 4 is gone (expunged): RFC 5182 §2.1.
        assert_eq!(s.resolve(&SeqSet::saved(), false), vec![3, 9]);
        assert_eq!(s.resolve(&SeqSet::saved(), true), vec![3, 9]);
    }
}
