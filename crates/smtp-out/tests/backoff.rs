//! Per-destination back-off: a provider that answers `421 4.7.0 Too many
//! connections` on the third parallel connection gets a pause and fewer
//! connections, and every message still arrives.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use mailstore_api::pb;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: x@busy.test\r\nSubject: burst\r\n\r\nHi.\r\n";

#[tokio::test]
async fn a_421_on_the_third_connection_pauses_and_narrows_the_destination() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    dns.mx("busy.test", 10, "mx.busy.test");
    dns.a("mx.busy.test", Ipv4Addr::new(127, 0, 0, 91));
    let server = mx(SocketAddr::from(([127, 0, 0, 91], port)), |n| {
        if n == 2 {
            Script {
                greeting: "421 4.7.0 Too many connections from your IP, slow down\r\n",
                ..Script::default()
            }
        } else {
            // Slow enough that the first two are still open at the 421.
            Script {
                data_end_delay: Some(Duration::from_millis(300)),
                ..Script::default()
            }
        }
    })
    .await;
    let client = store.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        let to = format!("user{i}@busy.test");
        ids.push(enqueue_outbound(&client, "alice@a.test", &[to.as_str()], MSG).await);
    }
    let mut cfg = config(&store, dns.addr, port);
    cfg.no_mta_sts = true;
    cfg.per_destination = 3;
    cfg.messages_per_connection = 1;
    cfg.throttle_backoff = Duration::from_secs(1);
    let run = start(cfg);
    for id in &ids {
        let d = wait_job(&client, *id, 30, is_done).await;
        assert_eq!(
            rcpt_state(&d, 0),
            pb::RecipientState::Delivered,
            "{}",
            rcpt_detail(&d, 0)
        );
    }
    run.stop().await;
    assert_eq!(server.messages().len(), 6, "every message arrived once");
    let acc = server.accepted();
    assert_eq!(acc.len(), 7, "six deliveries and the refused connection");
    assert_eq!(
        acc[..3].iter().map(|a| a.1).max(),
        Some(3),
        "three in parallel before the 421: {acc:?}"
    );
    let refused = acc[2].0;
    let next = acc[3].0.duration_since(refused);
    assert!(
        next >= Duration::from_millis(900),
        "the pause was honoured: next connection after {next:?}"
    );
    assert_eq!(
        acc[3].1, 1,
        "one connection at a time after the 421: {acc:?}"
    );
}
