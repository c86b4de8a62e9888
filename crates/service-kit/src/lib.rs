//! Shared plumbing for Epistole services: the flags that connect a service
//! to the store, tracing initialisation (human or JSON), one shutdown signal
//! fanned out to every task, and the small HTTP endpoint with `/healthz`,
//! `/readyz` and `/metrics` (Prometheus text format) each service exposes.

mod args;
pub mod dns;
pub mod http;
pub mod listen;
pub mod otel;
pub mod proxy;
mod service;
pub mod share;
pub mod shutdown;
mod srs;
pub mod starttls;

use std::future::Future;
use std::sync::OnceLock;

pub use {rustls, tls_kit};

pub use http::{HealthServer, Readiness};
pub use listen::{
    BoxFuture, ConnLimits, ConnSlot, ConnectionInfo, Endpoint, HandshakeError, Protocol, Refused,
    Security, Tls, TlsInfo, new_connection_id,
};
pub use proxy::{ClientStream, ProxyPolicy};
pub use service::{Service, StartError};
pub use shutdown::{Shutdown, shutdown_on_signals};
pub use srs::SrsArgs;

/// How a service reaches the store. Flattened into every service's config.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// gRPC URL of the mailbox-store, or a comma-separated list of replicas.
    /// Calls are balanced over every address the host names resolve to
    /// (re-resolved every 30 s, probed every second): name a headless
    /// Service to spread over all replicas.
    #[arg(
        long = "store-url",
        env = "EPISTOLE_STORE_URL",
        default_value = "http://127.0.0.1:7000"
    )]
    pub url: String,
    /// Shared secret sent as a bearer token on every store RPC.
    #[arg(
        long = "store-token",
        env = "EPISTOLE_STORE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// File holding the store token (a mounted secret), used when
    /// --store-token is not given.
    #[arg(long = "store-token-file", env = "EPISTOLE_STORE_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signs the store's certificate: turns on
    /// TLS to the store (the URLs must then be https://).
    #[arg(long = "store-ca", env = "EPISTOLE_STORE_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// This service's client certificate (PEM) for mutual TLS with a store
    /// started with --grpc-client-ca; needs --store-client-key.
    #[arg(long = "store-client-cert", env = "EPISTOLE_STORE_CLIENT_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --store-client-cert.
    #[arg(long = "store-client-key", env = "EPISTOLE_STORE_CLIENT_KEY")]
    pub client_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl StoreArgs {
    /// Store arguments with a token given directly (tests, tools).
    #[must_use]
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            token_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// TLS towards the store from `--store-ca` and, for mutual TLS,
    /// `--store-client-cert` / `--store-client-key` (read once, at start).
    ///
    /// # Errors
    /// A file cannot be read, or only one of certificate and key is given.
    pub fn tls(&self) -> Result<Option<mailstore_api::ClientTls>, mailstore_api::StoreClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                mailstore_api::StoreClientError::Tls(format!("read {}: {e}", p.display()))
            })
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(mailstore_api::StoreClientError::Tls(
                    "--store-client-cert and --store-client-key go together".into(),
                ));
            }
        };
        match &self.ca {
            Some(ca) => Ok(Some(mailstore_api::ClientTls {
                ca_pem: read(ca)?,
                identity,
            })),
            None if identity.is_some() => Err(mailstore_api::StoreClientError::Tls(
                "a client certificate needs --store-ca".into(),
            )),
            None => Ok(None),
        }
    }

    /// The token: `--store-token`, else the first line of
    /// `--store-token-file`. Never empty.
    ///
    /// # Errors
    /// Neither is given, the file cannot be read, or the token is empty.
    pub fn token(&self) -> Result<String, mailstore_api::StoreClientError> {
        if !self.token.is_empty() {
            return Ok(self.token.clone());
        }
        let Some(path) = &self.token_file else {
            return Err(mailstore_api::StoreClientError::NoToken);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            mailstore_api::StoreClientError::TokenFile(path.display().to_string(), e.to_string())
        })?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        if token.is_empty() {
            return Err(mailstore_api::StoreClientError::NoToken);
        }
        Ok(token)
    }

    /// A lazily connecting client for the store.
    ///
    /// # Errors
    /// On a malformed URL, or a missing or malformed token.
    pub fn client(&self) -> Result<mailstore_api::StoreClient, mailstore_api::StoreClientError> {
        mailstore_api::connect_tls(&self.url, &self.token()?, self.tls()?.as_ref())
    }
}

/// Logging flags shared by every binary.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: "text" for terminals, "json" for containers.
    #[arg(
        long = "log-format",
        env = "EPISTOLE_LOG_FORMAT",
        default_value = "text"
    )]
    pub format: String,
    /// Filter in tracing-subscriber EnvFilter syntax (RUST_LOG is also read).
    #[arg(long = "log", env = "EPISTOLE_LOG", default_value = "info")]
    pub filter: String,
    /// OpenTelemetry: export tracing spans over OTLP/gRPC to this collector
    /// (`http://collector:4317`); off when unset. The standard OTEL_BSP_*
    /// variables tune the batching.
    #[arg(long = "otlp-endpoint", env = "EPISTOLE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Installs the global tracing subscriber, with OTLP export of spans as
/// `service` when `--otlp-endpoint` is set (inside the Tokio runtime).
/// Idempotent, so in-process tests can start several services.
pub fn init_tracing(args: &LogArgs, service: &str) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| args.filter.clone());
    // The log filter applies to the log only: exported spans are those at
    // info and above whatever the log shows.
    let filter = || EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = args.format == "json";
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let otel = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => match otel::layer(endpoint, service) {
            Ok(l) => Some(l.with_filter(tracing_subscriber::filter::LevelFilter::INFO)),
            Err(e) => {
                eprintln!("--otlp-endpoint {endpoint}: {e}; spans are not exported");
                None
            }
        },
        None => None,
    };
    // try_init fails only when a subscriber is already installed: fine.
    let _ = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init();
}

/// Readiness of a service that needs the store: ready when the store
/// answers a cheap call within two seconds.
#[must_use]
pub fn store_readiness(store: mailstore_api::StoreClient) -> Readiness {
    std::sync::Arc::new(move || {
        let mut accounts = store.accounts.clone();
        Box::pin(async move {
            let mut req = tonic::Request::new(mailstore_api::pb::ListDomainsRequest {});
            req.set_timeout(std::time::Duration::from_secs(2));
            match tokio::time::timeout(
                std::time::Duration::from_secs(2),
                accounts.list_domains(req),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(format!("store: {}", status.code())),
                Err(_) => Err("store: timeout".to_string()),
            }
        })
    })
}

static PROMETHEUS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours stays unused
            // but rendering still works (empty).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The `main` of a service's own binary: parses `--help`-documented flags
/// (the service's `Config` plus logging), installs tracing, the ring TLS
/// provider and the metrics recorder, and runs the service until SIGTERM or
/// Ctrl-C. The multi-call `epistole` binary does the same per subcommand.
///
/// # Errors
/// Whatever the service's start-up returns.
pub fn service_main<C, F, Fut>(
    name: &'static str,
    about: &'static str,
    run: F,
) -> anyhow::Result<()>
where
    C: clap::Args,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use clap::{Args as _, FromArgMatches as _};
    let command = LogArgs::augment_args(C::augment_args(
        clap::Command::new(name)
            .about(about)
            .version(env!("CARGO_PKG_VERSION")),
    ));
    let matches = command.get_matches();
    let config = C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let log = LogArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        init_tracing(&log, name);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = metrics_handle();
        let result = run(config, shutdown_on_signals()).await;
        otel::flush();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store token comes from the flag, else from the first line of its
    /// file; empty or missing is an error, never an empty bearer token.
    #[test]
    fn store_token_from_flag_or_file_never_empty() {
        let dir = std::env::temp_dir().join(format!("sk-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("t"), "from-file\nignored\n").expect("write");
        std::fs::write(dir.join("empty"), "\n").expect("write");
        assert_eq!(
            StoreArgs::new("http://x", "direct").token().expect("flag"),
            "direct"
        );
        let mut a = StoreArgs::new("http://x", "");
        assert!(matches!(
            a.token(),
            Err(mailstore_api::StoreClientError::NoToken)
        ));
        a.token_file = Some(dir.join("t"));
        assert_eq!(a.token().expect("file"), "from-file");
        a.token_file = Some(dir.join("empty"));
        assert!(matches!(
            a.token(),
            Err(mailstore_api::StoreClientError::NoToken)
        ));
        a.token_file = Some(dir.join("missing"));
        assert!(matches!(
            a.token(),
            Err(mailstore_api::StoreClientError::TokenFile(..))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
