//! Store throughput and latency: durable enqueues and appends of 5 KiB
//! messages at 1 and 16 concurrent clients, against a real PostgreSQL with
//! fsync and synchronous_commit on (test-kit's throwaway cluster, or
//! DATABASE_URL). Prints a table; run with
//! `cargo bench -p mailbox-store --bench store`.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use test_kit::{TestStore, append, enqueue};

const SIZE: usize = 5 * 1024;

fn message(i: usize) -> Vec<u8> {
    let mut m = format!("From: bench@example.net\r\nTo: alice@example.org\r\nSubject: bench {i}\r\nMessage-ID: <{i}@bench>\r\n\r\n").into_bytes();
    while m.len() < SIZE - 2 {
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. 0123456789\r\n",
        );
    }
    m.truncate(SIZE - 2);
    m.extend_from_slice(b"\r\n");
    m
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    name: &str,
    clients: usize,
    per_client: usize,
    store: &TestStore,
    user: u64,
    append_mode: bool,
) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = store.client();
        let tag = format!("{name}-{clients}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let raw = message(c * 1_000_000 + i);
                let t = Instant::now();
                if append_mode {
                    append(&client, user, "INBOX", &raw, &[]).await.unwrap();
                } else {
                    enqueue(
                        &client,
                        &format!("{tag}-{i}"),
                        "bench@example.net",
                        &["alice@example.org"],
                        &raw,
                    )
                    .await
                    .unwrap();
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    lat.sort_unstable();
    println!(
        "{name:<8} clients={clients:<3} messages={:<6} rate={:>8.1} msg/s  p50={:>7.2} ms  p99={:>7.2} ms",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let total: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user("alice@example.org", "bench-password").await;
    let pool = sqlx::PgPool::connect(&store.database_url).await.unwrap();
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "PostgreSQL fsync={fsync} synchronous_commit={sync}; message size {SIZE} bytes; {total} messages per run"
    );
    // Warm-up.
    run("warmup", 4, 50, &store, user, false).await;
    for clients in [1, 16] {
        let per = (total / clients).max(1);
        run("enqueue", clients, per, &store, user, false).await;
        run("append", clients, per, &store, user, true).await;
    }
}
