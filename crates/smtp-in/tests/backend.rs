//! The store calls smtp-in makes, against a real store.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailstore_api::pb;
use smtp_in::store::{AuthOutcome, Backend, CHUNK_SIZE, Recipient};
use test_kit::TestStore;

/// A retried Enqueue (same idempotency key) never makes a second job, and a
/// message larger than one chunk arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_idempotent_and_chunked() {
    let store = TestStore::start().await;
    store.add_domain("ours.example").await;
    let backend = Backend::new(store.client(), Duration::from_secs(5), 3);
    let body: Vec<u8> = (0..CHUNK_SIZE * 2 + 1234)
        .map(|i| b"abcdefghij\r\n"[i % 12])
        .collect();
    let prefix = b"Received: from x ([192.0.2.1])\r\n\tby y; Thu, 26 Nov 2026 11:00:00 +0000\r\n";
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Inbound.into(),
        idempotency_key: "smtp-in:test:1:abc".into(),
        mail_from: "a@remote.example".into(),
        recipients: vec![pb::Recipient {
            address: "u@ours.example".into(),
            ..Default::default()
        }],
        size: (prefix.len() + body.len()) as u64,
        ..Default::default()
    };
    let first = backend
        .enqueue(header.clone(), &[prefix, &body], "sid1")
        .await
        .unwrap();
    let again = backend
        .enqueue(header, &[prefix, &body], "sid1")
        .await
        .unwrap();
    assert_eq!(first.job_id, again.job_id);
    assert!(again.duplicate);

    let mut q = store.client().queue;
    let jobs = q
        .list_jobs(pb::ListJobsRequest {
            kind: pb::QueueKind::Inbound.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    let mut s = q
        .read_message(pb::ReadMessageRequest {
            job_id: first.job_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(c) = s.message().await.unwrap() {
        got.extend_from_slice(&c.data);
    }
    let mut want = prefix.to_vec();
    want.extend_from_slice(&body);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_auth() {
    let store = TestStore::start().await;
    store.add_domain("ours.example").await;
    let id = store.add_user("u@ours.example", "pw").await;
    let b = Backend::new(store.client(), Duration::from_secs(5), 3);
    assert_eq!(
        b.lookup_recipient("u@ours.example", "s").await.unwrap(),
        Recipient::Local
    );
    assert_eq!(
        b.lookup_recipient("zz@ours.example", "s").await.unwrap(),
        Recipient::Unknown
    );
    assert_eq!(
        b.lookup_recipient("u@else.example", "s").await.unwrap(),
        Recipient::NotLocal
    );
    assert_eq!(
        b.authenticate("u@ours.example", "pw", "192.0.2.1", "s")
            .await
            .unwrap(),
        AuthOutcome::Ok {
            user_id: id,
            address: "u@ours.example".into()
        }
    );
    assert_eq!(
        b.authenticate("u@ours.example", "no", "192.0.2.1", "s")
            .await
            .unwrap(),
        AuthOutcome::Failed
    );
    assert!(b.check_sender(id, "u@ours.example", "s").await.unwrap());
    assert!(!b.check_sender(id, "other@ours.example", "s").await.unwrap());
    b.ping().await.unwrap();

    // Unreachable store: an error (the session turns it into 451), not a hang.
    let dead = Backend::new(
        mailstore_api::connect("http://127.0.0.1:9", "t").unwrap(),
        Duration::from_secs(2),
        2,
    );
    assert!(dead.lookup_recipient("u@ours.example", "s").await.is_err());
}

/// A store that is down for a moment after the final dot: with a retry
/// budget the Enqueue outlives the outage (250, one job); without one it
/// fails at once (the sender gets 451 and resends — a possible duplicate
/// if the first try had committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_retry_budget_outlives_a_short_store_outage() {
    let mut store = TestStore::start().await;
    store.add_domain("ours.example").await;
    let client = store.client();
    let header = |key: &str| pb::EnqueueHeader {
        kind: pb::QueueKind::Inbound.into(),
        idempotency_key: key.into(),
        mail_from: "a@remote.example".into(),
        recipients: vec![pb::Recipient {
            address: "u@ours.example".into(),
            ..Default::default()
        }],
        size: 9,
        ..Default::default()
    };
    let quick = Backend::new(client.clone(), Duration::from_secs(1), 3);
    let patient = Backend::new(client, Duration::from_secs(1), 3)
        .with_enqueue_budget(Duration::from_secs(30));
    store.stop().await;
    assert!(
        quick
            .enqueue(header("budget:0"), &[b"Hi there\n"], "s")
            .await
            .is_err(),
        "no budget: the outage is an error at once"
    );
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        store.restart().await;
        store
    });
    let r = patient
        .enqueue(header("budget:30"), &[b"Hi there\n"], "s")
        .await
        .expect("queued once the store is back");
    assert!(r.job_id > 0);
    let store = back.await.unwrap();
    let jobs = test_kit::jobs(&store, pb::QueueKind::Inbound, pb::JobState::Unspecified).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
}
