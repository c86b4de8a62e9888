//! # mailbox-store
//!
//! The only owner of Epistole's state: domains, users, aliases, mailboxes,
//! messages, content-addressed blobs, the inbound and outbound mail queues and
//! the per-message event log. A tonic gRPC server (API in
//! `proto/mailstore/v1`, package `mailstore.v1`) over PostgreSQL via sqlx;
//! migrations are embedded and applied on start.
//!
//! Stateless itself: N replicas can serve one database. Each replica holds one
//! `LISTEN` connection and fans notifications out to `Watch` streams and to
//! queue workers waiting in `Lease`.
//!
//! Durability: every mutating RPC answers only after its transaction has
//! committed (PostgreSQL's synchronous commit), so an acknowledged message is
//! on disk.

pub mod accounts;
pub mod auth;
pub mod error;
pub mod flags;
pub mod mailboxes;
pub mod names;
pub mod notify;
pub mod queue;
pub mod search;
pub mod structure;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mailstore_api::pb;
use service_kit::{HealthServer, Shutdown};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;

pub use error::{Result, StoreError};

/// How long in-flight calls may run after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Embedded migrations (`crates/mailbox-store/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// mailbox-store configuration: every option is a flag and an environment variable.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// gRPC listen address.
    #[arg(long, env = "EPISTOLE_STORE_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "EPISTOLE_STORE_HTTP", default_value = "127.0.0.1:7001")]
    pub http_listen: SocketAddr,
    /// Shared secret every client must present as `authorization: Bearer …`.
    #[arg(long, env = "EPISTOLE_STORE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Largest message accepted by Append and Enqueue, in bytes.
    #[arg(long, env = "EPISTOLE_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Database connections in the pool.
    #[arg(long, env = "EPISTOLE_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Failed logins per client IP per minute before Authenticate answers THROTTLED.
    #[arg(long, env = "EPISTOLE_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    pub auth_failure_limit: u32,
    /// Apply migrations on start.
    #[arg(long, env = "EPISTOLE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("max_message_size", &self.max_message_size)
            .field("db_connections", &self.db_connections)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with defaults for everything but the database and token.
    #[must_use]
    pub fn new(database_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
            max_message_size: 64 * 1024 * 1024,
            db_connections: 16,
            auth_failure_limit: 20,
            migrate: true,
        }
    }
}

/// Shared state of one store process.
pub struct Store {
    pub pool: PgPool,
    pub config: Config,
    pub hub: notify::Hub,
}

/// Connects a pool to the database.
///
/// # Errors
/// When the URL is malformed (connections are made lazily).
pub fn pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url.parse().context("parse database URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts))
}

/// Applies the embedded migrations (also used by `mailctl migrate` via the store).
///
/// # Errors
/// When the database is unreachable or a migration fails.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("apply migrations")?;
    Ok(())
}

/// A store bound to its sockets, ready to serve.
pub struct Server {
    grpc: TcpListener,
    health: HealthServer,
    store: Arc<Store>,
}

impl Server {
    /// Connects to the database, migrates, and binds the listeners.
    ///
    /// # Errors
    /// On database, migration or bind failures.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let pool = pool(&config.database_url, config.db_connections)?;
        if config.migrate {
            migrate(&pool).await?;
        }
        let hub = notify::Hub::start(pool.clone());
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind gRPC listener {}", config.listen))?;
        let ready_pool = pool.clone();
        let readiness: service_kit::Readiness = Arc::new(move || {
            let pool = ready_pool.clone();
            Box::pin(async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("database: {e}"))
            })
        });
        let health = HealthServer::bind(config.http_listen, readiness)
            .await
            .with_context(|| format!("bind HTTP listener {}", config.http_listen))?;
        Ok(Self {
            grpc,
            health,
            store: Arc::new(Store { pool, config, hub }),
        })
    }

    /// The bound gRPC address.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.health.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// # Errors
    /// On a fatal transport error.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let store = self.store;
        let auth = auth::TokenCheck::new(&store.config.token);
        let max = mailstore_api::client::MAX_MESSAGE_SIZE;
        let accounts = pb::accounts_server::AccountsServer::with_interceptor(
            accounts::AccountsSvc::new(store.clone()),
            auth.clone(),
        );
        let mailboxes = tonic::service::interceptor::InterceptedService::new(
            pb::mailboxes_server::MailboxesServer::new(mailboxes::MailboxesSvc::new(store.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth.clone(),
        );
        let queue = tonic::service::interceptor::InterceptedService::new(
            pb::queue_server::QueueServer::new(queue::QueueSvc::new(store.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth,
        );
        let janitor = tokio::spawn(queue::janitor(store.clone(), shutdown.clone()));
        let health = tokio::spawn(self.health.serve(shutdown.clone()));
        tracing::info!(addr = ?self.grpc.local_addr().ok(), "mailbox-store serving");
        // TCP_NODELAY on every accepted connection: without it, small
        // streamed responses wait ~40 ms for Nagle + delayed ACK.
        // (Server::tcp_nodelay does not apply to serve_with_incoming.)
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let sd = shutdown.clone();
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(accounts)
            .add_service(mailboxes)
            .add_service(queue)
            .serve_with_incoming_shutdown(incoming, async move { sd.cancelled().await });
        // On shutdown, in-flight calls get a grace period; long-lived Watch
        // and Lease streams would otherwise hold the process forever.
        let grace = shutdown.clone();
        let result = tokio::select! {
            r = server => r,
            () = async move {
                grace.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::info!("grace period over; closing remaining streams");
                Ok(())
            }
        };
        shutdown.cancel();
        janitor.abort();
        let _ = health.await;
        store.hub.stop();
        result.context("gRPC server")
    }
}

/// Runs the store until shutdown (the binary's entry point).
///
/// # Errors
/// On start-up or fatal serving errors.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    println!(
        "listening grpc={} http={}",
        server.grpc_addr()?,
        server.http_addr()?
    );
    server.serve(shutdown).await
}
