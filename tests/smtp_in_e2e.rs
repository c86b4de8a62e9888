//! End-to-end tests of smtp-in: the real `epistole smtp-in` binary, a real
//! mailbox-store over PostgreSQL (test_kit), and real clients: Python's
//! smtplib (STARTTLS + AUTH on 587, implicit TLS on 465) and swaks (MX).
//! Every message sent must sit in the inbound queue byte for byte, behind
//! the one Received header smtp-in adds.
//!
//! Needs `python3` and `swaks` (Debian: `apt-get install -y swaks`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::pb;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const DOMAIN: &str = "ours.example";
const ALICE: &str = "alice@ours.example";
const ALICE_PW: &str = "correct horse battery staple";

/// The smtp-in process and the addresses it reported.
struct SmtpIn {
    _child: Child,
    /// The DNS server its SPF, DKIM and DMARC lookups go to.
    dns: test_dns::TestDns,
    mx: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
    http: SocketAddr,
}

/// Starts `epistole smtp-in` on ephemeral loopback ports and reads the
/// `listening name=addr` lines it prints.
async fn start_smtp_in(store_url: &str, token: &str) -> SmtpIn {
    start_smtp_in_with(store_url, token, &[]).await
}

/// The same with more flags; the inbound checks ask a test DNS server.
async fn start_smtp_in_with(store_url: &str, token: &str, extra: &[&str]) -> SmtpIn {
    let dns = test_dns::TestDns::start().await;
    let dns_server = dns.addr.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "127.0.0.1:0",
            "--submissions-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--store-timeout-ms",
            "3000",
            // An outage answers 451 at once here (the retry budget is
            // tests/faults.rs's business).
            "--enqueue-retry-secs",
            "0",
            "--dns-server",
            &dns_server,
            "--dns-timeout-ms",
            "500",
        ])
        .args(extra)
        .env("EPISTOLE_STORE_URL", store_url)
        .env("EPISTOLE_STORE_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn epistole smtp-in");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = std::collections::HashMap::new();
    while found.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("smtp-in did not report its listeners")
            .unwrap()
            .expect("smtp-in exited before listening");
        if let Some((name, addr)) = line
            .strip_prefix("listening ")
            .and_then(|l| l.split_once('='))
        {
            found.insert(name.to_string(), addr.parse::<SocketAddr>().unwrap());
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    SmtpIn {
        _child: child,
        dns,
        mx: found["mx"],
        submission: found["submission"],
        submissions: found["submissions"],
        http: found["http"],
    }
}

async fn store() -> TestStore {
    let store = TestStore::start().await;
    store.add_domain(DOMAIN).await;
    store.add_user(ALICE, ALICE_PW).await;
    store
}

async fn inbound_jobs(store: &TestStore) -> Vec<pb::JobSummary> {
    let mut q = store.client().queue;
    q.list_jobs(pb::ListJobsRequest {
        kind: pb::QueueKind::Inbound.into(),
        state: 0,
        limit: 1000,
        after_id: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .jobs
}

async fn queued_message(store: &TestStore, job_id: u64) -> Vec<u8> {
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
    out
}

/// Checks that `stored` is exactly one Received header (RFC 5321 §4.4),
/// then for MX mail our one Authentication-Results header (RFC 8601),
/// followed by `sent`; returns the Received header and the other, if any.
fn assert_received_then(stored: &[u8], sent: &[u8]) -> (String, Option<String>) {
    assert!(
        stored.len() > sent.len(),
        "stored message shorter than sent"
    );
    let (head, body) = stored.split_at(stored.len() - sent.len());
    assert_eq!(body, sent, "message not stored byte for byte");
    let head = String::from_utf8(head.to_vec()).unwrap();
    assert!(head.ends_with("\r\n"), "{head}");
    let mut fields: Vec<String> = Vec::new();
    for line in head.split_inclusive("\r\n") {
        match fields.last_mut() {
            Some(last) if line.starts_with('\t') => last.push_str(line),
            _ => fields.push(line.to_string()),
        }
    }
    assert!(fields[0].starts_with("Received: from "), "{head}");
    match fields.len() {
        1 => (fields.remove(0), None),
        2 => {
            assert!(
                fields[1].starts_with("Authentication-Results: mx.test;"),
                "{head}"
            );
            let ar = fields.pop();
            (fields.remove(0), ar)
        }
        _ => panic!("unexpected header fields in {head}"),
    }
}

/// Runs a Python snippet with `args`, feeding `stdin`; returns stdout.
async fn python(script: &str, args: &[String], stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("python timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// smtplib: STARTTLS on 587, AUTH only after TLS, then a message with a
/// dot-leading line and 8-bit text to a local and a remote recipient.
const PY_SUBMISSION: &str = r#"
import smtplib, ssl, sys
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.ehlo("laptop.example")
assert not s.has_extn("auth"), "AUTH offered before TLS"
code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHB3")
assert code == 530, code
s.starttls(context=ctx)
s.ehlo("laptop.example")
assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
try:
    s.login(user, "wrong password")
    raise SystemExit("login with a wrong password succeeded")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login(user, pw)
msg = sys.stdin.buffer.read()
code, _ = s.mail(user, ["BODY=8BITMIME"])
assert code == 250, code
for rcpt in [user, "friend@external.example"]:
    code, resp = s.rcpt(rcpt)
    assert code == 250, (rcpt, code, resp)
code, resp = s.data(msg)
assert code == 250, (code, resp)
print(resp.decode())
s.quit()
"#;

/// smtplib over implicit TLS (465).
const PY_SUBMISSIONS: &str = r#"
import smtplib, ssl, sys
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
s.ehlo("laptop.example")
assert not s.has_extn("starttls")
s.login(user, pw)
msg = sys.stdin.buffer.read()
s.mail(user)
code, resp = s.rcpt(user)
assert code == 250, (code, resp)
code, resp = s.data(msg)
assert code == 250, (code, resp)
print(resp.decode())
s.quit()
"#;

fn job_id_from(resp: &str) -> u64 {
    let line = resp
        .lines()
        .find(|l| l.contains("queued as"))
        .unwrap_or_else(|| panic!("no queue id in {resp}"));
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_starttls_auth_and_implicit_tls() {
    let store = store().await;
    let smtp = start_smtp_in(&store.grpc_url, &store.token).await;

    let msg = "From: Alice <alice@ours.example>\r\nTo: friend@external.example\r\nSubject: e2e\r\n\r\nGr\u{fc}\u{df}e\r\n.a line that starts with a dot\r\n..two dots\r\nend\r\n".as_bytes();
    let out = python(
        PY_SUBMISSION,
        &[
            smtp.submission.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
        ],
        msg,
    )
    .await;
    let id = job_id_from(&out);
    let stored = queued_message(&store, id).await;
    let (received, ar) = assert_received_then(&stored, msg);
    assert_eq!(ar, None, "submissions are not checked as inbound mail");
    assert!(
        received.contains("from laptop.example ([127.0.0.1])"),
        "{received}"
    );
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(received.contains("version=TLSv1_3"), "{received}");

    let mut q = store.client().queue;
    let job = q
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.mail_from, ALICE);
    assert_eq!(job.authenticated_user, ALICE);
    assert_eq!(job.body_type, "8BITMIME");
    let rcpts: Vec<String> = job
        .recipients
        .iter()
        .map(|r| r.recipient.clone().unwrap().address)
        .collect();
    assert_eq!(rcpts, [ALICE, "friend@external.example"]);
    assert!(
        received.contains(&format!("id {}.", job.session_id)),
        "{received}"
    );

    let msg2 = b"Subject: implicit tls\r\n\r\nhello over 465\r\n";
    let out = python(
        PY_SUBMISSIONS,
        &[
            smtp.submissions.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
        ],
        msg2,
    )
    .await;
    let id2 = job_id_from(&out);
    let (received, _) = assert_received_then(&queued_message(&store, id2).await, msg2);
    assert!(received.contains("for <alice@ours.example>"), "{received}");
    assert_eq!(inbound_jobs(&store).await.len(), 2);

    // The metrics endpoint counts them.
    let metrics = http_get(smtp.http, "/metrics").await;
    assert!(
        metrics.contains("smtp_in_messages_accepted_total"),
        "{metrics}"
    );
}

/// swaks on the MX port: STARTTLS, a local recipient; a relay attempt is
/// refused and leaves nothing in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_mx_delivery_and_relay_refusal() {
    if std::process::Command::new("swaks")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("swaks is required: apt-get install -y swaks");
    }
    let store = store().await;
    let smtp = start_smtp_in(&store.grpc_url, &store.token).await;
    smtp.dns.txt("remote.example", "v=spf1 ip4:127.0.0.1 -all");
    let dir = tempdir();
    let body = b"From: sender@remote.example\r\nTo: alice@ours.example\r\nSubject: swaks\r\nMessage-ID: <e2e-1@remote.example>\r\n\r\nHello from swaks.\r\n.leading dot\r\n";
    let path = dir.join("msg.eml");
    // swaks ends the data with "\r\n.\r\n" after the file's content, so
    // the file goes without its last CRLF.
    std::fs::write(&path, &body[..body.len() - 2]).unwrap();
    let server = smtp.mx.to_string();
    let out = Command::new("swaks")
        .args([
            "--server",
            &server,
            "--helo",
            "remote.example",
            "--from",
            "sender@remote.example",
        ])
        .args(["--to", "alice@ours.example", "--tls", "--data"])
        .arg(format!("@{}", path.display()))
        .output()
        .await
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = job_id_from(&text);
    let (received, ar) = assert_received_then(&queued_message(&store, id).await, body);
    assert!(
        received.contains("from remote.example ([127.0.0.1])"),
        "{received}"
    );
    let ar = ar.expect("MX mail has Authentication-Results");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("smtp.mailfrom=sender@remote.example"), "{ar}");
    assert!(received.contains("with ESMTPS"), "{received}");

    // Open-relay attempt: refused at RCPT.
    let out = Command::new("swaks")
        .args([
            "--server",
            &server,
            "--from",
            "spammer@remote.example",
            "--to",
            "victim@external.example",
        ])
        .output()
        .await
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "relay accepted: {text}");
    assert!(text.contains("554 5.7.1"), "{text}");
    assert_eq!(inbound_jobs(&store).await.len(), 1);
}

/// Durability with the real binary: the store dies after RCPT → 451 4.3.0,
/// nothing half-written; after a restart the resend is queued exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_gives_451_then_exactly_once() {
    let mut store = store().await;
    // test_kit's stop() leaves tonic's open connections being served; the
    // forwarder cuts them as a crash would.
    let fwd = Forwarder::start(store.grpc_addr).await;
    let smtp = start_smtp_in(&fwd.url, &store.token).await;
    let mut c = RawClient::connect(smtp.mx).await;
    c.expect("", "220").await;
    c.expect("EHLO client.example\r\n", "250 ").await;
    c.expect("MAIL FROM:<x@remote.example>\r\n", "250").await;
    c.expect("RCPT TO:<alice@ours.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send(b"Subject: outage\r\n\r\nfirst half\r\n").await;
    store.stop().await;
    fwd.cut();
    c.expect("second half\r\n.\r\n", "451 4.3.0").await;
    store.restart().await;
    assert!(
        inbound_jobs(&store).await.is_empty(),
        "a refused message was stored"
    );

    let body = b"Subject: outage\r\n\r\nfirst half\r\nsecond half\r\n";
    c.expect("MAIL FROM:<x@remote.example>\r\n", "250").await;
    c.expect("RCPT TO:<alice@ours.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send(body).await;
    let r = c.expect(".\r\n", "250 2.0.0 Ok: queued as").await;
    c.expect("QUIT\r\n", "221").await;
    let id = job_id_from(&r);
    let jobs = inbound_jobs(&store).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].id, id);
    assert_received_then(&queued_message(&store, id).await, body);
}

/// threat model T100, T102: the real binary's flags — `--dns-server`
/// reaches the sender's DMARC p=reject, and a forged `From:` is refused
/// 550 5.7.1 (the default `--dmarc-reject-action enforce`);
/// `--max-received 3` refuses a fourth Received with 554 5.4.6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_forged_dmarc_reject_from_and_loops() {
    let store = store().await;
    let smtp = start_smtp_in_with(&store.grpc_url, &store.token, &["--max-received", "3"]).await;
    smtp.dns.txt("bank.example", "v=spf1 ip4:203.0.113.5 -all");
    smtp.dns.txt("_dmarc.bank.example", "v=DMARC1; p=reject");
    let mut c = RawClient::connect(smtp.mx).await;
    c.expect("", "220").await;
    c.expect("EHLO client.example\r\n", "250 ").await;
    let r = send_raw(
        &mut c,
        "From: ceo@bank.example\r\nSubject: pay\r\n\r\nnow\r\n",
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let hops = "Received: from a by b; Thu, 26 Nov 2026 11:00:00 +0000\r\n".repeat(4);
    let r = send_raw(&mut c, &format!("{hops}Subject: loop\r\n\r\nx\r\n")).await;
    assert!(r.starts_with("554 5.4.6"), "{r}");
    let hops = "Received: from a by b; Thu, 26 Nov 2026 11:00:00 +0000\r\n".repeat(3);
    let r = send_raw(&mut c, &format!("{hops}Subject: three\r\n\r\nx\r\n")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(inbound_jobs(&store).await.len(), 1);
}

/// One transaction to alice on an open MX session; the final reply.
async fn send_raw(c: &mut RawClient, body: &str) -> String {
    c.expect("MAIL FROM:<x@remote.example>\r\n", "250").await;
    c.expect("RCPT TO:<alice@ours.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send(body.as_bytes()).await;
    c.expect(".\r\n", "").await
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "smtp-in-e2e-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A line-level SMTP client for the durability test (it must pause
/// mid-DATA while the store is stopped, which scripted clients cannot).
struct RawClient {
    r: BufReader<TcpStream>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            r: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    /// Sends `line` (may be empty) and reads one full reply; its last line
    /// must start with `prefix`.
    async fn expect(&mut self, line: &str, prefix: &str) -> String {
        self.send(line.as_bytes()).await;
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut l))
                .await
                .expect("reply timeout")
                .unwrap();
            assert!(n > 0, "connection closed; so far {reply:?}");
            reply.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                assert!(
                    l.starts_with(prefix),
                    "{line:?}: expected {prefix:?}, got {reply:?}"
                );
                return reply;
            }
        }
    }
}

/// A TCP forwarder in front of the store whose open connections a test can
/// cut (see the durability test).
struct Forwarder {
    url: String,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { url, conns, accept }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
