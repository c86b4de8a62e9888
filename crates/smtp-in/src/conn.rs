//! smtp-in on the shared listener (`service_kit::listen`): one connection
//! from admission to close — the early-talker check, implicit TLS (port
//! 465) and the STARTTLS switch. Binding, limits, the connection span and
//! drain are the listener's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use service_kit::{BoxFuture, ClientStream, ConnectionInfo, Protocol, Refused, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tracing::Instrument as _;

use crate::guard::{self, Mark};
use crate::io::{Conn, ConnError};
use crate::proto::codes;
use crate::session::{Exit, GreetPass, ListenerKind, Session, Shared, TlsInfo, new_session_id};

/// smtp-in as the shared listener sees it.
pub struct Smtp {
    /// Session rules, store backend, TLS.
    pub shared: Arc<Shared>,
    /// Per-connection options.
    pub options: ConnOptions,
}

impl Protocol for Smtp {
    fn name(&self) -> &'static str {
        "smtp_in"
    }

    /// `421 4.7.0` to a connection over the limits (not on 465: that would
    /// need a TLS handshake first; the listener simply closes it).
    fn refusal(&self, _why: Refused) -> Vec<u8> {
        codes::too_many_connections().to_wire().into_bytes()
    }

    /// Per-IP connection counts are shared with the other replicas.
    fn store(&self) -> Option<mailstore_api::StoreClient> {
        Some(self.shared.backend.client())
    }

    fn serve(
        self: Arc<Self>,
        tcp: ClientStream,
        info: ConnectionInfo,
        shutdown: Shutdown,
    ) -> BoxFuture {
        let kind = match info.endpoint {
            "submission" => ListenerKind::Submission,
            "submissions" => ListenerKind::Submissions,
            _ => ListenerKind::Mx,
        };
        let shared = self.shared.clone();
        Box::pin(run_session(
            tcp,
            info.peer,
            info.id,
            kind,
            shared,
            self.options,
            shutdown,
        ))
    }
}

/// Per-connection options that are not session rules.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// MX only: wait this long before the greeting; a client that talks
    /// first is refused (threat model T5). Zero disables the check. Clients
    /// with a current `greet_pass` mark skip it (see [`pre_greeting`]).
    pub early_talker_delay: Duration,
}

/// Serves one connection until it ends. Never panics on client input;
/// errors are logged.
pub async fn handle<S>(
    stream: S,
    peer: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
    options: ConnOptions,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let sid = new_session_id();
    let span = tracing::info_span!("smtp", sid = %sid, peer = %peer, listener = kind.name());
    run_session(stream, peer, sid, kind, shared, options, shutdown)
        .instrument(span)
        .await;
}

async fn run_session<S>(
    stream: S,
    peer: SocketAddr,
    sid: String,
    kind: ListenerKind,
    shared: Arc<Shared>,
    options: ConnOptions,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    tracing::info!("connected");
    let mut session = Session::new(shared.clone(), kind, peer, sid, shutdown);
    match serve(stream, &mut session, &shared, kind, options).await {
        Ok(exit) => tracing::info!(?exit, "disconnected"),
        Err(e) => tracing::info!(error = %e, "connection ended"),
    }
}

async fn serve<S>(
    stream: S,
    session: &mut Session,
    shared: &Shared,
    kind: ListenerKind,
    options: ConnOptions,
) -> Result<Exit, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if kind == ListenerKind::Submissions {
        // RFC 8314 §3.3: TLS first, then the SMTP greeting.
        let (tls, info) = handshake(shared, stream).await?;
        return serve_tls(tls, info, session).await;
    }
    let mut conn = Conn::new(stream);
    if kind == ListenerKind::Mx
        && !options.early_talker_delay.is_zero()
        && !pre_greeting(&mut conn, session, shared, options.early_talker_delay).await?
    {
        return Ok(Exit::Closed);
    }
    conn.send(&session.greeting());
    match session.run(&mut conn).await? {
        Exit::StartTls => {
            // RFC 3207 §4.2 / CVE-2011-0411: bytes pipelined after STARTTLS
            // arrived in plaintext; they are dropped with the buffer.
            let (raw, discarded) = conn.into_inner();
            if discarded > 0 {
                metrics::counter!("smtp_in_starttls_discarded_total").increment(1);
                tracing::warn!(
                    discarded,
                    "discarded plaintext bytes pipelined after STARTTLS"
                );
            }
            let (tls, info) = handshake(shared, raw).await?;
            serve_tls(tls, info, session).await
        }
        exit => Ok(exit),
    }
}

/// The MX pre-greeting pause, done as Postfix's postscreen does it: a
/// client IP with a current `greet_pass` mark (one `Guard.CheckMark`, short
/// deadline) is greeted at once; any other waits `delay`, and one that
/// talks during it is refused. A client that waited is marked at its first
/// accepted MAIL (see `Session::mail`), and so is a marked one whose mark
/// is past half its life, so busy relays are never paused again while
/// they behave. A store error means "not marked": the pause applies.
/// Returns false when the client was refused.
async fn pre_greeting<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    shared: &Shared,
    delay: Duration,
) -> Result<bool, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ttl = shared.limits.greet_pass_ttl;
    if !ttl.is_zero() {
        let key = guard::ip_key(session.peer.ip());
        if let Mark::Set(remaining) = shared
            .guard
            .check_mark(guard::GREET_PASS, &key, session.sid())
            .await
        {
            metrics::counter!("smtp_in_greet_pass_total", "result" => "marked").increment(1);
            if remaining < ttl / 2 {
                session.set_greet_pass(GreetPass::Due);
            }
            return Ok(true);
        }
    }
    match conn.fill(delay).await {
        Err(ConnError::Timeout) => {
            metrics::counter!("smtp_in_greet_pass_total", "result" => "waited").increment(1);
            if !ttl.is_zero() {
                session.set_greet_pass(GreetPass::Due);
            }
            Ok(true)
        }
        Ok(_) => {
            metrics::counter!("smtp_in_sessions_closed_total", "reason" => "early_talker")
                .increment(1);
            tracing::info!("early talker refused");
            conn.send(&codes::early_talker());
            conn.close().await;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn handshake<S>(
    shared: &Shared,
    stream: S,
) -> Result<(TlsStream<S>, service_kit::TlsInfo), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let tls = shared
        .tls
        .as_ref()
        .ok_or_else(|| ConnError::Io(std::io::Error::other("TLS not configured")))?;
    match tls.accept(stream).await {
        Ok((tls, info)) => Ok((tls, info)),
        Err(service_kit::HandshakeError::Io(e)) => Err(ConnError::Io(e)),
        Err(service_kit::HandshakeError::Timeout) => Err(ConnError::Timeout),
    }
}

async fn serve_tls<S>(
    tls: TlsStream<S>,
    negotiated: service_kit::TlsInfo,
    session: &mut Session,
) -> Result<Exit, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let info = TlsInfo {
        version: negotiated.version,
        cipher: negotiated.cipher,
    };
    tracing::info!(version = %info.version, cipher = %info.cipher, "TLS established");
    let implicit = session_needs_greeting(session);
    session.tls_started(info);
    let mut conn = Conn::new(tls);
    if implicit {
        conn.send(&session.greeting());
    }
    session.run(&mut conn).await
}

/// On port 465 the greeting comes after the handshake; after STARTTLS there
/// is no new greeting (RFC 3207 §4.2: the client sends EHLO).
fn session_needs_greeting(session: &Session) -> bool {
    session.kind() == ListenerKind::Submissions
}
