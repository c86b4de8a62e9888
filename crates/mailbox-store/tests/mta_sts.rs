//! MtaStsCache service against a real PostgreSQL: a policy cached by one
//! replica is seen by another until its max_age ends; input is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailstore_api::pb;
use test_kit::TestStore;

fn put(domain: &str, id: &str, text: &str, max_age_secs: u64) -> pb::PutMtaStsPolicyRequest {
    pb::PutMtaStsPolicyRequest {
        domain: domain.into(),
        id: id.into(),
        text: text.into(),
        max_age_secs,
    }
}

fn get(domain: &str) -> pb::GetMtaStsPolicyRequest {
    pb::GetMtaStsPolicyRequest {
        domain: domain.into(),
    }
}

#[tokio::test]
async fn policies_are_shared_replaced_and_expire() {
    let s = TestStore::start().await;
    let replica = s.replica().await;
    let mut a = s.service_client().mta_sts;
    let mut b = replica.service_client().mta_sts;
    let text = "version: STSv1\nmode: enforce\nmx: mx.b.test\nmax_age: 86400\n";
    a.put_mta_sts_policy(put("B.test.", "v1", text, 86_400))
        .await
        .unwrap();
    let r = b
        .get_mta_sts_policy(get("b.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.found);
    assert_eq!((r.id.as_str(), r.text.as_str()), ("v1", text));
    assert!(
        r.remaining_secs > 86_000 && r.remaining_secs <= 86_400,
        "{r:?}"
    );
    b.put_mta_sts_policy(put("b.test", "v2", "mode: testing", 1))
        .await
        .unwrap();
    let r = a
        .get_mta_sts_policy(get("B.TEST"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.found, r.id.as_str()), (true, "v2"), "replaced");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = a
        .get_mta_sts_policy(get("b.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found, "expired: {r:?}");
    let r = a
        .get_mta_sts_policy(get("none.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found);
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let s = TestStore::start().await;
    let mut c = s.service_client().mta_sts;
    for req in [
        put("", "v1", "x", 60),
        put(&"d".repeat(256), "v1", "x", 60),
        put("b.test", "", "x", 60),
        put("b.test", &"1".repeat(33), "x", 60),
        put("b.test", "v-1", "x", 60),
        put("b.test", "v1", &"x".repeat(64 * 1024 + 1), 60),
        put("b.test", "v1", "a\0b", 60),
        put("b.test", "v1", "x", 0),
        put("b.test", "v1", "x", 31_557_601),
    ] {
        let e = c
            .put_mta_sts_policy(req.clone())
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{req:?}");
    }
    let e = c.get_mta_sts_policy(get("")).await.expect_err("empty");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
