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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use futures::StreamExt as _;
use mailstore_api::StoreClient;
use mailstore_api::pb;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use crate::body::BodyEncoder;
use crate::lock::{LockGuard, acquire_lock};
use crate::proto::{
    Command, LineDecoder, MAX_COMMAND_LINE, MAX_SASL_LINE, ParseError, Reply, RespCode,
    parse_command,
};

/// Deadline for unary store calls.
const STORE_TIMEOUT: Duration = Duration::from_secs(15);
/// Replies are flushed once this much is buffered, even mid-pipeline.
const FLUSH_AT: usize = 64 * 1024;
/// Concurrent body fetches when computing CRLF sizes.
const SIZE_CONCURRENCY: usize = 4;
/// Upper bound of the process-wide size cache (entries).
const SIZE_CACHE_MAX: usize = 200_000;

/// Session behaviour, derived from the service configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The connection can be upgraded with STLS (a TLS acceptor exists).
    pub stls_available: bool,
    /// Allow USER/PASS and AUTH without TLS (loopback tests only).
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

/// A blob id (hex SHA-256 of the raw message) in 32 bytes; `None` when the
/// store gave none or something unexpected (then nothing is cached).
type BlobKey = Option<[u8; 32]>;

fn blob_key(hex_id: &str) -> BlobKey {
    if hex_id.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in hex_id.as_bytes().chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// Process-wide CRLF-size cache keyed by blob id (content hash, so an
/// entry can never be stale). Bounded.
#[derive(Debug, Default)]
pub struct SizeCache {
    map: Mutex<HashMap<[u8; 32], u64>>,
}

impl SizeCache {
    fn get(&self, blob: BlobKey) -> Option<u64> {
        self.map.lock().ok()?.get(&blob?).copied()
    }

    fn put(&self, blob: BlobKey, size: u64) {
        let Some(blob) = blob else { return };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= SIZE_CACHE_MAX {
                // Crude but bounded: start over rather than track recency.
                map.clear();
            }
            map.insert(blob, size);
        }
    }
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
}

impl Shared {
    /// Bundles configuration and store.
    #[must_use]
    pub fn new(config: SessionConfig, store: StoreClient) -> Self {
        Self {
            config,
            store,
            sizes: SizeCache::default(),
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

enum Flow {
    Continue,
    Close,
    StartTls,
    /// Next line is a SASL response (RFC 5034 §4).
    AwaitSasl,
}

/// One message of the maildrop.
#[derive(Debug, Clone)]
struct Msg {
    uid: u32,
    raw_size: u64,
    blob: BlobKey,
    size: Option<u64>,
    deleted: bool,
}

/// The maildrop of the TRANSACTION state.
#[derive(Debug)]
struct Maildrop {
    mailbox_id: u64,
    uidvalidity: u32,
    msgs: Vec<Msg>,
    lock: LockGuard,
}

/// RFC 1939 §3 session states, each with the data valid in it.
#[derive(Debug)]
enum State {
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Maildrop>),
    /// Entered by QUIT from TRANSACTION; the session ends right after.
    Update,
}

/// One client session.
pub struct Session {
    shared: Arc<Shared>,
    sid: String,
    sid_meta: Option<MetadataValue<Ascii>>,
    peer: IpAddr,
    tls: bool,
    errors: u32,
    state: State,
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

/// A new random session id (64 bits, hex).
#[must_use]
pub fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
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

    fn cfg(&self) -> &SessionConfig {
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
        match result {
            Ok(Flow::StartTls) => return Ok(Outcome::StartTls(io)),
            Ok(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
            }
            Err(_) => {}
        }
        self.abandon().await;
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
                            Ok(Ok(_)) => continue,
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
                    // RFC 2595 §4 / ATTACKS.md 8: anything the client sent
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

    async fn flush<S: AsyncWrite + Unpin>(
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
    fn client_error(&mut self, out: &mut Vec<u8>, reply: Reply) -> bool {
        reply.encode(out);
        self.errors += 1;
        if self.errors >= self.cfg().max_errors {
            Reply::err("Too many errors, closing connection").encode(out);
            return true;
        }
        false
    }

    /// Queues a reply; negative ones count as client errors.
    fn reply(&mut self, out: &mut Vec<u8>, reply: Reply) -> Flow {
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

    fn ok(out: &mut Vec<u8>, reply: &Reply) -> Flow {
        reply.encode(out);
        Flow::Continue
    }

    /// A store request carrying the session id and a deadline.
    fn req<T>(&self, msg: T, timeout: bool) -> tonic::Request<T> {
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

    fn sys_temp(&self) -> Reply {
        Reply::err_code(
            RespCode::SysTemp,
            format!(
                "Temporary server problem, try again later (session {})",
                self.sid
            ),
        )
    }

    fn auth_allowed(&self) -> bool {
        self.tls || self.cfg().allow_plaintext_auth
    }

    /// "Is this command allowed now?" — answered here, once (RFC 1939 §4-6,
    /// RFC 2449 §5: CAPA in both states; RFC 2595 §4 and RFC 6856 §2:
    /// STLS and UTF8 only in AUTHORIZATION).
    fn allowed(&self, cmd: &Command) -> bool {
        use Command as C;
        match self.state {
            State::Authorization { .. } => {
                matches!(
                    cmd,
                    C::Capa
                        | C::User(_)
                        | C::Pass(_)
                        | C::Auth { .. }
                        | C::Stls
                        | C::Utf8
                        | C::Quit
                )
            }
            State::Transaction(_) => matches!(
                cmd,
                C::Capa
                    | C::Stat
                    | C::List(_)
                    | C::Retr(_)
                    | C::Dele(_)
                    | C::Noop
                    | C::Rset
                    | C::Quit
                    | C::Top { .. }
                    | C::Uidl(_)
            ),
            State::Update => false,
        }
    }

    async fn dispatch<S>(
        &mut self,
        cmd: Command,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Flow, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.allowed(&cmd) {
            return Ok(self.reply(out, Reply::err("Command not valid in this state")));
        }
        let flow = match cmd {
            Command::Capa => Self::ok(
                out,
                &Reply::multi("Capability list follows", self.capabilities()),
            ),
            Command::User(name) => self.user(name, out),
            Command::Pass(password) => self.pass(password, out).await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, out).await,
            Command::Stls => self.stls(out),
            Command::Utf8 => Self::ok(out, &Reply::ok("UTF8 enabled")),
            Command::Quit => self.quit(out).await,
            Command::Noop => Self::ok(out, &Reply::ok("")),
            Command::Stat => self.stat(out).await,
            Command::List(n) => self.list(n, out).await,
            Command::Uidl(n) => self.uidl(n, out),
            Command::Dele(n) => self.dele(n, out),
            Command::Rset => self.rset(out),
            Command::Retr(n) => return self.send_body(n, None, io, out).await,
            Command::Top { msg, lines } => return self.send_body(msg, Some(lines), io, out).await,
        };
        Ok(flow)
    }

    /// RFC 2449 §5 CAPA, reflecting the current state and transport.
    fn capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let authorization = matches!(self.state, State::Authorization { .. });
        if authorization && self.auth_allowed() {
            caps.push("USER".into());
            caps.push("SASL PLAIN".into());
        }
        if authorization && !self.tls && self.cfg().stls_available {
            caps.push("STLS".into());
        }
        if let Some(expire) = &self.cfg().expire {
            caps.push(format!("EXPIRE {expire}"));
        }
        if let Some(delay) = self.cfg().login_delay {
            caps.push(format!("LOGIN-DELAY {delay}"));
        }
        if authorization {
            caps.push("UTF8".into());
        }
        caps.push("IMPLEMENTATION Epistole".into());
        caps
    }

    fn plaintext_refused(&mut self, out: &mut Vec<u8>) -> Flow {
        // RFC 2595 §2.1 / ATTACKS.md 11: no cleartext passwords before TLS.
        self.reply(
            out,
            Reply::err_code(
                RespCode::Auth,
                "Plaintext authentication disallowed on non-secure connections, use STLS",
            ),
        )
    }

    fn user(&mut self, name: String, out: &mut Vec<u8>) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        // Never reveals whether the user exists.
        self.state = State::Authorization { user: Some(name) };
        Self::ok(out, &Reply::ok("Send PASS"))
    }

    async fn pass(&mut self, password: String, out: &mut Vec<u8>) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            _ => None,
        };
        let Some(user) = user else {
            return self.reply(out, Reply::err("Send USER first"));
        };
        self.login(user, password, out).await
    }

    async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<String>,
        out: &mut Vec<u8>,
    ) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        self.state = State::Authorization { user: None };
        match mechanism.as_deref() {
            None => Self::ok(
                out,
                &Reply::multi("SASL mechanisms follow", vec!["PLAIN".into()]),
            ),
            Some("PLAIN") => match initial {
                // RFC 5034 §4: "=" is an empty initial response.
                Some(ir) if ir == "=" => self.sasl_plain(b"", out).await,
                Some(ir) => self.sasl_plain(ir.as_bytes(), out).await,
                None => {
                    Reply::Continue(String::new()).encode(out);
                    Flow::AwaitSasl
                }
            },
            Some(_) => self.reply(out, Reply::err("Unsupported SASL mechanism")),
        }
    }

    async fn sasl_response(&mut self, line: &[u8], out: &mut Vec<u8>) -> Flow {
        if line == b"*" {
            // RFC 5034 §4: the client cancels the exchange.
            return self.reply(out, Reply::err("Authentication cancelled"));
        }
        self.sasl_plain(line, out).await
    }

    /// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64 (RFC 5034 §4).
    async fn sasl_plain(&mut self, b64: &[u8], out: &mut Vec<u8>) -> Flow {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return self.reply(out, Reply::err("Invalid base64"));
        };
        let mut parts = raw.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.reply(out, Reply::err("Invalid PLAIN response"));
        };
        let (Ok(authz), Ok(authc), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(authc),
            std::str::from_utf8(pass),
        ) else {
            return self.reply(out, Reply::err("Invalid PLAIN response"));
        };
        if authc.is_empty() {
            return self.reply(out, Reply::err("Invalid PLAIN response"));
        }
        // ATTACKS.md 18: acting as someone else is not offered.
        if !authz.is_empty() && authz != authc {
            return self.reply(
                out,
                Reply::err_code(RespCode::Auth, "Authorization identity not permitted"),
            );
        }
        self.login(authc.to_string(), pass.to_string(), out).await
    }

    async fn login(&mut self, username: String, password: String, out: &mut Vec<u8>) -> Flow {
        let req = self.req(
            pb::AuthenticateRequest {
                username,
                password,
                protocol: pb::Protocol::Pop3 as i32,
                remote_ip: self.peer.to_string(),
                session_id: self.sid.clone(),
            },
            true,
        );
        let resp = match self.shared.store.accounts.clone().authenticate(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "authenticate: store unavailable");
                metrics::counter!("pop3_logins_total", "result" => "error").increment(1);
                return Self::ok(out, &self.sys_temp());
            }
        };
        match resp.status() {
            pb::AuthStatus::Ok => {
                metrics::counter!("pop3_logins_total", "result" => "ok").increment(1);
                tracing::info!(user_id = resp.user_id, "authenticated");
                self.open_maildrop(resp.user_id, out).await
            }
            pb::AuthStatus::Throttled => {
                metrics::counter!("pop3_logins_total", "result" => "throttled").increment(1);
                tokio::time::sleep(self.cfg().auth_failure_delay).await;
                self.reply(
                    out,
                    Reply::err_code(RespCode::SysTemp, "Too many failed logins, try again later"),
                )
            }
            pb::AuthStatus::Failed | pb::AuthStatus::Unspecified => {
                metrics::counter!("pop3_logins_total", "result" => "failed").increment(1);
                tracing::info!("authentication failed");
                // Same bytes, same delay, for a wrong password and an unknown user.
                tokio::time::sleep(self.cfg().auth_failure_delay).await;
                self.reply(
                    out,
                    Reply::err_code(RespCode::Auth, "Authentication failed"),
                )
            }
        }
    }

    /// Locks and lists the maildrop; enters TRANSACTION on success.
    async fn open_maildrop(&mut self, user_id: u64, out: &mut Vec<u8>) -> Flow {
        let store = self.shared.store.clone();
        let name = format!("pop3:{user_id}");
        let ttl = self.cfg().lock_ttl;
        match acquire_lock(&store, &name, &self.sid, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                // RFC 2449 §8.1.2.
                return Self::ok(
                    out,
                    &Reply::err_code(RespCode::InUse, "Maildrop is locked by another session"),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "acquire maildrop lock");
                return Self::ok(out, &self.sys_temp());
            }
        }
        let lock = LockGuard::start(store.clone(), name, self.sid.clone(), ttl);
        if let Some(delay) = self.cfg().login_delay {
            // RFC 2449 §6.5: one login per user per LOGIN-DELAY seconds,
            // across every replica: a lock nobody releases, expiring after the delay.
            let key = format!("pop3-login-delay:{user_id}");
            match acquire_lock(
                &store,
                &key,
                &self.sid,
                Duration::from_secs(u64::from(delay)),
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lock.release().await;
                    return Self::ok(
                        out,
                        &Reply::err_code(
                            RespCode::LoginDelay,
                            "Minimum time between logins not reached",
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "login-delay lock");
                    lock.release().await;
                    return Self::ok(out, &self.sys_temp());
                }
            }
        }
        match self.list_inbox(user_id).await {
            Ok((mailbox_id, uidvalidity, msgs)) => {
                let n = msgs.len();
                self.state = State::Transaction(Box::new(Maildrop {
                    mailbox_id,
                    uidvalidity,
                    msgs,
                    lock,
                }));
                Self::ok(
                    out,
                    &Reply::ok(format!("Maildrop locked and ready, {n} messages")),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening maildrop");
                lock.release().await;
                let reply = if e.code() == tonic::Code::NotFound {
                    Reply::err_code(
                        RespCode::SysPerm,
                        format!("No maildrop (session {})", self.sid),
                    )
                } else {
                    self.sys_temp()
                };
                Self::ok(out, &reply)
            }
        }
    }

    async fn list_inbox(&self, user_id: u64) -> Result<(u64, u32, Vec<Msg>), tonic::Status> {
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let mailbox = mailboxes
            .get_mailbox(self.req(
                pb::GetMailboxRequest {
                    user_id,
                    name: "INBOX".into(),
                    claim_recent: false,
                },
                true,
            ))
            .await?
            .into_inner();
        let mut stream = mailboxes
            .fetch_meta(self.req(
                pb::FetchMetaRequest {
                    mailbox_id: mailbox.id,
                    uids: None,
                    changed_since: 0,
                    with_structure: false,
                },
                true,
            ))
            .await?
            .into_inner();
        let mut msgs = Vec::new();
        'outer: while let Some(batch) = stream.message().await? {
            for m in batch.messages {
                if msgs.len() >= self.cfg().max_messages {
                    break 'outer;
                }
                let blob = blob_key(&m.blob_id);
                // Precomputed by the store when the message arrived; older
                // rows (0) are counted once and cached.
                let size = if m.crlf_size > 0 {
                    Some(m.crlf_size)
                } else {
                    self.shared.sizes.get(blob)
                };
                msgs.push(Msg {
                    uid: m.uid,
                    raw_size: m.size,
                    blob,
                    size,
                    deleted: false,
                });
            }
        }
        // RFC 1939 §5: message numbers follow the maildrop's order; UIDs ascend.
        msgs.sort_by_key(|m| m.uid);
        Ok((mailbox.id, mailbox.uidvalidity, msgs))
    }

    fn stls(&mut self, out: &mut Vec<u8>) -> Flow {
        if self.tls {
            return self.reply(out, Reply::err("Already using TLS"));
        }
        if !self.cfg().stls_available {
            return self.reply(out, Reply::err("STLS not available"));
        }
        Self::ok(out, &Reply::ok("Begin TLS negotiation now"));
        Flow::StartTls
    }

    async fn quit(&mut self, out: &mut Vec<u8>) -> Flow {
        let drop = match std::mem::replace(&mut self.state, State::Update) {
            State::Transaction(drop) => drop,
            _ => {
                // RFC 1939 §4: QUIT in AUTHORIZATION ends without UPDATE.
                Reply::ok("Epistole POP3 server signing off").encode(out);
                return Flow::Close;
            }
        };
        // RFC 1939 §6: UPDATE state.
        let reply = self.update(drop).await;
        reply.encode(out);
        Flow::Close
    }

    async fn update(&self, drop: Box<Maildrop>) -> Reply {
        let uids: Vec<u32> = drop
            .msgs
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid)
            .collect();
        if uids.is_empty() {
            drop.lock.release().await;
            return Reply::ok("Epistole POP3 server signing off");
        }
        // Only the lock holder may delete: confirm we still hold it.
        let still_ours = !drop.lock.is_lost()
            && acquire_lock(
                &self.shared.store,
                &drop.lock.name,
                &drop.lock.owner,
                self.cfg().lock_ttl,
            )
            .await
            .unwrap_or(false);
        if !still_ours {
            drop.lock.release().await;
            return Reply::err_code(RespCode::SysTemp, "Maildrop lock lost, no messages deleted");
        }
        let set = uid_set(&uids);
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let flagged = mailboxes
            .store_flags(self.req(
                pb::StoreFlagsRequest {
                    mailbox_id: drop.mailbox_id,
                    uids: Some(set.clone()),
                    op: pb::FlagOp::Add as i32,
                    flags: vec!["\\Deleted".into()],
                    unchanged_since: 0,
                },
                true,
            ))
            .await;
        let result = match flagged {
            Ok(_) => {
                mailboxes
                    .expunge(self.req(
                        pb::ExpungeRequest {
                            mailbox_id: drop.mailbox_id,
                            // Restricted: \Deleted set by IMAP on other messages stays.
                            uids: Some(set),
                        },
                        true,
                    ))
                    .await
            }
            Err(e) => Err(e),
        };
        drop.lock.release().await;
        match result {
            Ok(r) => {
                let n = r.into_inner().expunged.len();
                metrics::counter!("pop3_deleted_total").increment(n as u64);
                Reply::ok(format!(
                    "Epistole POP3 server signing off ({n} messages deleted)"
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "update: deleting messages failed");
                // RFC 1939 §6 wording.
                Reply::err_code(RespCode::SysTemp, "Some deleted messages not removed")
            }
        }
    }

    fn maildrop(&self) -> Option<&Maildrop> {
        match &self.state {
            State::Transaction(d) => Some(d),
            _ => None,
        }
    }

    /// Index of message `n` if it exists and is not marked deleted.
    fn lookup(&self, n: u32) -> Result<usize, Reply> {
        let Some(drop) = self.maildrop() else {
            return Err(Reply::err("Command not valid in this state"));
        };
        let i = usize::try_from(n).unwrap_or(usize::MAX).wrapping_sub(1);
        match drop.msgs.get(i) {
            None => Err(Reply::err("No such message")),
            Some(m) if m.deleted => Err(Reply::err("Message already deleted")),
            Some(_) => Ok(i),
        }
    }

    /// Makes sure the CRLF sizes of the given messages are known.
    async fn ensure_sizes(&mut self, idx: &[usize]) -> Result<(), tonic::Status> {
        let (mailbox_id, todo) = {
            let Some(drop) = self.maildrop() else {
                return Ok(());
            };
            let todo: Vec<(usize, u32)> = idx
                .iter()
                .filter_map(|&i| {
                    drop.msgs
                        .get(i)
                        .filter(|m| m.size.is_none())
                        .map(|m| (i, m.uid))
                })
                .collect();
            (drop.mailbox_id, todo)
        };
        if todo.is_empty() {
            return Ok(());
        }
        let results: Vec<(usize, Result<Option<u64>, tonic::Status>)> = futures::stream::iter(todo)
            .map(|(i, uid)| {
                let req = self.req(
                    pb::FetchBodyRequest {
                        mailbox_id,
                        uid,
                        offset: 0,
                        length: 0,
                    },
                    false,
                );
                let mut mailboxes = self.shared.store.mailboxes.clone();
                async move {
                    let r = async {
                        let mut stream = match mailboxes.fetch_body(req).await {
                            Ok(s) => s.into_inner(),
                            Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
                            Err(e) => return Err(e),
                        };
                        let mut enc = BodyEncoder::counter();
                        let mut sink = Vec::new();
                        while let Some(chunk) = stream.message().await? {
                            enc.feed(&chunk.data, &mut sink);
                        }
                        enc.finish(&mut sink);
                        Ok(Some(enc.octets()))
                    }
                    .await;
                    (i, r)
                }
            })
            .buffer_unordered(SIZE_CONCURRENCY)
            .collect()
            .await;
        let State::Transaction(drop) = &mut self.state else {
            return Ok(());
        };
        for (i, r) in results {
            let Some(m) = drop.msgs.get_mut(i) else {
                continue;
            };
            match r? {
                Some(size) => {
                    m.size = Some(size);
                    self.shared.sizes.put(m.blob, size);
                }
                // Expunged meanwhile by someone else (IMAP): RETR will say so;
                // the stored size stands in.
                None => m.size = Some(m.raw_size),
            }
        }
        Ok(())
    }

    fn live_indices(&self) -> Vec<usize> {
        self.maildrop()
            .map(|d| (0..d.msgs.len()).filter(|&i| !d.msgs[i].deleted).collect())
            .unwrap_or_default()
    }

    fn size_of(&self, i: usize) -> u64 {
        self.maildrop()
            .and_then(|d| d.msgs.get(i))
            .map_or(0, |m| m.size.unwrap_or(m.raw_size))
    }

    async fn stat(&mut self, out: &mut Vec<u8>) -> Flow {
        let live = self.live_indices();
        if let Err(e) = self.ensure_sizes(&live).await {
            tracing::warn!(error = %e, "computing sizes");
            return Self::ok(out, &self.sys_temp());
        }
        let total: u64 = live.iter().map(|&i| self.size_of(i)).sum();
        Self::ok(out, &Reply::ok(format!("{} {total}", live.len())))
    }

    async fn list(&mut self, n: Option<u32>, out: &mut Vec<u8>) -> Flow {
        let idx = match n {
            Some(n) => match self.lookup(n) {
                Ok(i) => vec![i],
                Err(r) => return self.reply(out, r),
            },
            None => self.live_indices(),
        };
        if let Err(e) = self.ensure_sizes(&idx).await {
            tracing::warn!(error = %e, "computing sizes");
            return Self::ok(out, &self.sys_temp());
        }
        if let Some(n) = n {
            return Self::ok(out, &Reply::ok(format!("{n} {}", self.size_of(idx[0]))));
        }
        let total: u64 = idx.iter().map(|&i| self.size_of(i)).sum();
        let lines = idx
            .iter()
            .map(|&i| format!("{} {}", i + 1, self.size_of(i)))
            .collect();
        Self::ok(
            out,
            &Reply::multi(format!("{} messages ({total} octets)", idx.len()), lines),
        )
    }

    /// RFC 1939 §7: unique-id = `<uidvalidity>.<uid>`, stable across
    /// sessions for as long as the mailbox keeps its UIDVALIDITY.
    fn uidl(&mut self, n: Option<u32>, out: &mut Vec<u8>) -> Flow {
        let Some(drop) = self.maildrop() else {
            return self.reply(out, Reply::err("Command not valid in this state"));
        };
        let v = drop.uidvalidity;
        match n {
            Some(n) => match self.lookup(n) {
                Ok(i) => {
                    let uid = self.maildrop().map_or(0, |d| d.msgs[i].uid);
                    Self::ok(out, &Reply::ok(format!("{n} {v}.{uid}")))
                }
                Err(r) => self.reply(out, r),
            },
            None => {
                let lines = drop
                    .msgs
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !m.deleted)
                    .map(|(i, m)| format!("{} {v}.{}", i + 1, m.uid))
                    .collect();
                Self::ok(out, &Reply::multi("Unique-ID listing follows", lines))
            }
        }
    }

    fn dele(&mut self, n: u32, out: &mut Vec<u8>) -> Flow {
        let i = match self.lookup(n) {
            Ok(i) => i,
            Err(r) => return self.reply(out, r),
        };
        if let State::Transaction(drop) = &mut self.state {
            drop.msgs[i].deleted = true;
        }
        Self::ok(out, &Reply::ok(format!("Message {n} deleted")))
    }

    fn rset(&mut self, out: &mut Vec<u8>) -> Flow {
        let n = match &mut self.state {
            State::Transaction(drop) => {
                for m in &mut drop.msgs {
                    m.deleted = false;
                }
                drop.msgs.len()
            }
            _ => 0,
        };
        Self::ok(out, &Reply::ok(format!("Maildrop has {n} messages")))
    }

    /// RETR (`top` = None) and TOP: streams the body from the store.
    /// Errors before the first byte are `-ERR`; a failure after `+OK` closes
    /// the connection, so a truncated message never looks complete.
    async fn send_body<S>(
        &mut self,
        n: u32,
        top: Option<u32>,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Flow, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let i = match self.lookup(n) {
            Ok(i) => i,
            Err(r) => return Ok(self.reply(out, r)),
        };
        let (mailbox_id, uid, known) = match self.maildrop() {
            Some(d) => (d.mailbox_id, d.msgs[i].uid, d.msgs[i].size),
            None => return Ok(Flow::Continue),
        };
        let req = self.req(
            pb::FetchBodyRequest {
                mailbox_id,
                uid,
                offset: 0,
                length: 0,
            },
            false,
        );
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let first = match mailboxes.fetch_body(req).await {
            Ok(s) => {
                let mut s = s.into_inner();
                s.message().await.map(|c| (s, c))
            }
            Err(e) => Err(e),
        };
        let (mut stream, first) = match first {
            Ok(x) => x,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(self.reply(out, Reply::err("Message no longer available")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch body");
                return Ok(Self::ok(out, &self.sys_temp()));
            }
        };
        let mut enc = match top {
            None => BodyEncoder::retr(),
            Some(lines) => BodyEncoder::top(lines),
        };
        match (top, known) {
            (None, Some(size)) => Reply::ok(format!("{size} octets")).encode(out),
            _ => Reply::ok("Message follows").encode(out),
        }
        let mut chunk = first;
        while let Some(c) = chunk {
            enc.feed(&c.data, out);
            if out.len() >= FLUSH_AT {
                self.flush(io, out).await?;
            }
            if enc.is_done() {
                break; // TOP has what it needs; dropping the stream cancels the RPC.
            }
            chunk = stream.message().await?;
        }
        enc.finish(out);
        self.flush(io, out).await?;
        metrics::counter!("pop3_sent_octets_total").increment(enc.octets());
        if top.is_none() {
            let size = enc.octets();
            if known.is_some_and(|k| k != size) {
                tracing::warn!(uid, "message changed size while being sent");
            }
            if let State::Transaction(drop) = &mut self.state
                && let Some(m) = drop.msgs.get_mut(i)
            {
                m.size = Some(size);
                self.shared.sizes.put(m.blob, size);
            }
        }
        Ok(Flow::Continue)
    }
}

/// Sorted UIDs → inclusive ranges.
fn uid_set(uids: &[u32]) -> pb::UidSet {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<pb::UidRange> = Vec::new();
    for uid in sorted {
        match ranges.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(uid) => r.last = uid,
            _ => ranges.push(pb::UidRange {
                first: uid,
                last: uid,
            }),
        }
    }
    pb::UidSet { ranges }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys() {
        let hex = "00ff".repeat(16);
        let key = blob_key(&hex).expect("valid");
        assert_eq!(key[0], 0);
        assert_eq!(key[1], 0xff);
        assert_eq!(blob_key(""), None);
        assert_eq!(blob_key(&"zz".repeat(32)), None);
        assert_eq!(blob_key("abc"), None);
        let cache = SizeCache::default();
        cache.put(Some(key), 42);
        cache.put(None, 7);
        assert_eq!(cache.get(Some(key)), Some(42));
        assert_eq!(cache.get(None), None);
    }

    #[test]
    fn uid_sets_merge_runs() {
        let s = uid_set(&[5, 1, 2, 3, 7, 8, 10]);
        let r: Vec<(u32, u32)> = s.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(r, vec![(1, 3), (5, 5), (7, 8), (10, 10)]);
        assert!(uid_set(&[]).ranges.is_empty());
        let r: Vec<(u32, u32)> = uid_set(&[u32::MAX, u32::MAX - 1])
            .ranges
            .iter()
            .map(|r| (r.first, r.last))
            .collect();
        assert_eq!(r, vec![(u32::MAX - 1, u32::MAX)]);
    }
}
