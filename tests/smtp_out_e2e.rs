//! smtp-out end to end: the real `epistole delivery` and `epistole smtp-out`
//! processes, a real store over PostgreSQL (test_kit), the test DNS server
//! (test-dns) and a small SMTP sink standing in for the remote MX.
//!
//! - A message from a local user to two remote recipients goes inbound →
//!   delivery (relay) → outbound → smtp-out → MX lookup → the remote; the
//!   refused recipient's DSN comes back into the sender's INBOX.
//! - Forwarding by an alias: SRS sender out, the bounce back to the original
//!   sender; across two installations, the forwarded message still passes
//!   SPF, DKIM and DMARC at the second.
//! - smtp-out killed (SIGKILL) while the remote holds the final reply, then
//!   restarted: the message is delivered — at most one duplicate, never lost.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailstore_api::pb;
use test_dns::TestDns;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// What the sink received: (connection number, recipients, wire data).
type Inbox = Arc<Mutex<Vec<(usize, Vec<String>, Vec<u8>)>>>;

/// A remote MX: refuses recipients starting with "nobody", and on the
/// connections listed in `stall` never answers the final dot.
async fn sink(addr: SocketAddr, stall: &'static [usize]) -> (SocketAddr, Inbox) {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let inbox: Inbox = Arc::default();
    let ib = inbox.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((s, _)) = l.accept().await {
            let conn = n;
            n += 1;
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
                        b"250-mx.remote.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
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
                        ib.lock()
                            .unwrap()
                            .push((conn, std::mem::take(&mut rcpts), wire));
                        if stall.contains(&conn) {
                            // Hold the reply until the client goes away.
                            let _ = r.read_until(b'\n', &mut line).await;
                            return;
                        }
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
    (addr, inbox)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn delivery(store: &TestStore) -> Proc {
    delivery_for(store, "a.test").await
}

/// `epistole delivery` for the installation of `domain` (host `mx.<domain>`,
/// SRS addresses at `domain` with the secret of [`srs_secret`]).
async fn delivery_for(store: &TestStore, domain: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            &format!("mx.{domain}"),
        ])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        // SRS for forwarded mail (only the forwarding tests forward).
        .env("EPISTOLE_SRS_SECRET", srs_secret(domain))
        .env("EPISTOLE_SRS_DOMAIN", domain)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Each test installation's SRS secret (A keeps the historical one).
fn srs_secret(domain: &str) -> String {
    if domain == "a.test" {
        "e2e-srs-secret".into()
    } else {
        format!("e2e-srs-secret-{domain}")
    }
}

/// Starts `epistole smtp-out` and waits for its `listening` line.
async fn smtp_out(store: &TestStore, dns: SocketAddr, port: u16, worker: &str) -> Proc {
    smtp_out_for(store, dns, port, worker, "a.test").await
}

/// `epistole smtp-out` for the installation of `domain` (host `mx.<domain>`).
async fn smtp_out_for(
    store: &TestStore,
    dns: SocketAddr,
    port: u16,
    worker: &str,
    domain: &str,
) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "smtp-out",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            &format!("mx.{domain}"),
            "--worker-id",
            worker,
            "--dns-server",
            &dns.to_string(),
            "--smtp-port",
            &port.to_string(),
            "--retry-schedule",
            "1s",
            "--lease-ms",
            "2000",
            "--command-timeout",
            "5s",
            "--data-timeout",
            "30s",
            // The test MX servers are on loopback (refused by default).
            "--allow-destination",
            "127.0.0.0/8",
        ])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("smtp-out did not report its listener")
        .unwrap()
        .expect("smtp-out exited before listening");
    assert!(line.starts_with("listening smtp-out-http="), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc(child)
}

async fn outbound_jobs(store: &TestStore) -> Vec<pb::JobSummary> {
    store
        .client()
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest {
            kind: pb::QueueKind::Outbound as i32,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_through_mx_lookup_and_refusal_bounces_to_the_senders_inbox() {
    let store = TestStore::start().await;
    store.add_domain("a.test").await;
    let alice = store.add_user("alice@a.test", "pw-alice").await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.a("mx.remote.test", [127, 0, 0, 21].into());
    let (_, inbox) = sink(SocketAddr::from(([127, 0, 0, 21], port)), &[]).await;
    let raw = b"From: alice@a.test\r\nTo: bob@remote.test\r\nSubject: lunch\r\nMessage-ID: <lunch@a.test>\r\n\r\nsee you\n.\r\nat noon\r\n";
    test_kit::enqueue(
        &store.client(),
        "e2e-1",
        "alice@a.test",
        &["bob@remote.test", "nobody@remote.test"],
        raw,
    )
    .await
    .unwrap();
    let _d = delivery(&store).await;
    let _o = smtp_out(&store, dns.addr, port, "out-1").await;
    test_kit::wait_until(
        "the remote MX to get the message",
        Duration::from_secs(60),
        || {
            let n = inbox.lock().unwrap().len();
            async move { n >= 1 }
        },
    )
    .await;
    test_kit::wait_until(
        "the DSN in alice's INBOX",
        Duration::from_secs(60),
        || async {
            test_kit::subjects(&store, alice, "INBOX")
                .await
                .iter()
                .any(|s| s.contains("Undelivered"))
        },
    )
    .await;
    let got = inbox.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec!["bob@remote.test".to_string()]);
    let wire = String::from_utf8_lossy(&got[0].2);
    assert!(wire.contains("see you\r\n..\r\nat noon\r\n.\r\n"), "{wire}");
    // Both outbound jobs are finished, with the results recorded.
    test_kit::wait_until("outbound jobs done", Duration::from_secs(30), || async {
        let jobs = outbound_jobs(&store).await;
        jobs.len() == 2 && jobs.iter().all(|j| j.state == pb::JobState::Done as i32)
    })
    .await;
    assert_eq!(
        test_kit::subjects(&store, alice, "INBOX")
            .await
            .iter()
            .filter(|s| s.contains("Undelivered"))
            .count(),
        1,
        "exactly one DSN"
    );
}

/// Threat model T106: mail from outside forwarded by an alias to a remote
/// address leaves with an SRS sender at our domain; the remote refuses it,
/// smtp-out's DSN goes to the SRS address, delivery reverses it and the
/// bounce reaches the original sender's MX — real delivery and smtp-out
/// processes, scripted loopback MXes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_with_srs_and_the_bounce_reaches_the_original_sender() {
    let store = TestStore::start().await;
    store.add_domain("a.test").await;
    store
        .client()
        .accounts
        .clone()
        .create_alias(pb::CreateAliasRequest {
            source: "fwd@a.test".into(),
            target: "nobody@remote.test".into(),
        })
        .await
        .unwrap();
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.a("mx.remote.test", [127, 0, 0, 23].into());
    dns.mx("orig.test", 10, "mx.orig.test");
    dns.a("mx.orig.test", [127, 0, 0, 24].into());
    let (_, remote) = sink(SocketAddr::from(([127, 0, 0, 23], port)), &[]).await;
    let (_, orig) = sink(SocketAddr::from(([127, 0, 0, 24], port)), &[]).await;
    test_kit::enqueue(
        &store.client(),
        "srs-e2e",
        "stranger@orig.test",
        &["fwd@a.test"],
        b"From: stranger@orig.test\r\nSubject: via alias\r\n\r\nhello\r\n",
    )
    .await
    .unwrap();
    let _d = delivery(&store).await;
    let _o = smtp_out(&store, dns.addr, port, "out-srs").await;
    test_kit::wait_until(
        "the bounce at the original sender's MX",
        Duration::from_secs(60),
        || {
            let n = orig.lock().unwrap().len();
            async move { n >= 1 }
        },
    )
    .await;
    let jobs = outbound_jobs(&store).await;
    let forwarded: Vec<_> = jobs
        .iter()
        .filter(|j| j.mail_from.starts_with("SRS0="))
        .collect();
    assert_eq!(forwarded.len(), 1, "{jobs:?}");
    assert!(
        forwarded[0]
            .mail_from
            .ends_with("=orig.test=stranger@a.test"),
        "{}",
        forwarded[0].mail_from
    );
    assert!(remote.lock().unwrap().is_empty(), "the remote refused it");
    let got = orig.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec!["stranger@orig.test".to_string()]);
    let wire = String::from_utf8_lossy(&got[0].2).into_owned();
    assert!(wire.contains("nobody@remote.test"), "{wire}");
    assert!(wire.contains("multipart/report"), "{wire}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_transfer_then_restarted_delivers_without_loss() {
    let store = TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.a("mx.remote.test", [127, 0, 0, 22].into());
    // The first connection never gets its final reply.
    let (_, inbox) = sink(SocketAddr::from(([127, 0, 0, 22], port)), &[0]).await;
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: "kill-1".into(),
        mail_from: "alice@a.test".into(),
        recipients: vec![pb::Recipient {
            address: "bob@remote.test".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let raw = b"Subject: survive\r\n\r\nbody\r\n".to_vec();
    let job_id = store
        .client()
        .queue
        .clone()
        .enqueue(futures::stream::iter(vec![
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Header(pb::EnqueueHeader {
                    size: raw.len() as u64,
                    ..header
                })),
            },
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Data(raw)),
            },
        ]))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut first = smtp_out(&store, dns.addr, port, "out-killed").await;
    test_kit::wait_until("the first transfer", Duration::from_secs(60), || {
        let n = inbox.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    // SIGKILL while the remote holds the reply to the final dot.
    first.0.kill().await.unwrap();
    let _second = smtp_out(&store, dns.addr, port, "out-restarted").await;
    test_kit::wait_until(
        "delivery after restart",
        Duration::from_secs(60),
        || async {
            let d = store
                .client()
                .queue
                .clone()
                .get_job(pb::GetJobRequest { job_id })
                .await
                .unwrap()
                .into_inner();
            d.summary.unwrap().state == pb::JobState::Done as i32
        },
    )
    .await;
    let got = inbox.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one unacknowledged copy plus the delivery");
    assert!(
        got.iter()
            .all(|(_, r, _)| r == &vec!["bob@remote.test".to_string()])
    );
    let d = store
        .client()
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    let r = &d.job.unwrap().recipients[0];
    assert_eq!(r.state, pb::RecipientState::Delivered as i32);
}

/// A private Postfix instance (Debian package `postfix`) run by hand on its
/// own loopback address: it relays `relay_domain` to `next_hop`. `None`
/// (test skipped, loudly) when Postfix is not installed.
struct Postfix {
    dir: std::path::PathBuf,
}

impl Postfix {
    fn start(listen: SocketAddr, relay_domain: &str, next_hop: SocketAddr) -> Option<Self> {
        if !std::path::Path::new("/usr/sbin/postfix").exists() {
            eprintln!("SKIPPED: Postfix interop needs `apt-get install -y postfix`");
            return None;
        }
        let dir = std::path::PathBuf::from(format!(
            "/tmp/epfx-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        let d = dir.display();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let snakeoil = std::path::Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem").exists();
        let tls = if snakeoil {
            "smtpd_tls_cert_file = /etc/ssl/certs/ssl-cert-snakeoil.pem\n\
             smtpd_tls_key_file = /etc/ssl/private/ssl-cert-snakeoil.key\n\
             smtpd_tls_security_level = may\n"
        } else {
            ""
        };
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/spool\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.postfix.test\n\
             mydomain = postfix.test\n\
             myorigin = postfix.test\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relay_domains = {relay_domain}\n\
             transport_maps = inline:{{ {relay_domain}=smtp:[{}]:{} }}\n\
             smtp_dns_support_level = disabled\n\
             smtp_tls_security_level = may\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = /tmp\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             smtputf8_enable = no\n\
             {tls}",
            next_hop.ip(),
            next_hop.port()
        );
        std::fs::write(dir.join("etc/main.cf"), main_cf).unwrap();
        // Debian's master.cf with our listener and no chroot.
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let mut out = String::new();
        for line in master.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let mut f: Vec<String> = line.split_whitespace().map(String::from).collect();
            if f.len() >= 8 {
                if f[0] == "smtp" && f[1] == "inet" {
                    f[0] = listen.to_string();
                }
                f[4] = "n".into();
            }
            out.push_str(&f.join(" "));
            out.push('\n');
        }
        std::fs::write(dir.join("etc/master.cf"), out).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postfix"])
            .arg(dir.join("data"))
            .status();
        let st = std::process::Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(dir.join("etc"))
            .arg("start")
            .status()
            .unwrap();
        assert!(
            st.success(),
            "postfix start failed: {}",
            std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
        );
        Some(Self { dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

/// Starts `epistole smtp-in` (MX only is used) and returns its MX address.
async fn smtp_in(store: &TestStore) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.b.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "127.0.0.1:0",
            "--submissions-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
        ])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut mx = None;
    while mx.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("smtp-in did not report its listeners")
            .unwrap()
            .expect("smtp-in exited before listening");
        if let Some(a) = line.strip_prefix("listening mx=") {
            mx = Some(a.trim().parse::<SocketAddr>().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Proc(child), mx.unwrap())
}

/// smtp-out → Postfix (MX of b.test, STARTTLS with its snakeoil
/// certificate) → our smtp-in → delivery → bob's INBOX. The body survives
/// two dot-stuffing round trips unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_receives_from_smtp_out_and_relays_into_smtp_in() {
    let store = TestStore::start().await;
    store.add_domain("b.test").await;
    let bob = store.add_user("bob@b.test", "pw-bob").await;
    let (_in, mx_in) = smtp_in(&store).await;
    let port = free_port().await;
    let listen = SocketAddr::from(([127, 0, 0, 40], port));
    let Some(postfix) = Postfix::start(listen, "b.test", mx_in) else {
        return;
    };
    let dns = TestDns::start().await;
    dns.mx("b.test", 10, "mx.postfix.test");
    dns.a("mx.postfix.test", [127, 0, 0, 40].into());
    let raw = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: via postfix\r\nMessage-ID: <pf@a.test>\r\n\r\nline one\n.\r\n.. two dots\r\nend\r\n".to_vec();
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: "postfix-1".into(),
        mail_from: "alice@a.test".into(),
        recipients: vec![pb::Recipient {
            address: "bob@b.test".into(),
            ..Default::default()
        }],
        size: raw.len() as u64,
        ..Default::default()
    };
    let job_id = store
        .client()
        .queue
        .clone()
        .enqueue(futures::stream::iter(vec![
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Header(header)),
            },
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Data(raw)),
            },
        ]))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let _o = smtp_out(&store, dns.addr, port, "out-postfix").await;
    let _d = delivery(&store).await;
    let limit = Duration::from_secs(90);
    let start = Instant::now();
    while !test_kit::subjects(&store, bob, "INBOX")
        .await
        .iter()
        .any(|s| s == "via postfix")
    {
        assert!(
            start.elapsed() < limit,
            "not delivered through Postfix; its log:\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = store
        .client()
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    let attempt = d
        .events
        .iter()
        .find(|e| e.kind == pb::EventKind::Attempt as i32)
        .expect("attempt event");
    assert_eq!(attempt.attributes["mx"], "mx.postfix.test");
    assert!(
        attempt.attributes["reply"].starts_with("250"),
        "{attempt:?}"
    );
    if std::path::Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem").exists() {
        assert!(
            attempt.attributes["tls_version"].starts_with("TLS"),
            "{attempt:?}"
        );
    }
    // The message as it reached our smtp-in, through Postfix.
    let inbound = store
        .client()
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest {
            kind: pb::QueueKind::Inbound as i32,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(inbound.len(), 1);
    let body = test_kit::collect_body(
        store
            .client()
            .queue
            .clone()
            .read_message(pb::ReadMessageRequest {
                job_id: inbound[0].id,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("mx.postfix.test"),
        "Received by Postfix: {text}"
    );
    assert!(
        text.contains("\r\n\r\nline one\r\n.\r\n.. two dots\r\nend\r\n"),
        "body unchanged: {text:?}"
    );
}

/// Starts `epistole smtp-in` with every listener on `ip` (MX on `mx_port`)
/// and returns the addresses it reported.
async fn smtp_in_on(
    store: &TestStore,
    hostname: &str,
    ip: [u8; 4],
    mx_port: u16,
    extra: &[&str],
) -> (Proc, std::collections::HashMap<String, SocketAddr>) {
    let ip = std::net::Ipv4Addr::from(ip);
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(["--log", "warn", "smtp-in", "--hostname", hostname])
        .args(extra)
        .arg("--mx-listen")
        .arg(format!("{ip}:{mx_port}"))
        .arg("--submission-listen")
        .arg(format!("{ip}:0"))
        .arg("--submissions-listen")
        .arg(format!("{ip}:0"))
        .args(["--http-listen", "127.0.0.1:0", "--tls-self-signed"])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
            found.insert(name.to_string(), addr.trim().parse::<SocketAddr>().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Proc(child), found)
}

/// `epistole imap` on `ip`, plaintext LOGIN allowed (loopback test).
async fn imap_on(store: &TestStore, ip: [u8; 4]) -> (Proc, SocketAddr) {
    let ip = std::net::Ipv4Addr::from(ip);
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(["--log", "warn", "imap"])
        .arg("--listen")
        .arg(format!("{ip}:0"))
        .arg("--listen-tls")
        .arg(format!("{ip}:0"))
        .args(["--tls-self-signed", "--allow-plaintext-auth"])
        .args([
            "--store-url",
            &store.grpc_url,
            "--store-token",
            &store.token,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut imap = None;
    while imap.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("imap did not report its listeners")
            .unwrap()
            .expect("imap exited before listening");
        if let Some(a) = line.strip_prefix("listening imap=") {
            imap = Some(a.trim().parse::<SocketAddr>().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Proc(child), imap.unwrap())
}

async fn python(script: &str, args: &[String]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("python timed out")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

const PY_SUBMIT: &str = r#"
import smtplib, ssl, sys
host, port, user, pw, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("laptop.a.test")
s.starttls(context=ctx)
s.ehlo("laptop.a.test")
s.login(user, pw)
msg = ("From: Alice <%s>\r\nTo: <%s>\r\nSubject: across installations\r\n"
       "Message-ID: <two-installs@a.test>\r\nMIME-Version: 1.0\r\n"
       "Content-Type: text/plain; charset=utf-8\r\n\r\n"
       "Hello Bob,\r\n.a line with a leading dot\r\nbye\r\n") % (user, rcpt)
s.sendmail(user, [rcpt], msg.encode())
s.quit()
print("SENT")
"#;

const PY_IMAP_FETCH: &str = r#"
import imaplib, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
M = imaplib.IMAP4(host, port)
typ, _ = M.login(user, pw)
assert typ == 'OK'
typ, data = M.select('INBOX')
assert typ == 'OK' and int(data[0]) >= 1, data
typ, data = M.fetch('1', '(RFC822)')
assert typ == 'OK', data
print(data[0][1].hex())
M.logout()
"#;

/// The issue's acceptance test: installations A (a.test) and B (b.test),
/// each with its own store, smtp-in on its own loopback address and
/// delivery; A's smtp-out finds B through the test DNS (MX → A record),
/// signs with A's DKIM key; bob reads the message over B's IMAP and its
/// DKIM signature verifies against the TXT record in DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_relay_by_mx_with_dkim_read_over_imap() {
    let a = TestStore::start().await;
    a.add_domain("a.test").await;
    a.add_user("alice@a.test", "pw-alice").await;
    let b = TestStore::start().await;
    b.add_domain("b.test").await;
    let bob = b.add_user("bob@b.test", "pw-bob").await;
    let port = free_port().await;
    let dns = TestDns::start().await;
    dns.mx("a.test", 10, "mx.a.test");
    dns.a("mx.a.test", [127, 0, 0, 2].into());
    dns.mx("b.test", 10, "mx.b.test");
    dns.a("mx.b.test", [127, 0, 0, 3].into());
    // The signing key lives in A's store: generated with mailctl, whose
    // printed record is what the operator publishes.
    let txt = mailctl_dkim_generate(&a, "a.test", "sel1").await;
    dns.txt("sel1._domainkey.a.test", &txt);
    // A's sending policy, which B checks (smtp-out leaves from loopback).
    dns.txt("a.test", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.txt("_dmarc.a.test", "v=DMARC1; p=reject");

    let dns_arg = dns.addr.to_string();
    let (_in_a, listeners_a) = smtp_in_on(&a, "mx.a.test", [127, 0, 0, 2], port, &[]).await;
    let (_in_b, _) = smtp_in_on(
        &b,
        "mx.b.test",
        [127, 0, 0, 3],
        port,
        &["--dns-server", dns_arg.as_str()],
    )
    .await;
    let _da = delivery(&a).await;
    let _db = delivery(&b).await;
    let mut out = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(["--log", "warn", "smtp-out", "--http-listen", "127.0.0.1:0"])
        .args([
            "--hostname",
            "mx.a.test",
            "--dns-server",
            &dns.addr.to_string(),
        ])
        .args(["--smtp-port", &port.to_string(), "--retry-schedule", "1s"])
        .args(["--allow-destination", "127.0.0.0/8"])
        .env("EPISTOLE_STORE_URL", &a.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &a.token)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (_imap_b, imap_addr) = imap_on(&b, [127, 0, 0, 3]).await;

    let submission = listeners_a["submission"];
    let sent = python(
        PY_SUBMIT,
        &[
            submission.ip().to_string(),
            submission.port().to_string(),
            "alice@a.test".into(),
            "pw-alice".into(),
            "bob@b.test".into(),
        ],
    )
    .await;
    assert!(sent.contains("SENT"));
    test_kit::wait_until(
        "the message in bob's INBOX on B",
        Duration::from_secs(90),
        || async {
            test_kit::subjects(&b, bob, "INBOX")
                .await
                .iter()
                .any(|s| s == "across installations")
        },
    )
    .await;
    let fetched = python(
        PY_IMAP_FETCH,
        &[
            imap_addr.ip().to_string(),
            imap_addr.port().to_string(),
            "bob@b.test".into(),
            "pw-bob".into(),
        ],
    )
    .await;
    let raw = unhex(fetched.trim());
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.contains("\r\n.a line with a leading dot\r\n"),
        "{text}"
    );
    assert!(
        text.contains("DKIM-Signature: v=1; a=rsa-sha256; s=sel1; d=a.test"),
        "{text}"
    );
    // B's own verdict (issue #14): SPF, DKIM and DMARC pass.
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let at_b: Vec<String> = parsed
        .header_values("Authentication-Results")
        .filter_map(|v| v.as_text().map(str::to_string))
        .filter(|r| r.trim_start().starts_with("mx.b.test"))
        .collect();
    assert_eq!(at_b.len(), 1, "{text}");
    for want in ["spf=pass", "dkim=pass", "dmarc=pass"] {
        assert!(at_b[0].contains(want), "{want} at B: {}", at_b[0]);
    }
    // The same check of the signature by another verifier.
    let mut ns = hickory_resolver::config::NameServerConfig::udp_and_tcp(dns.addr.ip());
    for c in &mut ns.connections {
        c.port = dns.addr.port();
    }
    let auth = mail_auth::MessageAuthenticator::new(
        hickory_resolver::config::ResolverConfig::from_name_servers(vec![ns]),
        hickory_resolver::config::ResolverOpts::default(),
    )
    .unwrap();
    let parsed = mail_auth::AuthenticatedMessage::parse(&raw).unwrap();
    let results = auth.verify_dkim(&parsed).await;
    assert!(
        results
            .iter()
            .any(|r| r.result() == &mail_auth::DkimResult::Pass),
        "DKIM must verify on B: {:?}\n{text}",
        results.iter().map(|r| r.result()).collect::<Vec<_>>()
    );
    let _ = out.start_kill();
}

/// `mailctl dkim generate DOMAIN --selector SELECTOR` against `store`; the
/// TXT record value it prints for the operator to publish.
async fn mailctl_dkim_generate(store: &TestStore, domain: &str, selector: &str) -> String {
    let generated = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "mailctl",
            "dkim",
            "generate",
            domain,
            "--selector",
            selector,
        ])
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&generated.stdout).into_owned();
    assert!(
        generated.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let prefix = format!("{selector}._domainkey.{domain}. IN TXT ( ");
    let record = printed
        .lines()
        .find(|l| l.starts_with(&prefix))
        .expect("the TXT record to publish");
    let txt: String = record
        .trim_start_matches(&prefix)
        .trim_end_matches(" )")
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, part)| part)
        .collect();
    assert!(txt.starts_with("v=DKIM1; k=rsa; p="), "{txt}");
    txt
}

/// One SMTP transaction from `source` to `mx`, waiting for each reply;
/// returns the last reply (to the final dot).
async fn smtp_send(source: &str, mx: SocketAddr, from: &str, to: &str, data: &[u8]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(mx).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut l))
                .await
                .expect("reply in time")
                .unwrap();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
    let greeting = reply(&mut r).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    for cmd in [
        "EHLO mail.orig.test\r\n".to_string(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{to}>\r\n"),
        "DATA\r\n".to_string(),
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let got = reply(&mut r).await;
        assert!(
            got.starts_with('2') || got.starts_with("354"),
            "{cmd}: {got}"
        );
    }
    w.write_all(data).await.unwrap();
    w.write_all(b".\r\n").await.unwrap();
    let done = reply(&mut r).await;
    let _ = w.write_all(b"QUIT\r\n").await;
    done
}

/// Issue #14's acceptance: a message DKIM-signed by its sender's domain
/// (orig.test, `p=reject`) reaches an alias at installation A, which
/// forwards it to a user at installation B. A rewrites the envelope sender
/// with SRS (so SPF at B is checked against a.test, which authorises A)
/// and leaves the message unsigned by us and unchanged (so the original
/// signature still verifies), with an ARC set sealed by a.test's key on
/// top (RFC 8617): B's `Authentication-Results` says spf=pass, dkim=pass,
/// dmarc=pass and arc=pass, and the message is delivered, not refused or
/// quarantined. Real smtp-in × 2, delivery × 2, smtp-out, IMAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_by_a_still_passes_dmarc_at_b() {
    let a = TestStore::start().await;
    a.add_domain("a.test").await;
    a.client()
        .accounts
        .clone()
        .create_alias(pb::CreateAliasRequest {
            source: "fwd@a.test".into(),
            target: "dave@b.test".into(),
        })
        .await
        .unwrap();
    let b = TestStore::start().await;
    b.add_domain("b.test").await;
    let dave = b.add_user("dave@b.test", "pw-dave").await;
    let port = free_port().await;
    let dns = TestDns::start().await;
    dns.mx("a.test", 10, "mx.a.test");
    dns.a("mx.a.test", [127, 0, 0, 2].into());
    dns.mx("b.test", 10, "mx.b.test");
    dns.a("mx.b.test", [127, 0, 0, 3].into());
    // The original sender: SPF for its own server, a DKIM key, p=reject.
    dns.txt("orig.test", "v=spf1 ip4:127.0.0.4 -all");
    dns.txt("_dmarc.orig.test", "v=DMARC1; p=reject");
    // A's relays leave from loopback addresses.
    dns.txt("a.test", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.txt("_dmarc.a.test", "v=DMARC1; p=reject");
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/smtp-out/tests/fixtures/dkim-rsa-test.pem"
    ))
    .unwrap();
    let key = smtp_out::dkim::key_from_pem(&pem).unwrap();
    let txt = smtp_out::dkim::txt_record(&key);
    dns.txt("s1._domainkey.orig.test", &txt);
    let mut signer = smtp_out::dkim::Signer::default();
    signer.add("orig.test", "s1", key, false);
    let original = b"From: Stranger <stranger@orig.test>\r\nTo: <fwd@a.test>\r\n\
        Subject: forwarded and still aligned\r\nMessage-ID: <fwd-dmarc@orig.test>\r\n\
        Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\nHello through the alias.\r\n";
    let signed = signer.sign(original, "stranger@orig.test").unwrap();
    // A's key, which seals what A forwards.
    let txt = mailctl_dkim_generate(&a, "a.test", "arc1").await;
    dns.txt("arc1._domainkey.a.test", &txt);

    let dns_arg = dns.addr.to_string();
    let checks = ["--dns-server", dns_arg.as_str()];
    let (_in_a, listeners_a) = smtp_in_on(&a, "mx.a.test", [127, 0, 0, 2], port, &checks).await;
    let (_in_b, _) = smtp_in_on(&b, "mx.b.test", [127, 0, 0, 3], port, &checks).await;
    let _da = delivery(&a).await;
    let _db = delivery(&b).await;
    let _out = smtp_out(&a, dns.addr, port, "out-fwd-dmarc").await;
    let (_imap_b, imap_addr) = imap_on(&b, [127, 0, 0, 3]).await;

    let done = smtp_send(
        "127.0.0.4",
        listeners_a["mx"],
        "stranger@orig.test",
        "fwd@a.test",
        &signed,
    )
    .await;
    assert!(done.starts_with("250"), "A accepts it: {done}");
    test_kit::wait_until(
        "the forwarded message in dave's INBOX on B",
        Duration::from_secs(90),
        || async {
            test_kit::subjects(&b, dave, "INBOX")
                .await
                .iter()
                .any(|s| s == "forwarded and still aligned")
        },
    )
    .await;
    let fetched = python(
        PY_IMAP_FETCH,
        &[
            imap_addr.ip().to_string(),
            imap_addr.port().to_string(),
            "dave@b.test".into(),
            "pw-dave".into(),
        ],
    )
    .await;
    let raw = unhex(fetched.trim());
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let results: Vec<String> = parsed
        .header_values("Authentication-Results")
        .filter_map(|v| v.as_text().map(str::to_string))
        .collect();
    let at_b = results
        .iter()
        .find(|r| r.trim_start().starts_with("mx.b.test"))
        .unwrap_or_else(|| panic!("B's Authentication-Results: {results:?}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    println!("at B: {at_b}");
    for want in ["spf=pass", "dkim=pass", "dmarc=pass", "arc=pass"] {
        assert!(at_b.contains(want), "{want} at B: {at_b}\n{text}");
    }
    assert!(
        at_b.contains("smtp.mailfrom=SRS0=") || text.contains("Return-Path: <SRS0="),
        "the envelope was rewritten: {at_b}\n{text}"
    );
    // A's seal: the first ARC set, over a chain that was empty, with A's
    // own results (the original signature passed there too).
    let seals: Vec<String> = parsed
        .header_values("ARC-Seal")
        .filter_map(|v| v.as_text().map(str::to_string))
        .collect();
    assert_eq!(seals.len(), 1, "{text}");
    for want in ["i=1", "cv=none", "d=a.test", "s=arc1"] {
        assert!(seals[0].contains(want), "{want} in {}", seals[0]);
    }
    let aar: Vec<String> = parsed
        .header_values("ARC-Authentication-Results")
        .filter_map(|v| v.as_text().map(str::to_string))
        .collect();
    assert_eq!(aar.len(), 1, "{text}");
    assert!(
        aar[0].contains("mx.a.test") && aar[0].contains("dkim=pass"),
        "{}",
        aar[0]
    );
    let dkim_sigs: Vec<String> = parsed
        .header_values("DKIM-Signature")
        .filter_map(|v| v.as_text().map(str::to_string))
        .collect();
    assert!(
        dkim_sigs.iter().all(|d| !d.contains("d=a.test")),
        "A does not DKIM-sign forwarded mail: {dkim_sigs:?}"
    );
}

/// Issue #14's acceptance: an alias loop across two installations ends with
/// one DSN, not a storm. `loop@a.test` forwards to `back@b.test`, which
/// forwards back to `loop@a.test`. A refuses the returning copy
/// (`Delivered-To: loop@a.test`, 5.4.6) and sends one DSN from <> to the
/// envelope sender, B's SRS address; B reverses it to A's SRS address, A to
/// the original sender, whose MX gets exactly that one DSN — and nothing
/// else keeps circulating. Real smtp-in, delivery and smtp-out at both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_loop_across_two_installations_ends_with_one_dsn() {
    let a = TestStore::start().await;
    a.add_domain("a.test").await;
    let b = TestStore::start().await;
    b.add_domain("b.test").await;
    for (store, source, target) in [
        (&a, "loop@a.test", "back@b.test"),
        (&b, "back@b.test", "loop@a.test"),
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
    let port = free_port().await;
    let dns = TestDns::start().await;
    dns.mx("a.test", 10, "mx.a.test");
    dns.a("mx.a.test", [127, 0, 0, 2].into());
    dns.mx("b.test", 10, "mx.b.test");
    dns.a("mx.b.test", [127, 0, 0, 3].into());
    dns.mx("orig.test", 10, "mx.orig.test");
    dns.a("mx.orig.test", [127, 0, 0, 4].into());
    dns.txt("orig.test", "v=spf1 ip4:127.0.0.4 -all");
    dns.txt("a.test", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.txt("b.test", "v=spf1 ip4:127.0.0.0/8 -all");
    let (_, orig) = sink(SocketAddr::from(([127, 0, 0, 4], port)), &[]).await;

    let dns_arg = dns.addr.to_string();
    let (secret_a, secret_b) = (srs_secret("a.test"), srs_secret("b.test"));
    let args_a = [
        "--dns-server",
        dns_arg.as_str(),
        "--srs-secret",
        secret_a.as_str(),
        "--srs-domain",
        "a.test",
    ];
    let args_b = [
        "--dns-server",
        dns_arg.as_str(),
        "--srs-secret",
        secret_b.as_str(),
        "--srs-domain",
        "b.test",
    ];
    let (_in_a, listeners_a) = smtp_in_on(&a, "mx.a.test", [127, 0, 0, 2], port, &args_a).await;
    let (_in_b, _) = smtp_in_on(&b, "mx.b.test", [127, 0, 0, 3], port, &args_b).await;
    let _da = delivery_for(&a, "a.test").await;
    let _db = delivery_for(&b, "b.test").await;
    let _oa = smtp_out_for(&a, dns.addr, port, "out-loop-a", "a.test").await;
    let _ob = smtp_out_for(&b, dns.addr, port, "out-loop-b", "b.test").await;

    let done = smtp_send(
        "127.0.0.4",
        listeners_a["mx"],
        "stranger@orig.test",
        "loop@a.test",
        b"From: <stranger@orig.test>\r\nTo: <loop@a.test>\r\nSubject: round and round\r\n\
          Message-ID: <loop-e2e@orig.test>\r\n\r\nWho forwards whom?\r\n",
    )
    .await;
    assert!(done.starts_with("250"), "A accepts it: {done}");
    test_kit::wait_until(
        "the DSN at the original sender's MX",
        Duration::from_secs(120),
        || {
            let n = orig.lock().unwrap().len();
            async move { n >= 1 }
        },
    )
    .await;
    // Nothing more arrives, and both queues drain: no storm.
    let settled = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = |jobs: Vec<pb::JobSummary>| {
            jobs.into_iter()
                .filter(|j| j.state == pb::JobState::Ready as i32)
                .count()
        };
        let busy = pending(outbound_jobs(&a).await) + pending(outbound_jobs(&b).await);
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < settled, "queues still busy: {busy} jobs");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = orig.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "exactly one message reaches the sender");
    assert_eq!(got[0].1, vec!["stranger@orig.test".to_string()]);
    let wire = String::from_utf8_lossy(&got[0].2).into_owned();
    assert!(wire.contains("multipart/report"), "a DSN: {wire}");
    assert!(wire.contains("5.4.6"), "it names the loop: {wire}");
    assert!(
        wire.contains("loop@a.test"),
        "and the looping address: {wire}"
    );
    // The loop went round once: A forwarded once, B forwarded once.
    let forwarded = |jobs: &[pb::JobSummary]| {
        jobs.iter()
            .filter(|j| j.mail_from.starts_with("SRS0="))
            .count()
    };
    assert_eq!(forwarded(&outbound_jobs(&a).await), 1);
    assert_eq!(forwarded(&outbound_jobs(&b).await), 1);
}
