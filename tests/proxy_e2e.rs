//! PROXY protocol behind a real HAProxy (Debian package) with
//! `send-proxy-v2`: smtp-in sees each client's own address (limits and the
//! `Received:` header), and a PROXY header from an untrusted source is
//! refused. Threat model: clients hidden behind a load balancer.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use mailstore_api::pb;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection from a chosen loopback source address.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads one (possibly multi-line) SMTP reply; `None` at end of stream.
async fn reply(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
            .await
            .expect("reply in time")
            .ok()?;
        if n == 0 {
            return (!out.is_empty()).then_some(out);
        }
        out.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Some(out);
        }
    }
}

async fn cmd(r: &mut BufReader<TcpStream>, line: &str) -> String {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    reply(r).await.unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Haproxy {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

/// HAProxy in TCP mode in front of `backend`, speaking PROXY v2 to it.
async fn haproxy(backend: SocketAddr) -> Haproxy {
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("haproxy is required (apt-get install haproxy; scripts/test installs it)");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("epistole-haproxy-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
             frontend front\n  bind 127.0.0.1:{port}\n  default_backend back\n\n\
             backend back\n  server s1 {backend} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    test_kit::wait_until(
        "haproxy listening",
        Duration::from_secs(20),
        || async move { TcpStream::connect(addr).await.is_ok() },
    )
    .await;
    Haproxy {
        child,
        addr,
        _dir: dir,
    }
}

async fn queued_message(store: &test_kit::TestStore, job_id: u64) -> String {
    let mut q = store.client().queue;
    let mut s = q
        .read_message(pb::ReadMessageRequest {
            job_id,
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await.unwrap() {
        out.extend_from_slice(&c.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_haproxy_keep_their_own_addresses() {
    let store = test_kit::TestStore::start().await;
    store.add_domain("ours.example").await;
    store.add_user("alice@ours.example", "alice-password").await;
    let smtp = test_kit::spawn_service(
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
            "--proxy-trusted",
            "127.0.0.1/32",
            "--max-connections-per-ip",
            "1",
        ],
        &["mx"],
    )
    .await;
    let mx = smtp.addr("mx");
    let mut front = haproxy(mx).await;

    // Two clients from two addresses, through the same proxy: with one
    // connection allowed per client IP, both are greeted…
    let mut a = BufReader::new(connect_from("127.0.0.2", front.addr).await);
    assert!(reply(&mut a).await.unwrap().starts_with("220 mx.test"));
    let mut b = BufReader::new(connect_from("127.0.0.3", front.addr).await);
    assert!(reply(&mut b).await.unwrap().starts_with("220 mx.test"));
    // …and a second connection from the first address is over its limit,
    // which would not happen if smtp-in saw only the proxy's address.
    let mut a2 = BufReader::new(connect_from("127.0.0.2", front.addr).await);
    let refused = reply(&mut a2).await.unwrap();
    assert!(refused.starts_with("421 4.7.0"), "{refused}");

    // The Received: header names the real client.
    assert!(cmd(&mut b, "EHLO client.example").await.starts_with("250"));
    assert!(
        cmd(&mut b, "MAIL FROM:<x@remote.example>")
            .await
            .starts_with("250")
    );
    assert!(
        cmd(&mut b, "RCPT TO:<alice@ours.example>")
            .await
            .starts_with("250")
    );
    assert!(cmd(&mut b, "DATA").await.starts_with("354"));
    let done = cmd(&mut b, "Subject: via proxy\r\n\r\nhello\r\n.").await;
    assert!(done.starts_with("250"), "{done}");
    let job: u64 = done.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let message = queued_message(&store, job).await;
    let received = message.lines().next().unwrap_or_default().to_string();
    assert!(message.contains("127.0.0.3"), "{received}");
    assert!(!message.contains("[127.0.0.1]"), "{received}");
    drop(a);

    // A trusted source that does not send a header is closed unheard.
    let mut direct = TcpStream::connect(mx).await.unwrap();
    direct.write_all(b"EHLO x\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), direct.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // An untrusted source that sends a PROXY header gets the greeting (sent
    // at once here) and then the connection ends: nothing it said is
    // answered, and no forged address is believed.
    let mut forged = connect_from("127.0.0.4", mx).await;
    forged
        .write_all(b"PROXY TCP4 203.0.113.1 127.0.0.1 4000 25\r\nEHLO x\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), forged.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("220 "), "{text}");
    assert!(!text.contains("250"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    let _ = front.child.kill().await;
}

/// IMAP LOGIN through the front from `source`: the tagged answer.
async fn imap_login(source: &str, front: SocketAddr, user: &str, password: &str) -> String {
    let mut c = BufReader::new(connect_from(source, front).await);
    let mut greeting = String::new();
    c.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c.get_mut()
        .write_all(format!("a LOGIN {user} {password}\r\n").as_bytes())
        .await
        .unwrap();
    loop {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), c.read_line(&mut l))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        if l.starts_with("a ") {
            return l;
        }
    }
}

/// Behind the front, banning one client's address leaves another client
/// (same front, other address) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_behind_the_proxy_hits_only_the_guesser() {
    let store = test_kit::TestStore::start_tuned(|c| c.auth_failure_limit = 5).await;
    store.add_domain("example.org").await;
    store.add_user("bob@example.org", "bob-password").await;
    let imap = test_kit::spawn_service(
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
            "--auth-failure-delay-ms",
            "0",
            "--proxy-trusted",
            "127.0.0.1",
        ],
        &["imap"],
    )
    .await;
    let mut front = haproxy(imap.addr("imap")).await;
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(imap_login("127.0.0.2", front.addr, "bob@example.org", "guess").await);
    }
    assert!(
        answers.last().unwrap().contains("[UNAVAILABLE]"),
        "{answers:?}"
    );
    let ok = imap_login("127.0.0.3", front.addr, "bob@example.org", "bob-password").await;
    assert!(ok.starts_with("a OK"), "{ok}");
    let _ = front.child.kill().await;
}
