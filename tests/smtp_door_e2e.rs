//! End-to-end tests of smtp-in's door (issue #13): the real `epistole
//! smtp-in` binary, a real mailbox-store over PostgreSQL (test_kit), raw
//! TCP clients bound to chosen loopback source addresses.
//!
//! - `drip_attack_is_cut_while_normal_mail_flows`: 300 slow senders are cut
//!   at their deadlines with `421 4.4.2` while a normal client is served.
//! - `refused_bdat_chunk_streams_through`, `spool_full_answers_452_at_data`:
//!   the spool budget (RFC 3463 X.3.1) and a refused chunk never held.
//! - `plaintext_auth_only_for_loopback`, `throttled_auth_is_454_and_counts`.
//! - `greet_pass_skips_the_pause_on_every_replica`,
//!   `hourly_limits_hold_across_replicas`: need the store's Guard service
//!   (mailbox-store with `guard.proto` implemented).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use test_kit::{ServiceProcess, TestStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const DOMAIN: &str = "ours.example";
const ALICE: &str = "alice@ours.example";
const ALICE_PW: &str = "alice-door-secret";
const BOB: &str = "bob@ours.example";

async fn store() -> TestStore {
    let store = TestStore::start().await;
    store.add_domain(DOMAIN).await;
    store.add_user(ALICE, ALICE_PW).await;
    store.add_user(BOB, "bob-door-secret").await;
    store
}

/// `epistole smtp-in` on loopback with `extra` flags.
async fn smtp_in(store: &TestStore, extra: &[&str]) -> ServiceProcess {
    let mut args = vec![
        "--log",
        "warn",
        "smtp-in",
        "--hostname",
        "mx.test",
        "--mx-listen",
        "127.0.0.1:0",
        "--submission-listen",
        "127.0.0.1:0",
        "--submissions-listen",
        "off",
        "--http-listen",
        "off",
        "--store-timeout-ms",
        "5000",
    ];
    args.extend_from_slice(extra);
    test_kit::spawn_service(store, &args, &["mx", "submission"]).await
}

/// `(VmRSS, VmHWM)` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A raw SMTP client.
struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    /// Connects from `src` (a loopback address) to `to`.
    async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((src, 0))).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let (r, w) = stream.into_split();
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    /// One whole reply (all its lines), or "EOF".
    async fn reply(&mut self) -> String {
        read_reply(&mut self.r).await
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// Sends a command line and checks the reply's start.
    async fn cmd(&mut self, line: &str, want: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let got = self.reply().await;
        assert!(got.starts_with(want), "{line}: want {want}, got {got:?}");
        got
    }

    /// After a final reply the server closes: nothing more, then EOF.
    async fn expect_eof(&mut self) {
        expect_eof(&mut self.r).await;
    }

    /// EHLO, MAIL, RCPT to Alice, DATA → 354.
    async fn open_data(&mut self) {
        assert!(self.reply().await.starts_with("220"));
        self.cmd("EHLO client.example", "250").await;
        self.cmd("MAIL FROM:<someone@remote.example>", "250").await;
        self.cmd(&format!("RCPT TO:<{ALICE}>"), "250").await;
        self.cmd("DATA", "354").await;
    }

    /// A whole message of about `size` bytes, expecting 250.
    async fn send_message(&mut self, size: usize) -> String {
        self.open_data().await;
        self.send(b"Subject: normal\r\n\r\n").await;
        let line = [b"x".repeat(98), b"\r\n".to_vec()].concat();
        for _ in 0..size / line.len() {
            self.send(&line).await;
        }
        self.send(b".\r\n").await;
        let got = self.reply().await;
        assert!(got.starts_with("250 2.0.0"), "{got:?}");
        self.cmd("QUIT", "221").await;
        got
    }
}

/// One whole reply (all its lines), or "EOF".
async fn read_reply(r: &mut BufReader<OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
            .await
            .expect("no reply within 60 s")
            .unwrap_or(0);
        if n == 0 {
            return if all.is_empty() { "EOF".into() } else { all };
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Nothing more from the server, then EOF (or a reset).
async fn expect_eof(r: &mut BufReader<OwnedReadHalf>) {
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut rest))
        .await
        .expect("server did not close");
    assert!(n.is_err() || rest.is_empty(), "{rest:?}");
}

/// How each attacker drips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drip {
    /// One byte every 2 s of a command line that never ends, before EHLO.
    BeforeEhlo,
    /// Into DATA, one byte every 2 s: under the minimum rate.
    SlowData,
    /// Into DATA, 16 KiB at once, then 100 B/s: above the rate, held until
    /// the data phase deadline.
    SteadyData,
}

/// One attacker: drips until cut; returns the final reply and the time from
/// the start of its slow phase to the cut.
async fn attacker(src: Ipv4Addr, mx: SocketAddr, how: Drip) -> (String, Duration) {
    let mut c = Client::connect_from(src, mx).await;
    let start = Instant::now();
    let (chunk, every): (&[u8], _) = match how {
        Drip::BeforeEhlo => {
            assert!(c.reply().await.starts_with("220"));
            (b"E", Duration::from_secs(2))
        }
        Drip::SlowData => {
            c.open_data().await;
            (b"x", Duration::from_secs(2))
        }
        Drip::SteadyData => {
            c.open_data().await;
            c.send(&[b'y'; 16 * 1024]).await;
            (&[b'z'; 100], Duration::from_secs(1))
        }
    };
    let phase = if how == Drip::BeforeEhlo {
        start
    } else {
        Instant::now()
    };
    let Client { mut r, mut w } = c;
    let mut cut = tokio::spawn(async move {
        let reply = read_reply(&mut r).await;
        let took = phase.elapsed();
        expect_eof(&mut r).await;
        (reply, took)
    });
    loop {
        tokio::select! {
            res = &mut cut => return res.unwrap(),
            () = tokio::time::sleep(every) => {
                // Fails once the server has closed; the reader sees why.
                let _ = w.write_all(chunk).await;
            }
        }
    }
}

/// Issue #13 acceptance: 300 slow senders (about 100 of each kind) from
/// six source addresses (50 each, the per-IP default), cut at their deadlines with `421 4.4.2`,
/// while a normal client sends a message; smtp-in's memory stays low and
/// the spool budget is given back (a 5 MiB message fits in an 8 MiB budget
/// afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drip_attack_is_cut_while_normal_mail_flows() {
    let store = store().await;
    let service = smtp_in(
        &store,
        &[
            "--early-talker-delay-ms",
            "0",
            "--session-timeout",
            "12",
            "--data-phase-timeout",
            "6",
            "--min-data-rate",
            "64",
            "--min-data-rate-grace",
            "3",
            "--spool-memory-mb",
            "8",
        ],
    )
    .await;
    let mx = service.addr("mx");
    let pid = service.child.id().unwrap();
    let (rss0, _) = memory_kib(pid);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..300usize {
        let src = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i % 6).unwrap());
        let how = [Drip::BeforeEhlo, Drip::SlowData, Drip::SteadyData][i / 6 % 3];
        attackers.push((how, tokio::spawn(attacker(src, mx, how))));
    }
    // While they drip: a normal client is served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let mut normal = Client::connect_from(Ipv4Addr::LOCALHOST, mx).await;
    normal.send_message(2000).await;
    let normal_took = t.elapsed();
    let (rss_attack, hwm_attack) = memory_kib(pid);
    let mut peak_rss = rss_attack;
    let mut cut = std::collections::HashMap::new();
    for (how, task) in attackers {
        let (reply, took) = task.await.unwrap();
        let (rss, _) = memory_kib(pid);
        peak_rss = peak_rss.max(rss);
        // Lower bounds a second under the deadline: the client's clock
        // starts when its task runs again after connect (or after 354),
        // which on a loaded box can be later than the server's.
        let (lower, text) = match how {
            Drip::BeforeEhlo => (Duration::from_secs(11), "Session time limit"),
            Drip::SlowData => (Duration::from_secs(2), "Data rate too low"),
            Drip::SteadyData => (Duration::from_secs(5), "Data time limit"),
        };
        assert!(
            reply.starts_with("421 4.4.2") && reply.contains(text),
            "{how:?}: {reply:?}"
        );
        assert!(took >= lower, "{how:?} cut early after {took:?}");
        assert!(took < lower + Duration::from_secs(40), "{how:?}: {took:?}");
        let e: &mut Vec<Duration> = cut.entry(format!("{how:?}")).or_default();
        e.push(took);
    }
    let attack_took = started.elapsed();
    // Every spooled byte was given back: 5 MiB fits the 8 MiB budget.
    let mut after = Client::connect_from(Ipv4Addr::LOCALHOST, mx).await;
    after.send_message(5 * 1024 * 1024).await;
    let (rss_end, hwm_end) = memory_kib(pid);
    for (how, times) in &cut {
        let max = times.iter().max().unwrap();
        let min = times.iter().min().unwrap();
        println!("{how}: {} cut, after {min:?} .. {max:?}", times.len());
    }
    println!(
        "normal client: 250 in {normal_took:?} during the attack; attack over in {attack_took:?}"
    );
    println!(
        "smtp-in memory: VmRSS {} KiB at start, {rss_attack} KiB during the attack \
         (peak seen {peak_rss} KiB), {rss_end} KiB at the end; VmHWM {hwm_attack} KiB \
         during, {hwm_end} KiB at the end",
        rss0
    );
    assert_eq!(cut.values().map(Vec::len).sum::<usize>(), 300);
    assert!(hwm_end < 200 * 1024, "VmHWM {hwm_end} KiB over 200 MiB");
}

/// T47: a 50 MB BDAT chunk refused (over the 4 MiB spool budget) is read
/// and dropped as it streams; smtp-in's peak memory does not grow by
/// anything like 50 MB, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bdat_chunk_streams_through() {
    let store = store().await;
    let service = smtp_in(
        &store,
        &[
            "--early-talker-delay-ms",
            "0",
            "--max-message-size",
            "60000000",
            "--spool-memory-mb",
            "4",
        ],
    )
    .await;
    let pid = service.child.id().unwrap();
    let mut c = Client::connect_from(Ipv4Addr::LOCALHOST, service.addr("mx")).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<big@remote.example>", "250").await;
    c.cmd(&format!("RCPT TO:<{ALICE}>"), "250").await;
    let (_, hwm_before) = memory_kib(pid);
    const SIZE: usize = 50_000_000;
    c.send(format!("BDAT {SIZE} LAST\r\n").as_bytes()).await;
    let line = [b"b".repeat(998), b"\r\n".to_vec()].concat();
    for _ in 0..SIZE / line.len() {
        c.send(&line).await;
    }
    let got = c.reply().await;
    assert!(got.starts_with("452 4.3.1"), "{got:?}");
    let (rss, hwm_after) = memory_kib(pid);
    println!(
        "refused 50 MB BDAT: VmHWM {hwm_before} KiB before, {hwm_after} KiB after, \
         VmRSS {rss} KiB"
    );
    assert!(
        hwm_after < hwm_before + 24 * 1024,
        "peak grew by {} KiB",
        hwm_after - hwm_before
    );
    // The stream is in step: the next command is a command.
    c.cmd("RSET", "250").await;
    c.cmd("QUIT", "221").await;
}

/// RFC 3463 X.3.1: with the spool budget held by another session, DATA is
/// answered `452 4.3.1` at once (no 354, nothing read); once the budget is
/// given back, the same client's DATA goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_answers_452_at_data() {
    let store = store().await;
    let service = smtp_in(
        &store,
        &["--early-talker-delay-ms", "0", "--spool-memory-mb", "1"],
    )
    .await;
    let mx = service.addr("mx");
    let mut hog = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), mx).await;
    assert!(hog.reply().await.starts_with("220"));
    hog.cmd("EHLO hog.example", "250").await;
    hog.cmd("MAIL FROM:<hog@remote.example>", "250").await;
    hog.cmd(&format!("RCPT TO:<{ALICE}>"), "250").await;
    let line = [b"h".repeat(98), b"\r\n".to_vec()].concat();
    hog.send(b"BDAT 1000000\r\n").await;
    for _ in 0..10_000 {
        hog.send(&line).await;
    }
    let got = hog.reply().await;
    assert!(got.starts_with("250"), "{got:?}");

    let mut c = Client::connect_from(Ipv4Addr::LOCALHOST, mx).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO client.example", "250").await;
    c.cmd("MAIL FROM:<someone@remote.example>", "250").await;
    c.cmd(&format!("RCPT TO:<{ALICE}>"), "250").await;
    c.cmd("DATA", "452 4.3.1").await;
    hog.cmd("RSET", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"Subject: fits now\r\n\r\nhello\r\n.\r\n").await;
    let got = c.reply().await;
    assert!(got.starts_with("250 2.0.0"), "{got:?}");
}

fn plain(user: &str, pw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"))
}

/// T48: `--allow-plaintext-auth` works for loopback peers only. The peer is
/// what a trusted PROXY header says, so one loopback listener shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_auth_only_for_loopback() {
    let store = store().await;
    let service = smtp_in(
        &store,
        &["--allow-plaintext-auth", "--proxy-trusted", "127.0.0.0/8"],
    )
    .await;
    let submission = service.addr("submission");
    let port = submission.port();
    let auth = format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW));

    let mut far = Client::connect_from(Ipv4Addr::LOCALHOST, submission).await;
    far.send(format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n").as_bytes())
        .await;
    assert!(far.reply().await.starts_with("220"));
    let ehlo = far.cmd("EHLO far.example", "250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    far.cmd(&auth, "530 5.7.0").await;

    let mut near = Client::connect_from(Ipv4Addr::LOCALHOST, submission).await;
    near.send(format!("PROXY TCP4 127.0.0.1 127.0.0.1 40001 {port}\r\n").as_bytes())
        .await;
    assert!(near.reply().await.starts_with("220"));
    let ehlo = near.cmd("EHLO near.example", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    near.cmd(&auth, "235").await;
}

/// RFC 4954 §6: when the store throttles authentication (too many failures
/// from this address) smtp-in answers `454 4.7.0`, and each 454 counts as a
/// client error: the session ends at --max-errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_auth_is_454_and_counts() {
    let store = store().await;
    let service = smtp_in(
        &store,
        &[
            "--allow-plaintext-auth",
            "--max-errors",
            "60",
            "--error-delay-ms",
            "0",
        ],
    )
    .await;
    let mut c = Client::connect_from(Ipv4Addr::LOCALHOST, service.addr("submission")).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO guesser.example", "250").await;
    let wrong = format!("AUTH PLAIN {}", plain(ALICE, "wrong"));
    let (mut failed, mut throttled) = (0, 0);
    let last = loop {
        c.send(format!("{wrong}\r\n").as_bytes()).await;
        let got = c.reply().await;
        if got.starts_with("535 5.7.8") {
            failed += 1;
        } else if got.starts_with("454 4.7.0") {
            throttled += 1;
        } else {
            break got;
        }
    };
    println!("{failed} × 535 then {throttled} × 454, then {last:?}");
    assert!(throttled > 0, "never throttled");
    assert_eq!(failed + throttled, 60, "every 535 and 454 counted");
    assert!(last.contains("421 4.7.0"), "{last:?}");
}

/// Needs the store's Guard. A client that waited out the pause on replica
/// A and sent a good MAIL is greeted at once by replica B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greet_pass_skips_the_pause_on_every_replica() {
    let store = store().await;
    let flags = ["--early-talker-delay-ms", "10000"];
    let a = smtp_in(&store, &flags).await;
    let b = smtp_in(&store, &flags).await;
    let src = Ipv4Addr::new(127, 0, 0, 9);

    let t = Instant::now();
    let mut c = Client::connect_from(src, a.addr("mx")).await;
    assert!(c.reply().await.starts_with("220"));
    let paused = t.elapsed();
    assert!(paused >= Duration::from_secs(9), "{paused:?}");
    c.cmd("EHLO relay.example", "250").await;
    c.cmd("MAIL FROM:<list@remote.example>", "250").await;
    c.cmd("QUIT", "221").await;

    let mut greeted = Duration::MAX;
    // The mark is written in the background after MAIL's reply.
    for _ in 0..3 {
        let t = Instant::now();
        let mut c = Client::connect_from(src, b.addr("mx")).await;
        assert!(c.reply().await.starts_with("220"));
        greeted = t.elapsed();
        c.cmd("QUIT", "221").await;
        if greeted < Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("first greeting after {paused:?}, later greeting after {greeted:?}");
    assert!(
        greeted < Duration::from_secs(5),
        "still paused: {greeted:?}"
    );
    // Its next 100 connections, on either replica, are greeted at once.
    let t = Instant::now();
    for i in 0..100 {
        let mx = if i % 2 == 0 {
            a.addr("mx")
        } else {
            b.addr("mx")
        };
        let mut c = Client::connect_from(src, mx).await;
        assert!(c.reply().await.starts_with("220"));
        c.cmd("QUIT", "221").await;
    }
    let hundred = t.elapsed();
    println!("100 more connections greeted in {hundred:?}");
    assert!(hundred < Duration::from_secs(60), "{hundred:?}");
    // A client without that record that talks first is still refused.
    let mut talker = Client::connect_from(Ipv4Addr::new(127, 0, 0, 11), a.addr("mx")).await;
    talker.send(b"EHLO impatient.example\r\n").await;
    let refused = talker.reply().await;
    assert!(refused.starts_with("554"), "{refused}");
}

/// Needs the store's Guard. Hourly limits per IP on the MX and per
/// account on submission hold across two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_limits_hold_across_replicas() {
    let store = store().await;
    let flags = [
        "--early-talker-delay-ms",
        "0",
        "--allow-plaintext-auth",
        "--max-messages-per-ip-hour",
        "2",
        "--max-recipients-per-ip-hour",
        "3",
        "--max-messages-per-account-hour",
        "1",
    ];
    let a = smtp_in(&store, &flags).await;
    let b = smtp_in(&store, &flags).await;
    let src = Ipv4Addr::new(127, 0, 0, 10);
    let rcpt = format!("RCPT TO:<{ALICE}>");

    let mut c = Client::connect_from(src, a.addr("mx")).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO relay.example", "250").await;
    c.cmd("MAIL FROM:<one@remote.example>", "250").await;
    c.cmd(&rcpt, "250").await;
    c.cmd(&format!("RCPT TO:<{BOB}>"), "250").await;
    c.cmd("RSET", "250").await;
    let mut c = Client::connect_from(src, b.addr("mx")).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO relay.example", "250").await;
    c.cmd("MAIL FROM:<two@remote.example>", "250").await;
    c.cmd(&rcpt, "250").await;
    c.cmd(&format!("RCPT TO:<{BOB}>"), "450 4.7.1").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<three@remote.example>", "421 4.7.0").await;
    c.expect_eof().await;

    let auth = format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW));
    let mut s = Client::connect_from(Ipv4Addr::LOCALHOST, a.addr("submission")).await;
    assert!(s.reply().await.starts_with("220"));
    s.cmd("EHLO laptop.example", "250").await;
    s.cmd(&auth, "235").await;
    s.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    let mut s = Client::connect_from(Ipv4Addr::LOCALHOST, b.addr("submission")).await;
    assert!(s.reply().await.starts_with("220"));
    s.cmd("EHLO laptop.example", "250").await;
    s.cmd(&auth, "235").await;
    s.cmd(&format!("MAIL FROM:<{ALICE}>"), "421 4.7.0").await;
}
