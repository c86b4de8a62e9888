//! The exclusive maildrop lock (RFC 1939 §8: "the POP3 server then
//! acquires an exclusive-access lock on the maildrop"), held in the store as
//! an expiring named lock so that every pop3 replica honours it and a dead
//! replica's lock expires by itself.
//!
//! Name `pop3:<user_id>`, owner the session id. While the session lives the
//! lock is refreshed every third of its TTL; losing it (someone else holds
//! it after an expiry) is reported through [`LockGuard::is_lost`] and the
//! session then deletes nothing.
//!
//! Issue #16: the lock is released however the session ends (QUIT, the
//! autologout timer, a dropped connection, server shutdown), and before
//! the connection is closed. A client that drops its connection and
//! reconnects at once can still reach the new session before the old one
//! has finished its release RPC; [`LocalLocks`] lets the new session see
//! that the holder is a session of this process that is ending and wait
//! for its release instead of answering `[IN-USE]`.
//!
//! The refresh task is joined before the release RPC: a refresh already
//! sent when the session ends must not reach the store after the release
//! and take the lock again for a whole TTL (the "released" lock would then
//! refuse the returning client with `[IN-USE]` until it expired).

use std::collections::HashMap;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailstore_api::StoreClient;
use mailstore_api::pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deadline for the lock RPCs.
const LOCK_RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest a new session waits for an ending session of this process
/// to release the maildrop (one release RPC).
const RELEASE_WAIT: Duration = LOCK_RPC_TIMEOUT;

/// The longest a new session waits for a session of this process that
/// holds the maildrop but has not (yet) seen its connection end.
const LOCAL_GRACE: Duration = Duration::from_secs(1);

/// One lock held by a session of this process.
#[derive(Debug, Default)]
struct Holder {
    /// The session is ending: its release is under way.
    ending: AtomicBool,
    /// Cancelled once the release is done (or failed).
    released: CancellationToken,
}

/// The maildrop locks held by this process's sessions, by lock name.
#[derive(Debug, Default, Clone)]
pub struct LocalLocks(Arc<std::sync::Mutex<HashMap<String, Arc<Holder>>>>);

impl LocalLocks {
    fn register(&self, name: &str) -> Arc<Holder> {
        let holder = Arc::new(Holder::default());
        if let Ok(mut map) = self.0.lock() {
            map.insert(name.to_string(), holder.clone());
        }
        holder
    }

    fn unregister(&self, name: &str, holder: &Arc<Holder>) {
        if let Ok(mut map) = self.0.lock()
            && map.get(name).is_some_and(|h| Arc::ptr_eq(h, holder))
        {
            map.remove(name);
        }
        holder.released.cancel();
    }

    /// When a session of this process holds `name`: how long to wait for
    /// its release, and a token cancelled once the release is done. An
    /// ending session gets [`RELEASE_WAIT`]; one not yet known to be ending
    /// gets [`LOCAL_GRACE`] — its client may have dropped the connection a
    /// moment ago and the session not yet have read the end of the stream.
    pub(crate) fn holder(&self, name: &str) -> Option<(Duration, CancellationToken)> {
        let map = self.0.lock().ok()?;
        map.get(name).map(|h| {
            let wait = if h.ending.load(Ordering::SeqCst) {
                RELEASE_WAIT
            } else {
                LOCAL_GRACE
            };
            (wait, h.released.clone())
        })
    }
}

/// The maildrop lock: refreshed in the background, released when the
/// session ends (or, if the task is torn down, released from `Drop`).
#[derive(Debug)]
pub(crate) struct LockGuard {
    pub(crate) name: String,
    pub(crate) owner: String,
    store: StoreClient,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
    released: bool,
    locals: LocalLocks,
    holder: Arc<Holder>,
    /// The refresh task; joined before the lock is released.
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    pub(crate) fn start(
        store: StoreClient,
        locals: &LocalLocks,
        name: String,
        owner: String,
        ttl: Duration,
    ) -> Self {
        let holder = locals.register(&name);
        let stop = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let (s, st, l, n, o) = (
            store.clone(),
            stop.clone(),
            lost.clone(),
            name.clone(),
            owner.clone(),
        );
        let refresher = tokio::spawn(async move {
            let period = ttl / 3;
            loop {
                tokio::select! {
                    () = st.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                match acquire_lock(&s, &n, &o, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lock = %n, "maildrop lock lost");
                        l.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lock = %n, error = %e, "refreshing maildrop lock failed")
                    }
                }
            }
        });
        Self {
            name,
            owner,
            store,
            stop,
            lost,
            released: false,
            locals: locals.clone(),
            holder,
            refresher: Some(refresher),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock. Marks it as ending before the first await, so a
    /// session of this process that finds it taken waits for the release.
    pub(crate) async fn release(mut self) {
        self.holder.ending.store(true, Ordering::SeqCst);
        self.stop.cancel();
        self.released = true;
        join_refresher(self.refresher.take()).await;
        release_lock(&self.store, &self.name, &self.owner).await;
        self.locals.unregister(&self.name, &self.holder);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        self.holder.ending.store(true, Ordering::SeqCst);
        let (locals, holder) = (self.locals.clone(), self.holder.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (s, n, o) = (self.store.clone(), self.name.clone(), self.owner.clone());
            let refresher = self.refresher.take();
            rt.spawn(async move {
                join_refresher(refresher).await;
                release_lock(&s, &n, &o).await;
                locals.unregister(&n, &holder);
            });
        } else {
            locals.unregister(&self.name, &holder);
        }
    }
}

/// Waits for the (cancelled) refresh task to finish a refresh it may have
/// in flight, so that the release is the last lock RPC of the session.
async fn join_refresher(refresher: Option<JoinHandle<()>>) {
    if let Some(task) = refresher {
        // Bounded by the refresh RPC's own deadline.
        let _ = tokio::time::timeout(LOCK_RPC_TIMEOUT * 2, task).await;
    }
}

/// Takes or refreshes the lock; false when someone else holds it.
pub(crate) async fn acquire_lock(
    store: &StoreClient,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<bool, tonic::Status> {
    let mut req = tonic::Request::new(pb::AcquireLockRequest {
        name: name.to_string(),
        owner: owner.to_string(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    });
    req.set_timeout(LOCK_RPC_TIMEOUT);
    Ok(store
        .mailboxes
        .clone()
        .acquire_lock(req)
        .await?
        .into_inner()
        .acquired)
}

/// Releases the lock if we hold it; failures only log (it expires).
pub(crate) async fn release_lock(store: &StoreClient, name: &str, owner: &str) {
    let mut req = tonic::Request::new(pb::ReleaseLockRequest {
        name: name.to_string(),
        owner: owner.to_string(),
    });
    req.set_timeout(LOCK_RPC_TIMEOUT);
    if let Err(e) = store.mailboxes.clone().release_lock(req).await {
        tracing::warn!(lock = %name, error = %e, "releasing maildrop lock failed; it will expire");
    }
}
