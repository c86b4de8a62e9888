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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{Shutdown, StoreArgs, Tls};

pub use lock::LocalLocks;
pub use session::{Session, SessionConfig, Shared};

service_kit::listener_args! {
    /// pop3's door (`EPISTOLE_POP3_*`): endpoints, TLS, limits, PROXY trust.
    ListenerArgs, "EPISTOLE_POP3", max_connections = 2000, per_ip = 20,
    http = "127.0.0.1:7110", plain = "0.0.0.0:110", implicit_tls = "0.0.0.0:995"
}

/// Configuration of the pop3 service: every option is a flag and an
/// environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The door: host name, endpoints, TLS, limits, PROXY trust.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// How to reach the store.
    #[command(flatten)]
    pub store: StoreArgs,
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
    let tls = config.listener.tls().context("TLS configuration")?;
    let store = config.store.client().context("store client")?;
    let stls_available = tls.is_some();
    let session_config = SessionConfig {
        stls_available,
        allow_plaintext_auth: config.listener.allow_plaintext_auth,
        auth_failure_delay: Duration::from_millis(config.auth_failure_delay_ms),
        command_timeout: Duration::from_secs(config.command_timeout_secs),
        max_errors: config.max_errors,
        lock_ttl: Duration::from_secs(config.lock_ttl_secs),
        login_delay: config.login_delay_secs,
        expire: config.expire.clone(),
        max_messages: config.max_messages,
    };
    let readiness = service_kit::store_readiness(store.clone());
    let shared = Arc::new(Shared::new(session_config, store));
    let server = conn::Server {
        shared,
        acceptor: tls.map(|t| Tls::new(t, "pop3")),
    };
    config
        .listener
        .serve_pair(
            server,
            ["pop3", "pop3s"],
            stls_available,
            readiness,
            shutdown,
        )
        .await
}
