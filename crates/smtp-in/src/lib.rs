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
//! `Accounts.Authenticate`, submission senders by `Accounts.CheckSender`,
//! and a message is answered `250` only after `Queue.Enqueue` has committed
//! it to the inbound queue. Any store failure or unknown outcome is
//! `451 4.3.0`: an accepted message is never lost.
//!
//! Layout: [`proto`] is the pure grammar (commands, replies, the
//! DATA/BDAT decoder with the smuggling-safe end-of-data rule and the bare
//! CR/LF policy); [`session`] the state machine; [`conn`] TLS and the
//! STARTTLS switch; [`io`] buffered timed I/O; [`store`] the store calls.

mod cmd;
pub mod conn;
pub mod io;
pub mod proto;
pub mod received;
pub mod session;
pub mod store;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{HealthServer, Shutdown, StoreArgs};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

pub use session::{Limits, ListenerKind, Shared};

/// smtp-in configuration: every option is a flag with an environment
/// variable fallback.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// How to reach the store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Our host name, used in the greeting, EHLO and Received headers.
    #[arg(
        long = "hostname",
        env = "EPISTOLE_SMTP_HOSTNAME",
        default_value = "localhost"
    )]
    pub hostname: String,
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
    /// HTTP address for /healthz, /readyz and /metrics; "off" disables it.
    #[arg(
        long = "http-listen",
        env = "EPISTOLE_SMTP_HTTP",
        default_value = "127.0.0.1:7025"
    )]
    pub http_listen: String,
    /// TLS certificate chain (PEM).
    #[arg(
        long = "tls-cert",
        env = "EPISTOLE_SMTP_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long = "tls-key", env = "EPISTOLE_SMTP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Development only: generate a self-signed certificate at start-up.
    #[arg(
        long = "tls-self-signed",
        env = "EPISTOLE_SMTP_TLS_SELF_SIGNED",
        conflicts_with = "tls_cert"
    )]
    pub tls_self_signed: bool,
    /// Testing only: offer AUTH on submission without TLS.
    #[arg(
        long = "allow-plaintext-auth",
        env = "EPISTOLE_SMTP_ALLOW_PLAINTEXT_AUTH"
    )]
    pub allow_plaintext_auth: bool,
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
    /// Connections in total.
    #[arg(
        long = "max-connections",
        env = "EPISTOLE_SMTP_MAX_CONNECTIONS",
        default_value_t = 1000
    )]
    pub max_connections: usize,
    /// Connections per client IP.
    #[arg(
        long = "max-connections-per-ip",
        env = "EPISTOLE_SMTP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 20
    )]
    pub max_connections_per_ip: usize,
    /// Memory for message content being received, all sessions together, in MiB.
    #[arg(
        long = "spool-memory-mb",
        env = "EPISTOLE_SMTP_SPOOL_MEMORY_MB",
        default_value_t = 1024
    )]
    pub spool_memory_mb: usize,
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
}

impl Config {
    /// Defaults for everything, all listeners on 127.0.0.1 port 0 (tests).
    #[must_use]
    pub fn new(store_url: impl Into<String>, store_token: impl Into<String>) -> Self {
        Self {
            store: StoreArgs {
                url: store_url.into(),
                token: store_token.into(),
            },
            hostname: "mx.test".into(),
            mx_listen: "127.0.0.1:0".into(),
            submission_listen: "127.0.0.1:0".into(),
            submissions_listen: "127.0.0.1:0".into(),
            http_listen: "off".into(),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: true,
            allow_plaintext_auth: false,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            errors_before_delay: 5,
            error_delay_ms: 0,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            max_connections: 1000,
            max_connections_per_ip: 20,
            spool_memory_mb: 1024,
            store_timeout_ms: 30_000,
            store_attempts: 3,
            early_talker_delay_ms: 0,
            drain_timeout_secs: 30,
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
        }
    }
}

fn parse_listen(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .with_context(|| format!("bad listen address {s:?}"))
}

/// Connection counters (total and per IP).
struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Held for the life of a connection; gives its slots back on drop.
struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        metrics::gauge!("smtp_in_connections_active").decrement(1.0);
        let mut map = self
            .limits
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, &'static str> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "total")?;
        let mut map = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("per_ip");
        }
        *n += 1;
        metrics::gauge!("smtp_in_connections_active").increment(1.0);
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
            _total: total,
        })
    }
}

/// smtp-in with its listeners bound, ready to serve.
pub struct Server {
    listeners: Vec<(ListenerKind, TcpListener)>,
    health: Option<HealthServer>,
    shared: Arc<Shared>,
    limits: Arc<ConnLimits>,
    options: conn::ConnOptions,
    drain: Duration,
}

impl Server {
    /// Loads TLS material and binds every configured listener.
    ///
    /// # Errors
    /// Bad configuration, unreadable certificates, or an address in use.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::from_pem_files(cert, key)?),
            _ if config.tls_self_signed => {
                tracing::warn!("using a generated self-signed certificate (development only)");
                Some(tls::self_signed(&config.hostname)?.0)
            }
            _ => None,
        };
        let client = config.store.client().context("store client")?;
        let backend = store::Backend::new(
            client,
            Duration::from_millis(config.store_timeout_ms.max(1)),
            config.store_attempts,
        );
        let spool_kib = config
            .spool_memory_mb
            .saturating_mul(1024)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            hostname: config.hostname.clone(),
            limits: config.limits(),
            backend: backend.clone(),
            tls,
            allow_plaintext_auth: config.allow_plaintext_auth,
            spool: Arc::new(Semaphore::new(spool_kib)),
        });
        let mut listeners = Vec::new();
        for (kind, addr) in [
            (ListenerKind::Mx, &config.mx_listen),
            (ListenerKind::Submission, &config.submission_listen),
            (ListenerKind::Submissions, &config.submissions_listen),
        ] {
            let Some(addr) = parse_listen(addr)? else {
                continue;
            };
            if kind == ListenerKind::Submissions && shared.tls.is_none() {
                anyhow::bail!(
                    "the submissions listener (implicit TLS) needs --tls-cert/--tls-key or --tls-self-signed"
                );
            }
            if kind == ListenerKind::Submission
                && shared.tls.is_none()
                && !config.allow_plaintext_auth
            {
                tracing::warn!("submission listener without TLS: AUTH will never be offered");
            }
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind smtp-in {} listener on {addr}", kind.name()))?;
            listeners.push((kind, listener));
        }
        anyhow::ensure!(!listeners.is_empty(), "no listener configured");
        let health = match parse_listen(&config.http_listen)? {
            Some(addr) => {
                let readiness: service_kit::Readiness = Arc::new(move || {
                    let backend = backend.clone();
                    Box::pin(async move { backend.ping().await.map_err(|e| e.to_string()) })
                });
                Some(
                    HealthServer::bind(addr, readiness)
                        .await
                        .context("bind health endpoint")?,
                )
            }
            None => None,
        };
        Ok(Self {
            listeners,
            health,
            shared,
            limits: Arc::new(ConnLimits {
                total: Arc::new(Semaphore::new(
                    config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
                )),
                per_ip: Mutex::new(HashMap::new()),
                max_per_ip: config.max_connections_per_ip.max(1),
            }),
            options: conn::ConnOptions {
                early_talker_delay: Duration::from_millis(config.early_talker_delay_ms),
            },
            drain: Duration::from_secs(config.drain_timeout_secs),
        })
    }

    /// The bound addresses (useful with port 0), with the health endpoint
    /// reported as `None` kind.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out: Vec<(&'static str, SocketAddr)> = self
            .listeners
            .iter()
            .filter_map(|(kind, l)| l.local_addr().ok().map(|a| (kind.name(), a)))
            .collect();
        if let Some(addr) = self.health.as_ref().and_then(|h| h.local_addr().ok()) {
            out.push(("http", addr));
        }
        out
    }

    /// Accepts connections until `shutdown`, then lets sessions finish
    /// (each idle one is told `421 4.3.2`) for up to the drain timeout.
    ///
    /// # Errors
    /// Currently none after a successful bind; kept for future listeners.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        if let Some(health) = self.health {
            let s = shutdown.clone();
            tracker.spawn(async move {
                if let Err(e) = health.serve(s).await {
                    tracing::error!(error = %e, "health endpoint failed");
                }
            });
        }
        for (kind, listener) in self.listeners {
            let shared = self.shared.clone();
            let limits = self.limits.clone();
            let shutdown = shutdown.clone();
            let options = self.options;
            let sessions = tracker.clone();
            tracker.spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        () = shutdown.cancelled() => break,
                        a = listener.accept() => a,
                    };
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    metrics::counter!("smtp_in_connections_total", "listener" => kind.name()).increment(1);
                    match limits.admit(peer.ip()) {
                        Ok(guard) => {
                            let shared = shared.clone();
                            let shutdown = shutdown.clone();
                            sessions.spawn(async move {
                                let _guard = guard;
                                conn::handle(stream, peer, kind, shared, options, shutdown).await;
                            });
                        }
                        Err(reason) => {
                            metrics::counter!("smtp_in_connections_rejected_total", "reason" => reason).increment(1);
                            tracing::info!(%peer, reason, "connection refused: limit");
                            sessions.spawn(refuse(stream, kind));
                        }
                    }
                }
            });
        }
        shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(self.drain, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions still running after the drain timeout; exiting");
        }
        Ok(())
    }
}

/// `421` to a connection over the limits (not on 465: that would need a
/// TLS handshake first; the connection is simply closed).
async fn refuse(mut stream: TcpStream, kind: ListenerKind) {
    if kind != ListenerKind::Submissions {
        let reply = proto::codes::too_many_connections().to_wire();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
    }
    let _ = stream.shutdown().await;
}

/// Runs smtp-in until `shutdown`. Prints `listening <name>=<addr>` for each
/// bound socket on stdout (tests and operators read the real ports there).
///
/// # Errors
/// Start-up failures (bad configuration, TLS files, bind).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for (name, addr) in server.local_addrs() {
            tracing::info!(%addr, "listening {name}");
            let _ = writeln!(out, "listening {name}={addr}");
        }
        let _ = out.flush();
    }
    server.serve(shutdown).await
}
