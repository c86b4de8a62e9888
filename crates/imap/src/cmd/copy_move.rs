//! COPY and MOVE, with their UID forms (RFC 9051 §6.4.7, §6.4.9; RFC 6851)
//! and COPYUID (RFC 4315 §3).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::SeqSet;
use crate::io::Io;
use crate::response::{self, Code, Status};
use crate::session::Session;
use crate::store::store_error;

impl Session {
    /// COPY / MOVE (RFC 9051 §6.4.7, RFC 6851) with COPYUID (RFC 4315).
    pub(super) async fn copy<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid: bool,
        set: &SeqSet,
        raw: &[u8],
        is_move: bool,
    ) -> Status {
        let dest = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let store = self.store();
        let vanished = self.enabled.qresync;
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if is_move && mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let uids = mb.resolve(set, uid);
        if uids.is_empty() {
            return Status::ok(if is_move {
                "MOVE completed"
            } else {
                "COPY completed"
            });
        }
        let r = match store
            .copy_messages(mb.id, &uids, user_id, dest, is_move)
            .await
        {
            Ok(r) => r,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Status::no("No such mailbox").with(Code::TryCreate);
            }
            Err(e) => return store_error(&e),
        };
        let code = (!r.source_uids.is_empty()).then(|| {
            Code::CopyUid(
                r.uidvalidity,
                response::uid_list(&r.source_uids),
                response::uid_list(&r.destination_uids),
            )
        });
        if is_move {
            if let Some(c) = code {
                io.write(&Status::ok("Moved").with(c).encode(None));
            }
            io.write(&mb.remove(&r.source_uids, vanished));
            if r.destination_mailbox_id == mb.id {
                self.sync(io, true).await;
            }
            return Status::ok("MOVE completed");
        }
        let same = r.destination_mailbox_id == mb.id;
        if same {
            self.sync(io, true).await;
        }
        match code {
            Some(c) => Status::ok("COPY completed").with(c),
            None => Status::ok("COPY completed"),
        }
    }
}
