//! End-to-end tests of pop3: the real `epistole pop3` binary (one or two
//! processes), a real mailbox-store over PostgreSQL (test_kit), and real
//! clients: Python's poplib over STLS (110) and implicit TLS (995), and
//! fetchmail downloading 100 messages in keep mode, again (nothing new),
//! then deleting. Also: a connection killed after DELE deletes nothing, and
//! a second session for the same maildrop gets `-ERR [IN-USE]`, on the same
//! and on another pop3 process, and the lock of a killed process expires.
//!
//! Needs `python3` and `fetchmail` (Debian: `apt-get install -y fetchmail`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use mailstore_api::pb;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const DOMAIN: &str = "example.org";
const ALICE: &str = "alice@example.org";
const ALICE_PW: &str = "correct horse battery staple";

struct Pop3 {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
    http: Option<SocketAddr>,
}

/// Starts `epistole pop3` on ephemeral loopback ports with a self-signed
/// certificate, and reads the `listening name=addr` lines it prints.
async fn start_pop3(store: &TestStore, extra: &[&str]) -> Pop3 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            // rustls warns about clients sending an IP address as SNI.
            "warn,rustls=error",
            "pop3",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--auth-failure-delay-ms",
            "100",
        ])
        .args(extra)
        .env("EPISTOLE_POP3_HTTP", "off")
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn epistole pop3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = HashMap::new();
    let wanted = if extra.contains(&"--http-listen") {
        3
    } else {
        2
    };
    while found.len() < wanted {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("pop3 did not report its listeners")
            .unwrap()
            .expect("pop3 exited before listening");
        if let Some((name, addr)) = line
            .strip_prefix("listening ")
            .and_then(|l| l.split_once('='))
        {
            found.insert(name.to_string(), addr.parse::<SocketAddr>().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Pop3 {
        child,
        plain: found["pop3"],
        tls: found["pop3s"],
        http: found.get("http").copied(),
    }
}

async fn store_with_alice() -> (TestStore, u64) {
    let store = TestStore::start().await;
    store.add_domain(DOMAIN).await;
    let id = store.add_user(ALICE, ALICE_PW).await;
    (store, id)
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: sender{i}@example.net\r\nTo: {ALICE}\r\nSubject: message {i}\r\nMessage-ID: <m{i}@example.net>\r\n\r\nBody of message {i}.\r\n.a line with a leading dot\r\nlast line\r\n"
    )
    .into_bytes()
}

async fn inbox_uids(store: &TestStore, user_id: u64) -> Vec<u32> {
    let mut mb = store.client().mailboxes;
    let inbox = mb
        .get_mailbox(pb::GetMailboxRequest {
            user_id,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut s = mb
        .fetch_meta(pb::FetchMetaRequest {
            mailbox_id: inbox.id,
            uids: None,
            changed_since: 0,
            with_structure: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut uids = Vec::new();
    while let Some(b) = s.message().await.unwrap() {
        uids.extend(b.messages.iter().map(|m| m.uid));
    }
    uids
}

async fn python(script: &str, env: &[(&str, String)]) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("run python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// poplib session: retr/top/uidl/list/dele/quit; prints a JSON summary.
const POPLIB_SESSION: &str = r#"
import json, os, poplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
host, port = "127.0.0.1", int(os.environ["PORT"])
if os.environ["MODE"] == "stls":
    p = poplib.POP3(host, port, timeout=30)
    caps_before = sorted(p.capa().keys())
    p.stls(context=ctx)
else:
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=30)
    caps_before = []
caps = p.capa()
p.user(os.environ["USER_NAME"])
p.pass_(os.environ["USER_PASS"])
count, size = p.stat()
_, listing, _ = p.list()
_, uidl, _ = p.uidl()
_, lines, octets = p.retr(1)
_, top, _ = p.top(2, 1)
p.dele(2)
bye = p.quit()
print(json.dumps({
    "caps_before": caps_before,
    "caps": sorted(caps.keys()),
    "count": count, "size": size,
    "list": [l.decode() for l in listing],
    "uidl": [l.decode() for l in uidl],
    "retr1": b"\r\n".join(lines).decode() + "\r\n",
    "retr1_octets": octets,
    "top2": b"\r\n".join(top).decode() + "\r\n",
    "bye": bye.decode(),
}))
"#;

async fn poplib_session(pop3: &Pop3, mode: &str) -> serde_like::Summary {
    let port = if mode == "stls" {
        pop3.plain.port()
    } else {
        pop3.tls.port()
    };
    let (ok, stdout, stderr) = python(
        POPLIB_SESSION,
        &[
            ("PORT", port.to_string()),
            ("MODE", mode.to_string()),
            ("USER_NAME", ALICE.to_string()),
            ("USER_PASS", ALICE_PW.to_string()),
        ],
    )
    .await;
    assert!(ok, "poplib failed: {stderr}");
    serde_like::parse(&stdout)
}

/// Just enough JSON reading for the summary above (no serde dependency).
mod serde_like {
    #[derive(Debug)]
    pub struct Summary {
        pub raw: String,
    }
    pub fn parse(s: &str) -> Summary {
        Summary {
            raw: s.trim().to_string(),
        }
    }
    impl Summary {
        /// The JSON-encoded value of `key`, as text.
        pub fn get(&self, key: &str) -> String {
            let needle = format!("\"{key}\": ");
            let start = self
                .raw
                .find(&needle)
                .unwrap_or_else(|| panic!("{key} missing in {}", self.raw))
                + needle.len();
            let rest = &self.raw[start..];
            let mut depth = 0i32;
            let mut in_str = false;
            let mut escaped = false;
            for (i, ch) in rest.char_indices() {
                if in_str {
                    match (escaped, ch) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match ch {
                    '"' => in_str = true,
                    '[' | '{' => depth += 1,
                    ']' | '}' if depth > 0 => depth -= 1,
                    ',' | '}' if depth == 0 => return rest[..i].to_string(),
                    _ => {}
                }
            }
            rest.to_string()
        }
    }
}

async fn poplib_roundtrip(mode: &str) {
    let (store, user_id) = store_with_alice().await;
    let mut uids = Vec::new();
    for i in 1..=3 {
        uids.push(store.append(user_id, "INBOX", &message(i)).await);
    }
    let pop3 = start_pop3(&store, &[]).await;
    let s = poplib_session(&pop3, mode).await;
    let m1 = String::from_utf8(message(1)).unwrap();
    let size: usize = (1..=3).map(|i| message(i).len()).sum();
    assert_eq!(s.get("count"), "3");
    assert_eq!(s.get("size"), size.to_string());
    assert_eq!(
        s.get("list"),
        format!(
            "[\"1 {}\", \"2 {}\", \"3 {}\"]",
            message(1).len(),
            message(2).len(),
            message(3).len()
        )
    );
    let inbox = store
        .client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner();
    let v = inbox.uidvalidity;
    assert_eq!(
        s.get("uidl"),
        format!(
            "[\"1 {v}.{}\", \"2 {v}.{}\", \"3 {v}.{}\"]",
            uids[0], uids[1], uids[2]
        )
    );
    // poplib unstuffs the leading dot and reports the octets it read.
    let json_escape = |t: &str| {
        t.replace('\\', "\\\\")
            .replace('\r', "\\r")
            .replace('\n', "\\n")
    };
    assert_eq!(s.get("retr1"), format!("\"{}\"", json_escape(&m1)));
    let top2 = "From: sender2@example.net\r\nTo: alice@example.org\r\nSubject: message 2\r\nMessage-ID: <m2@example.net>\r\n\r\nBody of message 2.\r\n";
    assert_eq!(s.get("top2"), format!("\"{}\"", json_escape(top2)));
    assert!(s.get("bye").contains("(1 messages deleted)"), "{}", s.raw);
    let caps = s.get("caps");
    for c in [
        "PIPELINING",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "TOP",
        "UIDL",
        "USER",
        "SASL",
    ] {
        assert!(caps.contains(&format!("\"{c}\"")), "{c} not in {caps}");
    }
    assert!(
        !caps.contains("\"STLS\""),
        "STLS offered inside TLS: {caps}"
    );
    if mode == "stls" {
        let before = s.get("caps_before");
        assert!(
            before.contains("\"STLS\"") && !before.contains("\"USER\""),
            "{before}"
        );
    }
    assert_eq!(inbox_uids(&store, user_id).await, vec![uids[0], uids[2]]);
}

#[tokio::test]
async fn poplib_over_stls() {
    poplib_roundtrip("stls").await;
}

#[tokio::test]
async fn poplib_over_implicit_tls() {
    poplib_roundtrip("tls").await;
}

#[tokio::test]
async fn killed_connection_after_dele_deletes_nothing() {
    let (store, user_id) = store_with_alice().await;
    for i in 1..=5 {
        store.append(user_id, "INBOX", &message(i)).await;
    }
    let before = inbox_uids(&store, user_id).await;
    let pop3 = start_pop3(&store, &["--allow-plaintext-auth"]).await;
    // A real client that deletes everything, then dies without QUIT.
    let script = r#"
import os, poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3_SSL("127.0.0.1", int(os.environ["PORT"]), context=ctx, timeout=30)
p.user(os.environ["USER_NAME"]); p.pass_(os.environ["USER_PASS"])
for i in range(1, 6):
    p.dele(i)
os._exit(0)
"#;
    let (ok, _, stderr) = python(
        script,
        &[
            ("PORT", pop3.tls.port().to_string()),
            ("USER_NAME", ALICE.to_string()),
            ("USER_PASS", ALICE_PW.to_string()),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox_uids(&store, user_id).await, before);
    // And the maildrop is not left locked: a new session sees all five.
    let mut c = RawClient::connect_retrying_login(pop3.plain).await;
    assert_eq!(c.cmd("STAT").await.split(' ').nth(1), Some("5"));
}

/// Issue #16 over real sockets: a real client (poplib, TLS) deletes and
/// vanishes without QUIT, then comes back at once: its first login works
/// and every message is still there (RFC 1939 §6).
#[tokio::test]
async fn dropped_connection_then_immediate_login() {
    let (store, user_id) = store_with_alice().await;
    for i in 1..=3 {
        store.append(user_id, "INBOX", &message(i)).await;
    }
    let pop3 = start_pop3(&store, &["--allow-plaintext-auth"]).await;
    let script = r#"
import os, poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
for round in range(3):
    p = poplib.POP3_SSL("127.0.0.1", int(os.environ["PORT"]), context=ctx, timeout=30)
    p.user(os.environ["USER_NAME"]); p.pass_(os.environ["USER_PASS"])
    assert p.stat()[0] == 3, p.stat()
    p.dele(1)
    p.file.close(); p.sock.close()  # dropped: no QUIT
print("ok")
"#;
    let (ok, stdout, stderr) = python(
        script,
        &[
            ("PORT", pop3.tls.port().to_string()),
            ("USER_NAME", ALICE.to_string()),
            ("USER_PASS", ALICE_PW.to_string()),
        ],
    )
    .await;
    assert!(ok && stdout.contains("ok"), "{stdout}{stderr}");
    // And over plain TCP, from this process, first try.
    let mut c = RawClient::connect(pop3.plain).await;
    assert!(c.login().await.starts_with("+OK"));
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    drop(c);
    let mut c = RawClient::connect(pop3.plain).await;
    let r = c.login().await;
    assert!(r.starts_with("+OK"), "{r}");
    assert_eq!(c.cmd("STAT").await.split(' ').nth(1), Some("3"));
}

/// A minimal POP3 client over plain TCP (the binary runs with
/// `--allow-plaintext-auth` for these loopback tests).
struct RawClient {
    io: BufReader<TcpStream>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).await.unwrap();
        let mut c = Self {
            io: BufReader::new(io),
        };
        assert!(c.line().await.starts_with("+OK "));
        c
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.io.read_line(&mut s))
            .await
            .expect("reply within 20 s")
            .unwrap();
        s.trim_end_matches("\r\n").to_string()
    }

    async fn cmd(&mut self, c: &str) -> String {
        self.io
            .get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }

    async fn login(&mut self) -> String {
        assert!(self.cmd(&format!("USER {ALICE}")).await.starts_with("+OK"));
        self.cmd(&format!("PASS {ALICE_PW}")).await
    }

    /// Logs in, retrying while a just-ended session's lock is released.
    async fn connect_retrying_login(addr: SocketAddr) -> Self {
        for _ in 0..50 {
            let mut c = Self::connect(addr).await;
            let r = c.login().await;
            if r.starts_with("+OK") {
                return c;
            }
            assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("maildrop stayed locked");
    }
}

#[tokio::test]
async fn second_session_is_in_use_on_the_same_and_another_process() {
    let (store, user_id) = store_with_alice().await;
    store.add_user("bob@example.org", "bobs password").await;
    store.append(user_id, "INBOX", &message(1)).await;
    let args = ["--allow-plaintext-auth", "--lock-ttl-secs", "5"];
    let p1 = start_pop3(&store, &args).await;
    let mut p2 = start_pop3(&store, &args).await;

    let mut first = RawClient::connect(p1.plain).await;
    assert!(
        first
            .login()
            .await
            .starts_with("+OK Maildrop locked and ready")
    );

    let mut same = RawClient::connect(p1.plain).await;
    assert_eq!(
        same.login().await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    let mut other = RawClient::connect(p2.plain).await;
    assert_eq!(
        other.login().await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    // Another user is not affected.
    let mut bob = RawClient::connect(p2.plain).await;
    assert!(bob.cmd("USER bob@example.org").await.starts_with("+OK"));
    assert!(
        bob.cmd("PASS bobs password")
            .await
            .starts_with("+OK Maildrop locked")
    );

    // The lock is held (refreshed) past its 5 s TTL while the session lives.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        other.login().await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    assert!(first.cmd("STAT").await.starts_with("+OK 1 "));
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    // Released at QUIT: the other process gets it now.
    assert!(
        other
            .login()
            .await
            .starts_with("+OK Maildrop locked and ready")
    );
    assert!(other.cmd("DELE 1").await.starts_with("+OK"));

    // The process holding the lock dies (no QUIT, no release): nothing is
    // deleted, and the lock expires so the first process can take over.
    p2.child.kill().await.unwrap();
    let mut after = RawClient::connect(p1.plain).await;
    let r = after.login().await;
    assert_eq!(r, "-ERR [IN-USE] Maildrop is locked by another session");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(
        after
            .login()
            .await
            .starts_with("+OK Maildrop locked and ready")
    );
    assert!(after.cmd("STAT").await.starts_with("+OK 1 "));
    assert_eq!(inbox_uids(&store, user_id).await.len(), 1);
}

#[tokio::test]
async fn argument_validation_on_the_wire() {
    let (store, user_id) = store_with_alice().await;
    store.append(user_id, "INBOX", &message(1)).await;
    let pop3 = start_pop3(&store, &["--allow-plaintext-auth"]).await;
    let mut c = RawClient::connect(pop3.plain).await;
    assert!(c.login().await.starts_with("+OK"));
    for bad in [
        "RETR 0",
        "RETR 4294967296",
        "TOP 1 -1",
        "LIST 99999999999999999999",
        "DELE 1 2",
    ] {
        let r = c.cmd(bad).await;
        assert!(r.starts_with("-ERR"), "{bad} → {r}");
    }
    assert_eq!(c.cmd(&"X".repeat(300)).await, "-ERR line too long");
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
}

/// A private HOME for fetchmail (rc file, .fetchids), removed on drop.
struct TempHome(std::path::PathBuf);

impl TempHome {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "epistole-fetchmail-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs fetchmail with a generated rc file; returns its exit code and output.
async fn fetchmail(home: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new("fetchmail")
        .args(["--nodetach", "--nosyslog", "-v", "-f"])
        .arg(home.join("fetchmailrc"))
        .args(extra)
        .env("HOME", home)
        .env("FETCHMAILHOME", home)
        .env("FETCHMAILUSER", "tester")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run fetchmail (apt-get install -y fetchmail)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn fetchmail_keep_then_nothing_new_then_delete() {
    let (store, user_id) = store_with_alice().await;
    for i in 1..=100 {
        store.append(user_id, "INBOX", &message(i)).await;
    }
    let pop3 = start_pop3(&store, &[]).await;
    let home = TempHome::new();
    let mbox = home.path().join("mbox");
    // With FETCHMAILHOME set, fetchmail keeps its rc, .fetchids (UIDL
    // state) and pid file there; the rc is also named with -f.
    let rc = home.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no bouncemail\n\
             poll 127.0.0.1 with proto POP3 port {port} uidl\n\
             \x20 user \"{ALICE}\" there with password \"{ALICE_PW}\" is \"tester\" here\n\
             \x20 sslproto 'tls1.2+' no sslcertck\n\
             \x20 mda \"cat >> {mbox}\"\n",
            port = pop3.plain.port(),
            mbox = mbox.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let count = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Subject: message "))
            .count()
    };

    // 1: keep mode, everything is new.
    let (code, log) = fetchmail(home.path(), &["--keep"]).await;
    assert_eq!(code, 0, "fetchmail run 1 failed:\n{log}");
    assert!(log.contains("STLS"), "fetchmail did not use STLS:\n{log}");
    assert_eq!(count(&mbox), 100, "{log}");
    assert_eq!(inbox_uids(&store, user_id).await.len(), 100);
    let text = std::fs::read_to_string(&mbox).unwrap();
    for i in [1, 50, 100] {
        assert!(
            text.contains(&format!(
                "Body of message {i}.\n.a line with a leading dot\n"
            )),
            "message {i} body"
        );
    }

    // 2: keep mode again: UIDL says nothing is new (exit 1 = no mail).
    let (code, log) = fetchmail(home.path(), &["--keep"]).await;
    assert_eq!(code, 1, "fetchmail run 2 should find no new mail:\n{log}");
    assert_eq!(count(&mbox), 100, "{log}");

    // 3: delete: fetch everything again without keep, which deletes on the server.
    let (code, log) = fetchmail(home.path(), &["--nokeep", "--all"]).await;
    assert_eq!(code, 0, "fetchmail run 3 failed:\n{log}");
    assert_eq!(count(&mbox), 200, "{log}");
    assert!(inbox_uids(&store, user_id).await.is_empty(), "{log}");
}

/// threat model T8 on a real socket: `STLS\r\nCAPA\r\n` in one write; after the
/// handshake the first reply inside TLS must be the one to our QUIT.
#[tokio::test]
async fn stls_with_pipelined_capa_over_tcp() {
    let (store, _) = store_with_alice().await;
    let pop3 = start_pop3(&store, &[]).await;
    let script = r#"
import os, socket, ssl
def line(sock):
    b = b""
    while not b.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            return b + b"<EOF>"
        b += c
    return b
s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=20)
assert line(s).startswith(b"+OK ")
s.sendall(b"STLS\r\nCAPA\r\n")
print(line(s).decode().strip())
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(b"QUIT\r\n")
print(line(t).decode().strip())
"#;
    let (ok, stdout, stderr) = python(script, &[("PORT", pop3.plain.port().to_string())]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "+OK Begin TLS negotiation now",
            "+OK Epistole POP3 server signing off"
        ]
    );
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let (store, _) = store_with_alice().await;
    let pop3 = start_pop3(&store, &["--max-connections-per-ip", "2"]).await;
    let a = RawClient::connect(pop3.plain).await;
    let _b = RawClient::connect(pop3.plain).await;
    let mut c = BufReader::new(TcpStream::connect(pop3.plain).await.unwrap());
    let mut line = String::new();
    c.read_line(&mut line).await.unwrap();
    assert_eq!(
        line,
        "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
    );
    line.clear();
    assert_eq!(
        c.read_line(&mut line).await.unwrap(),
        0,
        "closed after refusal"
    );
    drop(a);
    // The slot comes back once the first connection is gone.
    for _ in 0..50 {
        let mut d = BufReader::new(TcpStream::connect(pop3.plain).await.unwrap());
        let mut line = String::new();
        d.read_line(&mut line).await.unwrap();
        if line.starts_with("+OK ") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot never freed");
}

#[tokio::test]
async fn health_endpoint_reports_store_readiness() {
    let (mut store, _) = store_with_alice().await;
    let pop3 = start_pop3(&store, &["--http-listen", "127.0.0.1:0"]).await;
    let http = pop3.http.expect("http listener reported");
    let get = |path: &'static str| async move {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
            .await
            .unwrap();
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    store.stop().await;
    assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
    store.restart().await;
}
