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

use crate::guard::Guard;
use crate::io::{Conn, ConnError, Line, RateFloor};
use crate::proto::codes::parse_error_reply;
use crate::proto::command::{self, MAX_COMMAND_LINE, MailParams};
use crate::proto::{Reply, codes};
use crate::spool::Spool;
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
    /// A whole DATA phase, or a whole BDAT transaction from its first chunk
    /// to its last. RFC 5321 §4.5.3.2 times single reads only; this bounds
    /// a sender that keeps every read just inside them.
    pub data_phase_timeout: Duration,
    /// A whole session, from the greeting to the close.
    pub session_timeout: Duration,
    /// The minimum average rate of a data phase; `None` disables it.
    pub min_data_rate: Option<RateFloor>,
    /// Messages and recipients per hour, counted across replicas by the
    /// store's Guard.
    pub hourly: Hourly,
    /// How long a client that passed the MX pre-greeting pause is greeted
    /// at once (zero: pause every time).
    pub greet_pass_ttl: Duration,
    /// More `Received:` fields than this is a mail loop (RFC 5321 §6.3).
    pub max_received: usize,
}

/// Per-hour limits; 0 disables one. Unauthenticated sessions (the MX) are
/// counted per client IP (IPv6 per /64, by the store), authenticated ones
/// (submission) per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hourly {
    /// Messages (counted at MAIL) per client IP.
    pub messages_per_ip: u32,
    /// Accepted recipients per client IP.
    pub recipients_per_ip: u32,
    /// Messages (counted at MAIL) per authenticated account.
    pub messages_per_account: u32,
    /// Accepted recipients per authenticated account.
    pub recipients_per_account: u32,
}

impl Default for Hourly {
    fn default() -> Self {
        Self {
            messages_per_ip: 1000,
            recipients_per_ip: 5000,
            messages_per_account: 200,
            recipients_per_account: 1000,
        }
    }
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
            data_phase_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(1800),
            min_data_rate: Some(RateFloor {
                bytes_per_sec: 256,
                grace: Duration::from_secs(30),
            }),
            hourly: Hourly::default(),
            greet_pass_ttl: Duration::from_secs(86_400),
            max_received: 50,
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
    /// Allow AUTH without TLS to loopback peers (testing only; any other
    /// peer still needs TLS).
    pub allow_plaintext_auth: bool,
    /// Server-wide budget for spooled message content, in KiB permits.
    pub spool: Arc<Semaphore>,
    /// Shared counters and marks in the store (fail open).
    pub guard: Guard,
    /// SPF/DKIM/ARC/DMARC checks of MX mail; `None`: off.
    pub inbound: Option<crate::inbound::Checker>,
    /// SRS: bounces to our rewritten senders go back to the original
    /// sender; `None` (no `--srs-secret`): such addresses are unknown.
    pub srs: Option<mail_wire::srs::Srs>,
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
    /// MX: the strictest `--dmarc-reject-action` of the recipients'
    /// domains (their store setting, else the flag); `None` before any.
    pub(crate) dmarc_reject: Option<crate::inbound::Action>,
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
    /// The session ends at this instant whatever it is doing.
    pub(crate) deadline: tokio::time::Instant,
    /// Whether a good MAIL should (re)mark this client as one that waits
    /// for the greeting.
    pub(crate) greet_pass: GreetPass,
}

/// The MX pre-greeting pause's memory for this client (postscreen-style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreetPass {
    /// Nothing to record (not the MX, memory off, or fresh mark).
    Nothing,
    /// The client waited for the greeting (or its mark is old): mark it at
    /// its first accepted MAIL.
    Due,
}

/// A new random session id (64 bits, hex): the listener's connection id.
#[must_use]
pub fn new_session_id() -> String {
    service_kit::new_connection_id()
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
            kind,
            peer,
            sid,
            state: State::Fresh,
            helo: None,
            tls: None,
            auth: None,
            errors: 0,
            transactions: 0,
            deadline: tokio::time::Instant::now() + shared.limits.session_timeout,
            greet_pass: GreetPass::Nothing,
            shutdown,
            shared,
        }
    }

    /// Whether a later accepted MAIL marks this client for the greeting
    /// pass (set by the connection after the pre-greeting pause).
    pub fn set_greet_pass(&mut self, pass: GreetPass) {
        self.greet_pass = pass;
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
        conn.set_session_deadline(self.deadline);
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
                        let flow = self.dispatch(conn, cmd).await;
                        // A data phase lasts while BDAT chunks are pending.
                        if !matches!(self.state, State::Chunking(_)) {
                            conn.end_phase();
                        }
                        match flow {
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

    /// Timeouts and deadlines get a `421 4.4.2` (RFC 5321 §4.5.3.2, §3.8;
    /// RFC 3463 X.4.2 "bad connection"); other failures just end. Any
    /// spooled content is dropped here, releasing its budget at once.
    pub(crate) async fn fatal<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        e: ConnError,
    ) -> Result<Exit, ConnError> {
        self.state = State::Fresh;
        let (reason, reply) = match e {
            ConnError::Timeout => ("timeout", codes::timeout()),
            ConnError::SessionDeadline => ("session_deadline", codes::session_too_long()),
            ConnError::PhaseDeadline => ("data_deadline", codes::data_too_long()),
            ConnError::TooSlow => ("too_slow", codes::data_too_slow()),
            ConnError::Flood => ("flood", codes::line_too_long()),
            ConnError::Closed => return Ok(Exit::Closed),
            ConnError::Io(_) => return Err(e),
        };
        metrics::counter!("smtp_in_sessions_closed_total", "reason" => reason).increment(1);
        tracing::info!(reason, "session cut");
        conn.send(&self.decorate(reply));
        conn.close().await;
        Ok(Exit::Closed)
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

    /// Queues a reply, counting 5xx (and `454`, a refused AUTH) as client
    /// errors: past the soft limit replies are delayed, at the hard limit
    /// the session ends with 421. A 421 closes (RFC 5321 §3.8).
    pub(crate) async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        reply: Reply,
    ) -> Result<Flow, ConnError> {
        let limits = &self.shared.limits;
        if reply.code == 421 {
            conn.send(&self.decorate(reply));
            conn.close().await;
            return Ok(Flow::Exit(Exit::Closed));
        }
        if reply.code >= 500 || reply.code == 454 {
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

    /// RFC 4954 §4: AUTH only inside TLS, except for the testing switch
    /// and then only for loopback peers (127.0.0.0/8, ::1; also as
    /// IPv4-mapped IPv6): from any other address the switch does nothing.
    pub(crate) fn auth_offered(&self) -> bool {
        self.kind != ListenerKind::Mx
            && (self.tls.is_some()
                || (self.shared.allow_plaintext_auth
                    && self.peer.ip().to_canonical().is_loopback()))
    }

    /// Starts the data phase clock (DATA, or the first chunk of a BDAT
    /// transaction); a phase already running goes on.
    pub(crate) fn begin_data_phase<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn<S>) {
        let limits = &self.shared.limits;
        conn.start_phase(limits.data_phase_timeout, limits.min_data_rate);
    }
}

/// A BDAT transfer between chunks.
pub(crate) struct Chunking {
    pub(crate) txn: Transaction,
    pub(crate) decoder: mail_wire::body::BodyDecoder,
    pub(crate) spool: Spool,
}
