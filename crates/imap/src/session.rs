//! The IMAP session state machine (RFC 9051 §3): Not Authenticated →
//! Authenticated ⇄ Selected → Logout, generic over the byte stream so
//! plain TCP, TLS and in-memory pipes share one code path.
//!
//! Which command is allowed in which state is decided in one place,
//! [`allowed`]. Handlers return a typed [`Status`] for the tagged reply and
//! write untagged data through [`Io`]. FETCH and SEARCH live in
//! [`crate::fetch`] and [`crate::search`].

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailstore_api::{Failure, StoreClient, classify, pb};
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::command::{Command, CommandKind, SeqSet, StatusItem, StoreOp};
use crate::framing::{Frame, Limits};
use crate::io::Io;
use crate::parser::{self, ParseError};
use crate::response::{self, Code, Kind, Status};
use crate::{mailbox_name, mutf7};

/// Session settings (from the service [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// LOGIN / AUTHENTICATE without TLS (loopback tests only).
    pub allow_plaintext_auth: bool,
    pub auth_failure_delay: Duration,
    /// Failed logins on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Inactivity timeout once authenticated (RFC 9051 §5.4: ≥ 30 minutes).
    pub idle_timeout: Duration,
    /// Inactivity timeout before authentication.
    pub preauth_timeout: Duration,
    /// Client errors (BAD) tolerated before the connection is closed.
    pub max_errors: u32,
    /// Commands per second sustained; bursts up to twice this.
    pub commands_per_sec: u32,
    /// Concurrent sessions of one user on this process.
    pub max_sessions_per_user: u32,
    pub limits: Limits,
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
            max_errors: 20,
            commands_per_sec: 200,
            max_sessions_per_user: 50,
            limits: Limits::default(),
        }
    }
}

/// Configuration and store client shared by every session of a process.
pub struct Shared {
    pub config: SessionConfig,
    pub store: StoreClient,
    /// Open sessions per user in this process.
    pub users: UserCounts,
}

impl Shared {
    #[must_use]
    pub fn new(config: SessionConfig, store: StoreClient) -> Self {
        Self {
            config,
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

/// The selected mailbox: this session's view of it (RFC 9051 §2.3.1.2:
/// sequence numbers are per session).
pub struct Selected {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: u32,
    /// UIDs in sequence-number order (index + 1 = sequence number).
    pub uids: Vec<u32>,
    /// Flags known to the client, parallel to `uids`.
    pub flags: Vec<Vec<String>>,
    /// UIDs at or above this are \Recent for this session.
    pub recent_floor: u32,
    /// Highest MODSEQ of the changes this session has reported.
    pub flags_mark: u64,
    /// MODSEQ up to which expunges have been reported.
    pub expunge_mark: u64,
    pub watch: Option<Watch>,
}

impl Selected {
    /// Sequence number of `uid`, if the client knows it.
    #[must_use]
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids
            .binary_search(&uid)
            .ok()
            .map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX))
    }

    /// Resolves a sequence set (or UID set with `uid`) to the UIDs of
    /// messages the client knows, ascending, without duplicates. Work is
    /// bounded by the set's size and the mailbox's (ATTACKS.md #33).
    #[must_use]
    pub fn resolve(&self, set: &SeqSet, uid: bool) -> Vec<u32> {
        let n = self.uids.len();
        if n == 0 {
            return Vec::new();
        }
        let mut idx_ranges: Vec<(usize, usize)> = Vec::with_capacity(set.0.len());
        let last_uid = self.uids[n - 1];
        for r in &set.0 {
            if uid {
                let a = r.first.unwrap_or(last_uid);
                let b = r.last.unwrap_or(last_uid);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let start = self.uids.partition_point(|&u| u < lo);
                let end = self.uids.partition_point(|&u| u <= hi);
                if start < end {
                    idx_ranges.push((start, end));
                }
            } else {
                let a = r.first.map_or(n, |v| v as usize);
                let b = r.last.map_or(n, |v| v as usize);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let hi = hi.min(n);
                if lo >= 1 && lo <= hi {
                    idx_ranges.push((lo - 1, hi));
                }
            }
        }
        idx_ranges.sort_unstable();
        let mut out = Vec::new();
        let mut next = 0usize;
        for (s, e) in idx_ranges {
            let s = s.max(next);
            if s < e {
                out.extend_from_slice(&self.uids[s..e]);
                next = e;
            }
        }
        out
    }
}

/// The store's change stream for the selected mailbox (IDLE, NOOP).
pub struct Watch {
    pub notify: Arc<Notify>,
    pub dirty: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
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
}

/// One IMAP session.
pub struct Session {
    pub shared: Arc<Shared>,
    pub state: State,
    pub sid: String,
    pub peer: IpAddr,
    pub tls: bool,
    pub enabled: Enabled,
    errors: u32,
    auth_failures: u32,
    user_slot: Option<UserSlot>,
    tokens: f64,
    last_refill: Instant,
}

/// Which commands are allowed in which state (RFC 9051 §6).
fn allowed(kind: &CommandKind, state: &State) -> bool {
    use CommandKind as C;
    match kind {
        C::Capability | C::Noop | C::Logout | C::Id => true,
        C::StartTls | C::Login { .. } | C::Authenticate { .. } => {
            matches!(state, State::NotAuthenticated)
        }
        C::Enable(_)
        | C::Select { .. }
        | C::Create(_)
        | C::Delete(_)
        | C::Rename { .. }
        | C::Subscribe(_)
        | C::Unsubscribe(_)
        | C::List { .. }
        | C::Lsub { .. }
        | C::Namespace
        | C::Status { .. }
        | C::Append { .. }
        | C::Idle => matches!(state, State::Authenticated { .. } | State::Selected { .. }),
        C::Check
        | C::Close
        | C::Unselect
        | C::Expunge { .. }
        | C::Search { .. }
        | C::Fetch { .. }
        | C::Store { .. }
        | C::Copy { .. } => matches!(state, State::Selected { .. }),
    }
}

fn status_label(k: Kind) -> &'static str {
    match k {
        Kind::Ok => "ok",
        Kind::No => "no",
        Kind::Bad => "bad",
        Kind::Bye => "bye",
    }
}

/// Maps a store failure to a client reply; details go to the log only.
pub fn store_error(e: &tonic::Status) -> Status {
    use tonic::Code as G;
    match e.code() {
        G::NotFound => Status::no("No such mailbox or message").with(Code::Nonexistent),
        G::AlreadyExists => Status::no("Mailbox already exists").with(Code::AlreadyExists),
        G::InvalidArgument => Status::no("Not possible").with(Code::Cannot),
        G::ResourceExhausted => Status::no("Quota or limit exceeded").with(Code::OverQuota),
        G::FailedPrecondition | G::PermissionDenied => {
            Status::no("Not possible").with(Code::Cannot)
        }
        _ => {
            tracing::warn!(code = ?e.code(), message = e.message(), "store call failed");
            if classify(e) == Failure::Transient {
                Status::no("Temporary failure, try again").with(Code::Unavailable)
            } else {
                Status::no("Server error").with(Code::ServerBug)
            }
        }
    }
}

/// Converts a UID list into the store's range form. Never call the store
/// with an empty set: for the store that means "every message".
#[must_use]
pub fn uid_set(uids: &[u32]) -> pb::UidSet {
    let mut ranges: Vec<pb::UidRange> = Vec::new();
    for &u in uids {
        match ranges.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(u) => r.last = u,
            _ => ranges.push(pb::UidRange { first: u, last: u }),
        }
    }
    pb::UidSet { ranges }
}

/// IDLE also resynchronises this often, whatever the watch stream says.
const IDLE_POLL: Duration = Duration::from_secs(60);

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

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
            enabled: Enabled::default(),
            errors: 0,
            auth_failures: 0,
            user_slot: None,
            tokens,
            last_refill: Instant::now(),
        }
    }

    /// Called by the connection after a successful STARTTLS handshake.
    pub fn tls_established(&mut self) {
        self.tls = true;
    }

    fn cfg(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// Mailbox names and strings on the wire are UTF-8 (RFC 6855, RFC 9051).
    #[must_use]
    pub fn utf8(&self) -> bool {
        self.enabled.utf8 || self.enabled.rev2
    }

    fn login_disabled(&self) -> bool {
        !self.tls && !self.cfg().allow_plaintext_auth
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

    fn user(&self) -> Option<&User> {
        match &self.state {
            State::Authenticated { user } | State::Selected { user, .. } => Some(user),
            _ => None,
        }
    }

    pub(crate) fn user_id(&self) -> Option<u64> {
        self.user().map(|u| u.id)
    }

    pub(crate) fn selected(&mut self) -> Option<&mut Selected> {
        match &mut self.state {
            State::Selected { mailbox, .. } => Some(mailbox),
            _ => None,
        }
    }

    fn deselect(&mut self) {
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
                    let timeout = if authed {
                        self.cfg().idle_timeout
                    } else {
                        self.cfg().preauth_timeout
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            io.write(&Status::bye("Server shutting down").encode(None));
                            io.flush().await?;
                            return Ok(Exit::Closed);
                        }
                        r = tokio::time::timeout(timeout, io.fill()) => match r {
                            Ok(Ok(0)) => return Ok(Exit::Closed),
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Err(e),
                            Err(_) => {
                                io.write(&Status::bye("Autologout; idle for too long").encode(None));
                                io.flush().await?;
                                return Ok(Exit::Closed);
                            }
                        }
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
                            if let Some(exit) = self.dispatch(io, cmd, shutdown).await? {
                                return Ok(exit);
                            }
                        }
                    }
                }
            }
        }
    }

    fn parse_error<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>, e: &ParseError) {
        let st = if e.bad_charset {
            Status::no("Unsupported charset").with(Code::BadCharset)
        } else {
            Status::bad(format!("Syntax error: {}", e.msg))
        };
        io.write(&st.encode(e.tag.as_deref()));
    }

    fn count_error(&mut self) -> bool {
        self.errors += 1;
        self.errors > self.cfg().max_errors
    }

    async fn too_many_errors<S: AsyncRead + AsyncWrite + Unpin>(
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

    async fn dispatch<S>(
        &mut self,
        io: &mut Io<S>,
        cmd: Command,
        shutdown: &Shutdown,
    ) -> std::io::Result<Option<Exit>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Command { tag, kind } = cmd;
        if !allowed(&kind, &self.state) {
            let st = if matches!(kind, CommandKind::StartTls) && self.tls {
                Status::bad("Already in TLS")
            } else {
                Status::bad(format!("{} not allowed now", kind.name()))
            };
            io.write(&st.encode(Some(&tag)));
            return Ok(self.count_error().then_some(Exit::Closed));
        }
        let name = kind.name();
        tracing::debug!(command = name, "command");
        // Untagged updates may not be sent during FETCH, STORE and SEARCH
        // (RFC 9051 §7.5.1 EXPUNGE rule); UID variants are fine.
        let mut may_sync = !matches!(
            kind,
            CommandKind::Fetch { uid: false, .. }
                | CommandKind::Store { uid: false, .. }
                | CommandKind::Search { uid: false, .. }
        );
        let status = match kind {
            CommandKind::Capability => {
                let c = format!("* CAPABILITY {}\r\n", self.capabilities());
                io.write(c.as_bytes());
                Status::ok("CAPABILITY completed")
            }
            CommandKind::Noop | CommandKind::Check => {
                self.sync(io, true).await;
                may_sync = false;
                Status::ok("NOOP completed")
            }
            CommandKind::Logout => {
                io.write(&Status::bye("Logging out").encode(None));
                io.write(&Status::ok("LOGOUT completed").encode(Some(&tag)));
                io.flush().await?;
                self.state = State::Logout;
                return Ok(Some(Exit::Closed));
            }
            CommandKind::StartTls => {
                if self.tls || !self.cfg().tls_available {
                    Status::bad("STARTTLS not available")
                } else {
                    io.write(&Status::ok("Begin TLS negotiation now").encode(Some(&tag)));
                    io.flush().await?;
                    // RFC 9051 §6.2.1: discard anything pipelined after STARTTLS.
                    io.discard_input();
                    return Ok(Some(Exit::StartTls));
                }
            }
            CommandKind::Id => {
                io.write(b"* ID (\"name\" \"Epistole\")\r\n");
                Status::ok("ID completed")
            }
            CommandKind::Enable(caps) => self.enable(io, &caps),
            CommandKind::Login { user, pass } => self.login(&user, &pass).await,
            CommandKind::Authenticate { mechanism, initial } => {
                self.authenticate(io, &mechanism, initial).await?
            }
            CommandKind::Select {
                mailbox,
                condstore,
                read_only,
            } => {
                may_sync = false;
                self.select(io, &mailbox, condstore, read_only).await
            }
            CommandKind::Create(name) => self.create(&name).await,
            CommandKind::Delete(name) => self.delete(&name).await,
            CommandKind::Rename { from, to } => self.rename(&from, &to).await,
            CommandKind::Subscribe(name) => self.subscribe(&name, true).await,
            CommandKind::Unsubscribe(name) => self.subscribe(&name, false).await,
            CommandKind::List {
                reference,
                patterns,
                select,
                ret,
                extended,
            } => {
                self.list(io, &reference, &patterns, &select, &ret, extended, false)
                    .await
            }
            CommandKind::Lsub { reference, pattern } => {
                let select = crate::command::ListSelect {
                    subscribed: true,
                    ..Default::default()
                };
                self.list(
                    io,
                    &reference,
                    &[pattern],
                    &select,
                    &crate::command::ListReturn::default(),
                    false,
                    true,
                )
                .await
            }
            CommandKind::Namespace => {
                io.write(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                Status::ok("NAMESPACE completed")
            }
            CommandKind::Status { mailbox, items } => self.status(io, &mailbox, &items).await,
            CommandKind::Append { mailbox, messages } => self.append(io, &mailbox, messages).await,
            CommandKind::Idle => {
                return self.idle(io, &tag, shutdown).await;
            }
            CommandKind::Close | CommandKind::Unselect => {
                let close = matches!(kind, CommandKind::Close);
                may_sync = false;
                if let Some(mb) = self.selected()
                    && close
                    && !mb.read_only
                {
                    // RFC 9051 §6.4.1: expunge silently.
                    let req = pb::ExpungeRequest {
                        mailbox_id: mb.id,
                        uids: None,
                    };
                    if let Err(e) = self.shared.store.mailboxes.clone().expunge(req).await {
                        tracing::warn!(error = %e, "expunge on CLOSE failed");
                    }
                }
                self.deselect();
                Status::ok(if close {
                    "CLOSE completed"
                } else {
                    "UNSELECT completed"
                })
            }
            CommandKind::Expunge { uids } => self.expunge(io, uids.as_ref()).await,
            CommandKind::Search { uid, ret, key } => self.search(io, &tag, uid, ret, &key).await,
            CommandKind::Fetch {
                uid,
                set,
                atts,
                changed_since,
            } => self.fetch(io, uid, &set, &atts, changed_since).await?,
            CommandKind::Store {
                uid,
                set,
                op,
                silent,
                flags,
                unchanged_since,
            } => {
                self.store(io, uid, &set, op, silent, &flags, unchanged_since)
                    .await
            }
            CommandKind::Copy {
                uid,
                set,
                mailbox,
                is_move,
            } => self.copy(io, uid, &set, &mailbox, is_move).await,
        };
        if may_sync && status.kind != Kind::Bad {
            let dirty = self
                .selected()
                .and_then(|m| m.watch.as_ref())
                .is_some_and(|w| w.dirty.load(Ordering::Acquire));
            if dirty {
                self.sync(io, true).await;
            }
        }
        // Server-side failures carry the session id, so a user's report
        // can be found in the logs.
        let mut status = status;
        if matches!(status.code, Some(Code::ServerBug | Code::Unavailable)) {
            status.text = format!("{} (session {})", status.text, self.sid);
        }
        if self.auth_exhausted() && status.kind != Kind::Ok {
            io.write(&status.encode(Some(&tag)));
            io.write(&Status::bye("Too many authentication failures").encode(None));
            io.flush().await?;
            return Ok(Some(Exit::Closed));
        }
        metrics::counter!("imap_commands_total", "command" => name, "status" => status_label(status.kind)).increment(1);
        if status.kind == Kind::Bad && self.count_error() {
            io.write(&status.encode(Some(&tag)));
            return self.too_many_errors(io).await.map(Some);
        }
        io.write(&status.encode(Some(&tag)));
        Ok(None)
    }

    fn enable<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        caps: &[String],
    ) -> Status {
        let mut newly = Vec::new();
        for c in caps {
            let flag = match c.as_str() {
                "IMAP4REV2" => &mut self.enabled.rev2,
                "UTF8=ACCEPT" => &mut self.enabled.utf8,
                "CONDSTORE" => &mut self.enabled.condstore,
                _ => continue,
            };
            if !*flag {
                *flag = true;
                newly.push(match c.as_str() {
                    "IMAP4REV2" => "IMAP4rev2",
                    other => other,
                });
            }
        }
        io.write(
            format!(
                "* ENABLED{}{}\r\n",
                if newly.is_empty() { "" } else { " " },
                newly.join(" ")
            )
            .as_bytes(),
        );
        Status::ok("ENABLE completed")
    }

    async fn check_password(&mut self, username: &[u8], password: &[u8]) -> Status {
        if self.login_disabled() {
            return Status::no("Plaintext authentication disallowed without TLS")
                .with(Code::PrivacyRequired);
        }
        let (Ok(username), Ok(password)) =
            (std::str::from_utf8(username), std::str::from_utf8(password))
        else {
            return self.auth_failed().await;
        };
        let req = pb::AuthenticateRequest {
            username: username.to_string(),
            password: password.to_string(),
            protocol: pb::Protocol::Imap as i32,
            remote_ip: self.peer.to_string(),
            session_id: self.sid.clone(),
        };
        match self.shared.store.accounts.clone().authenticate(req).await {
            Ok(r) => {
                let r = r.into_inner();
                match pb::AuthStatus::try_from(r.status) {
                    Ok(pb::AuthStatus::Ok) => {
                        let Some(slot) = self
                            .shared
                            .users
                            .admit(r.user_id, self.cfg().max_sessions_per_user)
                        else {
                            return Status::no("Too many sessions for this user").with(Code::Limit);
                        };
                        self.user_slot = Some(slot);
                        tracing::info!(user = %r.address, "authenticated");
                        metrics::counter!("imap_logins_total", "result" => "ok").increment(1);
                        self.state = State::Authenticated {
                            user: User {
                                id: r.user_id,
                                address: r.address,
                            },
                        };
                        Status::ok("Logged in").with(Code::Capability(self.capabilities()))
                    }
                    Ok(pb::AuthStatus::Throttled) => {
                        tokio::time::sleep(self.cfg().auth_failure_delay).await;
                        Status::no("Too many failed logins, try again later")
                            .with(Code::Unavailable)
                    }
                    _ => self.auth_failed().await,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "authenticate call failed");
                Status::no("Temporary failure, try again").with(Code::Unavailable)
            }
        }
    }

    /// Wrong password and unknown user answer identically after the same
    /// delay (ATTACKS.md #16).
    async fn auth_failed(&mut self) -> Status {
        self.auth_failures += 1;
        metrics::counter!("imap_logins_total", "result" => "failed").increment(1);
        tokio::time::sleep(self.cfg().auth_failure_delay).await;
        Status::no("Authentication failed").with(Code::AuthenticationFailed)
    }

    async fn login(&mut self, user: &[u8], pass: &[u8]) -> Status {
        self.check_password(user, pass).await
    }

    /// AUTHENTICATE PLAIN (RFC 4616), with SASL-IR (RFC 4959).
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> std::io::Result<Status> {
        use base64::Engine as _;
        if mechanism != "PLAIN" {
            return Ok(Status::no("Unsupported mechanism").with(Code::Cannot));
        }
        if self.login_disabled() {
            return Ok(
                Status::no("Plaintext authentication disallowed without TLS")
                    .with(Code::PrivacyRequired),
            );
        }
        let response = if let Some(ir) = initial {
            if ir == b"=" {
                Vec::new()
            } else {
                match base64::engine::general_purpose::STANDARD.decode(&ir) {
                    Ok(v) => v,
                    Err(_) => return Ok(Status::bad("Invalid base64")),
                }
            }
        } else {
            io.write(b"+ \r\n");
            io.flush().await?;
            let Some(line) = read_line(io, 8192).await? else {
                return Ok(Status::bad("Response line too long"));
            };
            match parser::parse_sasl_response(&line) {
                Ok(Some(v)) => v,
                Ok(None) => return Ok(Status::bad("Authentication cancelled")),
                Err(_) => return Ok(Status::bad("Invalid base64")),
            }
        };
        let mut parts = response.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Status::bad("Malformed PLAIN response"));
        };
        if !authz.is_empty() && authz != authc {
            return Ok(self.auth_failed().await);
        }
        let st = self.check_password(authc, pass).await;
        Ok(st)
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

    /// Starts following the store's change stream for the mailbox and
    /// waits (bounded) for its READY, so nothing committed after the
    /// snapshot SELECT takes next can be missed.
    async fn start_watch(&self, user_id: u64, mailbox_id: u64) -> Option<Watch> {
        let notify = Arc::new(Notify::new());
        let dirty = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(watch_loop(
            self.shared.store.clone(),
            user_id,
            mailbox_id,
            notify.clone(),
            dirty.clone(),
            ready_tx,
        ));
        if !matches!(
            tokio::time::timeout(Duration::from_secs(3), ready_rx).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("store watch not ready; will resync when it is");
        }
        Some(Watch {
            notify,
            dirty,
            task,
        })
    }

    /// SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3; RFC 7162 §3.1.8).
    async fn select<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        condstore: bool,
        read_only: bool,
    ) -> Status {
        let was_selected = matches!(self.state, State::Selected { .. });
        self.deselect();
        if was_selected && self.enabled.rev2 {
            io.write(
                &Status::ok("Previous mailbox closed")
                    .with(Code::Closed)
                    .encode(None),
            );
        }
        if condstore {
            self.enabled.condstore = true;
        }
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let Some(user) = self.user().cloned() else {
            return Status::bad("Not authenticated");
        };
        let mut client = self.shared.store.mailboxes.clone();
        let probe = pb::GetMailboxRequest {
            user_id: user.id,
            name: name.clone(),
            claim_recent: false,
        };
        let mb = match client.get_mailbox(probe).await {
            Ok(m) => m.into_inner(),
            Err(e) => return store_error(&e),
        };
        let watch = self.start_watch(user.id, mb.id).await;
        let req = pb::GetMailboxRequest {
            user_id: user.id,
            name: name.clone(),
            claim_recent: !read_only,
        };
        let mb = match client.get_mailbox(req).await {
            Ok(m) => m.into_inner(),
            Err(e) => return store_error(&e),
        };
        let meta = pb::FetchMetaRequest {
            mailbox_id: mb.id,
            uids: None,
            changed_since: 0,
            with_structure: false,
        };
        let mut uids = Vec::with_capacity(mb.messages as usize);
        let mut flags = Vec::with_capacity(mb.messages as usize);
        match client.fetch_meta(meta).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(batch)) => {
                            for m in batch.messages {
                                if uids.last().is_none_or(|&l| m.uid > l) {
                                    uids.push(m.uid);
                                    flags.push(m.flags);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return store_error(&e),
                    }
                }
            }
            Err(e) => return store_error(&e),
        }
        let recent_floor = if read_only {
            u32::MAX
        } else {
            mb.recent_floor.max(1)
        };
        let selected = Selected {
            id: mb.id,
            name: name.clone(),
            read_only,
            uidvalidity: mb.uidvalidity,
            recent_floor,
            // Watermarks from the snapshot taken before the listing (see `sync`).
            flags_mark: mb.highestmodseq,
            expunge_mark: mb.highestmodseq,
            watch,
            uids,
            flags,
        };
        let exists = selected.uids.len();
        let recent = selected.uids.iter().filter(|&&u| u >= recent_floor).count();
        let first_unseen = selected
            .flags
            .iter()
            .position(|f| !f.iter().any(|x| x == "\\Seen"));
        let mut keywords: Vec<&str> = Vec::new();
        for f in selected.flags.iter().flatten() {
            if !f.starts_with('\\') && !keywords.contains(&f.as_str()) && keywords.len() < 100 {
                keywords.push(f);
            }
        }
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        io.write(format!("* {exists} EXISTS\r\n").as_bytes());
        if !self.enabled.rev2 {
            io.write(format!("* {recent} RECENT\r\n").as_bytes());
            if let Some(i) = first_unseen {
                io.write(
                    &Status::ok("First unseen")
                        .with(Code::Unseen(u32::try_from(i + 1).unwrap_or(u32::MAX)))
                        .encode(None),
                );
            }
        }
        io.write(format!("* FLAGS ({SYSTEM_FLAGS}{kw})\r\n").as_bytes());
        let perm = if read_only {
            String::new()
        } else {
            format!("{SYSTEM_FLAGS}{kw} \\*")
        };
        io.write(
            &Status::ok("Permanent flags")
                .with(Code::PermanentFlags(perm))
                .encode(None),
        );
        io.write(
            &Status::ok("UIDs valid")
                .with(Code::UidValidity(mb.uidvalidity))
                .encode(None),
        );
        io.write(
            &Status::ok("Predicted next UID")
                .with(Code::UidNext(mb.uidnext))
                .encode(None),
        );
        io.write(
            &Status::ok("Highest")
                .with(Code::HighestModSeq(mb.highestmodseq))
                .encode(None),
        );
        if self.enabled.rev2 {
            let mut l = b"* LIST () \"/\" ".to_vec();
            self.mailbox_out(&mut l, &name);
            l.extend_from_slice(b"\r\n");
            io.write(&l);
        }
        self.state = State::Selected {
            user,
            mailbox: Box::new(selected),
        };
        if read_only {
            Status::ok("EXAMINE completed").with(Code::ReadOnly)
        } else {
            Status::ok("SELECT completed").with(Code::ReadWrite)
        }
    }

    /// Reports changes made by others: EXPUNGE (when `allow_expunge`),
    /// EXISTS/RECENT for new messages, FETCH FLAGS for changed ones
    /// (RFC 9051 §5.2, §7.4.1).
    pub(crate) async fn sync<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        allow_expunge: bool,
    ) {
        let rev2 = self.enabled.rev2;
        let condstore = self.enabled.condstore;
        let mut client = self.shared.store.mailboxes.clone();
        let user_id = self.user_id().unwrap_or(0);
        let Some(mb) = self.selected() else { return };
        if let Some(w) = &mb.watch {
            w.dirty.store(false, Ordering::Release);
        }
        // The new watermark is the mailbox's HIGHESTMODSEQ *before* the
        // queries: taking the largest MODSEQ seen in the (batched, not
        // snapshot-consistent) results could skip a change committed while
        // they streamed. Changes seen twice are filtered by the flag cache.
        let snapshot = pb::GetMailboxRequest {
            user_id,
            name: mb.name.clone(),
            claim_recent: false,
        };
        let new_mark = match client.get_mailbox(snapshot).await {
            Ok(m) => {
                let hms = m.into_inner().highestmodseq;
                // Every append, flag change and expunge raises the
                // mailbox's HIGHESTMODSEQ: unchanged means nothing to report.
                if hms <= mb.flags_mark && (hms <= mb.expunge_mark || !allow_expunge) {
                    return;
                }
                hms.max(mb.flags_mark)
            }
            Err(e) => {
                tracing::warn!(error = %e, "mailbox snapshot failed");
                mb.flags_mark
            }
        };
        if allow_expunge {
            let mark = new_mark;
            let req = pb::ListExpungedRequest {
                mailbox_id: mb.id,
                since_modseq: mb.expunge_mark,
            };
            match client.list_expunged(req).await {
                Ok(r) => {
                    let mut gone = r.into_inner().uids;
                    gone.sort_unstable();
                    for uid in gone {
                        if let Ok(i) = mb.uids.binary_search(&uid) {
                            mb.uids.remove(i);
                            mb.flags.remove(i);
                            io.write(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                        }
                    }
                    mb.expunge_mark = mark;
                }
                Err(e) => tracing::warn!(error = %e, "list expunged failed"),
            }
        }
        let req = pb::FetchMetaRequest {
            mailbox_id: mb.id,
            uids: None,
            changed_since: mb.flags_mark,
            with_structure: false,
        };
        let mut changed: Vec<(u32, u64)> = Vec::new();
        let before = mb.uids.len();
        match client.fetch_meta(req).await {
            Ok(s) => {
                let mut s = s.into_inner();
                let mut complete = false;
                loop {
                    let batch = match s.message().await {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            complete = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fetch meta stream failed");
                            break;
                        }
                    };
                    for m in batch.messages {
                        match mb.uids.binary_search(&m.uid) {
                            Ok(i) => {
                                if mb.flags[i] != m.flags {
                                    mb.flags[i] = m.flags;
                                    changed.push((m.uid, m.modseq));
                                }
                            }
                            Err(i) if i == mb.uids.len() => {
                                mb.uids.push(m.uid);
                                mb.flags.push(m.flags);
                            }
                            // A UID below the newest that we never saw: it was
                            // committed out of order; too late to show it.
                            Err(_) => {}
                        }
                    }
                }
                if complete {
                    mb.flags_mark = new_mark;
                }
            }
            Err(e) => tracing::warn!(error = %e, "fetch meta failed"),
        }
        if mb.uids.len() != before {
            io.write(format!("* {} EXISTS\r\n", mb.uids.len()).as_bytes());
            if !rev2 {
                let recent = mb.uids.iter().filter(|&&u| u >= mb.recent_floor).count();
                io.write(format!("* {recent} RECENT\r\n").as_bytes());
            }
        }
        for (uid, modseq) in changed {
            let Some(seq) = mb.seq_of(uid) else { continue };
            let i = seq as usize - 1;
            let mut line = format!("* {seq} FETCH (UID {uid} FLAGS ").into_bytes();
            response::flag_list(&mut line, &mb.flags[i], !rev2 && uid >= mb.recent_floor);
            if condstore {
                line.extend_from_slice(format!(" MODSEQ ({modseq})").as_bytes());
            }
            line.extend_from_slice(b")\r\n");
            io.write(&line);
        }
    }

    /// IDLE (RFC 2177): updates pushed from the store's watch stream.
    async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        shutdown: &Shutdown,
    ) -> std::io::Result<Option<Exit>> {
        self.sync(io, true).await;
        io.write(b"+ idling\r\n");
        io.flush().await?;
        let notify = self
            .selected()
            .and_then(|m| m.watch.as_ref())
            .map(|w| w.notify.clone());
        let deadline = tokio::time::Instant::now() + self.cfg().idle_timeout;
        loop {
            if let Some(lf) = io.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = io.rbuf.drain(..=lf).collect();
                let word = line.strip_suffix(b"\n").unwrap_or(&line);
                let word = word.strip_suffix(b"\r").unwrap_or(word);
                let st = if word.eq_ignore_ascii_case(b"DONE") {
                    Status::ok("IDLE terminated")
                } else {
                    Status::bad("Expected DONE")
                };
                io.write(&st.encode(Some(tag)));
                return Ok(None);
            }
            if io.rbuf.len() > 1024 {
                io.write(&Status::bye("Expected DONE").encode(None));
                io.flush().await?;
                return Ok(Some(Exit::Closed));
            }
            let notified = async {
                match &notify {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {
                    io.write(&Status::bye("Server shutting down").encode(None));
                    io.flush().await?;
                    return Ok(Some(Exit::Closed));
                }
                () = tokio::time::sleep_until(deadline) => {
                    io.write(&Status::bye("Autologout; idle for too long").encode(None));
                    io.flush().await?;
                    return Ok(Some(Exit::Closed));
                }
                () = notified => {
                    self.sync(io, true).await;
                    io.flush().await?;
                }
                // Safety net should the watch stream be unavailable.
                () = tokio::time::sleep(IDLE_POLL), if notify.is_some() => {
                    self.sync(io, true).await;
                    io.flush().await?;
                }
                r = io.fill() => {
                    if r? == 0 {
                        return Ok(Some(Exit::Closed));
                    }
                }
            }
        }
    }

    async fn create(&mut self, raw: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        // RFC 9051 §6.3.4: a trailing delimiter only declares intent.
        let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
        let name = match self.mailbox_in(trimmed) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if name == "INBOX" {
            return Status::no("INBOX always exists").with(Code::AlreadyExists);
        }
        let req = pb::CreateMailboxRequest {
            user_id,
            name,
            special_use: String::new(),
        };
        match self
            .shared
            .store
            .mailboxes
            .clone()
            .create_mailbox(req)
            .await
        {
            Ok(_) => Status::ok("CREATE completed"),
            Err(e) => store_error(&e),
        }
    }

    async fn delete(&mut self, raw: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if name == "INBOX" {
            return Status::no("INBOX cannot be deleted").with(Code::Cannot);
        }
        let req = pb::DeleteMailboxRequest { user_id, name };
        match self
            .shared
            .store
            .mailboxes
            .clone()
            .delete_mailbox(req)
            .await
        {
            Ok(_) => Status::ok("DELETE completed"),
            Err(e) => store_error(&e),
        }
    }

    async fn rename(&mut self, from: &[u8], to: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let (from, to) = match (self.mailbox_in(from), self.mailbox_in(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(st), _) | (_, Err(st)) => return st,
        };
        if to == "INBOX" {
            return Status::no("Cannot rename to INBOX").with(Code::AlreadyExists);
        }
        let req = pb::RenameMailboxRequest { user_id, from, to };
        match self
            .shared
            .store
            .mailboxes
            .clone()
            .rename_mailbox(req)
            .await
        {
            Ok(_) => Status::ok("RENAME completed"),
            Err(e) => store_error(&e),
        }
    }

    async fn subscribe(&mut self, raw: &[u8], subscribed: bool) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let req = pb::SetSubscriptionRequest {
            user_id,
            name,
            subscribed,
        };
        match self
            .shared
            .store
            .mailboxes
            .clone()
            .set_subscription(req)
            .await
        {
            Ok(_) => Status::ok(if subscribed {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }),
            Err(e) => store_error(&e),
        }
    }

    /// `* STATUS name (items)` from a store mailbox.
    pub(crate) fn status_line(&self, mb: &pb::Mailbox, items: &[StatusItem]) -> Vec<u8> {
        let mut out = b"* STATUS ".to_vec();
        self.mailbox_out(&mut out, &mb.name);
        out.extend_from_slice(b" (");
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            let s = match it {
                StatusItem::Messages => format!("MESSAGES {}", mb.messages),
                StatusItem::Recent => format!("RECENT {}", mb.recent),
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
                StatusItem::Unseen => format!("UNSEEN {}", mb.unseen),
                StatusItem::Deleted => format!("DELETED {}", mb.deleted),
                StatusItem::Size => format!("SIZE {}", mb.size),
                StatusItem::HighestModseq => format!("HIGHESTMODSEQ {}", mb.highestmodseq),
            };
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b")\r\n");
        out
    }

    async fn status<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        items: &[StatusItem],
    ) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let req = pb::GetMailboxRequest {
            user_id,
            name,
            claim_recent: false,
        };
        match self.shared.store.mailboxes.clone().get_mailbox(req).await {
            Ok(mb) => {
                let line = self.status_line(&mb.into_inner(), items);
                io.write(&line);
                Status::ok("STATUS completed")
            }
            Err(e) => store_error(&e),
        }
    }

    /// APPEND (RFC 9051 §6.3.12) with APPENDUID (RFC 4315) and MULTIAPPEND
    /// (RFC 3502). The store appends one message per call; when a later
    /// message of a MULTIAPPEND fails, the ones already stored are expunged
    /// again, so the client sees all or nothing.
    async fn append<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        raw: &[u8],
        messages: Vec<crate::command::AppendMessage>,
    ) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if messages.iter().any(|m| m.data.is_empty()) {
            return Status::no("Empty message").with(Code::Cannot);
        }
        let mut client = self.shared.store.mailboxes.clone();
        let mut done: Vec<pb::AppendResponse> = Vec::new();
        let mut failure = None;
        for message in messages {
            match append_one(&mut client, user_id, &name, message).await {
                Ok(r) => done.push(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            if let Some(first) = done.first() {
                let uids: Vec<u32> = done.iter().map(|r| r.uid).collect();
                let set = uid_set(&uids);
                let flag = pb::StoreFlagsRequest {
                    mailbox_id: first.mailbox_id,
                    uids: Some(set.clone()),
                    op: pb::FlagOp::Add as i32,
                    flags: vec!["\\Deleted".into()],
                    unchanged_since: 0,
                };
                let rollback = async {
                    client.store_flags(flag).await?;
                    client
                        .expunge(pb::ExpungeRequest {
                            mailbox_id: first.mailbox_id,
                            uids: Some(set),
                        })
                        .await
                };
                if let Err(re) = rollback.await {
                    tracing::warn!(error = %re, "MULTIAPPEND rollback failed");
                }
            }
            return if e.code() == tonic::Code::NotFound {
                Status::no("No such mailbox").with(Code::TryCreate)
            } else {
                store_error(&e)
            };
        }
        let Some(last) = done.last() else {
            return Status::bad("APPEND needs a message");
        };
        if self.selected().is_some_and(|m| m.id == last.mailbox_id) {
            self.sync(io, true).await;
        }
        let uids: Vec<u32> = done.iter().map(|r| r.uid).collect();
        Status::ok("APPEND completed").with(Code::AppendUid(last.uidvalidity, uid_list(&uids)))
    }

    /// EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, RFC 4315 §2.1).
    async fn expunge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uids: Option<&SeqSet>,
    ) -> Status {
        let mut client = self.shared.store.mailboxes.clone();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let set = match uids {
            Some(s) => {
                let v = mb.resolve(s, true);
                if v.is_empty() {
                    return Status::ok("EXPUNGE completed");
                }
                Some(uid_set(&v))
            }
            None => None,
        };
        let req = pb::ExpungeRequest {
            mailbox_id: mb.id,
            uids: set,
        };
        match client.expunge(req).await {
            Ok(r) => {
                let mut gone = r.into_inner().expunged;
                gone.sort_unstable();
                for uid in gone {
                    if let Ok(i) = mb.uids.binary_search(&uid) {
                        mb.uids.remove(i);
                        mb.flags.remove(i);
                        io.write(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                    }
                }
                Status::ok("EXPUNGE completed")
            }
            Err(e) => store_error(&e),
        }
    }

    /// STORE (RFC 9051 §6.4.6; RFC 7162 §3.1.3 UNCHANGEDSINCE).
    #[allow(clippy::too_many_arguments)]
    async fn store<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid: bool,
        set: &SeqSet,
        op: StoreOp,
        silent: bool,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Status {
        let rev2 = self.enabled.rev2;
        if unchanged_since.is_some() {
            self.enabled.condstore = true;
        }
        let condstore = self.enabled.condstore;
        let mut client = self.shared.store.mailboxes.clone();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let uids = mb.resolve(set, uid);
        if uids.is_empty() {
            return Status::ok("STORE completed");
        }
        let flags: Vec<String> = flags.iter().filter(|f| *f != "\\Recent").cloned().collect();
        let op = match op {
            StoreOp::Add => pb::FlagOp::Add,
            StoreOp::Remove => pb::FlagOp::Remove,
            StoreOp::Replace => pb::FlagOp::Replace,
        };
        let req = pb::StoreFlagsRequest {
            mailbox_id: mb.id,
            uids: Some(uid_set(&uids)),
            op: op as i32,
            flags,
            unchanged_since: unchanged_since.unwrap_or(0),
        };
        let r = match client.store_flags(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => return store_error(&e),
        };
        for u in r.updated {
            let Ok(i) = mb.uids.binary_search(&u.uid) else {
                continue;
            };
            mb.flags[i] = u.flags;
            if silent && unchanged_since.is_none() {
                continue;
            }
            let mut line = format!("* {} FETCH (", i + 1).into_bytes();
            if uid {
                line.extend_from_slice(format!("UID {} ", u.uid).as_bytes());
            }
            line.extend_from_slice(b"FLAGS ");
            response::flag_list(&mut line, &mb.flags[i], !rev2 && u.uid >= mb.recent_floor);
            if condstore {
                line.extend_from_slice(format!(" MODSEQ ({})", u.modseq).as_bytes());
            }
            line.extend_from_slice(b")\r\n");
            io.write(&line);
        }
        if r.modified.is_empty() {
            Status::ok("STORE completed")
        } else {
            let mut m: Vec<u32> = if uid {
                r.modified
            } else {
                r.modified.iter().filter_map(|&u| mb.seq_of(u)).collect()
            };
            m.sort_unstable();
            Status::ok("Conditional STORE failed")
                .with(Code::Modified(response::seq_set_string(&m)))
        }
    }

    /// COPY / MOVE (RFC 9051 §6.4.7, RFC 6851) with COPYUID (RFC 4315).
    async fn copy<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid: bool,
        set: &SeqSet,
        raw: &[u8],
        is_move: bool,
    ) -> Status {
        let dest = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let mut client = self.shared.store.mailboxes.clone();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if is_move && mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let uids = mb.resolve(set, uid);
        if uids.is_empty() {
            return Status::ok(if is_move {
                "MOVE completed"
            } else {
                "COPY completed"
            });
        }
        let req = pb::CopyMessagesRequest {
            mailbox_id: mb.id,
            uids: Some(uid_set(&uids)),
            user_id,
            destination: dest,
            r#move: is_move,
        };
        let r = match client.copy_messages(req).await {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Status::no("No such mailbox").with(Code::TryCreate);
            }
            Err(e) => return store_error(&e),
        };
        let code = (!r.source_uids.is_empty()).then(|| {
            Code::CopyUid(
                r.uidvalidity,
                uid_list(&r.source_uids),
                uid_list(&r.destination_uids),
            )
        });
        if is_move {
            if let Some(c) = code {
                io.write(&Status::ok("Moved").with(c).encode(None));
            }
            let mut gone = r.source_uids.clone();
            gone.sort_unstable();
            for u in gone {
                if let Ok(i) = mb.uids.binary_search(&u) {
                    mb.uids.remove(i);
                    mb.flags.remove(i);
                    io.write(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
            if r.destination_mailbox_id == mb.id {
                self.sync(io, true).await;
            }
            return Status::ok("MOVE completed");
        }
        let same = r.destination_mailbox_id == mb.id;
        if same {
            self.sync(io, true).await;
        }
        match code {
            Some(c) => Status::ok("COPY completed").with(c),
            None => Status::ok("COPY completed"),
        }
    }
}

/// A UID list in the order given (COPYUID pairs source and destination
/// positionally, so no sorting), ranges compressed where consecutive.
fn uid_list(uids: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            s.push_str(&start.to_string());
        } else {
            s.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    s
}

/// Streams one message to the store's client-streaming `Append`.
async fn append_one(
    client: &mut mailstore_api::pb::mailboxes_client::MailboxesClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            mailstore_api::AuthInterceptor,
        >,
    >,
    user_id: u64,
    mailbox: &str,
    message: crate::command::AppendMessage,
) -> Result<pb::AppendResponse, tonic::Status> {
    let flags: Vec<String> = message
        .flags
        .into_iter()
        .filter(|f| f != "\\Recent")
        .collect();
    let header = pb::AppendHeader {
        user_id,
        mailbox: mailbox.to_string(),
        flags,
        internal_date: message.date.map(|s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        }),
        size: message.data.len() as u64,
    };
    let mut reqs = vec![pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(header)),
    }];
    for chunk in message.data.chunks(256 * 1024) {
        reqs.push(pb::AppendRequest {
            part: Some(pb::append_request::Part::Data(chunk.to_vec())),
        });
    }
    client
        .append(futures::stream::iter(reqs))
        .await
        .map(tonic::Response::into_inner)
}

/// Follows `Watch` for one mailbox, reconnecting with back-off when the
/// stream ends (store restart): after a reconnection the session resyncs,
/// since events may have been missed in between.
async fn watch_loop(
    store: StoreClient,
    user_id: u64,
    mailbox_id: u64,
    notify: Arc<Notify>,
    dirty: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut client = store.mailboxes;
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let signal = || {
        dirty.store(true, Ordering::Release);
        notify.notify_one();
    };
    loop {
        match client
            .watch(pb::WatchRequest {
                user_id,
                mailbox_id,
            })
            .await
        {
            Ok(s) => {
                let mut s = s.into_inner();
                while let Ok(Some(ev)) = s.message().await {
                    if ev.kind == pb::MailboxEventKind::Ready as i32 {
                        backoff = Duration::from_millis(100);
                        match ready.take() {
                            Some(tx) => {
                                let _ = tx.send(());
                            }
                            None => signal(),
                        }
                    } else if ev.mailbox_id == mailbox_id {
                        signal();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "watch failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Reads one line (for SASL responses) of at most `max` bytes.
async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(lf) = io.rbuf.iter().position(|&b| b == b'\n') {
            if lf > max {
                io.rbuf.drain(..=lf);
                return Ok(None);
            }
            return Ok(Some(io.rbuf.drain(..=lf).collect()));
        }
        if io.rbuf.len() > max {
            return Ok(None);
        }
        if io.fill().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SeqRange;

    fn sel(uids: &[u32]) -> Selected {
        Selected {
            id: 1,
            name: "INBOX".into(),
            read_only: false,
            uidvalidity: 1,
            uids: uids.to_vec(),
            flags: vec![Vec::new(); uids.len()],
            recent_floor: u32::MAX,
            flags_mark: 0,
            expunge_mark: 0,
            watch: None,
        }
    }

    fn set(v: &[(Option<u32>, Option<u32>)]) -> SeqSet {
        SeqSet(
            v.iter()
                .map(|&(first, last)| SeqRange { first, last })
                .collect(),
        )
    }

    #[test]
    fn resolve_sets() {
        let s = sel(&[3, 5, 9, 10]);
        assert_eq!(
            s.resolve(&set(&[(Some(1), None)]), false),
            vec![3, 5, 9, 10]
        );
        assert_eq!(
            s.resolve(&set(&[(Some(2), Some(3)), (Some(1), Some(1))]), false),
            vec![3, 5, 9]
        );
        assert_eq!(s.resolve(&set(&[(Some(4), Some(9))]), true), vec![5, 9]);
        // RFC 9051 §6.4.8: n:* includes the last UID even when n is larger.
        assert_eq!(s.resolve(&set(&[(Some(100), None)]), true), vec![10]);
        assert_eq!(
            s.resolve(&set(&[(Some(5), Some(7))]), false),
            Vec::<u32>::new()
        );
        assert_eq!(
            sel(&[]).resolve(&set(&[(Some(1), None)]), true),
            Vec::<u32>::new()
        );
        // 1:4294967295 over and over: bounded work, no overflow.
        let big = set(&vec![(Some(1), Some(u32::MAX)); 10_000]);
        assert_eq!(s.resolve(&big, false), vec![3, 5, 9, 10]);
        assert_eq!(s.resolve(&big, true), vec![3, 5, 9, 10]);
    }

    #[test]
    fn uid_sets_compress() {
        let u = uid_set(&[1, 2, 3, 7]);
        assert_eq!(u.ranges.len(), 2);
        assert_eq!((u.ranges[0].first, u.ranges[0].last), (1, 3));
        assert_eq!(uid_list(&[5, 6, 2]), "5:6,2");
    }
}
