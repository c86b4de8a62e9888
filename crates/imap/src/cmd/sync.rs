//! The selected mailbox kept in step with the store: following its change
//! stream and reporting changes at the points RFC 9051 §7.4.1 allows.

use crate::io::Io;
use crate::response;
use crate::selected::Watch;
use crate::session::Session;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite};

impl Session {
    /// Turns CONDSTORE on for the session if a command implies it (RFC
    /// 7162 §3.1: FETCH MODSEQ / CHANGEDSINCE, SEARCH MODSEQ, STORE
    /// UNCHANGEDSINCE). The first time, with a mailbox selected, the client
    /// is told the mailbox's HIGHESTMODSEQ (RFC 7162 §3.1.2.1).
    pub(crate) fn enable_condstore<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) {
        if self.enabled.condstore {
            return;
        }
        self.enabled.condstore = true;
        if let Some(mb) = self.selected() {
            let hms = mb.flags_mark.max(mb.expunge_mark);
            io.write(
                &response::Status::ok("Highest")
                    .with(response::Code::HighestModSeq(hms))
                    .encode(None),
            );
        }
    }

    /// Starts following the store's change stream for the mailbox and
    /// waits (bounded) for it to be up, so nothing committed after the
    /// snapshot SELECT takes next can be missed.
    pub(crate) async fn start_watch(&self, user_id: u64, mailbox_id: u64) -> Option<Watch> {
        Some(self.shared.watches.register(user_id, mailbox_id).await)
    }

    /// Reports changes made by others: EXPUNGE (when `allow_expunge`),
    /// EXISTS/RECENT for new messages, FETCH FLAGS for changed ones
    /// (RFC 9051 §5.2, §7.4.1).
    pub(crate) async fn sync<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        allow_expunge: bool,
    ) {
        let rev2 = self.enabled.rev2;
        let condstore = self.enabled.condstore;
        let qresync = self.enabled.qresync;
        let store = self.store();
        let user_id = self.user_id().unwrap_or(0);
        let Some(mb) = self.selected() else { return };
        if let Some(w) = &mb.watch {
            w.dirty.store(false, Ordering::Release);
        }
        // The new watermark is the mailbox's HIGHESTMODSEQ *before* the
        // queries: taking the largest MODSEQ seen in the (batched, not
        // snapshot-consistent) results could skip a change committed while
        // they streamed. Changes seen twice are filtered by the flag cache.
        let (new_mark, uidnext) = match store.get_mailbox(user_id, &mb.name, false).await {
            Ok(m) => {
                let hms = m.highestmodseq;
                // Every append, flag change and expunge raises the
                // mailbox's HIGHESTMODSEQ: unchanged means nothing to report.
                if hms <= mb.flags_mark && (hms <= mb.expunge_mark || !allow_expunge) {
                    return;
                }
                (hms.max(mb.flags_mark), m.uidnext)
            }
            Err(e) => {
                tracing::warn!(error = %e, "mailbox snapshot failed");
                (mb.flags_mark, 0)
            }
        };
        // New messages: a read-write session claims their \Recent before
        // it reports them (RFC 3501 §2.3.2), so exactly one session (or a
        // later SELECT, or STATUS) counts each message as recent.
        let mut uidnext = uidnext;
        if uidnext > mb.claimed_to {
            match store.get_mailbox(user_id, &mb.name, true).await {
                Ok(m) => {
                    mb.add_recent(m.recent_floor.max(mb.claimed_to), m.uidnext);
                    mb.claimed_to = m.uidnext;
                    uidnext = m.uidnext;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming recent failed");
                    uidnext = mb.claimed_to;
                }
            }
        }
        if allow_expunge {
            let mark = new_mark;
            match store.list_expunged(mb.id, mb.expunge_mark).await {
                Ok(gone) => {
                    io.write(&mb.remove(&gone, qresync));
                    mb.expunge_mark = mark;
                }
                Err(e) => tracing::warn!(error = %e, "list expunged failed"),
            }
        }
        let mut changed: Vec<(u32, u64)> = Vec::new();
        let mut announce: Vec<u8> = Vec::new();
        let before = mb.uids.len();
        match store.fetch_meta(mb.id, None, mb.flags_mark, false).await {
            Ok(mut s) => {
                let mut complete = false;
                loop {
                    let batch = match s.next_batch().await {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            complete = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fetch meta stream failed");
                            break;
                        }
                    };
                    for m in batch {
                        announce.extend_from_slice(&mb.announce(&m.flags));
                        match mb.uids.binary_search(&m.uid) {
                            Ok(i) => {
                                if mb.flags[i] != m.flags {
                                    mb.flags.set(i, m.flags);
                                    changed.push((m.uid, m.modseq));
                                }
                            }
                            // Messages past the snapshot's UIDNEXT wait for
                            // the next sync (their \Recent is not decided).
                            Err(i) if i == mb.uids.len() && m.uid < uidnext => {
                                mb.uids.push(m.uid);
                                mb.flags.push(m.flags);
                            }
                            // A UID below the newest that we never saw: it was
                            // committed out of order; too late to show it.
                            Err(_) => {}
                        }
                    }
                }
                if complete {
                    mb.flags_mark = new_mark;
                }
            }
            Err(e) => tracing::warn!(error = %e, "fetch meta failed"),
        }
        io.write(&announce);
        if mb.uids.len() != before {
            io.write(&response::exists(mb.uids.len()));
            if !rev2 {
                io.write(&response::recent(mb.recent_count()));
            }
        }
        for (uid, modseq) in changed {
            let Some(seq) = mb.seq_of(uid) else { continue };
            let i = seq as usize - 1;
            io.write(&response::flags_fetch(
                seq as usize,
                Some(uid),
                &mb.flags[i],
                !rev2 && mb.is_recent(uid),
                condstore.then_some(modseq),
            ));
        }
    }
}
