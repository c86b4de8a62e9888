//! The listener layer: real TCP sockets on 127.0.0.1 port 0, connection
//! limits, graceful shutdown. Against a real store.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Client;
use service_kit::Shutdown;
use test_kit::TestStore;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_and_graceful_shutdown() {
    let store = TestStore::start().await;
    let mut config = smtp_in::Config::new(&store.grpc_url, &store.token);
    config.listener.max_connections_per_ip = 2;
    let server = smtp_in::Server::bind(&config).await.unwrap();
    let addrs = server.local_addrs();
    let mx = addrs.iter().find(|(n, _)| *n == "mx").unwrap().1;
    assert!(addrs.iter().any(|(n, _)| *n == "submission"));
    assert!(addrs.iter().any(|(n, _)| *n == "submissions"));
    assert_ne!(mx.port(), 0);
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    let mut a = Client::new(TcpStream::connect(mx).await.unwrap());
    a.expect_reply("220 mx.test").await;
    let mut b = Client::new(TcpStream::connect(mx).await.unwrap());
    b.expect_reply("220").await;
    let mut over = Client::new(TcpStream::connect(mx).await.unwrap());
    over.expect_reply("421 4.7.0").await;
    assert!(over.reply().await.is_none());

    // A slot frees up when a session ends.
    b.expect("QUIT", "221").await;
    assert!(b.reply().await.is_none());
    let mut c = None;
    for _ in 0..50 {
        let mut again = Client::new(TcpStream::connect(mx).await.unwrap());
        let r = again.reply().await.unwrap();
        if r.code() == 220 {
            c = Some(again);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = c.expect("a connection slot was never released");
    c.expect("EHLO x", "250").await;

    // Shutdown: idle sessions are told 421 4.3.2, and serve() returns.
    shutdown.cancel();
    a.expect_reply("421 4.3.2").await;
    c.expect_reply("421 4.3.2").await;
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(mx).await.is_err(),
        "still listening after shutdown"
    );
}
