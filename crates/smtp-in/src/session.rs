//! The SMTP server state machine (RFC 5321 §4.1.4 order of commands, §3.3
//! mail transactions), generic over the stream so that TCP, TLS and an
//! in-memory pipe share one code path.
//!
//! States: `Fresh` (no EHLO/HELO yet, also right after STARTTLS) →
//! `Greeted` → `Mail { txn }` → `Rcpt { txn }` → DATA (read in one go) or
//! `Chunking` (between BDAT chunks, RFC 3030) → back to `Greeted`.
//! Whether a command is allowed now is decided in one place,
//! `Session::allowed` in [`crate::cmd`], before dispatch; the handlers live
//! one command family per module under `cmd/`.
//!
//! Message content is spooled in memory (bounded by the maximum message
//! size per transaction and by a server-wide spool budget) and handed to
//! the store's inbound queue in one `Queue.Enqueue` call at the end of data.
//! Spooling, rather than streaming while receiving, means a store call can
//! be retried with the same idempotency key and the same bytes, and a
//! message that turns out to be refused (bare LF, too big) never reaches
//! the store at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_wire::path::ReversePath;
use mailstore_api::pb;
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::cmd::data::Chunking;
use crate::cmd::parse_error_reply;
use crate::io::{Conn, ConnError, Line};
use crate::proto::command::{self, MAX_COMMAND_LINE, MailParams};
use crate::proto::{Reply, codes};
use crate::store::Backend;

/// Which port a session arrived on; decides TLS and AUTH rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MX (port 25): STARTTLS offered, no AUTH, local recipients only.
    Mx,
    /// Submission (port 587, RFC 6409): STARTTLS, AUTH only after TLS, AUTH
    /// required for MAIL.
    Submission,
    /// Submissions (port 465, RFC 8314): implicit TLS, AUTH required.
    Submissions,
}

impl ListenerKind {
    /// Name for logs and metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Mx => "mx",
            Self::Submission => "submission",
            Self::Submissions => "submissions",
        }
    }
}

/// Session limits (RFC 5321 §4.5.3).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message, in octets (RFC 1870 SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction; more get 452 (RFC 5321 §4.5.3.1.10).
    pub max_recipients: usize,
    /// Errors per session before `421` and close.
    pub max_errors: u32,
    /// Errors after which every further reply is delayed (tarpit).
    pub errors_before_delay: u32,
    /// The tarpit delay.
    pub error_delay: Duration,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for the next block of data (RFC 5321 §4.5.3.2.5: 3 minutes).
    pub data_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            errors_before_delay: 5,
            error_delay: Duration::from_secs(1),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }
}

/// What every session of one server shares.
pub struct Shared {
    /// Our host name (greeting, EHLO, Received).
    pub hostname: String,
    /// Limits.
    pub limits: Limits,
    /// The store.
    pub backend: Backend,
    /// TLS, when configured (STARTTLS and port 465).
    pub tls: Option<service_kit::Tls>,
    /// Allow AUTH without TLS (loopback testing only).
    pub allow_plaintext_auth: bool,
    /// Server-wide budget for spooled message content, in KiB permits.
    pub spool: Arc<Semaphore>,
}

/// Negotiated TLS parameters, for the Received header and the log.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "TLSv1_3".
    pub version: String,
    /// "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

/// How a session ended (or paused for the STARTTLS switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// QUIT answered.
    Quit,
    /// 220 sent for STARTTLS: the caller starts TLS on the raw stream.
    StartTls,
    /// Closed by us (timeout, too many errors, shutdown, flood).
    Closed,
}

/// The user an AUTH exchange authenticated (RFC 4954).
#[derive(Debug)]
pub(crate) struct AuthUser {
    pub(crate) id: u64,
    pub(crate) address: String,
}

/// One mail transaction (RFC 5321 §3.3).
#[derive(Debug)]
pub(crate) struct Transaction {
    pub(crate) from: ReversePath,
    pub(crate) params: MailParams,
    pub(crate) rcpts: Vec<pb::Recipient>,
    /// Idempotency key for `Queue.Enqueue`, reused for its retries.
    pub(crate) key: String,
    /// Transaction number within the session.
    pub(crate) number: u32,
}

/// The RFC 5321 §4.1.4 states; each carries what is valid in it.
pub(crate) enum State {
    /// No EHLO/HELO yet (also right after STARTTLS).
    Fresh,
    /// EHLO/HELO done, no transaction.
    Greeted,
    /// MAIL accepted.
    Mail(Transaction),
    /// At least one RCPT accepted.
    Rcpt(Transaction),
    /// Between BDAT chunks (RFC 3030).
    Chunking(Box<Chunking>),
}

/// What the command loop does next.
pub(crate) enum Flow {
    /// Read the next command.
    Continue,
    /// Leave the loop.
    Exit(Exit),
}

/// One SMTP session.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) kind: ListenerKind,
    pub(crate) peer: SocketAddr,
    pub(crate) sid: String,
    pub(crate) state: State,
    /// HELO/EHLO argument and whether it was EHLO.
    pub(crate) helo: Option<(String, bool)>,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) auth: Option<AuthUser>,
    pub(crate) errors: u32,
    pub(crate) transactions: u32,
    pub(crate) shutdown: Shutdown,
}

/// A new random session id (64 bits, hex).
#[must_use]
pub fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Session {
    /// A session for a client at `peer` on a listener of `kind`.
    #[must_use]
    pub fn new(
        shared: Arc<Shared>,
        kind: ListenerKind,
        peer: SocketAddr,
        sid: String,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            shared,
            kind,
            peer,
            sid,
            state: State::Fresh,
            helo: None,
            tls: None,
            auth: None,
            errors: 0,
            transactions: 0,
            shutdown,
        }
    }

    /// The session id (greeting, error replies, Received, store metadata).
    #[must_use]
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The listener this session came from.
    #[must_use]
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// The 220 greeting, with the session id.
    #[must_use]
    pub fn greeting(&self) -> Reply {
        Reply::new(
            220,
            None,
            format!(
                "{} ESMTP Epistole ready [{}]",
                self.shared.hostname, self.sid
            ),
        )
    }

    /// TLS is now on (after STARTTLS or on 465). RFC 3207 §4.2: the server
    /// MUST discard any knowledge obtained from the client before TLS: the
    /// EHLO argument, the transaction, authentication.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.auth = None;
        self.state = State::Fresh;
    }

    /// Serves commands until QUIT, STARTTLS, or a reason to close.
    ///
    /// # Errors
    /// I/O failure (the connection is gone; nothing to answer).
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Exit, ConnError> {
        loop {
            let timeout = self.shared.limits.command_timeout;
            let shutdown = self.shutdown.clone();
            let line = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    conn.send(&self.decorate(codes::shutting_down()));
                    conn.close().await;
                    return Ok(Exit::Closed);
                }
                line = conn.read_line(MAX_COMMAND_LINE, timeout) => line,
            };
            let line = match line {
                Ok(line) => line,
                Err(e) => return self.fatal(conn, e).await,
            };
            let flow = match line {
                Line::TooLong => self.reply(conn, codes::line_too_long()).await?,
                Line::BareLf => self.reply(conn, codes::bare_lf_command()).await?,
                Line::Ok(bytes) => match command::parse_command(&bytes) {
                    Err(e) => self.reply(conn, parse_error_reply(e)).await?,
                    Ok(cmd) => {
                        tracing::debug!(verb = cmd.verb(), "command");
                        match self.dispatch(conn, cmd).await {
                            Ok(flow) => flow,
                            Err(e) => return self.fatal(conn, e).await,
                        }
                    }
                },
            };
            if let Flow::Exit(exit) = flow {
                return Ok(exit);
            }
        }
    }

    /// Timeouts get a 421 (RFC 5321 §4.5.3.2); other failures just end.
    pub(crate) async fn fatal<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        e: ConnError,
    ) -> Result<Exit, ConnError> {
        match e {
            ConnError::Timeout => {
                metrics::counter!("smtp_in_sessions_closed_total", "reason" => "timeout")
                    .increment(1);
                conn.send(&self.decorate(codes::timeout()));
                conn.close().await;
                Ok(Exit::Closed)
            }
            ConnError::Flood => {
                metrics::counter!("smtp_in_sessions_closed_total", "reason" => "flood")
                    .increment(1);
                conn.send(&self.decorate(codes::line_too_long()));
                conn.close().await;
                Ok(Exit::Closed)
            }
            ConnError::Closed => Ok(Exit::Closed),
            ConnError::Io(_) => Err(e),
        }
    }

    /// Error replies carry the session id.
    pub(crate) fn decorate(&self, reply: Reply) -> Reply {
        if reply.is_error() {
            let sid = format!(" [{}]", self.sid);
            reply.with_suffix(&sid)
        } else {
            reply
        }
    }

    /// Queues a reply, counting 5xx as client errors: past the soft limit
    /// replies are delayed, at the hard limit the session ends with 421.
    pub(crate) async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        reply: Reply,
    ) -> Result<Flow, ConnError> {
        let limits = &self.shared.limits;
        if reply.code >= 500 {
            self.errors += 1;
            if self.errors > limits.errors_before_delay && !limits.error_delay.is_zero() {
                conn.flush().await?;
                tokio::time::sleep(limits.error_delay).await;
            }
        }
        let max_errors = limits.max_errors;
        conn.send(&self.decorate(reply));
        if self.errors >= max_errors {
            metrics::counter!("smtp_in_sessions_closed_total", "reason" => "too_many_errors")
                .increment(1);
            conn.send(&self.decorate(codes::too_many_errors()));
            conn.close().await;
            return Ok(Flow::Exit(Exit::Closed));
        }
        Ok(Flow::Continue)
    }

    pub(crate) fn in_transaction(&self) -> bool {
        !matches!(self.state, State::Fresh | State::Greeted)
    }

    pub(crate) fn tls_offered(&self) -> bool {
        self.shared.tls.is_some() && self.tls.is_none() && self.kind != ListenerKind::Submissions
    }

    pub(crate) fn auth_offered(&self) -> bool {
        self.kind != ListenerKind::Mx && (self.tls.is_some() || self.shared.allow_plaintext_auth)
    }
}
