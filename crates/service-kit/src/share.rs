//! Per-IP connection counts shared by the replicas of one protocol service
//! (threat model T43: limits behind a load balancer). Every
//! [`SHARE_EVERY`] a replica reports, through the store's
//! `Guard.ShareConnections`, the addresses holding at least a tenth of the
//! per-IP limit here, and learns what the other replicas reported; the
//! listener then admits a connection only while its own count plus the
//! others' stays under the limit ([`crate::ConnLimits::admit`]).
//!
//! Trade-offs, chosen on purpose: no store round trip per connection (a
//! connection flood must not become a store flood, and a store outage must
//! not close the door), so the shared count is one interval late; an
//! address below a tenth of the limit on every replica is not reported
//! (with N replicas at most N × limit/10 connections go uncounted); a
//! replica that dies is forgotten after [`SHARE_TTL`]. When the store
//! cannot be reached for longer than that, each replica falls back to its
//! own count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstore_api::pb;

use crate::{ConnLimits, Shutdown};

/// How often a replica reports and learns.
pub const SHARE_EVERY: Duration = Duration::from_secs(3);
/// How long a report counts when not renewed.
pub const SHARE_TTL: Duration = Duration::from_secs(15);

/// The smallest local count worth reporting for a per-IP `limit`.
#[must_use]
pub fn report_threshold(limit: u32) -> u32 {
    (limit / 10).max(1)
}

/// Reports and learns until `shutdown`, then withdraws this replica's
/// counts (bounded by a 2 s time-out).
pub async fn share_connections(
    limits: Arc<ConnLimits>,
    mut guard: pb::guard_client::GuardClient<mailstore_api::client::Authed>,
    scope: String,
    shutdown: Shutdown,
) {
    let replica = format!("{:016x}", rand::random::<u64>());
    let min = report_threshold(limits.max_per_ip());
    let mut last_ok = Instant::now();
    loop {
        let counts = limits
            .snapshot(min)
            .into_iter()
            .take(10_000)
            .map(|(ip, count)| pb::ConnectionCount {
                key: ip.to_string(),
                count,
            })
            .collect();
        let req = pb::ShareConnectionsRequest {
            scope: scope.clone(),
            replica: replica.clone(),
            counts,
            ttl_secs: u32::try_from(SHARE_TTL.as_secs()).unwrap_or(15),
        };
        match tokio::time::timeout(SHARE_EVERY, guard.share_connections(req)).await {
            Ok(Ok(resp)) => {
                last_ok = Instant::now();
                limits.set_elsewhere(elsewhere(resp.into_inner()));
            }
            Ok(Err(e)) => tracing::debug!(error = %e.message(), "sharing connection counts"),
            Err(_) => tracing::debug!("sharing connection counts: time-out"),
        }
        if last_ok.elapsed() > SHARE_TTL {
            // What the others reported has expired in the store too.
            limits.set_elsewhere(HashMap::new());
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(SHARE_EVERY) => {}
        }
    }
    let withdraw = pb::ShareConnectionsRequest {
        scope,
        replica,
        counts: Vec::new(),
        ttl_secs: 1,
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), guard.share_connections(withdraw)).await;
}

fn elsewhere(resp: pb::ShareConnectionsResponse) -> HashMap<IpAddr, u32> {
    resp.elsewhere
        .into_iter()
        .filter_map(|c| Some((c.key.parse().ok()?, c.count)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_count_against_the_limit() {
        let limits = ConnLimits::new(100, 4);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let _a = limits.admit(ip).expect("first");
        limits.set_elsewhere(HashMap::from([(ip, 2)]));
        let _b = limits.admit(ip).expect("1 here + 2 elsewhere < 4");
        assert_eq!(limits.admit(ip).err(), Some(crate::Refused::PerIp));
        let _c = limits.admit(other).expect("another address");
        // A refused address with no connection here leaves no entry.
        limits.set_elsewhere(HashMap::from([(other, 9), (ip, 2)]));
        let third: IpAddr = "192.0.2.9".parse().expect("ip");
        limits.set_elsewhere(HashMap::from([(third, 4)]));
        assert_eq!(limits.admit(third).err(), Some(crate::Refused::PerIp));
        assert_eq!(limits.open_from(third), 0);
        assert_eq!(limits.snapshot(1).len(), 2);
    }

    #[test]
    fn only_addresses_near_the_limit_are_reported() {
        assert_eq!(report_threshold(50), 5);
        assert_eq!(report_threshold(5), 1);
        assert_eq!(report_threshold(0), 1);
        let limits = ConnLimits::new(100, 50);
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let slots: Vec<_> = (0..5).map(|_| limits.admit(ip).expect("slot")).collect();
        assert_eq!(limits.snapshot(report_threshold(50)), vec![(ip, 5)]);
        drop(slots);
        assert!(limits.snapshot(1).is_empty());
    }
}
