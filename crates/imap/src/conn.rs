//! imap on the shared listener (`service_kit::listen`): the refusal over
//! the limits, implicit TLS on port 993 (RFC 8314 §3.3) and the STARTTLS
//! swap (RFC 9051 §6.2.1). Binding, limits, spans and drain are the
//! listener's.

use std::net::IpAddr;
use std::sync::Arc;

use service_kit::starttls::{TlsProtocol, TlsSession};
use service_kit::{Refused, Shutdown, Tls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

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

impl TlsProtocol for Server {
    type Session = Session;

    fn name(&self) -> &'static str {
        "imap"
    }

    fn refusal(&self, _why: Refused) -> Vec<u8> {
        Status::bye("Too many connections, try again later")
            .with(Code::Unavailable)
            .encode(None)
    }

    fn session(&self, sid: String, peer: IpAddr) -> Session {
        Session::new(self.shared.clone(), sid, peer, false)
    }

    fn tls(&self) -> Option<&Tls> {
        self.acceptor.as_ref()
    }

    /// Per-IP connection counts are shared with the other replicas.
    fn store(&self) -> Option<mailstore_api::StoreClient> {
        Some(self.shared.store.clone())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> TlsSession<S> for Session {
    async fn serve_plain(&mut self, stream: S, shutdown: &Shutdown) -> anyhow::Result<Option<S>> {
        let mut io = Io::new(stream);
        Ok(match self.serve(&mut io, true, shutdown).await? {
            Exit::Closed => None,
            // Everything buffered before this point was discarded by the
            // session: the handshake reads fresh from the socket.
            Exit::StartTls => Some(io.into_inner()),
        })
    }

    async fn serve_tls(
        &mut self,
        stream: TlsStream<S>,
        greet: bool,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        self.serve(&mut Io::new(stream), greet, shutdown).await?;
        Ok(())
    }

    fn tls_established(&mut self) {
        Session::tls_established(self);
    }
}
