//! A channel to the store with the bearer token on every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::pb::accounts_client::AccountsClient;
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
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, AuthInterceptor>;

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
}

/// Messages up to this size travel in one gRPC message (bodies are chunked,
/// metadata batches can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Creates the clients. The channel connects lazily and reconnects by itself,
/// so a service can start before the store and survive store restarts.
///
/// # Errors
/// On a malformed address or token.
pub fn connect(url: &str, token: &str) -> Result<StoreClient, StoreClientError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| StoreClientError::BadAddress(url.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if token.is_empty() {
        return Err(StoreClientError::NoToken);
    }
    let channel = endpoint.connect_lazy();
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
        mta_sts: MtaStsCacheClient::with_interceptor(channel, auth),
    })
}
