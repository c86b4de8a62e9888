//! The IMAP session (RFC 9051 §3): Not Authenticated → Authenticated ⇄
//! Selected → Logout, generic over the byte stream so plain TCP, TLS and
//! in-memory pipes share one code path.
//!
//! This module holds the session, its states and the read loop (framing,
//! limits, timeouts, error counting). Which command is allowed in which
//! state, and which handler runs it, is decided in `crate::cmd`; the
//! selected mailbox's view and its resynchronisation live in
//! [`crate::selected`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstore_api::StoreClient;
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::framing::{Frame, Limits};
use crate::io::Io;
use crate::notify::NotifyState;
use crate::parser::{self, ParseError};
use crate::response::{self, Code, Status};
use crate::store::Store;
use crate::watch_hub::WatchHub;
use crate::{mailbox_name, mutf7};

pub use crate::selected::{Selected, Watch};

/// Default [`SessionConfig::max_list_results`].
pub const MAX_LIST_RESULTS: usize = 10_000;

/// Default [`SessionConfig::max_preauth_bytes`].
pub const MAX_PREAUTH_BYTES: u64 = 64 * 1024;

/// Over-long pre-authentication lines or literals tolerated (each answered
/// `BAD` / `NO [TOOBIG]`) before the connection is closed.
const MAX_PREAUTH_OVERSIZED: u32 = 1;

/// What waiting for more client input gave.
pub(crate) enum Input {
    /// Bytes arrived.
    Data,
    /// End of stream.
    Eof,
    /// Nothing within the time-out: autologout.
    Idle,
    /// More bytes before authentication than allowed.
    OverBudget,
    /// The server is shutting down.
    Shutdown,
    /// NOTIFY (RFC 5465): changes to report between commands.
    Notify,
}

/// Default of [`SessionConfig::notify_max_pending`].
pub const NOTIFY_MAX_PENDING: usize = 10_000;

/// Session settings (from the service [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// LOGIN / AUTHENTICATE without TLS, for loopback peers only.
    pub allow_plaintext_auth: bool,
    pub auth_failure_delay: Duration,
    /// Failed logins on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Inactivity timeout once authenticated (RFC 9051 §5.4: ≥ 30 minutes).
    pub idle_timeout: Duration,
    /// Inactivity timeout before authentication; also bounds the wait for
    /// an AUTHENTICATE continuation line.
    pub preauth_timeout: Duration,
    /// Bytes a client may send before it authenticates; beyond, `BYE`.
    pub max_preauth_bytes: u64,
    /// Client errors (BAD) tolerated before the connection is closed.
    pub max_errors: u32,
    /// Commands per second sustained; bursts up to twice this.
    pub commands_per_sec: u32,
    /// Concurrent sessions of one user on this process.
    pub max_sessions_per_user: u32,
    /// Most mailboxes one LIST or LSUB answers; beyond, `NO [LIMIT]`.
    pub max_list_results: usize,
    pub limits: Limits,
    /// Users (addresses) allowed RFC 9208 SETQUOTA, and GETQUOTA of any
    /// user's root (named by its address).
    pub quota_admins: Vec<String>,
    /// NOTIFY (RFC 5465 §5.8): store events a session may have pending
    /// before it gives up with `[NOTIFICATIONOVERFLOW]`.
    pub notify_max_pending: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            tls_available: false,
            allow_plaintext_auth: true,
            auth_failure_delay: Duration::from_millis(0),
            max_auth_failures: 3,
            idle_timeout: Duration::from_secs(30 * 60),
            preauth_timeout: Duration::from_secs(60),
            max_preauth_bytes: MAX_PREAUTH_BYTES,
            max_errors: 20,
            commands_per_sec: 200,
            max_sessions_per_user: 50,
            max_list_results: MAX_LIST_RESULTS,
            limits: Limits::default(),
            quota_admins: Vec::new(),
            notify_max_pending: NOTIFY_MAX_PENDING,
        }
    }
}

/// Configuration and store client shared by every session of a process.
pub struct Shared {
    pub config: SessionConfig,
    pub store: StoreClient,
    /// Open sessions per user in this process.
    pub users: UserCounts,
    /// The one store change stream of this process, fanned out to the
    /// sessions with a mailbox selected.
    pub watches: WatchHub,
}

impl Shared {
    #[must_use]
    pub fn new(config: SessionConfig, store: StoreClient) -> Self {
        Self {
            config,
            watches: WatchHub::new(store.clone()),
            store,
            users: UserCounts::default(),
        }
    }
}

/// Counts authenticated sessions per user (per process: each replica
/// enforces the limit for its own connections).
#[derive(Debug, Default)]
pub struct UserCounts(Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>);

impl UserCounts {
    /// A slot for `user`, unless `max` sessions are open already.
    #[must_use]
    pub fn admit(&self, user: u64, max: u32) -> Option<UserSlot> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(user).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            counts: self.0.clone(),
            user,
        })
    }
}

/// Held while a session is authenticated as `user`.
#[derive(Debug)]
pub struct UserSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
    user: u64,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.lock()
            && let Some(n) = map.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub address: String,
}
/// RFC 9051 §3 states, with the data valid in each.
pub enum State {
    NotAuthenticated,
    Authenticated { user: User },
    Selected { user: User, mailbox: Box<Selected> },
    Logout,
}

/// Why [`Session::serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// LOGOUT, EOF, timeout, shutdown or a fatal error: close.
    Closed,
    /// STARTTLS accepted: the caller performs the handshake and calls
    /// [`Session::serve`] again on the TLS stream.
    StartTls,
}

/// Extensions the client turned on with ENABLE (RFC 5161).
#[derive(Debug, Default, Clone, Copy)]
pub struct Enabled {
    pub rev2: bool,
    pub utf8: bool,
    pub condstore: bool,
    /// RFC 7162 §3.2.3: implies `condstore`; expunges are then reported
    /// as VANISHED and every FETCH response carries the UID.
    pub qresync: bool,
}

/// One IMAP session.
pub struct Session {
    pub shared: Arc<Shared>,
    pub state: State,
    pub sid: String,
    pub peer: IpAddr,
    pub tls: bool,
    /// COMPRESS=DEFLATE is in force (RFC 4978).
    pub compressed: bool,
    pub enabled: Enabled,
    pub(crate) errors: u32,
    pub(crate) auth_failures: u32,
    /// Bytes received before authentication (all of them, across STARTTLS).
    preauth_bytes: u64,
    /// Over-long lines or literals refused before authentication.
    preauth_oversized: u32,
    pub(crate) user_slot: Option<UserSlot>,
    pub(crate) tokens: f64,
    pub(crate) last_refill: Instant,
    /// NOTIFY SET in force (RFC 5465).
    pub(crate) notify: Option<Box<NotifyState>>,
}
impl Session {
    #[must_use]
    pub fn new(shared: Arc<Shared>, sid: String, peer: IpAddr, tls: bool) -> Self {
        let tokens = f64::from(shared.config.commands_per_sec) * 2.0;
        Self {
            shared,
            state: State::NotAuthenticated,
            sid,
            peer,
            tls,
            compressed: false,
            enabled: Enabled::default(),
            errors: 0,
            auth_failures: 0,
            preauth_bytes: 0,
            preauth_oversized: 0,
            user_slot: None,
            tokens,
            last_refill: Instant::now(),
            notify: None,
        }
    }

    /// Called by the connection after a successful STARTTLS handshake.
    pub fn tls_established(&mut self) {
        self.tls = true;
    }

    pub(crate) fn cfg(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// Mailbox names and strings on the wire are UTF-8 (RFC 6855, RFC 9051).
    #[must_use]
    pub fn utf8(&self) -> bool {
        self.enabled.utf8 || self.enabled.rev2
    }

    /// LOGINDISABLED (RFC 9051 §6.2.3): no passwords without TLS, unless
    /// `--allow-plaintext-auth` is set and the peer is on loopback
    /// (127.0.0.0/8, ::1): the flag is for tests, never for the internet.
    pub(crate) fn login_disabled(&self) -> bool {
        let plaintext_ok =
            self.cfg().allow_plaintext_auth && self.peer.to_canonical().is_loopback();
        !self.tls && !plaintext_ok
    }

    /// The CAPABILITY list for the current state (RFC 9051 §7.2.2).
    #[must_use]
    pub fn capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 IMAP4rev2");
        let authed = !matches!(self.state, State::NotAuthenticated);
        if !authed {
            if !self.tls && self.cfg().tls_available {
                c.push_str(" STARTTLS");
            }
            if self.login_disabled() {
                c.push_str(" LOGINDISABLED");
            } else {
                c.push_str(" AUTH=PLAIN");
            }
        }
        c.push_str(" SASL-IR ID ENABLE IDLE LITERAL+ NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN");
        c.push_str(" LIST-EXTENDED LIST-STATUS SPECIAL-USE STATUS=SIZE CONDSTORE ESEARCH BINARY UTF8=ACCEPT MULTIAPPEND");
        // RFC 9208 §3.1, §4.1.3: both resources, SETQUOTA (for the
        // configured quota administrators).
        c.push_str(" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE QUOTASET");
        // RFC 5256 §3, RFC 5957 §2, RFC 5267 §3, RFC 5182 §2.
        c.push_str(" SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT SEARCHRES");
        // RFC 7162 §3.2, RFC 8474 §3, RFC 8970 §2.
        c.push_str(" QRESYNC OBJECTID PREVIEW");
        // RFC 5464 §1: server and mailbox annotations.
        c.push_str(" METADATA METADATA-SERVER");
        // RFC 5465 §1.
        c.push_str(" NOTIFY");
        if authed && !self.compressed {
            // RFC 4978 §3: offered after login, until it is in force.
            c.push_str(" COMPRESS=DEFLATE");
        }
        if authed {
            c.push_str(&format!(
                " APPENDLIMIT={}",
                self.cfg().limits.max_append_literal
            ));
        }
        c
    }

    /// The greeting (RFC 9051 §7.1.1), with the session id.
    #[must_use]
    pub fn greeting(&self) -> Vec<u8> {
        Status::ok(format!("Epistole IMAP ready, session {}", self.sid))
            .with(Code::Capability(self.capabilities()))
            .encode(None)
    }

    pub(crate) fn user(&self) -> Option<&User> {
        match &self.state {
            State::Authenticated { user } | State::Selected { user, .. } => Some(user),
            _ => None,
        }
    }

    pub(crate) fn user_id(&self) -> Option<u64> {
        self.user().map(|u| u.id)
    }

    /// The store client for this session's calls.
    pub(crate) fn store(&self) -> Store {
        Store::new(&self.shared.store)
    }

    pub(crate) fn selected(&mut self) -> Option<&mut Selected> {
        match &mut self.state {
            State::Selected { mailbox, .. } => Some(mailbox),
            _ => None,
        }
    }

    pub(crate) fn deselect(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Logout);
        self.state = match state {
            State::Selected { user, .. } | State::Authenticated { user } => {
                State::Authenticated { user }
            }
            other => other,
        };
    }

    /// Runs the session on `io` until it ends or asks for STARTTLS.
    /// `greet`: send the greeting first (not after STARTTLS).
    ///
    /// # Errors
    /// I/O errors of the stream (the connection is then dropped).
    pub async fn serve<S>(
        &mut self,
        io: &mut Io<S>,
        greet: bool,
        shutdown: &Shutdown,
    ) -> std::io::Result<Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if greet {
            let g = self.greeting();
            io.write(&g);
        }
        loop {
            let authed = self.user().is_some();
            let frame = io.framer.advance(&io.rbuf, &self.cfg().limits, authed);
            match frame {
                Frame::Incomplete => {
                    io.flush().await?;
                    match self.read_input(io, shutdown).await? {
                        Input::Data => {}
                        Input::Notify => Box::pin(self.notify_push(io)).await,
                        Input::Eof => return Ok(Exit::Closed),
                        other => return self.farewell(io, &other).await,
                    }
                }
                Frame::Discard(n) => {
                    io.rbuf.drain(..n.min(io.rbuf.len()));
                }
                Frame::PreauthTooLong { tag } => {
                    io.write(
                        &Status::bad("Command line too long before authentication")
                            .with(Code::ClientBug)
                            .encode(tag.as_deref()),
                    );
                    if self.preauth_oversized() {
                        return self.farewell(io, &Input::OverBudget).await;
                    }
                    if self.count_error() {
                        return self.too_many_errors(io).await;
                    }
                }
                Frame::Continue => {
                    io.write(b"+ Ready for literal data\r\n");
                    io.flush().await?;
                }
                Frame::TooLong => {
                    io.write(
                        &Status::bye("Command line too long")
                            .with(Code::ClientBug)
                            .encode(None),
                    );
                    io.flush().await?;
                    return Ok(Exit::Closed);
                }
                Frame::Reject {
                    consume,
                    tag,
                    too_big,
                    close,
                } => {
                    io.rbuf.drain(..consume.min(io.rbuf.len()));
                    let st = if too_big {
                        Status::no("Literal too large").with(Code::TooBig)
                    } else {
                        Status::bad("Too many literals")
                    };
                    io.write(&st.encode(tag.as_deref()));
                    if close {
                        io.write(&Status::bye("Non-synchronizing literal too large").encode(None));
                        io.flush().await?;
                        return Ok(Exit::Closed);
                    }
                    if !authed && self.preauth_oversized() {
                        return self.farewell(io, &Input::OverBudget).await;
                    }
                    if self.count_error() {
                        return self.too_many_errors(io).await;
                    }
                }
                Frame::Complete(n) => {
                    let bytes: Vec<u8> = io.rbuf.drain(..n).collect();
                    self.rate_limit().await;
                    match parser::parse_command(&bytes) {
                        Err(e) => {
                            self.parse_error(io, &e);
                            if self.count_error() {
                                return self.too_many_errors(io).await;
                            }
                        }
                        Ok(cmd) => {
                            if let Some(exit) = Box::pin(self.dispatch(io, cmd, shutdown)).await? {
                                return Ok(exit);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits for more input: the inactivity time-out of the state, the
    /// pre-authentication byte budget, and shutdown.
    pub(crate) async fn read_input<S>(
        &mut self,
        io: &mut Io<S>,
        shutdown: &Shutdown,
    ) -> std::io::Result<Input>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let authed = self.user().is_some();
        let timeout = if authed {
            self.cfg().idle_timeout
        } else {
            self.cfg().preauth_timeout
        };
        // Notifications only while no command is being received.
        let (queue, selected) = match &self.notify {
            Some(n) if io.rbuf.is_empty() => (
                Some(n.queue.clone()),
                n.selected.as_ref().and_then(|_| match &self.state {
                    State::Selected { mailbox, .. } => {
                        mailbox.watch.as_ref().map(|w| w.notify.clone())
                    }
                    _ => None,
                }),
            ),
            _ => (None, None),
        };
        let notified = async {
            match (&queue, &selected) {
                (Some(q), Some(s)) => tokio::select! {
                    () = q.wake.notified() => {}
                    () = s.notified() => {}
                },
                (Some(q), None) => q.wake.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => Ok(Input::Shutdown),
            () = notified => Ok(Input::Notify),
            r = tokio::time::timeout(timeout, io.fill()) => match r {
                Err(_) => Ok(Input::Idle),
                Ok(Err(e)) => Err(e),
                Ok(Ok(0)) => Ok(Input::Eof),
                Ok(Ok(n)) => {
                    if !authed {
                        self.preauth_bytes = self.preauth_bytes.saturating_add(n as u64);
                        if self.preauth_bytes > self.cfg().max_preauth_bytes {
                            return Ok(Input::OverBudget);
                        }
                    }
                    Ok(Input::Data)
                }
            }
        }
    }

    /// The untagged `BYE` (RFC 9051 §7.1.5) for an input wait that ends the
    /// session.
    pub(crate) async fn farewell<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        why: &Input,
    ) -> std::io::Result<Exit> {
        let bye = match why {
            Input::Data | Input::Eof | Input::Notify => return Ok(Exit::Closed),
            Input::Idle => Status::bye("Autologout; idle for too long"),
            Input::OverBudget => {
                Status::bye("Too much input before authentication").with(Code::Limit)
            }
            Input::Shutdown => Status::bye("Server shutting down"),
        };
        io.write(&bye.encode(None));
        io.flush().await?;
        Ok(Exit::Closed)
    }

    /// Counts an over-long line or literal before authentication; true
    /// when it is one too many.
    fn preauth_oversized(&mut self) -> bool {
        self.preauth_oversized += 1;
        self.preauth_oversized > MAX_PREAUTH_OVERSIZED
    }

    fn parse_error<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>, e: &ParseError) {
        let st = if e.bad_charset {
            Status::no("Unsupported charset").with(Code::BadCharset)
        } else {
            Status::bad(format!("Syntax error: {}", e.msg))
        };
        io.write(&st.encode(e.tag.as_deref()));
    }

    pub(crate) fn count_error(&mut self) -> bool {
        self.errors += 1;
        self.errors > self.cfg().max_errors
    }

    pub(crate) async fn too_many_errors<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) -> std::io::Result<Exit> {
        io.write(&Status::bye("Too many errors").encode(None));
        io.flush().await?;
        Ok(Exit::Closed)
    }

    /// Token bucket: a client sending commands faster than the configured
    /// rate is slowed down, not disconnected.
    async fn rate_limit(&mut self) {
        let rate = f64::from(self.cfg().commands_per_sec.max(1));
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last_refill).as_secs_f64() * rate)
            .min(rate * 2.0);
        self.last_refill = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.last_refill = Instant::now();
        }
        self.tokens -= 1.0;
    }

    /// Post-command check for a session that failed too often.
    #[must_use]
    pub fn auth_exhausted(&self) -> bool {
        self.auth_failures >= self.cfg().max_auth_failures
    }

    /// Wire name → store name (RFC 3501 §5.1.3 / RFC 9051 §5.1).
    pub(crate) fn mailbox_in(&self, raw: &[u8]) -> Result<String, Status> {
        let name = if self.utf8() {
            String::from_utf8(raw.to_vec()).ok()
        } else {
            mutf7::decode(raw)
        };
        let name = name.ok_or_else(|| Status::no("Invalid mailbox name").with(Code::Cannot))?;
        mailbox_name::normalise(&name)
            .ok_or_else(|| Status::no("Invalid mailbox name").with(Code::Cannot))
    }

    /// Store name → wire (quoted/atom/literal) bytes.
    pub(crate) fn mailbox_out(&self, out: &mut Vec<u8>, name: &str) {
        if self.utf8() {
            response::astring(out, name.as_bytes(), true);
        } else {
            response::astring(out, mutf7::encode(name).as_bytes(), false);
        }
    }
}
