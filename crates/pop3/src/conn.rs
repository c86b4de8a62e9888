//! pop3 on the shared listener (`service_kit::listen`): the refusal over
//! the limits, implicit TLS on port 995 (RFC 8314 §3.3) and the STLS swap
//! (RFC 2595 §4). Binding, limits, spans and drain are the listener's.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use service_kit::{
    BoxFuture, ClientStream, ConnectionInfo, Protocol, Refused, Security, Shutdown, Tls,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proto::{Reply, RespCode};
use crate::session::{Outcome, Session, Shared};

/// The reply refusing a connection over the limits (RFC 2449 SYS/TEMP).
fn refusal(why: Refused) -> Reply {
    match why {
        Refused::Total => {
            Reply::err_code(RespCode::SysTemp, "Too many connections, try again later")
        }
        Refused::PerIp => Reply::err_code(
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
    pub acceptor: Option<Tls>,
}

impl Protocol for Server {
    fn name(&self) -> &'static str {
        "pop3"
    }

    fn refusal(&self, why: Refused) -> Vec<u8> {
        refusal(why).to_bytes()
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
        let (tls, _) = tls.accept(io).await?;
        let mut session = Session::new(server.shared.clone(), sid, peer, true);
        session.serve(tls, true, shutdown).await?;
        return Ok(());
    }
    let mut session = Session::new(server.shared.clone(), sid, peer, false);
    match session.serve(io, true, shutdown).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(io) => {
            let tls = server
                .acceptor
                .as_ref()
                .context("STLS without TLS configuration")?;
            // The session discarded every byte read before this point; the
            // handshake reads fresh from the socket (RFC 2595 §4).
            let (tls, _) = tls.accept(io).await?;
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
            refusal(Refused::PerIp).to_bytes(),
            b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
        );
        assert_eq!(
            refusal(Refused::Total).to_bytes(),
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        );
    }
}
