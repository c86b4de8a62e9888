//! The exclusive maildrop lock (RFC 1939 §8: "the POP3 server then
//! acquires an exclusive-access lock on the maildrop"), held in the store as
//! an expiring named lock so that every pop3 replica honours it and a dead
//! replica's lock expires by itself.
//!
//! Name `pop3:<user_id>`, owner the session id. While the session lives the
//! lock is refreshed every third of its TTL; losing it (someone else holds
//! it after an expiry) is reported through [`LockGuard::is_lost`] and the
//! session then deletes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailstore_api::StoreClient;
use mailstore_api::pb;
use tokio_util::sync::CancellationToken;

/// Deadline for the lock RPCs.
const LOCK_RPC_TIMEOUT: Duration = Duration::from_secs(15);

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
}

impl LockGuard {
    pub(crate) fn start(store: StoreClient, name: String, owner: String, ttl: Duration) -> Self {
        let stop = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let (s, st, l, n, o) = (
            store.clone(),
            stop.clone(),
            lost.clone(),
            name.clone(),
            owner.clone(),
        );
        tokio::spawn(async move {
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
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(crate) async fn release(mut self) {
        self.stop.cancel();
        self.released = true;
        release_lock(&self.store, &self.name, &self.owner).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.released
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (s, n, o) = (self.store.clone(), self.name.clone(), self.owner.clone());
            rt.spawn(async move { release_lock(&s, &n, &o).await });
        }
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
