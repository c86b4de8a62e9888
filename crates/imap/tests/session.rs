//! Transcript tests: the real session over an in-memory pipe, against the
//! real mailbox-store (test_kit::TestStore on a throwaway PostgreSQL).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use imap::conn::Server;
use imap::session::{SessionConfig, Shared};
use service_kit::Shutdown;
use service_kit::starttls::serve_connection;
use test_kit::TestStore;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};

const MSG1: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: hello one\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nfirst body line\r\nsecond line\r\n";
const MSG2: &[u8] = b"From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.org>\r\nTo: bob@example.org\r\nSubject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\npart one text\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y.z\r\n\r\ninner body\r\n--XX--\r\n";

struct Env {
    store: TestStore,
    user: u64,
    tls: service_kit::Tls,
    cert: rustls_pki_types::CertificateDer<'static>,
}

async fn env() -> Env {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user("bob@example.org", "secret").await;
    let (config, cert) = tls_kit::self_signed("localhost").unwrap();
    let tls = service_kit::Tls::new(config, "imap");
    Env {
        store,
        user,
        tls,
        cert,
    }
}

fn config(plaintext: bool) -> SessionConfig {
    SessionConfig {
        allow_plaintext_auth: plaintext,
        tls_available: true,
        ..SessionConfig::default()
    }
}

struct Client<S> {
    rd: BufReader<tokio::io::ReadHalf<S>>,
    wr: tokio::io::WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Client<S> {
    fn new(s: S) -> Self {
        let (r, w) = tokio::io::split(s);
        Self {
            rd: BufReader::new(r),
            wr: w,
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.wr.write_all(b).await.unwrap();
        self.wr.flush().await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut v = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.rd.read_until(b'\n', &mut v))
            .await
            .expect("timed out waiting for a line")
            .unwrap();
        assert!(n > 0, "connection closed");
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Reads until the tagged reply; returns everything (untagged lines and
    /// literal contents included) and the tagged line.
    async fn until(&mut self, tag: &str) -> (String, String) {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            if l.starts_with(&format!("{tag} ")) {
                return (all, l);
            }
            all.push_str(&l);
        }
    }

    async fn cmd(&mut self, tag: &str, c: &str) -> (String, String) {
        self.send(format!("{tag} {c}\r\n").as_bytes()).await;
        self.until(tag).await
    }

    async fn ok(&mut self, tag: &str, c: &str) -> String {
        let (u, t) = self.cmd(tag, c).await;
        assert!(t.starts_with(&format!("{tag} OK")), "{c}: {u}{t}");
        u
    }

    /// Asserts no byte arrives within `ms`.
    async fn silent(&mut self, ms: u64) {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(ms), self.rd.read(&mut b)).await;
        assert!(r.is_err(), "unexpected data: {:?}", &b);
    }
}

fn connect(env: &Env, cfg: SessionConfig) -> Client<tokio::io::DuplexStream> {
    connect_shared(
        env,
        Arc::new(Shared::new(cfg, env.store.client())),
        Shutdown::new(),
    )
}

fn connect_shared(
    env: &Env,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Client<tokio::io::DuplexStream> {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = Server {
        shared,
        acceptor: Some(env.tls.clone()),
    };
    tokio::spawn(async move {
        let _ = serve_connection(
            &server,
            b,
            "127.0.0.1".parse().unwrap(),
            "t1".into(),
            false,
            &shutdown,
        )
        .await;
    });
    Client::new(a)
}

async fn logged_in(env: &Env) -> Client<tokio::io::DuplexStream> {
    let mut c = connect(env, config(true));
    let g = c.line().await;
    assert!(g.starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2"), "{g}");
    c.ok("l", "LOGIN bob@example.org secret").await;
    c
}

#[tokio::test]
async fn greeting_capability_and_login() {
    let env = env().await;
    let mut c = connect(&env, config(false));
    let g = c.line().await;
    assert!(g.contains("STARTTLS") && g.contains("LOGINDISABLED"), "{g}");
    assert!(!g.contains("AUTH=PLAIN"));
    let (_, t) = c.cmd("a", "LOGIN bob@example.org secret").await;
    assert!(t.starts_with("a NO [PRIVACYREQUIRED]"), "{t}");
    let (_, t) = c
        .cmd("b", "AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLm9yZwBzZWNyZXQ=")
        .await;
    assert!(t.starts_with("b NO [PRIVACYREQUIRED]"), "{t}");

    let mut c = connect(&env, config(true));
    c.line().await;
    let u = c.ok("a", "CAPABILITY").await;
    assert!(
        u.contains("AUTH=PLAIN") && !u.contains("LOGINDISABLED"),
        "{u}"
    );
    // Wrong password and unknown user: identical answers.
    let (_, t1) = c.cmd("b", "LOGIN bob@example.org wrong").await;
    let (_, t2) = c.cmd("b", "LOGIN nobody@example.org wrong").await;
    assert_eq!(t1, t2);
    assert!(t1.starts_with("b NO [AUTHENTICATIONFAILED]"), "{t1}");
    // Literal split across reads, then a non-synchronizing literal.
    c.send(b"c LOGIN {15}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"bob@exam").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(b"ple.org {6+}\r\nsec").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(b"ret\r\n").await;
    let (_, t) = c.until("c").await;
    assert!(t.starts_with("c OK [CAPABILITY"), "{t}");
    let (_, t) = c.cmd("d", "LOGIN a b").await;
    assert!(t.starts_with("d BAD"), "{t}");
    c.ok("e", "LOGOUT").await;
}

#[tokio::test]
async fn authenticate_plain_with_and_without_initial_response() {
    let env = env().await;
    let mut c = connect(&env, config(true));
    c.line().await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ \r\n");
    c.send(b"AGJvYkBleGFtcGxlLm9yZwBzZWNyZXQ=\r\n").await;
    let (_, t) = c.until("a").await;
    assert!(t.starts_with("a OK"), "{t}");

    let mut c = connect(&env, config(true));
    c.line().await;
    c.ok("a", "AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLm9yZwBzZWNyZXQ=")
        .await;
    let mut c = connect(&env, config(true));
    c.line().await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    c.line().await;
    c.send(b"*\r\n").await;
    let (_, t) = c.until("a").await;
    assert!(t.starts_with("a BAD"), "{t}");
}

#[tokio::test]
async fn pipelined_commands_answer_in_order() {
    let env = env().await;
    let mut c = connect(&env, config(true));
    c.line().await;
    c.send(
        b"a NOOP\r\nb CAPABILITY\r\nc LOGIN bob@example.org secret\r\nd SELECT INBOX\r\ne NOOP\r\n",
    )
    .await;
    for t in ["a", "b", "c", "d", "e"] {
        let (_, line) = c.until(t).await;
        assert!(line.starts_with(&format!("{t} OK")), "{line}");
    }
}

#[tokio::test]
async fn starttls_discards_pipelined_commands() {
    let env = env().await;
    let mut c = connect(&env, config(false));
    c.line().await;
    // threat model T7: one write; B must never be answered.
    c.send(b"A STARTTLS\r\nB NOOP\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("A OK"), "{l}");
    let stream = c.rd.into_inner().unsplit(c.wr);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(env.cert.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = connector
        .connect("localhost".try_into().unwrap(), stream)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    let u = c.ok("C", "CAPABILITY").await;
    assert!(
        !u.contains("STARTTLS") && !u.contains("LOGINDISABLED") && u.contains("AUTH=PLAIN"),
        "{u}"
    );
    assert!(!u.contains("B OK"), "{u}");
    let (_, t) = c.cmd("D", "STARTTLS").await;
    assert!(t.starts_with("D BAD"), "{t}");
    c.ok("E", "LOGIN bob@example.org secret").await;
}

#[tokio::test]
async fn limits_answer_before_continuation() {
    let env = env().await;
    let mut c = connect(&env, config(true));
    c.line().await;
    // threat model T27: no "+", a NO/BAD, connection still usable.
    c.send(b"a LOGIN {4294967295}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("a NO [TOOBIG]"), "{l}");
    c.ok("b", "NOOP").await;
    c.send(b"x LOGIN \"us\x00er\" \"pw\"\r\n").await;
    let (_, t) = c.until("x").await;
    assert!(t.starts_with("x BAD"), "{t}");
    c.ok("l", "LOGIN bob@example.org secret").await;
    // threat model T29.
    c.send(b"c APPEND INBOX {99999999999}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("c NO [TOOBIG]"), "{l}");
    c.send(b"d APPEND INBOX {5000000000+}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("d NO [TOOBIG]"), "{l}");
    assert!(c.line().await.starts_with("* BYE"));

    // threat model T30: deep nesting → BAD, connection alive.
    let mut c = logged_in(&env).await;
    c.ok("s", "SELECT INBOX").await;
    let mut cmd = b"a SEARCH ".to_vec();
    cmd.extend(std::iter::repeat_n(b'(', 4000));
    cmd.extend_from_slice(b"ALL");
    cmd.extend(std::iter::repeat_n(b')', 4000));
    cmd.extend_from_slice(b"\r\n");
    c.send(&cmd).await;
    let (_, t) = c.until("a").await;
    assert!(t.starts_with("a BAD"), "{t}");
    c.ok("b", "FETCH 1:4294967295 FLAGS").await;
    // threat model T31: a line with no end → BYE and close.
    let junk = vec![b'('; 200_000];
    c.send(&junk).await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
}

#[tokio::test]
async fn mailbox_commands() {
    let env = env().await;
    let mut c = logged_in(&env).await;
    let u = c.ok("a", "LIST \"\" \"*\"").await;
    assert!(u.contains("* LIST (\\HasNoChildren) \"/\" INBOX"), "{u}");
    assert!(u.contains("\\Sent) \"/\" Sent"), "{u}");
    let u = c.ok("a", "LIST \"\" \"\"").await;
    assert_eq!(u, "* LIST (\\Noselect) \"/\" \"\"\r\n");
    c.ok("b", "CREATE Projects/Epistole").await;
    c.ok("b", "CREATE \"Entw&APw-rfe\"").await;
    let (_, t) = c.cmd("b", "CREATE \"&Jjo\"").await;
    assert!(t.starts_with("b NO"), "{t}");
    let (_, t) = c.cmd("b", "CREATE \"../../x\"").await;
    assert!(t.starts_with("b NO"), "{t}");
    let (_, t) = c.cmd("b", "CREATE inbox").await;
    assert!(t.starts_with("b NO [ALREADYEXISTS]"), "{t}");
    let u = c.ok("c", "LIST \"\" %").await;
    assert!(
        u.contains("\"/\" Projects\r\n") && u.contains("\"/\" \"Entw&APw-rfe\"")
            || u.contains("\"/\" Entw&APw-rfe"),
        "{u}"
    );
    assert!(!u.contains("Projects/Epistole"), "{u}");
    let u = c.ok("c", "LIST Projects/ %").await;
    assert!(u.contains("Projects/Epistole"), "{u}");
    c.ok("d", "RENAME Projects/Epistole Projects/Mail").await;
    let u = c.ok("d", "LIST \"\" Projects/*").await;
    assert!(
        u.contains("Projects/Mail") && !u.contains("Projects/Epistole"),
        "{u}"
    );
    c.ok("e", "SUBSCRIBE Projects/Mail").await;
    let u = c.ok("e", "LSUB \"\" *").await;
    assert!(u.contains("* LSUB () \"/\" Projects/Mail"), "{u}");
    let u = c
        .ok(
            "e",
            "LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES UNSEEN SIZE))",
        )
        .await;
    assert!(
        u.contains("\\Subscribed")
            && u.contains("* STATUS Projects/Mail (MESSAGES 0 UNSEEN 0 SIZE 0)"),
        "{u}"
    );
    let u = c.ok("e", "LIST (SPECIAL-USE) \"\" *").await;
    assert!(u.contains("\\Trash") && !u.contains("INBOX"), "{u}");
    // RFC 5258 §3.5: the unsubscribed parent shows up with CHILDINFO.
    let u = c.ok("e", "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %").await;
    assert!(
        u.contains(
            "* LIST (\\Noselect \\HasChildren) \"/\" Projects (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{u}"
    );
    c.ok("f", "UNSUBSCRIBE Projects/Mail").await;
    c.ok("g", "DELETE Projects/Mail").await;
    let (_, t) = c.cmd("g", "DELETE Projects/Mail").await;
    assert!(t.starts_with("g NO"), "{t}");
    let (_, t) = c.cmd("g", "DELETE INBOX").await;
    assert!(t.starts_with("g NO"), "{t}");
    env.store.append(env.user, "INBOX", MSG1).await;
    let u = c
        .ok(
            "h",
            "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE HIGHESTMODSEQ DELETED)",
        )
        .await;
    assert!(
        u.starts_with("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY "),
        "{u}"
    );
    assert!(u.contains(&format!("SIZE {}", MSG1.len())), "{u}");
    let u = c.ok("i", "NAMESPACE").await;
    assert_eq!(u, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
    // UTF-8 names once enabled (RFC 6855).
    let u = c.ok("j", "ENABLE UTF8=ACCEPT").await;
    assert_eq!(u, "* ENABLED UTF8=ACCEPT\r\n");
    let u = c.ok("j", "LIST \"\" Entw*").await;
    assert!(u.contains("\"Entwürfe\""), "{u}");
}

#[tokio::test]
async fn select_fetch_store_search() {
    let env = env().await;
    env.store.append(env.user, "INBOX", MSG1).await;
    env.store.append(env.user, "INBOX", MSG2).await;
    let mut c = logged_in(&env).await;
    let u = c.ok("a", "SELECT INBOX").await;
    assert!(
        u.contains("* 2 EXISTS") && u.contains("* 2 RECENT") && u.contains("[UIDVALIDITY "),
        "{u}"
    );
    assert!(
        u.contains("[UIDNEXT 3]") && u.contains("[UNSEEN 1]") && u.contains("[HIGHESTMODSEQ "),
        "{u}"
    );
    assert!(
        u.contains("[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"),
        "{u}"
    );

    let u = c
        .ok("b", "FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
        .await;
    assert!(
        u.contains(&format!(
            "* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE {} INTERNALDATE \"",
            MSG1.len()
        )),
        "{u}"
    );
    let u = c.ok("c", "FETCH 1 ENVELOPE").await;
    assert!(
        u.contains("ENVELOPE (\"Mon, 1 Jan 2024 10:00:00 +0000\" \"hello one\" ((\"Alice\" NIL \"alice\" \"example.org\"))"),
        "{u}"
    );
    assert!(u.contains("\"<m1@example.org>\")"), "{u}");
    let u = c.ok("c", "FETCH 2 ENVELOPE").await;
    assert!(
        u.contains("((\"=?UTF-8?B?SsO8cmdlbg==?=\" NIL \"j\" \"example.org\"))"),
        "{u}"
    );
    let u = c.ok("d", "FETCH 1 BODYSTRUCTURE").await;
    assert!(u.contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\" "), "{u}");
    let u = c.ok("d", "FETCH 2 BODY").await;
    assert!(
        u.contains("BODY ((\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 13 "),
        "{u}"
    );
    assert!(u.contains("\"MESSAGE\" \"RFC822\""), "{u}");
    assert!(u.contains(" \"MIXED\")"), "{u}");

    // PEEK keeps \Seen off; partial and sections by byte range.
    let u = c
        .ok("e", "FETCH 1 (BODY.PEEK[TEXT] BODY.PEEK[]<0.4>)")
        .await;
    assert!(
        u.contains("BODY[TEXT] {30}\r\nfirst body line\r\nsecond line\r\n"),
        "{u}"
    );
    assert!(u.contains("BODY[]<0> {4}\r\nFrom"), "{u}");
    let u = c.ok("e", "FETCH 1 FLAGS").await;
    assert!(!u.contains("\\Seen"), "{u}");
    let u = c.ok("f", "FETCH 2 (BODY.PEEK[1] BODY.PEEK[3.HEADER] BODY.PEEK[3.1] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BINARY.PEEK[2] BINARY.SIZE[2] BODY.PEEK[9])").await;
    assert!(u.contains("BODY[1] {13}\r\npart one text"), "{u}");
    assert!(
        u.contains("BODY[3.HEADER] {31}\r\nSubject: inner\r\nFrom: x@y.z\r\n\r\n"),
        "{u}"
    );
    assert!(u.contains("BODY[3.1] {10}\r\ninner body"), "{u}");
    assert!(
        u.contains("BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: multi\r\n\r\n"),
        "{u}"
    );
    assert!(u.contains("BINARY[2] {11}\r\nhello world"), "{u}");
    assert!(u.contains("BINARY.SIZE[2] 11"), "{u}");
    assert!(u.contains("BODY[9] \"\""), "{u}");
    // Non-peek sets \Seen and reports FLAGS.
    let u = c.ok("g", "FETCH 1 BODY[HEADER]").await;
    assert!(u.contains("FLAGS (\\Seen \\Recent)"), "{u}");
    let u = c.ok("g", "UID FETCH 1:* (FLAGS)").await;
    assert!(
        u.contains("* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))")
            && u.contains("* 2 FETCH (UID 2 FLAGS (\\Recent))"),
        "{u}"
    );

    let u = c.ok("h", "STORE 2 +FLAGS (\\Flagged $Work)").await;
    assert!(u.contains("* 2 FETCH (FLAGS ("), "{u}");
    assert!(u.contains("\\Flagged") && u.contains("$Work"), "{u}");
    let u = c.ok("h", "STORE 2 -FLAGS.SILENT ($Work)").await;
    assert_eq!(u, "");
    let u = c.ok("i", "SEARCH FLAGGED").await;
    assert_eq!(u, "* SEARCH 2\r\n");
    let u = c.ok("i", "UID SEARCH UNSEEN").await;
    assert_eq!(u, "* SEARCH 2\r\n");
    let u = c.ok("i", "SEARCH SUBJECT hello").await;
    assert_eq!(u, "* SEARCH 1\r\n");
    let u = c.ok("i", "SEARCH OR FROM alice BODY \"part one\"").await;
    assert_eq!(u, "* SEARCH 1 2\r\n");
    let u = c.ok("i", "SEARCH NOT 1 RECENT").await;
    assert_eq!(u, "* SEARCH 2\r\n");
    let u = c.ok("i", "SEARCH RETURN (MIN MAX COUNT ALL) ALL").await;
    assert_eq!(u, "* ESEARCH (TAG \"i\") MIN 1 MAX 2 COUNT 2 ALL 1:2\r\n");
    let u = c
        .ok("i", "SEARCH SINCE 1-Jan-2000 LARGER 10 SMALLER 100000")
        .await;
    assert_eq!(u, "* SEARCH 1 2\r\n");
    let (u, t) = c.cmd("i", "SEARCH CHARSET KOI8-R ALL").await;
    assert!(t.starts_with("i NO [BADCHARSET"), "{u}{t}");

    // CONDSTORE.
    let u = c.ok("j", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)").await;
    assert!(u.contains("MODSEQ ("), "{u}");
    let u = c.ok("j", "SEARCH MODSEQ 1").await;
    assert!(u.starts_with("* SEARCH 1 2 (MODSEQ "), "{u}");
    let (u, t) = c
        .cmd("j", "STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Answered)")
        .await;
    assert!(t.starts_with("j OK [MODIFIED 1]"), "{u}{t}");
}

#[tokio::test]
async fn copy_move_expunge_append() {
    let env = env().await;
    for _ in 0..3 {
        env.store.append(env.user, "INBOX", MSG1).await;
    }
    let mut c = logged_in(&env).await;
    c.ok("a", "SELECT INBOX").await;
    let (u, t) = c.cmd("b", "COPY 1:2 Archive").await;
    assert!(
        t.starts_with("b OK [COPYUID ") && t.contains(" 1:2 1:2]"),
        "{u}{t}"
    );
    let (_, t) = c.cmd("b", "COPY 1 Nowhere").await;
    assert!(t.starts_with("b NO [TRYCREATE]"), "{t}");
    let u = c.ok("c", "MOVE 2 Trash").await;
    assert!(
        u.contains("* OK [COPYUID ") && u.contains("* 2 EXPUNGE"),
        "{u}"
    );
    let u = c.ok("d", "UID MOVE 3 Trash").await;
    assert!(u.contains("* 2 EXPUNGE"), "{u}");
    let u = c.ok("e", "FETCH 1:* UID").await;
    assert_eq!(u, "* 1 FETCH (UID 1)\r\n");

    // APPEND with flags, date, literal; APPENDUID; EXISTS in the selected mailbox.
    c.send(b"f APPEND INBOX (\\Seen) \" 5-Mar-2024 10:00:00 +0100\" {7}\r\n")
        .await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"Hi\r\n\r\nx\r\n").await;
    let (u, t) = c.until("f").await;
    assert!(
        t.starts_with("f OK [APPENDUID ") && t.contains(" 4]"),
        "{u}{t}"
    );
    assert!(u.contains("* 2 EXISTS"), "{u}");
    let u = c.ok("g", "FETCH 2 (FLAGS INTERNALDATE)").await;
    assert!(
        u.contains("\\Seen") && u.contains("\"05-Mar-2024 09:00:00 +0000\""),
        "{u}"
    );
    let (_, t) = c.cmd("g", "APPEND Nowhere {1+}\r\nx").await;
    assert!(t.starts_with("g NO [TRYCREATE]"), "{t}");

    c.ok("h", "STORE 1:2 +FLAGS.SILENT (\\Deleted)").await;
    let u = c.ok("i", "UID EXPUNGE 4").await;
    assert_eq!(u, "* 2 EXPUNGE\r\n");
    let u = c.ok("j", "EXPUNGE").await;
    assert_eq!(u, "* 1 EXPUNGE\r\n");
    let u = c.ok("k", "FETCH 1:* UID").await;
    assert_eq!(u, "");

    // EXAMINE is read-only; CLOSE vs UNSELECT.
    let u = c.ok("l", "EXAMINE Archive").await;
    assert!(u.contains("* 2 EXISTS"), "{u}");
    let (_, t) = c.cmd("l", "STORE 1 +FLAGS (\\Deleted)").await;
    assert!(t.starts_with("l NO"), "{t}");
    c.ok("m", "SELECT Archive").await;
    c.ok("m", "STORE 1 +FLAGS (\\Deleted)").await;
    c.ok("n", "UNSELECT").await;
    let (_, t) = c.cmd("n", "FETCH 1 FLAGS").await;
    assert!(t.starts_with("n BAD"), "{t}");
    let u = c.ok("o", "STATUS Archive (MESSAGES)").await;
    assert!(u.contains("MESSAGES 2"), "{u}");
    c.ok("p", "SELECT Archive").await;
    c.ok("p", "CLOSE").await;
    let u = c.ok("q", "STATUS Archive (MESSAGES)").await;
    assert!(u.contains("MESSAGES 1"), "{u}");
}

#[tokio::test]
async fn idle_and_updates_from_other_sessions() {
    let env = env().await;
    env.store.append(env.user, "INBOX", MSG1).await;
    let mut a = logged_in(&env).await;
    let mut b = logged_in(&env).await;
    a.ok("a", "SELECT INBOX").await;
    b.ok("b", "SELECT INBOX").await;
    a.send(b"i IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    // A flag set in the other session reaches the idling one.
    b.ok("c", "STORE 1 +FLAGS (\\Flagged)").await;
    let l = a.line().await;
    assert!(l.starts_with("* 1 FETCH (UID 1 FLAGS (\\Flagged"), "{l}");
    // A delivery reaches it too.
    env.store.append(env.user, "INBOX", MSG2).await;
    let l = a.line().await;
    assert_eq!(l, "* 2 EXISTS\r\n");
    a.send(b"DONE\r\n").await;
    let (_, t) = a.until("i").await;
    assert!(t.starts_with("i OK"), "{t}");
    // Expunge by B reaches A on NOOP; B sees EXISTS on NOOP.
    b.ok("d", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.ok("d", "EXPUNGE").await;
    let u = a.ok("e", "NOOP").await;
    assert!(u.contains("* 1 EXPUNGE"), "{u}");
    // Not during FETCH by sequence number (RFC 9051 §7.5.1)...
    env.store.append(env.user, "INBOX", MSG1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = a.ok("f", "FETCH 1 UID").await;
    assert_eq!(u, "* 1 FETCH (UID 2)\r\n");
    // ...but after UID FETCH.
    let u = a.ok("g", "UID FETCH 2 UID").await;
    assert!(u.contains("* 2 EXISTS"), "{u}");
    a.silent(200).await;
}

#[tokio::test]
async fn imap4rev2_mode() {
    let env = env().await;
    env.store.append(env.user, "INBOX", MSG1).await;
    let mut c = logged_in(&env).await;
    let u = c.ok("a", "ENABLE IMAP4rev2 CONDSTORE").await;
    assert_eq!(u, "* ENABLED IMAP4rev2 CONDSTORE\r\n");
    let u = c.ok("b", "SELECT INBOX").await;
    assert!(
        !u.contains("RECENT") && u.contains("* LIST () \"/\" INBOX"),
        "{u}"
    );
    let u = c.ok("c", "SEARCH ALL").await;
    assert_eq!(u, "* ESEARCH (TAG \"c\") ALL 1\r\n");
    let u = c.ok("d", "FETCH 1 FLAGS").await;
    assert_eq!(u, "* 1 FETCH (FLAGS ())\r\n");
    let u = c.ok("e", "SELECT INBOX").await;
    assert!(u.starts_with("* OK [CLOSED]"), "{u}");
}

#[tokio::test]
async fn auth_failures_close_the_connection() {
    let env = env().await;
    let mut c = connect(&env, config(true));
    c.line().await;
    for _ in 0..2 {
        let (_, t) = c.cmd("a", "LOGIN bob@example.org wrong").await;
        assert!(t.starts_with("a NO [AUTHENTICATIONFAILED]"), "{t}");
    }
    let (_, t) = c.cmd("b", "LOGIN bob@example.org wrong").await;
    assert!(t.starts_with("b NO"), "{t}");
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
}

#[tokio::test]
async fn sessions_per_user_are_limited() {
    let env = env().await;
    let shared = Arc::new(Shared::new(
        SessionConfig {
            max_sessions_per_user: 1,
            ..config(true)
        },
        env.store.client(),
    ));
    let mut a = connect_shared(&env, shared.clone(), Shutdown::new());
    a.line().await;
    a.ok("a", "LOGIN bob@example.org secret").await;
    let mut b = connect_shared(&env, shared.clone(), Shutdown::new());
    b.line().await;
    let (_, t) = b.cmd("b", "LOGIN bob@example.org secret").await;
    assert!(t.starts_with("b NO [LIMIT]"), "{t}");
    a.ok("c", "LOGOUT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.ok("d", "LOGIN bob@example.org secret").await;
}

#[tokio::test]
async fn shutdown_says_bye_even_when_idling() {
    let env = env().await;
    let shutdown = Shutdown::new();
    let shared = Arc::new(Shared::new(config(true), env.store.client()));
    let mut a = connect_shared(&env, shared.clone(), shutdown.clone());
    a.line().await;
    a.ok("a", "LOGIN bob@example.org secret").await;
    a.ok("a", "SELECT INBOX").await;
    a.send(b"i IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    let mut b = connect_shared(&env, shared, shutdown.clone());
    b.line().await;
    shutdown.cancel();
    assert!(a.line().await.starts_with("* BYE"));
    assert!(b.line().await.starts_with("* BYE"));
}

#[tokio::test]
async fn fetch_streams_a_large_mailbox() {
    let env = env().await;
    // 300 messages of ~20 KiB: FETCH 1:* BODY[] streams them one by one.
    let mut body = Vec::new();
    for i in 0..400 {
        body.extend_from_slice(
            format!("line {i:04} ..................................\r\n").as_bytes(),
        );
    }
    let mut msg = b"Subject: big\r\n\r\n".to_vec();
    msg.extend_from_slice(&body);
    for _ in 0..300 {
        env.store.append(env.user, "INBOX", &msg).await;
    }
    let mut c = logged_in(&env).await;
    c.ok("a", "SELECT INBOX").await;
    c.send(b"b FETCH 1:* BODY.PEEK[]\r\n").await;
    let mut count = 0;
    let mut bytes = 0usize;
    loop {
        let l = c.line().await;
        if l.starts_with("b ") {
            assert!(l.starts_with("b OK"), "{l}");
            break;
        }
        if l.starts_with("* ") && l.contains(" FETCH (BODY[] {") {
            count += 1;
            let n: usize = l
                .rsplit('{')
                .next()
                .unwrap()
                .trim_end_matches("}\r\n")
                .parse()
                .unwrap();
            assert_eq!(n, msg.len());
            let mut buf = vec![0u8; n];
            c.rd.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg);
            bytes += n;
        }
    }
    assert_eq!(count, 300);
    assert_eq!(bytes, 300 * msg.len());
}

#[tokio::test]
async fn idle_survives_a_store_restart() {
    let mut env = env().await;
    env.store.append(env.user, "INBOX", MSG1).await;
    let mut a = logged_in(&env).await;
    a.ok("a", "SELECT INBOX").await;
    a.send(b"i IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));
    env.store.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.store.restart().await;
    // Give the watch time to come back, then deliver.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.store.append(env.user, "INBOX", MSG2).await;
    let mut l = a.line().await;
    while !l.contains("EXISTS") {
        l = a.line().await;
    }
    assert_eq!(l, "* 2 EXISTS\r\n");
    a.send(b"DONE\r\n").await;
    let (_, t) = a.until("i").await;
    assert!(t.starts_with("i OK"), "{t}");
}

#[tokio::test]
async fn multiappend_is_all_or_nothing() {
    let env = env().await;
    let mut c = logged_in(&env).await;
    c.send(b"a APPEND INBOX {5+}\r\nHi\r\n\r (\\Seen) {5+}\r\nYo\r\n\r\n")
        .await;
    let (u, t) = c.until("a").await;
    assert!(
        t.starts_with("a OK [APPENDUID ") && t.contains(" 1:2]"),
        "{u}{t}"
    );
    // The second message carries a keyword the store refuses: nothing stays.
    let long = "k".repeat(300);
    c.send(format!("b APPEND INBOX {{5+}}\r\nHi\r\n\r ({long}) {{5+}}\r\nYo\r\n\r\n").as_bytes())
        .await;
    let (u, t) = c.until("b").await;
    assert!(t.starts_with("b NO"), "{u}{t}");
    let u = c.ok("c", "STATUS INBOX (MESSAGES)").await;
    assert!(u.contains("MESSAGES 2"), "{u}");
}

#[tokio::test]
async fn store_outage_is_a_temporary_no() {
    let mut env = env().await;
    let mut c = logged_in(&env).await;
    c.ok("a", "SELECT INBOX").await;
    env.store.stop().await;
    let (u, t) = c.cmd("b", "STATUS Sent (MESSAGES)").await;
    assert!(
        t.starts_with("b NO [UNAVAILABLE]") && t.contains("(session t1)"),
        "{u}{t}"
    );
    env.store.restart().await;
    let mut ok = false;
    for _ in 0..50 {
        let (_, t) = c.cmd("c", "STATUS Sent (MESSAGES)").await;
        if t.starts_with("c OK") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "store did not come back");
    c.ok("d", "NOOP").await;
}
