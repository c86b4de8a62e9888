//! smtp-out against scripted SMTP servers on loopback, with the real store
//! and the test DNS server: retries, bounces, lost connections, Null MX,
//! missing records, STARTTLS injection, MX fallback, connection reuse and
//! dot-stuffing on the wire.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use mailstore_api::pb;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hello\r\nMessage-ID: <m1@a.test>\r\n\r\nHi Bob.\r\n";

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

async fn setup(domain: &str, mx_ip: u8) -> (test_kit::TestStore, TestDns, u16) {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    dns.mx(domain, 10, &format!("mx.{domain}"));
    dns.a(&format!("mx.{domain}"), ip(mx_ip));
    (store, dns, free_port().await)
}

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((ip(n), port))
}

#[tokio::test]
async fn temporary_failure_then_one_delivery_after_retry() {
    let (store, dns, port) = setup("b.test", 1).await;
    let server = mx(at(1, port), |n| Script {
        rcpt: if n == 0 {
            "451 4.7.1 greylisted, come back later\r\n"
        } else {
            "250 2.1.5 ok\r\n"
        },
        ..Script::default()
    })
    .await;
    let client = store.client();
    // threat model T4: a stored smuggling shape goes out as CRLF + dot-stuffed.
    let body = b"Subject: s\r\n\r\na\n.\r\nb\r.\r\nc\n.\nd\r\n";
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@b.test"], body).await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert!(
        rcpt_detail(&d, 0).starts_with("250 2.0.0"),
        "{}",
        rcpt_detail(&d, 0)
    );
    let got = server.messages();
    assert_eq!(got.len(), 1, "exactly one delivery");
    assert_eq!(got[0].rcpts, vec!["bob@b.test".to_string()]);
    assert_eq!(got[0].from, "alice@a.test");
    assert_eq!(got[0].helo, "out.a.test");
    assert_eq!(
        got[0].wire,
        b"Subject: s\r\n\r\na\r\n..\r\nb\r\n..\r\nc\r\n..\r\nd\r\n.\r\n".to_vec()
    );
    assert!(server.connections() >= 2);
    // The attempt history is in the event log, with the MX and IP.
    let attempts: Vec<&pb::Event> = d
        .events
        .iter()
        .filter(|e| e.kind == pb::EventKind::Attempt as i32)
        .collect();
    assert!(attempts.len() >= 2, "{:#?}", d.events);
    assert_eq!(
        attempts[0].attributes.get("mx").map(String::as_str),
        Some("mx.b.test")
    );
    assert_eq!(
        attempts[0].attributes.get("ip").map(String::as_str),
        Some("127.0.0.1")
    );
    assert!(attempts[0].attributes["reply"].contains("451 4.7.1"));
    assert!(
        d.events
            .iter()
            .any(|e| e.kind == pb::EventKind::Deferred as i32)
    );
    // No DSN for a delivered message.
    assert!(inbound(&client).await.is_empty());
    run.stop().await;
}

#[tokio::test]
async fn permanent_failure_makes_one_dsn_to_the_sender_and_none_for_null_sender() {
    let (store, dns, port) = setup("b.test", 2).await;
    let server = mx(at(2, port), |_| Script {
        rcpt: "550 5.1.1 <nobody@b.test>: no such user\r\n",
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["nobody@b.test"], MSG).await;
    let bounce = enqueue_outbound(&client, "", &["nobody@b.test"], MSG).await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
    assert!(rcpt_detail(&d, 0).contains("550 5.1.1"));
    let b = wait_job(&client, bounce, 20, is_done).await;
    assert_eq!(rcpt_state(&b, 0), pb::RecipientState::Failed);
    assert!(server.messages().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    assert_eq!(dsns.len(), 1, "one DSN, none for the <> sender");
    let (_, job, raw) = &dsns[0];
    assert_eq!(job.mail_from, "", "DSN from the null sender");
    assert_eq!(
        job.recipients[0].recipient.as_ref().unwrap().address,
        "alice@a.test"
    );
    let text = String::from_utf8_lossy(raw);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(text.contains("Final-Recipient: rfc822; nobody@b.test"));
    assert!(text.contains("Action: failed"));
    assert!(text.contains("Status: 5.1.1"));
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"));
    assert!(
        text.contains("Message-ID: <m1@a.test>"),
        "original headers returned"
    );
    run.stop().await;
}

#[tokio::test]
async fn connection_dropped_after_the_dot_is_retried_not_lost() {
    let (store, dns, port) = setup("b.test", 3).await;
    let server = mx(at(3, port), |n| Script {
        data_end: if n == 0 {
            None
        } else {
            Some("250 2.0.0 queued\r\n")
        },
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@b.test"], MSG).await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    // The first copy reached the server but was never acknowledged: at most
    // one duplicate, never a loss.
    let got = server.messages();
    assert_eq!(got.len(), 2);
    assert!(
        d.events
            .iter()
            .any(|e| e.detail.contains("closed by the remote during end of data")),
        "{:#?}",
        d.events
    );
    run.stop().await;
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_at_once() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    dns.null_mx("nomail.test");
    let client = store.client();
    let null = enqueue_outbound(&client, "alice@a.test", &["x@nomail.test"], MSG).await;
    let nx = enqueue_outbound(&client, "alice@a.test", &["y@nowhere.test"], MSG).await;
    let run = start(config(&store, dns.addr, free_port().await));
    let d = wait_job(&client, null, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
    assert!(
        rcpt_detail(&d, 0).contains("5.1.10"),
        "{}",
        rcpt_detail(&d, 0)
    );
    let d = wait_job(&client, nx, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
    assert!(
        rcpt_detail(&d, 0).contains("5.1.2"),
        "{}",
        rcpt_detail(&d, 0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    assert_eq!(dsns.len(), 2);
    let all: String = dsns
        .iter()
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(all.contains("Status: 5.1.10"));
    assert!(all.contains("Status: 5.1.2"));
    run.stop().await;
}

#[tokio::test]
async fn no_mx_and_no_address_retries_then_bounces_at_expiry() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    dns.empty("empty.test");
    dns.servfail("broken.test");
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["x@empty.test"], MSG).await;
    let sf = enqueue_outbound(&client, "alice@a.test", &["x@broken.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, free_port().await);
    cfg.retry_schedule = vec![Duration::from_millis(700)];
    cfg.give_up_after = Duration::from_secs(4);
    cfg.delay_notice_after = Duration::from_secs(1);
    let run = start(cfg);
    // SERVFAIL is temporary: deferred first.
    let d = wait_job(&client, sf, 10, |d| {
        rcpt_state(d, 0) == pb::RecipientState::Deferred
    })
    .await;
    assert!(!is_done(&d));
    let d = wait_job(&client, id, 30, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
    let detail = rcpt_detail(&d, 0);
    assert!(detail.contains("5.4.7"), "{detail}");
    assert!(detail.contains("no MX and no address records"), "{detail}");
    let summary = d.summary.unwrap();
    assert!(summary.attempts >= 3, "retried: {summary:?}");
    let d = wait_job(&client, sf, 30, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    let texts: Vec<String> = dsns
        .iter()
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let failed = texts
        .iter()
        .filter(|t| t.contains("Action: failed"))
        .count();
    let delayed = texts
        .iter()
        .filter(|t| t.contains("Action: delayed"))
        .count();
    assert_eq!(failed, 2, "one bounce per job");
    assert_eq!(delayed, 2, "one delay notice per job: {texts:#?}");
    run.stop().await;
}

#[tokio::test]
async fn starttls_injection_is_discarded_and_capabilities_reread_in_tls() {
    let (store, dns, port) = setup("b.test", 4).await;
    // threat model T13: the 220 to STARTTLS arrives with two injected lines in the
    // same segment. If the client kept them, its EHLO inside TLS would be
    // answered by them and the session would fall out of step.
    let server = mx(at(4, port), |_| Script {
        caps: vec!["8BITMIME"],
        starttls: Some("250-evil\r\n250 AUTH PLAIN\r\n"),
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@b.test"], MSG).await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "sent inside TLS");
    let cmds = server.commands();
    let tls_cmds: Vec<&String> = cmds.iter().filter(|c| c.contains("[tls]")).collect();
    assert!(tls_cmds[0].ends_with("EHLO out.a.test"), "{cmds:#?}");
    let attempt = d
        .events
        .iter()
        .find(|e| e.kind == pb::EventKind::Attempt as i32)
        .unwrap();
    assert!(
        attempt.attributes["tls_version"].starts_with("TLS"),
        "{attempt:?}"
    );
    assert!(!attempt.attributes["tls_cipher"].is_empty());
    run.stop().await;
}

#[tokio::test]
async fn every_mx_is_tried_and_connections_are_reused() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("multi.test", 10, "down.multi.test");
    dns.mx("multi.test", 20, "busy.multi.test");
    dns.mx("multi.test", 30, "ok.multi.test");
    dns.a("down.multi.test", ip(5)); // nothing listens there
    dns.a("busy.multi.test", ip(6));
    dns.a("ok.multi.test", ip(7));
    let busy = mx(at(6, port), |_| Script {
        greeting: "421 4.3.2 too busy\r\n",
        ..Script::default()
    })
    .await;
    let ok = mx(at(7, port), |_| Script::default()).await;
    let client = store.client();
    let mut ids = Vec::new();
    for i in 0..3 {
        let to = format!("u{i}@multi.test");
        ids.push(enqueue_outbound(&client, "alice@a.test", &[to.as_str()], MSG).await);
    }
    let run = start(config(&store, dns.addr, port));
    for id in ids {
        let d = wait_job(&client, id, 20, is_done).await;
        assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    }
    assert_eq!(ok.messages().len(), 3);
    assert_eq!(ok.connections(), 1, "one connection for the three messages");
    assert!(busy.connections() >= 1);
    assert!(busy.messages().is_empty());
    run.stop().await;
}

#[tokio::test]
async fn hostile_replies_defer_and_never_count_as_delivered() {
    let (store, dns, port) = setup("b.test", 8).await;
    let _server = mx(at(8, port), |n| Script {
        mail: match n % 3 {
            0 => "2500 ok\r\n",
            1 => "250-a\r\n550 b\r\n",
            _ => "250\x00ok\r\n",
        },
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@b.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.retry_schedule = vec![Duration::from_millis(200)];
    let run = start(cfg);
    let d = wait_job(&client, id, 20, |d| {
        d.events
            .iter()
            .filter(|e| e.kind == pb::EventKind::Attempt as i32)
            .count()
            >= 3
    })
    .await;
    run.stop().await;
    let d2 = job(&client, id).await;
    assert!(!is_done(&d2));
    assert_ne!(rcpt_state(&d2, 0), pb::RecipientState::Delivered);
    assert!(
        d.events.iter().any(|e| e.detail.contains("protocol error")),
        "{:#?}",
        d.events
    );
}

#[tokio::test]
async fn smarthost_route_and_a_record_fallback() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    // implicit.test has no MX, only an A record (RFC 5321 §5.1 implicit MX).
    dns.a("implicit.test", ip(9));
    let implicit = mx(at(9, port), |_| Script::default()).await;
    let relay = mx(at(10, port), |_| Script::default()).await;
    let client = store.client();
    let a = enqueue_outbound(&client, "alice@a.test", &["x@implicit.test"], MSG).await;
    let b = enqueue_outbound(&client, "alice@a.test", &["y@relayed.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.relays = vec![format!("relayed.test=[127.0.0.10]:{port}")];
    let run = start(cfg);
    wait_job(&client, a, 20, is_done).await;
    wait_job(&client, b, 20, is_done).await;
    assert_eq!(implicit.messages().len(), 1);
    assert_eq!(relay.messages().len(), 1);
    assert_eq!(
        relay.messages()[0].rcpts,
        vec!["y@relayed.test".to_string()]
    );
    run.stop().await;
}

/// The data as the receiver stores it: dot-unstuffed, without the final dot.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    let body = wire.strip_suffix(b".\r\n").unwrap_or(wire);
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

#[tokio::test]
async fn dkim_signatures_rsa_and_ed25519_verify_against_dns() {
    use mail_auth::common::crypto::{DkimKey, Ed25519Key};
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

    let (store, dns, port) = setup("b.test", 11).await;
    let server = mx(at(11, port), |_| Script::default()).await;
    // Keys: RSA from a PEM fixture, Ed25519 generated; TXT records in DNS.
    let rsa_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dkim-rsa-test.pem"
    );
    let rsa = smtp_out::dkim::key_from_pem(&std::fs::read_to_string(rsa_path).unwrap()).unwrap();
    dns.txt("rsa1._domainkey.a.test", &smtp_out::dkim::txt_record(&rsa));
    let ed_der = Ed25519Key::generate_pkcs8().unwrap();
    let ed = DkimKey::Ed25519(Ed25519Key::from_pkcs8_der(&ed_der).unwrap());
    dns.txt("ed1._domainkey.c.test", &smtp_out::dkim::txt_record(&ed));
    let ed_path = std::env::temp_dir().join(format!("dkim-ed-{:08x}.pem", rand::random::<u32>()));
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&ed_der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        std::fs::write(
            &ed_path,
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                lines.join("\n")
            ),
        )
        .unwrap();
    }
    let client = store.client();
    let a = enqueue_outbound_as(
        &client,
        "alice@a.test",
        &["bob@b.test"],
        b"From: Alice <alice@a.test>\nTo: bob@b.test\nSubject: signed rsa\nMessage-ID: <r@a.test>\n\n.dot line\nbody\n",
        true,
    )
    .await;
    let c = enqueue_outbound_as(
        &client,
        "bounces@c.test",
        &["bob@b.test"],
        b"From: carol@c.test\r\nTo: bob@b.test\r\nSubject: signed ed25519\r\n\r\nhello\r\n",
        true,
    )
    .await;
    // Issue 14: a job not marked for signing (mail from outside, forwarded
    // by an alias) leaves without our signature, even with a forged From:
    // of a domain we hold a key for.
    let forwarded = enqueue_outbound(
        &client,
        "stranger@elsewhere.test",
        &["bob@b.test"],
        b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: forged, forwarded\r\n\r\nphish\r\n",
    )
    .await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.dkim_keys = vec![
        format!("a.test=rsa1:{rsa_path}"),
        format!("c.test=ed1:{}", ed_path.display()),
    ];
    let run = start(cfg);
    wait_job(&client, a, 20, is_done).await;
    wait_job(&client, c, 20, is_done).await;
    wait_job(&client, forwarded, 20, is_done).await;
    run.stop().await;
    let _ = std::fs::remove_file(&ed_path);
    let mut ns = hickory_resolver::config::NameServerConfig::udp_and_tcp(dns.addr.ip());
    for conn in &mut ns.connections {
        conn.port = dns.addr.port();
    }
    let auth = MessageAuthenticator::new(
        hickory_resolver::config::ResolverConfig::from_name_servers(vec![ns]),
        hickory_resolver::config::ResolverOpts::default(),
    )
    .unwrap();
    let mut got = server.messages();
    assert_eq!(got.len(), 3);
    let (unsigned, got): (Vec<_>, Vec<_>) = got
        .drain(..)
        .partition(|m| String::from_utf8_lossy(&m.wire).contains("Subject: forged, forwarded"));
    assert_eq!(unsigned.len(), 1);
    let text = String::from_utf8_lossy(&unsigned[0].wire).into_owned();
    assert!(!text.contains("DKIM-Signature"), "{text}");
    assert!(text.starts_with("From: Alice <alice@a.test>"), "{text}");
    let mut algos = Vec::new();
    for m in &got {
        let raw = unstuff(&m.wire);
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(text.starts_with("DKIM-Signature: v=1; "), "{text}");
        algos.push(if text.contains("a=ed25519-sha256") {
            "ed25519"
        } else {
            "rsa"
        });
        let parsed = AuthenticatedMessage::parse(&raw).unwrap();
        let out = auth.verify_dkim(&parsed).await;
        assert_eq!(out.len(), 1, "{text}");
        assert_eq!(out[0].result(), &DkimResult::Pass, "{text}");
    }
    algos.sort_unstable();
    assert_eq!(algos, vec!["ed25519", "rsa"]);
}

#[tokio::test]
async fn too_many_recipients_sends_the_accepted_and_retries_the_rest() {
    // threat model T42: 452 after N RCPTs.
    let (store, dns, port) = setup("b.test", 12).await;
    let server = mx(at(12, port), |_| Script {
        rcpt_limit: Some(2),
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(
        &client,
        "alice@a.test",
        &[
            "r0@b.test",
            "r1@b.test",
            "r2@b.test",
            "r3@b.test",
            "r4@b.test",
        ],
        MSG,
    )
    .await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 30, is_done).await;
    for i in 0..5 {
        assert_eq!(rcpt_state(&d, i), pb::RecipientState::Delivered, "{i}");
    }
    let got = server.messages();
    // 2 + 2 + 1: each recipient received exactly once.
    let mut all: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            "r0@b.test",
            "r1@b.test",
            "r2@b.test",
            "r3@b.test",
            "r4@b.test"
        ]
    );
    assert_eq!(got.len(), 3);
    run.stop().await;
}

#[tokio::test]
async fn slow_and_flooding_remotes_time_out_while_others_keep_flowing() {
    // threat model T41 and T38: one destination drips its greeting, another floods
    // its EHLO reply; a third, normal one is served meanwhile.
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    for (d, n) in [("slow.test", 13u8), ("flood.test", 14), ("fine.test", 15)] {
        dns.mx(d, 10, &format!("mx.{d}"));
        dns.a(&format!("mx.{d}"), ip(n));
    }
    let _slow = mx(at(13, port), |_| Script {
        drip: Some(Duration::from_millis(700)),
        ..Script::default()
    })
    .await;
    let _flood = mx(at(14, port), |_| Script {
        ehlo_flood: true,
        ..Script::default()
    })
    .await;
    let fine = mx(at(15, port), |_| Script::default()).await;
    let client = store.client();
    let slow = enqueue_outbound(&client, "alice@a.test", &["x@slow.test"], MSG).await;
    let flood = enqueue_outbound(&client, "alice@a.test", &["x@flood.test"], MSG).await;
    let ok = enqueue_outbound(&client, "alice@a.test", &["x@fine.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.retry_schedule = vec![Duration::from_secs(60)];
    let started = std::time::Instant::now();
    let run = start(cfg);
    wait_job(&client, ok, 10, is_done).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not held up by the slow remote"
    );
    assert_eq!(fine.messages().len(), 1);
    for id in [slow, flood] {
        let d = wait_job(&client, id, 20, |d| {
            rcpt_state(d, 0) == pb::RecipientState::Deferred
        })
        .await;
        assert!(!is_done(&d));
        let detail = rcpt_detail(&d, 0);
        assert!(
            detail.contains("timeout waiting for greeting")
                || detail.contains("more than 64 lines"),
            "{detail}"
        );
    }
    run.stop().await;
}

#[tokio::test]
async fn chunking_sends_one_bdat_with_crlf_and_no_dot_stuffing() {
    let (store, dns, port) = setup("b.test", 16).await;
    let server = mx(at(16, port), |_| Script {
        caps: vec!["PIPELINING", "8BITMIME", "CHUNKING", "SIZE 1000"],
        ..Script::default()
    })
    .await;
    let client = store.client();
    let body = b"Subject: bdat\n\na\n.\r\nb\r.\r\nc\n";
    let id = enqueue_outbound(
        &client,
        "alice@a.test",
        &["bob@b.test", "nobody@b.test"],
        body,
    )
    .await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].wire,
        b"Subject: bdat\r\n\r\na\r\n.\r\nb\r\n.\r\nc\r\n".to_vec()
    );
    let cmds = server.commands();
    assert!(
        cmds.iter()
            .any(|c| c.contains("MAIL FROM:<alice@a.test> SIZE=32")),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter().any(|c| c.ends_with("BDAT 32 LAST")),
        "{cmds:#?}"
    );
    assert!(!cmds.iter().any(|c| c.ends_with(" DATA")), "{cmds:#?}");
    run.stop().await;
}

#[tokio::test]
async fn long_transfers_keep_their_lease() {
    // The remote takes 3 s to answer the final dot; the lease is 1 s and is
    // renewed meanwhile, so the job is not handed out again mid-transfer.
    let (store, dns, port) = setup("b.test", 19).await;
    let server = mx(at(19, port), |_| Script {
        data_end_delay: Some(Duration::from_secs(3)),
        ..Script::default()
    })
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@b.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.lease_ms = 1_000;
    cfg.data_timeout = Duration::from_secs(10);
    let first = start(cfg.clone());
    let mut second_cfg = cfg;
    second_cfg.worker_id = Some("second-worker".into());
    let second = start(second_cfg);
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.messages().len(), 1, "one transfer, no second lease");
    assert_eq!(d.summary.unwrap().attempts, 1);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn ipv6_only_mx() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("v6.test", 10, "mx.v6.test");
    dns.aaaa("mx.v6.test", std::net::Ipv6Addr::LOCALHOST);
    let Ok(probe) = std::net::TcpListener::bind(("::1", port)) else {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    };
    drop(probe);
    let server = mx(
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        |_| Script::default(),
    )
    .await;
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["x@v6.test"], MSG).await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(server.messages().len(), 1);
    let attempt = d
        .events
        .iter()
        .find(|e| e.kind == pb::EventKind::Attempt as i32)
        .unwrap();
    assert_eq!(attempt.attributes["ip"], "::1");
    run.stop().await;
}

#[tokio::test]
async fn dsn_parameters_are_passed_on_or_a_relayed_notice_is_sent() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    for (d, n) in [("dsn.test", 20u8), ("nodsn.test", 21)] {
        dns.mx(d, 10, &format!("mx.{d}"));
        dns.a(&format!("mx.{d}"), ip(n));
    }
    let with_dsn = mx(at(20, port), |_| Script {
        caps: vec!["PIPELINING", "8BITMIME", "DSN"],
        ..Script::default()
    })
    .await;
    let without = mx(at(21, port), |_| Script::default()).await;
    let client = store.client();
    let mut ids = Vec::new();
    for (i, to) in ["bob@dsn.test", "carol@nodsn.test"].iter().enumerate() {
        let header = pb::EnqueueHeader {
            kind: pb::QueueKind::Outbound as i32,
            idempotency_key: format!("dsn-{i}"),
            mail_from: "alice@a.test".into(),
            recipients: vec![pb::Recipient {
                address: (*to).into(),
                orcpt: format!("rfc822;{to}"),
                notify: pb::Notify::Success as u32 | pb::Notify::Failure as u32,
            }],
            envid: "env 42".into(),
            ret: "HDRS".into(),
            size: MSG.len() as u64,
            ..Default::default()
        };
        let msgs = vec![
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Header(header)),
            },
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Data(MSG.to_vec())),
            },
        ];
        ids.push(
            client
                .queue
                .clone()
                .enqueue(futures::stream::iter(msgs))
                .await
                .unwrap()
                .into_inner()
                .job_id,
        );
    }
    let run = start(config(&store, dns.addr, port));
    for id in &ids {
        wait_job(&client, *id, 20, is_done).await;
    }
    let cmds = with_dsn.commands();
    assert!(
        cmds.iter()
            .any(|c| c.ends_with("MAIL FROM:<alice@a.test> RET=HDRS ENVID=env+2042")),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter().any(|c| c
            .ends_with("RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@dsn.test")),
        "{cmds:#?}"
    );
    let plain = without.commands();
    assert!(!plain.iter().any(|c| c.contains("NOTIFY=")), "{plain:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    assert_eq!(
        dsns.len(),
        1,
        "a relayed notice only for the server without DSN"
    );
    let text = String::from_utf8_lossy(&dsns[0].2);
    assert!(text.contains("Action: relayed"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; carol@nodsn.test"),
        "{text}"
    );
    assert!(text.contains("Original-Envelope-Id: env 42"), "{text}");
    run.stop().await;
}

#[tokio::test]
async fn a_job_spanning_two_domains_goes_to_each_domains_mx() {
    let (store, dns, port) = setup("b.test", 22).await;
    dns.mx("c.test", 10, "mx.c.test");
    dns.a("mx.c.test", ip(23));
    let b = mx(at(22, port), |_| Script::default()).await;
    let c = mx(at(23, port), |_| Script::default()).await;
    let client = store.client();
    let id = enqueue_outbound(
        &client,
        "alice@a.test",
        &["bob@b.test", "carol@c.test"],
        MSG,
    )
    .await;
    let run = start(config(&store, dns.addr, port));
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(rcpt_state(&d, 1), pb::RecipientState::Delivered);
    assert_eq!(b.messages()[0].rcpts, vec!["bob@b.test".to_string()]);
    assert_eq!(c.messages()[0].rcpts, vec!["carol@c.test".to_string()]);
    run.stop().await;
}

/// Issue 14: a key made in the store (what `mailctl dkim generate` does)
/// signs the very next marked message — no restart, no waiting for the
/// minute's reload. Before it, the same kind of message leaves unsigned;
/// after a rotation, the next one carries the new selector.
#[tokio::test]
async fn a_new_store_key_signs_the_next_message() {
    let (store, dns, port) = setup("b.test", 43).await;
    let server = mx(at(43, port), |_| Script::default()).await;
    store.add_domain("k.test").await;
    let client = store.client();
    let run = start(config(&store, dns.addr, port));
    let before = enqueue_outbound_as(
        &client,
        "alice@k.test",
        &["bob@b.test"],
        b"From: alice@k.test\r\nSubject: before\r\n\r\nx\r\n",
        true,
    )
    .await;
    wait_job(&client, before, 20, is_done).await;
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dkim-rsa-test.pem"
    ))
    .unwrap();
    let key = smtp_out::dkim::key_from_pem(&pem).unwrap();
    let txt = smtp_out::dkim::txt_record(&key);
    client
        .accounts
        .clone()
        .put_dkim_key(pb::PutDkimKeyRequest {
            domain: "k.test".into(),
            selector: "fresh".into(),
            algorithm: "rsa-sha256".into(),
            private_key: pem.clone(),
            public_key: txt.rsplit_once("p=").unwrap().1.to_string(),
            activate: true,
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let after = enqueue_outbound_as(
        &client,
        "alice@k.test",
        &["bob@b.test"],
        b"From: alice@k.test\r\nSubject: after\r\n\r\nx\r\n",
        true,
    )
    .await;
    wait_job(&client, after, 20, is_done).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    // Rotation (what `mailctl dkim rotate` does): the next message is
    // signed with the new selector at once, not after the minute's reload.
    client
        .accounts
        .clone()
        .put_dkim_key(pb::PutDkimKeyRequest {
            domain: "k.test".into(),
            selector: "rotated".into(),
            algorithm: "rsa-sha256".into(),
            private_key: pem.clone(),
            public_key: txt.rsplit_once("p=").unwrap().1.to_string(),
            activate: true,
        })
        .await
        .unwrap();
    let rotated = enqueue_outbound_as(
        &client,
        "alice@k.test",
        &["bob@b.test"],
        b"From: alice@k.test\r\nSubject: rotated\r\n\r\nx\r\n",
        true,
    )
    .await;
    wait_job(&client, rotated, 20, is_done).await;
    assert!(started.elapsed() < Duration::from_secs(45));
    run.stop().await;
    let got = server.messages();
    assert_eq!(got.len(), 3);
    let text = |m: &Received| String::from_utf8_lossy(&m.wire).into_owned();
    let first = got
        .iter()
        .map(text)
        .find(|t| t.contains("Subject: before"))
        .unwrap();
    let second = got
        .iter()
        .map(text)
        .find(|t| t.contains("Subject: after"))
        .unwrap();
    assert!(!first.contains("DKIM-Signature"), "{first}");
    assert!(
        second.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=fresh; d=k.test"),
        "{second}"
    );
    let third = got
        .iter()
        .map(text)
        .find(|t| t.contains("Subject: rotated"))
        .unwrap();
    assert!(
        third.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=rotated; d=k.test"),
        "{third}"
    );
}

/// Threat model T107: a forwarded copy (delivery sets `delivered_to`)
/// leaves with `Delivered-To:` of the alias on top, so the next
/// installation's delivery sees the loop if it comes back.
#[tokio::test]
async fn a_forwarded_copy_carries_delivered_to() {
    let (store, dns, port) = setup("b.test", 44).await;
    let server = mx(at(44, port), |_| Script::default()).await;
    let client = store.client();
    let raw = b"From: x@elsewhere.test\r\nSubject: fwd\r\n\r\nx\r\n";
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: "fwd-copy".into(),
        mail_from: "x@elsewhere.test".into(),
        recipients: vec![pb::Recipient {
            address: "bob@b.test".into(),
            ..Default::default()
        }],
        size: raw.len() as u64,
        delivered_to: "alias@a.test\r\nX-Injected: no".into(),
        ..Default::default()
    };
    let msgs = vec![
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Header(header)),
        },
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Data(raw.to_vec())),
        },
    ];
    let id = client
        .queue
        .clone()
        .enqueue(futures::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let run = start(config(&store, dns.addr, port));
    wait_job(&client, id, 20, is_done).await;
    run.stop().await;
    let got = server.messages();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].wire).into_owned();
    // Control characters are dropped by the store: one header line only.
    assert!(
        text.starts_with("Delivered-To: alias@a.testX-Injected: no\r\nFrom: x@elsewhere.test\r\n"),
        "{text}"
    );
}

/// Issue 14, threat model T125: a copy forwarded through an alias of a
/// domain we hold a key for leaves ARC-sealed by that domain (and without
/// our DKIM signature); with `--no-arc` it leaves without a seal.
#[tokio::test]
async fn a_forwarded_copy_is_arc_sealed_unless_no_arc() {
    let (store, dns, port) = setup("b.test", 45).await;
    let server = mx(at(45, port), |_| Script::default()).await;
    let rsa_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dkim-rsa-test.pem"
    );
    let rsa = smtp_out::dkim::key_from_pem(&std::fs::read_to_string(rsa_path).unwrap()).unwrap();
    dns.txt("arc1._domainkey.a.test", &smtp_out::dkim::txt_record(&rsa));
    let client = store.client();
    let raw = b"From: x@elsewhere.test\r\nTo: alias@a.test\r\nSubject: fwd\r\n\r\nx\r\n";
    for no_arc in [false, true] {
        let header = pb::EnqueueHeader {
            kind: pb::QueueKind::Outbound as i32,
            idempotency_key: format!("fwd-arc-{no_arc}"),
            mail_from: "x@elsewhere.test".into(),
            recipients: vec![pb::Recipient {
                address: "bob@b.test".into(),
                ..Default::default()
            }],
            size: raw.len() as u64,
            delivered_to: "alias@a.test".into(),
            client_ip: "192.0.2.10".into(),
            helo: "client.elsewhere.test".into(),
            ..Default::default()
        };
        let msgs = vec![
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Header(header)),
            },
            pb::EnqueueRequest {
                part: Some(pb::enqueue_request::Part::Data(raw.to_vec())),
            },
        ];
        let id = client
            .queue
            .clone()
            .enqueue(futures::stream::iter(msgs))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let mut cfg = config(&store, dns.addr, port);
        cfg.dkim_keys = vec![format!("a.test=arc1:{rsa_path}")];
        cfg.no_arc = no_arc;
        let run = start(cfg);
        wait_job(&client, id, 20, is_done).await;
        run.stop().await;
    }
    let got = server.messages();
    assert_eq!(got.len(), 2);
    let sealed = String::from_utf8_lossy(&got[0].wire).into_owned();
    assert!(sealed.starts_with("ARC-Seal: i=1;"), "{sealed}");
    assert!(sealed.contains("d=a.test"), "{sealed}");
    assert!(
        sealed.contains("ARC-Authentication-Results: i=1;"),
        "{sealed}"
    );
    // No DKIM-Signature field of ours (the A-R may name the field in a
    // comment).
    assert!(!sealed.contains("\r\nDKIM-Signature:"), "{sealed}");
    let plain = String::from_utf8_lossy(&got[1].wire).into_owned();
    assert!(!plain.contains("ARC-"), "{plain}");
    assert!(
        plain.starts_with("Delivered-To: alias@a.test\r\n"),
        "{plain}"
    );
}
