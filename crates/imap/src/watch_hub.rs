//! One change stream per imap process for every selected mailbox (IDLE,
//! and the changes reported at NOOP and other commands, RFC 9051 §7.4.1).
//!
//! The store's `Watch` is asked once for every user's changes (user 0) and
//! each event is handed to the sessions that have that user's mailbox
//! selected. Before, each selected session held its own stream: a task and
//! an HTTP/2 stream with its buffers here, and a task, a queue and a stream
//! in the store, for every idle connection (about 26 KiB of the 60 an idle
//! session cost in all; docs/benchmarks.md, "Idle connections").
//!
//! Nothing may be missed between a session's snapshot and its first event:
//! a session registers before it reads its snapshot, and while the stream
//! is down (store restart, first start) every registered session is marked
//! to resynchronise once it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use mailstore_api::StoreClient;
use tokio::sync::Notify;

use crate::store::{HubEvent, Store};

/// How long a SELECT waits for the stream to be up before it goes on and
/// relies on the resynchronisation when it comes up.
const READY_WAIT: Duration = Duration::from_secs(3);

/// The process's watch: cheap to clone, started at the first registration.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: StoreClient,
    started: AtomicBool,
    /// The stream is open and its READY was seen.
    live: AtomicBool,
    /// Woken when `live` turns true.
    up: Notify,
    next_id: AtomicU64,
    /// Registered sessions by user.
    watchers: Mutex<HashMap<u64, Vec<Watcher>>>,
}

struct Watcher {
    id: u64,
    mailbox_id: u64,
    notify: Arc<Notify>,
    dirty: Arc<AtomicBool>,
}

impl Watcher {
    fn signal(&self) {
        self.dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// A session's place in the hub, for one selected mailbox: `dirty` is set
/// and `notify` woken when the mailbox may have changed. Dropping it (a
/// new SELECT, CLOSE, the end of the session) leaves the hub.
pub struct Registration {
    pub notify: Arc<Notify>,
    pub dirty: Arc<AtomicBool>,
    hub: Weak<Inner>,
    user_id: u64,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let mut map = hub.watchers();
            if let Some(list) = map.get_mut(&self.user_id) {
                list.retain(|w| w.id != self.id);
                if list.is_empty() {
                    map.remove(&self.user_id);
                }
            }
        }
    }
}

impl WatchHub {
    #[must_use]
    pub fn new(store: StoreClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                started: AtomicBool::new(false),
                live: AtomicBool::new(false),
                up: Notify::new(),
                next_id: AtomicU64::new(1),
                watchers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Registers a session that selected `mailbox_id` of `user_id`, and
    /// waits (bounded) for the stream to be up so that nothing committed
    /// after the snapshot the caller takes next can be missed. If it is
    /// not up in time, the registration is marked dirty now and again when
    /// the stream comes up.
    pub async fn register(&self, user_id: u64, mailbox_id: u64) -> Registration {
        self.start();
        let notify = Arc::new(Notify::new());
        let dirty = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .watchers()
            .entry(user_id)
            .or_default()
            .push(Watcher {
                id,
                mailbox_id,
                notify: notify.clone(),
                dirty: dirty.clone(),
            });
        let registration = Registration {
            notify,
            dirty,
            hub: Arc::downgrade(&self.inner),
            user_id,
            id,
        };
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let up = self.inner.up.notified();
            if self.inner.live.load(Ordering::Acquire) {
                return registration;
            }
            if tokio::time::timeout_at(deadline, up).await.is_err() {
                tracing::warn!("store watch not ready; will resync when it is");
                registration.dirty.store(true, Ordering::Release);
                return registration;
            }
        }
    }

    fn start(&self) {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            let store = self.inner.store.clone();
            tokio::spawn(run(store, Arc::downgrade(&self.inner)));
        }
    }
}

impl Inner {
    fn watchers(&self) -> MutexGuard<'_, HashMap<u64, Vec<Watcher>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every registered session may have missed events.
    fn signal_all(&self) {
        for w in self.watchers().values().flatten() {
            w.signal();
        }
    }

    fn dispatch(&self, user_id: u64, mailbox_id: u64) {
        if let Some(list) = self.watchers().get(&user_id) {
            for w in list.iter().filter(|w| w.mailbox_id == mailbox_id) {
                w.signal();
            }
        }
    }
}

/// Follows the store's Watch for every user, reconnecting with back-off
/// when the stream ends; ends when the hub is gone.
async fn run(store: StoreClient, hub: Weak<Inner>) {
    let store = Store::new(&store);
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.watch_everyone().await {
            Ok(mut s) => {
                while let Some(ev) = s.next().await {
                    let Some(hub) = hub.upgrade() else { return };
                    match ev {
                        HubEvent::Ready => {
                            backoff = Duration::from_millis(100);
                            hub.live.store(true, Ordering::Release);
                            hub.signal_all();
                            hub.up.notify_waiters();
                        }
                        HubEvent::Everything => hub.signal_all(),
                        HubEvent::Mailbox {
                            user_id,
                            mailbox_id,
                        } => hub.dispatch(user_id, mailbox_id),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "watch failed"),
        }
        match hub.upgrade() {
            Some(hub) => hub.live.store(false, Ordering::Release),
            None => return,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no store to watch, SELECT does not hang: registration waits
    /// [`READY_WAIT`] at most and comes back marked to resynchronise; a
    /// dropped registration leaves the table.
    #[tokio::test]
    async fn without_the_store_registration_is_bounded_and_dirty() {
        let store = mailstore_api::connect("http://127.0.0.1:9", "token").expect("client");
        let hub = WatchHub::new(store);
        let t0 = tokio::time::Instant::now();
        let r = hub.register(1, 2).await;
        assert!(t0.elapsed() >= READY_WAIT && t0.elapsed() < READY_WAIT * 2);
        assert!(r.dirty.load(Ordering::Acquire));
        assert_eq!(hub.inner.watchers().get(&1).map(Vec::len), Some(1));
        drop(r);
        assert!(hub.inner.watchers().is_empty());
    }
}
