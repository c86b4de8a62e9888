//! SORT, ESORT and THREAD (RFC 5256, 5267, 5957) over a real loopback TCP
//! connection to the real session and the real store (test_kit::TestStore
//! on a throw-away PostgreSQL).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};

fn msg(from: &str, to: &str, date: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nDate: {date}\r\nSubject: {subject}\r\n\r\n{body}\r\n")
        .into_bytes()
}

/// Four messages; UIDs and sequence numbers 1..4 in INBOX.
async fn four(a: &mut Client) {
    let m = [
        msg(
            "Zed <z@example.org>",
            "d@example.org",
            "Mon, 1 Jan 2024 10:00:00 +0000",
            "Re: beta",
            &"a".repeat(400),
        ),
        msg(
            "c@example.org",
            "Alice <a@example.org>",
            "Mon, 1 Jan 2024 12:00:00 +0100",
            "alpha",
            "x",
        ),
        msg(
            "=?UTF-8?Q?Bob?= <b@example.org>",
            "b@example.org",
            "Tue, 2 Jan 2024 09:00:00 +0000",
            "Fwd: Alpha",
            &"b".repeat(100),
        ),
        msg(
            "a@example.org",
            "c@example.org",
            "Sun, 31 Dec 2023 09:00:00 +0000",
            "[list] beta (fwd)",
            &"c".repeat(200),
        ),
    ];
    for (i, m) in m.iter().enumerate() {
        a.append(&format!("p{i}"), "INBOX", m).await;
    }
}

/// SORT by each criterion, REVERSE, multiple criteria, search criteria
/// narrowing the set, UID SORT, and SORT=DISPLAY (RFC 5256 §3, RFC 5957).
#[tokio::test]
async fn sort_orders_by_criteria_from_the_envelope() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let u = a.ok("c", "CAPABILITY").await;
    for cap in [
        " SORT ",
        " SORT=DISPLAY ",
        " THREAD=ORDEREDSUBJECT ",
        " ESORT ",
    ] {
        assert!(u.contains(cap), "{cap}: {u}");
    }
    four(&mut a).await;
    a.ok("s", "SELECT INBOX").await;
    let cases = [
        ("SORT (SUBJECT) UTF-8 ALL", "* SORT 2 3 1 4\r\n"),
        ("SORT (DATE) UTF-8 ALL", "* SORT 4 1 2 3\r\n"),
        ("SORT (REVERSE DATE) UTF-8 ALL", "* SORT 3 2 1 4\r\n"),
        ("SORT (ARRIVAL) UTF-8 ALL", "* SORT 1 2 3 4\r\n"),
        ("SORT (SIZE) UTF-8 ALL", "* SORT 2 3 4 1\r\n"),
        ("SORT (FROM) UTF-8 ALL", "* SORT 4 3 2 1\r\n"),
        ("SORT (TO) UTF-8 ALL", "* SORT 2 3 4 1\r\n"),
        ("SORT (CC) UTF-8 ALL", "* SORT 1 2 3 4\r\n"),
        (
            "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
            "* SORT 3 2 1 4\r\n",
        ),
        ("SORT (DISPLAYFROM) UTF-8 ALL", "* SORT 4 3 2 1\r\n"),
        ("SORT (DISPLAYTO) UTF-8 ALL", "* SORT 2 3 4 1\r\n"),
        ("SORT (SUBJECT) US-ASCII SUBJECT beta", "* SORT 1 4\r\n"),
        ("SORT (SUBJECT) UTF-8 SUBJECT nothing", "* SORT\r\n"),
    ];
    for (c, want) in cases {
        assert_eq!(a.ok("t", c).await, want, "{c}");
    }
    // UID SORT answers UIDs: expunge 1, numbers shift, UIDs do not.
    a.ok("d", "STORE 1 +FLAGS (\\Deleted)").await;
    a.ok("e", "EXPUNGE").await;
    assert_eq!(
        a.ok("t", "SORT (SUBJECT) UTF-8 ALL").await,
        "* SORT 1 2 3\r\n"
    );
    assert_eq!(
        a.ok("t", "UID SORT (SUBJECT) UTF-8 ALL").await,
        "* SORT 2 3 4\r\n"
    );
    // Errors: unknown charset NO [BADCHARSET], unknown key BAD.
    let (_, t) = a.cmd("x", "SORT (DATE) KOI8-R ALL").await;
    assert!(t.starts_with("x NO [BADCHARSET"), "{t}");
    let (_, t) = a.cmd("y", "SORT (COLOUR) UTF-8 ALL").await;
    assert!(t.starts_with("y BAD"), "{t}");
}

/// ESORT (RFC 5267 §3): RETURN options on SORT give an ESEARCH reply whose
/// MIN/MAX are the first/last in sort order and ALL keeps the sort order.
#[tokio::test]
async fn esort_returns_min_max_count_all_in_sort_order() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    four(&mut a).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a
        .ok("t1", "SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
        .await;
    assert_eq!(
        u,
        "* ESEARCH (TAG \"t1\") MIN 2 MAX 4 COUNT 4 ALL 2:3,1,4\r\n"
    );
    let u = a.ok("t2", "UID SORT RETURN (COUNT) (DATE) UTF-8 ALL").await;
    assert_eq!(u, "* ESEARCH (TAG \"t2\") UID COUNT 4\r\n");
    let u = a.ok("t3", "SORT RETURN () (REVERSE SIZE) UTF-8 ALL").await;
    assert_eq!(u, "* ESEARCH (TAG \"t3\") ALL 1,4,3,2\r\n");
    let u = a
        .ok("t4", "SORT RETURN (MIN MAX) (DATE) UTF-8 SUBJECT nothing")
        .await;
    assert_eq!(u, "* ESEARCH (TAG \"t4\")\r\n");
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): one thread per base subject, the
/// earliest (sent date) message the parent of the rest, threads ordered
/// by their first message's date; UID THREAD answers UIDs.
#[tokio::test]
async fn thread_orderedsubject_groups_by_base_subject() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    four(&mut a).await;
    a.append(
        "p5",
        "INBOX",
        &msg(
            "a@example.org",
            "b@example.org",
            "Wed, 3 Jan 2024 09:00:00 +0000",
            "RE: ALPHA",
            "z",
        ),
    )
    .await;
    a.append(
        "p6",
        "INBOX",
        &msg(
            "a@example.org",
            "b@example.org",
            "Wed, 3 Jan 2024 10:00:00 +0000",
            "gamma",
            "z",
        ),
    )
    .await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("t", "THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert_eq!(u, "* THREAD (4 1)(2 (3)(5))(6)\r\n");
    let u = a
        .ok("t", "THREAD ORDEREDSUBJECT UTF-8 NOT SUBJECT gamma")
        .await;
    assert_eq!(u, "* THREAD (4 1)(2 (3)(5))\r\n");
    let u = a
        .ok("t", "THREAD ORDEREDSUBJECT UTF-8 SUBJECT nothing")
        .await;
    assert_eq!(u, "* THREAD\r\n");
    a.ok("d", "STORE 4 +FLAGS (\\Deleted)").await;
    a.ok("e", "EXPUNGE").await;
    let u = a.ok("t", "UID THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert_eq!(u, "* THREAD (1)(2 (3)(5))(6)\r\n");
    let u = a.ok("t", "THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert_eq!(u, "* THREAD (1)(2 (3)(4))(5)\r\n");
    let (_, t) = a.cmd("x", "THREAD REFS UTF-8 ALL").await;
    assert!(t.starts_with("x BAD"), "{t}");
}

/// THREAD=REFERENCES (RFC 5256 §2.2) over the socket: replies nest under
/// the message their References (or In-Reply-To) name, two replies to a
/// message not in the mailbox share a dummy parent (`thread-nested`), a
/// stray reply with the same base subject joins its original, and the
/// search criteria narrow the set first.
#[tokio::test]
async fn thread_references_nests_replies_by_references() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let u = a.ok("c", "CAPABILITY").await;
    assert!(u.contains(" THREAD=REFERENCES"), "{u}");
    let raw = |day: u32, subject: &str, id: &str, refs: &str| {
        let mut m = format!(
            "From: a@example.org\r\nDate: {day} Jan 2024 10:00:00 +0000\r\n\
             Subject: {subject}\r\nMessage-ID: <{id}>\r\n"
        );
        if !refs.is_empty() {
            m.push_str(&format!("References: {refs}\r\n"));
        }
        m.push_str("\r\nbody\r\n");
        m.into_bytes()
    };
    for (i, m) in [
        raw(1, "Plan", "plan@x", ""),
        raw(2, "Re: Plan", "r1@x", "<plan@x>"),
        raw(3, "Re: Plan", "r2@x", "<plan@x>\r\n <r1@x>"),
        raw(4, "Re: Gone", "g1@x", "<gone@x>"),
        raw(5, "Re: Gone", "g2@x", "<gone@x>"),
        raw(6, "Re: Plan", "stray@x", ""),
    ]
    .iter()
    .enumerate()
    {
        a.append(&format!("p{i}"), "INBOX", m).await;
    }
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("t", "THREAD REFERENCES UTF-8 ALL").await;
    assert_eq!(u, "* THREAD (1 (2 3)(6))((4)(5))\r\n");
    let u = a
        .ok("t", "UID THREAD REFERENCES UTF-8 NOT SUBJECT gone")
        .await;
    assert_eq!(u, "* THREAD (1 (2 3)(6))\r\n");
}

/// SEARCHRES (RFC 5182): RETURN (SAVE) answers nothing and keeps the
/// result; `$` works in FETCH, STORE, UID SEARCH and SEARCH; MIN with SAVE
/// keeps only the minimum; SORT RETURN (SAVE) saves too; expunged
/// messages leave `$`; a new SELECT empties it.
#[tokio::test]
async fn searchres_saves_results_for_dollar() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let u = a.ok("c", "CAPABILITY").await;
    assert!(u.contains(" SEARCHRES"), "{u}");
    four(&mut a).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("a", "SEARCH RETURN (SAVE) SUBJECT beta").await;
    assert_eq!(u, "");
    let u = a.ok("b", "FETCH $ (UID)").await;
    assert!(
        u.contains("* 1 FETCH (UID 1)") && u.contains("* 4 FETCH (UID 4)"),
        "{u}"
    );
    assert!(!u.contains("* 2 FETCH"), "{u}");
    a.ok("c", "STORE $ +FLAGS.SILENT (\\Flagged)").await;
    assert_eq!(a.ok("d", "SEARCH FLAGGED").await, "* SEARCH 1 4\r\n");
    assert_eq!(a.ok("e", "UID SEARCH UID $").await, "* SEARCH 1 4\r\n");
    // SAVE with MIN and ALL reports and saves everything; with only MIN,
    // just the minimum (RFC 5182 §2.4).
    let u = a.ok("f", "SEARCH RETURN (SAVE MIN ALL) NOT $").await;
    assert_eq!(u, "* ESEARCH (TAG \"f\") MIN 2 ALL 2:3\r\n");
    assert_eq!(a.ok("g", "SEARCH $").await, "* SEARCH 2 3\r\n");
    let u = a.ok("h", "SEARCH RETURN (SAVE MIN) ALL").await;
    assert_eq!(u, "* ESEARCH (TAG \"h\") MIN 1\r\n");
    assert_eq!(a.ok("i", "SEARCH $").await, "* SEARCH 1\r\n");
    // SORT RETURN (SAVE MAX): the last in sort order (subject: 2 3 1 4).
    assert_eq!(
        a.ok("j", "SORT RETURN (SAVE) (SUBJECT) UTF-8 ALL").await,
        ""
    );
    assert_eq!(a.ok("k", "SEARCH $").await, "* SEARCH 1 2 3 4\r\n");
    let u = a
        .ok("l", "SORT RETURN (SAVE MAX) (SUBJECT) UTF-8 ALL")
        .await;
    assert_eq!(u, "* ESEARCH (TAG \"l\") MAX 4\r\n");
    assert_eq!(a.ok("m", "UID SEARCH $").await, "* SEARCH 4\r\n");
    // Expunged messages leave `$`.
    a.ok("n", "SEARCH RETURN (SAVE) 3:4").await;
    a.ok("o", "STORE 4 +FLAGS (\\Deleted)").await;
    a.ok("p", "EXPUNGE").await;
    assert_eq!(a.ok("q", "UID SEARCH $").await, "* SEARCH 3\r\n");
    // A new SELECT starts with an empty `$`.
    a.ok("r", "SELECT INBOX").await;
    assert_eq!(a.ok("t", "SEARCH $").await, "* SEARCH\r\n");
    let (_, t) = a.cmd("u", "FETCH $,1 (UID)").await;
    assert!(t.starts_with("u BAD"), "{t}");
}
