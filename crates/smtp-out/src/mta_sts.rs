//! MTA-STS (RFC 8461): which destinations demand verified TLS.
//!
//! For a destination domain: the `_mta-sts.<domain>` TXT record names the
//! current policy `id` (§3.1); when it differs from the cached one (or
//! nothing is cached) the policy is fetched from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (§3.3) over HTTPS
//! with a verified certificate, without following redirects, at most 64 KiB.
//! Policies are cached for their `max_age` (§5.1: a fetch failure keeps the
//! cached policy; the TXT record missing keeps it too) in this process's
//! memory and in the store (`MtaStsCache`, table `mta_sts_policies`), so
//! another replica or a restarted process starts from the cached policy
//! instead of a first contact. The store is best effort: unreachable, the
//! memory cache alone serves.
//!
//! The policy host is reached like an MX: its addresses go through the
//! destination policy (no SSRF through `mta-sts.<domain>`).

pub mod policy;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RData;
use rustls_pki_types::ServerName;

pub use policy::{Mode, Policy};

use crate::client::Verifier;
use crate::route::Router;

/// Largest policy body read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;
/// Most domains kept in the cache.
const MAX_CACHED: usize = 100_000;

#[derive(Debug, Clone)]
struct Cached {
    id: String,
    policy: Policy,
    expires: Instant,
}

/// Policy discovery, fetch and cache.
pub struct MtaSts {
    verifier: Verifier,
    port: u16,
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// The shared cache, when there is a store.
    store: Option<mailstore_api::StoreClient>,
}

impl MtaSts {
    /// Fetches policies from port `port` (443) within `timeout`, trusting
    /// `verifier`'s anchors.
    #[must_use]
    pub fn new(verifier: Verifier, port: u16, timeout: Duration) -> Self {
        Self {
            verifier,
            port,
            timeout,
            cache: Mutex::new(HashMap::new()),
            store: None,
        }
    }

    /// Also keeps policies in the store's shared cache.
    #[must_use]
    pub fn with_store(mut self, store: mailstore_api::StoreClient) -> Self {
        self.store = Some(store);
        self
    }

    /// The policy in force for `domain`, if any (mode `none` is no policy).
    pub async fn policy(&self, router: &Router, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.starts_with('[') || domain.is_empty() {
            return None;
        }
        let cached = match self.cached(&domain) {
            Some(c) => Some(c),
            None => self.shared(&domain).await,
        };
        let id = self.txt_id(router, &domain).await;
        let policy = match (id, cached) {
            // §5.1: the cached policy stands while the id is unchanged.
            (Some(id), Some(c)) if c.id == id => Some(c.policy),
            (Some(id), cached) => match self.fetch(router, &domain).await {
                Ok((p, text)) => {
                    tracing::info!(%domain, %id, mode = p.mode.as_str(), max_age = p.max_age, "MTA-STS policy fetched");
                    self.share(&domain, &id, &text, p.max_age).await;
                    self.remember(&domain, id, p.clone(), Duration::from_secs(p.max_age));
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "MTA-STS policy not fetched");
                    // §3.3: no policy could be fetched and none is cached:
                    // deliver as if the domain had none.
                    cached.map(|c| c.policy)
                }
            },
            // No (usable) TXT record: a cached policy still applies (§3.3).
            (None, cached) => cached.map(|c| c.policy),
        };
        policy.filter(|p| p.mode != Mode::None)
    }

    fn cached(&self, domain: &str) -> Option<Cached> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(domain) {
            Some(c) if c.expires > Instant::now() => Some(c.clone()),
            Some(_) => {
                cache.remove(domain);
                None
            }
            None => None,
        }
    }

    /// The store's cached policy of `domain` (kept in memory too).
    async fn shared(&self, domain: &str) -> Option<Cached> {
        let store = self.store.as_ref()?;
        let r = store
            .mta_sts
            .clone()
            .get_mta_sts_policy(mailstore_api::pb::GetMtaStsPolicyRequest {
                domain: domain.to_string(),
            })
            .await;
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(%domain, error = %e.message(), "MTA-STS cache in the store unreachable");
                return None;
            }
        };
        if !r.found {
            return None;
        }
        // Parsed again: the store keeps the text as fetched.
        let policy = policy::parse_policy(&r.text).ok()?;
        let left = Duration::from_secs(r.remaining_secs);
        self.remember(domain, r.id.clone(), policy.clone(), left);
        Some(Cached {
            id: r.id,
            policy,
            expires: Instant::now() + left,
        })
    }

    /// Puts a fetched policy in the store's cache (best effort).
    async fn share(&self, domain: &str, id: &str, text: &str, max_age: u64) {
        let Some(store) = &self.store else { return };
        let r = store
            .mta_sts
            .clone()
            .put_mta_sts_policy(mailstore_api::pb::PutMtaStsPolicyRequest {
                domain: domain.to_string(),
                id: id.to_string(),
                text: text.to_string(),
                max_age_secs: max_age,
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%domain, error = %e.message(), "MTA-STS policy not cached in the store");
        }
    }

    fn remember(&self, domain: &str, id: String, policy: Policy, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
        }
        if cache.len() < MAX_CACHED {
            let expires = Instant::now() + ttl;
            cache.insert(
                domain.to_string(),
                Cached {
                    id,
                    policy,
                    expires,
                },
            );
        }
    }

    async fn txt_id(&self, router: &Router, domain: &str) -> Option<String> {
        let name = format!("_mta-sts.{domain}.");
        let lookup = router.resolver().txt_lookup(name.as_str()).await.ok()?;
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // RFC 8461 §3.1: the strings of one record are concatenated.
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        policy::txt_id(&records)
    }

    /// GET the policy from each allowed address of `mta-sts.<domain>` in
    /// turn until one answers.
    async fn fetch(&self, router: &Router, domain: &str) -> Result<(Policy, String), String> {
        let host = format!("mta-sts.{domain}");
        let addrs = router.allowed_addrs(&host, self.port).await?;
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let mut errors = Vec::new();
        for addr in addrs {
            match tokio::time::timeout(self.timeout, self.get(addr, &host, name.clone())).await {
                Ok(Ok(body)) => return policy::parse_policy(&body).map(|p| (p, body)),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: timeout")),
            }
        }
        Err(errors.join("; "))
    }

    async fn get(
        &self,
        addr: std::net::SocketAddr,
        host: &str,
        name: ServerName<'static>,
    ) -> Result<String, String> {
        use http_body_util::BodyExt as _;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let config = std::sync::Arc::new(self.verifier.client_config(&[b"http/1.1"]));
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "epistole-smtp-out")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            // RFC 8461 §3.3: 200 only; redirects are not followed.
            if response.status() != hyper::StatusCode::OK {
                return Err(format!("HTTP status {}", response.status()));
            }
            // RFC 8461 §3.2: the media type is text/plain.
            let text_plain = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
                });
            if !text_plain {
                return Err("policy is not text/plain".to_string());
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_POLICY)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".to_string())
        }
        .await;
        driver.abort();
        result
    }
}
