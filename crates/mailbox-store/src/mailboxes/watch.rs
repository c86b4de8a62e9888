//! Watch: mailbox change notifications for IDLE (RFC 2177) and NOOP polling.

use mailstore_api::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::notify::HubEvent;
use crate::wire::BoxStream;

use super::MailboxesSvc;

pub(super) async fn watch(
    svc: &MailboxesSvc,
    req: Request<pb::WatchRequest>,
) -> Result<Response<BoxStream<pb::MailboxEvent>>, Status> {
    let req = req.into_inner();
    let mut rx = svc.store.hub.subscribe_mailboxes();
    let (user_id, mailbox_id) = (req.user_id, req.mailbox_id);
    // User 0: every user's changes, for a service process that fans them
    // out to its own sessions (imap's one stream per process); it gets a
    // deeper queue, being many watchers in one.
    let (tx, out) = mpsc::channel(if user_id == 0 { 1024 } else { 64 });
    tokio::spawn(async move {
        let _open = OpenStream::new();
        let ready = pb::MailboxEvent {
            kind: pb::MailboxEventKind::Ready as i32,
            user_id,
            mailbox_id,
            ..Default::default()
        };
        if tx.send(Ok(ready)).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = tx.closed() => return,
            };
            let event = match ev {
                Ok(HubEvent::Change(c)) => {
                    if (user_id != 0 && c.user_id != user_id)
                        || (mailbox_id != 0 && c.mailbox_id != mailbox_id && c.mailbox_id != 0)
                    {
                        continue;
                    }
                    pb::MailboxEvent {
                        kind: c.kind,
                        user_id: c.user_id,
                        mailbox_id: c.mailbox_id,
                        modseq: c.modseq,
                        uidnext: c.uidnext,
                    }
                }
                // Missed events: tell the watcher to resynchronise.
                Ok(HubEvent::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    pb::MailboxEvent {
                        kind: pb::MailboxEventKind::Mailboxes as i32,
                        user_id,
                        mailbox_id,
                        ..Default::default()
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(out))))
}

/// Counts the open Watch streams (`store_watch_streams` on /metrics): each
/// holds a task, a queue and an HTTP/2 stream in the store, so this is
/// what idle sessions cost it.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!("store_watch_streams").increment(1.0);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("store_watch_streams").decrement(1.0);
    }
}
