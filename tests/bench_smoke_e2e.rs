//! CI smoke run of mail-bench (issue #17): every phase of the benchmark
//! client — SMTP ingest with "into mailbox" polling, accept → IDLE
//! latency, the IMAP client mix, POP3 RETR, idle connections, with the
//! server processes' CPU and PSS sampled — against the real Epistole services (smtp-in,
//! delivery, imap, pop3 over a real store and PostgreSQL), with tiny
//! sizes. It asserts that each phase produced sane figures (every message
//! accepted and arrived, latencies present, non-zero rates, CPU and PSS of
//! the server processes read), never how fast anything was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mail_bench::{idle, imap, latency, pop3, procs, quantile, smtp};
use test_kit::{ServiceProcess, TestStore, spawn_service};

const DOMAIN: &str = "bench.test";
const PASSWORD: &str = "bench smoke password";
const TLS_ONLY: [&str; 2] = ["--tls-self-signed", "--early-talker-delay-ms"];

fn users() -> Vec<String> {
    (1..=3).map(|i| format!("bench{i}@{DOMAIN}")).collect()
}

async fn start(store: &TestStore) -> Vec<ServiceProcess> {
    let smtp_in = spawn_service(
        store,
        &[
            "--log",
            "warn,rustls=error",
            "smtp-in",
            "--hostname",
            "mx.bench.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "off",
            TLS_ONLY[0],
            TLS_ONLY[1],
            "0",
            // Sender authentication needs DNS; this is about the client.
            "--inbound-auth",
            "false",
        ],
        &["mx"],
    )
    .await;
    let delivery = spawn_service(
        store,
        &[
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            "mx.bench.test",
        ],
        &[],
    )
    .await;
    let imap = spawn_service(
        store,
        &[
            "--log",
            "warn,rustls=error",
            "imap",
            "--listen",
            "off",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-self-signed",
        ],
        &["imaps"],
    )
    .await;
    let pop3 = spawn_service(
        store,
        &[
            "--log",
            "warn,rustls=error",
            "pop3",
            "--listen",
            "off",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-self-signed",
        ],
        &["pop3s"],
    )
    .await;
    vec![smtp_in, delivery, imap, pop3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mail_bench_phase_gives_sane_figures_against_epistole() {
    let store = TestStore::start().await;
    store.add_domain(DOMAIN).await;
    for u in users() {
        store.add_user(&u, PASSWORD).await;
    }
    let services = start(&store).await;
    let mx = services[0].addr("mx").to_string();
    let imaps = services[2].addr("imaps").to_string();
    let pop3s = services[3].addr("pop3s").to_string();
    let server = vec![procs::Group {
        name: "server".into(),
        roots: services.iter().filter_map(|s| s.child.id()).collect(),
    }];
    assert_eq!(server[0].roots.len(), 4, "a service has no pid");

    // SMTP: 30 messages over 3 sessions, waiting until all are in the INBOXes.
    let job = smtp::Job {
        addr: mx.clone(),
        starttls: true,
        sessions: 3,
        messages: 30,
        size_kib: 5,
        from: "sender@bench-sender.test".into(),
        rcpts: users(),
        helo: "client.bench-sender.test".into(),
    };
    let sampler = procs::Sampler::start(&server);
    let mut o = smtp::run(&job, Some((&imaps, PASSWORD))).await.unwrap();
    let usage = sampler.finish().await;
    assert_eq!((o.accepted, o.refused), (30, 0));
    assert!(o.accept_secs > 0.0);
    let visible = o.visible_secs.expect("into-mailbox time measured");
    assert!(visible >= o.accept_secs, "{visible} < {}", o.accept_secs);
    assert_eq!(o.latencies.len(), 30);
    assert!(quantile(&mut o.latencies, 0.5) > 0.0);
    assert!(usage[0].cpu_ms > 0, "no server CPU counted: {usage:?}");
    assert!(usage[0].pss_peak_mib > 1.0, "no server PSS read: {usage:?}");

    // Accept → IDLE: 5 messages, each announced by EXISTS.
    let lat = latency::Job {
        smtp: smtp::Job {
            sessions: 1,
            messages: 5,
            rcpts: vec![users()[0].clone()],
            ..job.clone()
        },
        imap: imaps.clone(),
        password: PASSWORD.into(),
        timeout: Duration::from_secs(30),
    };
    let mut o = latency::run(&lat).await.unwrap();
    assert_eq!(o.refused, 0);
    assert_eq!(o.from_250.len(), 5, "every message announced once");
    assert_eq!(o.from_dot.len(), 5);
    let p50_250 = quantile(&mut o.from_250, 0.5);
    let p50_dot = quantile(&mut o.from_dot, 0.5);
    assert!(p50_dot > 0.0, "latency from the final dot measured");
    assert!(
        p50_dot >= p50_250,
        "dot precedes 250: {p50_dot} < {p50_250}"
    );

    // IMAP mix: 3 clients, one round per login, 2 s.
    let mix = imap::Mix {
        addr: imaps.clone(),
        clients: 3,
        users: users(),
        password: PASSWORD.into(),
        loops: 1,
        duration: Duration::from_secs(2),
    };
    let o = imap::run(&mix).await.unwrap();
    assert!(o.logins >= 3, "{o:?}");
    assert!(o.commands > o.logins * 5, "{o:?}");
    for cmd in [
        "LOGIN",
        "SELECT",
        "FETCH FLAGS",
        "FETCH BODY",
        "APPEND",
        "UID EXPUNGE",
    ] {
        assert!(
            o.latency.get(cmd).is_some_and(|v| !v.is_empty()),
            "no {cmd} timed"
        );
    }

    // POP3: every user downloads what the SMTP and latency phases sent
    // (30 + 5 messages; the mix's appends were expunged again).
    let o = pop3::run(&pop3::Job {
        addr: pop3s,
        users: users(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    assert_eq!(o.messages, 35, "{o:?}");
    assert!(o.bytes >= 35 * 5 * 1024 && o.secs > 0.0, "{o:?}");

    // Idle: 20 connections from two loopback sources, held 1 s.
    let sources = idle::parse_sources("127.0.0.1,127.0.0.2").unwrap();
    let o = idle::run(
        &idle::Job {
            addr: imaps,
            users: users(),
            password: PASSWORD.into(),
            connections: 20,
            sources,
            parallel: 10,
            hold: Duration::from_secs(1),
        },
        &server,
    )
    .await
    .unwrap();
    assert_eq!(o.opened, 20);
    assert!(o.nofile >= 84);
    assert!(
        o.pss_before_kib[0] > 0 && o.pss_held_kib[0] > 0,
        "PSS not read: {o:?}"
    );
    drop(services);
}
