//! Per-hour message and recipient limits, shared by every replica through
//! the store's `Guard.Hit` (one atomic check-and-record per unit).
//!
//! Unauthenticated sessions (the MX) are counted per client IP, the store
//! aggregating IPv6 per /64; authenticated ones (submission) per account.
//! A message is counted at MAIL: only there can it still be refused with
//! one atomic call (counting after the `250` could no longer refuse it, and
//! a check at MAIL plus a record after DATA would be two racing calls); a
//! transaction that later fails still counts. A recipient is counted once
//! the store has accepted it, before the `250`. Guard errors fail open.

use crate::guard::{Verdict, ip_key};
use crate::proto::{Reply, codes};
use crate::session::Session;

/// What is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// One message (at MAIL).
    Message,
    /// One accepted recipient (at RCPT).
    Recipient,
}

impl Session {
    /// Spends one `unit` of this client's hourly budget, or says how to
    /// refuse: `421 4.7.0` at MAIL (and close, RFC 5321 §3.8), `450 4.7.1`
    /// at RCPT (RFC 5321 §4.3.2).
    pub(crate) async fn spend(&self, unit: Unit) -> Result<(), Reply> {
        let h = self.shared.limits.hourly;
        let (scope, key, limit) = match (&self.auth, unit) {
            (Some(a), Unit::Message) => (
                "smtp_msg_account",
                a.address.clone(),
                h.messages_per_account,
            ),
            (Some(a), Unit::Recipient) => (
                "smtp_rcpt_account",
                a.address.clone(),
                h.recipients_per_account,
            ),
            (None, Unit::Message) => ("smtp_msg_ip", ip_key(self.peer.ip()), h.messages_per_ip),
            (None, Unit::Recipient) => {
                ("smtp_rcpt_ip", ip_key(self.peer.ip()), h.recipients_per_ip)
            }
        };
        match self
            .shared
            .guard
            .hit(scope, &key, 1, limit, &self.sid)
            .await
        {
            Verdict::Refused { retry_after } => {
                metrics::counter!("smtp_in_hourly_limited_total", "scope" => scope).increment(1);
                tracing::info!(
                    scope,
                    key = %key,
                    limit,
                    retry_after_secs = retry_after.as_secs(),
                    "hourly limit reached"
                );
                Err(match unit {
                    Unit::Message => codes::hourly_messages(),
                    Unit::Recipient => codes::hourly_recipients(),
                })
            }
            Verdict::Allowed | Verdict::Unknown => Ok(()),
        }
    }
}
