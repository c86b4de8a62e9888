//! `/healthz` (the process lives), `/readyz` (its dependencies answer and its
//! listeners are up) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::Shutdown;

/// A readiness probe: resolves to `Ok(())` when the service can do its work.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The health endpoint of one service, bound but not yet serving.
pub struct HealthServer {
    listener: TcpListener,
    readiness: Readiness,
}

impl HealthServer {
    /// Binds the health endpoint.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            readiness,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until shutdown.
    ///
    /// # Errors
    /// On a listener failure.
    pub async fn serve(self, shutdown: Shutdown) -> std::io::Result<()> {
        let handle = crate::metrics_handle();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route(
                "/metrics",
                get(move || {
                    let h = handle.clone();
                    async move { h.render() }
                }),
            )
            .with_state(self.readiness);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, String) {
    match ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
