//! The life of a connection that may turn to TLS, once for every protocol:
//! implicit TLS from the first byte (RFC 8314 §3.3), or a plain session that
//! asks to upgrade (SMTP STARTTLS, RFC 3207; IMAP STARTTLS, RFC 9051
//! §6.2.1; POP3 STLS, RFC 2595 §4). The session discards whatever it had
//! buffered before it hands the stream back, so the handshake reads fresh
//! from the socket and nothing pipelined in plain text is obeyed inside TLS.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::{Shutdown, Tls};

/// A protocol session as [`run`] drives it.
pub trait TlsSession<S: AsyncRead + AsyncWrite + Unpin + Send>: Send {
    /// Serves on the plain stream (greeting first). `Some(stream)` when the
    /// client asked for TLS and was told to go ahead; `None` when the
    /// session ended.
    fn serve_plain(
        &mut self,
        stream: S,
        shutdown: &Shutdown,
    ) -> impl Future<Output = anyhow::Result<Option<S>>> + Send;

    /// Serves inside TLS; `greet`: implicit TLS (the greeting comes after
    /// the handshake; after STARTTLS there is none).
    fn serve_tls(
        &mut self,
        stream: TlsStream<S>,
        greet: bool,
        shutdown: &Shutdown,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The handshake finished: from now on the session is inside TLS.
    fn tls_established(&mut self);
}

/// Runs `session` on `stream`: TLS first when `implicit`, else plain with
/// at most one upgrade.
///
/// # Errors
/// No TLS configured for a TLS request, a failed handshake, or the
/// session's own fatal errors.
pub async fn run<S, T>(
    session: &mut T,
    tls: Option<&Tls>,
    stream: S,
    implicit: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    T: TlsSession<S>,
{
    // Each stage is boxed: a connection's task then holds only the stage
    // it is in (an idle IMAP session 10,000 times over held the plain
    // stage's state machine, the handshake's and the TLS stage's side by
    // side; docs/benchmarks.md "Idle connections").
    let stream = if implicit {
        stream
    } else {
        match Box::pin(session.serve_plain(stream, shutdown)).await? {
            Some(raw) => raw,
            None => return Ok(()),
        }
    };
    let tls = tls.ok_or_else(|| anyhow::anyhow!("TLS requested but not configured"))?;
    let (stream, _) = Box::pin(tls.accept(stream)).await?;
    session.tls_established();
    Box::pin(session.serve_tls(stream, implicit, shutdown)).await
}

/// A protocol whose connections are one [`TlsSession`] each: everything
/// the shared listener needs from imap and pop3 (smtp-in, with its
/// pre-greeting pause, implements [`crate::Protocol`] itself).
pub trait TlsProtocol: Send + Sync + 'static {
    /// The session type.
    type Session: Send;

    /// As [`crate::Protocol::name`].
    fn name(&self) -> &'static str;

    /// As [`crate::Protocol::refusal`].
    fn refusal(&self, why: crate::Refused) -> Vec<u8>;

    /// A new session for a client at `peer`, with connection id `sid`.
    fn session(&self, sid: String, peer: std::net::IpAddr) -> Self::Session;

    /// TLS for implicit TLS and the upgrade, if configured.
    fn tls(&self) -> Option<&Tls>;

    /// As [`crate::Protocol::store`].
    fn store(&self) -> Option<mailstore_api::StoreClient> {
        None
    }
}

/// Serves one connection of `protocol` on `stream` (a socket, or a pipe in
/// tests): a new session, then [`run`].
///
/// # Errors
/// As [`run`].
pub async fn serve_connection<P, S>(
    protocol: &P,
    stream: S,
    peer: std::net::IpAddr,
    sid: String,
    implicit: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<()>
where
    P: TlsProtocol,
    P::Session: TlsSession<S>,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = protocol.session(sid, peer);
    run(&mut session, protocol.tls(), stream, implicit, shutdown).await
}

impl<P> crate::Protocol for P
where
    P: TlsProtocol,
    P::Session: TlsSession<crate::ClientStream>,
{
    fn name(&self) -> &'static str {
        TlsProtocol::name(self)
    }

    fn refusal(&self, why: crate::Refused) -> Vec<u8> {
        TlsProtocol::refusal(self, why)
    }

    fn store(&self) -> Option<mailstore_api::StoreClient> {
        TlsProtocol::store(self)
    }

    fn serve(
        self: std::sync::Arc<Self>,
        stream: crate::ClientStream,
        info: crate::ConnectionInfo,
        shutdown: Shutdown,
    ) -> crate::BoxFuture {
        Box::pin(async move {
            let implicit = info.security == crate::Security::ImplicitTls;
            let peer = info.peer.ip();
            if let Err(e) =
                serve_connection(&*self, stream, peer, info.id, implicit, &shutdown).await
            {
                tracing::debug!(error = %e, "connection ended with error");
            }
        })
    }
}
