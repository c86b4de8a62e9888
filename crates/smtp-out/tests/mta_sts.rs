//! MTA-STS (RFC 8461) end to end inside smtp-out: the `_mta-sts` TXT
//! record in the test DNS, the policy on a loopback HTTPS server with a
//! certificate from a test CA (trusted through `--ca-file`), MX hosts
//! that resolve to loopback, and SMTP servers with or without STARTTLS,
//! with good or bad certificates, or behind a proxy that strips STARTTLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use mailstore_api::pb;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@sts.test\r\nSubject: hello\r\n\r\nHi.\r\n";

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((ip(n), port))
}

fn policy(mode: &str, mx: &str, max_age: u64) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n")
}

struct World {
    store: test_kit::TestStore,
    dns: TestDns,
    ca: TestCa,
    port: u16,
    https_port: u16,
}

impl World {
    async fn new() -> Self {
        Self {
            store: test_kit::TestStore::start().await,
            dns: TestDns::start().await,
            ca: TestCa::new(),
            port: free_port().await,
            https_port: free_port().await,
        }
    }

    /// `domain`'s MX `mx.<domain>` on 127.0.0.n, its TXT record with
    /// `id`, and its policy host on 127.0.0.n serving `body`.
    async fn domain(&self, domain: &str, n: u8, id: &str, body: &str) -> Https {
        self.dns.mx(domain, 10, &format!("mx.{domain}"));
        self.dns.a(&format!("mx.{domain}"), ip(n));
        self.dns
            .txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id};"));
        let host = format!("mta-sts.{domain}");
        self.dns.a(&host, ip(n));
        https(at(n, self.https_port), &self.ca.leaf(&[&host]), body).await
    }

    fn config(&self) -> smtp_out::Config {
        let mut cfg = config(&self.store, self.dns.addr, self.port);
        cfg.ca_file = Some(self.ca.pem_path.clone());
        cfg.mta_sts_port = self.https_port;
        cfg
    }

    /// A server for `mx.<domain>` on 127.0.0.n with STARTTLS and a
    /// certificate for that name from the test CA.
    async fn verified_mx(&self, domain: &str, n: u8) -> Mx {
        let cert = self.ca.leaf(&[&format!("mx.{domain}")]);
        mx(at(n, self.port), move |_| Script {
            starttls: Some(""),
            cert: Some(cert.clone()),
            ..Script::default()
        })
        .await
    }
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

#[tokio::test]
async fn enforce_delivers_over_verified_tls_to_a_matching_mx() {
    let w = World::new().await;
    let policy_host = w
        .domain(
            "sts.test",
            41,
            "1",
            &policy("enforce", "mx.sts.test", 86_400),
        )
        .await;
    let server = w.verified_mx("sts.test", 41).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@sts.test"], MSG).await;
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
    let a = attempts(&d);
    assert_eq!(a[0].attributes["mta_sts"], "enforce");
    assert_eq!(a[0].attributes["tls_verified"], "true");
    assert!(!a[0].attributes.contains_key("mta_sts_failure"));
    assert_eq!(policy_host.hits(), 1);
}

#[tokio::test]
async fn enforce_defers_without_starttls_with_a_bad_certificate_or_a_foreign_mx() {
    let w = World::new().await;
    let enforce = |mx: &str| policy("enforce", mx, 86_400);
    // No STARTTLS offered at all.
    let _p1 = w
        .domain("plain.test", 42, "a1", &enforce("mx.plain.test"))
        .await;
    let plain = mx(at(42, w.port), |_| Script::default()).await;
    // STARTTLS with a self-signed certificate.
    let _p2 = w
        .domain("selfsigned.test", 43, "a2", &enforce("mx.selfsigned.test"))
        .await;
    let selfsigned = mx(at(43, w.port), |_| Script {
        starttls: Some(""),
        ..Script::default()
    })
    .await;
    // STARTTLS with a CA certificate, but for another name.
    let _p3 = w
        .domain("wrongname.test", 44, "a3", &enforce("mx.wrongname.test"))
        .await;
    let wrong_cert = w.ca.leaf(&["mx.elsewhere.test"]);
    let wrongname = mx(at(44, w.port), move |_| Script {
        starttls: Some(""),
        cert: Some(wrong_cert.clone()),
        ..Script::default()
    })
    .await;
    // An MX host the policy does not list (a spoofed MX record).
    let _p4 = w
        .domain("foreign.test", 45, "a4", &enforce("mx.real.test"))
        .await;
    let foreign = w.verified_mx("foreign.test", 45).await;
    let client = w.store.client();
    let mut ids = Vec::new();
    for d in [
        "plain.test",
        "selfsigned.test",
        "wrongname.test",
        "foreign.test",
    ] {
        let id = enqueue_outbound(&client, "alice@a.test", &[&format!("bob@{d}")], MSG).await;
        ids.push((d, id));
    }
    let run = start(w.config());
    for (domain, id) in &ids {
        let d = wait_job(&client, *id, 20, deferred).await;
        let detail = rcpt_detail(&d, 0);
        assert!(detail.starts_with("451 4.7.5 "), "{domain}: {detail}");
        assert!(detail.contains("MTA-STS"), "{domain}: {detail}");
    }
    run.stop().await;
    let mut details = Vec::new();
    for (_, id) in &ids {
        details.push(rcpt_detail(&job(&client, *id).await, 0));
    }
    assert!(
        details[0].contains("did not offer STARTTLS"),
        "{}",
        details[0]
    );
    assert!(details[1].contains("not verified"), "{}", details[1]);
    assert!(details[2].contains("not verified"), "{}", details[2]);
    assert!(details[3].contains("no MX host"), "{}", details[3]);
    // Nothing was sent anywhere; no transaction was even started.
    for server in [&plain, &selfsigned, &wrongname, &foreign] {
        assert!(server.messages().is_empty());
        assert!(
            !server.commands().iter().any(|c| c.contains("MAIL FROM")),
            "{:#?}",
            server.commands()
        );
    }
    assert_eq!(
        foreign.connections(),
        0,
        "a non-matching MX is not contacted"
    );
}

#[tokio::test]
async fn starttls_stripped_by_a_man_in_the_middle_is_deferred_not_downgraded() {
    let w = World::new().await;
    let _p = w
        .domain(
            "mitm.test",
            46,
            "m1",
            &policy("enforce", "mx.mitm.test", 86_400),
        )
        .await;
    // The real receiver listens elsewhere; the MX address is the proxy's.
    let real_port = free_port().await;
    let cert = w.ca.leaf(&["mx.mitm.test"]);
    let real = mx(at(47, real_port), move |_| Script {
        starttls: Some(""),
        cert: Some(cert.clone()),
        ..Script::default()
    })
    .await;
    let proxy = stripping_proxy(at(46, w.port), at(47, real_port)).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@mitm.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, deferred).await;
    run.stop().await;
    proxy.abort();
    let detail = rcpt_detail(&d, 0);
    assert!(detail.starts_with("451 4.7.5 "), "{detail}");
    assert!(real.connections() >= 1, "the proxy was in the path");
    assert!(real.messages().is_empty(), "nothing sent in clear");
    assert!(
        !real.commands().iter().any(|c| c.contains("MAIL FROM")),
        "{:#?}",
        real.commands()
    );
}

#[tokio::test]
async fn testing_mode_delivers_and_records_the_failure() {
    let w = World::new().await;
    let _p = w
        .domain(
            "trial.test",
            48,
            "t1",
            &policy("testing", "mx.trial.test", 86_400),
        )
        .await;
    let server = mx(at(48, w.port), |_| Script::default()).await;
    let client = w.store.client();
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@trial.test"], MSG).await;
    let run = start(w.config());
    let d = wait_job(&client, id, 20, is_done).await;
    run.stop().await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert!(!server.messages()[0].tls);
    let a = attempts(&d);
    assert_eq!(a[0].attributes["mta_sts"], "testing");
    assert_eq!(a[0].attributes["mta_sts_failure"], "no TLS");
}

#[tokio::test]
async fn policy_cache_honours_id_changes_and_max_age() {
    let w = World::new().await;
    let host = w
        .domain(
            "cache.test",
            49,
            "v1",
            &policy("enforce", "mx.cache.test", 86_400),
        )
        .await;
    let server = w.verified_mx("cache.test", 49).await;
    let client = w.store.client();
    let run = start(w.config());
    let send = || async {
        let id = enqueue_outbound(&client, "alice@a.test", &["bob@cache.test"], MSG).await;
        let d = wait_job(&client, id, 20, is_done).await;
        assert_eq!(
            rcpt_state(&d, 0),
            pb::RecipientState::Delivered,
            "{}",
            rcpt_detail(&d, 0)
        );
    };
    send().await;
    send().await;
    assert_eq!(host.hits(), 1, "same id, within max_age: cached");
    // A new id: fetched again. The new policy lives one second.
    host.set_body(&policy("enforce", "mx.cache.test", 1));
    w.dns.remove("_mta-sts.cache.test");
    w.dns.txt("_mta-sts.cache.test", "v=STSv1; id=v2;");
    tokio::time::sleep(Duration::from_millis(1_100)).await; // DNS TTL
    send().await;
    assert_eq!(host.hits(), 2, "id changed: refetched");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send().await;
    assert_eq!(host.hits(), 3, "max_age expired: refetched");
    // The policy host gone: the cached policy still applies.
    host.set_body(&policy("enforce", "mx.cache.test", 86_400));
    w.dns.remove("_mta-sts.cache.test");
    w.dns.txt("_mta-sts.cache.test", "v=STSv1; id=v3;");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send().await;
    assert_eq!(host.hits(), 4);
    drop(host);
    w.dns.remove("_mta-sts.cache.test");
    w.dns.txt("_mta-sts.cache.test", "v=STSv1; id=v4;");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The MX loses its certificate: the cached enforce policy defers.
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _downgraded = mx(at(49, w.port), |_| Script::default()).await;
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@cache.test"], MSG).await;
    let d = wait_job(&client, id, 20, deferred).await;
    assert!(
        rcpt_detail(&d, 0).contains("4.7.5"),
        "{}",
        rcpt_detail(&d, 0)
    );
    run.stop().await;
}

#[tokio::test]
async fn policy_cached_in_the_store_survives_a_restart_and_serves_another_replica() {
    let w = World::new().await;
    let host = w
        .domain(
            "shared.test",
            50,
            "s1",
            &policy("enforce", "mx.shared.test", 86_400),
        )
        .await;
    let server = w.verified_mx("shared.test", 50).await;
    let client = w.store.client();
    let run = start(w.config());
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@shared.test"], MSG).await;
    let d = wait_job(&client, id, 20, is_done).await;
    assert_eq!(
        rcpt_state(&d, 0),
        pb::RecipientState::Delivered,
        "{}",
        rcpt_detail(&d, 0)
    );
    run.stop().await;
    assert_eq!(host.hits(), 1);
    let cached = client
        .mta_sts
        .clone()
        .get_mta_sts_policy(pb::GetMtaStsPolicyRequest {
            domain: "shared.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cached.found && cached.id == "s1", "{cached:?}");
    assert!(cached.text.contains("mode: enforce"));
    // The policy host goes away and the MX loses STARTTLS (a downgrade).
    drop(host);
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let downgraded = mx(at(50, w.port), |_| Script::default()).await;
    // A new process (a restart, or another replica) with an empty memory:
    // the policy from the store still defers the mail.
    let run = start(w.config());
    let id = enqueue_outbound(&client, "alice@a.test", &["bob@shared.test"], MSG).await;
    let d = wait_job(&client, id, 20, deferred).await;
    run.stop().await;
    let detail = rcpt_detail(&d, 0);
    assert!(detail.starts_with("451 4.7.5 "), "{detail}");
    assert!(detail.contains("did not offer STARTTLS"), "{detail}");
    assert!(downgraded.messages().is_empty(), "nothing sent in clear");
}
