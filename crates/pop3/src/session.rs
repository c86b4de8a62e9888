//! One POP3 session: the RFC 1939 §3 state machine
//! AUTHORIZATION → TRANSACTION → UPDATE, generic over the byte stream (plain
//! TCP, TLS, or an in-memory `tokio::io::duplex` in tests).
//!
//! - Authentication goes to the store (`Accounts.Authenticate`, protocol
//!   POP3). A wrong password and an unknown user get the same bytes after
//!   the same delay; `USER` never says whether the user exists.
//! - The maildrop is the user's INBOX. It is locked exclusively for the
//!   whole TRANSACTION state through the store's expiring named locks
//!   (`pop3:<user_id>`, RFC 1939 §8), so every pop3 replica sees the lock;
//!   the lock is refreshed while the session lives and expires by itself if
//!   this process dies.
//! - `DELE` only marks. Deletion happens in UPDATE, after `QUIT` (RFC 1939
//!   §6): `\Deleted` is added to exactly the marked UIDs, then those UIDs
//!   (and no others) are expunged. A dropped connection deletes nothing.
//! - Sizes are of the CRLF form (see [`crate::body`]): computed by streaming
//!   the message once through the counting encoder when a size is first
//!   needed, cached for the session and process-wide by the message's blob
//!   id (a content hash, so the cached value can never be stale).
//!
//! This module holds the session, its states and the read–dispatch–reply
//! loop; the command handlers live in `crate::cmd`, one module per family.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mailstore_api::StoreClient;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use crate::lock::{LocalLocks, LockGuard};
use crate::proto::{
    LineDecoder, MAX_COMMAND_LINE, MAX_SASL_LINE, ParseError, Reply, RespCode, parse_command,
};
use crate::sizes::BlobKey;
pub use crate::sizes::SizeCache;

/// Deadline for unary store calls.
const STORE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes a client may send before it authenticates (issue #13); then
/// `-ERR` and close. Lines are short anyway (255 octets, RFC 2449 §4).
pub const MAX_PREAUTH_BYTES: u64 = 64 * 1024;
/// Replies are flushed once this much is buffered, even mid-pipeline.
pub(crate) const FLUSH_AT: usize = 64 * 1024;

/// Session behaviour, derived from the service configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The connection can be upgraded with STLS (a TLS acceptor exists).
    pub stls_available: bool,
    /// Allow USER/PASS and AUTH without TLS, for loopback peers only
    /// (127.0.0.0/8, ::1); other peers still need STLS.
    pub allow_plaintext_auth: bool,
    /// Delay before answering a failed authentication.
    pub auth_failure_delay: Duration,
    /// RFC 1939 §3 inactivity autologout timer (also bounds each write).
    pub command_timeout: Duration,
    /// Client errors tolerated before the connection is closed.
    pub max_errors: u32,
    /// Time-to-live of the maildrop lock; it is refreshed every third of it.
    pub lock_ttl: Duration,
    /// RFC 2449 §6.5 LOGIN-DELAY in seconds, enforced through a store lock.
    pub login_delay: Option<u32>,
    /// RFC 2449 §6.7 EXPIRE value to announce ("NEVER" or days).
    pub expire: Option<String>,
    /// At most this many (oldest) messages of INBOX form the maildrop.
    pub max_messages: usize,
}

/// What every session of one server shares.
#[derive(Debug)]
pub struct Shared {
    /// Behaviour.
    pub config: SessionConfig,
    /// Store clients (cheap to clone).
    pub store: StoreClient,
    /// CRLF sizes by blob id.
    pub sizes: SizeCache,
    /// Maildrop locks held by this process's sessions.
    pub locks: LocalLocks,
}

impl Shared {
    /// Bundles configuration and store.
    #[must_use]
    pub fn new(config: SessionConfig, store: StoreClient) -> Self {
        Self {
            config,
            store,
            sizes: SizeCache::default(),
            locks: LocalLocks::default(),
        }
    }
}

/// Fatal session errors: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing the client failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not read our output in time.
    #[error("write timed out")]
    WriteTimeout,
    /// The store failed in the middle of a message (the client must not
    /// mistake a truncated message for a whole one, so we close).
    #[error("store failed mid-message: {0}")]
    Store(#[from] tonic::Status),
}

/// How [`Session::serve`] ended.
#[derive(Debug)]
pub enum Outcome<S> {
    /// The session is over; the stream may be dropped.
    Closed,
    /// The client sent STLS and got `+OK`: the caller runs the TLS handshake
    /// on this stream and calls [`Session::serve`] again on the TLS stream.
    /// Bytes the client pipelined after STLS have been discarded.
    StartTls(S),
}

pub(crate) enum Flow {
    Continue,
    Close,
    StartTls,
    /// Next line is a SASL response (RFC 5034 §4).
    AwaitSasl,
}

/// One message of the maildrop.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) uid: u32,
    pub(crate) raw_size: u64,
    pub(crate) blob: BlobKey,
    pub(crate) size: Option<u64>,
    pub(crate) deleted: bool,
}

/// The maildrop of the TRANSACTION state.
#[derive(Debug)]
pub(crate) struct Maildrop {
    pub(crate) mailbox_id: u64,
    pub(crate) uidvalidity: u32,
    pub(crate) msgs: Vec<Msg>,
    pub(crate) lock: LockGuard,
}

/// RFC 1939 §3 session states, each with the data valid in it.
#[derive(Debug)]
pub(crate) enum State {
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Maildrop>),
    /// Entered by QUIT from TRANSACTION; the session ends right after.
    Update,
}

/// One client session.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) sid: String,
    sid_meta: Option<MetadataValue<Ascii>>,
    pub(crate) peer: IpAddr,
    pub(crate) tls: bool,
    errors: u32,
    /// Bytes received in AUTHORIZATION state (across STLS).
    preauth_bytes: u64,
    pub(crate) state: State,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A new random session id (64 bits, hex): the listener's connection id.
#[must_use]
pub fn new_session_id() -> String {
    service_kit::new_connection_id()
}

impl Session {
    /// A session in AUTHORIZATION state. `tls`: the stream is already TLS
    /// (port 995).
    #[must_use]
    pub fn new(shared: Arc<Shared>, sid: String, peer: IpAddr, tls: bool) -> Self {
        let sid_meta = MetadataValue::try_from(sid.as_str()).ok();
        Self {
            shared,
            sid,
            sid_meta,
            peer,
            tls,
            errors: 0,
            preauth_bytes: 0,
            state: State::Authorization { user: None },
        }
    }

    /// The session id, as shown in the greeting and in system errors.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.sid
    }

    /// Marks the session as running over TLS (after the STLS handshake).
    /// RFC 2595 §4: the client must forget what it knew; we have nothing to
    /// forget in AUTHORIZATION besides a pending USER, which is cleared.
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.state = State::Authorization { user: None };
    }

    pub(crate) fn cfg(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// Runs the session on `io` until it ends or the client asks for STLS.
    /// `greet`: send the greeting first (false when resuming after STLS).
    /// When the session ends, a held maildrop lock is released and nothing
    /// is deleted unless QUIT went through UPDATE.
    ///
    /// # Errors
    /// Fatal I/O, timeouts, or a store failure in the middle of a message.
    pub async fn serve<S>(
        &mut self,
        mut io: S,
        greet: bool,
        shutdown: &CancellationToken,
    ) -> Result<Outcome<S>, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.serve_inner(&mut io, greet, shutdown).await;
        if let Ok(Flow::StartTls) = result {
            return Ok(Outcome::StartTls(io));
        }
        // Issue #16: the lock goes first, before the client sees the
        // connection close, however the session ended.
        self.abandon().await;
        if result.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
        }
        result.map(|_| Outcome::Closed)
    }

    /// Ends the session without UPDATE: release the lock, delete nothing.
    async fn abandon(&mut self) {
        if let State::Transaction(drop) = std::mem::replace(&mut self.state, State::Update) {
            tracing::debug!("session ended without QUIT: nothing deleted");
            drop.lock.release().await;
        }
    }

    async fn serve_inner<S>(
        &mut self,
        io: &mut S,
        greet: bool,
        shutdown: &CancellationToken,
    ) -> Result<Flow, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut rd = BytesMut::with_capacity(1024);
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut dec = LineDecoder::new();
        let mut awaiting_sasl = false;
        if greet {
            // No <timestamp> in the greeting: APOP is not offered (RFC 1939 §7).
            Reply::ok(format!("Epistole POP3 server ready (session {})", self.sid))
                .encode(&mut out);
        }
        loop {
            let max = if awaiting_sasl {
                MAX_SASL_LINE
            } else {
                MAX_COMMAND_LINE
            };
            let line = match dec.next_line(&mut rd, max) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.flush(io, &mut out).await?;
                    rd.reserve(4096);
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            Reply::err_code(RespCode::SysTemp, "Server shutting down, nothing deleted").encode(&mut out);
                            self.flush(io, &mut out).await?;
                            return Ok(Flow::Close);
                        }
                        r = tokio::time::timeout(self.cfg().command_timeout, io.read_buf(&mut rd)) => match r {
                            Err(_) => {
                                // RFC 1939 §3: autologout; no UPDATE state.
                                Reply::err("Autologout timer expired, nothing deleted").encode(&mut out);
                                self.flush(io, &mut out).await?;
                                return Ok(Flow::Close);
                            }
                            Ok(Ok(0)) => return Ok(Flow::Close),
                            Ok(Ok(n)) => {
                                if matches!(self.state, State::Authorization { .. }) {
                                    self.preauth_bytes = self.preauth_bytes.saturating_add(n as u64);
                                    if self.preauth_bytes > MAX_PREAUTH_BYTES {
                                        Reply::err("Too much input before authentication").encode(&mut out);
                                        self.flush(io, &mut out).await?;
                                        return Ok(Flow::Close);
                                    }
                                }
                                continue;
                            }
                            Ok(Err(e)) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => {
                    awaiting_sasl = false;
                    if self.client_error(&mut out, Reply::err(e.to_string())) {
                        self.flush(io, &mut out).await?;
                        return Ok(Flow::Close);
                    }
                    continue;
                }
            };
            let flow = if awaiting_sasl {
                awaiting_sasl = false;
                self.sasl_response(&line, &mut out).await
            } else {
                match parse_command(&line) {
                    Ok(cmd) => {
                        tracing::debug!(command = cmd.name(), "command");
                        self.dispatch(cmd, io, &mut out).await?
                    }
                    Err(e) => {
                        let reply = match e {
                            ParseError::Unknown => Reply::err("Unknown command"),
                            other => Reply::err(other.to_string()),
                        };
                        if self.client_error(&mut out, reply) {
                            Flow::Close
                        } else {
                            Flow::Continue
                        }
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::AwaitSasl => awaiting_sasl = true,
                Flow::Close => {
                    self.flush(io, &mut out).await?;
                    return Ok(Flow::Close);
                }
                Flow::StartTls => {
                    self.flush(io, &mut out).await?;
                    // RFC 2595 §4 / threat model T8: anything the client sent
                    // after STLS in plaintext is discarded, never answered
                    // inside TLS.
                    rd.clear();
                    return Ok(Flow::StartTls);
                }
            }
            if out.len() >= FLUSH_AT {
                self.flush(io, &mut out).await?;
            }
            if let State::Transaction(drop) = &self.state
                && drop.lock.is_lost()
            {
                Reply::err_code(RespCode::SysTemp, "Maildrop lock lost, nothing deleted")
                    .encode(&mut out);
                self.flush(io, &mut out).await?;
                return Ok(Flow::Close);
            }
        }
    }

    pub(crate) async fn flush<S: AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if out.is_empty() {
            return Ok(());
        }
        let write = async {
            io.write_all(out).await?;
            io.flush().await
        };
        match tokio::time::timeout(self.cfg().command_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::WriteTimeout),
        }
        out.clear();
        Ok(())
    }

    /// Queues a reply to a client mistake and counts it. Returns true when
    /// the error budget is spent and the connection must close.
    pub(crate) fn client_error(&mut self, out: &mut Vec<u8>, reply: Reply) -> bool {
        reply.encode(out);
        self.errors += 1;
        if self.errors >= self.cfg().max_errors {
            Reply::err("Too many errors, closing connection").encode(out);
            return true;
        }
        false
    }

    /// Queues a reply; negative ones count as client errors.
    pub(crate) fn reply(&mut self, out: &mut Vec<u8>, reply: Reply) -> Flow {
        if !reply.is_err() {
            reply.encode(out);
            return Flow::Continue;
        }
        if self.client_error(out, reply) {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    pub(crate) fn ok(out: &mut Vec<u8>, reply: &Reply) -> Flow {
        reply.encode(out);
        Flow::Continue
    }

    /// A store request carrying the session id and a deadline.
    pub(crate) fn req<T>(&self, msg: T, timeout: bool) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(v) = &self.sid_meta {
            req.metadata_mut()
                .insert(mailstore_api::SESSION_ID_HEADER, v.clone());
        }
        if timeout {
            req.set_timeout(STORE_TIMEOUT);
        }
        req
    }

    pub(crate) fn sys_temp(&self) -> Reply {
        Reply::err_code(
            RespCode::SysTemp,
            format!(
                "Temporary server problem, try again later (session {})",
                self.sid
            ),
        )
    }

    /// Passwords are taken over TLS, or without it only from a loopback
    /// peer when `--allow-plaintext-auth` is set (RFC 2595 §2.1).
    pub(crate) fn auth_allowed(&self) -> bool {
        self.tls || (self.cfg().allow_plaintext_auth && self.peer.to_canonical().is_loopback())
    }
}
