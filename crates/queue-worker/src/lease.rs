//! Leasing jobs (`Queue.Lease`) and keeping their leases alive
//! (`Queue.RenewLease`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use tokio_util::sync::CancellationToken;

/// What a worker leases: fixed for the worker's life.
#[derive(Debug, Clone)]
pub struct LeaseSpec {
    /// Which queue.
    pub kind: pb::QueueKind,
    /// This worker's name (the store checks it on every later call).
    pub worker_id: String,
    /// Lease duration; a worker that dies frees its jobs after this.
    pub lease_ttl_ms: u64,
    /// A job leased this many times without finishing is quarantined.
    pub max_attempts: u32,
}

/// Asks the store for work, one `Lease` call at a time, backing off while
/// the store fails.
#[derive(Debug)]
pub struct Leaser {
    store: StoreClient,
    spec: LeaseSpec,
    /// Failed calls in a row (reset by a successful one).
    failures: u32,
}

impl Leaser {
    /// A leaser for `spec`.
    #[must_use]
    pub fn new(store: StoreClient, spec: LeaseSpec) -> Self {
        Self {
            store,
            spec,
            failures: 0,
        }
    }

    /// Leases up to `max_jobs`, waiting up to `wait_ms` in the store for
    /// work. `None`: shutdown came first (stop the loop). An empty batch:
    /// nothing to do, or the call failed and the back-off (200 ms per failure
    /// in a row, at most 5 s) has passed — ask again.
    pub async fn lease(
        &mut self,
        max_jobs: u32,
        wait_ms: u64,
        shutdown: &CancellationToken,
    ) -> Option<Vec<pb::Job>> {
        let req = pb::LeaseRequest {
            kind: self.spec.kind as i32,
            worker_id: self.spec.worker_id.clone(),
            max_jobs,
            lease_ttl_ms: self.spec.lease_ttl_ms,
            wait_ms,
            max_attempts: self.spec.max_attempts,
        };
        let mut q = self.store.queue.clone();
        let leased = tokio::select! {
            r = q.lease(req) => r,
            () = shutdown.cancelled() => return None,
        };
        match leased {
            Ok(r) => {
                self.failures = 0;
                Some(r.into_inner().jobs)
            }
            Err(e) => {
                self.failures += 1;
                tracing::warn!(error = %e.message(), "lease failed; backing off");
                let wait = Duration::from_millis(200 * u64::from(self.failures.min(25)));
                tokio::select! {
                    () = tokio::time::sleep(wait) => Some(Vec::new()),
                    () = shutdown.cancelled() => None,
                }
            }
        }
    }
}

/// The ids of the jobs this worker is working on: their leases are renewed
/// by [`renew_leases`] until they are removed.
#[derive(Debug, Default)]
pub struct ActiveJobs {
    ids: Mutex<HashSet<u64>>,
}

impl ActiveJobs {
    /// Starts renewing the leases of `jobs`.
    pub fn add(&self, jobs: &[pb::Job]) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.extend(jobs.iter().map(|j| j.id));
    }

    /// Stops renewing the lease of job `id` (finished or given up).
    pub fn remove(&self, id: u64) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn snapshot(&self) -> Vec<u64> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().copied().collect()
    }
}

/// Renews the leases of the `active` jobs every third of the lease time
/// (at least every 300 ms). After shutdown it renews without pause for as
/// long as jobs are still active (the caller aborts it once its jobs are
/// drained) and returns when none are. Failures are ignored: the next round
/// tries again, and a lease that expires meanwhile is re-leased elsewhere.
pub async fn renew_leases(
    store: StoreClient,
    spec: LeaseSpec,
    active: Arc<ActiveJobs>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_millis((spec.lease_ttl_ms / 3).max(300));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => {}
        }
        let ids = active.snapshot();
        if ids.is_empty() {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        let _ = store
            .queue
            .clone()
            .renew_lease(pb::RenewLeaseRequest {
                job_ids: ids,
                worker_id: spec.worker_id.clone(),
                lease_ttl_ms: spec.lease_ttl_ms,
            })
            .await;
    }
}
