//! QRESYNC (RFC 7162 §3.2): resynchronisation at SELECT / EXAMINE
//! (§3.2.5) and the VANISHED (EARLIER) data of SELECT and of UID FETCH's
//! VANISHED modifier (§3.2.6, §3.2.10).
//!
//! The store keeps every expunged UID with the MODSEQ of its expunge
//! (table `expunged`), so the answer is exact: seq-match-data (§3.2.5.2)
//! is checked by the parser but never needed.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{QresyncParams, SeqSet};
use crate::io::Io;
use crate::response;
use crate::session::Session;

/// A client-supplied set as sorted, merged inclusive ranges; `*` stands
/// for the largest UID possible (a client naming `n:*` asks about every
/// UID from n). Work is bounded by the set's size, which the parser
/// bounds (threat model T122).
#[must_use]
pub fn ranges(set: &SeqSet) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = set
        .0
        .iter()
        .map(|r| {
            let a = r.first.unwrap_or(u32::MAX);
            let b = r.last.unwrap_or(u32::MAX);
            (a.min(b), a.max(b))
        })
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether `uid` lies in the sorted, merged `ranges`.
#[must_use]
pub fn contains(ranges: &[(u32, u32)], uid: u32) -> bool {
    let i = ranges.partition_point(|&(_, b)| b < uid);
    ranges.get(i).is_some_and(|&(a, _)| a <= uid)
}

impl Session {
    /// `* VANISHED (EARLIER) uids` for the UIDs of `within` (all when
    /// `None`) expunged after `since` that the session no longer shows
    /// (one it still shows is reported as VANISHED at the next point
    /// expunges may be announced, so sequence numbers stay in step).
    /// Nothing is written when none is found or the store fails.
    pub(crate) async fn vanished_earlier<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        since: u64,
        within: Option<&[(u32, u32)]>,
    ) {
        let store = self.store();
        let Some(mb) = self.selected() else { return };
        let gone = match store.list_expunged(mb.id, since).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "list expunged failed");
                return;
            }
        };
        let mut gone: Vec<u32> = gone
            .into_iter()
            .filter(|&u| within.is_none_or(|r| contains(r, u)) && mb.seq_of(u).is_none())
            .collect();
        if gone.is_empty() {
            return;
        }
        gone.sort_unstable();
        gone.dedup();
        io.write(
            format!(
                "* VANISHED (EARLIER) {}\r\n",
                response::seq_set_string(&gone)
            )
            .as_bytes(),
        );
    }

    /// After FETCH, STORE, SEARCH, SORT or THREAD by sequence number, which
    /// may not announce expunges (RFC 9051 §7.4.1) but may show MODSEQs
    /// newer than them: when expunges made elsewhere are pending, a
    /// HIGHESTMODSEQ below them, so a client resuming from the MODSEQs it
    /// has seen does not skip them (RFC 7162 §3.2). Only looked up when
    /// the store's change stream marked the mailbox changed.
    pub(super) async fn report_withheld_expunges<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) {
        let store = self.store();
        let Some(mb) = self.selected() else { return };
        let changed = mb
            .watch
            .as_ref()
            .is_none_or(|w| w.dirty.load(std::sync::atomic::Ordering::Acquire));
        if !changed {
            return;
        }
        match store.list_expunged(mb.id, mb.expunge_mark).await {
            Ok(gone) if gone.iter().any(|&u| mb.seq_of(u).is_some()) => io.write(
                &response::Status::ok("Expunges pending")
                    .with(response::Code::HighestModSeq(mb.expunge_mark))
                    .encode(None),
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "list expunged failed"),
        }
    }

    /// The QRESYNC part of SELECT / EXAMINE (RFC 7162 §3.2.5.1), after the
    /// usual responses: when the client's UIDVALIDITY still holds, the
    /// expunges since its MODSEQ as VANISHED (EARLIER), then a FETCH with
    /// UID, FLAGS and MODSEQ of each message changed since, both limited
    /// to the known UIDs when the client gave them.
    pub(super) async fn qresync_select<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        q: &QresyncParams,
    ) {
        let rev2 = self.enabled.rev2;
        let store = self.store();
        let Some(mb) = self.selected() else { return };
        if q.uidvalidity != mb.uidvalidity {
            return;
        }
        let known = q.known_uids.as_ref().map(ranges);
        let mailbox_id = mb.id;
        self.vanished_earlier(io, q.modseq, known.as_deref()).await;
        let Some(mb) = self.selected() else { return };
        let mut stream = match store.fetch_meta(mailbox_id, None, q.modseq, false).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "fetch meta failed");
                return;
            }
        };
        loop {
            let batch = match stream.next_batch().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch meta stream failed");
                    break;
                }
            };
            for m in batch {
                if m.modseq <= q.modseq || known.as_ref().is_some_and(|k| !contains(k, m.uid)) {
                    continue;
                }
                let Some(seq) = mb.seq_of(m.uid) else {
                    continue;
                };
                let ann = mb.announce(&m.flags);
                io.write(&ann);
                let i = seq as usize - 1;
                mb.flags.set(i, m.flags);
                io.write(&response::flags_fetch(
                    seq as usize,
                    Some(m.uid),
                    &mb.flags[i],
                    !rev2 && mb.is_recent(m.uid),
                    Some(m.modseq),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SeqRange;

    #[test]
    fn ranges_merge_and_membership() {
        let set = SeqSet(vec![
            SeqRange {
                first: Some(9),
                last: Some(7),
            },
            SeqRange {
                first: Some(1),
                last: Some(3),
            },
            SeqRange {
                first: Some(4),
                last: Some(4),
            },
            SeqRange {
                first: Some(20),
                last: None,
            },
        ]);
        let r = ranges(&set);
        assert_eq!(r, vec![(1, 4), (7, 9), (20, u32::MAX)]);
        for (u, inside) in [(1, true), (4, true), (5, false), (8, true), (10, false)] {
            assert_eq!(contains(&r, u), inside, "{u}");
        }
        assert!(contains(&r, u32::MAX));
        assert!(!contains(&[], 1));
    }
}
