//! The worker loop: lease outbound jobs, group them by destination into
//! lanes (one reused connection each, at most `--per-destination` per
//! domain), and work the lanes concurrently while their leases are renewed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use queue_worker::{ActiveJobs, Jobs, LeaseSpec, Leaser};
use service_kit::Shutdown;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::client::{Connection, Timeouts};
use crate::config::Config;
use crate::dkim;
use crate::route::Router;

pub(crate) struct Worker {
    pub(crate) store: StoreClient,
    pub(crate) id: String,
    pub(crate) config: Config,
    pub(crate) router: Router,
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    /// Judges certificates (Mozilla roots plus `--ca-file`).
    pub(crate) verifier: crate::client::Verifier,
    /// MTA-STS policies (RFC 8461), unless `--no-mta-sts`.
    pub(crate) mta_sts: Option<crate::mta_sts::MtaSts>,
    /// DANE (RFC 7672), unless `--no-dane` or without `--dns-server`.
    pub(crate) dane: Option<crate::dane::Dane>,
    /// Signing keys: `--dkim-key` files plus the active keys in the store,
    /// reloaded every minute (so `mailctl dkim rotate` needs no restart)
    /// and at once when a marked message's domain has a new store key.
    pub(crate) dkim: std::sync::RwLock<Arc<dkim::Signer>>,
    /// The checks behind the ARC sets of forwarded mail, unless `--no-arc`.
    pub(crate) arc: Option<smtp_in::inbound::Checker>,
    /// Smarthost credentials by host name.
    pub(crate) relay_auth: HashMap<String, Credentials>,
    pub(crate) timeouts: Timeouts,
    /// Per-destination connection limits and back-off.
    pub(crate) throttle: crate::throttle::Throttle,
    /// Per-job queue calls as this worker.
    pub(crate) jobs: Jobs,
    /// Jobs leased and being worked on (their leases are renewed).
    pub(crate) active: Arc<ActiveJobs>,
}

/// AUTH credentials for one smarthost.
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// The domain of an address, lower-cased, without a trailing dot.
pub(crate) fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

impl Worker {
    /// Leases and works jobs until shutdown, then lets lanes in progress
    /// finish for a while.
    pub(crate) async fn run(self: &Arc<Self>, shutdown: Shutdown) {
        tracing::info!(worker = %self.id, "smtp-out worker started");
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let spec = LeaseSpec {
            kind: pb::QueueKind::Outbound,
            worker_id: self.id.clone(),
            lease_ttl_ms: self.config.lease_ms,
            max_attempts: self.config.max_unfinished,
        };
        let renew = tokio::spawn(queue_worker::renew_leases(
            self.store.clone(),
            spec.clone(),
            self.active.clone(),
            shutdown.clone(),
        ));
        let mut leaser = Leaser::new(self.store.clone(), spec);
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Wait for room before asking for work.
            let room = tokio::select! {
                p = slots.clone().acquire_owned() => p,
                () = shutdown.cancelled() => break,
            };
            let Ok(room) = room else { break };
            let free = slots.available_permits() + 1;
            drop(room);
            let want = u32::try_from(free)
                .unwrap_or(u32::MAX)
                .min(self.config.batch.max(1));
            let Some(jobs) = leaser.lease(want, self.lease_wait_ms(), &shutdown).await else {
                break;
            };
            if jobs.is_empty() {
                continue;
            }
            metrics::counter!("smtp_out_leased_total").increment(jobs.len() as u64);
            self.active.add(&jobs);
            // Group by destination, then split each group into at most
            // `per_destination` lanes, each with its own connection.
            let mut groups: HashMap<String, Vec<pb::Job>> = HashMap::new();
            for job in jobs {
                let dest = if job.destination.is_empty() {
                    job.recipients
                        .first()
                        .and_then(|r| r.recipient.as_ref())
                        .map(|r| domain_of(&r.address))
                        .unwrap_or_default()
                } else {
                    job.destination.to_ascii_lowercase()
                };
                groups.entry(dest).or_default().push(job);
            }
            for (dest, jobs) in groups {
                let lanes = self.config.per_destination.max(1).min(jobs.len());
                let mut split: Vec<Vec<pb::Job>> = (0..lanes).map(|_| Vec::new()).collect();
                for (i, j) in jobs.into_iter().enumerate() {
                    split[i % lanes].push(j);
                }
                for lane in split {
                    let n = u32::try_from(lane.len()).unwrap_or(u32::MAX);
                    let Ok(permit) = slots.clone().acquire_many_owned(n).await else {
                        break;
                    };
                    let me = self.clone();
                    let dest = dest.clone();
                    let sd = shutdown.clone();
                    tasks.spawn(async move {
                        me.work_lane(&dest, lane, &sd).await;
                        drop(permit);
                    });
                }
            }
        }
        // Let lanes in progress finish for a while; the rest is re-leased
        // by another worker when the lease expires.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        renew.abort();
        tracing::info!(worker = %self.id, "smtp-out worker stopped");
    }

    /// How long a Lease call waits for work. The store wakes a waiting
    /// Lease on new jobs, but not on a retry time set by FinishJob while it
    /// waits, so the wait is kept below the shortest retry delay.
    fn lease_wait_ms(&self) -> u64 {
        let shortest = self.config.retry_schedule.iter().min().map_or(20_000, |d| {
            u64::try_from(d.as_millis() / 2).unwrap_or(20_000)
        });
        shortest.clamp(100, 20_000)
    }

    /// Works a lane of jobs for one destination over one reused connection.
    async fn work_lane(&self, dest: &str, jobs: Vec<pb::Job>, shutdown: &Shutdown) {
        let span = tracing::info_span!("destination", domain = %dest);
        self.work_lane_inner(dest, jobs, shutdown)
            .instrument(span)
            .await;
    }

    async fn work_lane_inner(&self, dest: &str, jobs: Vec<pb::Job>, shutdown: &Shutdown) {
        // The destination's allowance (halved while it asks us to slow
        // down); paused: every job back to the queue for the pause's end.
        let slot = self.throttle.enter(dest).await;
        let plan = match &slot {
            Ok(_) => Some(self.plan(dest).await),
            Err(_) => None,
        };
        let mut open: Option<Open> = None;
        for job in jobs {
            let id = job.id;
            // A connection this lane holds and may reuse adds no load: it
            // goes on (another MX may have answered the 421).
            let reusable = open
                .as_ref()
                .is_some_and(|o| o.conn.transactions < self.config.messages_per_connection);
            let paused = match &slot {
                Err(until) => Some(*until),
                Ok(_) if reusable => None,
                Ok(_) => self.throttle.paused_until(dest),
            };
            // Paused before or while this lane works: the rest waits.
            if let Some(until) = paused {
                self.hand_back(&job, until).await;
                continue;
            }
            let Some(plan) = plan.as_ref() else { continue };
            if shutdown.is_cancelled() {
                // Not started: hand it back at once rather than holding the
                // lease until it expires.
                let _ = self
                    .finish(
                        &job,
                        pb::FinishOutcome::Retry,
                        Some(chrono::Utc::now()),
                        "smtp-out worker shutting down",
                    )
                    .await;
                self.active.remove(id);
                continue;
            }
            // OpenTelemetry: the message's trace, from its Enqueue.
            let span = tracing::info_span!("job", id);
            service_kit::otel::set_parent(&span, &job.traceparent);
            if let Err(e) = self
                .work_job(dest, job, plan, &mut open)
                .instrument(span)
                .await
            {
                tracing::warn!(job = id, error = %e.message(), "job left for retry after a store error");
            }
            self.active.remove(id);
        }
        if let Some(o) = open.take() {
            o.conn.quit().await;
        }
    }

    /// Returns a job not attempted because its destination is paused, to be
    /// leased again when the pause ends (no recipient result changes).
    async fn hand_back(&self, job: &pb::Job, until: tokio::time::Instant) {
        let wait = until.saturating_duration_since(tokio::time::Instant::now());
        let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        if let Err(e) = self
            .finish(
                job,
                pb::FinishOutcome::Retry,
                Some(at),
                "4.7.0 the destination asked us to slow down (421); backing off",
            )
            .await
        {
            tracing::warn!(job = job.id, error = %e.message(), "job not handed back");
        }
        self.active.remove(job.id);
    }
}

/// A connection kept open between messages of one destination group.
pub(crate) struct Open {
    pub(crate) host: String,
    pub(crate) addr: SocketAddr,
    pub(crate) conn: Connection<TcpStream>,
}
