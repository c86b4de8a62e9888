//! Connections: TLS configuration, the accept loops for port 110 (STLS,
//! RFC 2595 §4) and 995 (implicit TLS, RFC 8314 §3.3), the STLS swap, and the
//! connection limits (total and per client IP).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::proto::{Reply, RespCode};
use crate::session::{Outcome, Session, Shared, new_session_id};

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the rustls server configuration (shared construction in
/// `tls-kit`): PEM files, or a freshly generated self-signed certificate when
/// `self_signed` is set explicitly. `Ok(None)` when neither is configured:
/// then no STLS and no port 995.
///
/// # Errors
/// Unreadable or invalid PEM files; certificate/key mismatch.
pub fn tls_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    self_signed: bool,
    hostname: &str,
) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    Ok(tls_kit::configure(cert, key, self_signed, hostname)?)
}

/// Connection limits shared by both listeners (total and per client IP).
pub type Limits = service_kit::ConnLimits;

/// The reply refusing a connection over the limits (RFC 2449 SYS/TEMP).
fn refusal(why: service_kit::Refused) -> Reply {
    match why {
        service_kit::Refused::Total => {
            Reply::err_code(RespCode::SysTemp, "Too many connections, try again later")
        }
        service_kit::Refused::PerIp => Reply::err_code(
            RespCode::SysTemp,
            "Too many connections from your address, try again later",
        ),
    }
}

/// Everything a connection needs.
#[derive(Clone)]
pub struct Server {
    /// Session configuration and store.
    pub shared: Arc<Shared>,
    /// TLS for STLS and port 995.
    pub acceptor: Option<TlsAcceptor>,
    /// Connection limits.
    pub limits: Arc<Limits>,
}

/// Accepts connections until shutdown. `implicit_tls`: port 995 behaviour.
/// Sessions got their goodbye from the shutdown token; they get a moment.
pub async fn accept_loop(
    server: Server,
    listener: TcpListener,
    implicit_tls: bool,
    shutdown: CancellationToken,
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
    shutdown: CancellationToken,
) {
    let slot = match server.limits.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let reply = refusal(why);
            metrics::counter!("pop3_connections_refused_total").increment(1);
            if !implicit_tls {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&reply.to_bytes()))
                        .await;
            }
            return;
        }
    };
    metrics::counter!("pop3_connections_total").increment(1);
    let sid = new_session_id();
    let span = tracing::info_span!("pop3", sid = %sid, peer = %peer, tls = implicit_tls);
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

/// Runs one connection: the optional implicit TLS handshake, the session,
/// and the STLS swap. Generic, so tests can drive it over `duplex`.
///
/// # Errors
/// TLS handshake failures and fatal session errors.
pub async fn serve_connection<S>(
    server: &Server,
    io: S,
    peer: IpAddr,
    sid: String,
    implicit_tls: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if implicit_tls {
        let acceptor = server
            .acceptor
            .clone()
            .context("no TLS configured for implicit TLS")?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let mut session = Session::new(server.shared.clone(), sid, peer, true);
        session.serve(tls, true, shutdown).await?;
        return Ok(());
    }
    let mut session = Session::new(server.shared.clone(), sid, peer, false);
    match session.serve(io, true, shutdown).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(io) => {
            let acceptor = server
                .acceptor
                .clone()
                .context("STLS without TLS configuration")?;
            // The session discarded every byte read before this point; the
            // handshake reads fresh from the socket (RFC 2595 §4).
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            session.tls_established();
            session.serve(tls, false, shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_limit() {
        assert_eq!(
            refusal(service_kit::Refused::PerIp).to_bytes(),
            b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
        );
        assert_eq!(
            refusal(service_kit::Refused::Total).to_bytes(),
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        );
    }

    #[test]
    fn tls_config_needs_both_files_and_self_signed_is_explicit() {
        assert!(
            tls_config(None, None, false, "localhost")
                .expect("ok")
                .is_none()
        );
        assert!(
            tls_config(None, None, true, "localhost")
                .expect("ok")
                .is_some()
        );
        assert!(tls_config(Some(Path::new("/nonexistent")), None, false, "x").is_err());
        assert!(
            tls_config(
                Some(Path::new("/nonexistent")),
                Some(Path::new("/nonexistent")),
                false,
                "x"
            )
            .is_err()
        );
    }
}
