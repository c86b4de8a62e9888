//! Store integration tests over gRPC against a real PostgreSQL (test-kit).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use mailstore_api::pb;
use test_kit::{TestStore, append, collect_body, deliver_request, enqueue, lease_inbound};

async fn setup() -> (TestStore, u64) {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let uid = s.add_user("alice@example.org", "correct horse").await;
    (s, uid)
}

fn msg(n: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: alice@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

async fn inbox(s: &TestStore, user: u64) -> pb::Mailbox {
    s.client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn all_meta(s: &TestStore, mailbox_id: u64) -> Vec<pb::MessageMeta> {
    let mut st = s
        .client()
        .mailboxes
        .fetch_meta(pb::FetchMetaRequest {
            mailbox_id,
            with_structure: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(b) = st.message().await.unwrap() {
        out.extend(b.messages);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_dense_unique_uids() {
    let (s, user) = setup().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = s.client();
        tasks.push(tokio::spawn(async move {
            let mut uids = Vec::new();
            for i in 0..125 {
                let r = append(&c, user, "INBOX", &msg(t * 1000 + i), &[])
                    .await
                    .unwrap();
                uids.push(r.uid);
            }
            uids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<u32>>());
    let mb = inbox(&s, user).await;
    assert_eq!(mb.messages, 1000);
    assert_eq!(mb.uidnext, 1001);
}

#[tokio::test]
async fn expunge_then_append_never_reuses_a_uid_and_flags_bump_modseq() {
    let (s, user) = setup().await;
    let c = s.client();
    for i in 0..3 {
        s.append(user, "INBOX", &msg(i)).await;
    }
    let mb = inbox(&s, user).await;
    let before = mb.highestmodseq;
    let r = c
        .mailboxes
        .clone()
        .store_flags(pb::StoreFlagsRequest {
            mailbox_id: mb.id,
            uids: Some(pb::UidSet {
                ranges: vec![pb::UidRange { first: 3, last: 3 }],
            }),
            op: pb::FlagOp::Add as i32,
            flags: vec!["\\Deleted".into(), "\\Seen".into()],
            unchanged_since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.highestmodseq > before);
    assert_eq!(r.updated.len(), 1);
    assert_eq!(r.updated[0].modseq, r.highestmodseq);
    assert_eq!(
        r.updated[0].flags,
        vec!["\\Seen".to_string(), "\\Deleted".to_string()]
    );
    // Setting the same flags again changes nothing and costs no MODSEQ.
    let again = c
        .mailboxes
        .clone()
        .store_flags(pb::StoreFlagsRequest {
            mailbox_id: mb.id,
            uids: Some(pb::UidSet {
                ranges: vec![pb::UidRange { first: 3, last: 3 }],
            }),
            op: pb::FlagOp::Add as i32,
            flags: vec!["\\Seen".into()],
            unchanged_since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.highestmodseq, r.highestmodseq);
    // UNCHANGEDSINCE below the message's modseq refuses the change.
    let cond = c
        .mailboxes
        .clone()
        .store_flags(pb::StoreFlagsRequest {
            mailbox_id: mb.id,
            uids: Some(pb::UidSet {
                ranges: vec![pb::UidRange { first: 3, last: 3 }],
            }),
            op: pb::FlagOp::Remove as i32,
            flags: vec!["\\Seen".into()],
            unchanged_since: before,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cond.modified, vec![3]);
    let ex = c
        .mailboxes
        .clone()
        .expunge(pb::ExpungeRequest {
            mailbox_id: mb.id,
            uids: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ex.expunged, vec![3]);
    assert!(ex.highestmodseq > r.highestmodseq);
    let next = s.append(user, "INBOX", &msg(9)).await;
    assert_eq!(next, 4, "UID 3 must never be reused");
    let gone = c
        .mailboxes
        .clone()
        .list_expunged(pb::ListExpungedRequest {
            mailbox_id: mb.id,
            since_modseq: r.highestmodseq,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.uids, vec![3]);
}

#[tokio::test]
async fn same_blob_in_fifty_mailboxes_is_stored_once() {
    let (s, user) = setup().await;
    let c = s.client();
    let raw = msg(42);
    for i in 0..50 {
        let name = format!("Box{i}");
        c.mailboxes
            .clone()
            .create_mailbox(pb::CreateMailboxRequest {
                user_id: user,
                name: name.clone(),
                special_use: String::new(),
            })
            .await
            .unwrap();
        append(&c, user, &name, &raw, &[]).await.unwrap();
    }
    let pool = sqlx::PgPool::connect(&s.database_url).await.unwrap();
    let blobs: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let msgs: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((blobs, msgs), (1, 50));
}

#[tokio::test]
async fn thirty_megabytes_round_trip_byte_exact() {
    let (s, user) = setup().await;
    let mut raw = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut x: u32 = 12345;
    while raw.len() < 30 * 1024 * 1024 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        // Every byte value, including NUL, bare CR and bare LF.
        raw.push((x >> 16) as u8);
        if x.is_multiple_of(97) {
            raw.extend_from_slice(b"\r\0\n\n\r");
        }
    }
    let c = s.client();
    let r = append(&c, user, "INBOX", &raw, &[]).await.unwrap();
    assert_eq!(r.size, raw.len() as u64);
    let body = c
        .mailboxes
        .clone()
        .fetch_body(pb::FetchBodyRequest {
            mailbox_id: r.mailbox_id,
            uid: r.uid,
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let back = collect_body(body).await.unwrap();
    assert!(back == raw, "30 MB message differs after the round trip");
    // A byte range in the middle.
    let part = c
        .mailboxes
        .clone()
        .fetch_body(pb::FetchBodyRequest {
            mailbox_id: r.mailbox_id,
            uid: r.uid,
            offset: 1_000_000,
            length: 700_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        collect_body(part).await.unwrap(),
        raw[1_000_000..1_700_000].to_vec()
    );
}

#[tokio::test]
async fn ten_thousand_nested_parts_are_stored() {
    let (s, user) = setup().await;
    let mut raw = b"From: a@example.org\r\nSubject: nest\r\n".to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\nleaf\r\n");
    for i in (0..10_000).rev() {
        raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    let r = s.append(user, "INBOX", &raw).await;
    assert_eq!(r, 1);
    let mb = inbox(&s, user).await;
    let meta = all_meta(&s, mb.id).await;
    let st = meta[0].structure.as_ref().unwrap();
    assert!(
        st.parts.len() < 100,
        "structure is bounded: {} parts",
        st.parts.len()
    );
    assert!(st.parts.iter().any(|p| p.truncated));
}

#[tokio::test]
async fn metadata_is_precomputed() {
    let (s, user) = setup().await;
    let raw = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nplain\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--B--\r\n";
    let uid = s.append(user, "INBOX", raw).await;
    let mb = inbox(&s, user).await;
    let meta = all_meta(&s, mb.id).await;
    assert_eq!(meta[0].uid, uid);
    assert_eq!(meta[0].size, raw.len() as u64);
    assert_eq!(meta[0].crlf_size, raw.len() as u64, "CRLF-clean: same size");
    let lf = s.append(user, "INBOX", b"Subject: lf\n\nbare\nlines").await;
    let lf_meta = all_meta(&s, mb.id).await;
    let lf_meta = lf_meta.iter().find(|m| m.uid == lf).unwrap();
    assert_eq!(
        lf_meta.crlf_size,
        mailstore_api::crlf_size(b"Subject: lf\n\nbare\nlines")
    );
    assert_eq!(lf_meta.crlf_size, 28);
    let st = meta[0].structure.as_ref().unwrap();
    let env = st.envelope.as_ref().unwrap();
    assert_eq!(env.subject.as_deref(), Some(&b"hello"[..]));
    assert_eq!(env.message_id.as_deref(), Some(&b"<m1@example.org>"[..]));
    assert_eq!(st.parts.len(), 3);
    assert_eq!(st.parts[2].section, "2");
    let p = &st.parts[2];
    let body = s
        .client()
        .mailboxes
        .fetch_body(pb::FetchBodyRequest {
            mailbox_id: mb.id,
            uid,
            offset: p.body_offset,
            length: p.end_offset - p.body_offset,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collect_body(body).await.unwrap(), b"<p>x</p>");
}

#[tokio::test]
async fn copy_move_search_and_default_mailboxes() {
    let (s, user) = setup().await;
    let c = s.client();
    let list = c
        .mailboxes
        .clone()
        .list_mailboxes(pb::ListMailboxesRequest {
            user_id: user,
            with_counts: true,
        })
        .await
        .unwrap()
        .into_inner();
    let names: HashSet<(String, String)> = list
        .mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.special_use.clone()))
        .collect();
    for (n, su) in [
        ("INBOX", ""),
        ("Sent", "Sent"),
        ("Drafts", "Drafts"),
        ("Trash", "Trash"),
        ("Junk", "Junk"),
        ("Archive", "Archive"),
    ] {
        assert!(names.contains(&(n.to_string(), su.to_string())), "{n}");
    }
    s.append(user, "INBOX", b"Subject: apples\r\n\r\nred fruit\r\n")
        .await;
    s.append(user, "INBOX", b"Subject: pears\r\n\r\ngreen fruit\r\n")
        .await;
    let mb = inbox(&s, user).await;
    let found = c
        .mailboxes
        .clone()
        .search(pb::SearchRequest {
            mailbox_id: mb.id,
            key: Some(pb::SearchKey {
                key: Some(pb::search_key::Key::Body("GREEN".into())),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.uids, vec![2]);
    let found = c
        .mailboxes
        .clone()
        .search(pb::SearchRequest {
            mailbox_id: mb.id,
            key: Some(pb::SearchKey {
                key: Some(pb::search_key::Key::Header(pb::HeaderMatch {
                    field: "subject".into(),
                    value: "APPLE".into(),
                })),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.uids, vec![1]);
    let mv = c
        .mailboxes
        .clone()
        .copy_messages(pb::CopyMessagesRequest {
            mailbox_id: mb.id,
            uids: Some(pb::UidSet {
                ranges: vec![pb::UidRange { first: 1, last: 2 }],
            }),
            user_id: user,
            destination: "Archive".into(),
            r#move: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mv.source_uids, vec![1, 2]);
    assert_eq!(mv.destination_uids, vec![1, 2]);
    assert_eq!(inbox(&s, user).await.messages, 0);
    // Rename INBOX: messages move, INBOX stays.
    s.append(user, "INBOX", &msg(1)).await;
    c.mailboxes
        .clone()
        .rename_mailbox(pb::RenameMailboxRequest {
            user_id: user,
            from: "INBOX".into(),
            to: "Old".into(),
        })
        .await
        .unwrap();
    assert_eq!(inbox(&s, user).await.messages, 0);
    let old = c
        .mailboxes
        .clone()
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: "Old".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.messages, 1);
    let bad = c
        .mailboxes
        .clone()
        .create_mailbox(pb::CreateMailboxRequest {
            user_id: user,
            name: "../../x".into(),
            special_use: String::new(),
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn enqueue_is_idempotent_and_leases_are_exclusive() {
    let s = TestStore::start().await;
    let c = s.client();
    let a = enqueue(
        &c,
        "key-1",
        "x@example.net",
        &["alice@example.org"],
        &msg(1),
    )
    .await
    .unwrap();
    let b = enqueue(
        &c,
        "key-1",
        "x@example.net",
        &["alice@example.org"],
        &msg(1),
    )
    .await
    .unwrap();
    assert_eq!(a.job_id, b.job_id);
    assert!(!a.duplicate && b.duplicate);
    for i in 0..40 {
        enqueue(
            &c,
            &format!("k{i}"),
            "x@example.net",
            &["alice@example.org"],
            &msg(i),
        )
        .await
        .unwrap();
    }
    // Two workers leasing concurrently never get the same job.
    let lease = |w: &'static str| {
        let mut q = c.queue.clone();
        async move {
            let mut got = Vec::new();
            loop {
                let r = q
                    .lease(pb::LeaseRequest {
                        kind: pb::QueueKind::Inbound as i32,
                        worker_id: w.into(),
                        max_jobs: 3,
                        lease_ttl_ms: 60_000,
                        wait_ms: 0,
                        max_attempts: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if r.jobs.is_empty() {
                    return got;
                }
                got.extend(r.jobs.iter().map(|j| j.id));
            }
        }
    };
    let (x, y) = tokio::join!(lease("w1"), lease("w2"));
    let xs: HashSet<u64> = x.iter().copied().collect();
    assert!(y.iter().all(|j| !xs.contains(j)), "a job was leased twice");
    assert_eq!(x.len() + y.len(), 41);
    // Only the lease holder may finish.
    let wrong = c
        .queue
        .clone()
        .finish_job(pb::FinishJobRequest {
            job_id: x[0],
            worker_id: "w2".into(),
            outcome: pb::FinishOutcome::Done as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::FailedPrecondition);
    c.queue
        .clone()
        .finish_job(pb::FinishJobRequest {
            job_id: x[0],
            worker_id: "w1".into(),
            outcome: pb::FinishOutcome::Done as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let detail = c
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: x[0] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detail.summary.unwrap().state, pb::JobState::Done as i32);
    assert!(
        detail
            .events
            .iter()
            .any(|e| e.kind == pb::EventKind::Queued as i32)
    );
}

#[tokio::test]
async fn expired_lease_goes_to_another_worker_and_poison_is_quarantined() {
    let s = TestStore::start().await;
    let c = s.client();
    let job = enqueue(&c, "p", "x@example.net", &["alice@example.org"], &msg(1))
        .await
        .unwrap()
        .job_id;
    let req = |w: &str| pb::LeaseRequest {
        kind: pb::QueueKind::Inbound as i32,
        worker_id: w.into(),
        max_jobs: 10,
        lease_ttl_ms: 1_000,
        wait_ms: 3_000,
        max_attempts: 3,
    };
    let mut q = c.queue.clone();
    let first = q.lease(req("w1")).await.unwrap().into_inner();
    assert_eq!(first.jobs[0].id, job);
    // w2 waits (no polling) and gets the job once w1's lease expires.
    let second = q.lease(req("w2")).await.unwrap().into_inner();
    assert_eq!(second.jobs.len(), 1);
    assert_eq!(second.jobs[0].id, job);
    assert_eq!(second.jobs[0].attempts, 2);
    let third = q.lease(req("w3")).await.unwrap().into_inner();
    assert_eq!(third.jobs[0].attempts, 3);
    // Three unfinished leases: the fourth lease quarantines it instead.
    let fourth = q.lease(req("w4")).await.unwrap().into_inner();
    assert!(fourth.jobs.is_empty());
    let d = q
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.summary.unwrap().state, pb::JobState::Quarantined as i32);
    assert!(
        d.events
            .iter()
            .any(|e| e.kind == pb::EventKind::Quarantined as i32)
    );
}

#[tokio::test]
async fn lease_waiter_is_woken_by_enqueue() {
    let s = TestStore::start().await;
    let c = s.client();
    let mut q = c.queue.clone();
    let waiter = tokio::spawn(async move {
        let t = std::time::Instant::now();
        let r = q
            .lease(pb::LeaseRequest {
                kind: pb::QueueKind::Inbound as i32,
                worker_id: "w".into(),
                max_jobs: 1,
                lease_ttl_ms: 60_000,
                wait_ms: 20_000,
                max_attempts: 0,
            })
            .await
            .unwrap()
            .into_inner();
        (r.jobs.len(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue(&c, "wake", "x@example.net", &["alice@example.org"], &msg(1))
        .await
        .unwrap();
    let (n, took) = waiter.await.unwrap();
    assert_eq!(n, 1);
    assert!(
        took < Duration::from_secs(10),
        "woken by NOTIFY, not by the 20 s timeout"
    );
}

#[tokio::test]
async fn deliver_from_queue_is_exactly_once() {
    let (s, user) = setup().await;
    let c = s.client();
    let job = enqueue(&c, "d", "x@example.net", &["alice@example.org"], &msg(7))
        .await
        .unwrap()
        .job_id;
    lease_inbound(&c, "w", 1).await.unwrap();
    let req = deliver_request(
        job,
        0,
        "w",
        user,
        b"Return-Path: <x@example.net>\r\nDelivered-To: alice@example.org\r\n",
    );
    let a = c
        .mailboxes
        .clone()
        .deliver_from_queue(req.clone())
        .await
        .unwrap()
        .into_inner();
    let b = c
        .mailboxes
        .clone()
        .deliver_from_queue(req)
        .await
        .unwrap()
        .into_inner();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.uid, b.uid);
    let mb = inbox(&s, user).await;
    assert_eq!(mb.messages, 1);
    let body = collect_body(
        c.mailboxes
            .clone()
            .fetch_body(pb::FetchBodyRequest {
                mailbox_id: mb.id,
                uid: a.uid,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let mut expected =
        b"Return-Path: <x@example.net>\r\nDelivered-To: alice@example.org\r\n".to_vec();
    expected.extend_from_slice(&msg(7));
    assert_eq!(body, expected);
    let meta = all_meta(&s, mb.id).await;
    let env = meta[0]
        .structure
        .as_ref()
        .unwrap()
        .envelope
        .as_ref()
        .unwrap();
    assert_eq!(env.subject.as_deref(), Some(&b"message 7"[..]));
    let root = &meta[0].structure.as_ref().unwrap().parts[0];
    assert_eq!(
        &body[root.body_offset as usize..root.end_offset as usize],
        b"body 7\r\n"
    );
    assert_eq!(meta[0].crlf_size, body.len() as u64);
    let job = c
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        job.job.unwrap().recipients[0].state,
        pb::RecipientState::Delivered as i32
    );
    assert!(
        job.events
            .iter()
            .any(|e| e.kind == pb::EventKind::Delivered as i32)
    );
}

/// `finish_job` (issue #17): the delivery of a job's last pending
/// recipient finishes the job in the same transaction; before that it
/// does not, and a finished job's lease is gone.
#[tokio::test]
async fn delivering_the_last_recipient_can_finish_the_job() {
    let (s, user) = setup().await;
    let c = s.client();
    let rcpts = ["alice@example.org", "alice+two@example.org"];
    let job = enqueue(&c, "f", "x@example.net", &rcpts, &msg(8))
        .await
        .unwrap()
        .job_id;
    let leased = lease_inbound(&c, "w", 1).await.unwrap();
    assert_eq!(leased.jobs.len(), 1);
    let deliver = |index: u32| pb::DeliverFromQueueRequest {
        finish_job: true,
        ..deliver_request(job, index, "w", user, &[])
    };
    let state = |c: mailstore_api::StoreClient| async move {
        c.queue
            .clone()
            .get_job(pb::GetJobRequest { job_id: job })
            .await
            .unwrap()
            .into_inner()
            .summary
            .unwrap()
            .state
    };
    let first = c
        .mailboxes
        .clone()
        .deliver_from_queue(deliver(0))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.job_finished, "a recipient is still pending");
    assert_eq!(state(c.clone()).await, pb::JobState::Ready as i32);
    // The second address is the same user: the store's exactly-once record
    // answers it as a duplicate, and that completes the job as well.
    let second = c
        .mailboxes
        .clone()
        .deliver_from_queue(deliver(1))
        .await
        .unwrap()
        .into_inner();
    assert!(second.duplicate && second.job_finished);
    assert_eq!(state(c.clone()).await, pb::JobState::Done as i32);
    // The lease went with it: a late FinishJob of the worker is refused.
    let late = c
        .queue
        .clone()
        .finish_job(pb::FinishJobRequest {
            job_id: job,
            worker_id: "w".into(),
            outcome: pb::FinishOutcome::Done as i32,
            retry_at: None,
            reason: String::new(),
        })
        .await;
    assert!(late.is_err(), "{late:?}");
    assert_eq!(inbox(&s, user).await.messages, 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let (s, _) = setup().await;
    let a = s.client().accounts;
    let ask = |u: &str, p: &str| {
        let req = pb::AuthenticateRequest {
            username: u.into(),
            password: p.into(),
            protocol: pb::Protocol::Imap as i32,
            remote_ip: "192.0.2.7".into(),
            session_id: "t".into(),
        };
        let mut a = a.clone();
        async move { a.authenticate(req).await.unwrap().into_inner() }
    };
    let ok = ask("alice@example.org", "correct horse").await;
    assert_eq!(ok.status, pb::AuthStatus::Ok as i32);
    let wrong = ask("alice@example.org", "nope").await;
    let unknown = ask("nobody@example.org", "nope").await;
    let garbage = ask("not an address", "nope").await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, garbage);
    assert_eq!(wrong.status, pb::AuthStatus::Failed as i32);
    // Past the per-IP failure limit, even the right password is throttled.
    for _ in 0..20 {
        ask("alice@example.org", "nope").await;
    }
    let throttled = ask("alice@example.org", "correct horse").await;
    assert_eq!(throttled.status, pb::AuthStatus::Throttled as i32);
}

#[tokio::test]
async fn no_rpc_works_without_the_token() {
    let s = TestStore::start().await;
    let bad = mailstore_api::connect(&s.grpc_url, "wrong-token").unwrap();
    let e = bad
        .accounts
        .clone()
        .list_domains(pb::ListDomainsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = bad
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = bad
        .mailboxes
        .clone()
        .list_mailboxes(pb::ListMailboxesRequest {
            user_id: 1,
            with_counts: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // No token at all.
    let channel = tonic::transport::Endpoint::from_shared(s.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::accounts_client::AccountsClient::new(channel);
    assert_eq!(
        raw.list_domains(pb::ListDomainsRequest {})
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
}

async fn lookup(s: &TestStore, address: &str) -> pb::LookupRecipientResponse {
    s.service_client()
        .accounts
        .lookup_recipient(pb::LookupRecipientRequest {
            address: address.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The per-domain inbound DMARC choice (threat model T100): set by the
/// admin, listed, and returned with LookupRecipient for local recipients;
/// bad values and unknown domains refused; the service token may not set it.
#[tokio::test]
async fn domain_dmarc_policy_set_listed_and_looked_up() {
    let (s, _alice) = setup().await;
    let mut acc = s.client().accounts;
    let r = lookup(&s, "alice@example.org").await;
    assert_eq!(r.dmarc_reject_action, "", "default: smtp-in's flag");
    let d = acc
        .set_domain_policy(pb::SetDomainPolicyRequest {
            name: "Example.ORG".into(),
            dmarc_reject_action: "Report".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.name.as_str(), d.dmarc_reject_action.as_str()),
        ("example.org", "report")
    );
    let listed = acc
        .list_domains(pb::ListDomainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .domains;
    assert_eq!(listed[0].dmarc_reject_action, "report");
    let r = lookup(&s, "alice@example.org").await;
    assert_eq!(r.status, pb::RecipientStatus::Local as i32);
    assert_eq!(r.dmarc_reject_action, "report");
    let r = lookup(&s, "nobody@elsewhere.test").await;
    assert_eq!(r.dmarc_reject_action, "");

    let bad = acc
        .set_domain_policy(pb::SetDomainPolicyRequest {
            name: "example.org".into(),
            dmarc_reject_action: "drop".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let unknown = acc
        .set_domain_policy(pb::SetDomainPolicyRequest {
            name: "nowhere.test".into(),
            dmarc_reject_action: "enforce".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let denied = s
        .service_client()
        .accounts
        .set_domain_policy(pb::SetDomainPolicyRequest {
            name: "example.org".into(),
            dmarc_reject_action: "report".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // Back to the default.
    let d = acc
        .set_domain_policy(pb::SetDomainPolicyRequest {
            name: "example.org".into(),
            dmarc_reject_action: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.dmarc_reject_action, "");
}

#[tokio::test]
async fn recipients_aliases_catch_all_plus_and_loops() {
    let (s, _alice) = setup().await;
    let c = s.client();
    s.add_user("bob@example.org", "pw-bob-123").await;
    let mut acc = c.accounts.clone();
    for (src, dst) in [
        ("team@example.org", "alice@example.org"),
        ("team@example.org", "bob@example.org"),
        ("ext@example.org", "someone@remote.test"),
        ("loop1@example.org", "loop2@example.org"),
        ("loop2@example.org", "loop1@example.org"),
        ("@example.org", "bob@example.org"),
    ] {
        acc.create_alias(pb::CreateAliasRequest {
            source: src.into(),
            target: dst.into(),
        })
        .await
        .unwrap();
    }
    let resolve = |a: &str| {
        let mut acc = acc.clone();
        let a = a.to_string();
        async move {
            acc.resolve_recipient(pb::ResolveRecipientRequest { address: a })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let team = resolve("team@example.org").await;
    assert_eq!(team.targets.len(), 2);
    let plus = resolve("Alice+News@Example.org").await;
    match &plus.targets[0].target {
        Some(pb::resolved_target::Target::Local(l)) => {
            assert_eq!(l.address, "alice@example.org");
            assert_eq!(l.detail, "news");
        }
        other => panic!("{other:?}"),
    }
    let ext = resolve("ext@example.org").await;
    assert_eq!(
        ext.targets[0].target,
        Some(pb::resolved_target::Target::Remote(
            "someone@remote.test".into()
        ))
    );
    let any = resolve("anything@example.org").await;
    assert_eq!(any.status, pb::RecipientStatus::Local as i32);
    let lp = resolve("loop1@example.org").await;
    assert!(lp.loop_detected);
    let lookup = |a: &str| {
        let mut acc = acc.clone();
        let a = a.to_string();
        async move {
            acc.lookup_recipient(pb::LookupRecipientRequest { address: a })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(
        lookup("v@external.example").await,
        pb::RecipientStatus::NotLocal as i32
    );
    assert_eq!(
        lookup("v@[192.0.2.1]").await,
        pb::RecipientStatus::NotLocal as i32
    );
    acc.clone()
        .delete_alias(pb::DeleteAliasRequest {
            source: "@example.org".into(),
            target: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        lookup("nobody@example.org").await,
        pb::RecipientStatus::Unknown as i32
    );
    assert_eq!(
        lookup("v%external.example@example.org").await,
        pb::RecipientStatus::Unknown as i32
    );
    assert_eq!(
        lookup("\"v@external.example\"@example.org").await,
        pb::RecipientStatus::Unknown as i32
    );
}

#[tokio::test]
async fn watch_sees_appends_made_through_another_store_process() {
    let (s, user) = setup().await;
    let other = s.replica().await;
    let mb = inbox(&s, user).await;
    let mut w = s
        .client()
        .mailboxes
        .watch(pb::WatchRequest {
            user_id: user,
            mailbox_id: mb.id,
        })
        .await
        .unwrap()
        .into_inner();
    let ready = w.message().await.unwrap().unwrap();
    assert_eq!(ready.kind, pb::MailboxEventKind::Ready as i32);
    let uid = other.append(user, "INBOX", &msg(1)).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("event within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, pb::MailboxEventKind::Appended as i32);
    assert_eq!(ev.mailbox_id, mb.id);
    assert_eq!(ev.uidnext, uid + 1);
}

#[tokio::test]
async fn locks_are_exclusive_and_expire() {
    let s = TestStore::start().await;
    let mut m = s.client().mailboxes;
    let get = |o: &str, ttl| pb::AcquireLockRequest {
        name: "pop3:1".into(),
        owner: o.into(),
        ttl_ms: ttl,
    };
    assert!(
        m.acquire_lock(get("a", 1_000))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    assert!(
        !m.acquire_lock(get("b", 1_000))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    assert!(
        m.acquire_lock(get("a", 1_000))
            .await
            .unwrap()
            .into_inner()
            .acquired,
        "refresh by owner"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        m.acquire_lock(get("b", 60_000))
            .await
            .unwrap()
            .into_inner()
            .acquired,
        "expired lock is taken over"
    );
    m.release_lock(pb::ReleaseLockRequest {
        name: "pop3:1".into(),
        owner: "b".into(),
    })
    .await
    .unwrap();
    assert!(
        m.acquire_lock(get("c", 1_000))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let s = TestStore::start().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{}{path}", s.http_addr),
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{path}");
    }
}

/// The queue gauges the alert rules watch (deploy/monitoring/alerts.yaml)
/// are on /metrics, for both queues, soon after start.
#[tokio::test]
async fn queue_gauges_are_exported() {
    let s = TestStore::start().await;
    let url = format!("http://{}/metrics", s.http_addr);
    let mut body = String::new();
    // The gauges' first refresh runs at start; on a machine loaded by
    // parallel test clusters it has taken over 10 s (CI), so a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let out = tokio::process::Command::new("curl")
            .args(["-s", &url])
            .output()
            .await
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("store_queue_oldest_seconds{queue=\"outbound\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        "store_queue_jobs{queue=\"inbound\"}",
        "store_queue_deferred_jobs{queue=\"outbound\"}",
        "store_queue_oldest_seconds{queue=\"inbound\"}",
        "store_queue_oldest_seconds{queue=\"outbound\"}",
    ] {
        assert!(body.contains(want), "{want} in\n{body}");
    }
}

#[tokio::test]
async fn a_stopped_store_answers_nothing_and_a_restarted_one_keeps_the_data() {
    let (mut s, _) = setup().await;
    let mut a = s.client().accounts;
    a.list_domains(pb::ListDomainsRequest {}).await.unwrap();
    s.stop().await;
    // The already-open HTTP/2 connection must be gone, not still served.
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        a.list_domains(pb::ListDomainsRequest {}),
    )
    .await
    .expect("fails fast")
    .unwrap_err();
    // Unavailable, Cancelled or Unknown (broken pipe), depending on where the
    // connection was cut: every one of them is "try again later".
    assert_eq!(
        mailstore_api::classify(&e),
        mailstore_api::Failure::Transient
    );
    s.restart().await;
    let mut again = None;
    for _ in 0..50 {
        match a.list_domains(pb::ListDomainsRequest {}).await {
            Ok(r) => {
                again = Some(r.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(again.expect("store back").domains[0].name, "example.org");
}

#[tokio::test]
async fn event_attributes_round_trip_and_oversized_messages_are_refused_before_data() {
    let (s, user) = setup().await;
    let c = s.client();
    let job = enqueue(&c, "ev", "x@example.net", &["alice@example.org"], &msg(1))
        .await
        .unwrap()
        .job_id;
    let attrs: std::collections::HashMap<String, String> = [
        (
            "mx".to_string(),
            "a \"quoted\"\nline \\ and ünïcode".to_string(),
        ),
        ("ip".to_string(), "192.0.2.1".to_string()),
    ]
    .into();
    c.queue
        .clone()
        .add_event(pb::AddEventRequest {
            job_id: job,
            kind: pb::EventKind::Attempt as i32,
            source: "smtp-out/w".into(),
            recipient: "alice@example.org".into(),
            detail: "250 ok".into(),
            attributes: attrs.clone(),
        })
        .await
        .unwrap();
    let events = c
        .queue
        .clone()
        .list_events(pb::ListEventsRequest { job_id: job })
        .await
        .unwrap()
        .into_inner()
        .events;
    let attempt = events
        .iter()
        .find(|e| e.kind == pb::EventKind::Attempt as i32)
        .unwrap();
    assert_eq!(attempt.attributes, attrs);
    // The declared size is checked against the limit before any data.
    let header = pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            user_id: user,
            mailbox: "INBOX".into(),
            flags: vec![],
            internal_date: None,
            size: 1 << 40,
        })),
    };
    let e = c
        .mailboxes
        .clone()
        .append(futures::stream::iter([header]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert_eq!(inbox(&s, user).await.messages, 0);
}
