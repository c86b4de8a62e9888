//! Who sent it: inbound SPF, DKIM, ARC and DMARC on the MX against a real
//! store and a test DNS server (crates/test-dns) serving the senders'
//! records; loops; the `From:` of submissions. Messages are checked as the
//! store holds them.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ALICE, ALICE_PW, Harness, queued_id, split_received};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use mailstore_api::pb;
use smtp_in::inbound::{Action, Checker, Policy};
use smtp_in::session::ListenerKind;
use test_dns::TestDns;

/// The session's client IP (tests/common PEER).
const CLIENT_IP: &str = "192.0.2.10";

/// A DKIM key of bank.example (selector s1), published in DNS.
struct Bank {
    key_der: Vec<u8>,
}

impl Bank {
    /// `message` with a DKIM-Signature of bank.example in front.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.sign_as("s1", message)
    }

    fn sign_as(&self, selector: &str, message: &[u8]) -> Vec<u8> {
        let key = Ed25519Key::from_pkcs8_der(&self.key_der).unwrap();
        let sig = DkimSigner::from_key(key)
            .domain("bank.example")
            .selector(selector)
            .headers(["From", "To", "Subject"])
            .sign(message)
            .unwrap();
        let mut out = sig.to_header().into_bytes();
        out.extend_from_slice(message);
        out
    }
}

/// The zones: SPF of each result kind, bank.example with DKIM and DMARC
/// p=reject, shop.example with DMARC p=quarantine.
fn zones(dns: &TestDns) -> Bank {
    dns.txt("client.example", &format!("v=spf1 ip4:{CLIENT_IP} -all"));
    dns.txt("pass.test", &format!("v=spf1 ip4:{CLIENT_IP} -all"));
    dns.txt("fail.test", "v=spf1 ip4:198.51.100.1 -all");
    dns.txt("soft.test", "v=spf1 ~all");
    dns.txt("neutral.test", "v=spf1 ?all");
    dns.servfail("temp.test");
    dns.silent("slow.test");
    dns.txt("bank.example", "v=spf1 ip4:203.0.113.5 -all");
    dns.txt("_dmarc.bank.example", "v=DMARC1; p=reject");
    dns.txt("shop.example", "v=spf1 ip4:203.0.113.6 -all");
    dns.txt("_dmarc.shop.example", "v=DMARC1; p=quarantine");
    let key_der = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&key_der).unwrap().public_key();
    dns.txt(
        "s1._domainkey.bank.example",
        &format!("v=DKIM1; k=ed25519; p={}", B64.encode(public)),
    );
    Bank { key_der }
}

async fn harness(dns: &TestDns, policy: Policy) -> Harness {
    let checker = Checker::new(Some(dns.addr), Duration::from_millis(300), policy).unwrap();
    Harness::with_inbound(checker).await
}

/// Sends one message on a fresh MX session; returns the final reply.
async fn send(h: &Harness, from: &str, body: &[u8]) -> common::Resp {
    let mut c = h.mx().await;
    let mut wire = body.to_vec();
    wire.extend_from_slice(b".\r\n");
    c.send_mail(from, &[ALICE], &wire).await
}

/// The stored message's `Authentication-Results` fields (unfolded).
fn auth_results(stored: &[u8]) -> Vec<String> {
    let (_, rest) = split_received(stored);
    let text = String::from_utf8_lossy(&rest).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields
        .into_iter()
        .filter(|f| {
            f.to_ascii_lowercase()
                .starts_with("authentication-results:")
        })
        .collect()
}

/// threat model T100: every SPF outcome — pass, fail, softfail, neutral,
/// none, temperror (SERVFAIL and a silent server) — is reported in exactly
/// one Authentication-Results field of ours, placed right below our
/// Received; an SPF fail alone is only marked by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_outcomes_reach_authentication_results() {
    let dns = TestDns::start().await;
    zones(&dns);
    let h = harness(&dns, Policy::default()).await;
    for (domain, want) in [
        ("pass.test", "spf=pass"),
        ("fail.test", "spf=fail"),
        ("soft.test", "spf=softfail"),
        ("neutral.test", "spf=neutral"),
        ("none.test", "spf=none"),
        ("temp.test", "spf=temperror"),
        ("slow.test", "spf=temperror"),
    ] {
        let from = format!("someone@{domain}");
        let body = format!("From: {from}\r\nSubject: spf {domain}\r\n\r\nhello\r\n");
        let r = send(&h, &from, body.as_bytes()).await;
        let id = queued_id(&r);
        let stored = h.message(id).await;
        let ars = auth_results(&stored);
        assert_eq!(ars.len(), 1, "{domain}: {ars:?}");
        let ar = &ars[0];
        assert!(ar.starts_with("Authentication-Results: mx.test;"), "{ar}");
        assert!(
            ar.contains(&format!("{want} ")) && ar.contains(&format!("smtp.mailfrom={from}")),
            "{domain}: expected {want}: {ar}"
        );
        assert!(
            ar.contains(
                "spf=pass (mx.test: domain of postmaster@client.example designates 192.0.2.10"
            ),
            "HELO identity: {ar}"
        );
        assert!(ar.contains("dkim=none"), "{ar}");
        assert!(ar.contains("dmarc=none"), "{ar}");
        let (_, rest) = split_received(&stored);
        assert!(rest.starts_with(b"Authentication-Results: mx.test;"));
        assert!(
            !String::from_utf8_lossy(&stored).contains("X-Epistole-Quarantine"),
            "{domain}: marked"
        );
    }
}

/// threat model T100: DKIM signatures are verified (all of them): a good
/// signature passes and aligns DMARC even from an IP SPF does not allow; a
/// broken one does not pass; a key lookup that fails is a temperror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_and_dmarc_pass_with_a_good_signature() {
    let dns = TestDns::start().await;
    let bank = zones(&dns);
    let h = harness(&dns, Policy::default()).await;
    let msg = b"From: Bank <news@bank.example>\r\nTo: alice@ours.example\r\nSubject: statement\r\n\r\nYour statement.\r\n";
    // Forwarded through a host SPF does not allow: DKIM carries DMARC.
    let r = send(&h, "bounce@none.test", &bank.sign(msg)).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    assert!(
        ar.contains("dkim=pass header.d=bank.example header.s=s1"),
        "{ar}"
    );
    assert!(
        ar.contains("dmarc=pass header.from=bank.example policy.dmarc=reject"),
        "{ar}"
    );

    // The body changed after signing: no pass, and DMARC fails: refused.
    let mut tampered = bank.sign(msg);
    tampered.extend_from_slice(b"Send your password to evil.example\r\n");
    let r = send(&h, "bounce@none.test", &tampered).await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);

    // The key's name answers SERVFAIL: temperror, and DMARC cannot fail.
    dns.servfail("s2._domainkey.bank.example");
    let r = send(&h, "bounce@none.test", &bank.sign_as("s2", msg)).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    assert!(ar.contains("dkim=temperror"), "{ar}");
    assert!(ar.contains("dmarc=temperror"), "{ar}");
}

/// A list post from list.example with that list's ARC set (i=1) on top;
/// the list's sealing key is published in `dns` (selector arc).
fn list_post_sealed_by_the_list(dns: &TestDns) -> Vec<u8> {
    use mail_auth::arc::ArcSealer;
    use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};

    let der = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
    dns.txt(
        "arc._domainkey.list.example",
        &format!("v=DKIM1; k=ed25519; p={}", B64.encode(public)),
    );
    let original =
        b"From: member@list.example\r\nTo: alice@ours.example\r\nSubject: list post\r\n\r\nHello list.\r\n";
    let parsed = AuthenticatedMessage::parse(original).unwrap();
    let results = AuthenticationResults::new("list.example");
    let set = ArcSealer::from_key(Ed25519Key::from_pkcs8_der(&der).unwrap())
        .domain("list.example")
        .selector("arc")
        .headers(["From", "To", "Subject"])
        .seal(&parsed, &results, &ArcOutput::default())
        .unwrap();
    let mut sealed = set.to_header().into_bytes();
    sealed.extend_from_slice(original);
    sealed
}

/// threat model T100: an ARC chain (RFC 8617) is verified and reported:
/// a forwarder's seal verifies (arc=pass); a body changed after sealing
/// breaks it (not pass). ARC never overrides DMARC (no trusted sealers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_chain_is_verified_and_reported() {
    let dns = TestDns::start().await;
    zones(&dns);
    let sealed = list_post_sealed_by_the_list(&dns);

    let h = harness(&dns, Policy::default()).await;
    let r = send(&h, "member@list.example", &sealed).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    assert!(ar.contains("arc=pass smtp.remote-ip=192.0.2.10"), "{ar}");

    let mut broken = sealed.clone();
    broken.extend_from_slice(b"-- \r\nlist footer added later\r\n");
    let r = send(&h, "member@list.example", &broken).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    // mail-auth calls a broken body hash "neutral", as for DKIM.
    assert!(
        !ar.contains("arc=pass") && (ar.contains("arc=fail") || ar.contains("arc=neutral")),
        "{ar}"
    );
}

/// threat model T100: a forged `From:` of a p=reject domain is refused with
/// 550 5.7.1 (enforce, the default); with quarantine it is accepted and
/// marked for Junk; with report only the header says so. p=quarantine
/// domains are marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_from_of_a_reject_domain() {
    let dns = TestDns::start().await;
    zones(&dns);
    let forged = b"From: CEO <ceo@bank.example>\r\nTo: alice@ours.example\r\nSubject: wire the money\r\n\r\nNow.\r\n";

    let h = harness(&dns, Policy::default()).await;
    let r = send(&h, "attacker@pass.test", forged).await;
    assert!(
        r.last().starts_with("550 5.7.1") && r.last().contains("bank.example"),
        "{:?}",
        r.lines
    );
    // Null sender: the HELO identity stands in; still refused.
    let r = send(&h, "", forged).await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);
    // Hiding behind a second author domain (RFC 7489 §6.6.1): each domain
    // is evaluated, in one From: field or in two.
    for from in [
        "From: someone@pass.test, CEO <ceo@bank.example>\r\n",
        "From: someone@pass.test\r\nFrom: ceo@bank.example\r\n",
    ] {
        let body = format!("{from}Subject: pay\r\n\r\nnow\r\n");
        let r = send(&h, "someone@pass.test", body.as_bytes()).await;
        assert!(r.last().starts_with("550 5.7.1"), "{from}: {:?}", r.lines);
    }
    assert!(h.jobs().await.is_empty(), "nothing queued");
    // p=quarantine: accepted, marked.
    let r = send(
        &h,
        "attacker@pass.test",
        b"From: shop@shop.example\r\nSubject: sale\r\n\r\nx\r\n",
    )
    .await;
    let stored = h.message(queued_id(&r)).await;
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("\r\nX-Epistole-Quarantine: DMARC policy of shop.example (p=quarantine)\r\n"),
        "{text}"
    );
    assert!(text.contains("policy.dmarc=quarantine"), "{text}");

    let q = harness(
        &dns,
        Policy {
            dmarc_reject: Action::Quarantine,
            ..Policy::default()
        },
    )
    .await;
    let r = send(&q, "attacker@pass.test", forged).await;
    let stored = q.message(queued_id(&r)).await;
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("X-Epistole-Quarantine: DMARC policy of bank.example (p=reject)"),
        "{text}"
    );
    let ar = auth_results(&stored).remove(0);
    assert!(ar.contains("dmarc=fail"), "{ar}");
    assert!(ar.contains("policy.dmarc=reject"), "{ar}");

    let rep = harness(
        &dns,
        Policy {
            dmarc_reject: Action::Report,
            ..Policy::default()
        },
    )
    .await;
    let r = send(&rep, "attacker@pass.test", forged).await;
    let stored = rep.message(queued_id(&r)).await;
    assert!(!String::from_utf8_lossy(&stored).contains("X-Epistole-Quarantine"));
    assert!(auth_results(&stored).remove(0).contains("dmarc=fail"));
}

/// threat model T100: a hosted domain's own choice (store, `mailctl domain
/// policy`) replaces the global flag for mail to it; with recipients in
/// several domains the strictest choice decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_domain_dmarc_choice() {
    let dns = TestDns::start().await;
    zones(&dns);
    let forged = b"From: CEO <ceo@bank.example>\r\nSubject: wire the money\r\n\r\nNow.\r\n";
    let h = harness(&dns, Policy::default()).await;
    h.store.add_domain("strict.example").await;
    h.store.add_user("sam@strict.example", "sam-secret").await;
    let set = |name: &str, action: &str| pb::SetDomainPolicyRequest {
        name: name.into(),
        dmarc_reject_action: action.into(),
    };
    let mut accounts = h.store.client().accounts;
    accounts
        .set_domain_policy(set(common::DOMAIN, "report"))
        .await
        .unwrap();
    // To ours.example only: its "report" wins over the global enforce.
    let r = send(&h, "attacker@pass.test", forged).await;
    let stored = h.message(queued_id(&r)).await;
    assert!(auth_results(&stored).remove(0).contains("dmarc=fail"));
    assert!(!String::from_utf8_lossy(&stored).contains("X-Epistole-Quarantine"));
    // To both: strict.example has no choice (global enforce): refused.
    let mut c = h.mx().await;
    let mut wire = forged.to_vec();
    wire.extend_from_slice(b".\r\n");
    let r = c
        .send_mail("attacker@pass.test", &[ALICE, "sam@strict.example"], &wire)
        .await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);
    // strict.example says quarantine, ours.example report: quarantined.
    accounts
        .set_domain_policy(set("strict.example", "quarantine"))
        .await
        .unwrap();
    let r = c
        .send_mail("attacker@pass.test", &["sam@strict.example", ALICE], &wire)
        .await;
    let stored = h.message(queued_id(&r)).await;
    assert!(
        String::from_utf8_lossy(&stored)
            .contains("X-Epistole-Quarantine: DMARC policy of bank.example"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
}

/// threat model T100: SPF fail without a passing DKIM signature follows
/// --spf-fail-action: enforce refuses, quarantine marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_fail_action() {
    let dns = TestDns::start().await;
    zones(&dns);
    let body = b"From: x@fail.test\r\nSubject: s\r\n\r\nx\r\n";
    let h = harness(
        &dns,
        Policy {
            spf_fail: Action::Enforce,
            ..Policy::default()
        },
    )
    .await;
    let r = send(&h, "x@fail.test", body).await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);
    // softfail is not fail.
    let r = send(&h, "x@soft.test", body).await;
    queued_id(&r);

    let q = harness(
        &dns,
        Policy {
            spf_fail: Action::Quarantine,
            ..Policy::default()
        },
    )
    .await;
    let r = send(&q, "x@fail.test", body).await;
    let text = String::from_utf8_lossy(&q.message(queued_id(&r)).await).into_owned();
    assert!(
        text.contains("X-Epistole-Quarantine: SPF of fail.test says fail"),
        "{text}"
    );
}

/// threat model T101: Authentication-Results claiming our authserv-id, and
/// our quarantine mark, sent from outside never reach the store; ours is
/// the only one with our authserv-id; another host's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authentication_results_removed() {
    let dns = TestDns::start().await;
    zones(&dns);
    let h = harness(&dns, Policy::default()).await;
    let msg = b"Authentication-Results: mx.test; dkim=pass header.d=bank.example; dmarc=pass\r\nAuthentication-Results: MX.TEST (trust me);\r\n\tspf=pass\r\nAuthentication-Results: relay.other.example; spf=pass\r\nX-Epistole-Quarantine: none\r\nFrom: friend@pass.test\r\nSubject: trust\r\n\r\nbody\r\n";
    let r = send(&h, "friend@pass.test", msg).await;
    let stored = h.message(queued_id(&r)).await;
    let ars = auth_results(&stored);
    assert_eq!(ars.len(), 2, "{ars:?}");
    assert!(ars[0].starts_with("Authentication-Results: mx.test;"));
    assert!(
        ars[0].contains("dkim=none"),
        "ours is the real one: {}",
        ars[0]
    );
    assert_eq!(
        ars[1],
        "Authentication-Results: relay.other.example; spf=pass"
    );
    assert!(!String::from_utf8_lossy(&stored).contains("X-Epistole-Quarantine"));

    // Without the checks (and on submission) forged ones are removed too.
    let plain = Harness::new().await;
    let r = send(&plain, "friend@pass.test", msg).await;
    let stored = plain.message(queued_id(&r)).await;
    assert_eq!(
        auth_results(&stored),
        vec!["Authentication-Results: relay.other.example; spf=pass".to_string()]
    );
}

/// threat model T102: 60 Received headers is a loop: 554 5.4.6 at the end
/// of DATA (RFC 5321 §6.3); 50 is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_loop_refused() {
    let h = Harness::new().await;
    let message = |n: usize| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "Received: from hop{i}.example by hop{}.example;\r\n\tThu, 26 Nov 2026 11:00:00 +0000\r\n",
                i + 1
            ));
        }
        m.push_str("Subject: round and round\r\n\r\nbody\r\n");
        m
    };
    let r = send(&h, "loop@remote.example", message(60).as_bytes()).await;
    assert!(r.last().starts_with("554 5.4.6"), "{:?}", r.lines);
    assert!(h.jobs().await.is_empty());
    let r = send(&h, "loop@remote.example", message(50).as_bytes()).await;
    queued_id(&r);
    // BDAT ends the same way.
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<loop@remote.example>", "250").await;
    c.expect(&format!("RCPT TO:<{ALICE}>"), "250").await;
    let m = message(60);
    c.write(format!("BDAT {} LAST\r\n", m.len()).as_bytes())
        .await;
    c.write(m.as_bytes()).await;
    c.expect_reply("554 5.4.6").await;
}

fn plain(user: &str, pw: &str) -> String {
    B64.encode(format!("\0{user}\0{pw}"))
}

/// threat model T103: on submission the envelope sender and every `From:`
/// address must be the user's (own address, plus-address or an alias that
/// delivers to them): another user, an alias of someone else and another
/// hosted domain are refused, at MAIL (553 5.7.1) and at the end of DATA
/// (550 5.7.1); the user's own alias works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_sends_only_as_owned_addresses() {
    let h = Harness::new().await;
    h.store.add_user("bob@ours.example", "bob-secret").await;
    h.store.add_domain("other.example").await;
    h.store
        .add_user("carol@other.example", "carol-secret")
        .await;
    let mut accounts = h.store.client().accounts;
    for (source, target) in [
        ("info@ours.example", ALICE),
        ("sales@ours.example", "bob@ours.example"),
    ] {
        accounts
            .create_alias(pb::CreateAliasRequest {
                source: source.into(),
                target: target.into(),
            })
            .await
            .unwrap();
    }
    let raw = h.connect(ListenerKind::Submissions).into_inner().0;
    let mut c = common::Client::new(h.tls(raw).await);
    c.expect_reply("220").await;
    c.expect("EHLO laptop", "250 ").await;
    c.expect(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)), "235")
        .await;

    for sender in [
        "bob@ours.example",
        "sales@ours.example",
        "carol@other.example",
        "alice@other.example",
        "made-up@ours.example",
    ] {
        c.expect(&format!("MAIL FROM:<{sender}>"), "553 5.7.1")
            .await;
    }
    for from in [
        "Bob <bob@ours.example>",
        "sales@ours.example",
        "carol@other.example",
        "made-up@ours.example",
        "alice@ours.example, bob@ours.example",
        "\"alice@ours.example\" <ceo@bank.example>",
        "undisclosed",
    ] {
        let body = format!("From: {from}\r\nSubject: as someone else\r\n\r\nx\r\n.\r\n");
        let r = c
            .send_mail(ALICE, &["friend@external.example"], body.as_bytes())
            .await;
        assert!(
            r.last().starts_with("550 5.7.1") && r.last().contains("From:"),
            "From: {from}: {:?}",
            r.lines
        );
    }
    // A second From: field hiding behind a good one.
    let r = c
        .send_mail(
            ALICE,
            &["friend@external.example"],
            b"From: alice@ours.example\r\nFrom: bob@ours.example\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);
    assert!(h.jobs().await.is_empty(), "nothing refused was queued");

    // Own alias, own plus-address, own address: accepted.
    for (sender, from) in [
        ("info@ours.example", "Info <info@ours.example>"),
        ("alice+news@ours.example", "alice+news@ours.example"),
        (ALICE, "Alice <ALICE@OURS.EXAMPLE>"),
    ] {
        let body = format!("From: {from}\r\nSubject: mine\r\n\r\nx\r\n.\r\n");
        let r = c
            .send_mail(sender, &["friend@external.example"], body.as_bytes())
            .await;
        queued_id(&r);
    }
    assert_eq!(h.jobs().await.len(), 3);
}

/// A sender domain without records is NXDOMAIN without an SOA (the test
/// DNS server, like some resolvers, sends none); that answer is cached
/// (30 s) so the next message from the same domain asks nothing — before,
/// every message asked again and a dropped answer cost the query timeout
/// (issue #17, docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_without_soa_are_cached() {
    let dns = TestDns::start().await;
    zones(&dns);
    let h = harness(&dns, Policy::default()).await;
    let body = b"From: someone@nowhere.test\r\nSubject: one\r\n\r\nhello\r\n";
    let r = send(&h, "someone@nowhere.test", body).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    assert!(ar.contains("spf=none"), "{ar}");
    let after_first = dns.queries();
    assert!(after_first > 0, "the first message asked nothing");
    let r = send(&h, "other@nowhere.test", body).await;
    let ar = auth_results(&h.message(queued_id(&r)).await).remove(0);
    assert!(ar.contains("spf=none") && ar.contains("dmarc=none"), "{ar}");
    assert_eq!(
        dns.queries(),
        after_first,
        "the second message from the same domain asked the DNS server again"
    );
}

/// threat model T119: a day's DMARC outcomes are recorded for the
/// aggregate report (RFC 7489 §7.2): per author domain with a DMARC
/// record, the source IP, the aligned results, what we did (reject,
/// quarantine, none) and the domain's rua with its `!size`; a domain
/// without a DMARC record leaves no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_outcomes_are_recorded_for_aggregate_reports() {
    let dns = TestDns::start().await;
    let bank = zones(&dns);
    dns.remove("_dmarc.bank.example");
    dns.txt(
        "_dmarc.bank.example",
        "v=DMARC1; p=reject; rua=mailto:dmarc@bank.example!10m",
    );
    let h = harness(&dns, Policy::default()).await;
    let msg = b"From: Bank <news@bank.example>\r\nTo: alice@ours.example\r\nSubject: statement\r\n\r\nYour statement.\r\n";
    for _ in 0..2 {
        let r = send(&h, "bounce@none.test", &bank.sign(msg)).await;
        assert!(r.last().starts_with("250"), "{:?}", r.lines);
    }
    let forged = b"From: CEO <ceo@bank.example>\r\nSubject: pay\r\n\r\nNow.\r\n";
    let r = send(&h, "attacker@pass.test", forged).await;
    assert!(r.last().starts_with("550 5.7.1"), "{:?}", r.lines);
    let r = send(
        &h,
        "attacker@pass.test",
        b"From: shop@shop.example\r\nSubject: sale\r\n\r\nx\r\n",
    )
    .await;
    assert!(r.last().starts_with("250"), "{:?}", r.lines);
    let r = send(
        &h,
        "someone@pass.test",
        b"From: someone@pass.test\r\nSubject: hi\r\n\r\nx\r\n",
    )
    .await;
    assert!(r.last().starts_with("250"), "{:?}", r.lines);

    // Recorded in the background: wait (generously) for all four.
    let client = h.store.client();
    let today = chrono::Utc::now().date_naive().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = client
            .dmarc_reports
            .clone()
            .list_dmarc_results(pb::ListDmarcResultsRequest {
                day: today.clone(),
                policy_domain: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        if rows.iter().map(|r| r.count).sum::<u64>() >= 4 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |domain: &str, disposition: &str| {
        rows.iter()
            .find(|r| r.policy_domain == domain && r.disposition == disposition)
            .unwrap_or_else(|| panic!("no {domain} {disposition} row in {rows:#?}"))
    };
    let pass = find("bank.example", "none");
    assert_eq!(pass.count, 2);
    assert_eq!(
        (pass.dkim_aligned.as_str(), pass.spf_aligned.as_str()),
        ("pass", "fail")
    );
    assert_eq!(pass.source_ip, CLIENT_IP);
    assert_eq!(pass.dkim[0].domain, "bank.example");
    assert_eq!(pass.dkim[0].selector, "s1");
    assert_eq!(pass.dkim[0].result, "pass");
    assert_eq!(pass.p, "reject");
    assert_eq!(pass.rua, ["mailto:dmarc@bank.example!10485760"]);
    let rejected = find("bank.example", "reject");
    assert_eq!(rejected.count, 1);
    assert_eq!(rejected.dkim_aligned, "fail");
    assert_eq!(rejected.envelope_from, "pass.test");
    assert_eq!(rejected.spf_result, "pass");
    let quarantined = find("shop.example", "quarantine");
    assert!(quarantined.rua.is_empty());
    assert!(
        rows.iter().all(|r| r.policy_domain != "pass.test"),
        "no DMARC record, no row: {rows:#?}"
    );
}

/// threat model T125: what our ARC seal of a forwarded message says is
/// what the checks found — a forged `From:` of a p=reject domain is sealed
/// with `dmarc=fail` in the ARC-Authentication-Results (a receiver that
/// trusts our seal learns the forgery, not a pass); a message arriving with
/// a valid chain gets `cv=pass` and i=2; a broken chain is sealed with
/// `cv=fail`, after which nobody seals it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_seal_tells_what_the_checks_found() {
    use mail_auth::arc::ArcSealer;

    let dns = TestDns::start().await;
    zones(&dns);
    let chained = list_post_sealed_by_the_list(&dns);
    let ours = Ed25519Key::generate_pkcs8().unwrap();
    let sealer = ArcSealer::from_key(mail_auth::common::crypto::DkimKey::Ed25519(
        Ed25519Key::from_pkcs8_der(&ours).unwrap(),
    ))
    .domain("ours.example")
    .selector("arc1")
    .headers(["From", "To", "Subject"]);
    let checker = Checker::new(
        Some(dns.addr),
        Duration::from_millis(300),
        Policy::default(),
    )
    .unwrap();
    let ip: std::net::IpAddr = CLIENT_IP.parse().unwrap();
    let unfold = |s: &str| s.replace("\r\n\t", " ").replace("\r\n ", " ");

    let forged = b"From: CEO <ceo@bank.example>\r\nTo: alice@ours.example\r\nSubject: wire the money\r\n\r\nNow.\r\n";
    let set = checker
        .arc_seal(
            &sealer,
            "mx.ours.example",
            ip,
            "client.example",
            "attacker@pass.test",
            forged,
        )
        .await
        .expect("sealed");
    let set = unfold(&set);
    assert!(
        set.contains("ARC-Seal: i=1; a=ed25519-sha256; s=arc1; d=ours.example; cv=none"),
        "{set}"
    );
    assert!(
        set.contains("ARC-Authentication-Results: i=1; mx.ours.example;"),
        "{set}"
    );
    assert!(set.contains("dmarc=fail"), "{set}");
    assert!(set.contains("spf=pass"), "{set}");
    assert!(!set.contains("dmarc=pass"), "{set}");

    let set = checker
        .arc_seal(
            &sealer,
            "mx.ours.example",
            ip,
            "client.example",
            "member@list.example",
            &chained,
        )
        .await
        .expect("sealed");
    let set = unfold(&set);
    assert!(set.contains("i=2"), "{set}");
    assert!(set.contains("cv=pass"), "{set}");
    assert!(set.contains("arc=pass"), "{set}");

    // A chain broken on the way (a footer added after the first seal) is
    // sealed as broken (RFC 8617 §5.1.2: cv=fail ends the chain), and a
    // chain that already ends in cv=fail is not sealed again (§5.1.1).
    let mut broken = chained.clone();
    broken.extend_from_slice(b"-- \r\nfooter added later\r\n");
    let set = checker
        .arc_seal(
            &sealer,
            "mx.ours.example",
            ip,
            "client.example",
            "member@list.example",
            &broken,
        )
        .await
        .expect("sealed as failed");
    let set = unfold(&set);
    assert!(set.contains("i=2") && set.contains("cv=fail"), "{set}");
    assert!(!set.contains("arc=pass"), "{set}");
    let mut ended = set.into_bytes();
    ended.extend_from_slice(&broken);
    assert!(
        checker
            .arc_seal(
                &sealer,
                "mx.ours.example",
                ip,
                "client.example",
                "member@list.example",
                &ended
            )
            .await
            .is_none(),
        "a chain ending in cv=fail is not sealed again"
    );
}
