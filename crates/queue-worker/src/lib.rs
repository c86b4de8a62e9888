//! # queue-worker
//!
//! What every worker of the store's queue shares (today `delivery` on the
//! inbound queue and `smtp-out` on the outbound queue), so the lease code
//! lives in one place:
//!
//! - [`Leaser`]: one `Queue.Lease` call at a time, with a linear back-off
//!   while the store fails, and an early return on shutdown.
//! - [`ActiveJobs`] and [`renew_leases`]: the jobs being worked on, and the
//!   loop that keeps their leases alive (`Queue.RenewLease`).
//! - [`Jobs`]: the per-job calls a worker makes while it holds a lease —
//!   `SetRecipientResult`, `AddEvent`, `ReadMessage`, `FinishJob` — all
//!   carrying the worker id the store checks the lease against.
//!
//! It talks only to the mailbox-store (gRPC, `mailstore.v1`). A job is worked
//! at least once: a worker that dies leaves its jobs to be re-leased by
//! another after the lease expires.

mod jobs;
mod lease;

pub use jobs::Jobs;
pub use lease::{ActiveJobs, LeaseSpec, Leaser, renew_leases};

use mailstore_api::pb;

/// This worker's name in leases and the event log: the configured one, or
/// `host-pid-random` so replicas on one host differ.
#[must_use]
pub fn worker_id(configured: Option<&str>) -> String {
    configured.map_or_else(
        || {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!(
                "{}-{}-{:04x}",
                host.trim(),
                std::process::id(),
                rand::random::<u16>()
            )
        },
        str::to_string,
    )
}

/// A protobuf timestamp (whole seconds) for a retry time.
#[must_use]
pub fn timestamp(d: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: d.timestamp(),
        nanos: 0,
    }
}

/// Whether a recipient of a leased job still needs work: pending, deferred
/// by an earlier attempt, or in no known state.
#[must_use]
pub fn is_pending(r: &pb::JobRecipient) -> bool {
    matches!(
        pb::RecipientState::try_from(r.state).unwrap_or(pb::RecipientState::Pending),
        pb::RecipientState::Pending
            | pb::RecipientState::Deferred
            | pb::RecipientState::Unspecified
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids() {
        assert_eq!(worker_id(Some("w1")), "w1");
        let a = worker_id(None);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn pending_states() {
        let r = |s: pb::RecipientState| pb::JobRecipient {
            state: s as i32,
            ..Default::default()
        };
        assert!(is_pending(&r(pb::RecipientState::Pending)));
        assert!(is_pending(&r(pb::RecipientState::Deferred)));
        assert!(is_pending(&r(pb::RecipientState::Unspecified)));
        assert!(!is_pending(&r(pb::RecipientState::Delivered)));
        assert!(!is_pending(&r(pb::RecipientState::Failed)));
        assert!(is_pending(&pb::JobRecipient {
            state: 9999,
            ..Default::default()
        }));
        assert_eq!(timestamp(chrono::DateTime::UNIX_EPOCH).seconds, 0);
    }
}
