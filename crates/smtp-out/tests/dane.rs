//! DANE (RFC 7672) end to end inside smtp-out: MX, A and TLSA records in
//! the test DNS, marked secure (AD bit) as a validating resolver would,
//! scripted SMTP servers on loopback with certificates the TLSA records do
//! or do not match, a bogus (SERVFAIL) TLSA answer, and a proxy that strips
//! STARTTLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use mailstore_api::pb;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@dane.test\r\nSubject: hello\r\n\r\nHi.\r\n";

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((ip(n), port))
}

struct World {
    store: test_kit::TestStore,
    dns: TestDns,
    port: u16,
}

impl World {
    async fn new() -> Self {
        Self {
            store: test_kit::TestStore::start().await,
            dns: TestDns::start().await,
            port: free_port().await,
        }
    }

    /// `domain`'s MX `mx.<domain>` on 127.0.0.n, both secure (AD), and
    /// the TLSA name of the MX, returned (secure too, records added by
    /// the caller).
    fn secure_domain(&self, domain: &str, n: u8) -> String {
        let host = format!("mx.{domain}");
        self.dns.mx(domain, 10, &host);
        self.dns.a(&host, ip(n));
        self.dns.secure(domain);
        self.dns.secure(&host);
        let tlsa = format!("_{}._tcp.{host}", self.port);
        self.dns.secure(&tlsa);
        tlsa
    }

    fn config(&self) -> smtp_out::Config {
        let mut c = config(&self.store, self.dns.addr, self.port);
        // MTA-STS off: these tests are about DANE alone (no policy host).
        c.no_mta_sts = true;
        c
    }
}

/// A server on `addr` offering STARTTLS with `cert`.
async fn tls_mx(addr: SocketAddr, cert: &TestCert) -> Mx {
    let cert = cert.clone();
    mx(addr, move |_| Script {
        starttls: Some(""),
        cert: Some(cert.clone()),
        ..Script::default()
    })
    .await
}

/// `3 1 1` data for the server certificate of `cert`.
fn ee_spki_sha256(cert: &TestCert) -> Vec<u8> {
    smtp_out::dane::association(&cert.chain[0], 1, 1).unwrap()
}

fn attempts(d: &pb::JobDetail) -> Vec<&pb::Event> {
    d.events
        .iter()
        .filter(|e| e.kind == pb::EventKind::Attempt as i32)
        .collect()
}

fn deferred(d: &pb::JobDetail) -> bool {
    rcpt_state(d, 0) == pb::RecipientState::Deferred
}

fn no_mail_command(server: &Mx) {
    assert!(server.messages().is_empty(), "nothing delivered");
    assert!(
        !server.commands().iter().any(|c| c.contains("MAIL FROM")),
        "{:#?}",
        server.commands()
    );
}

#[tokio::test]
async fn tlsa_3_1_1_matching_delivers_over_tls_even_with_a_self_signed_certificate() {
    let w = World::new().await;
    let tlsa = w.secure_domain("dane.test", 61);
    // Self-signed and for another name: PKIX would refuse it; DANE-EE
    // ignores names and issuers (RFC 7672 §3.1.1).
    let cert = TestCert::self_signed(&["unrelated.example"]);
    w.dns.tlsa(&tlsa, 3, 1, 1, &ee_spki_sha256(&cert));
    let server = tls_mx(at(61, w.port), &cert).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@dane.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, is_done).await;
    run.stop().await;
    assert_eq!(
        rcpt_state(&d, 0),
        pb::RecipientState::Delivered,
        "{}",
        rcpt_detail(&d, 0)
    );
    assert!(server.messages()[0].tls, "delivered inside TLS");
    let a = attempts(&d);
    assert_eq!(a[0].attributes["dane"], "authenticated");
    assert_eq!(a[0].attributes["tls_verified"], "true");
}

#[tokio::test]
async fn tlsa_not_matching_defers_and_sends_nothing() {
    let w = World::new().await;
    let tlsa = w.secure_domain("mismatch.test", 62);
    let published = TestCert::self_signed(&["mx.mismatch.test"]);
    let presented = TestCert::self_signed(&["mx.mismatch.test"]);
    w.dns.tlsa(&tlsa, 3, 1, 1, &ee_spki_sha256(&published));
    let server = tls_mx(at(62, w.port), &presented).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@mismatch.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, deferred).await;
    run.stop().await;
    let detail = rcpt_detail(&d, 0);
    assert!(detail.starts_with("451 4.7.5 "), "{detail}");
    assert!(detail.contains("no TLSA record matches"), "{detail}");
    assert!(server.connections() >= 1, "the host was tried");
    no_mail_command(&server);
    let a = attempts(&d);
    assert_eq!(a[0].attributes["dane"], "authenticated");
}

#[tokio::test]
async fn bogus_tlsa_answer_defers_without_connecting() {
    let w = World::new().await;
    let tlsa = w.secure_domain("bogus.test", 63);
    // A validating resolver answers SERVFAIL for data that fails validation.
    w.dns.servfail(&tlsa);
    let cert = TestCert::self_signed(&["mx.bogus.test"]);
    let server = tls_mx(at(63, w.port), &cert).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@bogus.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, deferred).await;
    run.stop().await;
    let detail = rcpt_detail(&d, 0);
    assert!(detail.starts_with("451 4.7.5 "), "{detail}");
    assert!(detail.contains("TLSA lookup"), "{detail}");
    assert_eq!(server.connections(), 0, "an unusable host is not contacted");
    let a = attempts(&d);
    assert_eq!(a[0].attributes["dane"], "failed");
}

#[tokio::test]
async fn starttls_stripped_under_dane_is_deferred_not_downgraded() {
    let w = World::new().await;
    let tlsa = w.secure_domain("strip.test", 64);
    let cert = TestCert::self_signed(&["mx.strip.test"]);
    w.dns.tlsa(&tlsa, 3, 1, 1, &ee_spki_sha256(&cert));
    // The real receiver listens elsewhere; the MX address is the proxy's.
    let real_port = free_port().await;
    let real = tls_mx(at(65, real_port), &cert).await;
    let proxy = stripping_proxy(at(64, w.port), at(65, real_port)).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@strip.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, deferred).await;
    run.stop().await;
    proxy.abort();
    let detail = rcpt_detail(&d, 0);
    assert!(detail.starts_with("451 4.7.5 "), "{detail}");
    assert!(detail.contains("did not offer STARTTLS"), "{detail}");
    assert!(real.connections() >= 1, "the proxy was in the path");
    no_mail_command(&real);
}

#[tokio::test]
async fn insecure_tlsa_records_are_ignored() {
    // The same mismatching TLSA record as above, but the answers carry no
    // AD bit: DANE does not apply (RFC 7672 §2.2.1), TLS stays opportunistic.
    let w = World::new().await;
    let host = "mx.insecure.test";
    w.dns.mx("insecure.test", 10, host);
    w.dns.a(host, ip(66));
    let tlsa = format!("_{}._tcp.{host}", w.port);
    w.dns.tlsa(&tlsa, 3, 1, 1, &[0x11; 32]);
    let cert = TestCert::self_signed(&[host]);
    let server = tls_mx(at(66, w.port), &cert).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@insecure.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, is_done).await;
    run.stop().await;
    assert_eq!(
        rcpt_state(&d, 0),
        pb::RecipientState::Delivered,
        "{}",
        rcpt_detail(&d, 0)
    );
    assert!(server.messages()[0].tls);
    assert!(!attempts(&d)[0].attributes.contains_key("dane"));
}
