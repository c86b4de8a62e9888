//! # smtp-in
//!
//! Epistole's SMTP receiver: MX on port 25 (STARTTLS offered, local
//! recipients only), submission on 587 (STARTTLS, AUTH only inside TLS,
//! RFC 6409) and submissions on 465 (implicit TLS, RFC 8314).
//!
//! Implements ESMTP (RFC 5321) with PIPELINING (RFC 2920), 8BITMIME
//! (RFC 6152), SIZE (RFC 1870), SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES
//! (RFC 2034/3463), DSN parameters (RFC 3461), CHUNKING/BDAT (RFC 3030),
//! STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN (RFC 4954, RFC 4616).
//!
//! Talks only to the mailbox-store (gRPC, `mailstore.v1`): recipients are
//! checked at RCPT time (`Accounts.LookupRecipient`), credentials by
//! `Accounts.Authenticate`, submission senders (envelope and `From:`) by
//! `Accounts.CheckSender`,
//! and a message is answered `250` only after `Queue.Enqueue` has committed
//! it to the inbound queue. Any store failure or unknown outcome is
//! `451 4.3.0`: an accepted message is never lost.
//!
//! Layout: [`proto`] is the pure grammar (commands, replies, the
//! DATA/BDAT decoder with the smuggling-safe end-of-data rule and the bare
//! CR/LF policy); [`session`] the state machine; [`conn`] TLS and the
//! STARTTLS switch; [`io`] buffered timed I/O; [`store`] the store calls;
//! [`inbound`] SPF/DKIM/ARC/DMARC on the MX (RFC 7208, 6376, 8617, 7489,
//! results as RFC 8601 `Authentication-Results`); [`headers`] the header
//! fields no client may set and the `Received:` count (loops, RFC 5321
//! §6.3).

mod cmd;
pub mod conn;
pub mod guard;
pub mod headers;
pub mod inbound;
pub mod io;
pub mod proto;
pub mod received;
pub mod session;
mod spool;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{Security, Shutdown, StoreArgs};
use tokio::sync::Semaphore;

pub use session::{Hourly, Limits, ListenerKind, Shared};

service_kit::listener_args! {
    /// smtp-in's door (`EPISTOLE_SMTP_*`): TLS, limits, PROXY trust; the
    /// three endpoints are smtp-in's own flags.
    ListenerArgs, "EPISTOLE_SMTP", max_connections = 1000, per_ip = 50, http = "127.0.0.1:7025"
}

/// smtp-in configuration: every option is a flag with an environment
/// variable fallback.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// The door: host name, endpoints, TLS, limits, PROXY trust.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// How to reach the store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// SRS: bounces to the senders delivery rewrote (same secret).
    #[command(flatten)]
    pub srs: service_kit::SrsArgs,
    /// MX listener (port 25, STARTTLS); "off" disables it.
    #[arg(
        long = "mx-listen",
        env = "EPISTOLE_SMTP_MX_LISTEN",
        default_value = "0.0.0.0:25"
    )]
    pub mx_listen: String,
    /// Submission listener (port 587, STARTTLS then AUTH); "off" disables it.
    #[arg(
        long = "submission-listen",
        env = "EPISTOLE_SMTP_SUBMISSION_LISTEN",
        default_value = "0.0.0.0:587"
    )]
    pub submission_listen: String,
    /// Submissions listener (port 465, implicit TLS); "off" disables it.
    #[arg(
        long = "submissions-listen",
        env = "EPISTOLE_SMTP_SUBMISSIONS_LISTEN",
        default_value = "0.0.0.0:465"
    )]
    pub submissions_listen: String,
    /// Largest message in octets (advertised with SIZE, enforced while receiving).
    #[arg(long = "max-message-size", env = "EPISTOLE_SMTP_MAX_MESSAGE_SIZE", default_value_t = 25 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Recipients per message; more get 452 4.5.3.
    #[arg(
        long = "max-recipients",
        env = "EPISTOLE_SMTP_MAX_RECIPIENTS",
        default_value_t = 100
    )]
    pub max_recipients: usize,
    /// Client errors per session before 421 and close.
    #[arg(
        long = "max-errors",
        env = "EPISTOLE_SMTP_MAX_ERRORS",
        default_value_t = 20
    )]
    pub max_errors: u32,
    /// Client errors after which each reply is delayed by --error-delay-ms.
    #[arg(
        long = "errors-before-delay",
        env = "EPISTOLE_SMTP_ERRORS_BEFORE_DELAY",
        default_value_t = 5
    )]
    pub errors_before_delay: u32,
    /// Tarpit delay per reply once a session has made too many errors.
    #[arg(
        long = "error-delay-ms",
        env = "EPISTOLE_SMTP_ERROR_DELAY_MS",
        default_value_t = 1000
    )]
    pub error_delay_ms: u64,
    /// Seconds to wait for a command (RFC 5321 §4.5.3.2.7).
    #[arg(
        long = "command-timeout",
        env = "EPISTOLE_SMTP_COMMAND_TIMEOUT",
        default_value_t = 300
    )]
    pub command_timeout_secs: u64,
    /// Seconds to wait for each block of message data (RFC 5321 §4.5.3.2.5).
    #[arg(
        long = "data-timeout",
        env = "EPISTOLE_SMTP_DATA_TIMEOUT",
        default_value_t = 180
    )]
    pub data_timeout_secs: u64,
    /// Seconds a whole DATA phase, or a whole BDAT transaction, may last.
    #[arg(
        long = "data-phase-timeout",
        env = "EPISTOLE_SMTP_DATA_PHASE_TIMEOUT",
        default_value_t = 600
    )]
    pub data_phase_timeout_secs: u64,
    /// Seconds a whole session may last, greeting to close.
    #[arg(
        long = "session-timeout",
        env = "EPISTOLE_SMTP_SESSION_TIMEOUT",
        default_value_t = 1800
    )]
    pub session_timeout_secs: u64,
    /// Minimum average rate of message data in octets/s, after the grace
    /// period; slower senders get 421 4.4.2 (0 = off).
    #[arg(
        long = "min-data-rate",
        env = "EPISTOLE_SMTP_MIN_DATA_RATE",
        default_value_t = 256
    )]
    pub min_data_rate: u64,
    /// Seconds into a data phase before --min-data-rate applies.
    #[arg(
        long = "min-data-rate-grace",
        env = "EPISTOLE_SMTP_MIN_DATA_RATE_GRACE",
        default_value_t = 30
    )]
    pub min_data_rate_grace_secs: u64,
    /// Memory for message content being received, all sessions together, in
    /// MiB; beyond it DATA/BDAT get 452 4.3.1. Keep it well under the
    /// process's memory limit (256 fits a 512 MiB pod).
    #[arg(
        long = "spool-memory-mb",
        env = "EPISTOLE_SMTP_SPOOL_MEMORY_MB",
        default_value_t = 256
    )]
    pub spool_memory_mb: usize,
    /// Messages per client IP per hour, unauthenticated sessions (MX),
    /// counted at MAIL across replicas; beyond: 421 4.7.0 (0 = off).
    #[arg(
        long = "max-messages-per-ip-hour",
        env = "EPISTOLE_SMTP_MAX_MESSAGES_PER_IP_HOUR",
        default_value_t = 1000
    )]
    pub max_messages_per_ip_hour: u32,
    /// Accepted recipients per client IP per hour, unauthenticated sessions
    /// (MX); beyond: 450 4.7.1 (0 = off).
    #[arg(
        long = "max-recipients-per-ip-hour",
        env = "EPISTOLE_SMTP_MAX_RECIPIENTS_PER_IP_HOUR",
        default_value_t = 5000
    )]
    pub max_recipients_per_ip_hour: u32,
    /// Messages per authenticated account per hour (submission); beyond:
    /// 421 4.7.0 (0 = off).
    #[arg(
        long = "max-messages-per-account-hour",
        env = "EPISTOLE_SMTP_MAX_MESSAGES_PER_ACCOUNT_HOUR",
        default_value_t = 200
    )]
    pub max_messages_per_account_hour: u32,
    /// Accepted recipients per authenticated account per hour
    /// (submission); beyond: 450 4.7.1 (0 = off).
    #[arg(
        long = "max-recipients-per-account-hour",
        env = "EPISTOLE_SMTP_MAX_RECIPIENTS_PER_ACCOUNT_HOUR",
        default_value_t = 1000
    )]
    pub max_recipients_per_account_hour: u32,
    /// MX: seconds a client that waited for the greeting and then sent a
    /// good MAIL is greeted at once, on every replica (0 = always pause).
    #[arg(
        long = "greet-pass-ttl-secs",
        env = "EPISTOLE_SMTP_GREET_PASS_TTL_SECS",
        default_value_t = 86_400
    )]
    pub greet_pass_ttl_secs: u64,
    /// Deadline of one Guard call (shared limits and marks), in
    /// milliseconds; past it the call counts as "no information".
    #[arg(
        long = "guard-timeout-ms",
        env = "EPISTOLE_SMTP_GUARD_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub guard_timeout_ms: u64,
    /// Deadline of one store call, in milliseconds.
    #[arg(
        long = "store-timeout-ms",
        env = "EPISTOLE_SMTP_STORE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub store_timeout_ms: u64,
    /// Tries of an idempotent store call (Enqueue is retried with its idempotency key).
    #[arg(
        long = "store-attempts",
        env = "EPISTOLE_SMTP_STORE_ATTEMPTS",
        default_value_t = 3
    )]
    pub store_attempts: u32,
    /// Seconds a failed Enqueue after the final dot keeps being retried
    /// (same idempotency key) before the sender gets `451`: a store or
    /// database restart then costs a wait, not a possible duplicate
    /// (the sender has 10 minutes, RFC 5321 §4.5.3.2.6).
    #[arg(
        long = "enqueue-retry-secs",
        env = "EPISTOLE_SMTP_ENQUEUE_RETRY_SECS",
        default_value_t = 120
    )]
    pub enqueue_retry_secs: u64,
    /// MX only: delay before the greeting in ms; clients talking first are refused (0 = off).
    #[arg(
        long = "early-talker-delay-ms",
        env = "EPISTOLE_SMTP_EARLY_TALKER_DELAY_MS",
        default_value_t = 1000
    )]
    pub early_talker_delay_ms: u64,
    /// Seconds to let sessions finish after a shutdown signal.
    #[arg(
        long = "drain-timeout",
        env = "EPISTOLE_SMTP_DRAIN_TIMEOUT",
        default_value_t = 30
    )]
    pub drain_timeout_secs: u64,
    /// MX: check SPF, DKIM, ARC and DMARC of every message and add an
    /// Authentication-Results header (RFC 8601); false turns the checks off.
    #[arg(
        long = "inbound-auth",
        env = "EPISTOLE_SMTP_INBOUND_AUTH",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub inbound_auth: bool,
    /// DNS server (IP:PORT) for the SPF, DKIM and DMARC lookups; default:
    /// /etc/resolv.conf.
    #[arg(long = "dns-server", env = "EPISTOLE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// DNS query timeout, milliseconds.
    #[arg(
        long = "dns-timeout-ms",
        env = "EPISTOLE_DNS_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub dns_timeout_ms: u64,
    /// MX: a message failing DMARC of a domain publishing p=reject is
    /// refused (enforce: 550 5.7.1), filed as junk (quarantine) or only
    /// marked in Authentication-Results (report).
    #[arg(
        long = "dmarc-reject-action",
        env = "EPISTOLE_SMTP_DMARC_REJECT_ACTION",
        value_enum,
        default_value_t = inbound::Action::Enforce
    )]
    pub dmarc_reject_action: inbound::Action,
    /// MX: what to do with an SPF "fail" of the envelope sender when no
    /// DKIM signature passes (enforce, quarantine or report).
    #[arg(
        long = "spf-fail-action",
        env = "EPISTOLE_SMTP_SPF_FAIL_ACTION",
        value_enum,
        default_value_t = inbound::Action::Report
    )]
    pub spf_fail_action: inbound::Action,
    /// A message with more Received headers than this is refused as a
    /// mail loop, 554 5.4.6 (RFC 5321 §6.3).
    #[arg(
        long = "max-received",
        env = "EPISTOLE_SMTP_MAX_RECEIVED",
        default_value_t = 50
    )]
    pub max_received: usize,
}

impl Config {
    /// Defaults for everything, all listeners on 127.0.0.1 port 0 (tests).
    #[must_use]
    pub fn new(store_url: impl Into<String>, store_token: impl Into<String>) -> Self {
        Self {
            store: StoreArgs::new(store_url.into(), store_token.into()),
            mx_listen: "127.0.0.1:0".into(),
            submission_listen: "127.0.0.1:0".into(),
            submissions_listen: "127.0.0.1:0".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            errors_before_delay: 5,
            error_delay_ms: 0,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            data_phase_timeout_secs: 600,
            session_timeout_secs: 1800,
            min_data_rate: 256,
            min_data_rate_grace_secs: 30,
            spool_memory_mb: 256,
            max_messages_per_ip_hour: 1000,
            max_recipients_per_ip_hour: 5000,
            max_messages_per_account_hour: 200,
            max_recipients_per_account_hour: 1000,
            greet_pass_ttl_secs: 86_400,
            guard_timeout_ms: 500,
            store_timeout_ms: 30_000,
            store_attempts: 3,
            enqueue_retry_secs: 0,
            early_talker_delay_ms: 0,
            drain_timeout_secs: 30,
            // Tests turn the checks on with a test DNS server.
            inbound_auth: false,
            dns_server: None,
            dns_timeout_ms: 5_000,
            dmarc_reject_action: inbound::Action::Enforce,
            spf_fail_action: inbound::Action::Report,
            max_received: 50,
            srs: service_kit::SrsArgs::default(),
            listener: ListenerArgs {
                hostname: "mx.test".into(),
                tls_self_signed: true,
                ..ListenerArgs::defaults()
            },
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients.max(1),
            max_errors: self.max_errors.max(1),
            errors_before_delay: self.errors_before_delay,
            error_delay: Duration::from_millis(self.error_delay_ms),
            command_timeout: Duration::from_secs(self.command_timeout_secs.max(1)),
            data_timeout: Duration::from_secs(self.data_timeout_secs.max(1)),
            data_phase_timeout: Duration::from_secs(self.data_phase_timeout_secs.max(1)),
            session_timeout: Duration::from_secs(self.session_timeout_secs.max(1)),
            min_data_rate: (self.min_data_rate > 0).then(|| io::RateFloor {
                bytes_per_sec: self.min_data_rate,
                grace: Duration::from_secs(self.min_data_rate_grace_secs),
            }),
            hourly: Hourly {
                messages_per_ip: self.max_messages_per_ip_hour,
                recipients_per_ip: self.max_recipients_per_ip_hour,
                messages_per_account: self.max_messages_per_account_hour,
                recipients_per_account: self.max_recipients_per_account_hour,
            },
            greet_pass_ttl: Duration::from_secs(self.greet_pass_ttl_secs),
            max_received: self.max_received,
        }
    }
}

/// smtp-in with its listeners bound, ready to serve.
pub struct Server {
    service: service_kit::Service,
    shared: Arc<Shared>,
    limits: Arc<service_kit::ConnLimits>,
    proxy: service_kit::ProxyPolicy,
    options: conn::ConnOptions,
    drain: Duration,
}

impl Server {
    /// Loads TLS material and binds every configured listener.
    ///
    /// # Errors
    /// Bad configuration, unreadable certificates, or an address in use.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let tls = config.listener.tls().context("TLS configuration")?;
        if tls.is_some() && config.listener.tls_cert.is_none() {
            tracing::warn!("using a generated self-signed certificate (development only)");
        }
        let client = config.store.client().context("store client")?;
        let guard = guard::Guard::new(
            client.clone(),
            Duration::from_millis(config.guard_timeout_ms),
        );
        let backend = store::Backend::new(
            client,
            Duration::from_millis(config.store_timeout_ms.max(1)),
            config.store_attempts,
        )
        .with_enqueue_budget(Duration::from_secs(config.enqueue_retry_secs));
        let inbound = if config.inbound_auth {
            Some(inbound::Checker::new(
                config.dns_server,
                Duration::from_millis(config.dns_timeout_ms.max(1)),
                inbound::Policy {
                    dmarc_reject: config.dmarc_reject_action,
                    spf_fail: config.spf_fail_action,
                },
            )?)
        } else {
            tracing::warn!("--inbound-auth false: no SPF, DKIM or DMARC checks on the MX");
            None
        };
        let spool_kib = config
            .spool_memory_mb
            .saturating_mul(1024)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            hostname: config.listener.hostname.clone(),
            limits: config.limits(),
            backend: backend.clone(),
            tls: tls.map(|t| service_kit::Tls::new(t, "smtp_in")),
            allow_plaintext_auth: config.listener.allow_plaintext_auth,
            spool: Arc::new(Semaphore::new(spool_kib)),
            guard,
            inbound,
            srs: config.srs.srs(&config.listener.hostname),
        });
        if shared.tls.is_none()
            && !config.listener.allow_plaintext_auth
            && !service_kit::listen::parse_listen(&config.submission_listen)
                .map_err(anyhow::Error::msg)?
                .is_empty()
        {
            tracing::warn!("submission listener without TLS: AUTH will never be offered");
        }
        if config.listener.allow_plaintext_auth {
            tracing::warn!(
                "--allow-plaintext-auth: AUTH without TLS for loopback clients only (testing)"
            );
        }
        let readiness: service_kit::Readiness = Arc::new(move || {
            let backend = backend.clone();
            Box::pin(async move { backend.ping().await.map_err(|e| e.to_string()) })
        });
        let service = service_kit::Service::bind(
            &[
                (ListenerKind::Mx.name(), Security::Plain, &config.mx_listen),
                (
                    ListenerKind::Submission.name(),
                    Security::Plain,
                    &config.submission_listen,
                ),
                (
                    ListenerKind::Submissions.name(),
                    Security::ImplicitTls,
                    &config.submissions_listen,
                ),
            ],
            shared.tls.is_some(),
            &config.listener.http_listen,
            readiness,
        )
        .await?;
        Ok(Self {
            service,
            shared,
            limits: config.listener.limits(),
            proxy: config.listener.proxy().map_err(anyhow::Error::msg)?,
            options: conn::ConnOptions {
                early_talker_delay: Duration::from_millis(config.early_talker_delay_ms),
            },
            drain: Duration::from_secs(config.drain_timeout_secs),
        })
    }

    /// The bound addresses (useful with port 0); the health endpoint is
    /// `http`.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.service.local_addrs()
    }

    /// Announces the addresses, accepts connections until `shutdown`, then
    /// lets sessions finish (each idle one is told `421 4.3.2`) for up to
    /// the drain timeout.
    ///
    /// # Errors
    /// Currently none after a successful bind; kept for future listeners.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let protocol = Arc::new(conn::Smtp {
            shared: self.shared,
            options: self.options,
        });
        self.service
            .serve(protocol, self.limits, self.proxy, shutdown, self.drain)
            .await
    }
}

/// Runs smtp-in until `shutdown`. Prints `listening <name>=<addr>` for each
/// bound socket on stdout (tests and operators read the real ports there).
///
/// # Errors
/// Start-up failures (bad configuration, TLS files, bind).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Server::bind(&config).await?.serve(shutdown).await
}
