//! QUOTA (RFC 9208) transcripts: the real session over an in-memory pipe,
//! against the real mailbox-store (test_kit::TestStore on a throwaway
//! PostgreSQL): GETQUOTAROOT/GETQUOTA, SETQUOTA for quota administrators
//! only, APPEND and COPY refused with NO [OVERQUOTA], STATUS DELETED and
//! DELETED-STORAGE.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use imap::conn::Server;
use imap::session::{SessionConfig, Shared};
use mailstore_api::pb;
use service_kit::Shutdown;
use service_kit::starttls::serve_connection;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream};

const BOB: &str = "bob@example.org";
const ALICE: &str = "alice@example.org";

struct Client {
    io: BufReader<DuplexStream>,
}

impl Client {
    async fn line(&mut self) -> String {
        let mut v = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.io.read_until(b'\n', &mut v))
            .await
            .expect("timed out waiting for a line")
            .unwrap();
        assert!(n > 0, "connection closed");
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Sends a command; returns the untagged lines and the tagged line.
    async fn cmd(&mut self, tag: &str, c: &str) -> (String, String) {
        self.io
            .get_mut()
            .write_all(format!("{tag} {c}\r\n").as_bytes())
            .await
            .unwrap();
        let mut all = String::new();
        loop {
            let l = self.line().await;
            if l.starts_with(&format!("{tag} ")) {
                return (all, l);
            }
            all.push_str(&l);
        }
    }

    async fn ok(&mut self, tag: &str, c: &str) -> String {
        let (u, t) = self.cmd(tag, c).await;
        assert!(t.starts_with(&format!("{tag} OK")), "{c}: {u}{t}");
        u
    }

    async fn append(&mut self, tag: &str, mailbox: &str, msg: &[u8]) -> String {
        let w = self.io.get_mut();
        w.write_all(format!("{tag} APPEND {mailbox} {{{}+}}\r\n", msg.len()).as_bytes())
            .await
            .unwrap();
        w.write_all(msg).await.unwrap();
        w.write_all(b"\r\n").await.unwrap();
        loop {
            let l = self.line().await;
            if l.starts_with(&format!("{tag} ")) {
                return l;
            }
        }
    }
}

struct Env {
    store: TestStore,
    bob: u64,
    alice: u64,
}

async fn env() -> Env {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let bob = store.add_user(BOB, "secret").await;
    let alice = store.add_user(ALICE, "secret").await;
    Env { store, bob, alice }
}

async fn login(env: &Env, user: &str, quota_admins: &[&str]) -> Client {
    let cfg = SessionConfig {
        allow_plaintext_auth: true,
        quota_admins: quota_admins.iter().map(|a| (*a).to_string()).collect(),
        ..SessionConfig::default()
    };
    let shared = Arc::new(Shared::new(cfg, env.store.service_client()));
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = Server {
        shared,
        acceptor: None,
    };
    tokio::spawn(async move {
        let _ = serve_connection(
            &server,
            b,
            "127.0.0.1".parse().unwrap(),
            "q1".into(),
            false,
            &Shutdown::new(),
        )
        .await;
    });
    let mut c = Client {
        io: BufReader::new(a),
    };
    let g = c.line().await;
    assert!(g.starts_with("* OK"), "{g}");
    c.ok("l", &format!("LOGIN {user} secret")).await;
    c
}

/// A message of exactly `size` bytes.
fn msg(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: q\r\n\r\n".to_vec();
    m.resize(size - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

async fn set_limits(env: &Env, address: &str, bytes: Option<u64>, messages: Option<u64>) {
    env.store
        .client()
        .accounts
        .set_quota(pb::SetQuotaRequest {
            key: Some(pb::set_quota_request::Key::Address(address.into())),
            limit_bytes: bytes,
            limit_messages: messages,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn quota_is_advertised_and_reported() {
    let env = env().await;
    let mut c = login(&env, BOB, &[]).await;
    let u = c.ok("a", "CAPABILITY").await;
    assert!(
        u.contains(" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE QUOTASET"),
        "{u}"
    );
    // No limits: one root, no resource listed.
    let u = c.ok("b", "GETQUOTAROOT INBOX").await;
    assert_eq!(u, "* QUOTAROOT INBOX \"\"\r\n* QUOTA \"\" ()\r\n");
    let (_, t) = c.cmd("c", "GETQUOTAROOT Nonexistent").await;
    assert!(t.starts_with("c NO [NONEXISTENT]"), "{t}");
    set_limits(&env, BOB, Some(10 * 1024), Some(5)).await;
    c.append("d", "INBOX", &msg(1500)).await;
    // STORAGE in KiB, rounded up (RFC 9208 §5.1).
    let u = c.ok("e", "GETQUOTA \"\"").await;
    assert_eq!(u, "* QUOTA \"\" (STORAGE 2 10 MESSAGE 1 5)\r\n");
    let u = c.ok("f", &format!("GETQUOTA {BOB}")).await;
    assert_eq!(u, format!("* QUOTA {BOB} (STORAGE 2 10 MESSAGE 1 5)\r\n"));
    // Another user's root is not visible to a non-administrator.
    let (_, t) = c.cmd("g", &format!("GETQUOTA {ALICE}")).await;
    assert!(t.starts_with("g NO [NONEXISTENT]"), "{t}");
    let (_, t) = c.cmd("h", "GETQUOTA \"User quota\"").await;
    assert!(t.starts_with("h NO [NONEXISTENT]"), "{t}");
    // RFC 9208 §4.2: STATUS DELETED and DELETED-STORAGE (octets).
    c.ok("i", "SELECT INBOX").await;
    c.ok("j", "STORE 1 +FLAGS (\\Deleted)").await;
    let u = c.ok("k", "STATUS INBOX (DELETED DELETED-STORAGE)").await;
    assert_eq!(u, "* STATUS INBOX (DELETED 1 DELETED-STORAGE 1500)\r\n");
    let _ = (env.bob, env.alice);
}

#[tokio::test]
async fn append_and_copy_over_quota_are_refused_with_overquota() {
    let env = env().await;
    set_limits(&env, BOB, Some(4 * 1024), Some(3)).await;
    let mut c = login(&env, BOB, &[]).await;
    let t = c.append("a", "INBOX", &msg(3000)).await;
    assert!(t.starts_with("a OK [APPENDUID"), "{t}");
    // 3000 + 2000 > 4096 octets.
    let t = c.append("b", "INBOX", &msg(2000)).await;
    assert!(t.starts_with("b NO [OVERQUOTA]"), "{t}");
    let t = c.append("c", "INBOX", &msg(1000)).await;
    assert!(t.starts_with("c OK"), "{t}");
    c.ok("d", "SELECT INBOX").await;
    // COPY would pass STORAGE: refused, nothing copied.
    let (_, t) = c.cmd("e", "COPY 1 Archive").await;
    assert!(t.starts_with("e NO [OVERQUOTA]"), "{t}");
    let u = c.ok("f", "STATUS Archive (MESSAGES)").await;
    assert!(u.contains("MESSAGES 0"), "{u}");
    // MOVE adds nothing to the root: allowed.
    c.ok("g", "MOVE 1 Archive").await;
    // MESSAGE: 2 of 3 used; one more fits, a second does not.
    let t = c.append("h", "INBOX", &msg(50)).await;
    assert!(t.starts_with("h OK"), "{t}");
    let t = c.append("i", "INBOX", &msg(50)).await;
    assert!(t.starts_with("i NO [OVERQUOTA]"), "{t}");
}

#[tokio::test]
async fn setquota_only_for_quota_administrators() {
    let env = env().await;
    let mut c = login(&env, BOB, &[]).await;
    let (_, t) = c.cmd("a", "SETQUOTA \"\" (STORAGE 100)").await;
    assert!(t.starts_with("a NO [NOPERM]"), "{t}");
    let (_, t) = c.cmd("b", "SETQUOTA \"\" (STORAGE)").await;
    assert!(t.starts_with("b BAD"), "{t}");
    let (_, t) = c.cmd("b", "SETQUOTA \"\" STORAGE 1").await;
    assert!(t.starts_with("b BAD"), "{t}");

    let mut admin = login(&env, BOB, &[BOB]).await;
    let u = admin
        .ok("c", &format!("SETQUOTA {ALICE} (STORAGE 10 MESSAGE 5)"))
        .await;
    assert_eq!(u, format!("* QUOTA {ALICE} (STORAGE 0 10 MESSAGE 0 5)\r\n"));
    let u = admin.ok("d", &format!("GETQUOTA {ALICE}")).await;
    assert_eq!(u, format!("* QUOTA {ALICE} (STORAGE 0 10 MESSAGE 0 5)\r\n"));
    // Resources not named are removed (here: back to the domain default).
    let u = admin
        .ok("e", &format!("SETQUOTA {ALICE} (MESSAGE 7)"))
        .await;
    assert_eq!(u, format!("* QUOTA {ALICE} (MESSAGE 0 7)\r\n"));
    let (_, t) = admin
        .cmd("f", &format!("SETQUOTA {ALICE} (MAILBOX 3)"))
        .await;
    assert!(t.starts_with("f NO [CANNOT]"), "{t}");
    let (_, t) = admin
        .cmd("g", "SETQUOTA nobody@example.org (STORAGE 1)")
        .await;
    assert!(t.starts_with("g NO [NONEXISTENT]"), "{t}");
    admin.ok("h", "SETQUOTA \"\" (STORAGE 1)").await;
    // The limit holds for alice's own session.
    let mut alice = login(&env, ALICE, &[]).await;
    let u = alice.ok("i", "GETQUOTAROOT INBOX").await;
    assert_eq!(
        u,
        "* QUOTAROOT INBOX \"\"\r\n* QUOTA \"\" (MESSAGE 0 7)\r\n"
    );
    // Bob's own root (set to 1 KiB above) refuses a 2000-octet APPEND.
    let t = c.append("j", "INBOX", &msg(2000)).await;
    assert!(t.starts_with("j NO [OVERQUOTA]"), "{t}");
}
