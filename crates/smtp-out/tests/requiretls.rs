//! REQUIRETLS (RFC 8689) on relay: a job flagged REQUIRETLS goes only over
//! TLS whose certificate is verified for the MX name, only to a server that
//! offers REQUIRETLS, with `REQUIRETLS` on MAIL FROM; otherwise it bounces
//! with 5.7.30 and nothing is sent.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use mailstore_api::pb;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@rt.test\r\nSubject: secret\r\n\r\nHi.\r\n";

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), port))
}

async fn enqueue_requiretls(client: &mailstore_api::StoreClient, to: &str) -> u64 {
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: format!("rt-{:016x}", rand::random::<u64>()),
        mail_from: "alice@a.test".into(),
        recipients: vec![pb::Recipient {
            address: to.into(),
            ..Default::default()
        }],
        requiretls: true,
        ..Default::default()
    };
    test_kit::enqueue_header(client, header, MSG)
        .await
        .unwrap()
        .job_id
}

fn failed(d: &pb::JobDetail) -> bool {
    rcpt_state(d, 0) == pb::RecipientState::Failed
}

#[tokio::test]
async fn requiretls_needs_verified_tls_and_the_extension_or_bounces_5_7_30() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let ca = TestCa::new();
    let port = free_port().await;
    let server = |domain: &str, n: u8, caps: Vec<&'static str>, cert: TestCert| {
        dns.mx(domain, 10, &format!("mx.{domain}"));
        dns.a(&format!("mx.{domain}"), Ipv4Addr::new(127, 0, 0, n));
        mx(at(n, port), move |_| Script {
            starttls: Some(""),
            caps: caps.clone(),
            cert: Some(cert.clone()),
            ..Script::default()
        })
    };
    // Verified certificate and REQUIRETLS: delivered, with the parameter.
    let good = server(
        "rt.test",
        81,
        vec!["PIPELINING", "REQUIRETLS"],
        ca.leaf(&["mx.rt.test"]),
    )
    .await;
    // Verified certificate, no REQUIRETLS.
    let old = server(
        "old.test",
        82,
        vec!["PIPELINING"],
        ca.leaf(&["mx.old.test"]),
    )
    .await;
    // REQUIRETLS offered, but a certificate nobody vouches for.
    let selfsigned = server(
        "self.test",
        83,
        vec!["REQUIRETLS"],
        TestCert::self_signed(&["mx.self.test"]),
    )
    .await;
    let client = store.client();
    let a = enqueue_requiretls(&client, "bob@rt.test").await;
    let b = enqueue_requiretls(&client, "bob@old.test").await;
    let c = enqueue_requiretls(&client, "bob@self.test").await;
    // A job without the flag to the old server still goes (opportunistic).
    let d = enqueue_outbound(&client, "alice@a.test", &["carol@old.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.ca_file = Some(ca.pem_path.clone());
    cfg.no_mta_sts = true;
    let run = start(cfg);
    let da = wait_job(&client, a, 20, is_done).await;
    let db = wait_job(&client, b, 20, failed).await;
    let dc = wait_job(&client, c, 20, failed).await;
    let dd = wait_job(&client, d, 20, is_done).await;
    run.stop().await;
    assert_eq!(
        rcpt_state(&da, 0),
        pb::RecipientState::Delivered,
        "{}",
        rcpt_detail(&da, 0)
    );
    assert!(da.job.as_ref().unwrap().requiretls);
    let mail: Vec<String> = good
        .commands()
        .into_iter()
        .filter(|c| c.contains("MAIL FROM"))
        .collect();
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].contains("[tls]") && mail[0].ends_with(" REQUIRETLS"),
        "{mail:?}"
    );
    for (d, what) in [(&db, "REQUIRETLS"), (&dc, "verified TLS")] {
        let detail = rcpt_detail(d, 0);
        assert!(detail.starts_with("550 5.7.30 "), "{detail}");
        assert!(detail.contains(what), "{detail}");
    }
    assert!(
        !old.commands()
            .iter()
            .any(|c| c.contains("MAIL FROM:<alice@a.test> ") && c.contains("REQUIRETLS")),
        "{:#?}",
        old.commands()
    );
    assert_eq!(old.messages().len(), 1, "only the unflagged message");
    assert!(
        old.messages()[0]
            .rcpts
            .contains(&"carol@old.test".to_string())
    );
    assert!(selfsigned.messages().is_empty());
    assert_eq!(rcpt_state(&dd, 0), pb::RecipientState::Delivered);
}
