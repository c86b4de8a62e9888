//! OBJECTID (RFC 8474) over a real loopback TCP connection to the real
//! session and the real store: MAILBOXID at CREATE, SELECT and STATUS,
//! stable across RENAME; EMAILID equal after COPY and MOVE, distinct for
//! different messages; THREADID NIL.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};

/// The parenthesised value after `NAME (` in `u`.
fn paren(u: &str, name: &str) -> String {
    let start = u
        .find(&format!("{name} ("))
        .unwrap_or_else(|| panic!("{name}: {u}"))
        + name.len()
        + 2;
    u[start..].split(')').next().unwrap().to_string()
}

fn objectid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tokio::test]
async fn mailboxid_is_stable_and_emailid_follows_the_message() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let caps = a.ok("c", "CAPABILITY").await;
    assert!(caps.contains(" OBJECTID"), "{caps}");

    let (_, t) = a.cmd("c1", "CREATE Work").await;
    assert!(t.starts_with("c1 OK [MAILBOXID ("), "{t}");
    let work = paren(&t, "MAILBOXID");
    assert!(objectid(&work), "{work}");
    let u = a.ok("st", "STATUS Work (MAILBOXID MESSAGES)").await;
    assert_eq!(paren(&u, "MAILBOXID"), work, "{u}");
    let u = a.ok("st2", "STATUS INBOX (MAILBOXID)").await;
    let inbox = paren(&u, "MAILBOXID");
    assert_ne!(inbox, work);

    a.ok("r", "RENAME Work Play").await;
    let u = a.ok("s", "SELECT Play").await;
    assert!(u.contains("* OK [MAILBOXID ("), "{u}");
    assert_eq!(paren(&u, "MAILBOXID"), work, "RENAME keeps the id: {u}");
    // DELETE and CREATE of the same name: a new mailbox, a new id.
    a.ok("u", "UNSELECT").await;
    a.ok("d", "DELETE Play").await;
    let (_, t) = a.cmd("c2", "CREATE Play").await;
    assert_ne!(paren(&t, "MAILBOXID"), work, "{t}");

    a.append("p1", "INBOX", b"Subject: one\r\n\r\nfirst\r\n")
        .await;
    a.append("p2", "INBOX", b"Subject: two\r\n\r\nsecond\r\n")
        .await;
    let u = a.ok("s2", "SELECT INBOX").await;
    assert_eq!(paren(&u, "MAILBOXID"), inbox, "{u}");
    let u = a.ok("f", "FETCH 1:2 (EMAILID THREADID)").await;
    let lines: Vec<&str> = u.lines().collect();
    assert_eq!(lines.len(), 2, "{u}");
    let e1 = paren(lines[0], "EMAILID");
    let e2 = paren(lines[1], "EMAILID");
    assert!(objectid(&e1) && objectid(&e2), "{u}");
    assert_ne!(e1, e2, "different messages, different ids");
    assert!(lines.iter().all(|l| l.contains("THREADID NIL")), "{u}");

    a.ok("cp", "COPY 1 Play").await;
    a.ok("mv", "MOVE 2 Play").await;
    a.ok("s3", "SELECT Play").await;
    let u = a.ok("f2", "UID FETCH 1:* (EMAILID)").await;
    let lines: Vec<&str> = u.lines().collect();
    assert_eq!(lines.len(), 2, "{u}");
    assert_eq!(paren(lines[0], "EMAILID"), e1, "COPY keeps EMAILID: {u}");
    assert_eq!(paren(lines[1], "EMAILID"), e2, "MOVE keeps EMAILID: {u}");
    // The copy left in INBOX keeps it too.
    a.ok("s4", "EXAMINE INBOX").await;
    let u = a.ok("f3", "FETCH 1 (EMAILID)").await;
    assert_eq!(paren(&u, "EMAILID"), e1, "{u}");
}
