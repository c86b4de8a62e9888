//! delivery end to end: the real `epistole delivery` process against a real
//! store and PostgreSQL — routing, exactly-once under SIGKILL, two replicas,
//! and DSNs.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mail_parser::MimeHeaders as _;
use mailstore_api::pb;
use test_kit::{TestStore, collect_body, enqueue, jobs, subjects, wait_until};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn delivery(store: &TestStore, worker: &str, lease_ms: u64) -> Proc {
    Proc(delivery_command(store, worker, lease_ms).spawn().unwrap())
}

/// `epistole delivery` against `store`, logging warnings to stderr.
fn delivery_command(store: &TestStore, worker: &str, lease_ms: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_epistole"));
    cmd.args([
        "--log",
        "warn",
        "delivery",
        "--http-listen",
        "127.0.0.1:0",
        "--worker-id",
        worker,
        "--hostname",
        "mx.example.org",
        "--lease-ms",
        &lease_ms.to_string(),
    ])
    .env("EPISTOLE_STORE_URL", &store.grpc_url)
    .env("EPISTOLE_STORE_TOKEN", &store.token)
    .stdout(Stdio::null());
    cmd
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: sender@remote.test\r\nTo: someone@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\nHello {subject}\r\n").into_bytes()
}

async fn setup() -> (TestStore, u64, u64) {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let alice = s.add_user("alice@example.org", "alice-password").await;
    let bob = s.add_user("bob@example.org", "bob-password").await;
    let mut a = s.client().accounts;
    for (src, dst) in [
        ("team@example.org", "alice@example.org"),
        ("team@example.org", "bob@example.org"),
        ("@example.org", "bob@example.org"),
        ("fwd@example.org", "carol@elsewhere.test"),
    ] {
        a.create_alias(pb::CreateAliasRequest {
            source: src.into(),
            target: dst.into(),
        })
        .await
        .unwrap();
    }
    (s, alice, bob)
}

/// A job's last recipient delivered locally finishes the job in the same
/// store transaction (`finish_job`): the worker then calls no `FinishJob`,
/// which the store would refuse (the lease is gone) and the worker would
/// log as a store error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_local_delivery_finishes_the_job_without_a_second_call() {
    let (s, alice, _) = setup().await;
    let c = s.client();
    for subject in ["one", "two", "three"] {
        enqueue(
            &c,
            subject,
            "sender@remote.test",
            &["alice@example.org"],
            &message(subject),
        )
        .await
        .unwrap();
    }
    let mut child = delivery_command(&s, "w1", 60_000)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("three jobs done", Duration::from_secs(60), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done)
            .await
            .len()
            == 3
    })
    .await;
    // Past the point where a FinishJob would have followed each delivery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("store error"), "{log}");
    assert_eq!(subjects(&s, alice, "INBOX").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_users_aliases_plus_catch_all_and_remote() {
    let (s, alice, bob) = setup().await;
    let c = s.client();
    c.mailboxes
        .clone()
        .create_mailbox(pb::CreateMailboxRequest {
            user_id: alice,
            name: "news".into(),
            special_use: String::new(),
        })
        .await
        .unwrap();
    c.accounts
        .clone()
        .add_filter(pb::AddFilterRequest {
            address: "bob@example.org".into(),
            position: 0,
            header: "Subject".into(),
            contains: "INVOICE".into(),
            folder: "Archive".into(),
        })
        .await
        .unwrap();
    let sends: [(&str, &[&str]); 6] = [
        ("to-alice", &["alice@example.org"]),
        ("to-team", &["team@example.org"]),
        ("to-plus", &["alice+news@example.org"]),
        ("to-catchall", &["anything@example.org"]),
        ("to-remote", &["dave@remote.test", "alice@example.org"]),
        ("invoice 42", &["bob@example.org", "fwd@example.org"]),
    ];
    for (subject, to) in sends {
        enqueue(&c, subject, "sender@remote.test", to, &message(subject))
            .await
            .unwrap();
    }
    let _d = delivery(&s, "w1", 60_000);
    wait_until(
        "the inbound queue to drain",
        Duration::from_secs(60),
        || async {
            jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready)
                .await
                .is_empty()
        },
    )
    .await;
    let mut a = subjects(&s, alice, "INBOX").await;
    a.sort();
    assert_eq!(a, vec!["to-alice", "to-remote", "to-team"]);
    assert_eq!(subjects(&s, alice, "news").await, vec!["to-plus"]);
    let mut b = subjects(&s, bob, "INBOX").await;
    b.sort();
    assert_eq!(b, vec!["to-catchall", "to-team"]);
    assert_eq!(
        subjects(&s, bob, "Archive").await,
        vec!["invoice 42"],
        "filter rule files it"
    );
    // Remote recipients are in the outbound queue with the original envelope.
    let out = jobs(&s, pb::QueueKind::Outbound, pb::JobState::Ready).await;
    assert_eq!(out.len(), 2);
    let mut rcpts = Vec::new();
    for j in &out {
        let d = c
            .queue
            .clone()
            .get_job(pb::GetJobRequest { job_id: j.id })
            .await
            .unwrap()
            .into_inner();
        let job = d.job.unwrap();
        assert_eq!(job.mail_from, "sender@remote.test");
        rcpts.extend(
            job.recipients
                .into_iter()
                .map(|r| r.recipient.unwrap().address),
        );
        let body = collect_body(
            c.queue
                .clone()
                .read_message(pb::ReadMessageRequest {
                    job_id: j.id,
                    offset: 0,
                    length: 0,
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await
        .unwrap();
        assert!(
            body.starts_with(b"From: sender@remote.test\r\n"),
            "outbound copy is the original message"
        );
    }
    rcpts.sort();
    assert_eq!(rcpts, vec!["carol@elsewhere.test", "dave@remote.test"]);
    // Delivered copies carry Return-Path and Delivered-To.
    let mb = c
        .mailboxes
        .clone()
        .get_mailbox(pb::GetMailboxRequest {
            user_id: alice,
            name: "news".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    let raw = collect_body(
        c.mailboxes
            .clone()
            .fetch_body(pb::FetchBodyRequest {
                mailbox_id: mb.id,
                uid: 1,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert!(raw.starts_with(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.org\r\nFrom: sender@remote.test\r\n"));
    // The event log tells the story.
    let done = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done).await;
    let d = c
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: done[1].id })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = d.events.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&(pb::EventKind::Queued as i32))
            && kinds.contains(&(pb::EventKind::Delivered as i32)),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_delivers_each_exactly_once() {
    let (s, alice, _) = setup().await;
    let c = s.client();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let subject = format!("m{:03}", t * 125 + i);
                enqueue(
                    &c,
                    &subject,
                    "sender@remote.test",
                    &["alice@example.org"],
                    &message(&subject),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut first = delivery(&s, "victim", 2_000);
    wait_until("some deliveries", Duration::from_secs(60), || async {
        subjects(&s, alice, "INBOX").await.len() >= 50
    })
    .await;
    // SIGKILL: no chance to finish anything.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let partial = subjects(&s, alice, "INBOX").await.len();
    assert!(partial < 500, "killed before the end ({partial})");
    let _second = delivery(&s, "survivor", 2_000);
    wait_until("all 500 delivered", Duration::from_secs(120), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready)
            .await
            .is_empty()
    })
    .await;
    let got = subjects(&s, alice, "INBOX").await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for g in &got {
        *count.entry(g.clone()).or_default() += 1;
    }
    assert_eq!(count.len(), 500, "every message delivered");
    assert!(count.values().all(|n| *n == 1), "no duplicates");
    assert!(
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Quarantined)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_two_thousand_messages_no_duplicates_no_losses() {
    let (s, alice, bob) = setup().await;
    let c = s.client();
    let _w1 = delivery(&s, "r1", 30_000);
    let _w2 = delivery(&s, "r2", 30_000);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let subject = format!("r{:04}", t * 250 + i);
                let to = if i % 2 == 0 {
                    "alice@example.org"
                } else {
                    "bob@example.org"
                };
                enqueue(
                    &c,
                    &subject,
                    "sender@remote.test",
                    &[to],
                    &message(&subject),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("2,000 delivered", Duration::from_secs(240), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready)
            .await
            .is_empty()
    })
    .await;
    let mut all = subjects(&s, alice, "INBOX").await;
    all.extend(subjects(&s, bob, "INBOX").await);
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, 2_000, "no losses, no duplicates");
    assert_eq!(all.len(), 2_000);
    let done = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done).await;
    assert_eq!(done.len(), 2_000);
    let workers: std::collections::HashSet<String> = {
        let mut w = std::collections::HashSet::new();
        for j in done.iter().step_by(50) {
            let d = c
                .queue
                .clone()
                .get_job(pb::GetJobRequest { job_id: j.id })
                .await
                .unwrap()
                .into_inner();
            for e in d.events {
                if e.kind == pb::EventKind::Delivered as i32 {
                    w.insert(e.source);
                }
            }
        }
        w
    };
    assert!(!workers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounces_to_the_sender_but_never_to_the_null_sender() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let alice = s.add_user("alice@example.org", "alice-password").await;
    let c = s.client();
    // alice sends to a user that does not exist: she gets the DSN.
    enqueue(
        &c,
        "b1",
        "alice@example.org",
        &["nobody@example.org"],
        &message("lost letter"),
    )
    .await
    .unwrap();
    // A bounce (null sender) to a missing user: no DSN.
    enqueue(
        &c,
        "b2",
        "",
        &["ghost@example.org"],
        &message("bounce of a bounce"),
    )
    .await
    .unwrap();
    let _d = delivery(&s, "w", 60_000);
    wait_until(
        "the DSN in alice's INBOX",
        Duration::from_secs(60),
        || async { !subjects(&s, alice, "INBOX").await.is_empty() },
    )
    .await;
    wait_until("the queue to drain", Duration::from_secs(60), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready)
            .await
            .is_empty()
    })
    .await;
    let got = subjects(&s, alice, "INBOX").await;
    assert_eq!(got, vec!["Undelivered Mail Returned to Sender"]);
    let mb = c
        .mailboxes
        .clone()
        .get_mailbox(pb::GetMailboxRequest {
            user_id: alice,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    let raw = collect_body(
        c.mailboxes
            .clone()
            .fetch_body(pb::FetchBodyRequest {
                mailbox_id: mb.id,
                uid: 1,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert!(
        raw.starts_with(b"Return-Path: <>\r\n"),
        "a DSN has the null sender"
    );
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status_part = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|t| t.subtype() == Some("delivery-status"))
        })
        .unwrap();
    let status = String::from_utf8_lossy(
        &raw[status_part.offset_body as usize..status_part.offset_end as usize],
    )
    .into_owned();
    assert!(
        status.contains("Final-Recipient: rfc822; nobody@example.org"),
        "{status}"
    );
    assert!(
        status.contains("Action: failed") && status.contains("Status: 5.1.1"),
        "{status}"
    );
    let headers_part = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|t| t.subtype() == Some("rfc822-headers"))
        })
        .unwrap();
    let orig = String::from_utf8_lossy(
        &raw[headers_part.offset_body as usize..headers_part.offset_end as usize],
    )
    .into_owned();
    assert!(orig.contains("Subject: lost letter"));
    // Exactly one DSN in total: none went anywhere for the null-sender message.
    let all = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Unspecified).await;
    assert_eq!(all.len(), 3, "two originals and one DSN");
    assert!(
        jobs(&s, pb::QueueKind::Outbound, pb::JobState::Unspecified)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_defers_then_bounces_when_too_old() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let c = s.client();
    let tiny = c
        .accounts
        .clone()
        .create_user(pb::CreateUserRequest {
            address: "tiny@example.org".into(),
            password: "tiny-password".into(),
            quota_bytes: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    // Nearly full: the message would fit in an empty mailbox (4.2.2, RFC
    // 3463 X.2.2 as a persistent transient failure), not in this one.
    s.append(tiny, "Archive", &vec![b'x'; 900]).await;
    let sender = s.add_user("sender@example.org", "sender-password").await;
    enqueue(
        &c,
        "q1",
        "sender@example.org",
        &["tiny@example.org"],
        &message("too big for tiny"),
    )
    .await
    .unwrap();
    let d = delivery(&s, "w", 60_000);
    wait_until("a deferral", Duration::from_secs(60), || async {
        let j = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready).await;
        j.first().is_some_and(|j| j.last_error.contains("4.2.2"))
    })
    .await;
    assert!(
        subjects(&s, sender, "INBOX").await.is_empty(),
        "no bounce while retrying"
    );
    drop(d);
    // A worker that gives up at once: the retry bounces.
    let job = jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready).await[0].id;
    c.queue
        .clone()
        .retry_job(pb::RetryJobRequest { job_id: job })
        .await
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--quota-give-up-secs",
            "0",
        ])
        .env("EPISTOLE_STORE_URL", &s.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &s.token)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc(child);
    wait_until("the bounce", Duration::from_secs(60), || async {
        !subjects(&s, sender, "INBOX").await.is_empty()
    })
    .await;
}

/// Issue #16: a message larger than the recipient's whole quota can never
/// be delivered, however much is expunged: it bounces at once with 5.2.2
/// (RFC 3463 §3.3) instead of waiting out the retry period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_the_quota_bounces_at_once() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let c = s.client();
    c.accounts
        .clone()
        .create_user(pb::CreateUserRequest {
            address: "tiny@example.org".into(),
            password: "tiny-password".into(),
            quota_bytes: 10,
        })
        .await
        .unwrap();
    let sender = s.add_user("sender@example.org", "sender-password").await;
    enqueue(
        &c,
        "q1",
        "sender@example.org",
        &["tiny@example.org"],
        &message("never fits"),
    )
    .await
    .unwrap();
    // The default give-up period is days: only "never fits" bounces now.
    let _d = delivery(&s, "w", 60_000);
    wait_until("the bounce", Duration::from_secs(60), || async {
        !subjects(&s, sender, "INBOX").await.is_empty()
    })
    .await;
    let job = &jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done).await;
    let original = job
        .iter()
        .find(|j| j.mail_from == "sender@example.org")
        .expect("the original job is done");
    let detail = c
        .queue
        .clone()
        .get_job(pb::GetJobRequest {
            job_id: original.id,
        })
        .await
        .unwrap()
        .into_inner();
    let r = &detail.job.unwrap().recipients[0];
    assert_eq!(r.state, pb::RecipientState::Failed as i32, "{r:?}");
    assert!(r.detail.contains("5.2.2"), "{}", r.detail);
}

/// The issue's acceptance path with a real client: Python smtplib sends
/// through the real smtp-in (MX for local recipients; submission with
/// STARTTLS + AUTH for the remote one), the real delivery process files
/// each copy once in the right mailbox, and the remote copy waits in the
/// outbound queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_through_smtp_in_to_mailboxes_and_outbound_queue() {
    let (s, alice, bob) = setup().await;
    s.client()
        .mailboxes
        .create_mailbox(pb::CreateMailboxRequest {
            user_id: alice,
            name: "news".into(),
            special_use: String::new(),
        })
        .await
        .unwrap();
    let smtp = test_kit::spawn_service(
        &s,
        &[
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.example.org",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "127.0.0.1:0",
            "--submissions-listen",
            "off",
            "--http-listen",
            "off",
            "--tls-self-signed",
            "--early-talker-delay-ms",
            "0",
        ],
        &["mx", "submission"],
    )
    .await;
    let _d = delivery(&s, "w1", 60_000);
    let script = r#"
import smtplib, ssl, sys
mx, sub = sys.argv[1], sys.argv[2]
def msg(subject, to, frm="sender@remote.test"):
    return f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\nHello\r\n"
h, p = mx.rsplit(":", 1)
with smtplib.SMTP(h, int(p), local_hostname="client.remote.test") as c:
    for subject, to in [("to-alice", "alice@example.org"), ("to-team", "team@example.org"),
                        ("to-plus", "alice+news@example.org"), ("to-catchall", "anything@example.org")]:
        c.sendmail("sender@remote.test", [to], msg(subject, to))
h, p = sub.rsplit(":", 1)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(h, int(p), local_hostname="laptop") as c:
    c.starttls(context=ctx)
    c.login("bob@example.org", "bob-password")
    c.sendmail("bob@example.org", ["dave@remote.test"], msg("to-remote", "dave@remote.test", "bob@example.org"))
print("sent")
"#;
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            script,
            &smtp.addr("mx").to_string(),
            &smtp.addr("submission").to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("delivery", Duration::from_secs(60), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Ready)
            .await
            .is_empty()
            && jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done)
                .await
                .len()
                == 5
    })
    .await;
    let mut a = subjects(&s, alice, "INBOX").await;
    a.sort();
    assert_eq!(a, vec!["to-alice", "to-team"]);
    assert_eq!(subjects(&s, alice, "news").await, vec!["to-plus"]);
    let mut b = subjects(&s, bob, "INBOX").await;
    b.sort();
    assert_eq!(b, vec!["to-catchall", "to-team"]);
    let out = jobs(&s, pb::QueueKind::Outbound, pb::JobState::Ready).await;
    assert_eq!(out.len(), 1);
    let d = s
        .client()
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: out[0].id })
        .await
        .unwrap()
        .into_inner();
    let job = d.job.unwrap();
    assert_eq!(job.mail_from, "bob@example.org");
    assert_eq!(
        job.recipients[0].recipient.as_ref().unwrap().address,
        "dave@remote.test"
    );
    assert_eq!(job.destination, "remote.test");
}

/// threat model T100: a message smtp-in marked for quarantine (DMARC or SPF
/// failure under a `quarantine` policy) is filed in Junk with `$Junk`,
/// ahead of the user's own rules; an unmarked one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_mark_files_in_junk_with_the_junk_keyword() {
    let (s, alice, _) = setup().await;
    let c = s.client();
    c.accounts
        .clone()
        .add_filter(pb::AddFilterRequest {
            address: "alice@example.org".into(),
            position: 0,
            header: "Subject".into(),
            contains: "statement".into(),
            folder: "Archive".into(),
        })
        .await
        .unwrap();
    let marked = format!(
        "{}: DMARC policy of bank.example (p=reject)\r\nFrom: ceo@bank.example\r\nSubject: statement\r\n\r\nx\r\n",
        mailstore_api::QUARANTINE_HEADER
    );
    enqueue(
        &c,
        "q1",
        "x@remote.test",
        &["alice@example.org"],
        marked.as_bytes(),
    )
    .await
    .unwrap();
    enqueue(
        &c,
        "q2",
        "x@remote.test",
        &["alice@example.org"],
        &message("plain"),
    )
    .await
    .unwrap();
    let _d = delivery(&s, "w1", 60_000);
    wait_until("delivery", Duration::from_secs(60), || async {
        jobs(&s, pb::QueueKind::Inbound, pb::JobState::Done)
            .await
            .len()
            == 2
    })
    .await;
    assert_eq!(subjects(&s, alice, "Junk").await, vec!["statement"]);
    assert!(subjects(&s, alice, "Archive").await.is_empty());
    assert_eq!(subjects(&s, alice, "INBOX").await, vec!["plain"]);
    let junk = c
        .mailboxes
        .clone()
        .get_mailbox(pb::GetMailboxRequest {
            user_id: alice,
            name: "Junk".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut meta = c
        .mailboxes
        .clone()
        .fetch_meta(pb::FetchMetaRequest {
            mailbox_id: junk.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let batch = meta.message().await.unwrap().unwrap();
    assert!(
        batch.messages[0].flags.iter().any(|f| f == "$Junk"),
        "{:?}",
        batch.messages[0].flags
    );
}
