//! Guard service against a real PostgreSQL: shared counters and marks.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailstore_api::pb;
use test_kit::TestStore;

fn hit(scope: &str, key: &str, cost: u32, limit: u32, window_secs: u32) -> pb::HitRequest {
    pb::HitRequest {
        scope: scope.into(),
        key: key.into(),
        cost,
        limit,
        window_secs,
    }
}

#[tokio::test]
async fn concurrent_hits_never_pass_the_limit() {
    let s = TestStore::start().await;
    let replica = s.replica().await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        // Half the callers on each replica: the limit holds across them.
        let mut g = if i % 2 == 0 {
            s.service_client()
        } else {
            replica.service_client()
        }
        .guard;
        tasks.push(tokio::spawn(async move {
            g.hit(hit("smtp_msg_ip", "192.0.2.1", 1, 25, 3600))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.allowed {
            allowed += 1;
        } else {
            assert!(r.retry_after_ms > 0 && r.retry_after_ms <= 3_600_000);
            assert_eq!(r.used, 25);
        }
    }
    assert_eq!(allowed, 25);
    // cost 0 only reads.
    let r = s
        .client()
        .guard
        .hit(hit("smtp_msg_ip", "192.0.2.1", 0, 25, 3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.allowed, r.used), (true, 25));
    // A cost larger than what is left is refused and not recorded.
    let r = s
        .client()
        .guard
        .hit(hit("smtp_msg_ip", "192.0.2.2", 30, 25, 3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.allowed, r.used), (false, 0));
}

#[tokio::test]
async fn windows_are_fixed_and_end() {
    let s = TestStore::start().await;
    let mut g = s.service_client().guard;
    // Start right after a 2 s boundary, so both hits fall in one window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(
        2_000 - u64::try_from(now.as_millis() % 2_000).unwrap() + 50,
    ))
    .await;
    assert!(
        g.hit(hit("w", "k", 1, 1, 2))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let refused = g.hit(hit("w", "k", 1, 1, 2)).await.unwrap().into_inner();
    assert!(!refused.allowed);
    assert!(refused.retry_after_ms > 0 && refused.retry_after_ms <= 2_000);
    // Another window length is another counter.
    assert!(
        g.hit(hit("w", "k", 1, 1, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    tokio::time::sleep(Duration::from_millis(refused.retry_after_ms + 50)).await;
    let next = g.hit(hit("w", "k", 1, 1, 2)).await.unwrap().into_inner();
    assert_eq!((next.allowed, next.used), (true, 1));
}

#[tokio::test]
async fn ipv6_keys_share_their_64_and_accounts_their_case() {
    let s = TestStore::start().await;
    let mut g = s.service_client().guard;
    assert!(
        g.hit(hit("conn_ip", "2001:db8:1:2::1", 1, 2, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        g.hit(hit("conn_ip", "2001:db8:1:2:ffff::9", 1, 2, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !g.hit(hit("conn_ip", "2001:db8:1:2:abcd::1", 1, 2, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        g.hit(hit("conn_ip", "2001:db8:1:3::1", 1, 2, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // IPv4-mapped IPv6 is the IPv4 address.
    assert!(
        g.hit(hit("conn_ip", "198.51.100.4", 1, 1, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !g.hit(hit("conn_ip", "::ffff:198.51.100.4", 1, 1, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        g.hit(hit("smtp_rcpt_account", "Alice@Example.ORG", 3, 3, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let r = g
        .hit(hit("smtp_rcpt_account", "alice@example.org", 1, 3, 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.allowed, r.used), (false, 3));
    // Scopes are separate.
    assert!(
        g.hit(hit("smtp_msg_account", "alice@example.org", 1, 3, 60))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let s = TestStore::start().await;
    let mut g = s.service_client().guard;
    for req in [
        hit("", "k", 1, 1, 60),
        hit(&"s".repeat(65), "k", 1, 1, 60),
        hit("s", "", 1, 1, 60),
        hit("s", &"k".repeat(321), 1, 1, 60),
        hit("s", "k", 1, 1, 0),
    ] {
        let e = g.hit(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    let e = g
        .set_mark(pb::SetMarkRequest {
            scope: "s".into(),
            key: String::new(),
            ttl_secs: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn marks_last_their_ttl() {
    let s = TestStore::start().await;
    let mut g = s.service_client().guard;
    let check = |key: &str| pb::CheckMarkRequest {
        scope: "greet_pass".into(),
        key: key.into(),
    };
    let set = |key: &str, ttl_secs| pb::SetMarkRequest {
        scope: "greet_pass".into(),
        key: key.into(),
        ttl_secs,
    };
    assert!(
        !g.check_mark(check("192.0.2.9"))
            .await
            .unwrap()
            .into_inner()
            .marked
    );
    g.set_mark(set("192.0.2.9", 1)).await.unwrap();
    g.set_mark(set("2001:db8:5:6::1", 3600)).await.unwrap();
    let m = g.check_mark(check("192.0.2.9")).await.unwrap().into_inner();
    assert!(m.marked && m.remaining_ms > 0 && m.remaining_ms <= 1_000);
    // Another address of the same /64 is marked too.
    let m = g
        .check_mark(check("2001:db8:5:6::77"))
        .await
        .unwrap()
        .into_inner();
    assert!(m.marked && m.remaining_ms > 3_590_000);
    // Setting a shorter TTL again does not shorten the mark.
    g.set_mark(set("2001:db8:5:6::1", 5)).await.unwrap();
    assert!(
        g.check_mark(check("2001:db8:5:6::1"))
            .await
            .unwrap()
            .into_inner()
            .remaining_ms
            > 3_590_000
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let m = g.check_mark(check("192.0.2.9")).await.unwrap().into_inner();
    assert_eq!((m.marked, m.remaining_ms), (false, 0));
    // ttl 0 forgets.
    g.set_mark(set("2001:db8:5:6::1", 0)).await.unwrap();
    assert!(
        !g.check_mark(check("2001:db8:5:6::1"))
            .await
            .unwrap()
            .into_inner()
            .marked
    );
}
