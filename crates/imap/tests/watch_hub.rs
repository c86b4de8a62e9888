//! Every session of an imap process with a mailbox selected shares one
//! change stream from the store (`imap::watch_hub`): many sessions in IDLE
//! hold one Watch stream in the store, and each still gets its own
//! mailbox's pushes and nobody else's. Alone in its test binary, because
//! it reads the store's process-wide `store_watch_streams` gauge.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Client, env};

const MSG: &[u8] = b"From: a@example.org\r\nTo: carol@example.org\r\nSubject: hub\r\n\r\nbody\r\n";

/// Reads untagged lines until `* N EXISTS`; `N`.
async fn exists(c: &mut Client) -> u32 {
    loop {
        let l = c.line().await;
        if let Some(n) = l
            .strip_prefix("* ")
            .and_then(|r| r.strip_suffix(" EXISTS\r\n"))
        {
            return n.parse().unwrap();
        }
    }
}

/// Asserts no EXISTS arrives within 300 ms (other untagged lines may).
async fn no_exists(c: &mut Client) {
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Some(l) = c
        .line_within(until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(!l.contains("EXISTS"), "unexpected {l}");
    }
}

/// The store's open Watch streams, from its /metrics.
async fn watch_streams(http: std::net::SocketAddr) -> u64 {
    let out = tokio::process::Command::new("curl")
        .args(["-s", &format!("http://{http}/metrics")])
        .output()
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix("store_watch_streams "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn idle_sessions_share_one_store_stream() {
    let env = env().await;
    let store = env.store();
    let mut users = vec![store.add_user("carol@example.org", "secret").await];
    users.push(store.add_user("dave@example.org", "secret").await);
    let names = ["carol@example.org", "dave@example.org"];
    let mut sessions = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..5 {
            let mut c = Client::login_as(&env, name, "secret").await;
            c.ok("s", "SELECT INBOX").await;
            c.send(b"i IDLE\r\n").await;
            assert!(c.line().await.starts_with("+ "));
            sessions.push((users[i], c));
        }
    }
    assert_eq!(
        watch_streams(store.http_addr).await,
        1,
        "ten selected sessions, one stream in the store"
    );

    // carol's new message reaches carol's five sessions, and not dave's.
    store.append(users[0], "INBOX", MSG).await;
    for (user, c) in &mut sessions {
        if *user == users[0] {
            assert_eq!(exists(c).await, 1);
        }
    }
    for (user, c) in &mut sessions {
        if *user == users[1] {
            no_exists(c).await;
        }
    }
    // A session that leaves its IDLE and selects another mailbox follows
    // that one instead.
    let (_, c) = &mut sessions[5];
    c.send(b"DONE\r\n").await;
    let (_, t) = c.until("i").await;
    assert!(t.starts_with("i OK"), "{t}");
    c.ok("c", "CREATE Lists").await;
    c.ok("s", "SELECT Lists").await;
    c.send(b"j IDLE\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    store.append(users[1], "INBOX", MSG).await;
    store.append(users[1], "Lists", MSG).await;
    assert_eq!(exists(c).await, 1);
    no_exists(c).await;
    let (_, other) = &mut sessions[6];
    assert_eq!(exists(other).await, 1);
    assert_eq!(watch_streams(store.http_addr).await, 1);
}
