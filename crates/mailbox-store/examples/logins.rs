//! Memory of the store under a login flood: 50 and then 500 concurrent
//! correct logins against a real store (test-kit: in-process, real
//! PostgreSQL), printing this process's resident memory before, at its
//! peak and 2 s after each burst (`/proc/self/status`; the gRPC clients
//! live in the same process, so the numbers are an upper bound for the
//! store). Run: `cargo run -p mailbox-store --example logins`.
//! The auth cache is off (every login hashes) unless `--cache` is given.
//!
//! `--flood`: instead, 200 clients keep guessing wrong passwords (each
//! guess a different unknown account from a different address, so no ban
//! ever stops them and every guess costs a hash) while one client logs in
//! correctly 200 times in a row; prints the latency of the correct logins
//! (p50/p99/max) and how many got a temporary failure.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mailstore_api::pb;
use test_kit::TestStore;

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

async fn burst(store: &TestStore, n: usize) {
    let before = status_kib("VmRSS:");
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(status_kib("VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut a = store.service_client().accounts;
            tokio::spawn(async move {
                a.authenticate(pb::AuthenticateRequest {
                    username: "alice@example.org".into(),
                    password: "correct horse".into(),
                    protocol: pb::Protocol::Imap as i32,
                    remote_ip: format!("10.0.{}.{}", i / 250, i % 250),
                    session_id: format!("b{i}"),
                })
                .await
                .unwrap()
                .into_inner()
                .status
            })
        })
        .collect();
    let (mut ok, mut unavailable) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            s if s == pb::AuthStatus::Ok as i32 => ok += 1,
            s if s == pb::AuthStatus::Unavailable as i32 => unavailable += 1,
            s => panic!("status {s}"),
        }
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    println!(
        "{n:>4} concurrent: ok {ok:>4} unavailable {unavailable:>4} in {took:>8.2?}   RSS before {:>8}  peak {:>8}  after {:>8}  (VmHWM {})",
        mib(before),
        mib(peak.load(Ordering::Relaxed)),
        mib(status_kib("VmRSS:")),
        mib(status_kib("VmHWM:")),
    );
}

async fn flood(store: &TestStore) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guesses = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..200u32)
        .map(|w| {
            let mut a = store.service_client().accounts;
            let (stop, guesses) = (stop.clone(), guesses.clone());
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let _ = a
                        .authenticate(pb::AuthenticateRequest {
                            username: format!("guess-{w}-{i}@example.org"),
                            password: "wrong".into(),
                            protocol: pb::Protocol::Imap as i32,
                            remote_ip: format!("10.{}.{}.{}", w % 250, i / 250 % 250, i % 250),
                            session_id: format!("f{w}-{i}"),
                        })
                        .await;
                    guesses.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut a = store.service_client().accounts;
    let mut lat = Vec::new();
    let mut unavailable = 0;
    for i in 0..200 {
        let t = Instant::now();
        let s = a
            .authenticate(pb::AuthenticateRequest {
                username: "alice@example.org".into(),
                password: "correct horse".into(),
                protocol: pb::Protocol::Imap as i32,
                remote_ip: "192.0.2.1".into(),
                session_id: format!("c{i}"),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        lat.push(t.elapsed());
        if s == pb::AuthStatus::Unavailable as i32 {
            unavailable += 1;
        } else {
            assert_eq!(s, pb::AuthStatus::Ok as i32, "status {s}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "200 correct logins under 200 concurrent wrong ones ({} guesses answered): p50 {:.1?} p99 {:.1?} max {:.1?}, temporary failures {unavailable}",
        guesses.load(Ordering::Relaxed),
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let cache = std::env::args().any(|a| a == "--cache");
    let store = if cache {
        TestStore::start().await
    } else {
        TestStore::start_tuned(|c| c.auth_cache_ttl_secs = 0).await
    };
    store.add_domain("example.org").await;
    store.add_user("alice@example.org", "correct horse").await;
    println!(
        "hash threads 2, queue 64, auth cache {}",
        if cache { "60 s" } else { "off" }
    );
    if std::env::args().any(|a| a == "--flood") {
        flood(&store).await;
        return;
    }
    for n in [50, 500, 50, 500] {
        burst(&store, n).await;
    }
}
