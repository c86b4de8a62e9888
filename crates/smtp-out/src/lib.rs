//! # smtp-out
//!
//! Works the outbound queue: relays mail to the rest of the internet.
//!
//! - Leases `QUEUE_KIND_OUTBOUND` jobs in batches, groups them by
//!   destination domain (`Job.destination`), and works each group over as few
//!   connections as possible (a connection is reused for several messages to
//!   one host), with a per-destination connection limit; slow destinations
//!   do not hold up the others. Leases are renewed while a job is worked on.
//! - Routing ([`route`]): RFC 5321 §5.1 MX → implicit MX, RFC 7505 Null MX,
//!   smarthosts, with hickory-resolver and a configurable DNS server. Every
//!   MX host and address is tried before a recipient is deferred.
//! - SMTP client ([`client`]): EHLO, opportunistic STARTTLS (RFC 3207),
//!   PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
//!   (RFC 6531), dot-stuffing ([`dotstuff`]) and a hostile-proof reply parser
//!   ([`reply`]); RFC 5321 §4.5.3.2 timeouts.
//! - Results: each recipient's outcome is recorded with `SetRecipientResult`
//!   (DELIVERED / DEFERRED / FAILED with the remote reply); each attempt is
//!   an `AddEvent` with the MX, IP, TLS version/cipher and reply. Jobs end
//!   `DONE`, or `RETRY` on the configured back-off schedule until
//!   `--give-up-after` (default 5 days), when deferred recipients fail.
//! - Bounces: one RFC 3464 DSN per job for its failed recipients, queued
//!   inbound from `<>` to the envelope sender — never for a `<>` sender or
//!   an automatic message; a "delayed" DSN once a message is older than
//!   `--delay-notice-after` (4 h) when NOTIFY allows.
//! - DKIM ([`dkim`]): rsa-sha256 / ed25519-sha256 signatures for domains
//!   with a configured key.
//!
//! Delivery is at-least-once: a worker killed after the remote's `250` to the
//! final dot but before `SetRecipientResult` sends that message again on the
//! next lease (RFC 5321 §6.1 accepts such duplicates over loss).

pub mod client;
pub mod config;
pub mod dkim;
pub mod dotstuff;
pub mod reply;
pub mod route;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use service_kit::{HealthServer, Shutdown};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::client::{ClientError, Connection, Envelope, RcptOutcome, Timeouts, Tls};
use crate::route::{Host, RouteError, Router};

pub use config::Config;

/// Largest message read from the store for sending.
const MAX_MESSAGE: u64 = 256 * 1024 * 1024;

/// Runs the worker until shutdown.
///
/// # Errors
/// Bad flags, an unreadable resolver configuration or an unbindable health port.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // One crypto provider for the process (TOOLCHAIN.md); fails harmlessly
    // when another service in this process installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = config.store.client()?;
    let id = config.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!(
            "{}-{}-{:04x}",
            host.trim(),
            std::process::id(),
            rand::random::<u16>()
        )
    });
    if config.retry_schedule.is_empty() {
        anyhow::bail!("--retry-schedule must name at least one delay");
    }
    let mut relays = HashMap::new();
    for spec in &config.relays {
        let (domain, host) = route::parse_relay(spec, 25).map_err(anyhow::Error::msg)?;
        relays.insert(domain, host);
    }
    let mut relay_auth = HashMap::new();
    for spec in &config.relay_auth {
        let (host, rest) = spec.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("relay auth {spec:?}: expected HOST=USER:PASSWORD_FILE")
        })?;
        let (user, file) = rest.split_once(':').ok_or_else(|| {
            anyhow::anyhow!("relay auth {host}: expected HOST=USER:PASSWORD_FILE")
        })?;
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("relay auth {host}: read {file}"))?;
        relay_auth.insert(
            host.to_ascii_lowercase(),
            Credentials {
                user: user.to_string(),
                password: password.trim_end_matches(['\r', '\n']).to_string(),
            },
        );
    }
    let dkim = load_dkim(&store, &config.dkim_keys).await?;
    let router = Router::new(
        config.dns_server,
        Duration::from_millis(config.dns_timeout_ms),
        config.smtp_port,
        relays,
    )
    .context("DNS resolver")?;
    let readiness = service_kit::store_readiness(store.clone());
    let health = HealthServer::bind(config.http_listen, readiness)
        .await
        .context("bind smtp-out health endpoint")?;
    println!("listening smtp-out-http={}", health.local_addr()?);
    tracing::info!(worker = %id, "smtp-out health endpoint bound");
    let health = tokio::spawn(health.serve(shutdown.clone()));
    let timeouts = Timeouts {
        connect: config.connect_timeout,
        command: config.command_timeout,
        data_init: config.command_timeout.min(Duration::from_secs(120)),
        data_block: config.command_timeout.min(Duration::from_secs(180)),
        data_end: config.data_timeout,
    };
    let worker = Arc::new(Worker {
        store,
        id,
        tls: (!config.no_starttls).then(client::opportunistic_tls),
        dkim: std::sync::RwLock::new(Arc::new(dkim)),
        relay_auth,
        router,
        timeouts,
        destinations: Mutex::new(HashMap::new()),
        active: Mutex::new(HashSet::new()),
        config,
    });
    let reload = tokio::spawn(reload_dkim(worker.clone(), shutdown.clone()));
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    reload.abort();
    let _ = health.await;
    Ok(())
}

/// The DKIM signer: keys from `--dkim-key` files, then the active key of
/// every domain in the store (which wins for its domain).
async fn load_dkim(store: &StoreClient, specs: &[String]) -> anyhow::Result<dkim::Signer> {
    let mut signer = dkim::Signer::load(specs).map_err(anyhow::Error::msg)?;
    let keys = store
        .accounts
        .clone()
        .list_dkim_keys(pb::ListDkimKeysRequest {
            domain: String::new(),
            include_private: true,
            active_only: true,
        })
        .await;
    match keys {
        Ok(r) => {
            for k in r.into_inner().keys {
                match dkim::key_from_pem(&k.private_key) {
                    Ok(key) => signer.add(&k.domain, &k.selector, key),
                    Err(e) => {
                        tracing::warn!(domain = %k.domain, selector = %k.selector, error = %e, "unusable DKIM key")
                    }
                }
            }
        }
        // The store may be down at start: sign with the file keys for now;
        // the reload picks the store's keys up later.
        Err(e) => tracing::warn!(error = %e.message(), "DKIM keys not loaded from the store"),
    }
    Ok(signer)
}

async fn reload_dkim(worker: Arc<Worker>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match load_dkim(&worker.store, &worker.config.dkim_keys).await {
            Ok(s) => {
                if let Ok(mut g) = worker.dkim.write() {
                    *g = Arc::new(s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "DKIM reload failed"),
        }
    }
}

struct Worker {
    store: StoreClient,
    id: String,
    config: Config,
    router: Router,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Signing keys: `--dkim-key` files plus the active keys in the store,
    /// reloaded every minute (so `mailctl dkim rotate` needs no restart).
    dkim: std::sync::RwLock<Arc<dkim::Signer>>,
    /// Smarthost credentials by host name.
    relay_auth: HashMap<String, Credentials>,
    timeouts: Timeouts,
    /// Per-destination connection limits.
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Jobs leased and being worked on (their leases are renewed).
    active: Mutex<HashSet<u64>>,
}

/// AUTH credentials for one smarthost.
struct Credentials {
    user: String,
    password: String,
}

/// A connection kept open between messages of one destination group.
struct Open {
    host: String,
    addr: SocketAddr,
    conn: Connection<TcpStream>,
}

/// What happened to one job's pending recipients in one attempt.
struct Attempt {
    /// (recipient index, outcome)
    results: Vec<(usize, RcptOutcome)>,
    /// The accepting server offered DSN (RFC 3461): it notifies from now on.
    remote_dsn: bool,
}

fn ts(d: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: d.timestamp(),
        nanos: 0,
    }
}

fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// The enhanced status code of an outcome text ("550 5.1.1 …" → "5.1.1").
fn status_of(text: &str, default: &str) -> String {
    let rest = text
        .split_once(' ')
        .filter(|(code, _)| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text, |(_, r)| r);
    mail_dsn::status_of(rest, default)
}

impl Worker {
    async fn run(self: &Arc<Self>, shutdown: Shutdown) {
        tracing::info!(worker = %self.id, "smtp-out worker started");
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let renew = tokio::spawn(self.clone().renew_leases(shutdown.clone()));
        let mut failures = 0u32;
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
            let req = pb::LeaseRequest {
                kind: pb::QueueKind::Outbound as i32,
                worker_id: self.id.clone(),
                max_jobs: want,
                lease_ttl_ms: self.config.lease_ms,
                wait_ms: self.lease_wait_ms(),
                max_attempts: self.config.max_unfinished,
            };
            let mut q = self.store.queue.clone();
            let leased = tokio::select! {
                r = q.lease(req) => r,
                () = shutdown.cancelled() => break,
            };
            let jobs = match leased {
                Ok(r) => {
                    failures = 0;
                    r.into_inner().jobs
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e.message(), "lease failed; backing off");
                    let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            if jobs.is_empty() {
                continue;
            }
            metrics::counter!("smtp_out_leased_total").increment(jobs.len() as u64);
            {
                let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
                active.extend(jobs.iter().map(|j| j.id));
            }
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

    /// Keeps the leases of jobs in progress alive.
    async fn renew_leases(self: Arc<Self>, shutdown: Shutdown) {
        let every = Duration::from_millis((self.config.lease_ms / 3).max(300));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => {}
            }
            let ids: Vec<u64> = {
                let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
                active.iter().copied().collect()
            };
            if ids.is_empty() {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let _ = self
                .store
                .queue
                .clone()
                .renew_lease(pb::RenewLeaseRequest {
                    job_ids: ids,
                    worker_id: self.id.clone(),
                    lease_ttl_ms: self.config.lease_ms,
                })
                .await;
        }
    }

    fn destination_limit(&self, dest: &str) -> Arc<Semaphore> {
        let mut d = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() > 10_000 {
            d.retain(|_, s| Arc::strong_count(s) > 1);
        }
        d.entry(dest.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_destination.max(1))))
            .clone()
    }

    /// Works a lane of jobs for one destination over one reused connection.
    async fn work_lane(&self, dest: &str, jobs: Vec<pb::Job>, shutdown: &Shutdown) {
        let span = tracing::info_span!("destination", domain = %dest);
        self.work_lane_inner(dest, jobs, shutdown)
            .instrument(span)
            .await;
    }

    async fn work_lane_inner(&self, dest: &str, jobs: Vec<pb::Job>, shutdown: &Shutdown) {
        let limit = self.destination_limit(dest);
        let _permit = limit.acquire_owned().await;
        let route = self.router.route(dest).await;
        let mut open: Option<Open> = None;
        for job in jobs {
            let id = job.id;
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
                self.active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                continue;
            }
            if let Err(e) = self.work_job(dest, job, &route, &mut open).await {
                tracing::warn!(job = id, error = %e.message(), "job left for retry after a store error");
            }
            self.active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        if let Some(o) = open.take() {
            o.conn.quit().await;
        }
    }

    async fn read_message(&self, job: &pb::Job) -> Result<Vec<u8>, tonic::Status> {
        if job.size > MAX_MESSAGE {
            return Err(tonic::Status::failed_precondition("message too large"));
        }
        let mut s = self
            .store
            .queue
            .clone()
            .read_message(pb::ReadMessageRequest {
                job_id: job.id,
                offset: 0,
                length: 0,
            })
            .await?
            .into_inner();
        let mut raw = Vec::with_capacity(usize::try_from(job.size).unwrap_or(0));
        while let Some(c) = s.message().await? {
            raw.extend_from_slice(&c.data);
            if raw.len() as u64 > MAX_MESSAGE {
                return Err(tonic::Status::failed_precondition("message too large"));
            }
        }
        Ok(raw)
    }

    async fn work_job(
        &self,
        dest: &str,
        job: pb::Job,
        route: &Result<Vec<Host>, RouteError>,
        open: &mut Option<Open>,
    ) -> Result<(), tonic::Status> {
        let pending: Vec<(usize, pb::Recipient)> = job
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(
                    pb::RecipientState::try_from(r.state).unwrap_or(pb::RecipientState::Pending),
                    pb::RecipientState::Pending
                        | pb::RecipientState::Deferred
                        | pb::RecipientState::Unspecified
                )
            })
            .filter_map(|(i, r)| r.recipient.clone().map(|rc| (i, rc)))
            .collect();
        if pending.is_empty() {
            return self.finish(&job, pb::FinishOutcome::Done, None, "").await;
        }
        let message = self.read_message(&job).await?;
        // RFC 6376: signed as sent (CRLF), once per attempt.
        let signer = self.dkim.read().map(|g| g.clone()).ok();
        let message = match signer {
            Some(s) => s.sign(&message, &job.mail_from).unwrap_or(message),
            None => message,
        };
        // Recipients are grouped by domain: normally all are in `dest`
        // (delivery makes one job per recipient); any other domain gets its
        // own route and connection.
        let mut by_domain: Vec<(String, Vec<(usize, pb::Recipient)>)> = Vec::new();
        for (i, r) in pending.iter().cloned() {
            let d = domain_of(&r.address);
            let d = if d.is_empty() { dest.to_string() } else { d };
            match by_domain.iter_mut().find(|(x, _)| *x == d) {
                Some((_, v)) => v.push((i, r)),
                None => by_domain.push((d, vec![(i, r)])),
            }
        }
        let mut results = Vec::new();
        for (domain, group) in by_domain {
            let attempt = if domain == dest {
                self.try_route(&job, &group, &message, route, open).await?
            } else {
                let other = self.router.route(&domain).await;
                let mut conn = None;
                let a = self
                    .try_route(&job, &group, &message, &other, &mut conn)
                    .await?;
                if let Some(o) = conn {
                    o.conn.quit().await;
                }
                a
            };
            let remote_dsn = attempt.remote_dsn;
            results.extend(attempt.results.into_iter().map(|(i, o)| (i, o, remote_dsn)));
        }
        self.conclude(&job, &pending, results, &message).await
    }

    /// One attempt for recipients of one domain along `route`.
    async fn try_route(
        &self,
        job: &pb::Job,
        group: &[(usize, pb::Recipient)],
        message: &[u8],
        route: &Result<Vec<Host>, RouteError>,
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        match route {
            Err(e) => {
                self.event(
                    job,
                    pb::EventKind::Attempt,
                    "",
                    &e.to_string(),
                    HashMap::new(),
                )
                .await?;
                let text = e.to_string();
                let o = if e.is_permanent() {
                    RcptOutcome::Failed(format!("550 {text}"))
                } else {
                    RcptOutcome::Deferred(format!("451 {text}"))
                };
                Ok(Attempt {
                    results: group.iter().map(|(i, _)| (*i, o.clone())).collect(),
                    remote_dsn: false,
                })
            }
            Ok(hosts) => self.attempt(job, group, message, hosts, open).await,
        }
    }

    /// Tries every host and address in order until one gives a
    /// transaction result; connection-level failures move to the next.
    async fn attempt(
        &self,
        job: &pb::Job,
        pending: &[(usize, pb::Recipient)],
        message: &[u8],
        hosts: &[Host],
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        let env = Envelope {
            mail_from: job.mail_from.clone(),
            recipients: pending.iter().map(|(_, r)| r.address.clone()).collect(),
            smtputf8: job.smtputf8,
            dsn: Some(client::DsnParams {
                envid: job.envid.clone(),
                ret: job.ret.clone(),
                recipients: pending
                    .iter()
                    .map(|(_, r)| (r.notify, r.orcpt.clone()))
                    .collect(),
            }),
        };
        let mut errors: Vec<String> = Vec::new();
        // The connection already open to one of these hosts goes first.
        let mut candidates: Vec<(&str, SocketAddr)> = hosts
            .iter()
            .flat_map(|h| h.addrs.iter().map(move |a| (h.name.as_str(), *a)))
            .collect();
        if let Some(o) = open.as_ref()
            && let Some(pos) = candidates.iter().position(|(_, a)| *a == o.addr)
        {
            let c = candidates.remove(pos);
            candidates.insert(0, c);
        }
        for (host, addr) in candidates {
            // Reuse, or open a new connection (closing one to another host).
            let reusable = open.as_ref().is_some_and(|o| {
                o.addr == addr && o.conn.transactions < self.config.messages_per_connection
            });
            if !reusable && let Some(o) = open.take() {
                o.conn.quit().await;
            }
            let mut tried_fresh = !reusable;
            loop {
                if open.is_none() {
                    match self.connect(host, addr).await {
                        Ok(conn) => {
                            *open = Some(Open {
                                host: host.to_string(),
                                addr,
                                conn,
                            });
                        }
                        Err(e) => {
                            let text = format!("{host}[{}]: {e}", addr.ip());
                            self.attempt_event(job, host, addr, None, &text).await?;
                            errors.push(text);
                            break;
                        }
                    }
                }
                let Some(o) = open.as_mut() else { break };
                match o.conn.send(&env, message).await {
                    Ok(outcomes) => {
                        let summary = summarise(&outcomes);
                        let tls = o.conn.tls.clone();
                        let name = o.host.clone();
                        let remote_dsn = o.conn.caps.dsn;
                        self.attempt_event(job, &name, addr, tls.as_ref(), &summary)
                            .await?;
                        let results = pending
                            .iter()
                            .zip(outcomes)
                            .map(|((i, _), out)| (*i, with_host(out, &name, addr)))
                            .collect();
                        return Ok(Attempt {
                            results,
                            remote_dsn,
                        });
                    }
                    Err(e) => {
                        let tls = o.conn.tls.clone();
                        *open = None;
                        let text = format!("{host}[{}]: {e}", addr.ip());
                        self.attempt_event(job, host, addr, tls.as_ref(), &text)
                            .await?;
                        errors.push(text);
                        // Lost after the data was sent: the remote may have
                        // the message. Do not hand it to another host now.
                        if matches!(
                            e,
                            ClientError::Closed("end of data")
                                | ClientError::Timeout("end of data")
                        ) {
                            let why = format!("451 4.4.2 {}", errors.join("; "));
                            return Ok(Attempt {
                                results: pending
                                    .iter()
                                    .map(|(i, _)| (*i, RcptOutcome::Deferred(why.clone())))
                                    .collect(),
                                remote_dsn: false,
                            });
                        }
                        // A reused connection may have been closed by the
                        // remote while idle: one fresh try on the same address.
                        if !tried_fresh {
                            tried_fresh = true;
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        let why = format!("451 4.4.1 all hosts failed: {}", errors.join("; "));
        let why: String = why.chars().take(1500).collect();
        Ok(Attempt {
            results: pending
                .iter()
                .map(|(i, _)| (*i, RcptOutcome::Deferred(why.clone())))
                .collect(),
            remote_dsn: false,
        })
    }

    /// TCP connect, greeting, EHLO, STARTTLS; when the TLS handshake fails
    /// the host is tried once more in plaintext (RFC 7435 opportunistic).
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Connection<TcpStream>, ClientError> {
        let tls = self.tls.as_ref().map(|c| Tls {
            connector: c.clone(),
            server_name: rustls_pki_types::ServerName::try_from(host.to_string())
                .unwrap_or_else(|_| rustls_pki_types::ServerName::from(addr.ip())),
        });
        let stream = self.tcp(addr).await?;
        let creds = self.relay_auth.get(&host.to_ascii_lowercase());
        let opened =
            Connection::open(stream, &self.config.hostname, tls.as_ref(), self.timeouts).await;
        let mut conn = match opened {
            // Plaintext fallback, but never with credentials to send.
            Err(ClientError::Tls(e)) if creds.is_none() => {
                tracing::info!(%host, %addr, error = %e, "TLS failed; retrying in plaintext");
                let stream = self.tcp(addr).await?;
                Connection::open(stream, &self.config.hostname, None, self.timeouts).await?
            }
            other => other?,
        };
        if let Some(c) = creds {
            conn.auth_plain(&c.user, &c.password).await?;
        }
        Ok(conn)
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(ClientError::Connect)
    }

    /// Records results, bounces, retries or finishes the job.
    async fn conclude(
        &self,
        job: &pb::Job,
        pending: &[(usize, pb::Recipient)],
        results: Vec<(usize, RcptOutcome, bool)>,
        message: &[u8],
    ) -> Result<(), tonic::Status> {
        let now = chrono::Utc::now();
        let created = job
            .created_at
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .unwrap_or(now);
        let age = (now - created).to_std().unwrap_or_default();
        let expired = age >= self.config.give_up_after;
        let rcpt = |i: usize| pending.iter().find(|(j, _)| *j == i).map(|(_, r)| r);
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        let mut relayed = Vec::new();
        for (i, outcome, remote_dsn) in results {
            let Some(r) = rcpt(i) else { continue };
            let index = job.recipients.get(i).map_or(0, |x| x.index);
            let (state, text) = match outcome {
                RcptOutcome::Delivered(t) => (pb::RecipientState::Delivered, t),
                RcptOutcome::Failed(t) => (pb::RecipientState::Failed, t),
                RcptOutcome::Deferred(t) if expired => (
                    pb::RecipientState::Failed,
                    format!(
                        "5.4.7 delivery time expired after {}h; last error: {t}",
                        age.as_secs() / 3600
                    ),
                ),
                RcptOutcome::Deferred(t) => (pb::RecipientState::Deferred, t),
            };
            self.store
                .queue
                .clone()
                .set_recipient_result(pb::SetRecipientResultRequest {
                    job_id: job.id,
                    worker_id: self.id.clone(),
                    index,
                    state: state as i32,
                    detail: text.clone(),
                })
                .await?;
            match state {
                pb::RecipientState::Delivered => {
                    metrics::counter!("smtp_out_delivered_total").increment(1);
                    if !remote_dsn && mail_dsn::wants_success_notice(r) {
                        relayed.push(mail_dsn::Failure {
                            recipient: r.clone(),
                            status: status_of(&text, "2.0.0"),
                            diagnostic: text,
                        });
                    }
                }
                pb::RecipientState::Failed => {
                    metrics::counter!("smtp_out_failed_total").increment(1);
                    failed.push(mail_dsn::Failure {
                        recipient: r.clone(),
                        status: status_of(&text, "5.0.0"),
                        diagnostic: text,
                    });
                }
                _ => {
                    metrics::counter!("smtp_out_deferred_total").increment(1);
                    deferred.push(mail_dsn::Failure {
                        recipient: r.clone(),
                        status: status_of(&text, "4.0.0"),
                        diagnostic: text,
                    });
                }
            }
        }
        let headers_end = header_block_end(message);
        let header_block = &message[..headers_end];
        if !failed.is_empty() {
            self.notify(job, header_block, &failed, mail_dsn::Action::Failed)
                .await?;
        }
        if !relayed.is_empty() {
            self.notify(job, header_block, &relayed, mail_dsn::Action::Relayed)
                .await?;
        }
        if deferred.is_empty() {
            return self.finish(job, pb::FinishOutcome::Done, None, "").await;
        }
        if age >= self.config.delay_notice_after {
            self.notify(job, header_block, &deferred, mail_dsn::Action::Delayed)
                .await?;
        }
        let step = self.config.retry_schedule
            [(job.attempts.saturating_sub(1) as usize).min(self.config.retry_schedule.len() - 1)];
        let mut at = now + chrono::Duration::from_std(step).unwrap_or(chrono::Duration::hours(1));
        // The last try happens at expiry, so the bounce is on time.
        let expiry = created
            + chrono::Duration::from_std(self.config.give_up_after)
                .unwrap_or(chrono::Duration::days(5));
        if at > expiry {
            at = expiry.max(now + chrono::Duration::seconds(1));
        }
        let reason: String = deferred
            .iter()
            .map(|d| d.diagnostic.as_str())
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .take(1500)
            .collect();
        self.finish(job, pb::FinishOutcome::Retry, Some(at), &reason)
            .await
    }

    /// Queues one DSN (failed or delayed) for the listed recipients, unless
    /// the sender is `<>`, the message is automatic, or NOTIFY says no.
    async fn notify(
        &self,
        job: &pb::Job,
        header_block: &[u8],
        list: &[mail_dsn::Failure],
        action: mail_dsn::Action,
    ) -> Result<(), tonic::Status> {
        let headers = mail_dsn::Headers::parse(header_block);
        if mail_dsn::is_automatic(&job.mail_from, &headers) {
            return Ok(());
        }
        let wanted: Vec<mail_dsn::Failure> = list
            .iter()
            .filter(|f| match action {
                mail_dsn::Action::Failed => mail_dsn::wants_failure_notice(&f.recipient),
                mail_dsn::Action::Delayed => mail_dsn::wants_delay_notice(&f.recipient),
                mail_dsn::Action::Relayed => mail_dsn::wants_success_notice(&f.recipient),
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let raw = mail_dsn::build_with(
            &mail_dsn::Report {
                hostname: &self.config.hostname,
                job,
                failures: &wanted,
                original_headers: header_block,
                now: chrono::Utc::now(),
            },
            action,
        );
        let tag = match action {
            mail_dsn::Action::Failed => "dsn",
            mail_dsn::Action::Delayed => "dsn-delay",
            mail_dsn::Action::Relayed => "dsn-relayed",
        };
        // One DSN per job and recipient set: a re-leased job or a second
        // delay notice finds the first (same idempotency key).
        let key = mail_dsn::idempotency_key(&format!("{tag}:out"), job.id, &wanted);
        let msgs = mail_dsn::enqueue_requests(job, key, raw);
        let r = self
            .store
            .queue
            .clone()
            .enqueue(futures::stream::iter(msgs))
            .await?
            .into_inner();
        if !r.duplicate {
            metrics::counter!("smtp_out_dsn_total", "action" => tag).increment(1);
            let kind = match action {
                mail_dsn::Action::Failed => pb::EventKind::Bounced,
                mail_dsn::Action::Delayed => pb::EventKind::Deferred,
                mail_dsn::Action::Relayed => pb::EventKind::Relayed,
            };
            self.event(
                job,
                kind,
                &job.mail_from,
                &format!("{tag} queued as job {}", r.job_id),
                HashMap::new(),
            )
            .await?;
        }
        Ok(())
    }

    async fn finish(
        &self,
        job: &pb::Job,
        outcome: pb::FinishOutcome,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
        reason: &str,
    ) -> Result<(), tonic::Status> {
        self.store
            .queue
            .clone()
            .finish_job(pb::FinishJobRequest {
                job_id: job.id,
                worker_id: self.id.clone(),
                outcome: outcome as i32,
                retry_at: retry_at.map(ts),
                reason: reason.to_string(),
            })
            .await?;
        Ok(())
    }

    async fn attempt_event(
        &self,
        job: &pb::Job,
        host: &str,
        addr: SocketAddr,
        tls: Option<&client::TlsInfo>,
        reply: &str,
    ) -> Result<(), tonic::Status> {
        let mut attrs = HashMap::from([
            ("mx".to_string(), host.to_string()),
            ("ip".to_string(), addr.ip().to_string()),
            ("port".to_string(), addr.port().to_string()),
            ("reply".to_string(), reply.chars().take(500).collect()),
        ]);
        if let Some(t) = tls {
            attrs.insert("tls_version".into(), t.version.clone());
            attrs.insert("tls_cipher".into(), t.cipher.clone());
        } else {
            attrs.insert("tls_version".into(), "none".into());
        }
        self.event(job, pb::EventKind::Attempt, "", reply, attrs)
            .await
    }

    async fn event(
        &self,
        job: &pb::Job,
        kind: pb::EventKind,
        recipient: &str,
        detail: &str,
        attributes: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        self.store
            .queue
            .clone()
            .add_event(pb::AddEventRequest {
                job_id: job.id,
                kind: kind as i32,
                source: format!("smtp-out/{}", self.id),
                recipient: recipient.to_string(),
                detail: detail.chars().take(2000).collect(),
                attributes,
            })
            .await?;
        Ok(())
    }
}

/// "mx.example[192.0.2.1]: 250 …" so the queue shows where it went.
fn with_host(o: RcptOutcome, host: &str, addr: SocketAddr) -> RcptOutcome {
    // The text keeps the reply first (status extraction reads it).
    let tag = |t: String| format!("{t} (from {host}[{}])", addr.ip());
    match o {
        RcptOutcome::Delivered(t) => RcptOutcome::Delivered(tag(t)),
        RcptOutcome::Deferred(t) => RcptOutcome::Deferred(tag(t)),
        RcptOutcome::Failed(t) => RcptOutcome::Failed(tag(t)),
    }
}

fn summarise(outcomes: &[RcptOutcome]) -> String {
    let mut parts: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            RcptOutcome::Delivered(t) | RcptOutcome::Deferred(t) | RcptOutcome::Failed(t) => {
                t.clone()
            }
        })
        .collect();
    parts.dedup();
    parts.join("; ")
}

/// Length of the header block (through the empty line), or all of it.
fn header_block_end(raw: &[u8]) -> usize {
    let limit = raw.len().min(256 * 1024);
    let head = &raw[..limit];
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_from_outcome_text() {
        assert_eq!(status_of("550 5.1.1 no such user", "5.0.0"), "5.1.1");
        assert_eq!(status_of("550 no such user", "5.0.0"), "5.0.0");
        assert_eq!(status_of("5.4.7 expired", "5.0.0"), "5.4.7");
        assert_eq!(domain_of("u@Example.ORG."), "example.org");
        assert_eq!(header_block_end(b"A: b\r\n\r\nbody"), 6);
        assert_eq!(header_block_end(b"A: b\n\nbody"), 5);
        assert_eq!(header_block_end(b"A: b"), 4);
    }
}
