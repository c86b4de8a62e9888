//! METADATA and METADATA-SERVER (RFC 5464) over a real loopback TCP
//! connection to the real session and the real store (PostgreSQL).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};

/// SETMETADATA then GETMETADATA on server and mailbox entries, NIL
/// deletes, names are case-insensitive, both capabilities advertised.
#[tokio::test]
async fn set_get_and_delete_server_and_mailbox_entries() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let caps = a.ok("c", "CAPABILITY").await;
    assert!(caps.contains(" METADATA "), "{caps}");
    assert!(caps.contains(" METADATA-SERVER "), "{caps}");

    // Nothing set yet: no METADATA response at all.
    let u = a.ok("g0", "GETMETADATA \"\" /private/comment").await;
    assert_eq!(u, "");

    a.ok(
        "s1",
        "SETMETADATA \"\" (/private/comment \"server note\" /shared/admin \"mailto:pm@example.org\")",
    )
    .await;
    a.ok("s2", "SETMETADATA INBOX (/private/Comment \"inbox note\")")
        .await;
    let u = a
        .ok(
            "g1",
            "GETMETADATA \"\" (/private/comment /shared/admin /private/none)",
        )
        .await;
    assert_eq!(
        u,
        "* METADATA \"\" (/private/comment \"server note\" /shared/admin \"mailto:pm@example.org\")\r\n"
    );
    // Mailbox entries are apart from server entries; case does not matter.
    let u = a.ok("g2", "GETMETADATA INBOX /PRIVATE/COMMENT").await;
    assert_eq!(u, "* METADATA INBOX (/private/comment \"inbox note\")\r\n");

    // A literal value with CRLF in it comes back as a literal; a NUL as literal8.
    a.send(
        b"s3 SETMETADATA INBOX (/private/multi {7+}\r\nab\r\ncd\r /private/bin ~{3+}\r\nx\0y)\r\n",
    )
    .await;
    let (_, t) = a.until("s3").await;
    assert!(t.starts_with("s3 OK"), "{t}");
    a.send(b"g3 GETMETADATA INBOX (/private/multi /private/bin)\r\n")
        .await;
    let (u, t) = a.until("g3").await;
    assert!(t.starts_with("g3 OK"), "{t}");
    assert_eq!(
        u,
        b"* METADATA INBOX (/private/bin ~{3}\r\nx\0y /private/multi {7}\r\nab\r\ncd\r)\r\n"
    );

    // NIL deletes; deleting what does not exist is fine.
    a.ok(
        "s4",
        "SETMETADATA INBOX (/private/comment NIL /private/never NIL)",
    )
    .await;
    let u = a.ok("g4", "GETMETADATA INBOX /private/comment").await;
    assert_eq!(u, "");

    // A nonexistent mailbox, bad entry names.
    let (_, t) = a.cmd("g5", "GETMETADATA Nowhere /private/comment").await;
    assert!(t.starts_with("g5 NO [NONEXISTENT]"), "{t}");
    let (_, t) = a
        .cmd("s5", "SETMETADATA Nowhere (/private/comment \"x\")")
        .await;
    assert!(t.starts_with("s5 NO [NONEXISTENT]"), "{t}");
    let (_, t) = a.cmd("g6", "GETMETADATA INBOX /other/comment").await;
    assert!(t.starts_with("g6 BAD"), "{t}");
    let (_, t) = a.cmd("s6", "SETMETADATA INBOX (/private \"x\")").await;
    assert!(t.starts_with("s6 BAD"), "{t}");

    // Another user sees none of bob's entries, /shared included.
    env.store().add_user("carol@example.org", "secret2").await;
    let mut c = Client::login_as(&env, "carol@example.org", "secret2").await;
    let u = c
        .ok("g7", "GETMETADATA \"\" (/private/comment /shared/admin)")
        .await;
    assert_eq!(u, "");
}

/// DEPTH 0, 1 and infinity; MAXSIZE leaves long values out and reports
/// the longest with LONGENTRIES (RFC 5464 §4.2.1, §4.2.2).
#[tokio::test]
async fn depth_and_maxsize() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.ok(
        "s",
        "SETMETADATA INBOX (/private/a \"1\" /private/a/b \"22\" /private/a/b/c \"333\" /private/a/d \"4444\" /private/ab \"x\")",
    )
    .await;
    let u = a.ok("d0", "GETMETADATA (DEPTH 0) INBOX /private/a").await;
    assert_eq!(u, "* METADATA INBOX (/private/a \"1\")\r\n");
    let u = a.ok("d1", "GETMETADATA (DEPTH 1) INBOX /private/a").await;
    assert_eq!(
        u,
        "* METADATA INBOX (/private/a \"1\" /private/a/b \"22\" /private/a/d \"4444\")\r\n"
    );
    let u = a
        .ok("di", "GETMETADATA (DEPTH infinity) INBOX /private/a")
        .await;
    assert_eq!(
        u,
        "* METADATA INBOX (/private/a \"1\" /private/a/b \"22\" /private/a/b/c \"333\" /private/a/d \"4444\")\r\n"
    );
    // Depth applies below an entry that does not exist itself, /private too.
    let u = a.ok("dn", "GETMETADATA (DEPTH 1) INBOX /private").await;
    assert_eq!(
        u,
        "* METADATA INBOX (/private/a \"1\" /private/ab \"x\")\r\n"
    );
    let u = a.ok("dz", "GETMETADATA (DEPTH 1) INBOX /shared").await;
    assert_eq!(u, "");
    let u = a
        .ok("dp", "GETMETADATA (DEPTH infinity) INBOX /private/a/b")
        .await;
    assert_eq!(
        u,
        "* METADATA INBOX (/private/a/b \"22\" /private/a/b/c \"333\")\r\n"
    );

    let (u, t) = a
        .cmd(
            "m",
            "GETMETADATA (MAXSIZE 2 DEPTH infinity) INBOX /private/a",
        )
        .await;
    assert_eq!(
        u,
        "* METADATA INBOX (/private/a \"1\" /private/a/b \"22\")\r\n"
    );
    assert!(t.starts_with("m OK [METADATA LONGENTRIES 4]"), "{t}");
    let (u, t) = a
        .cmd("m0", "GETMETADATA (MAXSIZE 0) INBOX /private/a")
        .await;
    assert_eq!(u, "");
    assert!(t.starts_with("m0 OK [METADATA LONGENTRIES 1]"), "{t}");
}

/// Limits: a value over the maximum gets `[METADATA MAXSIZE n]`, the
/// entry over the per-user count `[METADATA TOOMANY]`, and neither stores
/// anything (SETMETADATA is atomic, §4.3).
#[tokio::test]
async fn limits_refuse_and_store_nothing() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let max = mailstore_api::METADATA_MAX_VALUE;
    let big = "v".repeat(max + 1);
    a.send(
        format!(
            "b SETMETADATA INBOX (/private/ok \"1\" /private/big {{{}+}}\r\n{big})\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    let (_, t) = a.until("b").await;
    assert!(
        t.starts_with(&format!("b NO [METADATA MAXSIZE {max}]")),
        "{t}"
    );
    assert_eq!(a.ok("g", "GETMETADATA INBOX /private/ok").await, "");
    // Exactly the maximum is fine.
    let fits = "v".repeat(max);
    a.send(
        format!(
            "f SETMETADATA INBOX (/private/fits {{{}+}}\r\n{fits})\r\n",
            fits.len()
        )
        .as_bytes(),
    )
    .await;
    let (_, t) = a.until("f").await;
    assert!(t.starts_with("f OK"), "{t}");

    // Fill up to the per-user limit (the entry above counts), 50 at a time.
    let limit = usize::try_from(mailstore_api::METADATA_MAX_ENTRIES).unwrap();
    let names: Vec<String> = (1..limit).map(|i| format!("/shared/n{i}")).collect();
    for (k, chunk) in names.chunks(50).enumerate() {
        let list: Vec<String> = chunk.iter().map(|n| format!("{n} \"x\"")).collect();
        a.ok(
            &format!("n{k}"),
            &format!("SETMETADATA \"\" ({})", list.join(" ")),
        )
        .await;
    }
    // One more fails, together with the change to an existing entry.
    let (_, t) = a
        .cmd(
            "t",
            "SETMETADATA INBOX (/private/fits \"short\" /private/one-more \"x\")",
        )
        .await;
    assert!(t.starts_with("t NO [METADATA TOOMANY]"), "{t}");
    let (u, _) = a
        .cmd("g2", "GETMETADATA (MAXSIZE 10) INBOX /private/fits")
        .await;
    assert_eq!(u, "", "the rolled-back change is not visible");
    // Replacing and deleting still work at the limit.
    a.ok(
        "r",
        "SETMETADATA \"\" (/shared/n1 \"replaced\" /shared/n2 NIL)",
    )
    .await;
    a.ok("o", "SETMETADATA INBOX (/private/one-more \"x\")")
        .await;
}

/// A mailbox's entries go with it when it is deleted (a new mailbox of the
/// same name starts empty) and follow it when it is renamed.
#[tokio::test]
async fn entries_follow_rename_and_go_with_delete() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    a.ok("c", "CREATE Work").await;
    a.ok("s", "SETMETADATA Work (/private/comment \"work stuff\")")
        .await;
    a.ok("r", "RENAME Work Job").await;
    let u = a.ok("g1", "GETMETADATA Job /private/comment").await;
    assert_eq!(u, "* METADATA Job (/private/comment \"work stuff\")\r\n");
    a.ok("c2", "CREATE Work").await;
    assert_eq!(a.ok("g2", "GETMETADATA Work /private/comment").await, "");
    a.ok("d", "DELETE Job").await;
    a.ok("c3", "CREATE Job").await;
    assert_eq!(a.ok("g3", "GETMETADATA Job /private/comment").await, "");
    // The server entries are not touched by mailbox deletion.
    a.ok("s2", "SETMETADATA \"\" (/private/x \"y\")").await;
    a.ok("d2", "DELETE Work").await;
    let u = a.ok("g4", "GETMETADATA \"\" /private/x").await;
    assert_eq!(u, "* METADATA \"\" (/private/x \"y\")\r\n");
}

/// Python's imaplib, a real client that knows nothing of METADATA or
/// NOTIFY, drives both through its generic command path: SETMETADATA,
/// GETMETADATA, NIL deleting, and a STATUS for INBOX under
/// NOTIFY while another mailbox is selected.
#[tokio::test]
async fn imaplib_drives_metadata_and_notify() {
    const SCRIPT: &str = r#"
import imaplib, sys, time
host, port = sys.argv[1], int(sys.argv[2])
for c in ("GETMETADATA", "SETMETADATA", "NOTIFY"):
    imaplib.Commands[c] = ("AUTH", "SELECTED")
m = imaplib.IMAP4(host, port)
m.login("bob@example.org", "secret")
assert "METADATA" in m.capabilities and "NOTIFY" in m.capabilities, m.capabilities
typ, data = m._simple_command("SETMETADATA", '""', '(/private/comment "from imaplib")')
assert typ == "OK", data
typ, data = m._simple_command("GETMETADATA", '""', "/private/comment")
assert typ == "OK", data
typ, data = m._untagged_response(typ, data, "METADATA")
assert data == [b'"" (/private/comment "from imaplib")'], data
typ, data = m._simple_command("SETMETADATA", "INBOX", "(/private/x NIL)")
assert typ == "OK", data
m.create("Work")
m.select("Work")
typ, data = m._simple_command("NOTIFY", "SET", "(INBOXES (MessageNew MessageExpunge))")
assert typ == "OK", data
other = imaplib.IMAP4(host, port)
other.login("bob@example.org", "secret")
other.append("INBOX", None, None, b"Subject: hi\r\n\r\nbody\r\n")
for _ in range(50):
    m.noop()
    typ, data = m.response("STATUS")
    if data != [None]:
        break
    time.sleep(0.1)
assert data[0].startswith(b"INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY "), data
m.logout(); other.logout()
print("ALL OK")
"#;
    let env = env().await;
    let addr = env.addr();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL OK"), "{stdout}\n{stderr}");
}
