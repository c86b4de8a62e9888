//! Issue #13 for IMAP, over the real session and the real store: input
//! before login is bounded in size and time, `--allow-plaintext-auth` only
//! opens loopback, store throttling is `NO [UNAVAILABLE]` (RFC 5530) and
//! holds across parallel connections, and LIST stays bounded.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use imap::conn::Server;
use imap::session::{SessionConfig, Shared};
use mailstore_api::pb;
use service_kit::Shutdown;
use service_kit::starttls::serve_connection;
use test_kit::TestStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream};

struct Env {
    store: TestStore,
    user: u64,
    tls: service_kit::Tls,
}

async fn env() -> Env {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let user = store.add_user("bob@example.org", "secret").await;
    let (config, _) = tls_kit::self_signed("localhost").unwrap();
    Env {
        store,
        user,
        tls: service_kit::Tls::new(config, "imap"),
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        allow_plaintext_auth: true,
        tls_available: true,
        ..SessionConfig::default()
    }
}

struct Client {
    io: BufReader<DuplexStream>,
}

impl Client {
    async fn send(&mut self, b: &[u8]) {
        self.io.get_mut().write_all(b).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// The next line, or "<EOF>".
    async fn line(&mut self) -> String {
        let mut v = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(120), self.io.read_until(b'\n', &mut v))
            .await
            .expect("no answer within 120 s (argon2 on a loaded machine)")
            .unwrap_or(0);
        if n == 0 {
            return "<EOF>".into();
        }
        String::from_utf8_lossy(&v).into_owned()
    }

    async fn until(&mut self, tag: &str) -> (String, String) {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            assert_ne!(l, "<EOF>", "closed before {tag}: {all}");
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
}

/// A connection from `ip` to a session with `shared`; the greeting is read.
async fn connect(env: &Env, shared: &Arc<Shared>, ip: &str) -> (Client, String) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = Server {
        shared: shared.clone(),
        acceptor: Some(env.tls.clone()),
    };
    let ip: IpAddr = ip.parse().unwrap();
    tokio::spawn(async move {
        let _ = serve_connection(&server, b, ip, "t1".into(), false, &Shutdown::new()).await;
    });
    let mut c = Client {
        io: BufReader::new(a),
    };
    let g = c.line().await;
    (c, g)
}

fn shared(env: &Env, cfg: SessionConfig) -> Arc<Shared> {
    Arc::new(Shared::new(cfg, env.store.client()))
}

#[tokio::test]
async fn preauth_long_lines_are_bad_then_bye() {
    let env = env().await;
    // Two over-long lines exceed the default 64 KiB pre-login budget, which
    // has its own test (`preauth_byte_budget_ends_in_bye`).
    let sh = shared(
        &env,
        SessionConfig {
            max_preauth_bytes: 256 * 1024,
            ..config()
        },
    );
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    // Over the pre-login line cap (40 KiB: room for ID, RFC 2971 §3.3).
    let long = format!("a LOGIN {} x\r\n", "u".repeat(41_000));
    c.send(long.as_bytes()).await;
    let l = c.line().await;
    assert!(l.starts_with("a BAD [CLIENTBUG]"), "{l}");
    // The rest of that line was skipped: the connection works.
    let (_, t) = c.cmd("b", "NOOP").await;
    assert!(t.starts_with("b OK"), "{t}");
    c.send(long.as_bytes()).await;
    assert!(c.line().await.starts_with("a BAD"));
    assert!(c.line().await.starts_with("* BYE [LIMIT]"));
    assert_eq!(c.line().await, "<EOF>");
    // After login the same line is only a bad password.
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.cmd("l", "LOGIN bob@example.org secret").await;
    let (_, t) = c.cmd("c", &format!("SELECT {}", "u".repeat(41_000))).await;
    assert!(t.starts_with("c NO"), "{t}");
}

#[tokio::test]
async fn preauth_literal_over_the_cap_is_refused_before_the_continuation() {
    let env = env().await;
    let sh = shared(&env, config());
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.send(b"a LOGIN {8193}\r\n").await;
    assert!(c.line().await.starts_with("a NO [TOOBIG]"));
    c.send(b"b LOGIN {8192}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(&[b'x'; 8192]).await;
    c.send(b" pw\r\n").await;
    let (_, t) = c.until("b").await;
    assert!(t.starts_with("b NO [AUTHENTICATIONFAILED]"), "{t}");
    c.send(b"c LOGIN {100000}\r\n").await;
    assert!(c.line().await.starts_with("c NO [TOOBIG]"));
    assert!(c.line().await.starts_with("* BYE [LIMIT]"));
    assert_eq!(c.line().await, "<EOF>");
}

#[tokio::test]
async fn preauth_byte_budget_ends_in_bye() {
    let env = env().await;
    let sh = shared(
        &env,
        SessionConfig {
            commands_per_sec: 1_000_000,
            ..config()
        },
    );
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    // Valid, short commands: only the total is too much.
    c.send(&b"a NOOP\r\n".repeat(64 * 1024 / 8 + 1)).await;
    let mut last = String::new();
    loop {
        let l = c.line().await;
        if l == "<EOF>" {
            break;
        }
        last = l;
    }
    assert!(
        last.starts_with("* BYE [LIMIT] Too much input before authentication"),
        "{last}"
    );
    // Logged in, the same traffic is fine.
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.cmd("l", "LOGIN bob@example.org secret").await;
    c.send(&b"a NOOP\r\n".repeat(64 * 1024 / 8 + 1)).await;
    c.send(b"z NOOP\r\n").await;
    let (_, t) = c.until("z").await;
    assert!(t.starts_with("z OK"), "{t}");
}

#[tokio::test]
async fn authenticate_continuation_times_out() {
    let env = env().await;
    let sh = shared(
        &env,
        SessionConfig {
            preauth_timeout: Duration::from_secs(1),
            ..config()
        },
    );
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ \r\n");
    assert!(c.line().await.starts_with("* BYE Autologout"));
    assert_eq!(c.line().await, "<EOF>");
    // An over-long response is skipped whole and answered BAD.
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    c.line().await;
    c.send(&[b'A'; 20_000]).await;
    c.send(b"\r\n").await;
    let (_, t) = c.until("a").await;
    assert!(t.starts_with("a BAD Response line too long"), "{t}");
    let (_, t) = c
        .cmd("b", "AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLm9yZwBzZWNyZXQ=")
        .await;
    assert!(t.starts_with("b OK"), "{t}");
}

#[tokio::test]
async fn plaintext_auth_flag_is_for_loopback_only() {
    let env = env().await;
    let sh = shared(&env, config());
    for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
        let (mut c, g) = connect(&env, &sh, ip).await;
        assert!(
            g.contains("AUTH=PLAIN") && !g.contains("LOGINDISABLED"),
            "{ip}: {g}"
        );
        let (_, t) = c.cmd("a", "LOGIN bob@example.org secret").await;
        assert!(t.starts_with("a OK"), "{ip}: {t}");
    }
    for ip in ["192.0.2.7", "10.1.2.3", "2001:db8::7", "::ffff:192.0.2.7"] {
        let (mut c, g) = connect(&env, &sh, ip).await;
        assert!(
            g.contains("LOGINDISABLED") && !g.contains("AUTH=PLAIN"),
            "{ip}: {g}"
        );
        let (_, t) = c.cmd("a", "LOGIN bob@example.org secret").await;
        assert!(t.starts_with("a NO [PRIVACYREQUIRED]"), "{ip}: {t}");
        let (_, t) = c
            .cmd("b", "AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLm9yZwBzZWNyZXQ=")
            .await;
        assert!(t.starts_with("b NO [PRIVACYREQUIRED]"), "{ip}: {t}");
    }
}

#[tokio::test]
async fn parallel_guesses_are_throttled_for_that_address_only() {
    let env = env().await;
    let sh = shared(&env, config());
    let mut guesses = Vec::new();
    // 25 at once: over the store's per-address limit (20), under its
    // per-account limit (30), so only the address is banned.
    for _ in 0..25 {
        let (mut c, _) = connect(&env, &sh, "127.0.0.7").await;
        guesses.push(tokio::spawn(async move {
            c.cmd("a", "LOGIN bob@example.org wrong").await.1
        }));
    }
    for g in guesses {
        let t = g.await.unwrap();
        assert!(
            t.starts_with("a NO [AUTHENTICATIONFAILED]") || t.starts_with("a NO [UNAVAILABLE]"),
            "{t}"
        );
    }
    // That address is now refused even with the right password, and a
    // throttled connection is closed like a guessing one.
    let (mut c, _) = connect(&env, &sh, "127.0.0.7").await;
    for tag in ["b", "c", "d"] {
        let (_, t) = c.cmd(tag, "LOGIN bob@example.org secret").await;
        assert!(t.starts_with(&format!("{tag} NO [UNAVAILABLE]")), "{t}");
    }
    assert!(c.line().await.starts_with("* BYE"));
    // Another address logs in meanwhile.
    let (mut c, _) = connect(&env, &sh, "127.0.0.8").await;
    let (_, t) = c.cmd("e", "LOGIN bob@example.org secret").await;
    assert!(t.starts_with("e OK"), "{t}");
}

#[tokio::test]
async fn list_with_nested_wildcards_stays_bounded() {
    let env = env().await;
    let mut mb = env.store.client().mailboxes;
    for i in 0..12 {
        mb.create_mailbox(pb::CreateMailboxRequest {
            user_id: env.user,
            name: format!("a/b{i}/c/d/e/f/g/h"),
            special_use: String::new(),
        })
        .await
        .unwrap();
    }
    let sh = shared(
        &env,
        SessionConfig {
            max_list_results: 40,
            ..config()
        },
    );
    let (mut c, _) = connect(&env, &sh, "127.0.0.1").await;
    c.cmd("l", "LOGIN bob@example.org secret").await;
    let (u, t) = c.cmd("a", "LIST \"\" \"*%*%*%*%*%*\"").await;
    assert!(t.starts_with("a NO [LIMIT]"), "{u}{t}");
    assert!(u.is_empty(), "{u}");
    let (u, t) = c.cmd("b", "LIST \"\" \"a/b11/*%*%*%*%*%\"").await;
    assert!(t.starts_with("b OK"), "{u}{t}");
    assert_eq!(u.lines().count(), 6, "{u}");
    assert!(u.contains(" a/b11/c/d/e/f/g/h\r\n"), "{u}");
    // 12 × 7 levels + "a" + INBOX = 86 names match `*`: over the cap of 40.
    let (u, t) = c.cmd("c", "LIST \"\" *").await;
    assert!(t.starts_with("c NO [LIMIT]"), "{t}");
    assert_eq!(u.lines().count(), 40, "{u}");
    let (u, t) = c.cmd("d", "LIST \"\" a/b1/%").await;
    assert!(t.starts_with("d OK") && u.lines().count() == 1, "{u}{t}");
    // Too many patterns in one LIST-EXTENDED command.
    let pats = vec!["x"; 33].join(" ");
    let (_, t) = c.cmd("e", &format!("LIST \"\" ({pats})")).await;
    assert!(t.starts_with("e NO [LIMIT]"), "{t}");
}
