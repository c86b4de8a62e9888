//! smtp-out refusing to be misused (issue #15): no connection to special
//! addresses (SSRF), smarthost credentials only over verified TLS, 8-bit
//! content converted for servers without 8BITMIME with the DKIM signature
//! still valid, and internationalised mail to servers without SMTPUTF8
//! bounced with 5.6.7. Real store, test DNS, scripted servers on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use mailstore_api::{StoreClient, pb};
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hello\r\nMessage-ID: <m1@a.test>\r\n\r\nHi Bob.\r\n";

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), port))
}

fn no_connection_attempt(d: &pb::JobDetail) -> bool {
    !d.events
        .iter()
        .any(|e| e.kind == pb::EventKind::Attempt as i32 && e.attributes.contains_key("ip"))
}

#[tokio::test]
async fn forbidden_destinations_fail_permanently_without_a_connection() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    // A server on 127.0.0.1 that must never see a connection.
    let victim = mx(at(1, port), |_| Script::default()).await;
    dns.mx("loop.test", 10, "mx.loop.test");
    dns.a("mx.loop.test", Ipv4Addr::LOCALHOST);
    dns.mx("private.test", 10, "mx.private.test");
    dns.a("mx.private.test", Ipv4Addr::new(10, 0, 0, 1));
    dns.mx("metadata.test", 10, "mx.metadata.test");
    dns.a("mx.metadata.test", Ipv4Addr::new(169, 254, 169, 254));
    dns.mx("mapped.test", 10, "mx.mapped.test");
    dns.aaaa("mx.mapped.test", "::ffff:127.0.0.1".parse().unwrap());
    let client = store.client();
    let mut jobs = Vec::new();
    for rcpt in [
        "x@loop.test",
        "x@private.test",
        "x@metadata.test",
        "x@mapped.test",
        "postmaster@[127.0.0.1]",
        "postmaster@[IPv6:::1]",
    ] {
        jobs.push((
            rcpt,
            enqueue_outbound(&client, "alice@a.test", &[rcpt], MSG).await,
        ));
    }
    // A bounce (null sender) aimed at the loopback address literal.
    let dsn = enqueue_outbound(&client, "", &["user@[127.0.0.1]"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.allow_destinations = Vec::new();
    let run = start(cfg);
    for (rcpt, id) in jobs.iter().copied().chain([("dsn", dsn)]) {
        let d = wait_job(&client, id, 20, is_done).await;
        assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed, "{rcpt}");
        let detail = rcpt_detail(&d, 0);
        assert!(detail.starts_with("550 5.4.4 "), "{rcpt}: {detail}");
        assert!(detail.contains("refused by policy"), "{rcpt}: {detail}");
        assert!(no_connection_attempt(&d), "{rcpt}: {:#?}", d.events);
        assert_eq!(d.summary.unwrap().attempts, 1, "{rcpt}: not retried");
    }
    let d = wait_job(&client, jobs[2].1, 1, is_done).await;
    assert!(
        rcpt_detail(&d, 0).contains("metadata"),
        "{}",
        rcpt_detail(&d, 0)
    );
    assert_eq!(victim.connections(), 0, "no connection to 127.0.0.1");
    // One DSN per job with a sender, none for the bounce.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    assert_eq!(dsns.len(), jobs.len());
    for (_, _, raw) in &dsns {
        let text = String::from_utf8_lossy(raw);
        assert!(text.contains("Status: 5.4.4"), "{text}");
        assert!(text.contains("refused by policy"), "{text}");
    }
    run.stop().await;
}

#[tokio::test]
async fn allowed_ranges_and_mixed_mx_sets() {
    // The allow-list opens 127.0.0.2 only; an MX set mixing refused and
    // allowed hosts uses the allowed one.
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    let refused = mx(at(3, port), |_| Script::default()).await;
    let allowed = mx(at(2, port), |_| Script::default()).await;
    dns.mx("mixed.test", 5, "bad.mixed.test");
    dns.mx("mixed.test", 10, "good.mixed.test");
    dns.a("bad.mixed.test", Ipv4Addr::new(127, 0, 0, 3));
    dns.a("good.mixed.test", Ipv4Addr::new(127, 0, 0, 2));
    let client = store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["x@mixed.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.allow_destinations = vec!["127.0.0.2/32".into()];
    let run = start(cfg);
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(allowed.messages().len(), 1);
    assert_eq!(refused.connections(), 0);
    run.stop().await;
}

#[tokio::test]
async fn smarthost_auth_only_over_verified_tls() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    let ca = TestCa::new();
    // Verified: a certificate for the smarthost's address from the test CA.
    let good = mx(at(17, port), {
        let cert = ca.leaf(&["127.0.0.17"]);
        move |_| Script {
            starttls: Some(""),
            auth: Some(("relayuser", "s3cret")),
            cert: Some(cert.clone()),
            ..Script::default()
        }
    })
    .await;
    // TLS with a certificate nobody vouches for: credentials withheld.
    let unverified = mx(at(16, port), |_| Script {
        starttls: Some(""),
        auth: Some(("relayuser", "s3cret")),
        ..Script::default()
    })
    .await;
    // No STARTTLS at all: credentials withheld.
    let plain = mx(at(18, port), |_| Script {
        auth: Some(("relayuser", "s3cret")),
        ..Script::default()
    })
    .await;
    let pw = std::env::temp_dir().join(format!("relay-pw-{:08x}", rand::random::<u32>()));
    std::fs::write(&pw, "s3cret\n").unwrap();
    let client = store.client();
    let a = enqueue_outbound(&client, "alice@a.test", &["x@via-good.test"], MSG).await;
    let b = enqueue_outbound(&client, "alice@a.test", &["y@via-plain.test"], MSG).await;
    let c = enqueue_outbound(&client, "alice@a.test", &["z@via-unverified.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.ca_file = Some(ca.pem_path.clone());
    cfg.relays = vec![
        format!("via-good.test=127.0.0.17:{port}"),
        format!("via-plain.test=127.0.0.18:{port}"),
        format!("via-unverified.test=127.0.0.16:{port}"),
    ];
    cfg.relay_auth = ["17", "18", "16"]
        .iter()
        .map(|n| format!("127.0.0.{n}=relayuser:{}", pw.display()))
        .collect();
    let run = start(cfg.clone());
    let d = wait_job(&client, a, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(good.authenticated(), vec!["relayuser".to_string()]);
    assert!(good.messages()[0].tls);
    let deferred = |d: &pb::JobDetail| rcpt_state(d, 0) == pb::RecipientState::Deferred;
    let d = wait_job(&client, b, 20, deferred).await;
    assert!(
        rcpt_detail(&d, 0).contains("without TLS"),
        "{}",
        rcpt_detail(&d, 0)
    );
    let d = wait_job(&client, c, 20, deferred).await;
    assert!(
        rcpt_detail(&d, 0).contains("not verified"),
        "{}",
        rcpt_detail(&d, 0)
    );
    run.stop().await;
    for server in [&plain, &unverified] {
        assert!(server.messages().is_empty());
        assert!(server.authenticated().is_empty());
        assert!(
            !server.commands().iter().any(|c| c.contains("AUTH")),
            "{:#?}",
            server.commands()
        );
    }
    // The documented opt-out for a trusted local relay.
    cfg.relay_auth_unverified_tls = true;
    cfg.worker_id = Some("opt-out".into());
    let run = start(cfg);
    let d = wait_job(&client, c, 20, is_done).await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(unverified.authenticated(), vec!["relayuser".to_string()]);
    assert!(plain.authenticated().is_empty(), "never without TLS");
    run.stop().await;
    let _ = std::fs::remove_file(&pw);
}

/// Enqueues with the SMTPUTF8 flag set (as smtp-in does for `SMTPUTF8`).
async fn enqueue_utf8(client: &StoreClient, from: &str, to: &str, raw: &[u8]) -> u64 {
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: format!("test-{:016x}", rand::random::<u64>()),
        mail_from: from.into(),
        recipients: vec![pb::Recipient {
            address: to.to_string(),
            ..Default::default()
        }],
        smtputf8: true,
        ..Default::default()
    };
    test_kit::enqueue_header(client, header, raw)
        .await
        .unwrap()
        .job_id
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
async fn eight_bit_is_converted_for_a_7bit_server_and_dkim_still_verifies() {
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("old.test", 10, "mx.old.test");
    dns.a("mx.old.test", Ipv4Addr::new(127, 0, 0, 31));
    // RFC 6152: neither 8BITMIME nor SMTPUTF8 offered.
    let server = mx(at(31, port), |_| Script {
        caps: vec!["PIPELINING", "SIZE 10000000"],
        ..Script::default()
    })
    .await;
    let rsa_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dkim-rsa-test.pem"
    );
    let rsa = smtp_out::dkim::key_from_pem(&std::fs::read_to_string(rsa_path).unwrap()).unwrap();
    dns.txt("rsa1._domainkey.a.test", &smtp_out::dkim::txt_record(&rsa));
    let body = "From: Alice <alice@a.test>\nTo: bob@old.test\nSubject: caf\u{e9} menu\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"xx\"\n\n--xx\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nCaf\u{e9} cr\u{e8}me = 5 \u{20ac}\n.leading dot\n--xx\nContent-Type: application/octet-stream\n\n\u{ff}\u{fe}bin\n--xx--\n";
    // Subject with raw UTF-8 is fixed below: the header must be ASCII.
    let body = body.replace(
        "Subject: caf\u{e9} menu",
        "Subject: =?utf-8?q?caf=C3=A9?= menu",
    );
    let client = store.client();
    // Marked for signing, as an authenticated submission is (T105).
    let eight = enqueue_outbound_as(
        &client,
        "alice@a.test",
        &["bob@old.test"],
        body.as_bytes(),
        true,
    )
    .await;
    let utf8_header = enqueue_utf8(
        &client,
        "alice@a.test",
        "bob@old.test",
        "From: alice@a.test\r\nSubject: caf\u{e9}\r\n\r\nhi\r\n".as_bytes(),
    )
    .await;
    let utf8_address =
        enqueue_outbound(&client, "alice@a.test", &["j\u{f6}rg@old.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.dkim_keys = vec![format!("a.test=rsa1:{rsa_path}")];
    let run = start(cfg);
    let d = wait_job(&client, eight, 20, is_done).await;
    assert_eq!(
        rcpt_state(&d, 0),
        pb::RecipientState::Delivered,
        "{}",
        rcpt_detail(&d, 0)
    );
    for id in [utf8_header, utf8_address] {
        let d = wait_job(&client, id, 20, is_done).await;
        assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Failed);
        let detail = rcpt_detail(&d, 0);
        assert!(detail.starts_with("553 5.6.7 "), "{detail}");
        assert!(detail.contains("SMTPUTF8"), "{detail}");
    }
    run.stop().await;
    let got = server.messages();
    assert_eq!(got.len(), 1, "only the convertible message was sent");
    assert!(
        got[0].wire.is_ascii(),
        "{}",
        String::from_utf8_lossy(&got[0].wire)
    );
    let commands = server.commands();
    assert!(
        !commands.iter().any(|c| c.contains("BODY=8BITMIME")),
        "{commands:#?}"
    );
    let raw = unstuff(&got[0].wire);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable"),
        "{text}"
    );
    assert!(text.contains("Content-Transfer-Encoding: base64"), "{text}");
    // The receiver decodes the parts back to the original octets.
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "Caf\u{e9} cr\u{e8}me = 5 \u{20ac}\r\n.leading dot"
    );
    let attachment = parsed.attachment(0).unwrap();
    assert_eq!(attachment.contents(), "\u{ff}\u{fe}bin".as_bytes());
    // And our signature, made after the conversion, verifies there.
    let mut ns = hickory_resolver::config::NameServerConfig::udp_and_tcp(dns.addr.ip());
    for c in &mut ns.connections {
        c.port = dns.addr.port();
    }
    let auth = MessageAuthenticator::new(
        hickory_resolver::config::ResolverConfig::from_name_servers(vec![ns]),
        hickory_resolver::config::ResolverOpts::default(),
    )
    .unwrap();
    let signed = AuthenticatedMessage::parse(&raw).unwrap();
    let out = auth.verify_dkim(&signed).await;
    assert_eq!(out.len(), 1, "{text}");
    assert_eq!(out[0].result(), &DkimResult::Pass, "{text}");
    // The bounces say why.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dsns = inbound(&client).await;
    assert_eq!(dsns.len(), 2);
    for (_, _, raw) in &dsns {
        let text = String::from_utf8_lossy(raw);
        assert!(text.contains("Status: 5.6.7"), "{text}");
    }
}
