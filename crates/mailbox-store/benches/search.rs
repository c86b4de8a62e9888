//! Indexed SEARCH on a large mailbox (issue #16): loads BENCH_MESSAGES
//! (default 100,000) ~2 KiB messages into one INBOX through the real
//! `Mailboxes.Append` RPC (16 clients in parallel: hash, parse, extract the
//! text, one durable transaction each), then times `Search` with BODY
//! "word" (a rare word in 1 message out of 1,000) and prints p50/p95, with
//! a common word, a 2-character needle and TEXT for comparison.
//! Not a timed test: run it by hand,
//! `cargo bench -p mailbox-store --bench search`.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::time::{Duration, Instant};

use mailstore_api::pb;
use mailstore_api::pb::search_key::Key;
use test_kit::{TestStore, append};

const CLIENTS: usize = 16;
const RUNS: usize = 41;

/// A deterministic pseudo-random vocabulary of 20,000 made-up words.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn word(&mut self) -> String {
        let mut id = self.next() % 20_000;
        let len = 3 + (id % 7) as usize;
        let mut w = String::with_capacity(len);
        for _ in 0..len {
            w.push(char::from(b'a' + (id % 26) as u8));
            id = id / 26 + 7919;
        }
        w
    }
}

fn message(i: usize) -> Vec<u8> {
    let mut g = Words(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let subject: Vec<String> = (0..5).map(|_| g.word()).collect();
    let mut m = format!(
        "From: sender{}@example.net\r\nTo: alice@example.org\r\nSubject: {}\r\nMessage-ID: <{i}@bench>\r\nDate: Thu, 3 Dec 2026 07:00:00 +0000\r\n\r\n",
        i % 500,
        subject.join(" ")
    );
    let mut line = String::new();
    while m.len() < 2048 {
        line.clear();
        for _ in 0..10 {
            line.push_str(&g.word());
            line.push(' ');
        }
        m.push_str(line.trim_end());
        m.push_str("\r\n");
    }
    if i % 1000 == 7 {
        m.push_str("the quarterly zanzibar figures are attached\r\n");
    }
    if i % 10 == 3 {
        m.push_str("see you at the meeting\r\n");
    }
    m.into_bytes()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn time_search(store: &TestStore, mailbox_id: u64, name: &str, key: &Key) {
    let mut c = store.client().mailboxes;
    let mut lat = Vec::with_capacity(RUNS);
    let mut hits = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = c
            .search(pb::SearchRequest {
                mailbox_id,
                key: Some(pb::SearchKey {
                    key: Some(key.clone()),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        lat.push(t.elapsed());
        hits = r.uids.len();
    }
    lat.sort_unstable();
    println!(
        "search {name:<28} hits={hits:<6} p50={:>8.2} ms  p95={:>8.2} ms  max={:>8.2} ms",
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.95)),
        ms(lat[lat.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // What the text extraction adds per message, alone.
    let sample = message(7);
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(mailbox_store::text::extract(std::hint::black_box(&sample)));
    }
    println!(
        "text::extract of a {} byte message: {:.1} µs",
        sample.len(),
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );

    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user("alice@example.org", "pw").await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = store.client();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while i < n {
                let raw = message(i);
                let t = Instant::now();
                append(&client, user, "INBOX", &raw, &[]).await.unwrap();
                lat.push(t.elapsed());
                i += CLIENTS;
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
        "loaded {} messages in {:.1} s ({:.0} msg/s, {CLIENTS} clients), append p50={:.2} ms p99={:.2} ms",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
    );
    // Autovacuum would get there; do it now so that the planner has statistics.
    let pool = sqlx::PgPool::connect(&store.database_url).await.unwrap();
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .unwrap();
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_total_relation_size('blob_text'))")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!("blob_text with its indexes: {size}");
    let mb = store
        .client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    time_search(
        &store,
        mb,
        "BODY \"zanzibar\"",
        &Key::Body("zanzibar".into()),
    )
    .await;
    time_search(
        &store,
        mb,
        "BODY \"ZANZIBAR figures\"",
        &Key::Body("ZANZIBAR figures".into()),
    )
    .await;
    time_search(
        &store,
        mb,
        "TEXT \"zanzibar\"",
        &Key::Text("zanzibar".into()),
    )
    .await;
    time_search(
        &store,
        mb,
        "SUBJECT \"zanzibar\" (none)",
        &Key::Header(pb::HeaderMatch {
            field: "subject".into(),
            value: "zanzibar".into(),
        }),
    )
    .await;
    time_search(
        &store,
        mb,
        "BODY \"meeting\" (10%)",
        &Key::Body("meeting".into()),
    )
    .await;
    time_search(
        &store,
        mb,
        "BODY \"zq\" (no trigram)",
        &Key::Body("zq".into()),
    )
    .await;
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN WITH c AS MATERIALIZED (SELECT hash FROM blob_text WHERE complete AND body LIKE '%zanzibar%') \
         SELECT m.uid FROM c JOIN messages m ON m.blob_hash = c.hash WHERE m.mailbox_id = $1",
    )
    .bind(mb as i64)
    .fetch_all(&pool)
    .await
    .unwrap();
    println!("plan of BODY:\n  {}", plan.join("\n  "));
}
