//! Authenticate hardening, tokens and mailbox limits against a real
//! PostgreSQL: bans per client and per account, the bounded hashing pool,
//! the auth cache, the admin token.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use test_kit::TestStore;

async fn setup(tune: test_kit::Tune) -> TestStore {
    let s = TestStore::start_tuned(tune).await;
    s.add_domain("example.org").await;
    s.add_user("alice@example.org", "correct horse").await;
    s.add_user("bob@example.org", "battery staple").await;
    s
}

async fn login(c: &StoreClient, user: &str, password: &str, ip: &str) -> pb::AuthenticateResponse {
    c.accounts
        .clone()
        .authenticate(pb::AuthenticateRequest {
            username: user.into(),
            password: password.into(),
            protocol: pb::Protocol::Imap as i32,
            remote_ip: ip.into(),
            session_id: "t".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

const OK: i32 = pb::AuthStatus::Ok as i32;
const FAILED: i32 = pb::AuthStatus::Failed as i32;
const THROTTLED: i32 = pb::AuthStatus::Throttled as i32;
const UNAVAILABLE: i32 = pb::AuthStatus::Unavailable as i32;

#[tokio::test]
async fn a_banned_client_does_not_lock_out_others() {
    let s = setup(|_| {}).await;
    let c = s.service_client();
    // 20 concurrent failures from one IP: counted exactly, so the 20th bans.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(
                async move { login(&c, &format!("u{i}@example.org"), "x", "192.0.2.7").await },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, FAILED);
    }
    let banned = login(&c, "alice@example.org", "correct horse", "192.0.2.7").await;
    assert_eq!(banned.status, THROTTLED);
    assert!(banned.retry_after_ms > 55_000 && banned.retry_after_ms <= 60_000);
    // Another user from another IP is not affected; nor is alice elsewhere.
    assert_eq!(
        login(&c, "bob@example.org", "battery staple", "198.51.100.1")
            .await
            .status,
        OK
    );
    assert_eq!(
        login(&c, "alice@example.org", "correct horse", "198.51.100.2")
            .await
            .status,
        OK
    );
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_prefix() {
    let s = setup(|c| c.auth_failure_limit = 3).await;
    let c = s.service_client();
    for i in 1..=3 {
        let r = login(&c, "alice@example.org", "x", &format!("2001:db8:1:2::{i}")).await;
        assert_eq!(r.status, FAILED);
    }
    let r = login(
        &c,
        "bob@example.org",
        "battery staple",
        "2001:db8:1:2:ffff::1",
    )
    .await;
    assert_eq!(r.status, THROTTLED, "same /64");
    let r = login(&c, "bob@example.org", "battery staple", "2001:db8:1:3::1").await;
    assert_eq!(r.status, OK, "another /64");
}

#[tokio::test]
async fn an_account_under_distributed_attack_is_throttled_and_bans_double() {
    let s = setup(|c| {
        c.auth_account_failure_limit = 5;
        c.auth_ban_secs = 1;
    })
    .await;
    let c = s.service_client();
    // One guess each from five IPs (no IP reaches its own limit).
    for i in 1..=5 {
        let r = login(&c, "Alice@Example.org", "guess", &format!("203.0.113.{i}")).await;
        assert_eq!(r.status, FAILED);
    }
    // The owner from a new IP with the right password: THROTTLED during the
    // ban (the accepted trade-off); bob is unaffected.
    let r = login(&c, "alice@example.org", "correct horse", "198.51.100.9").await;
    assert_eq!(r.status, THROTTLED);
    assert!(r.retry_after_ms > 0 && r.retry_after_ms <= 1_000);
    assert_eq!(
        login(&c, "bob@example.org", "battery staple", "203.0.113.1")
            .await
            .status,
        OK
    );
    // After the ban: the second ban of the episode lasts twice as long.
    tokio::time::sleep(Duration::from_millis(r.retry_after_ms + 50)).await;
    assert_eq!(
        login(&c, "alice@example.org", "correct horse", "198.51.100.9")
            .await
            .status,
        OK
    );
    for i in 1..=5 {
        login(
            &c,
            "alice@example.org",
            "guess",
            &format!("203.0.113.{}", 10 + i),
        )
        .await;
    }
    let r = login(&c, "alice@example.org", "correct horse", "198.51.100.9").await;
    assert_eq!(r.status, THROTTLED);
    assert!(
        r.retry_after_ms > 1_000 && r.retry_after_ms <= 2_000,
        "{}",
        r.retry_after_ms
    );
    // Unknown accounts are counted the same way (no existence oracle).
    for i in 1..=5 {
        login(
            &c,
            "nobody@example.org",
            "guess",
            &format!("203.0.113.{}", 20 + i),
        )
        .await;
    }
    let r = login(&c, "nobody@example.org", "guess", "198.51.100.9").await;
    assert_eq!(r.status, THROTTLED);
}

#[tokio::test]
async fn a_login_flood_gets_answers_not_a_pile_up() {
    let s = setup(|c| {
        c.hash_threads = 2;
        c.hash_queue = 8;
        c.auth_cache_ttl_secs = 0;
    })
    .await;
    let c = s.service_client();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    login(&c, "alice@example.org", "correct horse", "192.0.2.50"),
                )
                .await
                .expect("no answer within 120 s")
            })
        })
        .collect();
    let (mut ok, mut unavailable) = (0, 0);
    for t in tasks {
        match t.await.unwrap().status {
            OK => ok += 1,
            UNAVAILABLE => unavailable += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + unavailable, 200);
    assert!(
        ok >= 1 && unavailable >= 1,
        "ok {ok}, unavailable {unavailable}"
    );
}

#[tokio::test]
async fn the_auth_cache_spares_the_pool_and_follows_password_changes() {
    let s = setup(|c| {
        c.hash_threads = 1;
        c.hash_queue = 1;
    })
    .await;
    let replica = s.replica().await;
    let c = s.service_client();
    assert_eq!(
        login(&c, "alice@example.org", "correct horse", "192.0.2.60")
            .await
            .status,
        OK
    );
    // Cached: 50 concurrent logins need no hashing slot.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                login(&c, "alice@example.org", "correct horse", "192.0.2.60").await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, OK);
    }
    // The password changes on another replica: this one's cache misses.
    replica
        .client()
        .accounts
        .set_password(pb::SetPasswordRequest {
            address: "alice@example.org".into(),
            password: "new secret".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        login(&c, "alice@example.org", "correct horse", "192.0.2.60")
            .await
            .status,
        FAILED
    );
    assert_eq!(
        login(&c, "alice@example.org", "new secret", "192.0.2.60")
            .await
            .status,
        OK
    );
}

#[tokio::test]
async fn administrative_rpcs_need_the_admin_token() {
    let s = setup(|_| {}).await;
    let svc = s.service_client();
    let (mut a, mut q) = (svc.accounts.clone(), svc.queue.clone());
    let denied = |r: Result<(), tonic::Status>| {
        assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
    };
    denied(
        a.create_domain(pb::CreateDomainRequest {
            name: "x.org".into(),
        })
        .await
        .map(drop),
    );
    denied(
        a.delete_domain(pb::DeleteDomainRequest {
            name: "example.org".into(),
            force: true,
        })
        .await
        .map(drop),
    );
    denied(
        a.create_user(pb::CreateUserRequest {
            address: "e@example.org".into(),
            password: "p".into(),
            quota_bytes: 0,
        })
        .await
        .map(drop),
    );
    denied(
        a.set_password(pb::SetPasswordRequest {
            address: "alice@example.org".into(),
            password: "p".into(),
        })
        .await
        .map(drop),
    );
    denied(
        a.delete_user(pb::DeleteUserRequest {
            address: "alice@example.org".into(),
        })
        .await
        .map(drop),
    );
    denied(
        a.list_users(pb::ListUsersRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.create_alias(pb::CreateAliasRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.delete_alias(pb::DeleteAliasRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.list_aliases(pb::ListAliasesRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.add_filter(pb::AddFilterRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.delete_filter(pb::DeleteFilterRequest::default())
            .await
            .map(drop),
    );
    denied(
        a.put_dkim_key(pb::PutDkimKeyRequest::default())
            .await
            .map(drop),
    );
    denied(q.list_jobs(pb::ListJobsRequest::default()).await.map(drop));
    denied(q.get_job(pb::GetJobRequest::default()).await.map(drop));
    denied(q.retry_job(pb::RetryJobRequest::default()).await.map(drop));
    denied(
        q.delete_job(pb::DeleteJobRequest::default())
            .await
            .map(drop),
    );
    denied(
        q.list_events(pb::ListEventsRequest::default())
            .await
            .map(drop),
    );
    denied(q.trace(pb::TraceRequest::default()).await.map(drop));
    // What the services call works with the service token.
    a.list_domains(pb::ListDomainsRequest {}).await.unwrap();
    a.list_dkim_keys(pb::ListDkimKeysRequest::default())
        .await
        .unwrap();
    // An empty bearer token is refused by the store (sent by hand: the
    // client library refuses to send one at all).
    assert!(mailstore_api::connect(&s.grpc_url, "").is_err());
    let channel = tonic::transport::Endpoint::from_shared(s.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::accounts_client::AccountsClient::new(channel);
    let mut req = tonic::Request::new(pb::ListDomainsRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer ".parse().unwrap());
    let e = raw.list_domains(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_store_refuses_to_start_with_an_empty_token() {
    let s = TestStore::start().await;
    let config = mailbox_store::Config::new(s.database_url.clone(), "");
    let err = mailbox_store::Server::bind(config).await.err().unwrap();
    assert!(format!("{err:#}").contains("--token"));
    let mut config = mailbox_store::Config::new(s.database_url.clone(), "svc");
    config.admin_token = Some("svc".into());
    assert!(mailbox_store::Server::bind(config).await.is_err());
}

async fn create(c: &StoreClient, user: u64, name: &str) -> Result<pb::Mailbox, tonic::Status> {
    c.mailboxes
        .clone()
        .create_mailbox(pb::CreateMailboxRequest {
            user_id: user,
            name: name.into(),
            special_use: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn mailbox_names_and_counts_are_bounded() {
    let s = TestStore::start_tuned(|c| c.max_mailboxes_per_user = 12).await;
    s.add_domain("example.org").await;
    let user = s.add_user("carol@example.org", "pw").await;
    let c = s.service_client();
    for name in ["junk", "TRASH", "sent", "inbox"] {
        let e = create(&c, user, name).await.unwrap_err();
        assert!(
            matches!(
                e.code(),
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
            ),
            "{name}"
        );
    }
    // A user's own special-use folder is protected the same way.
    c.mailboxes
        .clone()
        .create_mailbox(pb::CreateMailboxRequest {
            user_id: user,
            name: "Spam".into(),
            special_use: "\\Junk".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        create(&c, user, "spam").await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let e = c
        .mailboxes
        .clone()
        .rename_mailbox(pb::RenameMailboxRequest {
            user_id: user,
            from: "Archive".into(),
            to: "junk".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // 6 default + Spam = 7; 5 more concurrently reach 12, the rest refused.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { create(&c, user, &format!("Work/{i}")).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted),
        }
    }
    assert_eq!(created, 5);
    let list = c
        .mailboxes
        .clone()
        .list_mailboxes(pb::ListMailboxesRequest {
            user_id: user,
            with_counts: false,
        })
        .await
        .unwrap()
        .into_inner()
        .mailboxes;
    assert_eq!(list.len(), 12);
    assert!(list.iter().all(|m| !m.has_children));
    // A deleted exact special folder can be created again.
    c.mailboxes
        .clone()
        .delete_mailbox(pb::DeleteMailboxRequest {
            user_id: user,
            name: "Junk".into(),
        })
        .await
        .unwrap();
    create(&c, user, "Junk").await.unwrap();
}
