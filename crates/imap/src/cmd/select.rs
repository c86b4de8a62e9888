//! Mailbox selection: SELECT and EXAMINE (RFC 9051 §6.3.2, §6.3.3;
//! RFC 7162 §3.1.8 CONDSTORE, §3.2.5 QRESYNC), CLOSE (§6.4.1) and UNSELECT (RFC 3691).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::QresyncParams;
use crate::flag_column::FlagColumn;
use crate::io::Io;
use crate::response::{self, Code, Status};
use crate::selected::Selected;
use crate::session::{Session, State};
use crate::store::store_error;

impl Session {
    /// SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3; RFC 7162 §3.1.8).
    pub(super) async fn select<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        condstore: bool,
        read_only: bool,
        qresync: Option<&QresyncParams>,
    ) -> Status {
        // RFC 7162 §3.2.5: the parameter needs ENABLE QRESYNC first.
        if qresync.is_some() && !self.enabled.qresync {
            return Status::bad("QRESYNC is not enabled");
        }
        let was_selected = matches!(self.state, State::Selected { .. });
        self.deselect();
        // RFC 9051 §7.1, RFC 7162 §3.2.11: [CLOSED] ends the old mailbox's
        // responses.
        if was_selected && (self.enabled.rev2 || self.enabled.qresync) {
            io.write(
                &Status::ok("Previous mailbox closed")
                    .with(Code::Closed)
                    .encode(None),
            );
        }
        if condstore {
            self.enabled.condstore = true;
        }
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let Some(user) = self.user().cloned() else {
            return Status::bad("Not authenticated");
        };
        let store = self.store();
        let mb = match store.get_mailbox(user.id, &name, false).await {
            Ok(m) => m,
            Err(e) => return store_error(&e),
        };
        let watch = self.start_watch(user.id, mb.id).await;
        let mb = match store.get_mailbox(user.id, &name, !read_only).await {
            Ok(m) => m,
            Err(e) => return store_error(&e),
        };
        let mut uids = Vec::with_capacity(mb.messages as usize);
        let mut flags = FlagColumn::new();
        match store.fetch_meta(mb.id, None, 0, false).await {
            Ok(mut stream) => loop {
                match stream.next_batch().await {
                    Ok(Some(batch)) => {
                        for m in batch {
                            // Later arrivals are reported (and claimed) by
                            // the next sync, so \Recent is decided once.
                            if m.uid < mb.uidnext && uids.last().is_none_or(|&l| m.uid > l) {
                                uids.push(m.uid);
                                flags.push(m.flags);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return store_error(&e),
                }
            },
            Err(e) => return store_error(&e),
        }
        // SELECT claimed [floor, uidnext) (RFC 3501 §2.3.2); EXAMINE shows
        // the same range as \Recent without taking it (RFC 3501 §6.3.2).
        let mut selected = Selected {
            id: mb.id,
            name: name.clone(),
            read_only,
            uidvalidity: mb.uidvalidity,
            recent: Vec::new(),
            claimed_to: if read_only { u32::MAX } else { mb.uidnext },
            keywords: Vec::new(),
            // Watermarks from the snapshot taken before the listing (see `sync`).
            flags_mark: mb.highestmodseq,
            expunge_mark: mb.highestmodseq,
            watch,
            saved: Vec::new(),
            uids,
            flags,
        };
        selected.add_recent(mb.recent_floor.max(1), mb.uidnext);
        let exists = selected.uids.len();
        let recent = selected.recent_count();
        let first_unseen = selected
            .flags
            .iter()
            .position(|f| !f.iter().any(|x| x == "\\Seen"));
        let all: Vec<String> = selected.flags.distinct_sets().flatten().cloned().collect();
        let _ = selected.announce(&all);
        io.write(&response::exists(exists));
        if !self.enabled.rev2 {
            io.write(&response::recent(recent));
            if let Some(i) = first_unseen {
                io.write(
                    &Status::ok("First unseen")
                        .with(Code::Unseen(u32::try_from(i + 1).unwrap_or(u32::MAX)))
                        .encode(None),
                );
            }
        }
        io.write(&selected.flags_responses());
        io.write(
            &Status::ok("UIDs valid")
                .with(Code::UidValidity(mb.uidvalidity))
                .encode(None),
        );
        io.write(
            &Status::ok("Predicted next UID")
                .with(Code::UidNext(mb.uidnext))
                .encode(None),
        );
        io.write(
            &Status::ok("Highest")
                .with(Code::HighestModSeq(mb.highestmodseq))
                .encode(None),
        );
        io.write(
            &Status::ok("Ok")
                .with(Code::MailboxId(crate::objectid::mailbox_id(mb.id)))
                .encode(None),
        );
        if self.enabled.rev2 {
            let mut l = b"* LIST () \"/\" ".to_vec();
            self.mailbox_out(&mut l, &name);
            l.extend_from_slice(b"\r\n");
            io.write(&l);
        }
        self.state = State::Selected {
            user,
            mailbox: Box::new(selected),
        };
        if let Some(q) = qresync {
            self.qresync_select(io, q).await;
        }
        if read_only {
            Status::ok("EXAMINE completed").with(Code::ReadOnly)
        } else {
            Status::ok("SELECT completed").with(Code::ReadWrite)
        }
    }

    /// CLOSE (RFC 9051 §6.4.1: expunge silently, unless read-only) and
    /// UNSELECT (RFC 3691: no expunge).
    pub(super) async fn close(&mut self, expunge: bool) -> Status {
        let store = self.store();
        if let Some(mb) = self.selected()
            && expunge
            && !mb.read_only
            && let Err(e) = store.expunge(mb.id, None).await
        {
            tracing::warn!(error = %e, "expunge on CLOSE failed");
        }
        self.deselect();
        Status::ok(if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        })
    }
}
