//! Epistole's IMAP server.
//!
//! Implements IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051), both
//! advertised, with ENABLE (RFC 5161), IDLE (RFC 2177), LITERAL+/LITERAL-
//! (RFC 7888), SASL-IR (RFC 4959) with AUTHENTICATE PLAIN (RFC 4616), ID
//! (RFC 2971), NAMESPACE (RFC 2342), UNSELECT (RFC 3691), UIDPLUS
//! (RFC 4315), MOVE (RFC 6851), CHILDREN (RFC 3348), LIST-EXTENDED
//! (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE (RFC 6154), STATUS=SIZE
//! (RFC 8438), CONDSTORE (RFC 7162), ESEARCH (RFC 4731), BINARY
//! (RFC 3516), UTF8=ACCEPT (RFC 6855), APPENDLIMIT (RFC 7889), MULTIAPPEND
//! (RFC 3502); STARTTLS on
//! the plain port and implicit TLS (RFC 8314).
//!
//! Stateless over the mailbox-store (gRPC `mailstore.v1`), the only thing it
//! talks to: any replica serves any user. Per-connection state (sequence
//! numbers, \Recent, enabled extensions) lives in the session; changes made
//! elsewhere arrive through the store's `Watch` stream and are reported at
//! the points RFC 9051 §7.4.1 allows.
//!
//! Layout: [`framing`] (incremental command framing with limits) and
//! [`parser`] (the grammar) are pure; [`response`] serialises every reply
//! from the crate's own types in [`model`]; [`session`] is the state
//! machine and read loop, [`selected`] the selected mailbox's view and its
//! resync; `cmd` holds the per-state command table, the dispatcher and
//! one module per command family; [`store`] is the only module that talks
//! to the store and sees its protobuf types; [`conn`] owns listeners,
//! limits and the TLS swap (configuration from the shared `tls-kit` crate:
//! rustls with ring).

mod cmd;
pub mod command;
pub mod conn;
pub mod framing;
pub mod io;
pub mod mailbox_name;
pub mod model;
pub mod mutf7;
pub mod parser;
pub mod response;
pub mod selected;
pub mod session;
pub mod store;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{LogArgs, Shutdown, StoreArgs};
use tokio::net::TcpListener;

pub use session::{Session, SessionConfig, Shared};

/// Configuration of the imap service: every option is a flag and an
/// environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the plain listener (STARTTLS available). "off" disables it.
    #[arg(
        long = "listen",
        env = "EPISTOLE_IMAP_LISTEN",
        default_value = "0.0.0.0:143"
    )]
    pub listen: String,
    /// Address of the implicit-TLS listener. "off" disables it.
    #[arg(
        long = "listen-tls",
        env = "EPISTOLE_IMAP_LISTEN_TLS",
        default_value = "0.0.0.0:993"
    )]
    pub listen_tls: String,
    /// Address of the /healthz /readyz /metrics endpoint (none when unset).
    #[arg(long = "http-listen", env = "EPISTOLE_IMAP_HTTP")]
    pub http_listen: Option<SocketAddr>,
    /// Host name, used for a generated self-signed certificate.
    #[arg(
        long = "hostname",
        env = "EPISTOLE_HOSTNAME",
        default_value = "localhost"
    )]
    pub hostname: String,
    /// PEM file with the certificate chain.
    #[arg(long = "tls-cert", env = "EPISTOLE_IMAP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key.
    #[arg(long = "tls-key", env = "EPISTOLE_IMAP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Development only: generate a self-signed certificate at start.
    #[arg(long = "tls-self-signed", env = "EPISTOLE_IMAP_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Allow LOGIN and AUTHENTICATE without TLS (loopback tests only).
    #[arg(
        long = "allow-plaintext-auth",
        env = "EPISTOLE_IMAP_ALLOW_PLAINTEXT_AUTH"
    )]
    pub allow_plaintext_auth: bool,
    /// Delay before answering a failed login, in milliseconds.
    #[arg(
        long = "auth-failure-delay-ms",
        env = "EPISTOLE_IMAP_AUTH_FAILURE_DELAY_MS",
        default_value_t = 2000
    )]
    pub auth_failure_delay_ms: u64,
    /// Inactivity timeout once authenticated, in seconds (RFC 9051 §5.4: at least 1800).
    #[arg(
        long = "idle-timeout-secs",
        env = "EPISTOLE_IMAP_IDLE_TIMEOUT_SECS",
        default_value_t = 1800
    )]
    pub idle_timeout_secs: u64,
    /// Inactivity timeout before authentication, in seconds.
    #[arg(
        long = "preauth-timeout-secs",
        env = "EPISTOLE_IMAP_PREAUTH_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub preauth_timeout_secs: u64,
    /// Client errors (BAD) tolerated before a connection is closed.
    #[arg(
        long = "max-errors",
        env = "EPISTOLE_IMAP_MAX_ERRORS",
        default_value_t = 20
    )]
    pub max_errors: u32,
    /// Commands per second per connection (bursts up to twice this); faster clients are slowed down.
    #[arg(
        long = "commands-per-sec",
        env = "EPISTOLE_IMAP_COMMANDS_PER_SEC",
        default_value_t = 200
    )]
    pub commands_per_sec: u32,
    /// Longest command line in bytes.
    #[arg(long = "max-line", env = "EPISTOLE_IMAP_MAX_LINE", default_value_t = 64 * 1024)]
    pub max_line: usize,
    /// Largest literal outside APPEND, in bytes.
    #[arg(long = "max-literal", env = "EPISTOLE_IMAP_MAX_LITERAL", default_value_t = 64 * 1024)]
    pub max_literal: u64,
    /// Largest message accepted by APPEND (APPENDLIMIT), in bytes.
    #[arg(long = "max-message-size", env = "EPISTOLE_IMAP_MAX_MESSAGE_SIZE", default_value_t = 50 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Maximum concurrent sessions of one user on this process.
    #[arg(
        long = "max-sessions-per-user",
        env = "EPISTOLE_IMAP_MAX_SESSIONS_PER_USER",
        default_value_t = 50
    )]
    pub max_sessions_per_user: u32,
    /// Maximum concurrent connections.
    #[arg(
        long = "max-connections",
        env = "EPISTOLE_IMAP_MAX_CONNECTIONS",
        default_value_t = 5000
    )]
    pub max_connections: usize,
    /// Maximum concurrent connections from one IP address.
    #[arg(
        long = "max-connections-per-ip",
        env = "EPISTOLE_IMAP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 50
    )]
    pub max_connections_per_ip: u32,
    /// Store connection.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// The session settings this configuration implies.
    ///
    /// # Errors
    /// Inconsistent limits.
    pub fn session_config(&self, tls_available: bool) -> anyhow::Result<SessionConfig> {
        anyhow::ensure!(self.max_line >= 1024, "--max-line must be at least 1024");
        anyhow::ensure!(self.max_errors >= 1, "--max-errors must be positive");
        anyhow::ensure!(
            self.commands_per_sec >= 1,
            "--commands-per-sec must be positive"
        );
        let max_command = usize::try_from(self.max_message_size)
            .context("--max-message-size too large")?
            .saturating_add(self.max_line * 2);
        Ok(SessionConfig {
            tls_available,
            allow_plaintext_auth: self.allow_plaintext_auth,
            auth_failure_delay: Duration::from_millis(self.auth_failure_delay_ms),
            max_auth_failures: 3,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            preauth_timeout: Duration::from_secs(self.preauth_timeout_secs.max(1)),
            max_errors: self.max_errors,
            commands_per_sec: self.commands_per_sec,
            max_sessions_per_user: self.max_sessions_per_user.max(1),
            limits: framing::Limits {
                max_line: self.max_line,
                max_literal: self.max_literal,
                max_append_literal: self.max_message_size,
                max_command,
                max_literals: 64,
            },
        })
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

/// Runs the imap service until `shutdown`.
///
/// Prints `listening imap=ADDR` and `listening imaps=ADDR` on stdout once
/// the listeners are bound (port 0 is allowed), so tests and launchers can
/// learn the ports.
///
/// # Errors
/// Invalid configuration, TLS files, or a listener that cannot be bound.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    service_kit::init_tracing(&config.log);
    let tls = tls_kit::configure(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        config.tls_self_signed,
        &config.hostname,
    )
    .context("TLS configuration")?;
    let plain_addr = listen_addr(&config.listen)?;
    let tls_addr = listen_addr(&config.listen_tls)?;
    if tls.is_none() && tls_addr.is_some() {
        tracing::warn!("no TLS certificate configured: port 993 and STARTTLS are off");
    }
    let store = config.store.client().context("store client")?;
    let session_config = config.session_config(tls.is_some())?;
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
            .with_context(|| format!("bind imap listener {addr}"))?;
        announce.push(format!("listening imap={}", l.local_addr()?));
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
            .with_context(|| format!("bind imaps listener {addr}"))?;
        announce.push(format!("listening imaps={}", l.local_addr()?));
        tasks.spawn(conn::accept_loop(server.clone(), l, true, shutdown.clone()));
    }
    anyhow::ensure!(!tasks.is_empty(), "no listener configured");
    if let Some(addr) = config.http_listen {
        let ready = service_kit::store_readiness(server.shared.store.clone());
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
