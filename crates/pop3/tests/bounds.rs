//! Issue #13 for POP3: the AUTH continuation and everything before login
//! are bounded in time and bytes, store refusals are `[SYS/TEMP]`
//! (RFC 3206), and `--allow-plaintext-auth` only opens loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Client, Env, PASS, USER};
use pop3::session::new_session_id;
use service_kit::starttls::serve_connection;

/// A plain connection from `ip`.
async fn connect_from(env: &Env, ip: &str) -> Client<tokio::io::DuplexStream> {
    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let server = env.server.clone();
    let sd = env.shutdown.clone();
    let ip: IpAddr = ip.parse().unwrap();
    tokio::spawn(async move {
        let _ = serve_connection(&server, server_io, ip, new_session_id(), false, &sd).await;
    });
    let mut c = Client::new(client);
    assert!(c.line().await.starts_with("+OK Epistole POP3 server ready"));
    c
}

#[tokio::test]
async fn auth_continuation_is_bounded_by_the_autologout_timer() {
    let env = Env::new(|c| {
        c.allow_plaintext_auth = true;
        c.command_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = env.connect().await;
    c.transcript(
        "C: AUTH PLAIN
         S: + 
         S: -ERR Autologout timer expired, nothing deleted
         S: <EOF>",
    )
    .await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn input_before_login_is_bounded() {
    let env = Env::new(|c| {
        c.allow_plaintext_auth = true;
        c.max_errors = 1_000_000;
    })
    .await;
    let mut c = env.connect().await;
    // Short lines each answered, until more than 64 KiB have been sent.
    c.send(&b"USER x\r\n".repeat(64 * 1024 / 8 + 1)).await;
    let mut lines = Vec::new();
    loop {
        let l = c.line().await;
        if l == "<EOF>" {
            break;
        }
        lines.push(l);
    }
    assert_eq!(
        lines.last().map(String::as_str),
        Some("-ERR Too much input before authentication")
    );
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l == "+OK Send PASS")
    );
    // A long line is refused without being buffered (RFC 2449 §4: 255).
    let mut c = env.connect().await;
    c.send(&[b'X'; 300]).await;
    c.send(b"\r\n").await;
    assert!(c.line().await.starts_with("-ERR"));
    c.login().await;
}

#[tokio::test]
async fn plaintext_auth_flag_is_for_loopback_only() {
    let env = Env::new(|c| c.allow_plaintext_auth = true).await;
    for ip in ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"] {
        let mut c = connect_from(&env, ip).await;
        let capa = c.cmd("CAPA").await;
        assert!(capa.starts_with("+OK"), "{capa}");
        assert!(c.lines().await.iter().any(|l| l == "USER"), "{ip}");
        c.login().await;
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    }
    for ip in ["192.0.2.7", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.7"] {
        let mut c = connect_from(&env, ip).await;
        c.cmd("CAPA").await;
        assert!(!c.lines().await.iter().any(|l| l == "USER"), "{ip}");
        assert_eq!(
            c.cmd(&format!("USER {USER}")).await,
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections, use STLS",
            "{ip}"
        );
        assert!(
            c.cmd(&format!("PASS {PASS}"))
                .await
                .starts_with("-ERR [AUTH]")
        );
        assert!(
            c.cmd("AUTH PLAIN AGEAYg==")
                .await
                .starts_with("-ERR [AUTH]")
        );
    }
}
