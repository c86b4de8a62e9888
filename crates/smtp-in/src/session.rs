//! The SMTP server state machine (RFC 5321 §4.1.4 order of commands, §3.3
//! mail transactions), generic over the stream so that TCP, TLS and an
//! in-memory pipe share one code path.
//!
//! States: `Fresh` (no EHLO/HELO yet, also right after STARTTLS) →
//! `Greeted` → `Mail { txn }` → `Rcpt { txn }` → DATA (read in one go) or
//! `Chunking` (between BDAT chunks, RFC 3030) → back to `Greeted`.
//! Whether a command is allowed now is decided in one place,
//! [`Session::allowed`], before dispatch.
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

use mailstore_api::pb;
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::io::{Conn, ConnError, Line};
use crate::proto::address::{ForwardPath, PathError, ReversePath};
use crate::proto::body::{BodyDecoder, Defect, Mode};
use crate::proto::command::{
    self, Command, MAX_AUTH_LINE, MAX_COMMAND_LINE, MailParams, ParseError, RcptParams,
};
use crate::proto::sasl::{self, Credentials, SaslError};
use crate::proto::{Reply, codes};
use crate::received::Stamp;
use crate::store::{AuthOutcome, Backend, Recipient};

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

#[derive(Debug)]
struct AuthUser {
    id: u64,
    address: String,
}

/// One mail transaction (RFC 5321 §3.3).
#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<pb::Recipient>,
    /// Idempotency key for `Queue.Enqueue`, reused for its retries.
    key: String,
    /// Transaction number within the session.
    number: u32,
}

/// Message bytes held in memory, counted against the server-wide budget.
struct Spool {
    buf: Vec<u8>,
    budget: Arc<Semaphore>,
    permits: Vec<OwnedSemaphorePermit>,
    held_kib: usize,
}

impl Spool {
    fn new(budget: Arc<Semaphore>) -> Self {
        Self {
            buf: Vec::new(),
            budget,
            permits: Vec::new(),
            held_kib: 0,
        }
    }

    /// Takes permits for the buffer's size; false when the budget is spent.
    fn account(&mut self) -> bool {
        let need = self.buf.len().div_ceil(1024);
        if need <= self.held_kib {
            return true;
        }
        // Take at least 64 KiB at a time to keep the permit list short.
        let want = (need - self.held_kib).max(64);
        let Ok(n) = u32::try_from(want) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                self.permits.push(p);
                self.held_kib += want;
                true
            }
            Err(_) => false,
        }
    }

    fn clear(&mut self) {
        self.buf = Vec::new();
        self.permits.clear();
        self.held_kib = 0;
    }
}

struct Chunking {
    txn: Transaction,
    decoder: BodyDecoder,
    spool: Spool,
}

enum State {
    Fresh,
    Greeted,
    Mail(Transaction),
    Rcpt(Transaction),
    Chunking(Box<Chunking>),
}

enum Flow {
    Continue,
    Exit(Exit),
}

/// One SMTP session.
pub struct Session {
    shared: Arc<Shared>,
    kind: ListenerKind,
    peer: SocketAddr,
    sid: String,
    state: State,
    /// HELO/EHLO argument and whether it was EHLO.
    helo: Option<(String, bool)>,
    tls: Option<TlsInfo>,
    auth: Option<AuthUser>,
    errors: u32,
    transactions: u32,
    shutdown: Shutdown,
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
    async fn fatal<S: AsyncRead + AsyncWrite + Unpin>(
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
    fn decorate(&self, reply: Reply) -> Reply {
        if reply.is_error() {
            let sid = format!(" [{}]", self.sid);
            reply.with_suffix(&sid)
        } else {
            reply
        }
    }

    /// Queues a reply, counting 5xx as client errors: past the soft limit
    /// replies are delayed, at the hard limit the session ends with 421.
    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
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

    fn in_transaction(&self) -> bool {
        !matches!(self.state, State::Fresh | State::Greeted)
    }

    fn tls_offered(&self) -> bool {
        self.shared.tls.is_some() && self.tls.is_none() && self.kind != ListenerKind::Submissions
    }

    fn auth_offered(&self) -> bool {
        self.kind != ListenerKind::Mx && (self.tls.is_some() || self.shared.allow_plaintext_auth)
    }

    /// The one place that says whether a command is allowed now
    /// (RFC 5321 §4.1.4, RFC 3030 §3, RFC 3207 §4, RFC 4954 §4).
    fn allowed(&self, cmd: &Command) -> Result<(), Reply> {
        let chunking = matches!(self.state, State::Chunking(_));
        let greeted = self.helo.is_some();
        match cmd {
            Command::Rset | Command::Noop | Command::Quit => Ok(()),
            Command::Data if chunking => Err(codes::data_after_bdat()),
            Command::Bdat { .. } if chunking => Ok(()),
            _ if chunking => Err(codes::bad_sequence()),
            Command::Ehlo(_) | Command::Helo(_) | Command::Vrfy | Command::Expn | Command::Help => {
                Ok(())
            }
            Command::StartTls => {
                if !self.tls_offered() {
                    Err(codes::tls_not_available())
                } else if self.in_transaction() {
                    Err(codes::bad_sequence())
                } else {
                    Ok(())
                }
            }
            Command::Auth { .. } => {
                if self.kind == ListenerKind::Mx {
                    Err(codes::not_implemented())
                } else if !self.auth_offered() {
                    Err(codes::tls_required())
                } else if !greeted {
                    Err(codes::need_helo())
                } else if self.auth.is_some() {
                    Err(codes::already_authenticated())
                } else if self.in_transaction() {
                    Err(codes::bad_sequence())
                } else {
                    Ok(())
                }
            }
            Command::Mail { .. } => {
                if !greeted {
                    Err(codes::need_helo())
                } else if self.in_transaction() {
                    Err(codes::nested_mail())
                } else if self.kind != ListenerKind::Mx && self.auth.is_none() {
                    // RFC 6409 §4.3: submission requires authentication.
                    Err(codes::auth_required())
                } else {
                    Ok(())
                }
            }
            Command::Rcpt { .. } => match self.state {
                State::Mail(_) | State::Rcpt(_) => Ok(()),
                _ if !greeted => Err(codes::need_helo()),
                _ => Err(codes::need_mail()),
            },
            Command::Data | Command::Bdat { .. } => match self.state {
                State::Rcpt(_) => Ok(()),
                State::Mail(_) => Err(codes::need_rcpt()),
                _ if !greeted => Err(codes::need_helo()),
                _ => Err(codes::need_mail()),
            },
        }
    }

    async fn dispatch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        cmd: Command,
    ) -> Result<Flow, ConnError> {
        if let Err(reply) = self.allowed(&cmd) {
            if let Command::Bdat { size, .. } = cmd {
                // RFC 3030 §2: the chunk follows the command whatever the
                // answer; read past it before answering.
                skip(conn, size, self.shared.limits.data_timeout).await?;
            }
            return self.reply(conn, reply).await;
        }
        match cmd {
            Command::Ehlo(domain) => {
                self.state = State::Greeted;
                let reply = self.ehlo_reply(&domain);
                self.helo = Some((domain, true));
                self.reply(conn, reply).await
            }
            Command::Helo(domain) => {
                self.state = State::Greeted;
                self.helo = Some((domain, false));
                let hostname = self.shared.hostname.clone();
                self.reply(conn, Reply::new(250, None, hostname)).await
            }
            Command::Mail { from, params } => {
                let reply = self.mail(from, params).await;
                self.reply(conn, reply).await
            }
            Command::Rcpt { path, params } => {
                let reply = self.rcpt(&path, params).await;
                self.reply(conn, reply).await
            }
            Command::Data => self.data(conn).await,
            Command::Bdat { size, last } => self.bdat(conn, size, last).await,
            Command::Rset => {
                if self.helo.is_some() {
                    self.state = State::Greeted;
                }
                self.reply(conn, codes::reset_ok()).await
            }
            Command::Noop => self.reply(conn, codes::ok()).await,
            Command::Vrfy => self.reply(conn, codes::vrfy()).await,
            Command::Expn => self.reply(conn, codes::not_implemented()).await,
            Command::Help => self.reply(conn, codes::help()).await,
            Command::Quit => {
                conn.send(&codes::bye());
                conn.close().await;
                Ok(Flow::Exit(Exit::Quit))
            }
            Command::StartTls => {
                conn.send(&codes::ready_tls());
                conn.flush().await?;
                Ok(Flow::Exit(Exit::StartTls))
            }
            Command::Auth { mechanism, initial } => {
                let reply = self.auth(conn, &mechanism, initial).await?;
                self.reply(conn, reply).await
            }
        }
    }

    /// RFC 5321 §4.1.1.1 EHLO response with our extensions.
    fn ehlo_reply(&self, domain: &str) -> Reply {
        let limits = &self.shared.limits;
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            format!(
                "{} Hello {} [{}]",
                self.shared.hostname,
                domain,
                self.peer.ip()
            )
            .into(),
            "PIPELINING".into(),
            format!("SIZE {}", limits.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        if self.tls_offered() {
            lines.push("STARTTLS".into());
        }
        // RFC 4954 §4 / ATTACKS.md §11–12: never advertised before TLS
        // (unless explicitly allowed for testing), never on MX.
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::multi(250, None, lines)
    }

    async fn mail(&mut self, from: ReversePath, params: MailParams) -> Reply {
        if params
            .size
            .is_some_and(|s| s > self.shared.limits.max_message_size)
        {
            // RFC 1870 §6.1.
            return codes::too_big();
        }
        if let Some(user) = &self.auth {
            // Submission: the envelope sender must be one of the user's
            // addresses (CheckSender knows aliases).
            let ReversePath::Mailbox(m) = &from else {
                return codes::sender_not_owned();
            };
            match self
                .shared
                .backend
                .check_sender(user.id, &m.address(), &self.sid)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(user = %user.address, sender = %m.address(), "sender not owned");
                    return codes::sender_not_owned();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CheckSender failed");
                    return codes::store_unavailable();
                }
            }
        }
        self.transactions += 1;
        let key = format!(
            "smtp-in:{}:{}:{:016x}",
            self.sid,
            self.transactions,
            rand::random::<u64>()
        );
        tracing::info!(from = %display_reverse(&from), "MAIL");
        self.state = State::Mail(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            key,
            number: self.transactions,
        });
        codes::sender_ok()
    }

    async fn rcpt(&mut self, path: &str, params: RcptParams) -> Reply {
        let (State::Mail(txn) | State::Rcpt(txn)) = &self.state else {
            return codes::need_mail();
        };
        let address = match command::parse_rcpt_path(path, txn.params.smtputf8) {
            Ok(ForwardPath::Postmaster) => {
                format!("postmaster@{}", self.shared.hostname.to_lowercase())
            }
            Ok(ForwardPath::Mailbox(m)) if m.literal => {
                return reject_rcpt("literal", codes::relay_denied());
            }
            Ok(ForwardPath::Mailbox(m)) => m.address(),
            Err(PathError::RelayTrick) => return reject_rcpt("relay_trick", codes::relay_denied()),
            Err(PathError::NeedsUtf8) => {
                return reject_rcpt("needs_smtputf8", codes::need_smtputf8());
            }
            Err(PathError::Syntax | PathError::TooLong) => {
                return reject_rcpt("syntax", codes::bad_address());
            }
        };
        if txn.rcpts.len() >= self.shared.limits.max_recipients {
            return reject_rcpt("too_many", codes::too_many_recipients());
        }
        let status = match self
            .shared
            .backend
            .lookup_recipient(&address, &self.sid)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "LookupRecipient failed");
                return reject_rcpt("store", codes::store_unavailable());
            }
        };
        match status {
            Recipient::Local => {}
            Recipient::NotLocal if self.auth.is_some() => {}
            Recipient::NotLocal => {
                tracing::info!(rcpt = %address, "relay denied");
                return reject_rcpt("relay", codes::relay_denied());
            }
            Recipient::Unknown => return reject_rcpt("unknown_user", codes::unknown_user()),
        }
        let state = std::mem::replace(&mut self.state, State::Greeted);
        let (State::Mail(mut txn) | State::Rcpt(mut txn)) = state else {
            return codes::need_mail();
        };
        // A repeated recipient is accepted once (one delivery).
        if !txn.rcpts.iter().any(|r| r.address == address) {
            txn.rcpts.push(pb::Recipient {
                address,
                orcpt: params.orcpt.unwrap_or_default(),
                notify: params.notify,
            });
        }
        self.state = State::Rcpt(txn);
        codes::recipient_ok()
    }

    /// RFC 5321 §4.1.1.4 DATA: 354, then content up to `<CRLF>.<CRLF>`.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        let State::Rcpt(txn) = std::mem::replace(&mut self.state, State::Greeted) else {
            return self.reply(conn, codes::need_rcpt()).await;
        };
        conn.send(&codes::start_data());
        let mut decoder =
            BodyDecoder::new(Mode::Data, message_limit(&self.shared.limits, &txn.params));
        let mut spool = Spool::new(self.shared.spool.clone());
        let timeout = self.shared.limits.data_timeout;
        let shutdown = self.shutdown.clone();
        loop {
            // A shutdown mid-DATA ends the transaction with 421 (RFC 5321
            // §3.8): nothing of the message is kept, the sender retries.
            let buf = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    conn.send(&self.decorate(codes::shutting_down()));
                    conn.close().await;
                    return Ok(Flow::Exit(Exit::Closed));
                }
                buf = conn.peek_some(timeout) => buf?,
            };
            let (n, end) = decoder.feed(buf, &mut spool.buf);
            conn.consume(n);
            account(&mut decoder, &mut spool);
            if end {
                break;
            }
        }
        let reply = self.finish(txn, &decoder, spool, "DATA").await;
        self.reply(conn, reply).await
    }

    /// RFC 3030 BDAT: exactly `size` octets follow the command line.
    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        size: u64,
        last: bool,
    ) -> Result<Flow, ConnError> {
        let mut chunking = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Chunking(c) => c,
            State::Rcpt(txn) => Box::new(Chunking {
                decoder: BodyDecoder::new(
                    Mode::Bdat,
                    message_limit(&self.shared.limits, &txn.params),
                ),
                txn,
                spool: Spool::new(self.shared.spool.clone()),
            }),
            other => {
                self.state = other;
                skip(conn, size, self.shared.limits.data_timeout).await?;
                return self.reply(conn, codes::need_rcpt()).await;
            }
        };
        if size > self.shared.limits.max_message_size {
            // A chunk larger than any message we accept: reading (and
            // discarding) it could take gigabytes, and without reading it the
            // stream cannot be resynchronised. Refuse and close.
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => "too_big")
                .increment(1);
            conn.send(&self.decorate(codes::too_big()));
            conn.close().await;
            return Ok(Flow::Exit(Exit::Closed));
        }
        let limit = message_limit(&self.shared.limits, &chunking.txn.params);
        let Chunking { decoder, spool, .. } = &mut *chunking;
        if decoder.size().saturating_add(size) > limit {
            decoder.fail(Defect::TooBig);
            spool.clear();
        }
        let timeout = self.shared.limits.data_timeout;
        let mut remaining = size;
        while remaining > 0 {
            let buf = conn.peek_some(timeout).await?;
            let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            if decoder.defect().is_none() {
                decoder.feed(&buf[..take], &mut spool.buf);
            }
            conn.consume(take);
            remaining -= take as u64;
            account(decoder, spool);
        }
        if let Some(defect) = decoder.defect() {
            // RFC 3030 §2: an error reply to a chunk fails the transaction.
            let reply = defect_reply(defect);
            return self.reply(conn, reply).await;
        }
        if !last {
            self.state = State::Chunking(chunking);
            return self
                .reply(
                    conn,
                    Reply::new(250, Some("2.0.0"), format!("{size} octets received")),
                )
                .await;
        }
        let Chunking {
            txn,
            mut decoder,
            spool,
        } = *chunking;
        decoder.finish();
        let reply = self.finish(txn, &decoder, spool, "BDAT").await;
        self.reply(conn, reply).await
    }

    /// End of content: refuse by policy, or enqueue and answer only after
    /// the store has committed (RFC 5321 §6.1: once 250 is sent, the message
    /// is our responsibility).
    async fn finish(
        &mut self,
        txn: Transaction,
        decoder: &BodyDecoder,
        spool: Spool,
        how: &'static str,
    ) -> Reply {
        if let Some(defect) = decoder.defect() {
            let reason = defect_reason(defect);
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => reason).increment(1);
            tracing::info!(reason, size = decoder.size(), how, "message refused");
            return defect_reply(defect);
        }
        let date = chrono::Utc::now().to_rfc2822();
        let id = format!("{}.{}", self.sid, txn.number);
        let single = (txn.rcpts.len() == 1).then(|| txn.rcpts[0].address.as_str());
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let stamp = Stamp {
            helo: &helo,
            ip: self.peer.ip(),
            by: &self.shared.hostname,
            esmtp,
            utf8: txn.params.smtputf8,
            tls: self
                .tls
                .as_ref()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            authenticated: self.auth.is_some(),
            id: &id,
            for_rcpt: single,
            date: &date,
        };
        let received = stamp.render();
        let size = (received.len() + spool.buf.len()) as u64;
        let header = pb::EnqueueHeader {
            kind: pb::QueueKind::Inbound.into(),
            idempotency_key: txn.key.clone(),
            mail_from: match &txn.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.address(),
            },
            recipients: txn.rcpts.clone(),
            envid: txn.params.envid.clone().unwrap_or_default(),
            ret: txn.params.ret.clone().unwrap_or_default(),
            body_type: txn
                .params
                .body
                .map(|b| b.as_str().to_string())
                .unwrap_or_default(),
            smtputf8: txn.params.smtputf8,
            client_ip: self.peer.ip().to_string(),
            helo,
            authenticated_user: self
                .auth
                .as_ref()
                .map(|a| a.address.clone())
                .unwrap_or_default(),
            session_id: self.sid.clone(),
            size,
            ..Default::default()
        };
        match self
            .shared
            .backend
            .enqueue(header, &[received.as_bytes(), &spool.buf], &self.sid)
            .await
        {
            Ok(resp) => {
                metrics::counter!("smtp_in_messages_accepted_total", "listener" => self.kind.name()).increment(1);
                metrics::counter!("smtp_in_message_bytes_total").increment(size);
                tracing::info!(
                    job_id = resp.job_id,
                    size,
                    rcpts = txn.rcpts.len(),
                    duplicate = resp.duplicate,
                    how,
                    "queued"
                );
                Reply::new(250, Some("2.0.0"), format!("Ok: queued as {}", resp.job_id))
            }
            Err(e) => {
                metrics::counter!("smtp_in_messages_rejected_total", "reason" => "store")
                    .increment(1);
                tracing::warn!(error = %e, "Enqueue failed");
                codes::store_unavailable()
            }
        }
    }

    /// RFC 4954 AUTH PLAIN / LOGIN; the store checks the credentials.
    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: &str,
        initial: Option<String>,
    ) -> Result<Reply, ConnError> {
        let creds = match mechanism {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => match self.challenge(conn, "").await? {
                        Ok(r) => r,
                        Err(reply) => return Ok(reply),
                    },
                };
                sasl::decode_plain(&response)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => Ok(r),
                    // base64("Username:")
                    None => self.challenge(conn, "VXNlcm5hbWU6").await?,
                };
                let user = match user {
                    Ok(u) => u,
                    Err(reply) => return Ok(reply),
                };
                match sasl::decode_text(&user) {
                    Err(e) => Err(e),
                    // base64("Password:")
                    Ok(username) => match self.challenge(conn, "UGFzc3dvcmQ6").await? {
                        Err(reply) => return Ok(reply),
                        Ok(p) => {
                            sasl::decode_text(&p).map(|password| Credentials { username, password })
                        }
                    },
                }
            }
            _ => return Ok(codes::unknown_mechanism()),
        };
        let creds = match creds {
            Ok(c) => c,
            Err(SaslError::Cancelled) => return Ok(codes::auth_cancelled()),
            Err(SaslError::AuthzMismatch) => {
                metrics::counter!("smtp_in_auth_total", "result" => "authz_mismatch").increment(1);
                return Ok(codes::auth_failed());
            }
            Err(SaslError::Decode | SaslError::Malformed) => return Ok(codes::bad_base64()),
        };
        let ip = self.peer.ip().to_string();
        match self
            .shared
            .backend
            .authenticate(&creds.username, &creds.password, &ip, &self.sid)
            .await
        {
            Ok(AuthOutcome::Ok { user_id, address }) => {
                metrics::counter!("smtp_in_auth_total", "result" => "ok").increment(1);
                tracing::info!(user = %address, "authenticated");
                self.auth = Some(AuthUser {
                    id: user_id,
                    address,
                });
                Ok(codes::auth_ok())
            }
            Ok(AuthOutcome::Failed) => {
                metrics::counter!("smtp_in_auth_total", "result" => "failed").increment(1);
                tracing::info!(user = %creds.username, "authentication failed");
                Ok(codes::auth_failed())
            }
            Ok(AuthOutcome::Throttled) => {
                metrics::counter!("smtp_in_auth_total", "result" => "throttled").increment(1);
                Ok(codes::auth_throttled())
            }
            Err(e) => {
                tracing::warn!(error = %e, "Authenticate failed");
                Ok(codes::auth_temp_fail())
            }
        }
    }

    /// Sends a 334 challenge and reads the response line (RFC 4954 §4).
    async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        text: &'static str,
    ) -> Result<Result<String, Reply>, ConnError> {
        conn.send(&Reply::new(334, None, text));
        match conn
            .read_line(MAX_AUTH_LINE, self.shared.limits.command_timeout)
            .await?
        {
            Line::Ok(bytes) => Ok(String::from_utf8(bytes).map_err(|_| codes::bad_base64())),
            // ATTACKS.md §18: an endless response is discarded (bounded) and
            // answered like any undecodable one.
            Line::TooLong | Line::BareLf => Ok(Err(codes::bad_base64())),
        }
    }
}

/// The size a message may reach: the server maximum, or less when the
/// client declared a SIZE (RFC 1870 §6: a server may refuse a message larger
/// than declared). The declaration is an estimate, so it gets 10% + 64 KiB
/// of slack.
fn message_limit(limits: &Limits, params: &MailParams) -> u64 {
    let max = limits.max_message_size;
    params.size.map_or(max, |declared| {
        declared
            .saturating_add(declared / 10)
            .saturating_add(64 * 1024)
            .min(max)
    })
}

/// Reads and drops `size` octets (a BDAT chunk we refuse).
async fn skip<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    size: u64,
    timeout: Duration,
) -> Result<(), ConnError> {
    let mut remaining = size;
    while remaining > 0 {
        let buf = conn.peek_some(timeout).await?;
        let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        conn.consume(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Charges the spool against the budget; drops collected bytes once the
/// message is known to be refused.
fn account(decoder: &mut BodyDecoder, spool: &mut Spool) {
    if decoder.defect().is_none() && !spool.account() {
        decoder.fail(Defect::Storage);
    }
    if decoder.defect().is_some() && !spool.buf.is_empty() {
        spool.clear();
    }
}

fn reject_rcpt(reason: &'static str, reply: Reply) -> Reply {
    metrics::counter!("smtp_in_recipients_rejected_total", "reason" => reason).increment(1);
    reply
}

fn defect_reason(defect: Defect) -> &'static str {
    match defect {
        Defect::BareLineEnding => "bare_line_ending",
        Defect::TooBig => "too_big",
        Defect::LineTooLong => "line_too_long",
        Defect::Storage => "spool_full",
    }
}

fn defect_reply(defect: Defect) -> Reply {
    match defect {
        Defect::BareLineEnding => codes::bare_line_ending(),
        Defect::TooBig => codes::too_big(),
        Defect::LineTooLong => codes::data_line_too_long(),
        Defect::Storage => codes::insufficient_storage(),
    }
}

fn parse_error_reply(e: ParseError) -> Reply {
    match e {
        ParseError::Unknown => codes::unknown_command(),
        ParseError::Syntax => codes::syntax_error(),
        ParseError::Path(PathError::NeedsUtf8) => codes::need_smtputf8(),
        ParseError::Path(PathError::RelayTrick) => codes::relay_denied(),
        ParseError::Path(PathError::Syntax | PathError::TooLong) => codes::bad_address(),
        ParseError::UnknownParam => codes::unknown_param(),
        ParseError::BadParamValue => codes::bad_param_value(),
        ParseError::BodyType => codes::bad_body_type(),
        ParseError::TooBig => codes::too_big(),
    }
}

fn display_reverse(p: &ReversePath) -> String {
    match p {
        ReversePath::Null => "<>".into(),
        ReversePath::Mailbox(m) => m.address(),
    }
}
