//! Password guessing against real binaries: two imap replicas and one pop3
//! share one store, so a client guessing from one address is throttled and
//! then banned on all of them, while a user from another address logs in;
//! guessing one account from many addresses throttles that account; and
//! the per-IP connection limit counts the connections on every replica.
//! Threat model: password guessing (T17, T45).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: &str, to: SocketAddr) -> BufReader<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    BufReader::new(socket.connect(to).await.unwrap())
}

async fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut l))
        .await
        .expect("answer in time")
        .unwrap();
    l
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Throttled,
}

/// One IMAP LOGIN on a new connection from `source`.
async fn imap_login(source: &str, to: SocketAddr, user: &str, password: &str) -> Outcome {
    let mut c = connect_from(source, to).await;
    let greeting = line(&mut c).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c.get_mut()
        .write_all(format!("a LOGIN {user} {password}\r\n").as_bytes())
        .await
        .unwrap();
    loop {
        let l = line(&mut c).await;
        if let Some(rest) = l.strip_prefix("a ") {
            return if rest.starts_with("OK") {
                Outcome::Ok
            } else if rest.contains("[UNAVAILABLE]") {
                Outcome::Throttled
            } else {
                assert!(rest.contains("[AUTHENTICATIONFAILED]"), "{l}");
                Outcome::Failed
            };
        }
        assert!(!l.is_empty(), "connection closed before the answer");
    }
}

/// One POP3 USER/PASS on a new connection from `source`.
async fn pop3_login(source: &str, to: SocketAddr, user: &str, password: &str) -> Outcome {
    let mut c = connect_from(source, to).await;
    let greeting = line(&mut c).await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    c.get_mut()
        .write_all(format!("USER {user}\r\n").as_bytes())
        .await
        .unwrap();
    assert!(line(&mut c).await.starts_with("+OK"));
    c.get_mut()
        .write_all(format!("PASS {password}\r\n").as_bytes())
        .await
        .unwrap();
    let l = line(&mut c).await;
    if l.starts_with("+OK") {
        Outcome::Ok
    } else if l.contains("[SYS/TEMP]") {
        Outcome::Throttled
    } else {
        assert!(l.contains("[AUTH]"), "{l}");
        Outcome::Failed
    }
}

struct Targets {
    imap: [SocketAddr; 2],
    pop3: SocketAddr,
}

impl Targets {
    /// A login on the `i`-th service, taking turns: imap A, imap B, pop3.
    async fn login(&self, i: usize, source: &str, user: &str, password: &str) -> Outcome {
        match i % 3 {
            0 | 1 => imap_login(source, self.imap[i % 3], user, password).await,
            _ => pop3_login(source, self.pop3, user, password).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_throttled_across_replicas_and_protocols() {
    let store = test_kit::TestStore::start_tuned(|c| {
        c.auth_failure_limit = 10;
        c.auth_account_failure_limit = 20;
        c.auth_cache_ttl_secs = 0;
    })
    .await;
    store.add_domain("example.org").await;
    for user in ["alice", "bob", "carol"] {
        store
            .add_user(&format!("{user}@example.org"), &format!("{user}-password"))
            .await;
    }
    let imap_args = [
        "--log",
        "warn",
        "imap",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "off",
        "--allow-plaintext-auth",
        "--auth-failure-delay-ms",
        "0",
    ];
    let imap_a = test_kit::spawn_service(&store, &imap_args, &["imap"]).await;
    let imap_b = test_kit::spawn_service(&store, &imap_args, &["imap"]).await;
    let pop3 = test_kit::spawn_service(
        &store,
        &[
            "--log",
            "warn",
            "pop3",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "off",
            "--http-listen",
            "off",
            "--allow-plaintext-auth",
            "--auth-failure-delay-ms",
            "0",
        ],
        &["pop3"],
    )
    .await;
    let t = Targets {
        imap: [imap_a.addr("imap"), imap_b.addr("imap")],
        pop3: pop3.addr("pop3"),
    };

    // 50 wrong passwords from one address, spread over the three servers.
    let mut outcomes = Vec::new();
    for i in 0..50 {
        outcomes.push(t.login(i, "127.0.0.2", "alice@example.org", "guess").await);
        if i == 30 {
            // Meanwhile a user from another address logs in everywhere.
            for j in 0..3 {
                assert_eq!(
                    t.login(j, "127.0.0.3", "bob@example.org", "bob-password")
                        .await,
                    Outcome::Ok,
                    "bob on server {j}"
                );
            }
        }
    }
    println!("one address, 50 guesses: {outcomes:?}");
    let first_throttled = outcomes
        .iter()
        .position(|o| *o == Outcome::Throttled)
        .expect("never throttled");
    assert!(first_throttled <= 12, "throttled only at {first_throttled}");
    assert!(
        outcomes[first_throttled..]
            .iter()
            .all(|o| *o == Outcome::Throttled),
        "not banned after the limit: {outcomes:?}"
    );
    // The ban holds on every server, even for the right password of
    // another account from that address.
    for j in 0..3 {
        assert_eq!(
            t.login(j, "127.0.0.2", "bob@example.org", "bob-password")
                .await,
            Outcome::Throttled,
            "server {j}"
        );
    }

    // 50 wrong passwords for one account, each from its own address.
    let mut outcomes = Vec::new();
    for i in 0..50 {
        let source = format!("127.0.1.{}", i + 1);
        outcomes.push(t.login(i, &source, "carol@example.org", "guess").await);
    }
    println!("one account, 50 addresses: {outcomes:?}");
    let first_throttled = outcomes
        .iter()
        .position(|o| *o == Outcome::Throttled)
        .expect("account never throttled");
    assert!(first_throttled <= 22, "throttled only at {first_throttled}");
    assert!(
        outcomes[first_throttled..]
            .iter()
            .all(|o| *o == Outcome::Throttled),
        "{outcomes:?}"
    );
    // Other accounts are not affected from those addresses.
    assert_eq!(
        t.login(0, "127.0.1.50", "bob@example.org", "bob-password")
            .await,
        Outcome::Ok
    );
}

/// Whether a new connection from `source` is greeted (`+OK`) or refused
/// over the limits; the greeted connection is returned to be held.
async fn pop3_greeted(source: &str, to: SocketAddr) -> Option<BufReader<TcpStream>> {
    let mut c = connect_from(source, to).await;
    let mut l = String::new();
    match tokio::time::timeout(Duration::from_secs(30), c.read_line(&mut l)).await {
        Ok(Ok(_)) if l.starts_with("+OK") => Some(c),
        Ok(_) => None,
        Err(_) => panic!("no greeting nor refusal in time"),
    }
}

/// Polls until a new connection from `source` to `to` is greeted
/// (`want` = true) or refused; each greeted probe is closed at once.
async fn until_greeted(source: &str, to: SocketAddr, want: bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if pop3_greeted(source, to).await.is_some() == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The per-IP connection limit counts every replica's connections (threat
/// model T43): an address holding its whole allowance on one pop3 replica
/// is refused by the other (within a report interval), other addresses
/// are not, and the allowance comes back when those connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_per_ip_holds_across_replicas() {
    let store = test_kit::TestStore::start().await;
    let args = [
        "--log",
        "warn",
        "pop3",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "off",
        "--http-listen",
        "off",
        "--max-connections-per-ip",
        "4",
    ];
    let a = test_kit::spawn_service(&store, &args, &["pop3"]).await;
    let b = test_kit::spawn_service(&store, &args, &["pop3"]).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            pop3_greeted("127.0.0.2", a.addr("pop3"))
                .await
                .unwrap_or_else(|| panic!("connection {i} to replica A")),
        );
    }
    assert!(
        pop3_greeted("127.0.0.2", a.addr("pop3")).await.is_none(),
        "A's own limit"
    );
    until_greeted(
        "127.0.0.2",
        b.addr("pop3"),
        false,
        "replica B never learnt of A's 4 connections",
    )
    .await;
    assert!(
        pop3_greeted("127.0.0.3", b.addr("pop3")).await.is_some(),
        "another address is not limited"
    );
    drop(held);
    until_greeted(
        "127.0.0.2",
        b.addr("pop3"),
        true,
        "replica B never learnt that A's connections closed",
    )
    .await;
}
