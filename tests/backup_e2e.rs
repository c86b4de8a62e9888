//! Backups (docs/design.md, "Backups"): `scripts/backup` dumps a populated
//! system, `scripts/restore` loads the dump into a fresh PostgreSQL database,
//! a new store starts over it, and the real `epistole imap` binary serves
//! the same mail — same mailboxes, UIDVALIDITY, UIDs, flags and bodies — to
//! a raw IMAP client over TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.org";
const ALICE_PW: &str = "alice-password";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A minimal IMAP client: tagged commands, untagged lines collected,
/// literals read by their announced length.
struct Client {
    r: BufReader<TcpStream>,
    tag: u32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut c = Self {
            r: BufReader::new(s),
            tag: 0,
        };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut l))
            .await
            .expect("IMAP server silent")
            .unwrap();
        assert!(n > 0, "IMAP server closed the connection");
        l
    }

    /// Sends a command; returns the untagged responses (literals inlined)
    /// and asserts the tagged OK.
    async fn cmd(&mut self, cmd: &str) -> Vec<String> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.r
            .get_mut()
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let mut l = self.line().await;
            // A literal {n}: read n bytes and the rest of the line.
            while let Some(n) = l
                .trim_end()
                .strip_suffix('}')
                .and_then(|s| s.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut buf = vec![0; n];
                self.r.read_exact(&mut buf).await.unwrap();
                l.push_str(&String::from_utf8_lossy(&buf));
                l.push_str(&self.line().await);
            }
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "{cmd}: {rest}");
                return out;
            }
            out.push(l);
        }
    }
}

async fn start_imap(store: &TestStore) -> test_kit::ServiceProcess {
    test_kit::spawn_service(
        store,
        &[
            "--log",
            "warn",
            "imap",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "off",
            "--allow-plaintext-auth",
        ],
        &["imap"],
    )
    .await
}

/// Everything an IMAP client sees of the account, in a comparable form:
/// the mailbox list, and per mailbox its STATUS (UIDVALIDITY, UIDNEXT,
/// MESSAGES) and every message's UID, FLAGS and full text.
async fn snapshot(addr: SocketAddr) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    c.cmd(&format!("LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    let mut list = c.cmd("LIST \"\" \"*\"").await;
    list.sort();
    let mut out = list.clone();
    for mailbox in ["INBOX", "Work"] {
        out.extend(
            c.cmd(&format!("STATUS {mailbox} (UIDVALIDITY UIDNEXT MESSAGES)"))
                .await,
        );
        c.cmd(&format!("EXAMINE {mailbox}")).await;
        out.extend(c.cmd("UID FETCH 1:* (UID FLAGS BODY.PEEK[])").await);
    }
    c.cmd("LOGOUT").await;
    out
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: sender{i}@example.net\r\nTo: {ALICE}\r\nSubject: message {i}\r\nMessage-ID: <m{i}@example.net>\r\n\r\nBody {i}.\r\n"
    )
    .into_bytes()
}

async fn run(script_name: &str, file: &Path, url: &str) {
    let out = tokio::process::Command::new(script(script_name))
        .arg(file)
        .arg(url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script_name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_into_a_fresh_database_with_the_same_uids() {
    // A populated system: a user with mail in two mailboxes, flags set,
    // one message expunged so the UIDs have a gap.
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user(ALICE, ALICE_PW).await;
    for i in 1..=4 {
        store.append(user, "INBOX", &message(i)).await;
    }
    let imap = start_imap(&store).await;
    {
        let mut c = Client::connect(imap.addr("imap")).await;
        c.cmd(&format!("LOGIN {ALICE} \"{ALICE_PW}\"")).await;
        c.cmd("CREATE Work").await;
        c.cmd("SELECT INBOX").await;
        c.cmd("UID STORE 2 +FLAGS (\\Seen \\Flagged $Important)")
            .await;
        c.cmd("UID STORE 1 +FLAGS (\\Deleted)").await;
        c.cmd("EXPUNGE").await;
        c.cmd("UID COPY 3 Work").await;
        c.cmd("LOGOUT").await;
    }
    store.append(user, "Work", &message(5)).await;
    let before = snapshot(imap.addr("imap")).await;
    let text = before.join("");
    assert!(text.contains("UID 2 FLAGS ("), "{text}");
    assert!(text.contains("\\Flagged"), "{text}");
    assert!(text.contains("$Important"), "{text}");
    assert!(
        !text.contains("Body 1."),
        "the expunged message is gone: {text}"
    );
    assert!(text.contains("Body 5."), "{text}");

    // Back up while the system runs.
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("epistole.dump");
    run("backup", &dump, &store.database_url).await;

    // Restore into a fresh, empty database; a restore over a non-empty one
    // is refused.
    let restored = test_kit::fresh_database().await;
    run("restore", &dump, &restored).await;
    let again = tokio::process::Command::new(script("restore"))
        .arg(&dump)
        .arg(&restored)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success(), "restore over data must be refused");

    // A new store and imap over the restored database serve the same mail.
    let store2 = TestStore::start_over(&restored).await;
    let imap2 = start_imap(&store2).await;
    let after = snapshot(imap2.addr("imap")).await;
    assert_eq!(before, after);

    // And it is a live system: new mail continues the UID sequence.
    let uid = store2.append(user, "INBOX", &message(6)).await;
    assert_eq!(uid, 5, "UIDNEXT survived the restore");
    drop((imap, imap2));
}
