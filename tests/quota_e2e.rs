//! Quotas end to end (issue #16, RFC 9208): the real `epistole` binaries
//! (imap, smtp-in, delivery, mailctl) over a real store and PostgreSQL, with
//! real clients (Python's imaplib and smtplib):
//!
//! - `mailctl quota` sets a domain default and a user's own limits;
//! - imaplib: GETQUOTAROOT reports them; an APPEND over the limit gets
//!   `NO [OVERQUOTA]` and stores nothing;
//! - smtplib: a message that does not fit now is accepted at RCPT and
//!   deferred by delivery with 4.2.2; once the mailbox is full, RCPT gets
//!   452 4.2.2; a message larger than a whole quota bounces at once with
//!   5.2.2 (RFC 3463 X.2.2).
//!
//! Needs `python3`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailstore_api::pb;
use test_kit::{TestStore, jobs, subjects};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const PW: &str = "correct horse";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mailctl(store: &TestStore, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(["--log", "warn", "mailctl"])
        .args(args)
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_ADMIN_TOKEN", &store.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mailctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SCRIPT: &str = r#"
import imaplib, smtplib, sys
imap_addr, mx_addr, step = sys.argv[1], sys.argv[2], sys.argv[3]
def body(subject, size):
    head = f"From: sender@remote.test\r\nTo: x\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\n"
    return head + "x" * (size - len(head) - 2) + "\r\n"
out = {}
h, p = imap_addr.rsplit(":", 1)
m = imaplib.IMAP4(h, int(p))
m.login("alice@example.org", "correct horse")
if step == "imap":
    typ, data = m.getquotaroot("INBOX")
    out["quotaroot"] = " | ".join(d.decode() for d in sum(data, []))
    typ, data = m.append("INBOX", None, None, body("small", 1000).encode())
    out["append_small"] = typ
    typ, data = m.append("INBOX", None, None, body("huge", 5000).encode())
    out["append_huge"] = typ + " " + data[0].decode()
    typ, data = m.getquota('""')
    out["quota"] = data[0].decode()
    h, p = mx_addr.rsplit(":", 1)
    with smtplib.SMTP(h, int(p), local_hostname="client.remote.test") as s:
        # Does not fit next to "small" (4 KiB), would fit in an empty box.
        s.sendmail("sender@remote.test", ["alice@example.org"], body("later", 2600))
        # Larger than bob's whole quota (the domain default, 2 KiB).
        s.sendmail("sender@remote.test", ["bob@example.org"], body("never", 3000))
elif step == "full":
    typ, data = m.append("INBOX", None, None, body("fills", 2900).encode())
    out["append_fills"] = typ
    h, p = mx_addr.rsplit(":", 1)
    with smtplib.SMTP(h, int(p), local_hostname="client.remote.test") as s:
        s.ehlo()
        s.mail("sender@remote.test")
        code, msg = s.rcpt("alice@example.org")
        out["rcpt_full"] = f"{code} {msg.decode()}"
        s.rset()
m.logout()
for k, v in out.items():
    print(f"{k}={v}")
"#;

/// Runs one step of the script; its `key=value` lines.
async fn python(imap: &str, mx: &str, step: &str) -> HashMap<String, String> {
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, imap, mx, step])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "python ({step}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn recipient_of(s: &TestStore, to: &str) -> Option<(i32, String)> {
    let mut all = jobs(s, pb::QueueKind::Inbound, pb::JobState::Unspecified).await;
    all.sort_by_key(|j| j.id);
    for j in all {
        let d = s
            .client()
            .queue
            .clone()
            .get_job(pb::GetJobRequest { job_id: j.id })
            .await
            .unwrap()
            .into_inner();
        let job = d.job.unwrap();
        for r in job.recipients {
            if r.recipient.as_ref().is_some_and(|x| x.address == to) {
                return Some((r.state, r.detail));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaplib_and_smtplib_meet_the_quota() {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let alice = s.add_user(ALICE, PW).await;
    s.add_user(BOB, PW).await;
    let out = mailctl(&s, &["quota", "domain", "example.org", "--storage", "2K"]);
    assert_eq!(
        out.trim(),
        "domain example.org default storage=2048 messages=unlimited"
    );
    let out = mailctl(
        &s,
        &["quota", "set", ALICE, "--storage", "4K", "--messages", "2"],
    );
    assert_eq!(
        out.trim(),
        format!("{ALICE}\tstorage=0/4096 (user)\tmessages=0/2 (user)")
    );
    let out = mailctl(&s, &["quota", "show", BOB]);
    assert_eq!(
        out.trim(),
        format!("{BOB}\tstorage=0/2048 (domain)\tmessages=0/unlimited (domain)")
    );

    let imap = test_kit::spawn_service(
        &s,
        &[
            "--log",
            "warn",
            "imap",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "off",
            "--allow-plaintext-auth",
            "--auth-failure-delay-ms",
            "100",
        ],
        &["imap"],
    )
    .await;
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
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "off",
            "--tls-self-signed",
            "--early-talker-delay-ms",
            "0",
        ],
        &["mx"],
    )
    .await;
    let child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--worker-id",
            "w1",
            "--hostname",
            "mx.example.org",
        ])
        .env("EPISTOLE_STORE_URL", &s.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &s.token)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _delivery = Proc(child);
    let (imap_addr, mx_addr) = (imap.addr("imap").to_string(), smtp.addr("mx").to_string());

    let r = python(&imap_addr, &mx_addr, "imap").await;
    assert_eq!(
        r["quotaroot"], "INBOX \"\" | \"\" (STORAGE 0 4 MESSAGE 0 2)",
        "{r:?}"
    );
    assert_eq!(r["append_small"], "OK", "{r:?}");
    assert!(r["append_huge"].starts_with("NO [OVERQUOTA]"), "{r:?}");
    assert_eq!(r["quota"], "\"\" (STORAGE 1 4 MESSAGE 1 2)", "{r:?}");
    assert_eq!(subjects(&s, alice, "INBOX").await, vec!["small"]);

    // Delivery: alice's message waits (4.2.2), bob's bounces at once (5.2.2).
    let start = std::time::Instant::now();
    loop {
        let a = recipient_of(&s, ALICE).await;
        let b = recipient_of(&s, BOB).await;
        let deferred = a.as_ref().is_some_and(|(st, d)| {
            *st == pb::RecipientState::Deferred as i32 && d.contains("4.2.2")
        });
        let failed = b
            .as_ref()
            .is_some_and(|(st, d)| *st == pb::RecipientState::Failed as i32 && d.contains("5.2.2"));
        if deferred && failed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "alice deferred with 4.2.2, bob failed with 5.2.2: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(subjects(&s, alice, "INBOX").await, vec!["small"]);

    // Full by message count: RCPT is refused with 452 4.2.2.
    let r = python(&imap_addr, &mx_addr, "full").await;
    assert_eq!(r["append_fills"], "OK", "{r:?}");
    assert!(r["rcpt_full"].starts_with("452 4.2.2"), "{r:?}");
}
