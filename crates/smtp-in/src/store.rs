//! The store calls smtp-in makes, with deadlines, retries, metrics and the
//! session id in gRPC metadata. Every failure is reduced to
//! [`StoreError`]; the session answers it with `451 4.3.0` / `454 4.7.0`,
//! never a 5xx.

use std::time::{Duration, Instant};

use mailstore_api::pb::{self, AuthStatus, RecipientStatus};
use mailstore_api::{Failure, SESSION_ID_HEADER, StoreClient, classify};
use tonic::Request;

/// Enqueue data messages carry at most this many bytes.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// A store call failed or its outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Deadline exceeded: outcome unknown.
    #[error("store call timed out")]
    Timeout,
    /// The store answered with an error status.
    #[error("store error {code:?}: {message}")]
    Status {
        /// gRPC code.
        code: tonic::Code,
        /// Transient or permanent.
        failure: Failure,
        /// Message (for the log only).
        message: String,
    },
    /// The store answered something it should not (unknown enum value).
    #[error("unexpected answer from store")]
    Protocol,
}

impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        Self::Status {
            code: s.code(),
            failure: classify(&s),
            message: s.message().to_string(),
        }
    }
}

impl StoreError {
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Status { failure, .. } => *failure == Failure::Transient,
            Self::Protocol => false,
        }
    }
}

/// What AUTH learned from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials valid.
    Ok {
        /// The user's id.
        user_id: u64,
        /// The user's canonical address.
        address: String,
    },
    /// Wrong password, unknown or disabled user (one answer for all).
    Failed,
    /// Too many failures from this IP.
    Throttled,
}

/// Recipient lookup result (RFC 5321 §3.3 RCPT validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// Ours and it exists.
    Local,
    /// Our domain, but nobody there.
    Unknown,
    /// Not our domain.
    NotLocal,
    /// Ours, but every mailbox it reaches is at its quota (RFC 3463 X.2.2).
    Full,
}

/// The store, as smtp-in uses it.
#[derive(Clone, Debug)]
pub struct Backend {
    client: StoreClient,
    timeout: Duration,
    attempts: u32,
    /// How long an Enqueue with an unknown outcome keeps being retried.
    enqueue_budget: Duration,
}

/// Longest pause between two tries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

fn request<T>(msg: T, sid: &str, timeout: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    if let Ok(v) = sid.parse() {
        req.metadata_mut().insert(SESSION_ID_HEADER, v);
    }
    req
}

fn observe(rpc: &'static str, start: Instant, ok: bool) {
    metrics::histogram!("smtp_in_store_latency_seconds", "rpc" => rpc)
        .record(start.elapsed().as_secs_f64());
    if !ok {
        metrics::counter!("smtp_in_store_errors_total", "rpc" => rpc).increment(1);
    }
}

impl Backend {
    /// The store client underneath (cheap to clone).
    #[must_use]
    pub fn client(&self) -> StoreClient {
        self.client.clone()
    }

    /// Wraps a client; each call gets `timeout`, and the idempotent ones up
    /// to `attempts` tries.
    #[must_use]
    pub fn new(client: StoreClient, timeout: Duration, attempts: u32) -> Self {
        Self {
            client,
            timeout,
            attempts: attempts.max(1),
            enqueue_budget: Duration::ZERO,
        }
    }

    /// Keeps retrying a failed Enqueue (same idempotency key) for up to
    /// `budget` after the first try, beyond `attempts`. The sender waits:
    /// RFC 5321 §4.5.3.2.6 gives it 10 minutes for the reply to the final
    /// dot. A store replica restarting or PostgreSQL failing over then
    /// ends in `250` instead of a `451` whose outcome smtp-in cannot know
    /// — the message may have been committed just before the answer was
    /// lost, and the sender's resend would be a second copy (the RFC 5321
    /// §6.1 duplicate window, made as small as the budget allows).
    #[must_use]
    pub fn with_enqueue_budget(mut self, budget: Duration) -> Self {
        self.enqueue_budget = budget;
        self
    }

    /// Runs `call` with a deadline, retrying transient failures of
    /// idempotent calls with a short exponential back-off: `attempts`
    /// tries, and more while `budget` since the first has not run out.
    async fn retry<T, F, Fut>(
        &self,
        rpc: &'static str,
        (attempts, budget): (u32, Duration),
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(StoreClient) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        let first = Instant::now();
        loop {
            let start = Instant::now();
            let res = match tokio::time::timeout(self.timeout, call(self.client.clone())).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout),
            };
            observe(rpc, start, res.is_ok());
            match res {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.retryable()
                        && (attempt < attempts || first.elapsed() + delay < budget) =>
                {
                    tracing::warn!(rpc, attempt, error = %e, "store call failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `Accounts.LookupRecipient`.
    ///
    /// # Errors
    /// Store failure.
    pub async fn lookup_recipient(
        &self,
        address: &str,
        sid: &str,
    ) -> Result<Recipient, StoreError> {
        Ok(self.recipient(address, sid).await?.0)
    }

    /// `Accounts.LookupRecipient`, with the recipient domain's inbound
    /// DMARC choice (`""`: smtp-in's `--dmarc-reject-action`).
    ///
    /// # Errors
    /// Store failure.
    pub async fn recipient(
        &self,
        address: &str,
        sid: &str,
    ) -> Result<(Recipient, String), StoreError> {
        let t = self.timeout;
        self.retry(
            "lookup_recipient",
            (self.attempts, Duration::ZERO),
            |mut c| {
                let req = request(
                    pb::LookupRecipientRequest {
                        address: address.to_string(),
                    },
                    sid,
                    t,
                );
                async move {
                    let resp = c.accounts.lookup_recipient(req).await?.into_inner();
                    let status = match RecipientStatus::try_from(resp.status) {
                        Ok(RecipientStatus::Local) if resp.over_quota => Recipient::Full,
                        Ok(RecipientStatus::Local) => Recipient::Local,
                        Ok(RecipientStatus::Unknown) => Recipient::Unknown,
                        Ok(RecipientStatus::NotLocal) => Recipient::NotLocal,
                        _ => return Err(StoreError::Protocol),
                    };
                    Ok((status, resp.dmarc_reject_action))
                }
            },
        )
        .await
    }

    /// `Accounts.Authenticate` (one attempt: a retry could count a failure twice).
    ///
    /// # Errors
    /// Store failure.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        remote_ip: &str,
        sid: &str,
    ) -> Result<AuthOutcome, StoreError> {
        let t = self.timeout;
        self.retry("authenticate", (1, Duration::ZERO), |mut c| {
            let req = request(
                pb::AuthenticateRequest {
                    username: username.to_string(),
                    password: password.to_string(),
                    protocol: pb::Protocol::Smtp.into(),
                    remote_ip: remote_ip.to_string(),
                    session_id: sid.to_string(),
                },
                sid,
                t,
            );
            async move {
                let resp = c.accounts.authenticate(req).await?.into_inner();
                match AuthStatus::try_from(resp.status) {
                    Ok(AuthStatus::Ok) => Ok(AuthOutcome::Ok {
                        user_id: resp.user_id,
                        address: resp.address,
                    }),
                    Ok(AuthStatus::Failed) => Ok(AuthOutcome::Failed),
                    Ok(AuthStatus::Throttled | AuthStatus::Unavailable) => {
                        Ok(AuthOutcome::Throttled)
                    }
                    _ => Err(StoreError::Protocol),
                }
            }
        })
        .await
    }

    /// `Accounts.CheckSender`.
    ///
    /// # Errors
    /// Store failure.
    pub async fn check_sender(
        &self,
        user_id: u64,
        address: &str,
        sid: &str,
    ) -> Result<bool, StoreError> {
        let t = self.timeout;
        self.retry("check_sender", (self.attempts, Duration::ZERO), |mut c| {
            let req = request(
                pb::CheckSenderRequest {
                    user_id,
                    address: address.to_string(),
                },
                sid,
                t,
            );
            async move { Ok(c.accounts.check_sender(req).await?.into_inner().allowed) }
        })
        .await
    }

    /// `Queue.Enqueue`: the header, then `parts` concatenated, in chunks of
    /// at most [`CHUNK_SIZE`]. Retried with the header's idempotency key, so
    /// a retry after an unknown outcome never makes a second job.
    ///
    /// # Errors
    /// Store failure after all attempts.
    pub async fn enqueue(
        &self,
        header: pb::EnqueueHeader,
        parts: &[&[u8]],
        sid: &str,
    ) -> Result<pb::EnqueueResponse, StoreError> {
        let t = self.timeout;
        self.retry("enqueue", (self.attempts, self.enqueue_budget), |mut c| {
            let mut msgs =
                Vec::with_capacity(2 + parts.iter().map(|p| p.len()).sum::<usize>() / CHUNK_SIZE);
            msgs.push(pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Header(header.clone())),
            });
            let mut chunk: Vec<u8> = Vec::new();
            for part in parts {
                let mut rest = *part;
                while !rest.is_empty() {
                    let take = (CHUNK_SIZE - chunk.len()).min(rest.len());
                    chunk.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if chunk.len() == CHUNK_SIZE {
                        msgs.push(pb::EnqueueRequest {
                            part: Some(pb::enqueue_request::Part::Data(std::mem::take(&mut chunk))),
                        });
                    }
                }
            }
            if !chunk.is_empty() {
                msgs.push(pb::EnqueueRequest {
                    part: Some(pb::enqueue_request::Part::Data(chunk)),
                });
            }
            let req = request(tokio_stream::iter(msgs), sid, t);
            async move { Ok(c.queue.enqueue(req).await?.into_inner()) }
        })
        .await
    }

    /// Readiness: the store answers a cheap call.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let req = request(pb::ListDomainsRequest {}, "readyz", Duration::from_secs(2));
        match tokio::time::timeout(Duration::from_secs(2), c.accounts.list_domains(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(s.into()),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}
