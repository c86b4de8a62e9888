//! # delivery
//!
//! Works the inbound queue. For each leased job and each pending recipient:
//! resolve it through the store (user, alias chain, catch-all,
//! plus-address), choose the folder (filter rules, then the `+tag`, then
//! INBOX), and deliver with `DeliverFromQueue`, which appends and records
//! the delivery in one transaction, so a job re-leased after a crash never
//! delivers twice. Remote recipients (and alias targets outside our domains)
//! become outbound jobs that reuse the stored message. Permanent failures get
//! one RFC 3464 DSN to the envelope sender — never to `<>` and never for
//! bounces or auto-replies. Every step lands in the message's event log.
//!
//! Any number of replicas may run: they coordinate only through leases
//! (leasing and the per-job queue calls come from the `queue-worker` crate,
//! shared with smtp-out).

pub mod dmarc;
pub mod dsn;
pub mod filter;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use mailstore_api::{Failure as StoreFailure, StoreClient, classify, pb};
use queue_worker::{Jobs, LeaseSpec, Leaser};
use service_kit::{HealthServer, Shutdown, StoreArgs};
use tonic::Code;
use tracing::Instrument as _;

use crate::filter::Headers;

/// delivery configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub store: StoreArgs,
    /// This worker's name in leases and the event log (default: host-pid-random).
    #[arg(long, env = "EPISTOLE_DELIVERY_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Jobs processed at the same time.
    #[arg(long, env = "EPISTOLE_DELIVERY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Jobs leased per request.
    #[arg(long, env = "EPISTOLE_DELIVERY_BATCH", default_value_t = 32)]
    pub batch: u32,
    /// Lease duration; a worker that dies frees its jobs after this.
    #[arg(long, env = "EPISTOLE_DELIVERY_LEASE_MS", default_value_t = 60_000)]
    pub lease_ms: u64,
    /// A job leased this many times without finishing is quarantined (poison).
    #[arg(long, env = "EPISTOLE_DELIVERY_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Host name used in DSNs (Reporting-MTA, MAILER-DAEMON@…).
    #[arg(long, env = "EPISTOLE_HOSTNAME", default_value = "localhost")]
    pub hostname: String,
    /// How long an over-quota recipient is retried before it bounces, seconds.
    #[arg(long, env = "EPISTOLE_QUOTA_GIVE_UP_SECS", default_value_t = 5 * 24 * 3600)]
    pub quota_give_up_secs: u64,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "EPISTOLE_DELIVERY_HTTP", default_value = "127.0.0.1:7021")]
    pub http_listen: SocketAddr,
    /// Incoming DMARC aggregate reports (RFC 7489 §7.2) sent to this
    /// address are parsed and stored for `mailctl dmarc report` (and
    /// delivered as usual).
    #[arg(long, env = "EPISTOLE_DMARC_REPORT_ADDRESS")]
    pub dmarc_report_address: Option<String>,
    /// Sender rewriting of mail forwarded to remote alias targets.
    #[command(flatten)]
    pub srs: service_kit::SrsArgs,
}

/// Bytes of the message read to parse its header block.
const HEADER_PEEK: u64 = 64 * 1024;

/// Outcome for one recipient.
#[derive(Debug)]
enum Outcome {
    /// Recorded by the store already (complete_recipient or relay).
    Done,
    /// Delivered, and the store finished the job in the same transaction
    /// (its last pending recipient: `finish_job`).
    Finished,
    Deferred(String),
    Failed(String),
}

struct Worker {
    store: StoreClient,
    id: String,
    /// Per-job queue calls as this worker.
    jobs: Jobs,
    config: Config,
    /// SRS for forwarded mail (`--srs-secret`), if configured.
    srs: Option<mail_wire::srs::Srs>,
}

/// Runs the worker until shutdown.
///
/// # Errors
/// Bad store flags or an unbindable health port.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let store = config.store.client()?;
    let id = queue_worker::worker_id(config.worker_id.as_deref());
    let readiness = service_kit::store_readiness(store.clone());
    let health = HealthServer::bind(config.http_listen, readiness).await?;
    println!(
        "listening delivery-http={} worker={id}",
        health.local_addr()?
    );
    let health = tokio::spawn(health.serve(shutdown.clone()));
    let jobs = Jobs::new(store.clone(), "delivery", id.clone());
    let srs = config.srs.srs(&config.hostname);
    if srs.is_none() {
        tracing::warn!(
            "no --srs-secret: mail forwarded to remote alias targets keeps its sender (SPF may fail at the destination)"
        );
    }
    let worker = Arc::new(Worker {
        store,
        id,
        jobs,
        config,
        srs,
    });
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = health.await;
    Ok(())
}

/// The status of a recipient refused as a mail loop (RFC 3463 X.4.6
/// "routing loop detected"). The sender gets one DSN like for any other
/// permanent failure; the DSN has the null sender, so it can bounce no
/// further and a loop ends with that one notice (issue #14).
const LOOP_STATUS: &str = "5.4.6";

/// Whether a `Delivered-To:` field of the message names `address` (without
/// case; angle brackets allowed).
fn already_delivered_to(headers: &Headers, address: &str) -> bool {
    headers.get("delivered-to").any(|v| {
        v.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim()
            .eq_ignore_ascii_case(address)
    })
}

fn backoff(attempts: u32) -> Duration {
    const STEPS: [u64; 6] = [30, 120, 600, 1800, 3600, 4 * 3600];
    Duration::from_secs(STEPS[(attempts.saturating_sub(1) as usize).min(STEPS.len() - 1)])
}

impl Worker {
    async fn run(self: &Arc<Self>, shutdown: Shutdown) {
        tracing::info!(worker = %self.id, "delivery worker started");
        let mut leaser = Leaser::new(
            self.store.clone(),
            LeaseSpec {
                kind: pb::QueueKind::Inbound,
                worker_id: self.id.clone(),
                lease_ttl_ms: self.config.lease_ms,
                max_attempts: self.config.max_attempts,
            },
        );
        while !shutdown.is_cancelled() {
            let Some(jobs) = leaser.lease(self.config.batch, 20_000, &shutdown).await else {
                break;
            };
            // A batch in progress is finished even on shutdown: the jobs are
            // leased to us, and finishing is quicker than waiting for expiry.
            futures::stream::iter(jobs)
                .for_each_concurrent(self.config.concurrency.max(1), |job| {
                    let me = self.clone();
                    async move {
                        let id = job.id;
                        if let Err(e) = me.process(job).await {
                            tracing::warn!(job = id, error = %e.message(), "job left for retry after a store error");
                        }
                    }
                })
                .await;
        }
        tracing::info!(worker = %self.id, "delivery worker stopped");
    }

    async fn headers(&self, job: &pb::Job) -> Result<Vec<u8>, tonic::Status> {
        let mut raw = self
            .jobs
            .read_message(job.id, HEADER_PEEK, u64::MAX, 0)
            .await?;
        // Keep only the header block (up to the first empty line).
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 2)
            .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
            .unwrap_or(raw.len());
        raw.truncate(end);
        Ok(raw)
    }

    async fn process(&self, job: pb::Job) -> Result<(), tonic::Status> {
        // The span follows the future across every await (a guard from
        // `span.enter()` would leak it to whatever runs on the thread).
        let span = tracing::info_span!("job", id = job.id, sid = %job.session_id);
        // OpenTelemetry: the message's trace, from its Enqueue.
        service_kit::otel::set_parent(&span, &job.traceparent);
        self.process_in_span(job).instrument(span).await
    }

    async fn process_in_span(&self, job: pb::Job) -> Result<(), tonic::Status> {
        let header_block = self.headers(&job).await?;
        let headers = Headers::parse(&header_block);
        self.dmarc_report(&job).await;
        let mut deferred = Vec::new();
        let mut failed = Vec::new();
        let mut finished = false;
        // With one recipient left (the usual case) its delivery finishes
        // the job in the same store transaction: one call and one commit
        // per message fewer (issue #17).
        let last = job
            .recipients
            .iter()
            .filter(|r| queue_worker::is_pending(r))
            .count()
            == 1;
        for r in &job.recipients {
            if !queue_worker::is_pending(r) {
                continue;
            }
            let Some(rcpt) = &r.recipient else { continue };
            let outcome = match self.recipient(&job, r.index, rcpt, &headers, last).await {
                Ok(o) => o,
                Err(e) if classify(&e) == StoreFailure::Transient => {
                    Outcome::Deferred(format!("4.3.0 store: {}", e.message()))
                }
                Err(e) => Outcome::Failed(format!("5.3.0 {}", e.message())),
            };
            match outcome {
                Outcome::Done => {}
                Outcome::Finished => finished = true,
                Outcome::Deferred(why) => {
                    self.result(&job, r.index, pb::RecipientState::Deferred, &why)
                        .await?;
                    deferred.push(why);
                }
                Outcome::Failed(why) => {
                    self.result(&job, r.index, pb::RecipientState::Failed, &why)
                        .await?;
                    metrics::counter!("delivery_failed_total").increment(1);
                    failed.push(dsn::Failure {
                        recipient: rcpt.clone(),
                        status: dsn::status_of(&why, "5.0.0"),
                        diagnostic: why,
                    });
                }
            }
        }
        if !failed.is_empty() {
            self.bounce(&job, &headers, &header_block, &failed).await?;
        }
        if finished && deferred.is_empty() && failed.is_empty() {
            return Ok(());
        }
        if deferred.is_empty() {
            self.jobs
                .finish(job.id, pb::FinishOutcome::Done, None, String::new())
                .await
        } else {
            let at = chrono::Utc::now() + backoff(job.attempts);
            self.jobs
                .finish(
                    job.id,
                    pb::FinishOutcome::Retry,
                    Some(at),
                    deferred.join("; "),
                )
                .await
        }
    }

    /// A pending recipient is the report address: parse and store the
    /// report (again after a re-lease: the store keeps one copy).
    async fn dmarc_report(&self, job: &pb::Job) {
        let Some(address) = &self.config.dmarc_report_address else {
            return;
        };
        let to_us = job.recipients.iter().any(|r| {
            queue_worker::is_pending(r)
                && r.recipient
                    .as_ref()
                    .is_some_and(|x| x.address.eq_ignore_ascii_case(address))
        });
        if !to_us {
            return;
        }
        let raw = match self
            .jobs
            .read_message(
                job.id,
                dmarc::MAX_REPORT_MESSAGE,
                dmarc::MAX_REPORT_MESSAGE,
                0,
            )
            .await
        {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(error = %e.message(), "DMARC report not read");
                return;
            }
        };
        match dmarc::parse(&raw) {
            Ok(report) => {
                let (domain, org) = (report.domain.clone(), report.org_name.clone());
                let stored = self
                    .store
                    .dmarc_reports
                    .clone()
                    .store_aggregate_report(pb::StoreAggregateReportRequest {
                        report: Some(report),
                    })
                    .await;
                match stored {
                    Ok(_) => tracing::info!(%domain, %org, "DMARC aggregate report stored"),
                    Err(e) => tracing::warn!(error = %e.message(), "DMARC report not stored"),
                }
            }
            Err(e) => tracing::info!(error = %e, "message to the DMARC report address"),
        }
    }

    async fn result(
        &self,
        job: &pb::Job,
        index: u32,
        state: pb::RecipientState,
        detail: &str,
    ) -> Result<(), tonic::Status> {
        self.jobs
            .set_result(job.id, index, state, detail.to_string())
            .await
    }

    /// Hands recipients to the outbound queue, reusing the stored message,
    /// from `mail_from` (the job's, or its SRS form for forwarding);
    /// `delivered_to` is the alias a forwarded copy went through.
    async fn relay(
        &self,
        job: &pb::Job,
        index: u32,
        rcpt: pb::Recipient,
        mark_parent: bool,
        mail_from: &str,
        delivered_to: &str,
    ) -> Result<(), tonic::Status> {
        let header = pb::EnqueueHeader {
            kind: pb::QueueKind::Outbound as i32,
            idempotency_key: format!(
                "relay:{}:{}:{}",
                job.id,
                index,
                rcpt.address.to_ascii_lowercase()
            ),
            mail_from: mail_from.to_string(),
            recipients: vec![rcpt],
            envid: job.envid.clone(),
            ret: job.ret.clone(),
            body_type: job.body_type.clone(),
            smtputf8: job.smtputf8,
            client_ip: job.client_ip.clone(),
            helo: job.helo.clone(),
            authenticated_user: job.authenticated_user.clone(),
            session_id: job.session_id.clone(),
            size: 0,
            parent_job_id: job.id,
            parent_recipient_indexes: if mark_parent { vec![index] } else { Vec::new() },
            parent_worker_id: self.id.clone(),
            not_before: None,
            // RFC 8689: the relayed copy keeps the REQUIRETLS demand.
            requiretls: job.requiretls,
            // Our DKIM signature only on what the parent was marked for
            // (an authenticated submission, our DSN): mail from outside
            // forwarded by an alias leaves unsigned (the store enforces it too).
            sign: job.sign,
            delivered_to: delivered_to.to_string(),
            // A copy: the parent's RECEIVED event tells where it came from.
            received: std::collections::HashMap::new(),
            about_job_id: 0,
        };
        let req = pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Header(header)),
        };
        self.store
            .queue
            .clone()
            .enqueue(futures::stream::iter([req]))
            .await?;
        metrics::counter!("delivery_relayed_total").increment(1);
        Ok(())
    }

    async fn recipient(
        &self,
        job: &pb::Job,
        index: u32,
        rcpt: &pb::Recipient,
        headers: &Headers,
        last: bool,
    ) -> Result<Outcome, tonic::Status> {
        // A bounce to one of our SRS addresses (smtp-in checked it; a DSN
        // queued here directly did not pass smtp-in) goes to the original
        // sender; a bad or expired one is no address at all.
        let mut reversed = rcpt.clone();
        if let Some(srs) = &self.srs {
            match srs.reverse(&rcpt.address, chrono::Utc::now().timestamp()) {
                Ok(None) => {}
                Ok(Some(original)) => reversed.address = original,
                Err(e) => {
                    return Ok(Outcome::Failed(format!("5.1.1 <{}>: {e}", rcpt.address)));
                }
            }
        }
        let rcpt = &reversed;
        // Loops across installations (RFC 5321 §6.3; the Delivered-To
        // convention): a message that already passed this recipient is not
        // delivered or forwarded again.
        if already_delivered_to(headers, &rcpt.address) {
            return Ok(Outcome::Failed(format!(
                "{LOOP_STATUS} <{}>: mail loop (Delivered-To already names it)",
                rcpt.address
            )));
        }
        let resolved = self
            .store
            .accounts
            .clone()
            .resolve_recipient(pb::ResolveRecipientRequest {
                address: rcpt.address.clone(),
            })
            .await?
            .into_inner();
        match pb::RecipientStatus::try_from(resolved.status) {
            Ok(pb::RecipientStatus::NotLocal) => {
                self.relay(job, index, rcpt.clone(), true, &job.mail_from, "")
                    .await?;
                return Ok(Outcome::Done);
            }
            Ok(pb::RecipientStatus::Local) => {}
            _ if resolved.loop_detected => {
                return Ok(Outcome::Failed(format!(
                    "5.4.6 <{}>: alias loop",
                    rcpt.address
                )));
            }
            _ => {
                return Ok(Outcome::Failed(format!(
                    "5.1.1 <{}>: no such user here",
                    rcpt.address
                )));
            }
        }
        let only_one = resolved.targets.len() == 1;
        let mut deferred = None;
        let mut finished = false;
        for t in &resolved.targets {
            match &t.target {
                Some(pb::resolved_target::Target::Local(local))
                    if already_delivered_to(headers, &local.address) =>
                {
                    return Ok(Outcome::Failed(format!(
                        "{LOOP_STATUS} <{}>: mail loop (Delivered-To already names it)",
                        local.address
                    )));
                }
                Some(pb::resolved_target::Target::Local(local)) => {
                    match self
                        .deliver_local(job, index, local, headers, only_one, last && only_one)
                        .await
                    {
                        Ok(job_finished) => {
                            if job_finished {
                                finished = true;
                            }
                            // Acceptance to mailbox (alerts: deploy/monitoring).
                            if let Some(c) = &job.created_at {
                                let ms = chrono::Utc::now().timestamp_millis()
                                    - c.seconds * 1000
                                    - i64::from(c.nanos / 1_000_000);
                                #[allow(clippy::cast_precision_loss)]
                                metrics::histogram!("delivery_latency_seconds")
                                    .record(ms.max(0) as f64 / 1000.0);
                            }
                        }
                        // RFC 3463 §3.3 X.2.2 "mailbox full": a message
                        // larger than the quota can never fit (5.2.2 now);
                        // otherwise the mailbox may be emptied, so 4.2.2
                        // until the job is quota_give_up_secs old, then 5.2.2.
                        Err(e) if mailstore_api::quota_exceeds_limit(&e) => {
                            return Ok(Outcome::Failed(format!(
                                "5.2.2 <{}>: message larger than the mailbox quota",
                                local.address
                            )));
                        }
                        Err(e) if e.code() == Code::ResourceExhausted => {
                            let age = job
                                .created_at
                                .as_ref()
                                .map_or(0, |c| chrono::Utc::now().timestamp() - c.seconds);
                            let why = format!("<{}>: mailbox full", local.address);
                            if u64::try_from(age).unwrap_or(0) >= self.config.quota_give_up_secs {
                                return Ok(Outcome::Failed(format!("5.2.2 {why}")));
                            }
                            deferred = Some(format!("4.2.2 {why}"));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some(pb::resolved_target::Target::Remote(addr)) => {
                    let forwarded = pb::Recipient {
                        address: addr.clone(),
                        orcpt: if rcpt.orcpt.is_empty() {
                            format!("rfc822;{}", rcpt.address)
                        } else {
                            rcpt.orcpt.clone()
                        },
                        notify: rcpt.notify,
                    };
                    // SRS: the remote sees our domain as the sender (its
                    // SPF check passes) and bounces come back to us.
                    let from = self
                        .srs
                        .as_ref()
                        .and_then(|s| s.forward(&job.mail_from, chrono::Utc::now().timestamp()))
                        .unwrap_or_else(|| job.mail_from.clone());
                    // The next installation sees where it has been (T107).
                    self.relay(job, index, forwarded, false, &from, &rcpt.address)
                        .await?;
                }
                None => {}
            }
        }
        if let Some(why) = deferred {
            return Ok(Outcome::Deferred(why));
        }
        if !only_one {
            self.result(
                job,
                index,
                pb::RecipientState::Delivered,
                &format!("delivered to {} targets", resolved.targets.len()),
            )
            .await?;
        } else if matches!(
            resolved.targets.first().and_then(|t| t.target.as_ref()),
            Some(pb::resolved_target::Target::Remote(_))
        ) {
            self.result(job, index, pb::RecipientState::Relayed, "forwarded")
                .await?;
        }
        Ok(if finished {
            Outcome::Finished
        } else {
            Outcome::Done
        })
    }

    async fn deliver_local(
        &self,
        job: &pb::Job,
        index: u32,
        target: &pb::LocalTarget,
        headers: &Headers,
        complete: bool,
        finish: bool,
    ) -> Result<bool, tonic::Status> {
        let rules = self
            .store
            .accounts
            .clone()
            .list_filters(pb::ListFiltersRequest {
                key: Some(pb::list_filters_request::Key::UserId(target.user_id)),
            })
            .await?
            .into_inner()
            .filters;
        // smtp-in's quarantine mark (it strips the field from what clients
        // send, so only smtp-in sets it) wins over the user's rules.
        let quarantined = headers
            .get(mailstore_api::QUARANTINE_HEADER)
            .next()
            .is_some();
        let (mailbox, flags) = if quarantined {
            ("Junk".to_string(), vec!["$Junk".to_string()])
        } else {
            (filter::choose(&rules, headers, &target.detail), Vec::new())
        };
        // RFC 5321 §4.4: Return-Path is added by the final delivery.
        let from: String = job.mail_from.chars().filter(|c| !c.is_control()).collect();
        let to: String = target.address.chars().filter(|c| !c.is_control()).collect();
        let prefix = format!("Return-Path: <{from}>\r\nDelivered-To: {to}\r\n");
        let r = self
            .store
            .mailboxes
            .clone()
            .deliver_from_queue(pb::DeliverFromQueueRequest {
                job_id: job.id,
                recipient_index: index,
                worker_id: self.id.clone(),
                user_id: target.user_id,
                mailbox: mailbox.clone(),
                prefix: prefix.into_bytes(),
                flags,
                enforce_quota: true,
                complete_recipient: complete,
                finish_job: finish,
            })
            .await?
            .into_inner();
        if r.duplicate {
            tracing::info!(user = %target.address, "already delivered (re-leased job)");
        } else {
            metrics::counter!("delivery_delivered_total").increment(1);
            tracing::info!(user = %target.address, %mailbox, uid = r.uid, "delivered");
        }
        Ok(r.job_finished)
    }

    /// One DSN per job for its permanently failed recipients.
    async fn bounce(
        &self,
        job: &pb::Job,
        headers: &Headers,
        header_block: &[u8],
        failed: &[dsn::Failure],
    ) -> Result<(), tonic::Status> {
        if dsn::is_automatic(&job.mail_from, headers) {
            tracing::info!("no DSN: null sender or automatic message");
            return Ok(());
        }
        // A loop (5.4.6) is reported like any other failure: the DSN goes
        // back along the SRS chain to the original sender, and being from
        // <> it can cause no further DSN (RFC 3464 §2, RFC 5321 §6.1).
        let wanted: Vec<dsn::Failure> = failed
            .iter()
            .filter(|f| dsn::wants_failure_notice(&f.recipient))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let raw = dsn::build(&dsn::Report {
            hostname: &self.config.hostname,
            job,
            failures: &wanted,
            original_headers: header_block,
            now: chrono::Utc::now(),
        });
        let key = mail_dsn::idempotency_key("dsn", job.id, &wanted);
        let msgs = mail_dsn::enqueue_requests(job, key, raw);
        let dsn_job = self
            .store
            .queue
            .clone()
            .enqueue(futures::stream::iter(msgs))
            .await?
            .into_inner();
        self.jobs
            .event(
                job.id,
                pb::EventKind::Bounced,
                &job.mail_from,
                format!("DSN queued as job {}", dsn_job.job_id),
                std::collections::HashMap::new(),
            )
            .await?;
        metrics::counter!("delivery_dsn_total").increment(1);
        Ok(())
    }
}
