//! APPEND (RFC 9051 §6.3.12) with APPENDUID (RFC 4315 §3) and
//! MULTIAPPEND (RFC 3502).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::AppendMessage;
use crate::io::Io;
use crate::model::{Appended, FlagOp};
use crate::response::{self, Code, Status};
use crate::session::Session;
use crate::store::store_error;

impl Session {
    /// APPEND (RFC 9051 §6.3.12) with APPENDUID (RFC 4315) and MULTIAPPEND
    /// (RFC 3502). The store appends one message per call; when a later
    /// message of a MULTIAPPEND fails, the ones already stored are expunged
    /// again, so the client sees all or nothing.
    pub(super) async fn append<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        messages: Vec<AppendMessage>,
    ) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if messages.iter().any(|m| m.data.is_empty()) {
            return Status::no("Empty message").with(Code::Cannot);
        }
        let store = self.store();
        let mut done: Vec<Appended> = Vec::new();
        let mut failure = None;
        for mut message in messages {
            if let Some(converted) = crate::binary::base64_binary_body(&message.data) {
                message.data = converted;
            }
            match store.append(user_id, &name, message).await {
                Ok(r) => done.push(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            if let Some(first) = done.first() {
                let uids: Vec<u32> = done.iter().map(|r| r.uid).collect();
                let rollback = async {
                    store
                        .store_flags(
                            first.mailbox_id,
                            &uids,
                            FlagOp::Add,
                            vec!["\\Deleted".into()],
                            0,
                        )
                        .await?;
                    store.expunge(first.mailbox_id, Some(&uids)).await
                };
                if let Err(re) = rollback.await {
                    tracing::warn!(error = %re, "MULTIAPPEND rollback failed");
                }
            }
            return if e.code() == tonic::Code::NotFound {
                Status::no("No such mailbox").with(Code::TryCreate)
            } else {
                store_error(&e)
            };
        }
        let Some(last) = done.last() else {
            return Status::bad("APPEND needs a message");
        };
        if self.selected().is_some_and(|m| m.id == last.mailbox_id) {
            self.sync(io, true).await;
        }
        let uids: Vec<u32> = done.iter().map(|r| r.uid).collect();
        Status::ok("APPEND completed")
            .with(Code::AppendUid(last.uidvalidity, response::uid_list(&uids)))
    }
}
