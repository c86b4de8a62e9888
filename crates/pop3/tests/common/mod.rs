//! Harness for session tests: a real store (test_kit::TestStore over a
//! fresh PostgreSQL database), the real connection code on an in-memory
//! duplex pipe, and a tiny line-oriented POP3 client.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailstore_api::pb;
use pop3::conn::Server;
use pop3::session::{SessionConfig, Shared, new_session_id};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
    DuplexStream,
};
use tokio_util::sync::CancellationToken;

pub const USER: &str = "alice@example.org";
pub const PASS: &str = "correct horse";

pub fn session_config() -> SessionConfig {
    SessionConfig {
        stls_available: true,
        allow_plaintext_auth: false,
        auth_failure_delay: Duration::from_millis(50),
        command_timeout: Duration::from_secs(30),
        max_errors: 10,
        lock_ttl: Duration::from_secs(6),
        login_delay: None,
        expire: None,
        max_messages: 10_000,
    }
}

pub struct Env {
    pub store: test_kit::TestStore,
    pub server: Server,
    pub user_id: u64,
    pub shutdown: CancellationToken,
    pub tls_client: tokio_rustls::TlsConnector,
    pub cert_dir: tempfile::TempDir,
}

/// Self-signed certificate written as PEM files, and a client trusting it.
pub fn tls_files() -> (
    tempfile::TempDir,
    PathBuf,
    PathBuf,
    tokio_rustls::TlsConnector,
) {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        dir,
        cert,
        key,
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

impl Env {
    pub async fn new(tweak: impl FnOnce(&mut SessionConfig)) -> Self {
        let store = test_kit::TestStore::start().await;
        store.add_domain("example.org").await;
        let user_id = store.add_user(USER, PASS).await;
        let mut cfg = session_config();
        tweak(&mut cfg);
        Self::with_store(store, user_id, cfg)
    }

    pub fn with_store(store: test_kit::TestStore, user_id: u64, cfg: SessionConfig) -> Self {
        let (cert_dir, cert, key, tls_client) = tls_files();
        let tls = tls_kit::configure(Some(&cert), Some(&key), false, "localhost")
            .unwrap()
            .unwrap();
        let server = Server {
            shared: Arc::new(Shared::new(cfg, store.client())),
            acceptor: Some(service_kit::Tls::new(tls, "pop3")),
        };
        Self {
            store,
            server,
            user_id,
            shutdown: CancellationToken::new(),
            tls_client,
            cert_dir,
        }
    }

    /// A plain connection (port 110 behaviour) or an implicit-TLS one's
    /// server side; returns the client end of the pipe.
    pub fn pipe(&self, implicit_tls: bool) -> DuplexStream {
        let (client, server_io) = tokio::io::duplex(256 * 1024);
        let server = self.server.clone();
        let sd = self.shutdown.clone();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        tokio::spawn(async move {
            let _ = service_kit::starttls::serve_connection(
                &server,
                server_io,
                ip,
                new_session_id(),
                implicit_tls,
                &sd,
            )
            .await;
        });
        client
    }

    pub async fn connect(&self) -> Client<DuplexStream> {
        let mut c = Client::new(self.pipe(false));
        let greeting = c.line().await;
        assert!(
            greeting.starts_with("+OK Epistole POP3 server ready (session "),
            "{greeting}"
        );
        c
    }

    pub async fn connect_tls(&self) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
        let io = self.pipe(true);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.tls_client.connect(name, io).await.unwrap();
        let mut c = Client::new(tls);
        assert!(c.line().await.starts_with("+OK "));
        c
    }

    /// Plain connection upgraded with STLS.
    pub async fn connect_stls(&self) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
        let mut c = self.connect().await;
        assert_eq!(c.cmd("STLS").await, "+OK Begin TLS negotiation now");
        self.upgrade(c).await
    }

    pub async fn upgrade(
        &self,
        c: Client<DuplexStream>,
    ) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
        assert!(
            c.io.buffer().is_empty(),
            "server sent bytes after +OK to STLS"
        );
        let io = c.io.into_inner();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        Client::new(self.tls_client.connect(name, io).await.unwrap())
    }

    pub async fn append(&self, raw: &[u8]) -> u32 {
        self.store.append(self.user_id, "INBOX", raw).await
    }

    pub async fn inbox(&self) -> pb::Mailbox {
        let mut mb = self.store.client().mailboxes;
        mb.get_mailbox(pb::GetMailboxRequest {
            user_id: self.user_id,
            name: "INBOX".into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
    }

    /// (uid, flags) of every INBOX message.
    pub async fn inbox_messages(&self) -> Vec<(u32, Vec<String>)> {
        let id = self.inbox().await.id;
        let mut mb = self.store.client().mailboxes;
        let mut s = mb
            .fetch_meta(pb::FetchMetaRequest {
                mailbox_id: id,
                uids: None,
                changed_since: 0,
                with_structure: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = s.message().await.unwrap() {
            out.extend(batch.messages.into_iter().map(|m| (m.uid, m.flags)));
        }
        out
    }

    pub async fn inbox_uids(&self) -> Vec<u32> {
        self.inbox_messages()
            .await
            .into_iter()
            .map(|(u, _)| u)
            .collect()
    }
}

pub struct Client<S> {
    pub io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Self {
            io: BufReader::new(io),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Next line without CRLF; "<EOF>" when the server closed.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(20), self.io.read_until(b'\n', &mut buf))
            .await
            .expect("server answers within 20 s")
            .unwrap_or(0);
        if n == 0 {
            return "<EOF>".into();
        }
        assert!(
            buf.ends_with(b"\r\n"),
            "reply line not CRLF-terminated: {buf:?}"
        );
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).unwrap()
    }

    pub async fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes()).await;
        self.line().await
    }

    /// Raw multi-line body after a `+OK` line: unstuffed bytes, CRLFs kept.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.io.read_until(b'\n', &mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert!(n > 0, "EOF inside multi-line response");
            assert!(buf.ends_with(b"\r\n"), "line without CRLF: {buf:?}");
            if buf == b".\r\n" {
                return out;
            }
            let line = buf.strip_prefix(b".").unwrap_or(&buf);
            out.extend_from_slice(line);
        }
    }

    /// Multi-line response as lines.
    pub async fn lines(&mut self) -> Vec<String> {
        let body = self.body().await;
        String::from_utf8(body)
            .unwrap()
            .split_terminator("\r\n")
            .map(str::to_string)
            .collect()
    }

    pub async fn login(&mut self) {
        self.login_as(USER, PASS).await;
    }

    pub async fn login_as(&mut self, user: &str, pass: &str) {
        assert_eq!(self.cmd(&format!("USER {user}")).await, "+OK Send PASS");
        let r = self.cmd(&format!("PASS {pass}")).await;
        assert!(r.starts_with("+OK Maildrop locked and ready"), "{r}");
    }

    /// Runs a transcript: `C: line` is sent, `S: line` must be the next
    /// line exactly, `S: prefix*` must start with the prefix, `S: <EOF>` means closed.
    pub async fn transcript(&mut self, script: &str) {
        for raw in script.lines() {
            let raw = raw.trim_start();
            if let Some(c) = raw.strip_prefix("C: ") {
                self.send(format!("{c}\r\n").as_bytes()).await;
            } else if let Some(expected) = raw.strip_prefix("S: ") {
                let got = self.line().await;
                match expected.strip_suffix('*') {
                    Some(prefix) => assert!(
                        got.starts_with(prefix),
                        "expected {expected:?}, got {got:?}"
                    ),
                    None => assert_eq!(got, expected),
                }
            } else {
                assert!(
                    raw.is_empty() || raw.starts_with('#'),
                    "bad transcript line {raw:?}"
                );
            }
        }
    }

    /// True when the server has closed the connection (EOF).
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}
