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

/// A loopback TCP forwarder in front of one replica.
struct Forwarder {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Forwarder {
    /// What a dead replica's pod looks like from the client: its address
    /// refuses connections and the open ones are cut.
    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

/// Forwards 127.0.0.1:<port> to `to`, counting client-to-server bytes.
async fn counting_forwarder(to: SocketAddr) -> Forwarder {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let mut tasks = tokio::task::JoinSet::new();
    // Aborting the accept loop drops the listener and, with the set it
    // owns, every forwarded connection.
    tasks.spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((client, _)) = l.accept().await {
            let c = c.clone();
            conns.spawn(async move {
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
    Forwarder {
        addr,
        bytes: count,
        tasks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_every_store_replica() {
    let mut a = TestStore::start().await;
    let b = a.replica().await;
    a.add_domain("example.org").await;
    let mut fa = counting_forwarder(a.grpc_addr).await;
    let fb = counting_forwarder(b.grpc_addr).await;
    let client =
        mailstore_api::connect(&format!("http://{}, http://{}", fa.addr, fb.addr), &a.token)
            .unwrap();

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
    let (na, nb) = (
        fa.bytes.load(Ordering::Relaxed),
        fb.bytes.load(Ordering::Relaxed),
    );
    println!("bytes to replica a: {na}, to replica b: {nb}");
    // Each call is well over 50 bytes of HTTP/2 frames; both replicas
    // must have carried a real share of the 200, not just a handshake.
    assert!(na > 2_000 && nb > 2_000, "a={na} b={nb}");

    // A host name: `localhost` may also resolve to ::1, where no store
    // listens; that address must not take a share of the calls.
    let by_name =
        mailstore_api::connect(&format!("http://localhost:{}", fb.addr.port()), &a.token).unwrap();
    for _ in 0..20 {
        by_name
            .accounts
            .clone()
            .list_domains(pb::ListDomainsRequest::default())
            .await
            .unwrap();
    }

    // One replica dies (its address refuses connections, as a dead pod's
    // does). Calls made in the moment it dies may fail (the caller
    // retries); once the client has probed the set again, every call goes
    // to the live replica.
    a.stop().await;
    fa.kill();
    for _ in 0..5 {
        let _ = client
            .accounts
            .clone()
            .list_domains(pb::ListDomainsRequest::default())
            .await;
    }
    tokio::time::sleep(mailstore_api::PROBE_EVERY * 3).await;
    let before = fb.bytes.load(Ordering::Relaxed);
    for i in 0..30 {
        let r = client
            .accounts
            .clone()
            .list_domains(pb::ListDomainsRequest::default())
            .await;
        assert!(r.is_ok(), "call {i} failed with one replica down: {r:?}");
    }
    assert!(
        fb.bytes.load(Ordering::Relaxed) > before + 30 * 50,
        "the calls did not reach the live replica"
    );
}
