//! A channel to the store with the bearer token on every call.

use std::collections::HashMap;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb::accounts_client::AccountsClient;
use crate::pb::dmarc_reports_client::DmarcReportsClient;
use crate::pb::guard_client::GuardClient;
use crate::pb::mailboxes_client::MailboxesClient;
use crate::pb::mta_sts_cache_client::MtaStsCacheClient;
use crate::pb::queue_client::QueueClient;
use crate::pb::tls_reports_client::TlsReportsClient;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct AuthInterceptor {
    header: MetadataValue<Ascii>,
}

impl std::fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthInterceptor(<redacted>)")
    }
}

impl AuthInterceptor {
    /// # Errors
    /// When the token contains characters not allowed in a header value.
    pub fn new(token: &str) -> Result<Self, StoreClientError> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| StoreClientError::BadToken)?;
        Ok(Self { header })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("authorization", self.header.clone());
        // W3C Trace Context: the caller's span continues in the store.
        if let Some(current) = TRACE_CONTEXT.get()
            && let Some(value) = current().and_then(|v| v.parse().ok())
        {
            req.metadata_mut().insert(TRACEPARENT, value);
        }
        Ok(req)
    }
}

/// The metadata key of the W3C Trace Context (`traceparent`).
pub const TRACEPARENT: &str = "traceparent";

/// Set once by the tracing set-up when traces are exported
/// (`service_kit::init_tracing` with an OTLP endpoint): returns the current
/// span's `traceparent`, which every store call then carries. Unset: no
/// header, no cost.
pub static TRACE_CONTEXT: std::sync::OnceLock<fn() -> Option<String>> = std::sync::OnceLock::new();

/// A channel that adds the bearer token to every call.
pub type Authed = InterceptedService<Channel, AuthInterceptor>;

/// Clients for the store services over one (lazily connected,
/// reconnecting) HTTP/2 channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreClient {
    pub accounts: AccountsClient<Authed>,
    pub mailboxes: MailboxesClient<Authed>,
    pub queue: QueueClient<Authed>,
    /// Limits and marks shared by every replica (rate limits, bans, the
    /// pre-greeting pass).
    pub guard: GuardClient<Authed>,
    /// Outbound TLS outcomes for TLS-RPT (RFC 8460).
    pub tls_reports: TlsReportsClient<Authed>,
    /// Inbound DMARC results and incoming aggregate reports (RFC 7489 §7.2).
    pub dmarc_reports: DmarcReportsClient<Authed>,
    /// MTA-STS policies shared by smtp-out replicas (RFC 8461 §5.1).
    pub mta_sts: MtaStsCacheClient<Authed>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreClientError {
    #[error("store token contains characters not allowed in a header")]
    BadToken,
    #[error(
        "no store token: set EPISTOLE_STORE_TOKEN (--store-token) or EPISTOLE_STORE_TOKEN_FILE (--store-token-file)"
    )]
    NoToken,
    #[error("read store token file {0}: {1}")]
    TokenFile(String, String),
    #[error("invalid store address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("store TLS: {0}")]
    Tls(String),
}

/// TLS towards the store (optional; threat model T118): the CA that signs
/// the store's certificate and, for mutual TLS, this service's own
/// certificate and key. All PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The tonic configuration, verifying the store's certificate for
    /// `host` (the URL's host name, also when the balancer connects to one
    /// of its addresses).
    fn config(&self, host: &str) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(host);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// Messages up to this size travel in one gRPC message (bodies are chunked,
/// metadata batches can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How often the store URLs' host names are resolved again, so replicas
/// added or removed (a scaled Deployment behind a headless Service) join or
/// leave the balanced set.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// How often the addresses in the balanced set are probed between two
/// resolutions, so a replica that dies (its pod gone, its port closed)
/// leaves the set within about a second instead of taking a share of the
/// calls, each failing, until the next resolution.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, StoreClientError> {
    let e = configure(
        Endpoint::from_shared(url.to_string())
            .map_err(|e| StoreClientError::BadAddress(url.to_string(), e.to_string()))?,
    );
    let https = e.uri().scheme_str() == Some("https");
    match tls {
        Some(_) if !https => Err(StoreClientError::Tls(format!(
            "{url}: TLS to the store needs an https:// URL"
        ))),
        None if https => Err(StoreClientError::Tls(format!(
            "{url}: an https:// store URL needs the store's CA (--store-ca)"
        ))),
        None => Ok(e),
        Some(tls) => {
            let host = e.uri().host().unwrap_or_default().to_string();
            with_tls(e, tls, &host)
        }
    }
}

fn with_tls(e: Endpoint, tls: &ClientTls, host: &str) -> Result<Endpoint, StoreClientError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    e.tls_config(tls.config(host))
        .map_err(|e| StoreClientError::Tls(e.to_string()))
}

fn configure(e: Endpoint) -> Endpoint {
    e.connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// Creates the clients. The channel connects lazily and reconnects by itself,
/// so a service can start before the store and survive store restarts.
///
/// `url` is one URL or a comma-separated list. Unless it is a single URL
/// naming an IP address, calls are spread over every address the URLs'
/// host names resolve to (tonic's balanced channel: power of two choices
/// over the least loaded), re-resolved every [`RESOLVE_EVERY`] and probed
/// every [`PROBE_EVERY`]: give a headless Service name (one A record per
/// replica) or list the replicas.
/// Balancing needs a Tokio runtime; outside one the first URL is used alone.
///
/// # Errors
/// On a malformed address or token.
pub fn connect(url: &str, token: &str) -> Result<StoreClient, StoreClientError> {
    connect_tls(url, token, None)
}

/// [`connect`], with TLS (and, when `tls` carries an identity, mutual TLS)
/// to the store: every URL must then be `https://`.
///
/// # Errors
/// On a malformed address or token, or a URL scheme that does not match
/// whether `tls` is given.
pub fn connect_tls(
    url: &str,
    token: &str,
    tls: Option<&ClientTls>,
) -> Result<StoreClient, StoreClientError> {
    let endpoints = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| endpoint(u, tls))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = endpoints.first() else {
        return Err(StoreClientError::BadAddress(
            url.to_string(),
            "no URL".into(),
        ));
    };
    if token.is_empty() {
        return Err(StoreClientError::NoToken);
    }
    let single_ip = endpoints.len() == 1
        && first
            .uri()
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok());
    let channel = match tokio::runtime::Handle::try_current() {
        Ok(rt) if !single_ip => {
            let (channel, tx) = Channel::balance_channel::<String>(64);
            rt.spawn(discover(endpoints, tls.cloned(), tx));
            channel
        }
        _ => first.connect_lazy(),
    };
    let auth = AuthInterceptor::new(token)?;
    Ok(StoreClient {
        accounts: AccountsClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
        mailboxes: MailboxesClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
        queue: QueueClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
        guard: GuardClient::with_interceptor(channel.clone(), auth.clone()),
        tls_reports: TlsReportsClient::with_interceptor(channel.clone(), auth.clone()),
        dmarc_reports: DmarcReportsClient::with_interceptor(channel.clone(), auth.clone()),
        mta_sts: MtaStsCacheClient::with_interceptor(channel, auth),
    })
}

/// Does something accept connections at `a`? An address nobody listens on
/// (`localhost` resolving to `::1` as well, a replica gone) would otherwise
/// stay in the set and fail the calls the balancer sends it.
async fn reachable(a: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(a)).await,
        Ok(Ok(_))
    )
}

/// Keeps the balanced set equal to the reachable addresses the URLs
/// resolve to: resolved every [`RESOLVE_EVERY`], and the addresses found
/// probed every [`PROBE_EVERY`] (one that stops accepting connections
/// leaves the set, and comes back when it accepts again). When none is
/// reachable, the URLs themselves form the set, so calls fail with a
/// connection error (a transient failure, answered 4xx) instead of waiting
/// for an endpoint that may never come, and succeed once the store is up.
async fn discover(
    endpoints: Vec<Endpoint>,
    tls: Option<ClientTls>,
    tx: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
) {
    let mut current: HashMap<String, ()> = HashMap::new();
    let mut resolved: Vec<(String, std::net::SocketAddr, Endpoint)> = Vec::new();
    let mut resolved_at: Option<tokio::time::Instant> = None;
    loop {
        if resolved_at.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY) {
            resolved = resolve(&endpoints, tls.as_ref()).await;
            resolved_at = Some(tokio::time::Instant::now());
        }
        let mut want: HashMap<String, Endpoint> = HashMap::new();
        for (key, addr, e) in &resolved {
            if reachable(*addr).await {
                want.insert(key.clone(), e.clone());
            }
        }
        if want.is_empty() {
            for ep in &endpoints {
                want.insert(ep.uri().to_string(), ep.clone());
            }
        }
        let gone: Vec<String> = current
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            current.remove(&k);
            if tx.send(Change::Remove(k)).await.is_err() {
                return;
            }
        }
        for (k, e) in want {
            if current.contains_key(&k) {
                continue;
            }
            current.insert(k.clone(), ());
            if tx.send(Change::Insert(k, e)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
        if tx.is_closed() {
            return;
        }
    }
}

/// Every address the URLs' host names resolve to, once each, as the key
/// the balanced set knows it by, the socket address to probe and the
/// endpoint to insert.
async fn resolve(
    endpoints: &[Endpoint],
    tls: Option<&ClientTls>,
) -> Vec<(String, std::net::SocketAddr, Endpoint)> {
    let mut out: Vec<(String, std::net::SocketAddr, Endpoint)> = Vec::new();
    for ep in endpoints {
        let uri = ep.uri();
        let scheme = uri.scheme_str().unwrap_or("http");
        let Some(host) = uri.host() else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let Ok(addrs) = tokio::net::lookup_host((host, port)).await else {
            continue;
        };
        for a in addrs {
            let key = format!("{scheme}://{a}");
            if out.iter().any(|(k, _, _)| *k == key) {
                continue;
            }
            let Ok(e) = Endpoint::from_shared(key.clone()) else {
                continue;
            };
            // Keep the URL's host name as the HTTP/2 :authority and as the
            // name the certificate is checked for.
            let e = configure(e).origin(uri.clone());
            let e = match tls {
                Some(tls) => match with_tls(e, tls, host) {
                    Ok(e) => e,
                    Err(_) => continue,
                },
                None => e,
            };
            out.push((key, a, e));
        }
    }
    out
}
