//! A protocol service's start-up, once: bind its endpoints and its health
//! endpoint, announce the addresses, serve until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::listen::{self, ConnLimits, Endpoint, Protocol, Security};
use crate::proxy::ProxyPolicy;
use crate::{HealthServer, Readiness, Shutdown};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen option is malformed or its address cannot be bound.
    #[error("{0}")]
    Bind(String),
    /// An implicit-TLS endpoint without a certificate.
    #[error(
        "the {0} listener needs TLS: give --tls-cert/--tls-key (or --tls-self-signed for development), or turn it off"
    )]
    NoTls(&'static str),
    /// No endpoint is configured.
    #[error("no listener configured")]
    NoListener,
    /// The health endpoint cannot be bound.
    #[error("bind health endpoint {0}: {1}")]
    Health(SocketAddr, std::io::Error),
}

/// A service's endpoints and health endpoint, bound but not yet serving.
pub struct Service {
    endpoints: Vec<Endpoint>,
    health: Option<HealthServer>,
}

impl Service {
    /// Binds every endpoint (`name`, security, listen option as in
    /// [`listen::parse_listen`]) and the health endpoint (`http_listen`,
    /// `off` for none). An implicit-TLS endpoint that is on while no TLS is
    /// configured refuses the start (before, imap and pop3 only warned and
    /// skipped it while smtp-in refused: the stricter rule now holds for
    /// all).
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn bind(
        endpoints: &[(&'static str, Security, &str)],
        tls_available: bool,
        http_listen: &str,
        readiness: Readiness,
    ) -> Result<Self, StartError> {
        let mut bound = Vec::new();
        for (name, security, listen) in endpoints {
            let Some(endpoint) =
                Endpoint::bind(name, *security, listen).map_err(StartError::Bind)?
            else {
                continue;
            };
            if *security == Security::ImplicitTls && !tls_available {
                return Err(StartError::NoTls(name));
            }
            bound.push(endpoint);
        }
        if bound.is_empty() {
            return Err(StartError::NoListener);
        }
        let health = match listen::parse_listen(http_listen)
            .map_err(StartError::Bind)?
            .first()
        {
            Some(addr) => Some(
                HealthServer::bind(*addr, readiness)
                    .await
                    .map_err(|e| StartError::Health(*addr, e))?,
            ),
            None => None,
        };
        Ok(Self {
            endpoints: bound,
            health,
        })
    }

    /// Every bound address with its endpoint name; the health endpoint is
    /// `http`.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out: Vec<(&'static str, SocketAddr)> = self
            .endpoints
            .iter()
            .flat_map(|e| e.local_addrs().into_iter().map(move |a| (e.name, a)))
            .collect();
        if let Some(addr) = self.health.as_ref().and_then(|h| h.local_addr().ok()) {
            out.push(("http", addr));
        }
        out
    }

    /// Announces the addresses (`listening NAME=ADDR` on stdout), then
    /// serves every endpoint with `protocol` and the health endpoint until
    /// `shutdown`, and drains sessions for up to `drain`.
    ///
    /// # Errors
    /// None after a successful bind; kept for future listeners.
    pub async fn serve<P: Protocol>(
        self,
        protocol: Arc<P>,
        limits: Arc<ConnLimits>,
        proxy: ProxyPolicy,
        shutdown: Shutdown,
        drain: Duration,
    ) -> anyhow::Result<()> {
        listen::announce(self.local_addrs());
        let health = self.health.map(|health| {
            let s = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = health.serve(s).await {
                    tracing::warn!(error = %e, "health endpoint failed");
                }
            })
        });
        listen::serve(
            protocol,
            self.endpoints,
            limits,
            Arc::new(proxy),
            shutdown,
            drain,
        )
        .await;
        if let Some(h) = health {
            let _ = h.await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Readiness {
        Arc::new(|| Box::pin(async { Ok(()) }))
    }

    /// An implicit-TLS endpoint that is on without a certificate refuses
    /// the start; off, or with TLS, it binds.
    #[tokio::test]
    async fn implicit_tls_needs_a_certificate() {
        let endpoints = [
            ("plain", Security::Plain, "127.0.0.1:0"),
            ("tls", Security::ImplicitTls, "127.0.0.1:0"),
        ];
        let err = Service::bind(&endpoints, false, "off", ready()).await.err();
        assert!(matches!(err, Some(StartError::NoTls("tls"))), "{err:?}");
        let ok = Service::bind(&endpoints, true, "off", ready()).await;
        assert_eq!(ok.expect("binds").local_addrs().len(), 2);
        let off = [
            ("plain", Security::Plain, "127.0.0.1:0"),
            ("tls", Security::ImplicitTls, "off"),
        ];
        assert!(Service::bind(&off, false, "off", ready()).await.is_ok());
        let none = [("plain", Security::Plain, "off")];
        assert!(matches!(
            Service::bind(&none, false, "off", ready()).await.err(),
            Some(StartError::NoListener)
        ));
    }
}
