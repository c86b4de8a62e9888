//! The gRPC server: binds the listeners, wires the four services behind the
//! token check, runs the janitor, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mailstore_api::pb;
use service_kit::{HealthServer, Shutdown};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{Store, migrate};
use crate::hashing::{AuthCache, HashPool};
use crate::{accounts, auth, dmarc, guard, janitor, mailboxes, mta_sts, notify, queue, tlsrpt};

/// How long in-flight calls may run after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A store bound to its sockets, ready to serve.
pub struct Server {
    grpc: TcpListener,
    health: HealthServer,
    autoconfig: Option<TcpListener>,
    store: Arc<Store>,
}

impl Server {
    /// Connects to the database, migrates, and binds the listeners.
    ///
    /// # Errors
    /// On database, migration or bind failures.
    pub async fn bind(mut config: Config) -> anyhow::Result<Self> {
        config.load_secret_files().map_err(anyhow::Error::msg)?;
        config.validate().map_err(anyhow::Error::msg)?;
        // Unreadable TLS files fail the start, not the first connection.
        config.grpc_tls().map_err(anyhow::Error::msg)?;
        if config.admin_token.is_none() {
            tracing::warn!(
                "no --admin-token (EPISTOLE_STORE_ADMIN_TOKEN): administrative RPCs (users, domains, aliases, queue admin) are refused"
            );
        }
        let hasher = HashPool::start(config.hash_threads, config.hash_queue)
            .context("start password hashing threads")?;
        let auth_cache = AuthCache::new(Duration::from_secs(u64::from(config.auth_cache_ttl_secs)));
        let pool = crate::db::pool_with_password(
            &config.database_url,
            config.db_connections,
            config.database_password().map_err(anyhow::Error::msg)?,
        )?;
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
                sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
                    .fetch_one(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("database: {e}"))
            })
        });
        let health = HealthServer::bind(config.http_listen, readiness)
            .await
            .with_context(|| format!("bind HTTP listener {}", config.http_listen))?;
        let autoconfig = match config.autoconfig_listen {
            Some(addr) => Some(
                crate::autoconfig::bind(addr)
                    .await
                    .with_context(|| format!("bind autoconfig listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            health,
            autoconfig,
            store: Arc::new(Store {
                pool,
                config,
                hub,
                hasher,
                auth_cache,
            }),
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

    /// The bound autoconfig address, when `--autoconfig-listen` is set.
    #[must_use]
    pub fn autoconfig_addr(&self) -> Option<SocketAddr> {
        self.autoconfig.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// # Errors
    /// On a fatal transport error.
    pub async fn serve(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let store = self.store;
        let auth = auth::TokenCheck::new(&store.config.token, store.config.admin_token.as_deref());
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
            auth.clone(),
        );
        let guard = pb::guard_server::GuardServer::with_interceptor(
            guard::GuardSvc::new(store.clone()),
            auth.clone(),
        );
        let tls_reports = pb::tls_reports_server::TlsReportsServer::with_interceptor(
            tlsrpt::TlsReportsSvc::new(store.clone()),
            auth.clone(),
        );
        let dmarc_reports = pb::dmarc_reports_server::DmarcReportsServer::with_interceptor(
            dmarc::DmarcReportsSvc::new(store.clone()),
            auth.clone(),
        );
        let mta_sts = pb::mta_sts_cache_server::MtaStsCacheServer::with_interceptor(
            mta_sts::MtaStsSvc::new(store.clone()),
            auth,
        );
        let janitor = tokio::spawn(janitor::janitor(store.clone(), shutdown.clone()));
        let gauges = tokio::spawn(janitor::queue_gauges(store.clone(), shutdown.clone()));
        let health = tokio::spawn(self.health.serve(shutdown.clone()));
        let autoconfig = self.autoconfig.map(|l| {
            tokio::spawn(crate::autoconfig::serve(
                l,
                store.pool.clone(),
                store.config.mail_host.clone().unwrap_or_default(),
                store.config.mta_sts_mode.clone(),
                shutdown.clone(),
            ))
        });
        tracing::info!(addr = ?self.grpc.local_addr().ok(), "mailbox-store serving");
        // TCP_NODELAY on every accepted connection: without it, small
        // streamed responses wait ~40 ms for Nagle + delayed ACK.
        // (Server::tcp_nodelay does not apply to serve_with_incoming.)
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let sd = shutdown.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = store.config.grpc_tls().map_err(anyhow::Error::msg)? {
            builder = builder.tls_config(tls).context("gRPC TLS")?;
        }
        let server = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // OpenTelemetry: each call a span, continuing the caller's trace.
            .trace_fn(service_kit::otel::server_span)
            .add_service(accounts)
            .add_service(mailboxes)
            .add_service(queue)
            .add_service(guard)
            .add_service(tls_reports)
            .add_service(dmarc_reports)
            .add_service(mta_sts)
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
        gauges.abort();
        let _ = health.await;
        if let Some(a) = autoconfig {
            let _ = a.await;
        }
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
    let autoconfig = server
        .autoconfig_addr()
        .map(|a| format!(" autoconfig={a}"))
        .unwrap_or_default();
    println!(
        "listening grpc={} http={}{autoconfig}",
        server.grpc_addr()?,
        server.http_addr()?
    );
    server.serve(shutdown).await
}
