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
//! - Safe destinations ([`destination`]): no connection to loopback,
//!   private, link-local, metadata or other special-purpose addresses
//!   unless `--allow-destination` names them.
//! - MTA-STS ([`mta_sts`], RFC 8461): `enforce` policies make TLS verified
//!   and MX names checked, or the mail waits; smarthost AUTH only over
//!   verified TLS.
//! - DANE ([`dane`], RFC 7672): secure TLSA records of an MX host make TLS
//!   authenticated by them mandatory; a mismatch, a stripped STARTTLS or a
//!   bogus TLSA answer defers the mail (`4.7.5`), never sends it in clear.
//! - TLS-RPT ([`tlsrpt`], RFC 8460): each attempt's TLS outcome is counted
//!   in the store; yesterday's report goes daily to the `rua` addresses.
//! - 8-bit content to a server without 8BITMIME is converted to 7-bit
//!   ([`downgrade`]) before DKIM signing.
//! - SMTP client ([`client`]): EHLO, opportunistic STARTTLS (RFC 3207),
//!   PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
//!   (RFC 6531), dot-stuffing (`mail_wire::dotstuff`) and a hostile-proof reply parser
//!   (`mail_wire::reply`); RFC 5321 §4.5.3.2 timeouts.
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
//!
//! Layout: this file starts the service (flags, DKIM keys and their reload);
//! the private `worker` module is the lease loop and the per-destination
//! lanes, `attempt` one delivery attempt of a job, `outcome` what follows
//! from it (results, DSNs, retry or finish). Leasing, lease renewal and the
//! per-job queue calls are the shared `queue-worker` crate's.

pub mod client;
pub mod config;
pub mod dane;
pub mod destination;
pub mod dkim;
pub mod dmarc;
pub mod downgrade;
pub mod mta_sts;
pub mod route;
pub mod throttle;
pub mod tlsrpt;

mod arc;
mod attempt;
mod outcome;
mod reports;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use queue_worker::{ActiveJobs, Jobs};
use service_kit::{HealthServer, Shutdown};

use crate::client::Timeouts;
use crate::route::Router;
use crate::worker::{Credentials, Worker};

pub use config::Config;

/// Runs the worker until shutdown.
///
/// # Errors
/// Bad flags, an unreadable resolver configuration or an unbindable health port.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // One crypto provider for the process (docs/design.md (K2)); fails harmlessly
    // when another service in this process installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = config.store.client()?;
    let id = queue_worker::worker_id(config.worker_id.as_deref());
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
    let policy =
        destination::Policy::new(&config.allow_destinations).map_err(anyhow::Error::msg)?;
    for s in relays.values() {
        if let Ok(ip) = s.host.parse::<std::net::IpAddr>()
            && let Err(why) = policy.check(ip)
        {
            anyhow::bail!("smarthost {ip} is {why}: name it in --allow-destination to relay there");
        }
    }
    let verifier = client::Verifier::new(config.ca_file.as_deref()).map_err(anyhow::Error::msg)?;
    let dkim = load_dkim(&store, &config.dkim_keys).await?;
    let router = Router::new(
        config.dns_server,
        Duration::from_millis(config.dns_timeout_ms),
        config.smtp_port,
        relays,
        policy,
    )
    .context("DNS resolver")?;
    let mta_sts = (!config.no_mta_sts).then(|| {
        mta_sts::MtaSts::new(
            verifier.clone(),
            config.mta_sts_port,
            config.connect_timeout.min(Duration::from_secs(60)),
        )
        .with_store(store.clone())
    });
    let dane = match (config.no_dane, config.dns_server) {
        (false, Some(server)) => Some(dane::Dane::new(
            dane::SecureDns::new(server, Duration::from_millis(config.dns_timeout_ms)),
            config.smtp_port,
        )),
        (false, None) => {
            tracing::warn!("DANE is off: it needs --dns-server naming a validating resolver");
            None
        }
        (true, _) => None,
    };
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
    let arc = if config.no_arc {
        None
    } else {
        match smtp_in::inbound::Checker::new(
            config.dns_server,
            Duration::from_millis(config.dns_timeout_ms),
            smtp_in::inbound::Policy::default(),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no ARC sealing of forwarded mail");
                None
            }
        }
    };
    let worker = Arc::new(Worker {
        arc,
        jobs: Jobs::new(store.clone(), "smtp-out", id.clone()),
        store,
        id,
        tls: (!config.no_starttls).then(client::opportunistic_tls),
        verifier,
        mta_sts,
        dane,
        dkim: std::sync::RwLock::new(Arc::new(dkim)),
        relay_auth,
        router,
        timeouts,
        throttle: throttle::Throttle::new(config.per_destination, config.throttle_backoff),
        active: Arc::new(ActiveJobs::default()),
        config,
    });
    let reload = tokio::spawn(reload_dkim(worker.clone(), shutdown.clone()));
    let reports = (!worker.config.no_tlsrpt).then(|| {
        tokio::spawn(tlsrpt::daily(
            worker.store.clone(),
            worker.clone(),
            worker.config.reporter(),
            shutdown.clone(),
        ))
    });
    let dmarc_reports = (!worker.config.no_dmarc_reports).then(|| {
        tokio::spawn(dmarc::daily(
            worker.store.clone(),
            worker.clone(),
            worker.config.dmarc_reporter(),
            shutdown.clone(),
        ))
    });
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    reload.abort();
    if let Some(r) = reports {
        r.abort();
    }
    if let Some(r) = dmarc_reports {
        r.abort();
    }
    let _ = health.await;
    Ok(())
}

/// The DKIM signer: keys from `--dkim-key` files, then the active key of
/// every domain in the store (which wins for its domain).
pub(crate) async fn load_dkim(
    store: &StoreClient,
    specs: &[String],
) -> anyhow::Result<dkim::Signer> {
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
                match signer.add_pem(&k.domain, &k.selector, &k.private_key, true) {
                    Ok(()) => {}
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
