//! mailctl end to end: the real binary against a running store.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use mailstore_api::pb;
use test_kit::TestStore;

fn mailctl(store: &TestStore, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    mailctl_env(
        store,
        &[("EPISTOLE_STORE_TOKEN", &store.token)],
        args,
        stdin,
    )
}

fn mailctl_env(
    store: &TestStore,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args(args)
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env_remove("EPISTOLE_STORE_TOKEN")
        .env_remove("EPISTOLE_STORE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_users_aliases_and_queue() {
    let store = TestStore::start().await;
    let s = &store;
    let run = |args: &'static [&'static str], stdin: Option<&'static str>| {
        let url = s.grpc_url.clone();
        let token = s.token.clone();
        let _ = (url, token);
        tokio::task::block_in_place(|| mailctl(s, args, stdin))
    };
    let (ok, out, err) = run(&["domain", "add", "Example.ORG"], None);
    assert!(ok, "{err}");
    assert!(out.contains("example.org"));
    assert!(
        run(&["domain", "list"], None)
            .1
            .lines()
            .any(|l| l == "example.org")
    );
    // Per-domain inbound DMARC choice (threat model T100).
    let (ok, out, err) = run(
        &[
            "domain",
            "policy",
            "example.org",
            "--dmarc-reject-action",
            "quarantine",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "domain example.org dmarc-reject-action=quarantine"
    );
    assert!(
        run(&["domain", "list"], None)
            .1
            .lines()
            .any(|l| l == "example.org dmarc-reject-action=quarantine")
    );
    assert!(
        !run(
            &[
                "domain",
                "policy",
                "example.org",
                "--dmarc-reject-action",
                "drop"
            ],
            None
        )
        .0,
        "unknown action refused"
    );
    let (ok, out, _) = run(
        &[
            "domain",
            "policy",
            "example.org",
            "--dmarc-reject-action",
            "default",
        ],
        None,
    );
    assert!(ok && out.contains("dmarc-reject-action=default"), "{out}");
    let (ok, out, err) = run(
        &["user", "add", "alice@example.org", "--password-stdin"],
        Some("s3cret pass\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("alice@example.org"));
    let (ok, _, err) = run(
        &["user", "add", "alice@example.org", "--password-stdin"],
        Some("again\n"),
    );
    assert!(!ok);
    assert!(
        err.contains("AlreadyExists") || err.contains("already exists"),
        "{err}"
    );
    assert!(run(&["user", "list"], None).1.contains("alice@example.org"));
    // The password set through mailctl works.
    let auth = s
        .client()
        .accounts
        .authenticate(mailstore_api::pb::AuthenticateRequest {
            username: "alice@example.org".into(),
            password: "s3cret pass".into(),
            protocol: mailstore_api::pb::Protocol::Admin as i32,
            remote_ip: String::new(),
            session_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(auth.status, mailstore_api::pb::AuthStatus::Ok as i32);
    assert!(
        run(
            &["alias", "add", "sales@example.org", "alice@example.org"],
            None
        )
        .0
    );
    assert!(
        run(&["alias", "list"], None)
            .1
            .contains("sales@example.org\talice@example.org")
    );
    assert!(run(&["alias", "rm", "sales@example.org"], None).0);
    let (ok, out, err) = run(
        &[
            "filter",
            "add",
            "alice@example.org",
            "List-Id",
            "weekly",
            "Archive",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("-> Archive"), "{out}");
    let listed = run(&["filter", "list", "alice@example.org"], None).1;
    assert!(listed.contains("\tList-Id\tweekly\tArchive"), "{listed}");
    let id = listed.split('\t').next().unwrap().to_string();
    assert!(tokio::task::block_in_place(|| mailctl(s, &["filter", "rm", &id], None)).0);
    assert!(
        run(&["filter", "list", "alice@example.org"], None)
            .1
            .is_empty()
    );
    // DKIM: generate prints the record; rotate makes a new signing key and
    // keeps the old one listed; the store holds the private keys.
    let (ok, out, err) = run(
        &[
            "dkim",
            "generate",
            "example.org",
            "--algorithm",
            "ed25519",
            "--selector",
            "one",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("one._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p="),
        "{out}"
    );
    let (ok, out, err) = run(
        &["dkim", "rotate", "example.org", "--selector", "two"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("two._domainkey.example.org. IN TXT ( \"v=DKIM1; k=rsa; p="),
        "{out}"
    );
    let show = run(&["dkim", "show", "example.org"], None).1;
    assert!(
        show.contains("one ed25519-sha256 inactive") && show.contains("two rsa-sha256 active"),
        "{show}"
    );
    let keys = s
        .client()
        .accounts
        .list_dkim_keys(mailstore_api::pb::ListDkimKeysRequest {
            domain: "example.org".into(),
            include_private: true,
            active_only: true,
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].selector, "two");
    assert!(keys[0].private_key.contains("BEGIN PRIVATE KEY"));
    let job = test_kit::enqueue(
        &s.client(),
        "k",
        "x@remote.test",
        &["alice@example.org"],
        b"Subject: q\r\n\r\nx\r\n",
    )
    .await
    .unwrap()
    .job_id;
    let list = run(&["queue", "list"], None).1;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{job}\tinbound\tready"))),
        "{list}"
    );
    let show =
        tokio::task::block_in_place(|| mailctl(s, &["queue", "show", &job.to_string()], None)).1;
    assert!(
        show.contains("<x@remote.test>") && show.contains("queued"),
        "{show}"
    );
    assert!(tokio::task::block_in_place(|| mailctl(s, &["queue", "rm", &job.to_string()], None)).0);
    assert!(
        !run(&["domain", "rm", "example.org"], None).0,
        "refused while users remain"
    );
    assert!(run(&["user", "rm", "alice@example.org"], None).0);
    assert!(run(&["domain", "rm", "example.org"], None).0);
    // Wrong token: refused.
    let bad = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args(["domain", "list"])
        .env("EPISTOLE_STORE_URL", &s.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Unauthenticated")
            || String::from_utf8_lossy(&bad.stderr).contains("token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_needed_for_administration() {
    let store = TestStore::start().await;
    let s = &store;
    let svc = [("EPISTOLE_STORE_TOKEN", s.service_token.as_str())];
    let (ok, _, err) = tokio::task::block_in_place(|| {
        mailctl_env(s, &svc, &["domain", "add", "example.org"], None)
    });
    assert!(!ok);
    assert!(err.contains("EPISTOLE_STORE_ADMIN_TOKEN"), "{err}");
    // The service token still reads what the services read.
    let (ok, _, err) =
        tokio::task::block_in_place(|| mailctl_env(s, &svc, &["domain", "list"], None));
    assert!(ok, "{err}");
    // The admin token wins over the service token when both are set.
    let both = [
        ("EPISTOLE_STORE_TOKEN", s.service_token.as_str()),
        ("EPISTOLE_STORE_ADMIN_TOKEN", s.token.as_str()),
    ];
    let (ok, out, err) = tokio::task::block_in_place(|| {
        mailctl_env(s, &both, &["domain", "add", "example.org"], None)
    });
    assert!(ok, "{err}");
    assert!(out.contains("example.org"));
    // Neither token: a clear message.
    let (ok, _, err) =
        tokio::task::block_in_place(|| mailctl_env(s, &[], &["domain", "list"], None));
    assert!(!ok);
    assert!(err.contains("EPISTOLE_STORE_ADMIN_TOKEN"), "{err}");
}

/// `mailctl quota` (issue #16, RFC 9208): the domain default needs the
/// admin token; a user's own limits override it and `none` restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_domain_default_and_user_limits() {
    let store = TestStore::start().await;
    let s = &store;
    s.add_domain("example.org").await;
    s.add_user("alice@example.org", "pw").await;
    let admin = [("EPISTOLE_STORE_ADMIN_TOKEN", s.token.as_str())];
    let svc = [("EPISTOLE_STORE_TOKEN", s.service_token.as_str())];
    let run = |env: &[(&str, &str)], args: &[&str]| {
        tokio::task::block_in_place(|| mailctl_env(s, env, args, None))
    };
    let (ok, _, err) = run(&svc, &["quota", "domain", "example.org", "--storage", "1M"]);
    assert!(!ok);
    assert!(err.contains("EPISTOLE_STORE_ADMIN_TOKEN"), "{err}");
    let (ok, out, err) = run(
        &admin,
        &[
            "quota",
            "domain",
            "example.org",
            "--storage",
            "1M",
            "--messages",
            "100",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "domain example.org default storage=1048576 messages=100"
    );
    let (ok, out, err) = run(&admin, &["quota", "show", "alice@example.org"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "alice@example.org\tstorage=0/1048576 (domain)\tmessages=0/100 (domain)"
    );
    let (ok, out, err) = run(
        &admin,
        &["quota", "set", "alice@example.org", "--storage", "2G"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "alice@example.org\tstorage=0/2147483648 (user)\tmessages=0/100 (domain)"
    );
    let (ok, out, err) = run(&admin, &["quota", "set", "alice@example.org"]);
    assert!(ok, "{err}");
    assert!(out.contains("storage=0/1048576 (domain)"), "{out}");
    let (ok, _, err) = run(
        &admin,
        &["quota", "set", "alice@example.org", "--storage", "lots"],
    );
    assert!(!ok);
    assert!(err.contains("expected a number"), "{err}");
    let (ok, _, err) = run(&admin, &["quota", "show", "nobody@example.org"]);
    assert!(!ok);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

/// `mailctl dmarc report`: a stored incoming aggregate report, per source
/// IP with its count, disposition and DKIM/SPF results; `--domain` filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_report_shows_incoming_aggregate_reports() {
    let store = TestStore::start().await;
    let row = |ip: &str, count: u64, disposition: &str, aligned: &str| pb::AggregateReportRow {
        source_ip: ip.into(),
        count,
        disposition: disposition.into(),
        dkim_aligned: aligned.into(),
        spf_aligned: aligned.into(),
        header_from: "ours.example".into(),
        dkim: vec![format!("ours.example={aligned}")],
        spf: vec![format!("ours.example={aligned}")],
    };
    for (domain, id) in [("ours.example", "r-1"), ("other.example", "r-2")] {
        store
            .client()
            .dmarc_reports
            .clone()
            .store_aggregate_report(pb::StoreAggregateReportRequest {
                report: Some(pb::AggregateReport {
                    org_name: "receiver.example".into(),
                    email: "noreply-dmarc@receiver.example".into(),
                    report_id: id.into(),
                    domain: domain.into(),
                    begin: 1_700_000_000,
                    end: 1_700_086_399,
                    rows: vec![
                        row("192.0.2.10", 12, "none", "pass"),
                        row("203.0.113.9", 3, "reject", "fail"),
                    ],
                    received_at: 0,
                }),
            })
            .await
            .unwrap();
    }
    let s = &store;
    let (ok, out, err) = tokio::task::block_in_place(|| {
        mailctl(s, &["dmarc", "report", "--domain", "ours.example"], None)
    });
    assert!(ok, "{err}");
    assert!(
        out.contains("ours.example from receiver.example <noreply-dmarc@receiver.example> report r-1 (2023-11-14 22:13 to 2023-11-15 22:13 UTC)"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "192.0.2.10",
                    "12",
                    "none",
                    "pass",
                    "pass",
                    "dkim:ours.example=pass",
                    "spf:ours.example=pass"
                ]),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().take(5).collect::<Vec<_>>()
                == ["203.0.113.9", "3", "reject", "fail", "fail"]),
        "{out}"
    );
    assert!(out.contains("15 messages, 12 passed DMARC"), "{out}");
    assert!(!out.contains("other.example"), "{out}");
}

/// `mailctl search backfill` (issue #16): mail stored before the search
/// index existed (rows turned back into the migration's placeholders) is
/// indexed in batches; the command needs the admin token; a second run
/// finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_backfill_indexes_old_mail() {
    let store = TestStore::start().await;
    let s = &store;
    s.add_domain("example.org").await;
    let user = s.add_user("alice@example.org", "pw").await;
    for i in 0..3 {
        s.append(
            user,
            "INBOX",
            format!("Subject: old {i}\r\n\r\nancient text {i}\r\n").as_bytes(),
        )
        .await;
    }
    let pool = sqlx::PgPool::connect(&s.database_url).await.unwrap();
    sqlx::query("UPDATE blob_text SET headers = NULL, body = NULL, complete = false")
        .execute(&pool)
        .await
        .unwrap();
    let admin = [("EPISTOLE_STORE_ADMIN_TOKEN", s.token.as_str())];
    let svc = [("EPISTOLE_STORE_TOKEN", s.service_token.as_str())];
    let run = |env: &[(&str, &str)], args: &[&str]| {
        tokio::task::block_in_place(|| mailctl_env(s, env, args, None))
    };
    let (ok, _, err) = run(&svc, &["search", "backfill"]);
    assert!(!ok);
    assert!(err.contains("EPISTOLE_STORE_ADMIN_TOKEN"), "{err}");
    let (ok, out, err) = run(&admin, &["search", "backfill", "--batch", "2"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "indexed 2, 1 left",
            "indexed 3, 0 left",
            "search backfill done: 3 indexed, 0 left"
        ]
    );
    let filled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM blob_text WHERE complete AND body LIKE '%ancient text%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(filled, 3);
    let (ok, out, err) = run(&admin, &["search", "backfill"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "search backfill done: 0 indexed, 0 left");
}
