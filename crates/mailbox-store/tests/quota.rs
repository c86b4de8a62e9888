//! Quotas (RFC 9208 STORAGE and MESSAGE, issue #16) in the store, over gRPC
//! against a real PostgreSQL: enforcement at APPEND, COPY and delivery,
//! usage kept by every append/copy/move/expunge/delete in the same
//! transaction, concurrent appends that cannot overshoot, the domain
//! default, and the RCPT-time "full" answer.
#![allow(clippy::unwrap_used)]

use mailstore_api::pb;
use test_kit::{TestStore, append, deliver_request, enqueue, lease_inbound};
use tonic::Code;

const ALICE: &str = "alice@example.org";

async fn setup() -> (TestStore, u64) {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let uid = s.add_user(ALICE, "correct horse").await;
    (s, uid)
}

/// A message of exactly `size` bytes.
fn msg(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!("From: a@example.org\r\nSubject: message {n}\r\n\r\n").into_bytes();
    assert!(m.len() + 2 <= size);
    m.resize(size - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

async fn quota(s: &TestStore, user: u64) -> pb::Quota {
    s.service_client()
        .accounts
        .get_quota(pb::GetQuotaRequest {
            key: Some(pb::get_quota_request::Key::UserId(user)),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn set_quota(s: &TestStore, bytes: Option<u64>, messages: Option<u64>) -> pb::Quota {
    s.service_client()
        .accounts
        .set_quota(pb::SetQuotaRequest {
            key: Some(pb::set_quota_request::Key::Address(ALICE.into())),
            limit_bytes: bytes,
            limit_messages: messages,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn mailbox(s: &TestStore, user: u64, name: &str) -> pb::Mailbox {
    s.client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: name.into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Usage as the counters say, and as the messages themselves say.
async fn usage_matches_messages(s: &TestStore, user: u64) -> (u64, u64) {
    let q = quota(s, user).await;
    let all = s
        .client()
        .mailboxes
        .list_mailboxes(pb::ListMailboxesRequest {
            user_id: user,
            with_counts: true,
        })
        .await
        .unwrap()
        .into_inner()
        .mailboxes;
    let bytes: u64 = all.iter().map(|m| m.size).sum();
    let n: u64 = all.iter().map(|m| u64::from(m.messages)).sum();
    assert_eq!((q.used_bytes, q.used_messages), (bytes, n), "{q:?}");
    (bytes, n)
}

async fn flag_deleted_and_expunge(s: &TestStore, mailbox_id: u64, uid: u32) {
    let mut mb = s.client().mailboxes;
    mb.store_flags(pb::StoreFlagsRequest {
        mailbox_id,
        uids: Some(pb::UidSet {
            ranges: vec![pb::UidRange {
                first: uid,
                last: uid,
            }],
        }),
        op: pb::FlagOp::Add as i32,
        flags: vec!["\\Deleted".into()],
        unchanged_since: 0,
    })
    .await
    .unwrap();
    mb.expunge(pb::ExpungeRequest {
        mailbox_id,
        uids: None,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn append_over_storage_quota_is_refused_and_stores_nothing() {
    let (s, user) = setup().await;
    let c = s.client();
    // No limit by default.
    let q = quota(&s, user).await;
    assert_eq!((q.limit_bytes, q.limit_messages), (None, None));
    let q = set_quota(&s, Some(3000), None).await;
    assert_eq!(q.limit_bytes, Some(3000));
    assert_eq!(q.user_bytes, Some(3000));
    append(&c, user, "INBOX", &msg(1, 1000), &[]).await.unwrap();
    append(&c, user, "INBOX", &msg(2, 1000), &[]).await.unwrap();
    // 2000 + 1001 > 3000: refused, nothing stored, usage unchanged.
    let e = append(&c, user, "INBOX", &msg(3, 1001), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(!mailstore_api::quota_exceeds_limit(&e), "fits once emptied");
    assert_eq!(usage_matches_messages(&s, user).await, (2000, 2));
    assert_eq!(mailbox(&s, user, "INBOX").await.messages, 2);
    // Exactly up to the limit is allowed.
    append(&c, user, "INBOX", &msg(3, 1000), &[]).await.unwrap();
    assert_eq!(usage_matches_messages(&s, user).await, (3000, 3));
    // A message larger than the whole quota is marked as never fitting.
    let e = append(&c, user, "Archive", &msg(4, 3001), &[])
        .await
        .unwrap_err();
    assert!(mailstore_api::quota_exceeds_limit(&e));
    // Expunge frees the space.
    let inbox = mailbox(&s, user, "INBOX").await;
    flag_deleted_and_expunge(&s, inbox.id, 1).await;
    assert_eq!(usage_matches_messages(&s, user).await, (2000, 2));
    append(&c, user, "INBOX", &msg(5, 1000), &[]).await.unwrap();
    assert_eq!(usage_matches_messages(&s, user).await, (3000, 3));
}

#[tokio::test]
async fn message_quota_copy_move_and_mailbox_deletion_keep_usage_exact() {
    let (s, user) = setup().await;
    let c = s.client();
    set_quota(&s, None, Some(4)).await;
    for i in 0..3 {
        append(&c, user, "INBOX", &msg(i, 500), &[]).await.unwrap();
    }
    let inbox = mailbox(&s, user, "INBOX").await;
    let copy = |dest: &str, first: u32, last: u32, is_move: bool| {
        let mut mb = s.client().mailboxes;
        let dest = dest.to_string();
        async move {
            mb.copy_messages(pb::CopyMessagesRequest {
                mailbox_id: inbox.id,
                uids: Some(pb::UidSet {
                    ranges: vec![pb::UidRange { first, last }],
                }),
                user_id: user,
                destination: dest,
                r#move: is_move,
            })
            .await
        }
    };
    // COPY of two would make 5 > 4: refused as a whole.
    let e = copy("Archive", 1, 2, false).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(mailbox(&s, user, "Archive").await.messages, 0);
    assert_eq!(usage_matches_messages(&s, user).await, (1500, 3));
    // COPY of one fits (4).
    copy("Archive", 1, 1, false).await.unwrap();
    assert_eq!(usage_matches_messages(&s, user).await, (2000, 4));
    // MOVE adds nothing: allowed even at the limit, usage unchanged.
    copy("Drafts", 2, 3, true).await.unwrap();
    assert_eq!(usage_matches_messages(&s, user).await, (2000, 4));
    // Full: the next append is refused.
    let e = append(&c, user, "INBOX", &msg(9, 500), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Deleting a mailbox releases its messages.
    c.mailboxes
        .clone()
        .delete_mailbox(pb::DeleteMailboxRequest {
            user_id: user,
            name: "Drafts".into(),
        })
        .await
        .unwrap();
    assert_eq!(usage_matches_messages(&s, user).await, (1000, 2));
    append(&c, user, "INBOX", &msg(9, 500), &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_never_exceed_the_limit() {
    let (s, user) = setup().await;
    set_quota(&s, Some(5 * 1000), None).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = s.client();
        tasks.push(tokio::spawn(async move {
            append(&c, user, "INBOX", &msg(i, 1000), &[]).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(usage_matches_messages(&s, user).await, (5000, 5));
}

#[tokio::test]
async fn domain_default_applies_until_the_user_has_its_own() {
    let (s, user) = setup().await;
    // The default needs the admin token.
    let req = pb::SetDomainQuotaRequest {
        domain: "Example.ORG".into(),
        limit_bytes: Some(10_000),
        limit_messages: Some(7),
    };
    let e = s
        .service_client()
        .accounts
        .set_domain_quota(req.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let d = s
        .client()
        .accounts
        .set_domain_quota(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.domain, "example.org");
    let q = quota(&s, user).await;
    assert_eq!((q.limit_bytes, q.limit_messages), (Some(10_000), Some(7)));
    assert_eq!((q.user_bytes, q.user_messages), (None, None));
    // The user's own storage limit wins; messages still the default.
    let q = set_quota(&s, Some(20_000), None).await;
    assert_eq!((q.limit_bytes, q.limit_messages), (Some(20_000), Some(7)));
    // Removing it falls back to the default.
    let q = set_quota(&s, None, None).await;
    assert_eq!((q.limit_bytes, q.limit_messages), (Some(10_000), Some(7)));
    // Unknown user and domain.
    let e = s
        .service_client()
        .accounts
        .set_quota(pb::SetQuotaRequest {
            key: Some(pb::set_quota_request::Key::Address(
                "nobody@example.org".into(),
            )),
            limit_bytes: None,
            limit_messages: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = s
        .client()
        .accounts
        .set_domain_quota(pb::SetDomainQuotaRequest {
            domain: "example.net".into(),
            limit_bytes: None,
            limit_messages: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
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

#[tokio::test]
async fn lookup_recipient_says_full_only_when_every_target_is_full() {
    let (s, user) = setup().await;
    let bob = s.add_user("bob@example.org", "pw").await;
    let admin = s.client();
    for (source, target) in [
        ("both@example.org", ALICE),
        ("both@example.org", "bob@example.org"),
        ("outside@example.org", ALICE),
        ("outside@example.org", "someone@example.net"),
    ] {
        admin
            .accounts
            .clone()
            .create_alias(pb::CreateAliasRequest {
                source: source.into(),
                target: target.into(),
            })
            .await
            .unwrap();
    }
    assert!(!lookup(&s, ALICE).await.over_quota);
    set_quota(&s, None, Some(1)).await;
    assert!(!lookup(&s, ALICE).await.over_quota, "room for one");
    append(&admin, user, "INBOX", &msg(1, 500), &[])
        .await
        .unwrap();
    let r = lookup(&s, ALICE).await;
    assert_eq!(r.status, pb::RecipientStatus::Local as i32);
    assert!(r.over_quota);
    assert!(lookup(&s, "alice+tag@example.org").await.over_quota);
    // An alias with one full and one open user, or a remote target: not full.
    assert!(!lookup(&s, "both@example.org").await.over_quota);
    assert!(!lookup(&s, "outside@example.org").await.over_quota);
    assert!(!lookup(&s, "bob@example.org").await.over_quota);
    let _ = bob;
}

/// Leases the inbound job and delivers it to alice.
async fn deliver(s: &TestStore, user: u64, key: &str, raw: &[u8]) -> Result<(), tonic::Status> {
    let c = s.client();
    let job = enqueue(&c, key, "x@example.net", &[ALICE], raw)
        .await
        .unwrap()
        .job_id;
    lease_inbound(&c, "w", 10).await.unwrap();
    c.mailboxes
        .clone()
        .deliver_from_queue(deliver_request(
            job,
            0,
            "w",
            user,
            b"Delivered-To: alice@example.org\r\n",
        ))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn delivery_tells_full_now_from_never_fits() {
    let (s, user) = setup().await;
    set_quota(&s, Some(2000), None).await;
    deliver(&s, user, "a", &msg(1, 1200)).await.unwrap();
    // Full now (1234 + 1234 > 2000) but it would fit in an empty mailbox.
    let e = deliver(&s, user, "b", &msg(2, 1200)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(!mailstore_api::quota_exceeds_limit(&e));
    // Larger than the whole quota: never fits.
    let e = deliver(&s, user, "c", &msg(3, 2500)).await.unwrap_err();
    assert!(mailstore_api::quota_exceeds_limit(&e));
    let (bytes, n) = usage_matches_messages(&s, user).await;
    assert_eq!(n, 1);
    assert!(bytes > 1200 && bytes < 2000);
}
