//! imap on the shared listener (`service_kit::listen`): the refusal over
//! the limits, implicit TLS on port 993 (RFC 8314 §3.3) and the STARTTLS
//! swap (RFC 9051 §6.2.1). Binding, limits, spans and drain are the
//! listener's.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use service_kit::{
    BoxFuture, ClientStream, ConnectionInfo, Protocol, Refused, Security, Shutdown, Tls,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::response::{Code, Status};
use crate::session::{Exit, Session, Shared};

/// Everything a connection needs.
#[derive(Clone)]
pub struct Server {
    /// Session configuration and store.
    pub shared: Arc<Shared>,
    /// TLS for STARTTLS and port 993.
    pub acceptor: Option<Tls>,
}

/// A short random session id for logs, the greeting and the store.
#[must_use]
pub fn new_session_id() -> String {
    service_kit::new_connection_id()
}

impl Protocol for Server {
    fn name(&self) -> &'static str {
        "imap"
    }

    fn refusal(&self, _why: Refused) -> Vec<u8> {
        Status::bye("Too many connections, try again later")
            .with(Code::Unavailable)
            .encode(None)
    }

    fn serve(
        self: Arc<Self>,
        tcp: ClientStream,
        info: ConnectionInfo,
        shutdown: Shutdown,
    ) -> BoxFuture {
        Box::pin(async move {
            let implicit = info.security == Security::ImplicitTls;
            if let Err(e) =
                serve_connection(&self, tcp, info.peer.ip(), info.id, implicit, &shutdown).await
            {
                tracing::debug!(error = %e, "connection ended with error");
            }
        })
    }
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
        let tls = server
            .acceptor
            .as_ref()
            .context("no TLS configured for implicit TLS")?;
        let (tls, _) = tls.accept(stream).await?;
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
            let tls = server
                .acceptor
                .as_ref()
                .context("STARTTLS without TLS configuration")?;
            // The session discarded every byte buffered before this point:
            // the handshake reads fresh from the socket.
            let (tls, _) = tls.accept(io.into_inner()).await?;
            session.tls_established();
            let mut io = Io::new(tls);
            session.serve(&mut io, false, shutdown).await?;
            Ok(())
        }
    }
}
