//! Shared helpers for the session tests: a real store (test_kit), a session
//! served over an in-memory pipe, and a tiny SMTP client that reads replies.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailstore_api::pb;
use rustls_pki_types::{CertificateDer, ServerName};
use service_kit::Shutdown;
use smtp_in::conn::ConnOptions;
use smtp_in::session::{ListenerKind, Shared};
use smtp_in::store::Backend;
use test_kit::TestStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::Semaphore;

pub const DOMAIN: &str = "ours.example";
pub const ALICE: &str = "alice@ours.example";
pub const ALICE_PW: &str = "alice-secret";
pub const PEER: &str = "192.0.2.10:4321";

/// A real store with one domain and one user, and the smtp-in settings.
pub struct Harness {
    pub store: TestStore,
    pub shared: Arc<Shared>,
    pub cert: CertificateDer<'static>,
    pub alice_id: u64,
    pub shutdown: Shutdown,
    pub options: ConnOptions,
    /// smtp-in reaches the store through this.
    pub forwarder: Forwarder,
}

pub fn limits() -> smtp_in::Limits {
    smtp_in::Limits {
        error_delay: Duration::ZERO,
        ..smtp_in::Limits::default()
    }
}

/// The SRS secret of the harness (its SRS domain is [`DOMAIN`]).
pub const SRS_SECRET: &[u8] = b"test-srs-secret";

impl Harness {
    pub async fn new() -> Self {
        Self::with_limits(limits()).await
    }

    pub async fn with_limits(limits: smtp_in::Limits) -> Self {
        Self::build(limits, None).await
    }

    /// A harness whose MX runs the inbound authentication checks.
    pub async fn with_inbound(checker: smtp_in::inbound::Checker) -> Self {
        Self::build(limits(), Some(checker)).await
    }

    pub async fn build(
        limits: smtp_in::Limits,
        inbound: Option<smtp_in::inbound::Checker>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = TestStore::start().await;
        store.add_domain(DOMAIN).await;
        let alice_id = store.add_user(ALICE, ALICE_PW).await;
        let (config, cert) = tls_kit::self_signed("mx.test").unwrap();
        let acceptor = service_kit::Tls::new(config, "smtp_in");
        let forwarder = Forwarder::start(store.grpc_addr).await;
        let client = mailstore_api::connect(&forwarder.url, &store.token).unwrap();
        let guard = smtp_in::guard::Guard::new(client.clone(), Duration::from_secs(2));
        let shared = Arc::new(Shared {
            hostname: "mx.test".into(),
            limits,
            backend: Backend::new(client, Duration::from_secs(5), 3),
            tls: Some(acceptor),
            allow_plaintext_auth: false,
            spool: Arc::new(Semaphore::new(256 * 1024)),
            guard,
            inbound,
            srs: Some(mail_wire::srs::Srs::new(SRS_SECRET, DOMAIN, 21)),
        });
        Self {
            store,
            shared,
            cert,
            alice_id,
            shutdown: Shutdown::new(),
            options: ConnOptions {
                early_talker_delay: Duration::ZERO,
            },
            forwarder,
        }
    }

    /// A session on `kind` over an in-memory pipe; returns the client end.
    pub fn connect(&self, kind: ListenerKind) -> Client<DuplexStream> {
        let (client, server) = tokio::io::duplex(1024 * 1024);
        let peer: SocketAddr = PEER.parse().unwrap();
        tokio::spawn(smtp_in::conn::handle(
            server,
            peer,
            kind,
            self.shared.clone(),
            self.options,
            self.shutdown.clone(),
        ));
        Client::new(client)
    }

    /// A connected, greeted MX session after EHLO.
    pub async fn mx(&self) -> Client<DuplexStream> {
        let mut c = self.connect(ListenerKind::Mx);
        c.expect_reply("220").await;
        c.expect("EHLO client.example", "250 ").await;
        c
    }

    /// The store crashes: stopped, and every open connection cut.
    pub async fn crash_store(&mut self) {
        self.store.stop().await;
        self.forwarder.cut();
    }

    /// Inbound jobs in the queue.
    pub async fn jobs(&self) -> Vec<pb::JobSummary> {
        let mut q = self.store.client().queue;
        q.list_jobs(pb::ListJobsRequest {
            kind: pb::QueueKind::Inbound.into(),
            state: 0,
            limit: 1000,
            after_id: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
    }

    pub async fn job(&self, id: u64) -> pb::Job {
        let mut q = self.store.client().queue;
        q.get_job(pb::GetJobRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    }

    pub async fn message(&self, id: u64) -> Vec<u8> {
        let mut q = self.store.client().queue;
        let mut s = q
            .read_message(pb::ReadMessageRequest {
                job_id: id,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(c) = s.message().await.unwrap() {
            out.extend_from_slice(&c.data);
        }
        out
    }

    /// A TLS client config that trusts our self-signed certificate.
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// TLS handshake on a raw stream.
    pub async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        raw: S,
    ) -> tokio_rustls::client::TlsStream<S> {
        self.tls_connector()
            .connect(ServerName::try_from("localhost").unwrap(), raw)
            .await
            .unwrap()
    }
}

/// Splits a queued message into its Received header and the rest.
pub fn split_received(msg: &[u8]) -> (String, Vec<u8>) {
    assert!(
        msg.starts_with(b"Received: "),
        "{}",
        String::from_utf8_lossy(msg)
    );
    let mut i = 0;
    loop {
        let lf = msg[i..].iter().position(|&b| b == b'\n').unwrap() + i;
        i = lf + 1;
        if msg.get(i) != Some(&b'\t') {
            break;
        }
    }
    (
        String::from_utf8(msg[..i].to_vec()).unwrap(),
        msg[i..].to_vec(),
    )
}

/// A reply: all its lines.
#[derive(Debug, Clone)]
pub struct Resp {
    pub lines: Vec<String>,
}

impl Resp {
    pub fn code(&self) -> u16 {
        self.last()[..3].parse().unwrap()
    }
    pub fn last(&self) -> &str {
        self.lines.last().unwrap()
    }
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A minimal SMTP client.
pub struct Client<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    pub fn into_inner(self) -> (S, Vec<u8>) {
        (self.io, self.buf)
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// One line, or None at EOF.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=lf).collect();
                let s = String::from_utf8(line).unwrap();
                assert!(s.ends_with("\r\n"), "reply line without CRLF: {s:?}");
                return Some(s.trim_end_matches("\r\n").to_string());
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.io.read(&mut tmp))
                .await
                .expect("timeout waiting for the server")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub async fn reply(&mut self) -> Option<Resp> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let done = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if done {
                return Some(Resp { lines });
            }
        }
    }

    pub async fn expect_reply(&mut self, prefix: &str) -> Resp {
        let r = self
            .reply()
            .await
            .expect("connection closed, expected a reply");
        assert!(
            r.last().starts_with(prefix),
            "expected {prefix:?}, got {:?}",
            r.lines
        );
        r
    }

    pub async fn cmd(&mut self, line: &str) -> Resp {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("closed after {line:?}"))
    }

    pub async fn expect(&mut self, line: &str, prefix: &str) -> Resp {
        let r = self.cmd(line).await;
        assert!(
            r.last().starts_with(prefix),
            "{line:?}: expected {prefix:?}, got {:?}",
            r.lines
        );
        r
    }

    /// Runs a transcript: `C: ` lines are sent (consecutive ones in a single
    /// write, i.e. pipelined), each `S: ` line must prefix the last line of
    /// the next reply. `S: <closed>` expects EOF.
    pub async fn script(&mut self, script: &str) {
        let mut pending = String::new();
        for raw in script.lines() {
            let raw = raw.trim_start();
            if let Some(c) = raw.strip_prefix("C: ") {
                pending.push_str(c);
                pending.push_str("\r\n");
            } else if let Some(s) = raw.strip_prefix("S: ") {
                if !pending.is_empty() {
                    let p = std::mem::take(&mut pending);
                    self.write(p.as_bytes()).await;
                }
                if s == "<closed>" {
                    assert!(self.reply().await.is_none(), "expected close");
                    continue;
                }
                let r = self
                    .reply()
                    .await
                    .unwrap_or_else(|| panic!("closed, expected {s:?}"));
                assert!(r.last().starts_with(s), "expected {s:?}, got {:?}", r.lines);
            }
        }
        if !pending.is_empty() {
            self.write(pending.as_bytes()).await;
        }
    }

    /// Sends MAIL/RCPT/DATA and a body (already dot-stuffed, ending with
    /// CRLF.CRLF), returns the final reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], wire_body: &[u8]) -> Resp {
        self.expect(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.expect("DATA", "354").await;
        self.write(wire_body).await;
        self.reply().await.unwrap()
    }
}

/// Job id from "250 2.0.0 Ok: queued as 17".
pub fn queued_id(r: &Resp) -> u64 {
    assert_eq!(r.code(), 250, "{:?}", r.lines);
    r.last().rsplit(' ').next().unwrap().parse().unwrap()
}

/// A TCP forwarder between smtp-in and the store. `test_kit::TestStore::stop`
/// aborts the store's serve task, but tonic's per-connection tasks outlive
/// it, so an already-open HTTP/2 connection keeps being answered. The
/// forwarder lets a test cut every open connection, which is what a store
/// crash does.
pub struct Forwarder {
    pub url: String,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { url, conns, accept }
    }

    /// Drops every open connection (new ones are still forwarded).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
