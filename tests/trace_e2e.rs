//! `mailctl trace` end to end: the real `epistole smtp-in`, `delivery` and
//! `smtp-out` processes, a real store over PostgreSQL (test_kit), the test
//! DNS server and a loopback SMTP sink standing in for the remote MX. One
//! message over SMTP to a local user and two forwarding aliases (one
//! remote recipient accepts, one refuses); then `epistole mailctl trace`
//! by Message-ID and by queue id must show every hop with its facts:
//! received (client, HELO, TLS, AUTH, SPF/DKIM/DMARC, size), queued,
//! delivered (mailbox and UID), relayed (MX, address, TLS, reply), the
//! refusal and the DSN made about it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::pb;
use test_dns::TestDns;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// What the sink accepted: (recipients, wire data).
type Inbox = Arc<Mutex<Vec<(Vec<String>, Vec<u8>)>>>;

/// A remote MX on `addr`: refuses recipients starting with "nobody",
/// accepts everything else.
async fn sink(addr: SocketAddr) -> Inbox {
    let l = TcpListener::bind(addr).await.unwrap();
    let inbox: Inbox = Arc::default();
    let ib = inbox.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let ib = ib.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 mx.remote.test ESMTP sink\r\n").await;
                let mut rcpts = Vec::new();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = String::from_utf8_lossy(&line)
                        .trim_end()
                        .to_ascii_lowercase();
                    let reply: &[u8] = if cmd.starts_with("ehlo") {
                        b"250-mx.remote.test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("rcpt to:<nobody") {
                        b"550 5.1.1 no such user here\r\n"
                    } else if let Some(a) = cmd.strip_prefix("rcpt to:") {
                        rcpts.push(a.trim_matches(|c| c == '<' || c == '>').to_string());
                        b"250 2.1.5 ok\r\n"
                    } else if cmd == "data" && rcpts.is_empty() {
                        b"554 5.5.1 no valid recipients\r\n"
                    } else if cmd == "data" {
                        let _ = w.write_all(b"354 go\r\n").await;
                        let mut wire = Vec::new();
                        loop {
                            line.clear();
                            if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            wire.extend_from_slice(&line);
                            if line == b".\r\n" {
                                break;
                            }
                        }
                        ib.lock().unwrap().push((std::mem::take(&mut rcpts), wire));
                        b"250 2.0.0 queued\r\n"
                    } else if cmd == "quit" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    inbox
}

/// Spawns `epistole <args>` against the store; with `wait_for`, waits for
/// the stdout lines starting with it and returns them.
async fn spawn(store: &TestStore, args: &[&str], wait_for: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(args)
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.service_token)
        .env("EPISTOLE_SRS_SECRET", "trace-e2e-srs")
        .env("EPISTOLE_SRS_DOMAIN", "a.test")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = Vec::new();
    for prefix in wait_for {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the service did not report its listener")
                .unwrap()
                .expect("the service exited before listening");
            if line.starts_with(prefix) {
                found.push(line);
                break;
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, found)
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// One SMTP transaction; returns the reply to the final dot.
async fn send(mx: SocketAddr, rcpts: &[&str], message: &str) -> String {
    let s = TcpStream::connect(mx).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed after {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    assert!(reply(&mut r).await.starts_with("220"));
    let mut cmds = vec![
        "EHLO client.orig.test".to_string(),
        "MAIL FROM:<stranger@orig.test>".to_string(),
    ];
    cmds.extend(rcpts.iter().map(|a| format!("RCPT TO:<{a}>")));
    cmds.push("DATA".into());
    for c in cmds {
        w.write_all(format!("{c}\r\n").as_bytes()).await.unwrap();
        let got = reply(&mut r).await;
        assert!(got.starts_with('2') || got.starts_with('3'), "{c}: {got}");
    }
    w.write_all(message.as_bytes()).await.unwrap();
    w.write_all(b".\r\n").await.unwrap();
    let done = reply(&mut r).await;
    w.write_all(b"QUIT\r\n").await.unwrap();
    done
}

async fn all_jobs(store: &TestStore) -> Vec<pb::JobSummary> {
    store
        .client()
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

/// `epistole mailctl trace <key>` with the admin token; its stdout.
async fn trace(store: &TestStore, key: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(["mailctl", "trace", key])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_ADMIN_TOKEN", &store.token)
        .env_remove("EPISTOLE_STORE_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mailctl trace {key} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_shows_every_hop_of_a_message_with_its_facts() {
    let store = TestStore::start().await;
    store.add_domain("a.test").await;
    let alice = store.add_user("alice@a.test", "pw-alice").await;
    for (source, target) in [
        ("fwd@a.test", "bob@remote.test"),
        ("gone@a.test", "nobody@remote.test"),
    ] {
        store
            .client()
            .accounts
            .clone()
            .create_alias(pb::CreateAliasRequest {
                source: source.into(),
                target: target.into(),
            })
            .await
            .unwrap();
    }
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.mx("orig.test", 10, "mx.remote.test");
    dns.a("mx.remote.test", [127, 0, 0, 31].into());
    let inbox = sink(SocketAddr::from(([127, 0, 0, 31], port))).await;
    let dns_server = dns.addr.to_string();
    let port_s = port.to_string();

    let (_smtp_in, lines) = spawn(
        &store,
        &[
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.a.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--dns-server",
            &dns_server,
            "--dns-timeout-ms",
            "2000",
        ],
        &["listening mx="],
    )
    .await;
    let mx: SocketAddr = lines[0]
        .trim_start_matches("listening mx=")
        .parse()
        .unwrap();
    let (_delivery, _) = spawn(
        &store,
        &[
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            "mx.a.test",
        ],
        &[],
    )
    .await;
    let (_smtp_out, _) = spawn(
        &store,
        &[
            "--log",
            "warn",
            "smtp-out",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            "mx.a.test",
            "--worker-id",
            "out-trace",
            "--dns-server",
            &dns_server,
            "--smtp-port",
            &port_s,
            "--retry-schedule",
            "1s",
            "--allow-destination",
            "127.0.0.0/8",
        ],
        &["listening smtp-out-http="],
    )
    .await;

    let message = "From: stranger@orig.test\r\nTo: alice@a.test\r\nSubject: where did it go\r\n\
                   Message-ID: <trace-1@orig.test>\r\n\r\nhello\r\n";
    let done = send(mx, &["alice@a.test", "fwd@a.test", "gone@a.test"], message).await;
    assert!(done.starts_with("250"), "{done}");
    let queue_id = done.trim_end().rsplit(' ').next().unwrap().to_string();
    assert!(queue_id.parse::<u64>().is_ok(), "{done}");

    // bob's copy and the DSN (to the SRS sender, reversed to orig.test)
    // reach the sink; every job ends.
    test_kit::wait_until("two messages at the sink", Duration::from_secs(120), || {
        let n = inbox.lock().unwrap().len();
        async move { n >= 2 }
    })
    .await;
    test_kit::wait_until("every job done", Duration::from_secs(120), || async {
        let jobs = all_jobs(&store).await;
        jobs.len() >= 5 && jobs.iter().all(|j| j.state == pb::JobState::Done as i32)
    })
    .await;
    assert_eq!(
        test_kit::subjects(&store, alice, "INBOX").await,
        vec!["where did it go".to_string()]
    );

    let by_id = trace(&store, "<trace-1@orig.test>").await;
    let t = &by_id;
    // Received by smtp-in, with what it knew.
    assert!(
        t.contains(&format!("job {queue_id} (inbound queue, done)")),
        "{t}"
    );
    assert!(
        t.contains("message-id: <trace-1@orig.test>  from: <stranger@orig.test>"),
        "{t}"
    );
    assert!(
        t.contains(" received    smtp-in: from client.orig.test [127.0.0.1]"),
        "{t}"
    );
    for fact in [
        "      client_ip=127.0.0.1",
        "      helo=client.orig.test",
        "      listener=mx",
        "      tls=none",
        "      auth=none",
        "      by=mx.a.test",
    ] {
        assert!(t.contains(fact), "{fact} missing:\n{t}");
    }
    let results = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth_results="))
        .unwrap_or_else(|| panic!("no auth_results:\n{t}"));
    assert!(
        results.contains("spf=") && results.contains("dkim=") && results.contains("dmarc="),
        "{results}"
    );
    assert!(t.lines().any(|l| l.trim().starts_with("size=")), "{t}");
    // Queued, then delivered into alice's INBOX with its UID.
    assert!(
        t.contains(" queued      mailbox-store: from=<stranger@orig.test> rcpts=3"),
        "{t}"
    );
    assert!(t.contains("<alice@a.test>: mailbox=INBOX uid=1"), "{t}");
    assert!(t.contains("recipient <alice@a.test>: delivered"), "{t}");
    // Relayed copies: smtp-out's attempt with MX, address, TLS and reply.
    assert!(
        t.contains(&format!("relayed from job {queue_id}, to remote.test")),
        "{t}"
    );
    assert!(t.contains("      mx=mx.remote.test"), "{t}");
    assert!(t.contains("      ip=127.0.0.31"), "{t}");
    assert!(t.contains("      tls_version=none"), "{t}");
    assert!(t.contains("      reply=250 2.0.0 queued"), "{t}");
    assert!(t.contains("recipient <bob@remote.test>: delivered"), "{t}");
    // The refusal, and the DSN about it.
    assert!(t.contains("recipient <nobody@remote.test>: failed"), "{t}");
    assert!(t.contains("550 5.1.1 no such user here"), "{t}");
    assert!(t.contains(" bounced "), "{t}");
    assert!(t.contains(", report about job "), "{t}");

    // The queue id from the 250 reply finds the same message.
    let by_queue_id = trace(&store, &queue_id).await;
    assert_eq!(by_queue_id, by_id);
    // So do its sender's and a recipient's addresses (no Message-ID is
    // one of them): the only message from or to them here.
    assert_eq!(trace(&store, "stranger@orig.test").await, by_id);
    assert_eq!(trace(&store, "<Bob@remote.test>").await, by_id);
}
