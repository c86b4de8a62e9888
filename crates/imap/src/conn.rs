//! Listeners, connection limits, implicit TLS (port 993, RFC 8314) and the
//! STARTTLS swap (RFC 9051 §6.2.1).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::io::Io;
use crate::response::{Code, Status};
use crate::session::{Exit, Session, Shared};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connection limits shared by both listeners (total and per client IP).
pub type Limits = service_kit::ConnLimits;

/// Everything a connection needs.
#[derive(Clone)]
pub struct Server {
    pub shared: Arc<Shared>,
    pub acceptor: Option<TlsAcceptor>,
    pub limits: Arc<Limits>,
}

/// A short random session id for logs, the greeting and the store.
#[must_use]
pub fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Accepts connections until shutdown; sessions get the BYE themselves.
pub async fn accept_loop(
    server: Server,
    listener: TcpListener,
    implicit_tls: bool,
    shutdown: Shutdown,
) {
    let sd = shutdown.clone();
    service_kit::accept_loop(
        listener,
        shutdown,
        Duration::from_secs(10),
        move |tcp, peer| handle_tcp(server.clone(), tcp, peer, implicit_tls, sd.clone()),
    )
    .await;
}

async fn handle_tcp(
    server: Server,
    mut tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shutdown: Shutdown,
) {
    let Ok(slot) = server.limits.admit(peer.ip()) else {
        metrics::counter!("imap_connections_refused_total").increment(1);
        if !implicit_tls {
            let bye = Status::bye("Too many connections, try again later")
                .with(Code::Unavailable)
                .encode(None);
            let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&bye)).await;
        }
        return;
    };
    metrics::counter!("imap_connections_total", "tls" => if implicit_tls { "implicit" } else { "plain" }).increment(1);
    let sid = new_session_id();
    let span = tracing::info_span!("imap", sid = %sid, peer = %peer, tls = implicit_tls);
    async move {
        tracing::debug!("connected");
        if let Err(e) =
            serve_connection(&server, tcp, peer.ip(), sid, implicit_tls, &shutdown).await
        {
            tracing::debug!(error = %e, "connection ended with error");
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
    drop(slot);
}

/// Runs one connection: optional implicit TLS, the session, and the
/// STARTTLS swap. Generic, so tests drive it over `tokio::io::duplex`.
///
/// # Errors
/// TLS handshake failures and I/O errors.
pub async fn serve_connection<S>(
    server: &Server,
    stream: S,
    peer: IpAddr,
    sid: String,
    implicit_tls: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if implicit_tls {
        let acceptor = server
            .acceptor
            .clone()
            .context("no TLS configured for implicit TLS")?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let mut session = Session::new(server.shared.clone(), sid, peer, true);
        let mut io = Io::new(tls);
        session.serve(&mut io, true, shutdown).await?;
        return Ok(());
    }
    let mut session = Session::new(server.shared.clone(), sid, peer, false);
    let mut io = Io::new(stream);
    match session.serve(&mut io, true, shutdown).await? {
        Exit::Closed => Ok(()),
        Exit::StartTls => {
            let acceptor = server
                .acceptor
                .clone()
                .context("STARTTLS without TLS configuration")?;
            // The session discarded every byte buffered before this point:
            // the handshake reads fresh from the socket.
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io.into_inner()))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            session.tls_established();
            let mut io = Io::new(tls);
            session.serve(&mut io, false, shutdown).await?;
            Ok(())
        }
    }
}
