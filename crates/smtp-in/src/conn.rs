//! One connection from accept to close: the span with session id and peer,
//! the early-talker check, implicit TLS (port 465) and the STARTTLS switch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tracing::Instrument as _;

use crate::io::{Conn, ConnError};
use crate::proto::codes;
use crate::session::{Exit, ListenerKind, Session, Shared, TlsInfo, new_session_id};

/// A TLS handshake must finish within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-connection options that are not session rules.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// MX only: wait this long before the greeting; a client that talks
    /// first is refused (ATTACKS.md §5). Zero disables the check.
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
    async move {
        tracing::info!("connected");
        let mut session = Session::new(shared.clone(), kind, peer, sid, shutdown);
        let result = serve(stream, &mut session, &shared, kind, options).await;
        match result {
            Ok(exit) => tracing::info!(?exit, "disconnected"),
            Err(e) => tracing::info!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await;
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
        let tls = handshake(shared, stream).await?;
        return serve_tls(tls, session).await;
    }
    let mut conn = Conn::new(stream);
    if kind == ListenerKind::Mx && !options.early_talker_delay.is_zero() {
        match conn.fill(options.early_talker_delay).await {
            Err(ConnError::Timeout) => {}
            Ok(_) => {
                metrics::counter!("smtp_in_sessions_closed_total", "reason" => "early_talker")
                    .increment(1);
                tracing::info!("early talker refused");
                conn.send(&codes::early_talker());
                conn.close().await;
                return Ok(Exit::Closed);
            }
            Err(e) => return Err(e),
        }
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
            let tls = handshake(shared, raw).await?;
            serve_tls(tls, session).await
        }
        exit => Ok(exit),
    }
}

async fn handshake<S>(shared: &Shared, stream: S) -> Result<TlsStream<S>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let acceptor = shared
        .tls
        .clone()
        .ok_or_else(|| ConnError::Io(std::io::Error::other("TLS not configured")))?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            metrics::counter!("smtp_in_tls_handshake_failures_total").increment(1);
            Err(ConnError::Io(e))
        }
        Err(_) => Err(ConnError::Timeout),
    }
}

async fn serve_tls<S>(tls: TlsStream<S>, session: &mut Session) -> Result<Exit, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let info = {
        let (_, server) = tls.get_ref();
        TlsInfo {
            version: server
                .protocol_version()
                .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
            cipher: server
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
        }
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
