//! Issue #16: the maildrop lock is released however the session ends —
//! QUIT, the autologout timer, a dropped connection, server shutdown — so
//! a client that comes back at once logs in on its first try, and nothing
//! was deleted without QUIT (RFC 1939 §6: no UPDATE state without QUIT).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Env, session_config};
use pop3::conn::Server;
use pop3::session::{Shared, new_session_id};
use service_kit::starttls::serve_connection;
use tokio_util::sync::CancellationToken;

const MSG: &[u8] = b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n";

async fn env_with_three(tweak: impl FnOnce(&mut pop3::SessionConfig)) -> (Env, Vec<u32>) {
    let env = Env::new(|c| {
        c.allow_plaintext_auth = true;
        tweak(c);
    })
    .await;
    let mut uids = Vec::new();
    for _ in 0..3 {
        uids.push(env.append(MSG).await);
    }
    (env, uids)
}

/// Logs in, deletes message 1 and checks the DELE.
async fn login_and_dele(c: &mut Client<tokio::io::DuplexStream>) {
    c.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
}

/// A new connection logs in on its first attempt and sees all messages.
async fn relogin_at_once(env: &Env, expected: usize) {
    let mut c = env.connect().await;
    c.login().await;
    assert!(
        c.cmd("STAT").await.starts_with(&format!("+OK {expected} ")),
        "maildrop content"
    );
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn lock_released_at_quit() {
    let (env, uids) = env_with_three(|_| {}).await;
    let mut c = env.connect().await;
    login_and_dele(&mut c).await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    relogin_at_once(&env, 2).await;
    assert_eq!(env.inbox_uids().await, uids[1..]);
}

#[tokio::test]
async fn lock_released_at_autologout() {
    let (env, uids) = env_with_three(|c| c.command_timeout = Duration::from_secs(1)).await;
    let mut c = env.connect().await;
    login_and_dele(&mut c).await;
    assert_eq!(
        c.line().await,
        "-ERR Autologout timer expired, nothing deleted"
    );
    assert!(c.closed().await);
    relogin_at_once(&env, 3).await;
    assert_eq!(env.inbox_uids().await, uids);
}

#[tokio::test]
async fn lock_released_when_the_connection_drops() {
    let (env, uids) = env_with_three(|_| {}).await;
    for _ in 0..5 {
        let mut c = env.connect().await;
        login_and_dele(&mut c).await;
        drop(c); // no QUIT
        relogin_at_once(&env, 3).await;
    }
    assert_eq!(env.inbox_uids().await, uids);
    let msgs = env.inbox_messages().await;
    assert!(
        msgs.iter()
            .all(|(_, f)| !f.iter().any(|f| f == "\\Deleted")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn lock_released_at_server_shutdown() {
    let (env, uids) = env_with_three(|_| {}).await;
    let mut c = env.connect().await;
    login_and_dele(&mut c).await;
    env.shutdown.cancel();
    assert_eq!(
        c.line().await,
        "-ERR [SYS/TEMP] Server shutting down, nothing deleted"
    );
    assert!(c.closed().await);
    // The restarted server (a new process: it shares nothing with the old
    // one but the store) lets the user in at once.
    let mut cfg = session_config();
    cfg.allow_plaintext_auth = true;
    let server = Server {
        shared: Arc::new(Shared::new(cfg, env.store.client())),
        acceptor: None,
    };
    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let token = CancellationToken::new();
    tokio::spawn(async move {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let _ = serve_connection(&server, server_io, ip, new_session_id(), false, &token).await;
    });
    let mut c = Client::new(client);
    assert!(c.line().await.starts_with("+OK Epistole POP3 server ready"));
    c.login().await;
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
    assert_eq!(env.inbox_uids().await, uids);
}

/// The lock refreshed several times (TTL 3 s: a refresh every second) is
/// still released when the connection drops: the refresh task is joined
/// before the release, so no refresh lands after it and takes the lock
/// back for another TTL.
#[tokio::test]
async fn lock_released_after_refreshes_when_the_connection_drops() {
    let (env, uids) = env_with_three(|c| c.lock_ttl = Duration::from_secs(3)).await;
    for wait_ms in [2_900_u64, 3_000, 3_100] {
        let mut c = env.connect().await;
        login_and_dele(&mut c).await;
        // Outlive the TTL: only the refreshes keep the lock.
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
        drop(c); // no QUIT, close to a refresh
        relogin_at_once(&env, 3).await;
    }
    assert_eq!(env.inbox_uids().await, uids);
}
