//! End-to-end tests of imap: the real `epistole imap` binary (one or two
//! processes), the real mailbox-store over PostgreSQL (test_kit), and real
//! clients: Python's imaplib (implicit TLS and STARTTLS), curl's IMAP
//! (STARTTLS), and isync/mbsync syncing 200 messages both ways, twice.
//!
//! Needs `python3`, `curl` and `mbsync` (Debian: `apt-get install -y isync curl`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mailstore_api::pb;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ALICE: &str = "alice@example.org";
const ALICE_PW: &str = "correct horse";

struct Imap {
    _child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "imap-e2e-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Starts `epistole imap` on ephemeral loopback ports with the given
/// certificate and reads the `listening name=addr` lines it prints.
async fn start_imap(store: &TestStore, cert: &Path, key: &Path) -> Imap {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args([
            "--log",
            "warn",
            "imap",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args([
            "--auth-failure-delay-ms",
            "100",
            "--store-url",
            &store.grpc_url,
            "--store-token",
            &store.token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn epistole imap");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = HashMap::new();
    while found.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("imap did not report its listeners")
            .unwrap()
            .expect("imap exited before listening");
        if let Some((name, addr)) = line
            .strip_prefix("listening ")
            .and_then(|l| l.split_once('='))
        {
            found.insert(name.to_string(), addr.parse::<SocketAddr>().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Imap {
        _child: child,
        plain: found["imap"],
        tls: found["imaps"],
    }
}

struct Setup {
    store: TestStore,
    user: u64,
    dir: Scratch,
    cert: PathBuf,
    key: PathBuf,
}

async fn setup(name: &str) -> Setup {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user(ALICE, ALICE_PW).await;
    let dir = Scratch::new(name);
    let (cert_pem, key_pem) = tls_kit::self_signed_pem("localhost").unwrap();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    Setup {
        store,
        user,
        dir,
        cert,
        key,
    }
}

fn message(i: usize, to: &str) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.net>\r\nTo: {to}\r\nSubject: message {i}\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m{i}@example.net>\r\n\r\nBody of message {i}.\r\nlast line\r\n"
    )
    .into_bytes()
}

async fn python(script: &str, args: &[String]) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("python timed out")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ALL OK"), "{stdout}\n{stderr}");
}

async fn mailbox(store: &TestStore, user_id: u64, name: &str) -> pb::Mailbox {
    store
        .client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id,
            name: name.into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
}

const IMAPLIB_SESSION: &str = r#"
import imaplib, ssl, sys, time, email
host, port, sport, user, pw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=sys.argv[6])
ctx.check_hostname = False

def ok(r):
    typ, data = r
    assert typ == 'OK', r
    return data

# Implicit TLS (993).
M = imaplib.IMAP4_SSL(host, sport, ssl_context=ctx)
ok(M.login(user, pw))
caps = M.capabilities
for c in ('IMAP4REV1', 'IDLE', 'MOVE', 'UIDPLUS', 'CONDSTORE', 'ESEARCH'):
    assert c in caps, (c, caps)
boxes = ok(M.list())
names = [b.decode() for b in boxes]
assert any(n.endswith(' INBOX') for n in names), names
assert any('\\Sent' in n for n in names), names
ok(M.create('Work'))

# Append three messages.
for i in range(3):
    msg = ('From: a%d@example.net\r\nTo: %s\r\nSubject: hello %d\r\n\r\nbody %d\r\n' % (i, user, i, i)).encode()
    typ, data = M.append('INBOX', '(\\Flagged)' if i == 0 else None, imaplib.Time2Internaldate(time.time()), msg)
    assert typ == 'OK' and b'APPENDUID' in data[0], (typ, data)

n = int(ok(M.select('INBOX'))[0])
assert n == 3, n
data = ok(M.fetch('1:*', '(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])'))
subjects = [d[1] for d in data if isinstance(d, tuple)]
assert subjects[0].startswith(b'Subject: hello 0'), subjects
data = ok(M.fetch('2', '(RFC822)'))
m = email.message_from_bytes(data[0][1])
assert m['Subject'] == 'hello 1', m['Subject']
data = ok(M.fetch('2', '(FLAGS)'))
assert b'\\Seen' in data[0], data
assert ok(M.search(None, 'FLAGGED'))[0] == b'1'
assert ok(M.search(None, 'UNSEEN'))[0] == b'1 3'
assert ok(M.search(None, 'SUBJECT', '"hello 2"'))[0] == b'3'
assert ok(M.uid('SEARCH', 'ALL'))[0] == b'1 2 3'
data = ok(M.store('3', '+FLAGS', '(\\Seen $Label1)'))
assert b'$Label1' in data[0], data
typ, data = M.copy('1', 'Work')
assert typ == 'OK', data
typ, data = M.uid('MOVE', '3', 'Work')
assert typ == 'OK', data
ok(M.store('1', '+FLAGS', '\\Deleted'))
typ, data = M.expunge()
# imaplib accumulates: the MOVE's EXPUNGE (seq 3) came first.
assert typ == 'OK' and data == [b'3', b'1'], data
assert ok(M.search(None, 'ALL'))[0] == b'1'
st = ok(M.status('Work', '(MESSAGES UIDNEXT)'))
assert b'MESSAGES 2' in st[0], st
ok(M.close())
M.logout()

# STARTTLS on the plain port, then IDLE while another connection acts.
A = imaplib.IMAP4(host, port)
assert 'LOGINDISABLED' in A.capabilities, A.capabilities
ok(A.starttls(ssl_context=ctx))
ok(A.login(user, pw))
ok(A.select('INBOX'))
B = imaplib.IMAP4_SSL(host, sport, ssl_context=ctx)
ok(B.login(user, pw))
ok(B.select('INBOX'))
tag = A._new_tag()
A.send(tag + b' IDLE\r\n')
assert A.readline().startswith(b'+'), 'no continuation'
A.sock.settimeout(5)
t0 = time.time()
ok(B.store('1', '+FLAGS', '\\Answered'))
line = A.readline()
assert line.startswith(b'* 1 FETCH') and b'\\Answered' in line, line
assert time.time() - t0 < 1.0, time.time() - t0
t0 = time.time()
ok(B.append('INBOX', None, None, b'Subject: new\r\n\r\nnew\r\n'))
line = A.readline()
assert line == b'* 2 EXISTS\r\n', line
assert time.time() - t0 < 1.0, time.time() - t0
A.send(b'DONE\r\n')
while True:
    line = A.readline()
    if line.startswith(tag):
        assert b' OK ' in line, line
        break
A.logout()
B.logout()
print('ALL OK')
"#;

#[tokio::test]
async fn imaplib_session_over_tls_and_starttls() {
    let s = setup("imaplib").await;
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        IMAPLIB_SESSION,
        &[
            "127.0.0.1".into(),
            imap.plain.port().to_string(),
            imap.tls.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
        ],
    )
    .await;
    let work = mailbox(&s.store, s.user, "Work").await;
    assert_eq!(work.messages, 2);
    let inbox = mailbox(&s.store, s.user, "INBOX").await;
    assert_eq!(inbox.messages, 2);
}

const TWO_PROCESSES: &str = r#"
import imaplib, ssl, sys, time
host, p1, p2, user, pw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=sys.argv[6])
ctx.check_hostname = False
A = imaplib.IMAP4_SSL(host, p1, ssl_context=ctx)
A.login(user, pw)
A.select('INBOX')
B = imaplib.IMAP4_SSL(host, p2, ssl_context=ctx)
B.login(user, pw)
B.select('INBOX')
# NOOP path: a flag set through process 2 shows up in process 1.
assert B.store('1', '+FLAGS', '\\Flagged')[0] == 'OK'
typ, data = A.noop()
resp = A.untagged_responses.get('FETCH', [])
assert any(b'\\Flagged' in r for r in resp), (typ, data, A.untagged_responses)
# IDLE path.
tag = A._new_tag()
A.send(tag + b' IDLE\r\n')
assert A.readline().startswith(b'+')
A.sock.settimeout(5)
t0 = time.time()
assert B.store('1', '-FLAGS', '\\Flagged')[0] == 'OK'
line = A.readline()
assert line.startswith(b'* 1 FETCH') and b'\\Flagged' not in line, line
assert time.time() - t0 < 1.0
A.send(b'DONE\r\n')
while not A.readline().startswith(tag):
    pass
A.logout(); B.logout()
print('ALL OK')
"#;

#[tokio::test]
async fn two_imap_processes_see_each_others_flags() {
    let s = setup("two").await;
    s.store.append(s.user, "INBOX", &message(1, ALICE)).await;
    let one = start_imap(&s.store, &s.cert, &s.key).await;
    let two = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        TWO_PROCESSES,
        &[
            "127.0.0.1".into(),
            one.tls.port().to_string(),
            two.tls.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
        ],
    )
    .await;
}

#[tokio::test]
async fn curl_lists_and_fetches_over_starttls() {
    let s = setup("curl").await;
    s.store.append(s.user, "INBOX", &message(7, ALICE)).await;
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    let base = format!("imap://127.0.0.1:{}", imap.plain.port());
    let curl = |url: String| {
        let cert = s.cert.clone();
        async move {
            let out = Command::new("curl")
                .args(["-sS", "--ssl-reqd", "--cacert"])
                .arg(&cert)
                .args(["-k", "-u", &format!("{ALICE}:{ALICE_PW}"), &url])
                .output()
                .await
                .expect("run curl");
            assert!(
                out.status.success(),
                "curl {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let list = curl(format!("{base}/")).await;
    assert!(list.contains("INBOX") && list.contains("Sent"), "{list}");
    let msg = curl(format!("{base}/INBOX;UID=1")).await;
    assert!(
        msg.contains("Subject: message 7") && msg.contains("Body of message 7."),
        "{msg}"
    );
    let search = curl(format!("{base}/INBOX?SUBJECT%20%22message%207%22")).await;
    assert!(search.contains("SEARCH 1"), "{search}");
    // Upload (APPEND with a literal) into another mailbox.
    let file = s.dir.0.join("upload.eml");
    std::fs::write(&file, message(8, ALICE)).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--ssl-reqd",
            "-k",
            "-u",
            &format!("{ALICE}:{ALICE_PW}"),
            "-T",
        ])
        .arg(&file)
        .arg(format!("{base}/Archive"))
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl upload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = mailbox(&s.store, s.user, "Archive").await;
    assert_eq!(archive.messages, 1);
    let msg = curl(format!("{base}/Archive;UID=1;SECTION=TEXT")).await;
    assert!(msg.starts_with("Body of message 8."), "{msg}");
}

fn maildir_files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.filter_map(Result::ok) {
                v.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    v.sort();
    v
}

#[tokio::test]
async fn mbsync_syncs_200_messages_both_ways_twice() {
    let s = setup("mbsync").await;
    for i in 0..100 {
        s.store.append(s.user, "INBOX", &message(i, ALICE)).await;
    }
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    // 100 local messages to upload.
    let local = s.dir.0.join("mail");
    let inbox = local.join("INBOX");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    for i in 100..200 {
        std::fs::write(
            inbox.join("new").join(format!("{i}.local.test")),
            message(i, ALICE),
        )
        .unwrap();
    }
    let cfg = s.dir.0.join("mbsyncrc");
    std::fs::write(
        &cfg,
        format!(
            "IMAPAccount test\nHost 127.0.0.1\nPort {port}\nUser {ALICE}\nPass \"{ALICE_PW}\"\nSSLType IMAPS\nCertificateFile {cert}\nTimeout 120\n\n\
             IMAPStore remote\nAccount test\n\n\
             MaildirStore local\nPath {local}/\nInbox {inbox}\n\n\
             Channel c\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\nSync All\nExpunge None\nSyncState *\n",
            port = imap.tls.port(),
            cert = s.cert.display(),
            local = local.display(),
            inbox = inbox.display(),
        ),
    )
    .unwrap();
    let run = || async {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            Command::new("mbsync")
                .arg("-c")
                .arg(&cfg)
                .arg("c")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("mbsync timed out")
        .expect("run mbsync (apt-get install isync)");
        eprintln!("mbsync run took {:?}", started.elapsed());
        assert!(
            out.status.success(),
            "mbsync failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run().await;
    let after1 = mailbox(&s.store, s.user, "INBOX").await;
    assert_eq!(after1.messages, 200);
    let files1 = maildir_files(&inbox);
    assert_eq!(files1.len(), 200, "{files1:?}");
    run().await;
    let after2 = mailbox(&s.store, s.user, "INBOX").await;
    assert_eq!(after2.messages, 200);
    assert_eq!(after2.uidnext, after1.uidnext, "second run uploaded again");
    assert_eq!(
        after2.highestmodseq, after1.highestmodseq,
        "second run changed flags"
    );
    assert_eq!(
        maildir_files(&inbox),
        files1,
        "second run changed the local side"
    );
}

const DELIVERED_TO_IDLE: &str = r#"
import imaplib, smtplib, ssl, sys, time
host, sport, mx, user, pw, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
A = imaplib.IMAP4_SSL(host, sport, ssl_context=ctx)
A.login(user, pw)
A.select('INBOX')
tag = A._new_tag()
A.send(tag + b' IDLE\r\n')
assert A.readline().startswith(b'+')
A.sock.settimeout(30)
h, p = mx.rsplit(':', 1)
msg = 'From: sender@remote.test\r\nTo: %s\r\nSubject: pushed\r\nMessage-ID: <pushed@remote.test>\r\n\r\nHello\r\n' % user
with smtplib.SMTP(h, int(p), local_hostname='client.remote.test') as c:
    c.sendmail('sender@remote.test', [user], msg)
sent = time.time()
line = A.readline()
while b'EXISTS' not in line:
    line = A.readline()
elapsed = time.time() - sent
assert line == b'* 1 EXISTS\r\n', line
print('latency %.3f s' % elapsed)
assert elapsed < 5, elapsed
A.send(b'DONE\r\n')
while not A.readline().startswith(tag):
    pass
typ, data = A.fetch('1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
assert b'Subject: pushed' in data[0][1], data
A.logout()
print('ALL OK')
"#;

#[tokio::test]
async fn smtp_delivery_reaches_an_idling_imaplib_client() {
    let s = setup("delivered").await;
    let smtp = test_kit::spawn_service(
        &s.store,
        &[
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.example.org",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "off",
            "--early-talker-delay-ms",
            "0",
        ],
        &["mx"],
    )
    .await;
    let _delivery = test_kit::spawn_service(
        &s.store,
        &[
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--worker-id",
            "w1",
            "--hostname",
            "mx.example.org",
        ],
        &[],
    )
    .await;
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        DELIVERED_TO_IDLE,
        &[
            "127.0.0.1".into(),
            imap.tls.port().to_string(),
            smtp.addr("mx").to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
        ],
    )
    .await;
}

const COMPRESS_SESSION: &str = r#"
import imaplib, ssl, sys, zlib
host, sport, user, pw, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
M = imaplib.IMAP4_SSL(host, sport, ssl_context=ctx)
M.login(user, pw)
typ, data = M.capability()
assert typ == 'OK' and b'COMPRESS=DEFLATE' in data[0], data
imaplib.Commands['COMPRESS'] = ('AUTH', 'SELECTED')
typ, data = M._simple_command('COMPRESS', 'DEFLATE')
assert typ == 'OK', (typ, data)

# RFC 4978: from here on both directions are raw DEFLATE (wbits -15).
class Deflated:
    def __init__(self, sock):
        self.sock, self.buf, self.wire_in = sock, b'', 0
        self.c = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)
    def send(self, data):
        self.sock.sendall(self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH))
    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError('closed')
        self.wire_in += len(chunk)
        self.buf += self.d.decompress(chunk)
    def readline(self):
        while b'\n' not in self.buf:
            self.fill()
        i = self.buf.index(b'\n') + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line
    def read(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
z = Deflated(M.sock)
M.send, M.readline, M.read = z.send, z.readline, z.read

typ, data = M.capability()
assert typ == 'OK' and b'COMPRESS=DEFLATE' not in data[0], data
body = b''.join(b'line %d of a long and very compressible message\r\n' % i for i in range(4000))
msg = b'From: a@example.org\r\nSubject: squeezed\r\n\r\n' + body
typ, data = M.append('INBOX', None, None, msg)
assert typ == 'OK', data
typ, data = M.select('INBOX')
assert typ == 'OK', data
typ, data = M.uid('SEARCH', None, 'SUBJECT', 'squeezed')
uid = data[0].split()[-1]
before = z.wire_in
typ, data = M.uid('FETCH', uid, '(BODY.PEEK[])')
assert typ == 'OK' and data[0][1] == msg, 'round trip'
assert z.wire_in - before < len(msg) // 4, ('not compressed', z.wire_in - before, len(msg))
typ, data = M._simple_command('COMPRESS', 'DEFLATE')
assert typ == 'NO' and b'COMPRESSIONACTIVE' in data[0], (typ, data)
M.logout()
print('ALL OK')
"#;

/// COMPRESS=DEFLATE (RFC 4978) over TLS with Python's imaplib and zlib:
/// after the tagged OK both directions are raw DEFLATE; a 200 KB message
/// appended and fetched back is identical and crosses the wire in a
/// fraction of its size; a second COMPRESS is refused.
#[tokio::test]
async fn compress_deflate_round_trip_over_tls() {
    let s = setup("compress").await;
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        COMPRESS_SESSION,
        &[
            "127.0.0.1".into(),
            imap.tls.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
        ],
    )
    .await;
}

const IMAPLIB_SORT_THREAD: &str = r#"
import imaplib, ssl, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=sys.argv[5])
ctx.check_hostname = False
M = imaplib.IMAP4_SSL(host, port, ssl_context=ctx)
M.login(user, pw)
for cap in ('SORT', 'SORT=DISPLAY', 'THREAD=ORDEREDSUBJECT', 'ESORT'):
    assert cap in M.capabilities, (cap, M.capabilities)
M.select('INBOX')
typ, data = M.sort('(SUBJECT)', 'UTF-8', 'ALL')
assert typ == 'OK' and data == [b'2 3 1 4'], (typ, data)
typ, data = M.sort('(REVERSE DATE)', 'UTF-8', 'ALL')
assert typ == 'OK' and data == [b'3 2 1 4'], (typ, data)
typ, data = M.sort('(DISPLAYFROM)', 'UTF-8', 'NOT', 'FROM', 'zed')
assert typ == 'OK' and data == [b'4 3 2'], (typ, data)
typ, data = M.uid('SORT', '(SUBJECT)', 'UTF-8', 'ALL')
assert typ == 'OK' and data == [b'%s' % b' '.join(sys.argv[6].encode().split(b','))], (typ, data)
typ, data = M.thread('ORDEREDSUBJECT', 'UTF-8', 'ALL')
assert typ == 'OK' and data == [b'(4 1)(2 3)'], (typ, data)
typ, data = M.thread('ORDEREDSUBJECT', 'UTF-8', 'SUBJECT', 'alpha')
assert typ == 'OK' and data == [b'(2 3)'], (typ, data)
M.logout()
print('ALL OK')
"#;

/// Python's imaplib drives SORT, UID SORT, SORT=DISPLAY and
/// THREAD=ORDEREDSUBJECT against the real binary (RFC 5256, RFC 5957).
#[tokio::test]
async fn imaplib_sort_and_thread() {
    let s = setup("sort").await;
    let msgs = [
        (
            "Zed <z@example.org>",
            "Mon, 1 Jan 2024 10:00:00 +0000",
            "Re: beta",
        ),
        ("c@example.org", "Mon, 1 Jan 2024 12:00:00 +0100", "alpha"),
        (
            "=?UTF-8?Q?Bob?= <b@example.org>",
            "Tue, 2 Jan 2024 09:00:00 +0000",
            "Fwd: Alpha",
        ),
        (
            "a@example.org",
            "Sun, 31 Dec 2023 09:00:00 +0000",
            "[list] beta (fwd)",
        ),
    ];
    let mut uids = Vec::new();
    for (from, date, subject) in msgs {
        let raw = format!(
            "From: {from}\r\nTo: {ALICE}\r\nDate: {date}\r\nSubject: {subject}\r\n\r\nx\r\n"
        );
        uids.push(s.store.append(s.user, "INBOX", raw.as_bytes()).await);
    }
    let by_subject = [uids[1], uids[2], uids[0], uids[3]]
        .map(|u| u.to_string())
        .join(",");
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        IMAPLIB_SORT_THREAD,
        &[
            "127.0.0.1".into(),
            imap.tls.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
            by_subject,
        ],
    )
    .await;
}

const QRESYNC: &str = r#"
import imaplib, re, ssl, sys
host, sport, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=sys.argv[5])
ctx.check_hostname = False
def connect():
    M = imaplib.IMAP4_SSL(host, sport, ssl_context=ctx)
    M.login(user, pw)
    return M
A = connect()
assert b'QRESYNC' in A.capabilities or 'QRESYNC' in A.capabilities, A.capabilities
typ, data = A.enable('QRESYNC')
assert typ == 'OK' and A.untagged_responses.get('ENABLED') == [b'QRESYNC'], A.untagged_responses
typ, data = A.select('INBOX')
assert data == [b'5'], data
uidvalidity = A.untagged_responses['UIDVALIDITY'][0].decode()
modseq = A.untagged_responses['HIGHESTMODSEQ'][0].decode()
A.logout()
# Another client (no QRESYNC) flags one message and expunges two.
B = connect()
B.select('INBOX')
assert B.store('1', '+FLAGS', '\\Flagged')[0] == 'OK'
assert B.store('2,4', '+FLAGS', '\\Deleted')[0] == 'OK'
typ, data = B.expunge()
assert typ == 'OK' and data == [b'2', b'3'], data
# The first client comes back with what it remembers.
C = connect()
C.enable('QRESYNC')
typ, data = C._simple_command('SELECT', 'INBOX (QRESYNC (%s %s))' % (uidvalidity, modseq))
assert typ == 'OK', (typ, data)
C.state = 'SELECTED'
r = C.untagged_responses
assert r.get('EXISTS') == [b'3'], r
assert r.get('VANISHED') == [b'(EARLIER) 2,4'], r
fetches = r.get('FETCH', [])
assert len(fetches) == 1 and re.match(rb'1 \(UID 1 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)', fetches[0]), fetches
r.clear()
# The same through UID FETCH (CHANGEDSINCE n VANISHED).
typ, data = C.uid('FETCH', '1:*', '(FLAGS) (CHANGEDSINCE %s VANISHED)' % modseq)
assert typ == 'OK', (typ, data)
assert C.untagged_responses.get('VANISHED') == [b'(EARLIER) 2,4'], C.untagged_responses
assert len(data) == 1 and b'UID 1 FLAGS (\\Flagged)' in data[0], data
C.untagged_responses.clear()
# An expunge elsewhere now reaches C as VANISHED, never EXPUNGE.
assert B.store('2', '+FLAGS', '\\Deleted')[0] == 'OK'
B.expunge()
typ, data = C.noop()
assert C.untagged_responses.get('VANISHED') == [b'3'], C.untagged_responses
assert 'EXPUNGE' not in C.untagged_responses, C.untagged_responses
typ, data = C.uid('SEARCH', None, 'ALL')
assert data == [b'1 5'], data
B.logout(); C.logout()
print('ALL OK')
"#;

/// QRESYNC (RFC 7162 §3.2) with Python's imaplib against the real binary:
/// a client that remembered UIDVALIDITY and HIGHESTMODSEQ learns, after
/// another client flagged one message and expunged two, exactly that
/// (VANISHED (EARLIER) and one FETCH) at SELECT and through UID FETCH
/// (CHANGEDSINCE n VANISHED); later expunges reach it as VANISHED.
#[tokio::test]
async fn imaplib_qresync_after_expunges_elsewhere() {
    let s = setup("qresync").await;
    for i in 1..=5 {
        s.store.append(s.user, "INBOX", &message(i, ALICE)).await;
    }
    let imap = start_imap(&s.store, &s.cert, &s.key).await;
    python(
        QRESYNC,
        &[
            "127.0.0.1".into(),
            imap.tls.port().to_string(),
            ALICE.into(),
            ALICE_PW.into(),
            s.cert.display().to_string(),
        ],
    )
    .await;
}
