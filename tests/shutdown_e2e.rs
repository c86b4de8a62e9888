//! Graceful shutdown: SIGTERM makes every service stop accepting, end its
//! sessions properly, and exit 0 within its grace period.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use mailstore_api::pb;
use tokio::io::AsyncBufReadExt as _;

async fn sigterm(pid: u32) {
    let ok = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_exits_zero_on_sigterm_even_with_open_watch_streams() {
    let db = test_kit::fresh_database().await;
    let token = test_kit::random_token();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "mailbox-store",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db)
        .env("EPISTOLE_STORE_TOKEN", &token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let grpc = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("grpc="))
        .unwrap()
        .to_string();
    let client = mailstore_api::connect(&format!("http://{grpc}"), &token).unwrap();
    let mut watch = client
        .mailboxes
        .clone()
        .watch(pb::WatchRequest {
            user_id: 1,
            mailbox_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "READY");
    sigterm(child.id().unwrap()).await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("store exits within its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// SIGTERM to smtp-in while a client is in the middle of DATA: the client
/// gets 421, and nothing of the half-sent message is in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_in_answers_421_mid_data_and_stores_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let store = test_kit::TestStore::start().await;
    store.add_domain("example.org").await;
    store.add_user("alice@example.org", "alice-password").await;
    let mut smtp = test_kit::spawn_service(
        &store,
        &[
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "off",
            "--early-talker-delay-ms",
            "0",
        ],
        &["mx"],
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(smtp.addr("mx"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read_reply = async |c: &mut tokio::net::TcpStream| -> String {
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(read_reply(&mut c).await.starts_with("220"));
    for (cmd, code) in [
        ("EHLO client.test\r\n", "250"),
        ("MAIL FROM:<x@remote.test>\r\n", "250"),
        ("RCPT TO:<alice@example.org>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        c.write_all(cmd.as_bytes()).await.unwrap();
        let r = read_reply(&mut c).await;
        assert!(r.starts_with(code), "{cmd:?} -> {r:?}");
    }
    c.write_all(b"Subject: half\r\n\r\nthe first half of a message\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(smtp.child.id().unwrap()).await;
    let r = read_reply(&mut c).await;
    assert!(r.starts_with("421"), "{r:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), smtp.child.wait())
        .await
        .expect("smtp-in exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let jobs = store
        .client()
        .queue
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "nothing half stored: {jobs:?}");
}

/// SIGTERM to imap while a client IDLEs: the client gets `* BYE` and the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_says_bye_to_an_idling_client_on_sigterm() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let store = test_kit::TestStore::start().await;
    store.add_domain("example.org").await;
    store.add_user("alice@example.org", "alice-password").await;
    let mut imap = test_kit::spawn_service(
        &store,
        &[
            "--log",
            "warn",
            "imap",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "off",
            "--allow-plaintext-auth",
        ],
        &["imap"],
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(imap.addr("imap"))
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    let mut until = async |c: &mut tokio::net::TcpStream, seen: &mut String, want: &str| {
        while !seen.contains(want) {
            let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("waiting for {want:?}, got {seen:?}"))
                .unwrap();
            assert!(n > 0, "closed before {want:?}: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    until(&mut c, &mut seen, "* OK").await;
    c.write_all(b"a LOGIN alice@example.org alice-password\r\nb SELECT INBOX\r\nc IDLE\r\n")
        .await
        .unwrap();
    until(&mut c, &mut seen, "+ ").await;
    sigterm(imap.child.id().unwrap()).await;
    until(&mut c, &mut seen, "* BYE").await;
    let status = tokio::time::timeout(Duration::from_secs(30), imap.child.wait())
        .await
        .expect("imap exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
