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
