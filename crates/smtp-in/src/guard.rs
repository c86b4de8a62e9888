//! The store's `Guard` service as smtp-in uses it: per-hour counters and
//! the pre-greeting pass marks, shared by every replica (state in
//! PostgreSQL, one atomic statement per check-and-record).
//!
//! Every failure means "no information" and fails open: a store that is
//! older (`UNIMPLEMENTED`), slow or down must not stop mail. After an
//! `UNIMPLEMENTED` answer the Guard is not asked again for a minute, so an
//! old store costs one round trip a minute, not one per command.

use std::sync::Mutex;
use std::time::Duration;

use mailstore_api::{SESSION_ID_HEADER, StoreClient, pb};
use tokio::time::Instant;
use tonic::Request;

/// Scope of the MX pre-greeting pass marks (key: the client IP).
pub const GREET_PASS: &str = "greet_pass";

/// How long an `UNIMPLEMENTED` store is left alone.
const QUIET_AFTER_UNIMPLEMENTED: Duration = Duration::from_secs(60);

/// The answer of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit (and recorded).
    Allowed,
    /// Over the limit: not recorded; the window ends in `retry_after`.
    Refused {
        /// Until the window ends.
        retry_after: Duration,
    },
    /// The store could not say (error, time-out, older store): allowed.
    Unknown,
}

/// The answer of a mark check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Marked; the mark lasts this much longer.
    Set(Duration),
    /// Not marked.
    Unset,
    /// The store could not say.
    Unknown,
}

/// A Guard client with a short deadline per call.
#[derive(Debug)]
pub struct Guard {
    client: StoreClient,
    timeout: Duration,
    quiet_until: Mutex<Option<Instant>>,
}

impl Guard {
    /// Calls through `client`, each with `timeout`.
    #[must_use]
    pub fn new(client: StoreClient, timeout: Duration) -> Self {
        Self {
            client,
            timeout: timeout.max(Duration::from_millis(1)),
            quiet_until: Mutex::new(None),
        }
    }

    fn quiet(&self) -> bool {
        let Ok(q) = self.quiet_until.lock() else {
            return false;
        };
        q.is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, rpc: &'static str, e: Option<&tonic::Status>) {
        metrics::counter!("smtp_in_guard_errors_total", "rpc" => rpc).increment(1);
        match e {
            Some(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::debug!(rpc, "store has no Guard service; limits off for a minute");
                if let Ok(mut q) = self.quiet_until.lock() {
                    *q = Some(Instant::now() + QUIET_AFTER_UNIMPLEMENTED);
                }
            }
            Some(s) => tracing::debug!(rpc, code = ?s.code(), "Guard call failed; failing open"),
            None => tracing::debug!(rpc, "Guard call timed out; failing open"),
        }
    }

    fn request<T>(&self, msg: T, sid: &str) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(self.timeout);
        if let Ok(v) = sid.parse() {
            req.metadata_mut().insert(SESSION_ID_HEADER, v);
        }
        req
    }

    /// `Guard.Hit`: adds `cost` to (scope, key) in an hour-long window and
    /// says whether that stays within `limit`. A zero limit is off.
    pub async fn hit(&self, scope: &str, key: &str, cost: u32, limit: u32, sid: &str) -> Verdict {
        if limit == 0 || self.quiet() {
            return Verdict::Unknown;
        }
        let req = self.request(
            pb::HitRequest {
                scope: scope.to_string(),
                key: key.to_string(),
                cost,
                limit,
                window_secs: 3600,
            },
            sid,
        );
        let mut c = self.client.guard.clone();
        match tokio::time::timeout(self.timeout, c.hit(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.allowed {
                    Verdict::Allowed
                } else {
                    Verdict::Refused {
                        retry_after: Duration::from_millis(r.retry_after_ms),
                    }
                }
            }
            Ok(Err(s)) => {
                self.failed("hit", Some(&s));
                Verdict::Unknown
            }
            Err(_) => {
                self.failed("hit", None);
                Verdict::Unknown
            }
        }
    }

    /// `Guard.CheckMark`.
    pub async fn check_mark(&self, scope: &str, key: &str, sid: &str) -> Mark {
        if self.quiet() {
            return Mark::Unknown;
        }
        let req = self.request(
            pb::CheckMarkRequest {
                scope: scope.to_string(),
                key: key.to_string(),
            },
            sid,
        );
        let mut c = self.client.guard.clone();
        match tokio::time::timeout(self.timeout, c.check_mark(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.marked {
                    Mark::Set(Duration::from_millis(r.remaining_ms))
                } else {
                    Mark::Unset
                }
            }
            Ok(Err(s)) => {
                self.failed("check_mark", Some(&s));
                Mark::Unknown
            }
            Err(_) => {
                self.failed("check_mark", None);
                Mark::Unknown
            }
        }
    }

    /// `Guard.SetMark` (setting again extends the mark). Failures are only
    /// logged: a lost mark costs the client one more pause.
    pub async fn set_mark(&self, scope: &str, key: &str, ttl: Duration, sid: &str) {
        if self.quiet() || ttl.is_zero() {
            return;
        }
        let req = self.request(
            pb::SetMarkRequest {
                scope: scope.to_string(),
                key: key.to_string(),
                ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            },
            sid,
        );
        let mut c = self.client.guard.clone();
        match tokio::time::timeout(self.timeout, c.set_mark(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => self.failed("set_mark", Some(&s)),
            Err(_) => self.failed("set_mark", None),
        }
    }
}

/// The key of a client address: the canonical form (an IPv4-mapped IPv6
/// address counts as the IPv4 address; the store aggregates IPv6 per /64).
#[must_use]
pub fn ip_key(ip: std::net::IpAddr) -> String {
    ip.to_canonical().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical() {
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1"
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        assert_eq!(ip_key(mapped), "192.0.2.1");
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap_or(mapped);
        assert_eq!(ip_key(v6), "2001:db8::1");
    }
}
