//! One `LISTEN` connection per store process, fanned out in memory:
//! mailbox changes to `Watch` streams, queue arrivals to `Lease` waiters.
//! Transactions send `pg_notify` so notifications are delivered only when,
//! and only if, they commit.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub const MAILBOX_CHANNEL: &str = "epistole_mailbox";
pub const QUEUE_CHANNEL: &str = "epistole_queue";

/// A change to a mailbox, as carried by NOTIFY: "user,mailbox,kind,modseq,uidnext".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxChange {
    pub user_id: u64,
    pub mailbox_id: u64,
    pub kind: i32,
    pub modseq: u64,
    pub uidnext: u32,
}

impl MailboxChange {
    #[must_use]
    pub fn payload(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.user_id, self.mailbox_id, self.kind, self.modseq, self.uidnext
        )
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split(',');
        Some(Self {
            user_id: it.next()?.parse().ok()?,
            mailbox_id: it.next()?.parse().ok()?,
            kind: it.next()?.parse().ok()?,
            modseq: it.next()?.parse().ok()?,
            uidnext: it.next()?.parse().ok()?,
        })
    }
}

/// What the hub broadcasts to watchers.
#[derive(Debug, Clone, Copy)]
pub enum HubEvent {
    Change(MailboxChange),
    /// The LISTEN connection was re-established: changes may have been
    /// missed, every watcher should resynchronise.
    Resync,
}

pub struct Hub {
    mailbox_tx: broadcast::Sender<HubEvent>,
    /// A counter per queue kind (index = kind), bumped on every NOTIFY.
    queue_tx: [watch::Sender<u64>; 3],
    task: JoinHandle<()>,
}

impl Hub {
    /// Starts the listener task.
    #[must_use]
    pub fn start(pool: PgPool) -> Self {
        let (mailbox_tx, _) = broadcast::channel(4096);
        let queue_tx = [
            watch::channel(0).0,
            watch::channel(0).0,
            watch::channel(0).0,
        ];
        let task = tokio::spawn(listen(pool, mailbox_tx.clone(), queue_tx.clone()));
        Self {
            mailbox_tx,
            queue_tx,
            task,
        }
    }

    pub fn subscribe_mailboxes(&self) -> broadcast::Receiver<HubEvent> {
        self.mailbox_tx.subscribe()
    }

    /// A receiver for one queue kind; call `borrow_and_update` before looking
    /// for work and `changed().await` after finding none, so no NOTIFY is lost.
    #[must_use]
    pub fn subscribe_queue(&self, kind: i32) -> watch::Receiver<u64> {
        let i = usize::try_from(kind).unwrap_or(0).min(2);
        self.queue_tx[i].subscribe()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn listen(
    pool: PgPool,
    mailbox_tx: broadcast::Sender<HubEvent>,
    queue_tx: [watch::Sender<u64>; 3],
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen_all([MAILBOX_CHANNEL, QUEUE_CHANNEL]).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // Anything may have happened while we were not listening.
        let _ = mailbox_tx.send(HubEvent::Resync);
        for tx in &queue_tx {
            tx.send_modify(|n| *n += 1);
        }
        // Ok(None) or an error: the connection was lost; reconnect and tell
        // everyone to resynchronise.
        while let Ok(Some(n)) = listener.try_recv().await {
            match n.channel() {
                MAILBOX_CHANNEL => {
                    if let Some(c) = MailboxChange::parse(n.payload()) {
                        let _ = mailbox_tx.send(HubEvent::Change(c));
                    }
                }
                QUEUE_CHANNEL => {
                    let kind: usize = n.payload().parse().unwrap_or(0);
                    if let Some(tx) = queue_tx.get(kind) {
                        tx.send_modify(|n| *n += 1);
                    }
                }
                _ => {}
            }
        }
    }
}
