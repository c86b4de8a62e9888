//! QRESYNC (RFC 7162 §3.2) over a real loopback TCP connection to the real
//! session and the real store (test_kit::TestStore on a throw-away
//! PostgreSQL): resynchronisation at SELECT after expunges made by another
//! session, VANISHED (EARLIER), UID FETCH (CHANGEDSINCE n VANISHED),
//! VANISHED instead of EXPUNGE, [CLOSED], and the bounds on what the
//! client sends (threat model T122).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};

fn msg(i: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nSubject: m{i}\r\nMessage-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n"
    )
    .into_bytes()
}

/// The number in `[NAME n]` of a response.
fn code(u: &str, name: &str) -> u64 {
    let start = u
        .find(&format!("[{name} "))
        .unwrap_or_else(|| panic!("{name}: {u}"))
        + name.len()
        + 2;
    u[start..].split(']').next().unwrap().parse().unwrap()
}

/// A client with QRESYNC enabled.
async fn qresync_client(env: &common::Env) -> Client {
    let mut c = Client::login(env).await;
    let u = c.ok("e", "ENABLE QRESYNC").await;
    assert!(u.contains("* ENABLED QRESYNC"), "{u}");
    c
}

/// Six messages in INBOX (UIDs 1..6); returns (UIDVALIDITY, HIGHESTMODSEQ)
/// as a QRESYNC client sees them.
async fn six(env: &common::Env) -> (u64, u64) {
    let mut a = Client::login(env).await;
    let caps = a.ok("c", "CAPABILITY").await;
    assert!(caps.contains(" QRESYNC"), "{caps}");
    for i in 1..=6 {
        a.append(&format!("p{i}"), "INBOX", &msg(i)).await;
    }
    let mut q = qresync_client(env).await;
    let u = q.ok("s", "SELECT INBOX").await;
    assert!(u.contains("* 6 EXISTS"), "{u}");
    (code(&u, "UIDVALIDITY"), code(&u, "HIGHESTMODSEQ"))
}

/// Another session (no QRESYNC) flags message 2 and expunges 3 and 5: a
/// client coming back with its UIDVALIDITY and MODSEQ learns exactly that,
/// limited to the UIDs it says it knows (RFC 7162 §3.2.5.1).
#[tokio::test]
async fn select_resyncs_after_expunges_elsewhere() {
    let env = env().await;
    let (v, m) = six(&env).await;
    let mut b = Client::login(&env).await;
    b.ok("s", "SELECT INBOX").await;
    b.ok("f", "STORE 2 +FLAGS (\\Flagged)").await;
    b.ok("d", "STORE 3,5 +FLAGS (\\Deleted)").await;
    let u = b.ok("x", "EXPUNGE").await;
    assert_eq!(
        u, "* 3 EXPUNGE\r\n* 4 EXPUNGE\r\n",
        "no VANISHED without QRESYNC"
    );

    let mut a = qresync_client(&env).await;
    let u = a
        .ok("s", &format!("SELECT INBOX (QRESYNC ({v} {m}))"))
        .await;
    assert!(u.contains("* 4 EXISTS\r\n"), "{u}");
    assert!(u.contains("* VANISHED (EARLIER) 3,5\r\n"), "{u}");
    assert!(
        u.contains("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{u}"
    );
    // VANISHED (EARLIER) comes before the FETCH of changed messages.
    assert!(
        u.find("VANISHED").unwrap() < u.find(" FETCH ").unwrap(),
        "{u}"
    );
    // Untouched messages are not reported.
    assert!(!u.contains("* 1 FETCH") && !u.contains("* 3 FETCH"), "{u}");

    // Known UIDs narrow both parts; a re-SELECT closes the old one first.
    let u = a
        .ok("s2", &format!("SELECT INBOX (QRESYNC ({v} {m} 1,4:5))"))
        .await;
    assert!(u.starts_with("* OK [CLOSED]"), "{u}");
    assert!(u.contains("* VANISHED (EARLIER) 5\r\n"), "{u}");
    assert!(!u.contains("FETCH"), "{u}");

    // With seq-match-data (checked, not needed) and the whole UID range.
    let u = a
        .ok(
            "s3",
            &format!("EXAMINE INBOX (QRESYNC ({v} {m} 1:4294967295 (1:2 1:2)))"),
        )
        .await;
    assert!(u.contains("* VANISHED (EARLIER) 3,5\r\n"), "{u}");
    assert!(
        u.contains("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{u}"
    );

    // A newer MODSEQ: nothing happened since.
    let hms = code(&u, "HIGHESTMODSEQ");
    let u = a
        .ok("s4", &format!("SELECT INBOX (QRESYNC ({v} {hms}))"))
        .await;
    assert!(!u.contains("VANISHED") && !u.contains("FETCH"), "{u}");

    // Another UIDVALIDITY: the client's cache is void, no resync data.
    let u = a
        .ok("s5", &format!("SELECT INBOX (QRESYNC ({} {m}))", v + 1))
        .await;
    assert!(!u.contains("VANISHED") && !u.contains("FETCH"), "{u}");
    assert!(u.contains("* 4 EXISTS\r\n"), "{u}");
}

/// Once QRESYNC is on, expunges are VANISHED, whoever made them, every
/// FETCH carries the UID, and UID FETCH (CHANGEDSINCE n VANISHED) tells
/// the expunged UIDs of its set (RFC 7162 §3.2.4, §3.2.6, §3.2.10).
#[tokio::test]
async fn vanished_replaces_expunge_and_answers_changedsince() {
    let env = env().await;
    let (_, m) = six(&env).await;
    let mut a = qresync_client(&env).await;
    a.ok("s", "SELECT INBOX").await;
    let mut b = Client::login(&env).await;
    b.ok("s", "SELECT INBOX").await;
    b.ok("d", "UID STORE 2 +FLAGS (\\Deleted)").await;
    b.ok("x", "UID EXPUNGE 2").await;
    let u = a.ok("n", "NOOP").await;
    assert!(u.contains("* VANISHED 2\r\n"), "{u}");
    assert!(!u.contains("EXPUNGE"), "{u}");

    b.ok("f", "UID STORE 4 +FLAGS (\\Answered)").await;
    let u = a
        .ok(
            "f",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m} VANISHED)"),
        )
        .await;
    assert!(u.starts_with("* VANISHED (EARLIER) 2\r\n"), "{u}");
    assert!(
        u.contains("* 3 FETCH (UID 4 FLAGS (\\Answered) MODSEQ ("),
        "{u}"
    );
    assert!(!u.contains("UID 1 ") && !u.contains("UID 5 "), "{u}");
    // Outside the set: not reported.
    let u = a
        .ok(
            "f2",
            &format!("UID FETCH 3:6 (FLAGS) (CHANGEDSINCE {m} VANISHED)"),
        )
        .await;
    assert!(!u.contains("VANISHED"), "{u}");

    // FETCH by sequence number still carries the UID.
    let u = a.ok("g", "FETCH 1 (FLAGS)").await;
    assert!(u.starts_with("* 1 FETCH (UID 1 FLAGS ("), "{u}");

    // Our own EXPUNGE and MOVE answer VANISHED too.
    a.ok("d", "UID STORE 5 +FLAGS.SILENT (\\Deleted)").await;
    let u = a.ok("x", "EXPUNGE").await;
    assert_eq!(u, "* VANISHED 5\r\n");
    a.ok("c", "CREATE Keep").await;
    let u = a.ok("m", "UID MOVE 3:4 Keep").await;
    assert!(
        u.contains("* VANISHED 3:4\r\n") && !u.contains("EXPUNGE"),
        "{u}"
    );
    let u = a.ok("f3", "UID FETCH 1:* (UID)").await;
    assert_eq!(u, "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 6)\r\n");

    // VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC.
    for (t, c) in [
        (
            "b1",
            format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {m} VANISHED)"),
        ),
        ("b2", "UID FETCH 1:* (FLAGS) (VANISHED)".to_string()),
    ] {
        let (_, tagged) = a.cmd(t, &c).await;
        assert!(tagged.starts_with(&format!("{t} BAD")), "{c}: {tagged}");
    }
    let mut plain = Client::login(&env).await;
    plain.ok("s", "SELECT INBOX").await;
    let (_, t) = plain
        .cmd(
            "b3",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m} VANISHED)"),
        )
        .await;
    assert!(t.starts_with("b3 BAD"), "{t}");
}

/// [CLOSED] (RFC 7162 §3.2.11) only once QRESYNC (or IMAP4rev2) is on, and
/// the QRESYNC parameter needs ENABLE QRESYNC (§3.2.5).
#[tokio::test]
async fn closed_and_enable_requirements() {
    let env = env().await;
    let (v, m) = six(&env).await;
    let mut plain = Client::login(&env).await;
    plain.ok("s", "SELECT INBOX").await;
    let u = plain.ok("s2", "EXAMINE INBOX").await;
    assert!(!u.contains("[CLOSED]"), "{u}");
    let (_, t) = plain
        .cmd("b", &format!("SELECT INBOX (QRESYNC ({v} {m}))"))
        .await;
    assert!(t.starts_with("b BAD"), "{t}");
    // The BAD left the mailbox selected.
    plain.ok("f", "FETCH 1 (FLAGS)").await;

    let mut q = qresync_client(&env).await;
    q.ok("s", "SELECT INBOX").await;
    let u = q.ok("s2", "EXAMINE INBOX").await;
    assert!(u.starts_with("* OK [CLOSED]"), "{u}");
    // CONDSTORE came with QRESYNC: the first MODSEQ fetch does not turn
    // it on again (no HIGHESTMODSEQ announcement, RFC 7162 §3.1.2.1).
    let u = q.ok("f", "FETCH 1 (MODSEQ)").await;
    assert!(!u.contains("HIGHESTMODSEQ"), "{u}");
    assert!(u.starts_with("* 1 FETCH (UID 1 MODSEQ ("), "{u}");
    let u = q.ok("e2", "ENABLE CONDSTORE QRESYNC").await;
    assert_eq!(u, "* ENABLED\r\n");
}

/// What the client supplies is bounded (threat model T122): at most
/// 10,000 ranges of known UIDs or seq-match data, no `$`, no MODSEQ 0, the
/// two seq-match sets of one size; a huge range costs nothing.
#[tokio::test]
async fn qresync_parameters_are_bounded() {
    let env = env().await;
    let (v, m) = six(&env).await;
    let mut a = qresync_client(&env).await;
    let many = |n: usize| {
        (0..n)
            .map(|i| (2 * i + 1).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let ok_many = many(10_000);
    a.ok("s", &format!("SELECT INBOX (QRESYNC ({v} {m} {ok_many}))"))
        .await;
    let too_many = many(10_001);
    let bad = [
        format!("SELECT INBOX (QRESYNC ({v} {m} {too_many}))"),
        format!("SELECT INBOX (QRESYNC ({v} {m} 1:* ({too_many} 1:10001)))"),
        format!("SELECT INBOX (QRESYNC ({v} {m} $))"),
        format!("SELECT INBOX (QRESYNC ({v} 0))"),
        format!("SELECT INBOX (QRESYNC ({v} {m} 1:6 (1:3 1:2)))"),
        format!("SELECT INBOX (QRESYNC ({v}))"),
        format!("SELECT INBOX (QRESYNC ({v} {m}) QRESYNC ({v} {m}))"),
        format!("SELECT INBOX (QRESYNC (0 {m}))"),
        format!("SELECT INBOX (QRESYNC ({v} 99999999999999999999999))"),
        "SELECT INBOX (QRESYNC ())".to_string(),
        "SELECT INBOX ()".to_string(),
    ];
    for (i, c) in bad.iter().enumerate() {
        let t = format!("b{i}");
        let (_, tagged) = a.cmd(&t, c).await;
        assert!(tagged.starts_with(&format!("{t} BAD")), "{c}: {tagged}");
    }
    // Still usable afterwards.
    let u = a
        .ok(
            "s2",
            &format!("SELECT INBOX (CONDSTORE QRESYNC ({v} {m} 1:4294967295))"),
        )
        .await;
    assert!(u.contains("* 6 EXISTS"), "{u}");
}

/// An expunge made elsewhere cannot be announced during FETCH by
/// sequence number (RFC 9051 §7.4.1); with QRESYNC the client then gets a
/// HIGHESTMODSEQ below that expunge, so resuming from the MODSEQs it has
/// seen cannot skip it (RFC 7162 §3.2), and VANISHED follows at NOOP.
#[tokio::test]
async fn withheld_expunges_lower_highestmodseq() {
    let env = env().await;
    let (v, _) = six(&env).await;
    let mut a = qresync_client(&env).await;
    let u = a.ok("s", "SELECT INBOX").await;
    let before = code(&u, "HIGHESTMODSEQ");
    let mut b = Client::login(&env).await;
    b.ok("s", "SELECT INBOX").await;
    b.ok("d", "UID STORE 3 +FLAGS.SILENT (\\Deleted)").await;
    b.ok("x", "UID EXPUNGE 3").await;
    b.ok("f", "UID STORE 1 +FLAGS.SILENT (\\Seen)").await;
    let u = a.ok("f", "FETCH 1 (FLAGS MODSEQ)").await;
    assert!(!u.contains("VANISHED"), "{u}");
    assert!(
        u.contains("\\Seen) MODSEQ ("),
        "the flag change is shown: {u}"
    );
    let low = code(&u, "HIGHESTMODSEQ");
    let shown: u64 = u[u.rfind("MODSEQ (").unwrap() + 8..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(low < shown, "{u}");
    // Resuming from that value finds the expunge.
    let mut c = qresync_client(&env).await;
    let r = c
        .ok("s", &format!("EXAMINE INBOX (QRESYNC ({v} {low}))"))
        .await;
    assert!(r.contains("* VANISHED (EARLIER) 3\r\n"), "{r}");
    assert!(low >= before, "{before} {low}");
    let u = a.ok("n", "NOOP").await;
    assert!(u.contains("* VANISHED 3\r\n"), "{u}");
    assert!(!u.contains("HIGHESTMODSEQ"), "{u}");
}
