//! delivery in process against a real store (test_kit, real PostgreSQL):
//! what forwarding does to the envelope and to the DKIM mark (issue 14) —
//! SRS on mail forwarded to a remote alias target, bounces to the SRS
//! address routed back, our signature only on what we vouch for, and
//! loops cut by `Delivered-To:` with no DSN; and the latency metric of a
//! local delivery.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use service_kit::Shutdown;
use test_kit::{TestStore, enqueue, jobs, wait_until};

const SECRET: &str = "forwarding-test-secret";

fn config(store: &TestStore) -> delivery::Config {
    delivery::Config {
        store: service_kit::StoreArgs::new(store.grpc_url.clone(), store.service_token.clone()),
        worker_id: Some("forwarding-test".into()),
        concurrency: 2,
        batch: 8,
        lease_ms: 30_000,
        max_attempts: 5,
        hostname: "mx.example.org".into(),
        quota_give_up_secs: 3600,
        dmarc_report_address: None,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        srs: service_kit::SrsArgs {
            srs_secret: Some(SECRET.into()),
            srs_domain: Some("example.org".into()),
            ..service_kit::SrsArgs::default()
        },
    }
}

async fn enqueue_with(client: &StoreClient, header: pb::EnqueueHeader, raw: &[u8]) -> u64 {
    let header = pb::EnqueueHeader {
        kind: if header.kind == 0 {
            pb::QueueKind::Inbound as i32
        } else {
            header.kind
        },
        idempotency_key: format!("t-{:016x}", rand_key()),
        ..header
    };
    test_kit::enqueue_header(client, header, raw)
        .await
        .unwrap()
        .job_id
}

fn rand_key() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

async fn job(client: &StoreClient, id: u64) -> pb::Job {
    client
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

/// Outbound jobs, in queue order.
async fn outbound(store: &TestStore) -> Vec<pb::Job> {
    let c = store.client();
    let mut out = Vec::new();
    for s in jobs(store, pb::QueueKind::Outbound, pb::JobState::Unspecified).await {
        out.push(job(&c, s.id).await);
    }
    out.sort_by_key(|j| j.id);
    out
}

fn rcpt(j: &pb::Job) -> String {
    j.recipients[0].recipient.clone().unwrap().address
}

/// Threat model T53/T105/T106: mail from outside forwarded by an alias
/// leaves with an SRS sender and without the DKIM mark, even with a forged
/// `From:` of our domain; an authenticated submission keeps its sender and
/// the mark; a bounce to the SRS address goes to the original sender, one
/// with a forged hash nowhere; the store refuses the mark to a child of an
/// unmarked job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_rewrites_the_sender_and_never_signs_mail_from_outside() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    s.add_user("alice@example.org", "alice-password").await;
    let c = s.client();
    c.accounts
        .clone()
        .create_alias(pb::CreateAliasRequest {
            source: "fwd@example.org".into(),
            target: "carol@elsewhere.test".into(),
        })
        .await
        .unwrap();
    // The store keeps the mark to children of marked jobs, whoever asks
    // (parents leased here, as delivery would, before delivery starts).
    for parent_sign in [false, true] {
        let parent = enqueue_with(
            &c,
            pb::EnqueueHeader {
                mail_from: "alice@example.org".into(),
                recipients: vec![pb::Recipient {
                    address: "x@remote.test".into(),
                    ..Default::default()
                }],
                sign: parent_sign,
                ..Default::default()
            },
            b"Subject: held\r\n\r\nx\r\n",
        )
        .await;
        let leased = c
            .queue
            .clone()
            .lease(pb::LeaseRequest {
                kind: pb::QueueKind::Inbound as i32,
                worker_id: "tester".into(),
                max_jobs: 1,
                lease_ttl_ms: 600_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(leased.jobs[0].id, parent);
        let child = enqueue_with(
            &c,
            pb::EnqueueHeader {
                kind: pb::QueueKind::Outbound as i32,
                mail_from: "alice@example.org".into(),
                recipients: vec![pb::Recipient {
                    address: "x@remote.test".into(),
                    ..Default::default()
                }],
                parent_job_id: parent,
                parent_worker_id: "tester".into(),
                sign: true,
                not_before: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
            b"",
        )
        .await;
        assert_eq!(job(&c, child).await.sign, parent_sign);
    }

    let shutdown = Shutdown::new();
    let run = tokio::spawn(delivery::run(config(&s), shutdown.clone()));

    // From outside (smtp-in's MX: no mark), a forged From: of our domain.
    let forwarded = enqueue(
        &c,
        "from-outside",
        "mallory@spoof.test",
        &["fwd@example.org"],
        b"From: alice@example.org\r\nSubject: forged\r\n\r\nphish\r\n",
    )
    .await
    .unwrap()
    .job_id;
    // An authenticated submission to a remote address (marked by smtp-in).
    let submitted = enqueue_with(
        &c,
        pb::EnqueueHeader {
            mail_from: "alice@example.org".into(),
            recipients: vec![pb::Recipient {
                address: "dave@remote.test".into(),
                ..Default::default()
            }],
            authenticated_user: "alice@example.org".into(),
            sign: true,
            ..Default::default()
        },
        b"From: alice@example.org\r\nSubject: mine\r\n\r\nhello\r\n",
    )
    .await;
    wait_until("two outbound jobs", Duration::from_secs(30), || async {
        outbound(&s).await.len() == 4
    })
    .await;
    let out = outbound(&s).await;
    let fwd = out.iter().find(|j| j.parent_job_id == forwarded).unwrap();
    let sub = out.iter().find(|j| j.parent_job_id == submitted).unwrap();
    assert_eq!(rcpt(fwd), "carol@elsewhere.test");
    assert!(!fwd.sign, "forwarded mail from outside must leave unsigned");
    // smtp-out puts this on top as Delivered-To: (T107).
    assert_eq!(fwd.delivered_to, "fwd@example.org");
    assert_eq!(sub.delivered_to, "");
    assert!(fwd.mail_from.starts_with("SRS0="), "{}", fwd.mail_from);
    assert!(
        fwd.mail_from.ends_with("=spoof.test=mallory@example.org"),
        "{}",
        fwd.mail_from
    );
    let srs = mail_wire::srs::Srs::new(SECRET.as_bytes(), "example.org", 21);
    assert_eq!(
        srs.reverse(&fwd.mail_from, chrono::Utc::now().timestamp())
            .unwrap()
            .as_deref(),
        Some("mallory@spoof.test")
    );
    assert_eq!(rcpt(sub), "dave@remote.test");
    assert_eq!(sub.mail_from, "alice@example.org");
    assert!(sub.sign, "an authenticated submission is signed");

    // The remote bounces to the SRS address: back to mallory (relayed);
    // a forged SRS address fails, and a bounce gets no DSN.
    let bounce = enqueue(
        &c,
        "bounce",
        "",
        &[fwd.mail_from.as_str()],
        b"Subject: bounce\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    let forged = mail_wire::srs::Srs::new(b"guess", "example.org", 21)
        .forward("victim@target.test", chrono::Utc::now().timestamp())
        .unwrap();
    let bad = enqueue(
        &c,
        "forged",
        "",
        &[forged.as_str()],
        b"Subject: bounce\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    wait_until("the bounce relayed", Duration::from_secs(30), || async {
        outbound(&s).await.iter().any(|j| j.parent_job_id == bounce)
    })
    .await;
    let back = outbound(&s)
        .await
        .into_iter()
        .find(|j| j.parent_job_id == bounce)
        .unwrap();
    assert_eq!(rcpt(&back), "mallory@spoof.test");
    assert_eq!(back.mail_from, "");
    assert!(!back.sign);
    wait_until(
        "the forged SRS bounce failed",
        Duration::from_secs(30),
        || async { job(&c, bad).await.recipients[0].state == pb::RecipientState::Failed as i32 },
    )
    .await;
    assert!(!outbound(&s).await.iter().any(|j| j.parent_job_id == bad));
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Threat model T107: loops across installations. A message that comes
/// back with `Delivered-To:` naming the recipient (the other installation
/// forwarded it back) is neither delivered nor forwarded again, and its
/// sender gets exactly one DSN (from <>, so it bounces no further); a
/// normal message to the same alias is forwarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_to_stops_a_loop_with_one_dsn() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let alice = s.add_user("alice@example.org", "alice-password").await;
    let c = s.client();
    c.accounts
        .clone()
        .create_alias(pb::CreateAliasRequest {
            source: "loop@example.org".into(),
            target: "back@other.test".into(),
        })
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(delivery::run(config(&s), shutdown.clone()));
    let looped_alias = enqueue(
        &c,
        "looped-alias",
        "someone@other.test",
        &["loop@example.org"],
        b"Delivered-To: back@other.test\r\nDelivered-To: <LOOP@example.org>\r\nSubject: again\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    let looped_user = enqueue(
        &c,
        "looped-user",
        "someone@other.test",
        &["alice@example.org"],
        b"Delivered-To: alice@example.org\r\nSubject: again\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    let fresh = enqueue(
        &c,
        "fresh",
        "someone@other.test",
        &["loop@example.org"],
        b"Subject: first time\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    for id in [looped_alias, looped_user] {
        wait_until(
            "the looping message failed",
            Duration::from_secs(30),
            || async {
                let j = job(&c, id).await;
                j.recipients[0].state == pb::RecipientState::Failed as i32
            },
        )
        .await;
        let detail = job(&c, id).await.recipients[0].detail.clone();
        assert!(detail.starts_with("5.4.6"), "{detail}");
    }
    wait_until(
        "the fresh message forwarded",
        Duration::from_secs(30),
        || async { outbound(&s).await.iter().any(|j| j.parent_job_id == fresh) },
    )
    .await;
    // One DSN per looping message: a job from <> (delivery queues DSNs
    // inbound, then relays them like any mail) to its sender; plus the one
    // forward.
    let dsns = || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Unspecified)
            .await
            .into_iter()
            .filter(|j| j.mail_from.is_empty())
            .collect::<Vec<_>>()
    };
    wait_until(
        "a DSN for each looping message, relayed to its sender",
        Duration::from_secs(30),
        || async {
            let out = outbound(&s).await;
            out.iter().filter(|j| j.mail_from.is_empty()).count() == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dsns().await.len(), 2, "one DSN per looping message");
    let out = outbound(&s).await;
    assert_eq!(out.len(), 3, "{out:?}");
    for j in out.iter().filter(|j| j.mail_from.is_empty()) {
        assert_eq!(rcpt(j), "someone@other.test");
    }
    let inbound = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Unspecified).await;
    assert_eq!(inbound.len(), 5, "{inbound:?}");
    assert!(test_kit::subjects(&s, alice, "INBOX").await.is_empty());
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// The metric the `EpistoleDeliverySlow` alert watches
/// (deploy/monitoring/alerts.yaml): a local delivery records its time from
/// acceptance to mailbox in `delivery_latency_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_delivery_records_its_latency() {
    let metrics = service_kit::metrics_handle();
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let alice = s.add_user("alice@example.org", "alice-password").await;
    let shutdown = Shutdown::new();
    let run = tokio::spawn(delivery::run(config(&s), shutdown.clone()));
    enqueue(
        &s.client(),
        "latency",
        "someone@other.test",
        &["alice@example.org"],
        b"Subject: timed\r\n\r\nx\r\n",
    )
    .await
    .unwrap();
    wait_until("delivered", Duration::from_secs(30), || async {
        test_kit::subjects(&s, alice, "INBOX").await == vec!["timed".to_string()]
    })
    .await;
    let text = metrics.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("delivery_latency_seconds_count") && !l.ends_with(" 0")),
        "{text}"
    );
    shutdown.cancel();
    let _ = run.await;
}
