//! Transcript tests of the POP3 session against the real store: every
//! command and error path, over an in-memory pipe (plain, STLS, implicit TLS).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Env, PASS, USER};
use mailstore_api::pb;

const M1: &[u8] = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.leading dot\r\n";
/// Bare LFs, a lone "." line and no final line end: the CRLF form is longer
/// than the stored bytes.
const M2: &[u8] = b"From: b@example.org\nSubject: two\n\nline1\n.\nline3";
const M2_CRLF: &[u8] = b"From: b@example.org\r\nSubject: two\r\n\r\nline1\r\n.\r\nline3\r\n";

fn m3() -> Vec<u8> {
    let mut m = b"Subject: three\r\n\r\n".to_vec();
    for i in 1..=10 {
        m.extend_from_slice(format!("body line {i}\r\n").as_bytes());
    }
    m
}

async fn env_with_messages(tweak: impl FnOnce(&mut pop3::SessionConfig)) -> (Env, Vec<u32>) {
    let env = Env::new(tweak).await;
    let uids = vec![
        env.append(M1).await,
        env.append(M2).await,
        env.append(&m3()).await,
    ];
    (env, uids)
}

#[tokio::test]
async fn plaintext_auth_is_refused_before_tls() {
    let env = Env::new(|_| {}).await;
    let mut c = env.connect().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    let caps = c.lines().await;
    assert!(caps.contains(&"STLS".to_string()), "{caps:?}");
    assert!(
        !caps.iter().any(|c| c == "USER" || c.starts_with("SASL")),
        "{caps:?}"
    );
    for expected in [
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "UTF8",
    ] {
        assert!(
            caps.contains(&expected.to_string()),
            "{expected} missing in {caps:?}"
        );
    }
    c.transcript(
        "C: USER alice@example.org
         S: -ERR [AUTH] Plaintext authentication disallowed on non-secure connections, use STLS
         C: PASS x
         S: -ERR [AUTH] Plaintext*
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGNvcnJlY3QgaG9yc2U=
         S: -ERR [AUTH] Plaintext*
         C: STAT
         S: -ERR Command not valid in this state
         C: QUIT
         S: +OK Epistole POP3 server signing off
         S: <EOF>",
    )
    .await;
}

#[tokio::test]
async fn stls_then_login_and_every_transaction_command() {
    let (env, uids) = env_with_messages(|_| {}).await;
    let v = env.inbox().await.uidvalidity;
    let mut c = env.connect_stls().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    let caps = c.lines().await;
    assert!(caps.contains(&"USER".to_string()) && caps.contains(&"SASL PLAIN".to_string()));
    assert!(
        !caps.contains(&"STLS".to_string()),
        "STLS offered inside TLS: {caps:?}"
    );
    assert_eq!(c.cmd("STLS").await, "-ERR Already using TLS");
    c.login().await;
    let m2_size = M2_CRLF.len();
    let m1_size = M1.len();
    let m3_size = m3().len();
    assert_eq!(pop3::body::crlf_size(M2), m2_size as u64);
    let total = m1_size + m2_size + m3_size;
    c.transcript(&format!(
        "C: STAT
         S: +OK 3 {total}
         C: LIST 2
         S: +OK 2 {m2_size}
         C: LIST 4
         S: -ERR No such message
         C: UIDL 3
         S: +OK 3 {v}.{}
         C: NOOP
         S: +OK",
        uids[2]
    ))
    .await;
    assert_eq!(
        c.cmd("LIST").await,
        format!("+OK 3 messages ({total} octets)")
    );
    assert_eq!(
        c.lines().await,
        vec![
            format!("1 {m1_size}"),
            format!("2 {m2_size}"),
            format!("3 {m3_size}")
        ]
    );
    assert_eq!(c.cmd("UIDL").await, "+OK Unique-ID listing follows");
    assert_eq!(
        c.lines().await,
        uids.iter()
            .enumerate()
            .map(|(i, u)| format!("{} {v}.{u}", i + 1))
            .collect::<Vec<_>>()
    );
    // RETR: exact bytes, sizes as announced.
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {m1_size} octets"));
    assert_eq!(c.body().await, M1);
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {m2_size} octets"));
    assert_eq!(c.body().await, M2_CRLF);
    // TOP n 0: header and blank line; TOP 3 2: two body lines.
    assert_eq!(c.cmd("TOP 3 0").await, "+OK Message follows");
    assert_eq!(c.body().await, b"Subject: three\r\n\r\n");
    assert_eq!(c.cmd("TOP 3 2").await, "+OK Message follows");
    assert_eq!(
        c.body().await,
        b"Subject: three\r\n\r\nbody line 1\r\nbody line 2\r\n"
    );
    assert_eq!(c.cmd("TOP 2 1").await, "+OK Message follows");
    assert_eq!(
        c.body().await,
        b"From: b@example.org\r\nSubject: two\r\n\r\nline1\r\n"
    );
    // DELE marks; deleted messages vanish from listings; RSET unmarks.
    c.transcript(&format!(
        "C: DELE 1
         S: +OK Message 1 deleted
         C: DELE 1
         S: -ERR Message already deleted
         C: RETR 1
         S: -ERR Message already deleted
         C: LIST 1
         S: -ERR Message already deleted
         C: TOP 1 0
         S: -ERR Message already deleted
         C: UIDL 1
         S: -ERR Message already deleted
         C: STAT
         S: +OK 2 {}
         C: RSET
         S: +OK Maildrop has 3 messages
         C: STAT
         S: +OK 3 {total}
         C: DELE 1
         S: +OK Message 1 deleted
         C: DELE 3
         S: +OK Message 3 deleted
         C: USER bob
         S: -ERR Command not valid in this state
         C: STLS
         S: -ERR Command not valid in this state",
        m2_size + m3_size
    ))
    .await;
    assert_eq!(
        c.cmd("LIST").await,
        format!("+OK 1 messages ({m2_size} octets)")
    );
    assert_eq!(c.lines().await, vec![format!("2 {m2_size}")]);
    // Nothing is deleted before QUIT.
    assert_eq!(env.inbox_uids().await, uids);
    c.transcript(
        "C: QUIT
         S: +OK Epistole POP3 server signing off (2 messages deleted)
         S: <EOF>",
    )
    .await;
    assert_eq!(env.inbox_uids().await, vec![uids[1]]);
}

#[tokio::test]
async fn pipelined_command_after_stls_is_never_answered_inside_tls() {
    let env = Env::new(|_| {}).await;
    let mut c = env.connect().await;
    // threat model T8: one write.
    c.send(b"STLS\r\nCAPA\r\n").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation now");
    let mut c = env.upgrade(c).await;
    // If the pipelined CAPA were answered inside TLS, its reply would come first.
    assert_eq!(c.cmd("QUIT").await, "+OK Epistole POP3 server signing off");
}

#[tokio::test]
async fn implicit_tls_session() {
    let (env, uids) = env_with_messages(|_| {}).await;
    let mut c = env.connect_tls().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    let caps = c.lines().await;
    assert!(caps.contains(&"USER".to_string()) && !caps.contains(&"STLS".to_string()));
    assert_eq!(c.cmd("STLS").await, "-ERR Already using TLS");
    c.login().await;
    // The store precomputed the CRLF size: known even before LIST/STAT.
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets", M1.len()));
    assert_eq!(c.body().await, M1);
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets", M1.len()));
    assert_eq!(c.body().await, M1);
    assert_eq!(c.cmd("DELE 2").await, "+OK Message 2 deleted");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(env.inbox_uids().await, vec![uids[0], uids[2]]);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_byte_identical() {
    let env = Env::new(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK Send PASS");
    let started = std::time::Instant::now();
    let wrong = c.cmd("PASS wrong").await;
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "no failed-login delay"
    );
    assert_eq!(c.cmd("USER nobody@example.org").await, "+OK Send PASS");
    let unknown = c.cmd(&format!("PASS {PASS}")).await;
    assert_eq!(
        c.cmd("USER nobody@elsewhere.example").await,
        "+OK Send PASS"
    );
    let foreign = c.cmd("PASS x").await;
    assert_eq!(wrong, "-ERR [AUTH] Authentication failed");
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, foreign);
    // SASL PLAIN failures look the same.
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0nobody@example.org\0x")))
            .await,
        wrong
    );
    // PASS without USER, and USER is consumed by a failed PASS.
    c.transcript(
        "C: PASS x
         S: -ERR Send USER first",
    )
    .await;
    // The good password still works afterwards.
    c.login().await;
}

#[tokio::test]
async fn sasl_plain_variants() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let env = Env::new(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    assert_eq!(c.cmd("AUTH").await, "+OK SASL mechanisms follow");
    assert_eq!(c.lines().await, vec!["PLAIN"]);
    c.transcript(&format!(
        "C: AUTH LOGIN
         S: -ERR Unsupported SASL mechanism
         C: AUTH PLAIN
         S: +{sp}
         C: *
         S: -ERR Authentication cancelled
         C: AUTH PLAIN
         S: +{sp}
         C: !!!notbase64
         S: -ERR Invalid base64
         C: AUTH PLAIN {nonul}
         S: -ERR Invalid PLAIN response
         C: AUTH PLAIN {other}
         S: -ERR [AUTH] Authorization identity not permitted
         C: AUTH PLAIN =
         S: -ERR Invalid PLAIN response
         C: AUTH PLAIN
         S: +{sp}
         C: {good}
         S: +OK Maildrop locked and ready, 0 messages
         C: STAT
         S: +OK 0 0
         C: QUIT
         S: +OK Epistole POP3 server signing off",
        sp = " ",
        nonul = b64("alice"),
        other = b64(&format!("bob@example.org\0{USER}\0{PASS}")),
        good = b64(&format!("{USER}\0{USER}\0{PASS}")),
    ))
    .await;
}

#[tokio::test]
async fn argument_validation_and_limits() {
    let (env, _) = env_with_messages(|c| {
        c.allow_plaintext_auth = true;
        c.max_errors = 100;
    })
    .await;
    let mut c = env.connect().await;
    c.login().await;
    // threat model T35 and T36.
    for bad in [
        "RETR 0",
        "RETR 4294967296",
        "RETR 99999999999",
        "RETR -1",
        "TOP 1 -1",
        "LIST 99999999999999999999",
        "DELE 1 2",
        "RETR",
        "TOP 1",
        "RETR 4",
        "UIDL 0",
        "APOP alice 1234",
        "XTND XMIT",
        "LAST",
    ] {
        let r = c.cmd(bad).await;
        assert!(r.starts_with("-ERR"), "{bad} → {r}");
    }
    let long = format!("NOOP {}", "x".repeat(300));
    assert_eq!(c.cmd(&long).await, "-ERR line too long");
    // The session goes on after the over-long line.
    assert_eq!(c.cmd("NOOP").await, "+OK");
    // An endless line without LF is discarded as it arrives.
    c.send(&vec![b'A'; 200_000]).await;
    assert_eq!(c.line().await, "-ERR line too long");
    c.send(b"\r\nSTAT\r\n").await;
    assert!(c.line().await.starts_with("+OK 3 "));
    // Nothing was deleted by any of this.
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(env.inbox_uids().await.len(), 3);
}

#[tokio::test]
async fn too_many_errors_close_the_connection() {
    let env = Env::new(|c| c.max_errors = 3).await;
    let mut c = env.connect().await;
    c.transcript(
        "C: FOO
         S: -ERR Unknown command
         C: BAR
         S: -ERR Unknown command
         C: BAZ
         S: -ERR Unknown command
         S: -ERR Too many errors, closing connection
         S: <EOF>",
    )
    .await;
}

#[tokio::test]
async fn autologout_timer() {
    let env = Env::new(|c| c.command_timeout = Duration::from_millis(300)).await;
    let mut c = env.connect().await;
    assert_eq!(
        c.line().await,
        "-ERR Autologout timer expired, nothing deleted"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelining_answers_in_order() {
    let (env, _) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.send(
        format!("USER {USER}\r\nPASS {PASS}\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nNOOP\r\nQUIT\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(c.line().await, "+OK Send PASS");
    assert!(c.line().await.starts_with("+OK Maildrop locked"));
    assert!(c.line().await.starts_with("+OK 3 "));
    assert!(c.line().await.starts_with("+OK "));
    assert_eq!(c.body().await, M1);
    assert_eq!(c.line().await, "+OK Message 1 deleted");
    assert_eq!(c.line().await, "+OK");
    assert_eq!(
        c.line().await,
        "+OK Epistole POP3 server signing off (1 messages deleted)"
    );
    assert_eq!(env.inbox_uids().await.len(), 2);
}

#[tokio::test]
async fn second_session_gets_in_use_and_lock_is_released_at_quit() {
    let (env, _) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut a = env.connect().await;
    a.login().await;
    let mut b = env.connect().await;
    b.transcript(&format!(
        "C: USER {USER}
         S: +OK Send PASS
         C: PASS {PASS}
         S: -ERR [IN-USE] Maildrop is locked by another session
         C: STAT
         S: -ERR Command not valid in this state"
    ))
    .await;
    // SASL path too.
    use base64::Engine as _;
    let ir = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASS}"));
    assert_eq!(
        b.cmd(&format!("AUTH PLAIN {ir}")).await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    // The lock outlives its TTL (6 s) while the first session lives: refreshed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        b.cmd(&format!("AUTH PLAIN {ir}")).await,
        "-ERR [IN-USE] Maildrop is locked by another session"
    );
    assert!(a.cmd("STAT").await.starts_with("+OK 3 "));
    assert!(a.cmd("QUIT").await.starts_with("+OK"));
    b.login().await;
}

#[tokio::test]
async fn dropped_connection_after_dele_deletes_nothing() {
    let (env, uids) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.login().await;
    for n in 1..=3 {
        assert_eq!(
            c.cmd(&format!("DELE {n}")).await,
            format!("+OK Message {n} deleted")
        );
    }
    drop(c); // no QUIT
    // The lock is released by the ended session: a new login soon succeeds.
    let mut c = loop {
        let mut c = env.connect().await;
        assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK Send PASS");
        let r = c.cmd(&format!("PASS {PASS}")).await;
        if r.starts_with("+OK") {
            break c;
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(env.inbox_uids().await, uids);
    let msgs = env.inbox_messages().await;
    assert!(
        msgs.iter()
            .all(|(_, f)| !f.iter().any(|f| f == "\\Deleted")),
        "{msgs:?}"
    );
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
}

#[tokio::test]
async fn shutdown_deletes_nothing() {
    let (env, uids) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    env.shutdown.cancel();
    assert_eq!(
        c.line().await,
        "-ERR [SYS/TEMP] Server shutting down, nothing deleted"
    );
    assert!(c.closed().await);
    assert_eq!(env.inbox_uids().await, uids);
}

#[tokio::test]
async fn expired_lock_of_a_dead_replica_is_taken_over() {
    let (env, _) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    // A "replica" that took the lock and died: never refreshed, 5 s TTL.
    let taken = std::time::Instant::now();
    let mut mb = env.store.client().mailboxes;
    let got = mb
        .acquire_lock(pb::AcquireLockRequest {
            name: format!("pop3:{}", env.user_id),
            owner: "dead-replica".into(),
            ttl_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.acquired);
    let mut c = env.connect().await;
    c.transcript(&format!(
        "C: USER {USER}
         S: +OK Send PASS
         C: PASS {PASS}
         S: -ERR [IN-USE]*"
    ))
    .await;
    tokio::time::sleep(
        (taken + Duration::from_millis(5100)).saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    c.login().await;
}

#[tokio::test]
async fn quit_expunges_only_the_deleted_uids() {
    let (env, uids) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    // An IMAP client flagged message 3 \Deleted without expunging it.
    let id = env.inbox().await.id;
    let mut mb = env.store.client().mailboxes;
    mb.store_flags(pb::StoreFlagsRequest {
        mailbox_id: id,
        uids: Some(pb::UidSet {
            ranges: vec![pb::UidRange {
                first: uids[2],
                last: uids[2],
            }],
        }),
        op: pb::FlagOp::Add as i32,
        flags: vec!["\\Deleted".into()],
        unchanged_since: 0,
    })
    .await
    .unwrap();
    let mut c = env.connect().await;
    c.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    assert!(c.cmd("QUIT").await.contains("(1 messages deleted)"));
    assert_eq!(env.inbox_uids().await, vec![uids[1], uids[2]]);
}

#[tokio::test]
async fn uidl_is_stable_across_sessions() {
    let (env, _) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.login().await;
    assert!(c.cmd("UIDL").await.starts_with("+OK"));
    let first = c.lines().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    env.append(b"Subject: four\r\n\r\nx\r\n").await;
    let mut c = env.connect().await;
    c.login().await;
    assert!(c.cmd("UIDL").await.starts_with("+OK"));
    let second = c.lines().await;
    let ids = |v: &[String]| {
        v.iter()
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&second)[..2], ids(&first)[1..]);
    assert_eq!(second.len(), 3);
    assert!(second[0].starts_with("1 "), "renumbered from 1: {second:?}");
}

#[tokio::test]
async fn login_delay_is_announced_and_enforced() {
    let env = Env::new(|c| {
        c.allow_plaintext_auth = true;
        c.login_delay = Some(4);
        c.expire = Some("NEVER".into());
    })
    .await;
    let mut c = env.connect().await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let caps = c.lines().await;
    assert!(caps.contains(&"LOGIN-DELAY 4".to_string()), "{caps:?}");
    assert!(caps.contains(&"EXPIRE NEVER".to_string()), "{caps:?}");
    c.login().await;
    // The delay lock was taken before the login answered: measure from here.
    let logged_in = std::time::Instant::now();
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = env.connect().await;
    c.transcript(&format!(
        "C: USER {USER}
         S: +OK Send PASS
         C: PASS {PASS}
         S: -ERR [LOGIN-DELAY] Minimum time between logins not reached"
    ))
    .await;
    tokio::time::sleep(
        (logged_in + Duration::from_millis(4300))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    c.login().await;
}

#[tokio::test]
async fn store_outage_is_a_temporary_error() {
    let mut env = Env::new(|c| c.allow_plaintext_auth = true).await;
    env.store.stop().await;
    let mut c = env.connect().await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK Send PASS");
    let r = c.cmd(&format!("PASS {PASS}")).await;
    assert!(
        r.starts_with("-ERR [SYS/TEMP] Temporary server problem"),
        "{r}"
    );
    env.store.restart().await;
    c.login().await;
}

#[tokio::test]
async fn big_message_and_many_chunks() {
    let env = Env::new(|c| c.allow_plaintext_auth = true).await;
    // 3 MB with bare LFs and dot lines spread over many store chunks.
    let mut raw = b"Subject: big\n\n".to_vec();
    let mut i = 0u32;
    while raw.len() < 3_000_000 {
        raw.extend_from_slice(format!(".line {i}\n").as_bytes());
        i += 1;
    }
    env.append(&raw).await;
    let mut c = env.connect().await;
    c.login().await;
    let size = pop3::body::crlf_size(&raw);
    assert_eq!(c.cmd("LIST 1").await, format!("+OK 1 {size}"));
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {size} octets"));
    let body = c.body().await;
    assert_eq!(body.len() as u64, size);
    assert!(body.starts_with(b"Subject: big\r\n\r\n.line 0\r\n.line 1\r\n"));
}

#[tokio::test]
async fn throttled_after_many_failures_even_with_the_right_password() {
    let env = Env::new(|c| {
        c.allow_plaintext_auth = true;
        c.max_errors = 100;
        c.auth_failure_delay = Duration::from_millis(1);
    })
    .await;
    let mut c = env.connect().await;
    let mut replies = Vec::new();
    for _ in 0..25 {
        assert_eq!(c.cmd("USER nobody@example.org").await, "+OK Send PASS");
        replies.push(c.cmd("PASS guess").await);
    }
    // The store counts failures per client IP (limit 20 a minute).
    assert_eq!(replies[0], "-ERR [AUTH] Authentication failed");
    let last = replies.last().unwrap();
    assert_eq!(
        last,
        "-ERR [SYS/TEMP] Too many failed logins, try again later"
    );
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK Send PASS");
    assert_eq!(c.cmd(&format!("PASS {PASS}")).await, *last);
}

#[tokio::test]
async fn maildrop_is_capped_to_the_oldest_messages() {
    let (env, uids) = env_with_messages(|c| {
        c.allow_plaintext_auth = true;
        c.max_messages = 2;
    })
    .await;
    let v = env.inbox().await.uidvalidity;
    let mut c = env.connect().await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK Send PASS");
    assert_eq!(
        c.cmd(&format!("PASS {PASS}")).await,
        "+OK Maildrop locked and ready, 2 messages"
    );
    assert_eq!(c.cmd("UIDL").await, "+OK Unique-ID listing follows");
    assert_eq!(
        c.lines().await,
        vec![format!("1 {v}.{}", uids[0]), format!("2 {v}.{}", uids[1])]
    );
    assert_eq!(c.cmd("RETR 3").await, "-ERR No such message");
}

#[tokio::test]
async fn state_table_utf8_and_capa_in_transaction() {
    let (env, _) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.transcript(
        "C: NOOP
         S: -ERR Command not valid in this state
         C: RSET
         S: -ERR Command not valid in this state
         C: UIDL
         S: -ERR Command not valid in this state
         C: utf8
         S: +OK UTF8 enabled",
    )
    .await;
    // RFC 6856: UTF-8 user names are accepted (and simply fail like any unknown user).
    assert_eq!(c.cmd("USER jörg@example.org").await, "+OK Send PASS");
    assert_eq!(c.cmd("PASS x").await, "-ERR [AUTH] Authentication failed");
    c.login().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    let caps = c.lines().await;
    assert_eq!(
        caps,
        vec![
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "IMPLEMENTATION Epistole"
        ]
    );
    c.transcript(
        "C: UTF8
         S: -ERR Command not valid in this state
         C: AUTH PLAIN
         S: -ERR Command not valid in this state
         C: PASS x
         S: -ERR Command not valid in this state
         C: QUIT
         S: +OK Epistole POP3 server signing off
         S: <EOF>",
    )
    .await;
}

#[tokio::test]
async fn no_stls_without_tls_configuration() {
    let env = Env::new(|c| c.stls_available = false).await;
    let mut c = env.connect().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    assert!(!c.lines().await.contains(&"STLS".to_string()));
    assert_eq!(c.cmd("STLS").await, "-ERR STLS not available");
}

#[tokio::test]
async fn message_expunged_elsewhere_and_store_outage_during_transaction() {
    let (mut env, uids) = env_with_messages(|c| c.allow_plaintext_auth = true).await;
    let mut c = env.connect().await;
    c.login().await;
    assert!(c.cmd("LIST").await.starts_with("+OK 3 messages"));
    c.lines().await;
    // An IMAP session expunges message 1 behind our back.
    let id = env.inbox().await.id;
    let mut mb = env.store.client().mailboxes;
    let one = pb::UidSet {
        ranges: vec![pb::UidRange {
            first: uids[0],
            last: uids[0],
        }],
    };
    mb.store_flags(pb::StoreFlagsRequest {
        mailbox_id: id,
        uids: Some(one.clone()),
        op: pb::FlagOp::Add as i32,
        flags: vec!["\\Deleted".into()],
        unchanged_since: 0,
    })
    .await
    .unwrap();
    mb.expunge(pb::ExpungeRequest {
        mailbox_id: id,
        uids: Some(one),
    })
    .await
    .unwrap();
    assert_eq!(c.cmd("RETR 1").await, "-ERR Message no longer available");
    assert_eq!(c.cmd("TOP 1 0").await, "-ERR Message no longer available");
    // Numbering is stable within the session (RFC 1939 §5).
    assert!(c.cmd("RETR 2").await.starts_with("+OK"));
    assert_eq!(c.body().await, M2_CRLF);
    // The store goes away: a temporary error, the session survives.
    env.store.stop().await;
    let r = c.cmd("RETR 3").await;
    assert!(
        r.starts_with("-ERR [SYS/TEMP] Temporary server problem, try again later (session "),
        "{r}"
    );
    env.store.restart().await;
    assert!(c.cmd("RETR 3").await.starts_with("+OK"));
    assert_eq!(c.body().await, m3());
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    assert_eq!(c.cmd("DELE 3").await, "+OK Message 3 deleted");
    // Message 1 is already gone: only message 3 is expunged now.
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Epistole POP3 server signing off (1 messages deleted)"
    );
    assert_eq!(env.inbox_uids().await, vec![uids[1]]);
}
