//! Regressions found with Dovecot's imaptest (docs/compliance.md), each as
//! a transcript over a real loopback TCP connection to the real session
//! and the real store (test_kit::TestStore on a throw-away PostgreSQL).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};
use std::time::Duration;

const PLAIN: &[u8] = b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n";

/// imaptest `select`, `append`: EXAMINE shows \Recent without taking it;
/// SELECT takes it; a message arriving while two sessions have the mailbox
/// selected is \Recent in exactly one of them, and STATUS no longer counts
/// it (RFC 3501 §2.3.2, §6.3.2).
#[tokio::test]
async fn recent_is_shown_by_examine_and_given_to_one_session() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.ok("c", "CREATE box").await;
    a.append("p1", "box", PLAIN).await;
    a.append("p2", "box", PLAIN).await;
    let u = a.ok("e", "EXAMINE box").await;
    assert!(u.contains("* 2 RECENT"), "{u}");
    a.ok("x", "CLOSE").await;
    let u = a.ok("s", "STATUS box (RECENT)").await;
    assert!(u.contains("RECENT 2"), "{u}");
    let u = a.ok("s2", "SELECT box").await;
    assert!(u.contains("* 2 RECENT"), "{u}");
    let mut b = Client::login(&env).await;
    let u = b.ok("s", "SELECT box").await;
    assert!(u.contains("* 0 RECENT"), "{u}");
    let mut c = Client::login(&env).await;
    c.append("p3", "box", PLAIN).await;
    // Both sessions learn of message 3; the watch may take a moment.
    let mut recent = 0;
    for (cl, name) in [(&mut a, "a"), (&mut b, "b")] {
        let mut seen = String::new();
        for i in 0..200 {
            seen = cl.ok(&format!("n{i}"), "NOOP").await;
            if seen.contains("* 3 EXISTS") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.contains("* 3 EXISTS"), "{name}: {seen}");
        let u = cl.ok("f", "FETCH 3 FLAGS").await;
        if u.contains("\\Recent") {
            recent += 1;
        }
    }
    assert_eq!(recent, 1, "\\Recent must go to exactly one session");
    let u = c.ok("s", "STATUS box (RECENT)").await;
    assert!(u.contains("RECENT 0"), "{u}");
}

/// imaptest `move`: MOVE into the selected mailbox itself works (RFC 6851):
/// COPYUID, the old message expunged, the new one announced.
#[tokio::test]
async fn move_into_the_selected_mailbox() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.append("p", "INBOX", PLAIN).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("m", "MOVE 1 INBOX").await;
    assert!(u.contains("[COPYUID "), "{u}");
    assert!(u.contains("* 1 EXPUNGE"), "{u}");
    assert!(u.contains("* 1 EXISTS"), "{u}");
    let u = a.ok("f", "UID FETCH 1:* UID").await;
    assert!(u.contains("(UID 2)"), "{u}");
}

/// imaptest `search-date`: SENT* use the calendar day of the Date: field in
/// its own zone (RFC 9051 §6.4.4), here 25 March although UTC says 24.
#[tokio::test]
async fn sent_dates_are_the_days_of_the_date_field() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let msg =
        b"From: a@example.org\r\nDate: Sun, 25 Mar 2007 01:00:00 +0300\r\nSubject: d\r\n\r\nx\r\n";
    a.append("p", "INBOX", msg).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("a", "SEARCH SENTON 25-Mar-2007").await;
    assert!(u.contains("* SEARCH 1\r\n"), "{u}");
    let u = a.ok("b", "SEARCH SENTBEFORE 25-Mar-2007").await;
    assert!(u.contains("* SEARCH\r\n"), "{u}");
    let u = a.ok("c", "SEARCH SENTSINCE 25-Mar-2007").await;
    assert!(u.contains("* SEARCH 1\r\n"), "{u}");
}

/// imaptest `subscribe`, `listext`: LSUB with `%` shows the parent of a
/// subscribed mailbox as \Noselect (RFC 3501 §6.3.9); CHILDINFO only when
/// the subscribed child is not listed itself (RFC 5258 §3.5).
#[tokio::test]
async fn lsub_parents_and_childinfo() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.ok("c1", "CREATE top/mid/leaf").await;
    a.ok("s1", "SUBSCRIBE top/mid/leaf").await;
    let u = a.ok("l1", "LSUB \"\" top/%").await;
    assert!(u.contains("* LSUB (\\Noselect) \"/\" top/mid\r\n"), "{u}");
    assert!(!u.contains("leaf"), "{u}");
    let u = a
        .ok("l2", "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" top/mid")
        .await;
    assert!(
        u.contains("top/mid (\"CHILDINFO\" (\"SUBSCRIBED\"))"),
        "{u}"
    );
    let u = a
        .ok(
            "l3",
            "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (top/mid top/mid/leaf)",
        )
        .await;
    assert!(!u.contains("CHILDINFO"), "{u}");
    assert!(u.contains("top/mid/leaf"), "{u}");
}

/// imaptest stress mode: a keyword is announced in FLAGS and PERMANENTFLAGS
/// before any FETCH shows it (RFC 9051 §7.3.5), whoever set it; `NIL` is a
/// keyword like any other (imaptest `nil`).
#[tokio::test]
async fn new_keywords_are_announced_before_use() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.append("p", "INBOX", PLAIN).await;
    a.ok("s", "SELECT INBOX").await;
    let mut b = Client::login(&env).await;
    b.ok("s", "SELECT INBOX").await;
    // Set by this session: FLAGS comes before the FETCH.
    let u = a.ok("k", "STORE 1 +FLAGS ($Foo)").await;
    let flags = u.find("* FLAGS (").expect("FLAGS announced");
    let fetch = u.find("* 1 FETCH").expect("FETCH");
    assert!(flags < fetch && u[flags..].contains("$Foo"), "{u}");
    assert!(u.contains("[PERMANENTFLAGS ("), "{u}");
    // Set by another session: announced when b hears of it.
    let mut seen = String::new();
    for i in 0..200 {
        seen = b.ok(&format!("n{i}"), "NOOP").await;
        if seen.contains("$Foo") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flags = seen.find("* FLAGS (").expect("FLAGS announced to b");
    let fetch = seen.find("* 1 FETCH").expect("FETCH to b");
    assert!(flags < fetch, "{seen}");
    // Already known: not announced again.
    let u = a.ok("k2", "STORE 1 -FLAGS ($Foo)").await;
    assert!(!u.contains("* FLAGS"), "{u}");
    let u = a.ok("k3", "STORE 1 +FLAGS NIL").await;
    let flags_line = u.lines().find(|l| l.starts_with("* FLAGS (")).unwrap_or("");
    assert!(flags_line.contains(" NIL"), "{u}");
}

/// imaptest `esearch-condstore`: FETCH MODSEQ turns CONDSTORE on and says
/// HIGHESTMODSEQ (RFC 7162 §3.1); STORE answers then carry MODSEQ, and
/// ESEARCH MIN gives the MODSEQ of the message it returns (RFC 7162 §3.1.5).
#[tokio::test]
async fn fetch_modseq_enables_condstore() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.append("p1", "INBOX", PLAIN).await;
    a.append("p2", "INBOX", PLAIN).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("f", "FETCH 1 MODSEQ").await;
    assert!(u.contains("* OK [HIGHESTMODSEQ "), "{u}");
    let u = a.ok("s1", "STORE 1 +FLAGS \\Seen").await;
    assert!(u.contains("MODSEQ ("), "{u}");
    let m1: u64 = u
        .split("MODSEQ (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    a.ok("s2", "STORE 2 +FLAGS \\Seen").await;
    let u = a
        .ok("e", "SEARCH RETURN (MIN) MODSEQ \"/flags/\\\\seen\" all 1")
        .await;
    assert!(u.contains(&format!("MIN 1 MODSEQ {m1}\r\n")), "{u}");
}

/// imaptest `fetch-binary-mime-qp`: quoted-printable decoding drops the
/// transport padding and joins soft breaks (RFC 2045 §6.7).
#[tokio::test]
async fn binary_of_quoted_printable() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let msg = b"From: a@example.org\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhello  \r\nfoo\t= \r\n=62 =\r\nbar=\r\n\r\n";
    a.append("p", "INBOX", msg).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("f", "FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])").await;
    let want = "hello\r\nfoo\tb bar\r\n";
    assert!(u.contains(&format!("BINARY.SIZE[1] {}", want.len())), "{u}");
    assert!(u.contains(&format!("{{{}}}\r\n{want}", want.len())), "{u}");
}

/// imaptest `fetch-body-message-rfc822-mime`: the TEXT of an encapsulated
/// multipart message runs to the end of its part, epilogue included.
#[tokio::test]
async fn text_of_an_encapsulated_message_keeps_the_epilogue() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let msg = b"From: a@example.org\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npro\r\n--b\r\n\r\none\r\n--b--\r\nepilogue\r\n";
    a.append("p", "INBOX", msg).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("f", "FETCH 1 BODY.PEEK[1.TEXT]").await;
    assert!(
        u.contains("pro\r\n--b\r\n\r\none\r\n--b--\r\nepilogue\r\n)"),
        "{u}"
    );
}

/// imaptest `fetch-envelope`: an empty group with a comment has no member;
/// a source route is the address's adl (RFC 9051 §7.5.2).
#[tokio::test]
async fn envelope_groups_and_routes() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let msg = b"From: <@route:user@domain>\r\nCc: group: (foo) ;\r\n\r\nx\r\n";
    a.append("p", "INBOX", msg).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("f", "FETCH 1 ENVELOPE").await;
    assert!(u.contains("((NIL \"@route\" \"user\" \"domain\"))"), "{u}");
    assert!(
        u.contains("((NIL NIL \"group\" NIL)(NIL NIL NIL NIL))"),
        "{u}"
    );
}

/// imaptest `append-binary`: a binary body with NULs is kept in base64, so
/// BODY[] has no NUL, and BINARY[] gives the original octets back.
#[tokio::test]
async fn appended_binary_body_never_puts_nul_in_body() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let msg = b"From: a@example.org\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\n\r\n\n";
    a.send(format!("p APPEND INBOX ~{{{}+}}\r\n", msg.len()).as_bytes())
        .await;
    a.send(msg).await;
    a.send(b"\r\n").await;
    let (_, t) = a.until("p").await;
    assert!(t.starts_with("p OK"), "{t}");
    a.ok("s", "SELECT INBOX").await;
    a.send(b"f FETCH 1 BODY.PEEK[1]\r\n").await;
    let (u, _) = a.until("f").await;
    assert!(!u.contains(&0), "{u:?}");
    a.send(b"g FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])\r\n")
        .await;
    let (u, _) = a.until("g").await;
    let text = String::from_utf8_lossy(&u).into_owned();
    assert!(text.contains("BINARY.SIZE[1] 7 "), "{text}");
    assert!(u.windows(7).any(|w| w == b"\x00-\xe4\n\r\n\n"), "{text}");
}

/// imaptest `id`: a full ID (RFC 2971 §3.3: 30 pairs, 1,024-octet values)
/// is accepted before login.
#[tokio::test]
async fn full_id_before_login() {
    let env = env().await;
    let mut a = Client::connect(&env).await;
    let pairs: Vec<String> = (0..30)
        .map(|i| format!("\"f{i:028}\" \"{}\"", "v".repeat(1024)))
        .collect();
    let u = a.ok("i", &format!("ID ({})", pairs.join(" "))).await;
    assert!(u.contains("* ID "), "{u}");
}

/// imaptest stress mode: FETCH of a message another session expunged is
/// `NO [EXPUNGEISSUED]` (RFC 9051 §7.1), never made-up content.
#[tokio::test]
async fn fetch_of_a_message_expunged_elsewhere() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.append("p", "INBOX", PLAIN).await;
    a.ok("s", "SELECT INBOX").await;
    let mut b = Client::login(&env).await;
    b.ok("s", "SELECT INBOX").await;
    b.ok("d", "STORE 1 +FLAGS.SILENT \\Deleted").await;
    b.ok("x", "EXPUNGE").await;
    // FETCH by sequence number may not report the EXPUNGE (RFC 9051 §7.5.1).
    let (u, t) = a
        .cmd(
            "f",
            "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])",
        )
        .await;
    assert!(t.starts_with("f NO [EXPUNGEISSUED]"), "{t}\n{u}");
    assert!(!u.contains("FETCH"), "{u}");
}
