//! The store client spreads its calls over every replica (mailstore-api's
//! `connect` with a comma-separated URL list: tonic's balanced channel), and
//! keeps working when one replica dies. Each replica is reached through a
//! loopback TCP forwarder that counts the bytes it carries, so the test sees
//! which replica the calls reached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mailstore_api::pb;
use test_kit::TestStore;
use tokio::net::{TcpListener, TcpStream};

/// Forwards 127.0.0.1:<port> to `to`, counting client-to-server bytes.
async fn counting_forwarder(to: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        c.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut sw).await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_every_store_replica() {
    let mut a = TestStore::start().await;
    let b = a.replica().await;
    a.add_domain("example.org").await;
    let (fa, ca) = counting_forwarder(a.grpc_addr).await;
    let (fb, cb) = counting_forwarder(b.grpc_addr).await;
    let client = mailstore_api::connect(&format!("http://{fa}, http://{fb}"), &a.token).unwrap();

    let t0 = std::time::Instant::now();
    // Calls in parallel batches, as a busy service makes them.
    for _ in 0..20 {
        let calls = (0..10).map(|_| {
            let mut acc = client.accounts.clone();
            async move {
                acc.list_domains(pb::ListDomainsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
            }
        });
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.domains.len(), 1);
        }
    }
    let (na, nb) = (ca.load(Ordering::Relaxed), cb.load(Ordering::Relaxed));
    println!("bytes to replica a: {na}, to replica b: {nb}");
    // Each call is well over 50 bytes of HTTP/2 frames; both replicas
    // must have carried a real share of the 200, not just a handshake.
    assert!(na > 2_000 && nb > 2_000, "a={na} b={nb}");

    println!("spread: {:?}", t0.elapsed());
    // A host name: `localhost` may also resolve to ::1, where no store
    // listens; that address must not take a share of the calls.
    let by_name =
        mailstore_api::connect(&format!("http://localhost:{}", fb.port()), &a.token).unwrap();
    for _ in 0..20 {
        by_name
            .accounts
            .clone()
            .list_domains(pb::ListDomainsRequest::default())
            .await
            .unwrap();
    }

    println!("by name: {:?}", t0.elapsed());
    // One replica dies: calls keep succeeding on the other (a call caught
    // on the dying connection may fail once; the caller retries).
    a.stop().await;
    let mut ok = 0;
    for _ in 0..30 {
        if client
            .accounts
            .clone()
            .list_domains(pb::ListDomainsRequest::default())
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    assert!(
        ok >= 20,
        "only {ok} of 30 calls succeeded with one replica down"
    );
}
