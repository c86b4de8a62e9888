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
//! (RFC 3502), QUOTA (RFC 9208: STORAGE and MESSAGE, SETQUOTA for the
//! configured quota administrators), QRESYNC (RFC 7162 §3.2), OBJECTID
//! (RFC 8474) and PREVIEW (RFC 8970); STARTTLS on
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
//! to the store and sees its protobuf types; [`binary`] re-encodes a
//! binary body APPEND brings (RFC 3516 §4.3); [`objectid`] and
//! [`preview`] derive OBJECTID identifiers and PREVIEW text; [`conn`] owns listeners,
//! limits and the TLS swap (configuration from the shared `tls-kit` crate:
//! rustls with ring).

pub mod binary;
mod cmd;
pub mod command;
pub mod conn;
pub mod flag_column;
pub mod framing;
pub mod intern;
pub mod io;
pub mod mailbox_name;
pub mod model;
pub mod mutf7;
pub mod notify;
pub mod objectid;
pub mod parser;
pub mod preview;
pub mod response;
pub mod selected;
pub mod session;
pub mod sort;
pub mod store;
pub mod watch_hub;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::{Shutdown, StoreArgs, Tls};

pub use session::{Session, SessionConfig, Shared};

service_kit::listener_args! {
    /// imap's door (`EPISTOLE_IMAP_*`): endpoints, TLS, limits, PROXY trust.
    ListenerArgs, "EPISTOLE_IMAP", max_connections = 5000, per_ip = 50,
    http = "off", plain = "0.0.0.0:143", implicit_tls = "0.0.0.0:993"
}

/// Configuration of the imap service: every option is a flag and an
/// environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The door: host name, endpoints, TLS, limits, PROXY trust.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// How to reach the store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Longest command line in bytes.
    #[arg(long = "max-line", env = "EPISTOLE_IMAP_MAX_LINE", default_value_t = 64 * 1024)]
    pub max_line: usize,
    /// Largest literal outside APPEND, in bytes.
    #[arg(long = "max-literal", env = "EPISTOLE_IMAP_MAX_LITERAL", default_value_t = 64 * 1024)]
    pub max_literal: u64,
    /// Largest message accepted by APPEND (APPENDLIMIT), in bytes.
    #[arg(long = "max-message-size", env = "EPISTOLE_IMAP_MAX_MESSAGE_SIZE", default_value_t = 50 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Bytes a client may send before it authenticates (then `* BYE`).
    /// Lines and literals before login are also capped at 8 KiB each.
    #[arg(
        long = "max-preauth-bytes",
        env = "EPISTOLE_IMAP_MAX_PREAUTH_BYTES",
        default_value_t = session::MAX_PREAUTH_BYTES
    )]
    pub max_preauth_bytes: u64,
    /// Inactivity timeout before authentication, in seconds; also the
    /// longest wait for an AUTHENTICATE continuation line.
    #[arg(
        long = "preauth-timeout-secs",
        env = "EPISTOLE_IMAP_PREAUTH_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub preauth_timeout_secs: u64,
    /// Inactivity timeout once authenticated, in seconds (RFC 9051 §5.4: at least 1800).
    #[arg(
        long = "idle-timeout-secs",
        env = "EPISTOLE_IMAP_IDLE_TIMEOUT_SECS",
        default_value_t = 1800
    )]
    pub idle_timeout_secs: u64,
    /// Delay before answering a failed login, in milliseconds.
    #[arg(
        long = "auth-failure-delay-ms",
        env = "EPISTOLE_IMAP_AUTH_FAILURE_DELAY_MS",
        default_value_t = 2000
    )]
    pub auth_failure_delay_ms: u64,
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
    /// Maximum concurrent sessions of one user on this process.
    #[arg(
        long = "max-sessions-per-user",
        env = "EPISTOLE_IMAP_MAX_SESSIONS_PER_USER",
        default_value_t = 50
    )]
    pub max_sessions_per_user: u32,
    /// Users (addresses) allowed RFC 9208 SETQUOTA and GETQUOTA of other
    /// users' quota roots (a root is named by the user's address);
    /// repeatable or comma-separated.
    #[arg(
        long = "quota-admin",
        env = "EPISTOLE_IMAP_QUOTA_ADMINS",
        value_delimiter = ','
    )]
    pub quota_admins: Vec<String>,
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
            allow_plaintext_auth: self.listener.allow_plaintext_auth,
            auth_failure_delay: Duration::from_millis(self.auth_failure_delay_ms),
            max_auth_failures: 3,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            preauth_timeout: Duration::from_secs(self.preauth_timeout_secs.max(1)),
            max_preauth_bytes: self.max_preauth_bytes.max(1024),
            max_errors: self.max_errors,
            commands_per_sec: self.commands_per_sec,
            max_sessions_per_user: self.max_sessions_per_user.max(1),
            max_list_results: session::MAX_LIST_RESULTS,
            limits: framing::Limits {
                max_line: self.max_line,
                max_literal: self.max_literal,
                max_append_literal: self.max_message_size,
                max_command,
                max_literals: 64,
                preauth_max: framing::PREAUTH_MAX,
            },
            notify_max_pending: session::NOTIFY_MAX_PENDING,
            quota_admins: self
                .quota_admins
                .iter()
                .map(|a| a.trim().to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .collect(),
        })
    }
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
    let tls = config.listener.tls().context("TLS configuration")?;
    let store = config.store.client().context("store client")?;
    let readiness = service_kit::store_readiness(store.clone());
    let tls_available = tls.is_some();
    let shared = Arc::new(Shared::new(config.session_config(tls_available)?, store));
    let acceptor = tls.map(|t| Tls::new(t, "imap"));
    let server = conn::Server { shared, acceptor };
    let names = ["imap", "imaps"];
    config
        .listener
        .serve_pair(server, names, tls_available, readiness, shutdown)
        .await
}
