//! NOTIFY (RFC 5465) over real loopback TCP connections to the real
//! session and store: one client listens, another changes mailboxes.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::time::Duration;

use common::{Client, env, env_with};

const MSG: &[u8] = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n";

/// The next untagged line, which must arrive without any command sent.
async fn unsolicited(c: &mut Client) -> String {
    c.line().await
}

/// A message delivered to INBOX while another mailbox is selected gives a
/// STATUS for INBOX, between commands (§5.2); the selected mailbox's new
/// messages, flag changes and expunges arrive at once (§5.2–5.4); NOTIFY
/// NONE stops all of it.
#[tokio::test]
async fn inbox_status_and_selected_updates_between_commands() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    let caps = a.ok("c", "CAPABILITY").await;
    assert!(caps.contains(" NOTIFY"), "{caps}");
    a.ok("c1", "CREATE Work").await;
    let sel = a.ok("s", "SELECT Work").await;
    assert!(sel.contains("* 0 EXISTS"), "{sel}");
    let inbox = b.ok("st", "STATUS INBOX (UIDVALIDITY)").await;
    let uidvalidity: u32 = inbox
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let u = a
        .ok(
            "n",
            "NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange)) (INBOXES (MessageNew MessageExpunge))",
        )
        .await;
    assert_eq!(u, "", "no STATUS without the STATUS indicator");

    b.append("p1", "INBOX", MSG).await;
    assert_eq!(
        unsolicited(&mut a).await,
        format!("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY {uidvalidity})\r\n")
    );

    b.append("p2", "Work", MSG).await;
    assert_eq!(unsolicited(&mut a).await, "* 1 EXISTS\r\n");
    // IMAP4rev1 sessions also get RECENT.
    assert_eq!(unsolicited(&mut a).await, "* 1 RECENT\r\n");

    b.ok("bs", "SELECT Work").await;
    b.ok("f", "STORE 1 +FLAGS (\\Seen)").await;
    let l = unsolicited(&mut a).await;
    assert!(l.starts_with("* 1 FETCH (") && l.contains("\\Seen"), "{l}");

    b.ok("x", "STORE 1 +FLAGS (\\Deleted)").await;
    let l = unsolicited(&mut a).await;
    assert!(l.contains("\\Deleted"), "{l}");
    b.ok("e", "EXPUNGE").await;
    assert_eq!(unsolicited(&mut a).await, "* 1 EXPUNGE\r\n");

    // NOTIFY NONE: nothing more, not even at the end of a command.
    a.ok("nn", "NOTIFY NONE").await;
    b.append("p3", "INBOX", MSG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = a.ok("noop", "NOOP").await;
    assert!(!u.contains("STATUS"), "{u}");
}

/// NOTIFY SET STATUS reports each covered mailbox at once (§3); an event
/// that changes nothing the group reports sends nothing; SUBTREE and
/// MAILBOXES pick mailboxes by name; unsupported events get BADEVENT.
#[tokio::test]
async fn status_indicator_filters_and_bad_events() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    for m in ["Lists", "Lists/rust", "Other"] {
        a.ok("c", &format!("CREATE {m}")).await;
    }
    b.append("p0", "Lists/rust", MSG).await;
    let u = a
        .ok(
            "n",
            "NOTIFY SET STATUS (SUBTREE Lists (MessageExpunge)) (MAILBOXES Other (MessageNew MessageExpunge))",
        )
        .await;
    assert!(u.contains("* STATUS Lists (MESSAGES 0)\r\n"), "{u}");
    assert!(u.contains("* STATUS Lists/rust (MESSAGES 1)\r\n"), "{u}");
    assert!(
        u.contains("* STATUS Other (MESSAGES 0 UIDNEXT 1 UIDVALIDITY "),
        "{u}"
    );
    assert!(!u.contains("INBOX"), "{u}");

    // A flag change in Lists/rust changes nothing MessageExpunge reports;
    // the append to Other is reported (and INBOX, not covered, is not).
    b.ok("bs", "SELECT Lists/rust").await;
    b.ok("f", "STORE 1 +FLAGS (\\Flagged)").await;
    b.append("p1", "INBOX", MSG).await;
    b.append("p2", "Other", MSG).await;
    let l = unsolicited(&mut a).await;
    assert!(
        l.starts_with("* STATUS Other (MESSAGES 1 UIDNEXT 2 "),
        "{l}"
    );
    b.ok("x", "STORE 1 +FLAGS (\\Deleted)").await;
    b.ok("e", "EXPUNGE").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* STATUS Lists/rust (MESSAGES 0)\r\n"
    );

    let (_, t) = a
        .cmd("bad", "NOTIFY SET (PERSONAL (AnnotationChange))")
        .await;
    assert!(
        t.starts_with(
            "bad NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange MailboxMetadataChange ServerMetadataChange)]"
        ),
        "{t}"
    );
    let (_, t) = a
        .cmd("bad2", "NOTIFY SET (INBOXES (MessageNew (FLAGS)))")
        .await;
    assert!(t.starts_with("bad2 BAD"), "{t}");
    let (_, t) = a.cmd("bad3", "NOTIFY SET (SELECTED (MessageNew)").await;
    assert!(t.starts_with("bad3 BAD"), "{t}");
}

/// MessageNew with FETCH items sends them for each new message of the
/// selected mailbox (§5.2); IDLE gets other mailboxes' STATUS too.
#[tokio::test]
async fn message_new_fetch_items_and_idle() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    a.ok("e", "ENABLE IMAP4rev2").await;
    a.ok("c", "CREATE Work").await;
    a.ok("s", "SELECT INBOX").await;
    a.ok(
        "n",
        "NOTIFY SET (SELECTED (MessageNew (UID RFC822.SIZE) MessageExpunge)) (PERSONAL (MessageNew MessageExpunge))",
    )
    .await;
    b.append("p1", "INBOX", MSG).await;
    assert_eq!(unsolicited(&mut a).await, "* 1 EXISTS\r\n");
    assert_eq!(
        unsolicited(&mut a).await,
        format!("* 1 FETCH (UID 1 RFC822.SIZE {})\r\n", MSG.len())
    );

    a.send(b"i IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    b.append("p2", "Work", MSG).await;
    let l = unsolicited(&mut a).await;
    assert!(l.starts_with("* STATUS Work (MESSAGES 1 UIDNEXT 2 "), "{l}");
    a.send(b"DONE\r\n").await;
    let (_, t) = a.until("i").await;
    assert!(t.starts_with("i OK"), "{t}");
}

/// More events than the session may hold pending while a command is
/// being received: `* OK [NOTIFICATIONOVERFLOW]`, then nothing more, as
/// after NOTIFY NONE (§5.8).
#[tokio::test]
async fn overflow_turns_notify_off() {
    let env = env_with(|c| c.notify_max_pending = 3).await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    a.ok("n", "NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        .await;
    // Half a command: the session reports nothing until it is complete.
    a.send(b"x NO").await;
    for i in 0..5 {
        b.append(&format!("p{i}"), "INBOX", MSG).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.send(b"OP\r\n").await;
    let (u, t) = a.until("x").await;
    let u = String::from_utf8_lossy(&u);
    assert!(t.starts_with("x OK"), "{t}");
    assert!(u.contains("* OK [NOTIFICATIONOVERFLOW]"), "{u}");
    assert!(!u.contains("STATUS"), "{u}");
    b.append("p9", "INBOX", MSG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = a.ok("y", "NOOP").await;
    assert!(!u.contains("STATUS"), "{u}");
}

/// MailboxName (§5.4): LIST for a mailbox created, renamed (OLDNAME) and
/// deleted (\NonExistent) by another session; only for mailboxes the
/// group covers, and new messages are not reported when not asked for.
#[tokio::test]
async fn mailbox_name_reports_create_rename_delete() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    a.ok("n", "NOTIFY SET (SUBTREE Projects (MailboxName))")
        .await;
    b.ok("c0", "CREATE Elsewhere").await;
    b.ok("c1", "CREATE Projects/alpha").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* LIST () \"/\" Projects/alpha\r\n"
    );
    b.append("p", "Projects/alpha", MSG).await;
    b.ok("r", "RENAME Projects/alpha Projects/beta").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* LIST () \"/\" Projects/beta (\"OLDNAME\" (Projects/alpha))\r\n"
    );
    b.ok("d", "DELETE Projects/beta").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* LIST (\\NonExistent) \"/\" Projects/beta\r\n"
    );
    // Nothing was said about Elsewhere, the parent or the message.
    let u = a.ok("z", "NOOP").await;
    assert_eq!(u, "");
}

/// SubscriptionChange (§5.5): LIST with or without \Subscribed when
/// another session subscribes or unsubscribes a covered mailbox.
#[tokio::test]
async fn subscription_change_reports_list() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    b.ok("c", "CREATE News").await;
    a.ok("n", "NOTIFY SET (PERSONAL (SubscriptionChange))")
        .await;
    b.ok("s", "SUBSCRIBE News").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* LIST (\\Subscribed) \"/\" News\r\n"
    );
    b.ok("u", "UNSUBSCRIBE News").await;
    assert_eq!(unsolicited(&mut a).await, "* LIST () \"/\" News\r\n");
    // Subscribing twice changes nothing the second time.
    b.ok("s2", "SUBSCRIBE News").await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* LIST (\\Subscribed) \"/\" News\r\n"
    );
    b.ok("s3", "SUBSCRIBE News").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.ok("z", "NOOP").await, "");
}

/// MailboxMetadataChange and ServerMetadataChange (§5.6, §5.7): an
/// unsolicited METADATA naming exactly the entries that changed, for the
/// covered mailboxes and the server; a SETMETADATA that changes nothing
/// and one on an uncovered mailbox say nothing.
#[tokio::test]
async fn metadata_changes_name_the_changed_entries() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let mut b = Client::login(&env).await;
    a.ok("c", "CREATE Work").await;
    b.ok("s0", "SETMETADATA Work (/shared/old \"1\")").await;
    a.ok(
        "n",
        "NOTIFY SET (MAILBOXES Work (MailboxMetadataChange ServerMetadataChange))",
    )
    .await;
    b.ok(
        "s1",
        "SETMETADATA Work (/private/comment \"x\" /shared/y \"1\")",
    )
    .await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* METADATA Work /private/comment /shared/y\r\n"
    );
    b.ok("s2", "SETMETADATA Work (/shared/y \"1\" /shared/old \"1\")")
        .await;
    b.ok("s3", "SETMETADATA INBOX (/private/i \"v\")").await;
    b.ok("s4", "SETMETADATA Work (/shared/y NIL /shared/old \"2\")")
        .await;
    assert_eq!(
        unsolicited(&mut a).await,
        "* METADATA Work /shared/old /shared/y\r\n"
    );
    b.ok("s5", "SETMETADATA \"\" (/private/s \"v\")").await;
    assert_eq!(unsolicited(&mut a).await, "* METADATA \"\" /private/s\r\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.ok("z", "NOOP").await, "");
}
