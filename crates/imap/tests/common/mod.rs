//! The harness of the IMAP tests over real sockets: a store with one user
//! and a listener serving the real session, and a line-oriented client.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use imap::conn::Server;
use imap::session::{SessionConfig, Shared};
use service_kit::Shutdown;
use service_kit::starttls::serve_connection;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct Env {
    _store: TestStore,
    addr: std::net::SocketAddr,
}

/// The store, one user, and an imap listener on 127.0.0.1 serving every
/// accepted connection with the real session.
pub async fn env() -> Env {
    env_with(|_| {}).await
}

/// [`env`] with the session configuration changed by `tune`.
pub async fn env_with(tune: impl FnOnce(&mut SessionConfig)) -> Env {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    store.add_user("bob@example.org", "secret").await;
    let (config, _) = tls_kit::self_signed("localhost").unwrap();
    let tls = service_kit::Tls::new(config, "imap");
    let mut cfg = SessionConfig {
        allow_plaintext_auth: true,
        tls_available: true,
        ..SessionConfig::default()
    };
    tune(&mut cfg);
    let shared = Arc::new(Shared::new(cfg, store.client()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                return;
            };
            let server = Server {
                shared: shared.clone(),
                acceptor: Some(tls.clone()),
            };
            tokio::spawn(async move {
                let _ = serve_connection(
                    &server,
                    sock,
                    peer.ip(),
                    "c".into(),
                    false,
                    &Shutdown::new(),
                )
                .await;
            });
        }
    });
    Env {
        _store: store,
        addr,
    }
}

impl Env {
    /// The store, to add users or deliver mail behind the session's back.
    pub fn store(&self) -> &TestStore {
        &self._store
    }

    /// Where the imap listener is.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

pub struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(env: &Env) -> Self {
        let mut c = Self {
            io: BufReader::new(TcpStream::connect(env.addr).await.unwrap()),
        };
        let g = c.line().await;
        assert!(g.starts_with("* OK"), "{g}");
        c
    }

    pub async fn login(env: &Env) -> Self {
        Self::login_as(env, "bob@example.org", "secret").await
    }

    pub async fn login_as(env: &Env, user: &str, pass: &str) -> Self {
        let mut c = Self::connect(env).await;
        c.ok("l", &format!("LOGIN {user} {pass}")).await;
        c
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.io.get_mut().write_all(b).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    pub async fn line(&mut self) -> String {
        let mut v = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(60), self.io.read_until(b'\n', &mut v))
            .await
            .expect("no answer within 60 s")
            .unwrap();
        assert!(n > 0, "connection closed");
        String::from_utf8_lossy(&v).into_owned()
    }

    /// The next line if one arrives within `d`.
    pub async fn line_within(&mut self, d: Duration) -> Option<String> {
        let mut v = Vec::new();
        match tokio::time::timeout(d, self.io.read_until(b'\n', &mut v)).await {
            Ok(r) => {
                assert!(r.unwrap() > 0, "connection closed");
                Some(String::from_utf8_lossy(&v).into_owned())
            }
            Err(_) => None,
        }
    }

    /// Everything up to the tagged reply (literal contents inline, bytes
    /// kept), and the tagged line.
    pub async fn until(&mut self, tag: &str) -> (Vec<u8>, String) {
        let mut all = Vec::new();
        loop {
            let mut v = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), self.io.read_until(b'\n', &mut v))
                .await
                .expect("no answer within 60 s")
                .unwrap();
            assert!(!v.is_empty(), "closed before {tag}");
            let l = String::from_utf8_lossy(&v).into_owned();
            if l.starts_with(&format!("{tag} ")) {
                return (all, l);
            }
            all.extend_from_slice(&v);
            // A literal announcement at the end of the line: its bytes follow.
            if let Some(n) = l
                .trim_end()
                .strip_suffix('}')
                .and_then(|s| s.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut buf = vec![0u8; n];
                self.io.read_exact(&mut buf).await.unwrap();
                all.extend_from_slice(&buf);
            }
        }
    }

    pub async fn cmd(&mut self, tag: &str, c: &str) -> (String, String) {
        self.send(format!("{tag} {c}\r\n").as_bytes()).await;
        let (u, t) = self.until(tag).await;
        (String::from_utf8_lossy(&u).into_owned(), t)
    }

    pub async fn ok(&mut self, tag: &str, c: &str) -> String {
        let (u, t) = self.cmd(tag, c).await;
        assert!(t.starts_with(&format!("{tag} OK")), "{c}: {t}\n{u}");
        u
    }

    pub async fn append(&mut self, tag: &str, mailbox: &str, msg: &[u8]) {
        self.send(format!("{tag} APPEND {mailbox} {{{}+}}\r\n", msg.len()).as_bytes())
            .await;
        self.send(msg).await;
        self.send(b"\r\n").await;
        let (u, t) = self.until(tag).await;
        assert!(t.starts_with(&format!("{tag} OK")), "{t}\n{u:?}");
    }
}
