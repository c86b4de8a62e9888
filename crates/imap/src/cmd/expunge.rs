//! EXPUNGE (RFC 9051 §6.4.3) and UID EXPUNGE (RFC 4315 §2.1); with QRESYNC
//! the expunged messages are reported as VANISHED (RFC 7162 §3.2.10).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::SeqSet;
use crate::io::Io;
use crate::response::{Code, Status};
use crate::session::Session;
use crate::store::store_error;

impl Session {
    /// EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, RFC 4315 §2.1).
    pub(super) async fn expunge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uids: Option<&SeqSet>,
    ) -> Status {
        let store = self.store();
        let vanished = self.enabled.qresync;
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let set = match uids {
            Some(s) => {
                let v = mb.resolve(s, true);
                if v.is_empty() {
                    return Status::ok("EXPUNGE completed");
                }
                Some(v)
            }
            None => None,
        };
        match store.expunge(mb.id, set.as_deref()).await {
            Ok(gone) => {
                io.write(&mb.remove(&gone, vanished));
                Status::ok("EXPUNGE completed")
            }
            Err(e) => store_error(&e),
        }
    }
}
