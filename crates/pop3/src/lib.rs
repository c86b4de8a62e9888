//! Epistole's POP3 server.
//!
//! Implements RFC 1939 (POP3: USER, PASS, STAT, LIST, RETR, DELE, NOOP, RSET,
//! QUIT, TOP, UIDL; APOP is not offered), RFC 2449 (CAPA, PIPELINING,
//! RESP-CODES, EXPIRE, LOGIN-DELAY, IMPLEMENTATION), RFC 3206 (AUTH and SYS
//! response codes), RFC 2595 (STLS), RFC 5034 (SASL, mechanism PLAIN per
//! RFC 4616), RFC 6856 (UTF8) and implicit TLS on port 995 (RFC 8314).
//!
//! The maildrop is the user's INBOX in the mailbox-store, the only thing
//! this service talks to (gRPC, `mailstore.v1`): `Accounts.Authenticate`,
//! `Mailboxes.GetMailbox/FetchMeta/FetchBody/StoreFlags/Expunge`, and the
//! store's expiring named locks (`AcquireLock`/`ReleaseLock`) for the
//! exclusive maildrop lock that every pop3 replica honours.
//!
//! Layout: [`proto`] is the pure command grammar and the typed replies,
//! [`body`] the pure CRLF/dot-stuffing encoder for message bodies,
//! [`session`] the AUTHORIZATION → TRANSACTION → UPDATE state machine
//! (generic over the byte stream), the private `cmd` modules its command
//! handlers (one per command family, with the per-state command table),
//! [`conn`] TLS, STLS, listeners and limits, the private `lock` module the
//! store-backed maildrop lock and `sizes` the process-wide CRLF-size cache.

pub mod body;
mod cmd;
pub mod conn;
mod lock;
pub mod proto;
pub mod session;
mod sizes;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{Shutdown, StoreArgs};
use tokio::net::TcpListener;

pub use session::{Session, SessionConfig, Shared};

/// Configuration of the pop3 service: every option is a flag and an
/// environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the plain listener (STLS available). "off" disables it.
    #[arg(
        long = "listen",
        env = "EPISTOLE_POP3_LISTEN",
        default_value = "0.0.0.0:110"
    )]
    pub listen: String,
    /// Address of the implicit-TLS listener. "off" disables it.
    #[arg(
        long = "listen-tls",
        env = "EPISTOLE_POP3_LISTEN_TLS",
        default_value = "0.0.0.0:995"
    )]
    pub listen_tls: String,
    /// Address of the /healthz /readyz /metrics endpoint. "off" disables it.
    #[arg(
        long = "http-listen",
        env = "EPISTOLE_POP3_HTTP",
        default_value = "127.0.0.1:7110"
    )]
    pub http_listen: String,
    /// Host name, used for a generated self-signed certificate.
    #[arg(
        long = "hostname",
        env = "EPISTOLE_HOSTNAME",
        default_value = "localhost"
    )]
    pub hostname: String,
    /// PEM file with the certificate chain.
    #[arg(long = "tls-cert", env = "EPISTOLE_POP3_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key.
    #[arg(long = "tls-key", env = "EPISTOLE_POP3_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Development only: generate a self-signed certificate at start.
    #[arg(long = "tls-self-signed", env = "EPISTOLE_POP3_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Allow USER/PASS and AUTH without TLS (loopback tests only).
    #[arg(
        long = "allow-plaintext-auth",
        env = "EPISTOLE_POP3_ALLOW_PLAINTEXT_AUTH"
    )]
    pub allow_plaintext_auth: bool,
    /// Delay before answering a failed login, in milliseconds.
    #[arg(
        long = "auth-failure-delay-ms",
        env = "EPISTOLE_POP3_AUTH_FAILURE_DELAY_MS",
        default_value_t = 2000
    )]
    pub auth_failure_delay_ms: u64,
    /// Inactivity timeout in seconds (RFC 1939 §3: at least 600).
    #[arg(
        long = "command-timeout-secs",
        env = "EPISTOLE_POP3_COMMAND_TIMEOUT_SECS",
        default_value_t = 600
    )]
    pub command_timeout_secs: u64,
    /// Client errors tolerated before a connection is closed.
    #[arg(
        long = "max-errors",
        env = "EPISTOLE_POP3_MAX_ERRORS",
        default_value_t = 10
    )]
    pub max_errors: u32,
    /// Maximum concurrent connections.
    #[arg(
        long = "max-connections",
        env = "EPISTOLE_POP3_MAX_CONNECTIONS",
        default_value_t = 2000
    )]
    pub max_connections: usize,
    /// Maximum concurrent connections from one IP address.
    #[arg(
        long = "max-connections-per-ip",
        env = "EPISTOLE_POP3_MAX_CONNECTIONS_PER_IP",
        default_value_t = 20
    )]
    pub max_connections_per_ip: u32,
    /// Lifetime of the maildrop lock in seconds (refreshed while the session
    /// lives; a crashed replica's lock expires after this).
    #[arg(
        long = "lock-ttl-secs",
        env = "EPISTOLE_POP3_LOCK_TTL_SECS",
        default_value_t = 60
    )]
    pub lock_ttl_secs: u64,
    /// RFC 2449 LOGIN-DELAY: minimum seconds between logins of a user (enforced).
    #[arg(long = "login-delay-secs", env = "EPISTOLE_POP3_LOGIN_DELAY_SECS")]
    pub login_delay_secs: Option<u32>,
    /// RFC 2449 EXPIRE to announce: "NEVER" or a number of days (the
    /// retention itself is the operator's policy, not enforced here).
    #[arg(long = "expire", env = "EPISTOLE_POP3_EXPIRE")]
    pub expire: Option<String>,
    /// At most this many (oldest) INBOX messages are shown in a session.
    #[arg(
        long = "max-messages",
        env = "EPISTOLE_POP3_MAX_MESSAGES",
        default_value_t = 100_000
    )]
    pub max_messages: usize,
    /// Store connection.
    #[command(flatten)]
    pub store: StoreArgs,
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.lock_ttl_secs >= 3,
            "--lock-ttl-secs must be at least 3"
        );
        anyhow::ensure!(
            self.command_timeout_secs >= 1,
            "--command-timeout-secs must be positive"
        );
        anyhow::ensure!(self.max_errors >= 1, "--max-errors must be positive");
        if let Some(e) = &self.expire {
            anyhow::ensure!(
                e == "NEVER"
                    || (!e.is_empty() && e.len() <= 9 && e.bytes().all(|b| b.is_ascii_digit())),
                "--expire must be NEVER or a number of days"
            );
        }
        Ok(())
    }
}

fn listen_addr(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .with_context(|| format!("invalid listen address {s:?}"))
}

/// Runs the pop3 service until `shutdown`.
///
/// Prints `listening pop3=ADDR` and `listening pop3s=ADDR` on stdout once
/// the listeners are bound (port 0 is allowed), so tests and launchers can
/// learn the ports.
///
/// # Errors
/// Invalid configuration, TLS files, or a listener that cannot be bound.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    config.validate()?;
    let tls = conn::tls_config(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        config.tls_self_signed,
        &config.hostname,
    )?;
    let plain_addr = listen_addr(&config.listen)?;
    let tls_addr = listen_addr(&config.listen_tls)?;
    if tls.is_none() && tls_addr.is_some() {
        tracing::warn!("no TLS certificate configured: port 995 and STLS are off");
    }
    let store = config.store.client().context("store client")?;
    let session_config = SessionConfig {
        stls_available: tls.is_some(),
        allow_plaintext_auth: config.allow_plaintext_auth,
        auth_failure_delay: Duration::from_millis(config.auth_failure_delay_ms),
        command_timeout: Duration::from_secs(config.command_timeout_secs),
        max_errors: config.max_errors,
        lock_ttl: Duration::from_secs(config.lock_ttl_secs),
        login_delay: config.login_delay_secs,
        expire: config.expire.clone(),
        max_messages: config.max_messages,
    };
    let server = conn::Server {
        shared: Arc::new(Shared::new(session_config, store)),
        acceptor: tls.map(tokio_rustls::TlsAcceptor::from),
        limits: conn::Limits::new(config.max_connections, config.max_connections_per_ip),
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut announce = Vec::new();
    if let Some(addr) = plain_addr {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind pop3 listener {addr}"))?;
        announce.push(format!("listening pop3={}", l.local_addr()?));
        tasks.spawn(conn::accept_loop(
            server.clone(),
            l,
            false,
            shutdown.clone(),
        ));
    }
    if let (Some(addr), Some(_)) = (tls_addr, &server.acceptor) {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind pop3s listener {addr}"))?;
        announce.push(format!("listening pop3s={}", l.local_addr()?));
        tasks.spawn(conn::accept_loop(server.clone(), l, true, shutdown.clone()));
    }
    anyhow::ensure!(!tasks.is_empty(), "no listener configured");
    if let Some(addr) = listen_addr(&config.http_listen)? {
        // Ready when the store answers: without it no login can succeed.
        let store = server.shared.store.clone();
        let ready = service_kit::store_readiness(store);
        let health = service_kit::HealthServer::bind(addr, ready)
            .await
            .with_context(|| format!("bind health endpoint {addr}"))?;
        announce.push(format!("listening http={}", health.local_addr()?));
        let s = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = health.serve(s).await {
                tracing::warn!(error = %e, "health endpoint failed");
            }
        });
    }
    {
        let mut stdout = std::io::stdout().lock();
        for line in &announce {
            tracing::info!("{line}");
            writeln!(stdout, "{line}")?;
        }
        stdout.flush()?;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
