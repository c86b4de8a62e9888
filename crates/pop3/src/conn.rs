//! pop3 on the shared listener (`service_kit::listen`): the refusal over
//! the limits, implicit TLS on port 995 (RFC 8314 §3.3) and the STLS swap
//! (RFC 2595 §4). Binding, limits, spans and drain are the listener's.

use std::net::IpAddr;
use std::sync::Arc;

use service_kit::starttls::{TlsProtocol, TlsSession};
use service_kit::{Refused, Shutdown, Tls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

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

impl TlsProtocol for Server {
    type Session = Session;

    fn name(&self) -> &'static str {
        "pop3"
    }

    fn refusal(&self, why: Refused) -> Vec<u8> {
        refusal(why).to_bytes()
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
    async fn serve_plain(&mut self, io: S, shutdown: &Shutdown) -> anyhow::Result<Option<S>> {
        Ok(match self.serve(io, true, shutdown).await? {
            Outcome::Closed => None,
            // The session discarded every byte read before this point; the
            // handshake reads fresh from the socket (RFC 2595 §4).
            Outcome::StartTls(io) => Some(io),
        })
    }

    async fn serve_tls(
        &mut self,
        io: TlsStream<S>,
        greet: bool,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        self.serve(io, greet, shutdown).await?;
        Ok(())
    }

    fn tls_established(&mut self) {
        Session::tls_established(self);
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
