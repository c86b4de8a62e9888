//! Transcript tests of the SMTP state machine over an in-memory pipe,
//! against a real mailbox-store (test_kit::TestStore, real PostgreSQL).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ALICE, ALICE_PW, Harness, queued_id, split_received};
use mailstore_api::pb;
use smtp_in::session::ListenerKind;

fn plain(user: &str, pw: &str) -> String {
    B64.encode(format!("\0{user}\0{pw}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_accepts_local_mail_byte_for_byte() {
    let h = Harness::new().await;
    let mut c = h.connect(ListenerKind::Mx);
    let greeting = c.expect_reply("220 mx.test ESMTP").await;
    assert!(
        greeting.last().contains('['),
        "session id in greeting: {greeting:?}"
    );
    let ehlo = c.expect("EHLO client.example", "250 ").await;
    let caps = ehlo.text();
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    // threat model T12: the MX never offers AUTH.
    assert!(!caps.contains("AUTH"), "{caps}");

    c.expect(
        "MAIL FROM:<sender@remote.example> BODY=8BITMIME RET=HDRS ENVID=env+2B1",
        "250 2.1.0",
    )
    .await;
    c.expect(
        "RCPT TO:<Alice@OURS.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@ours.example",
        "250 2.1.5",
    )
    .await;
    c.expect("RCPT TO:<nobody@ours.example>", "550 5.1.1").await;
    c.expect("DATA", "354").await;
    // Dot-stuffed on the wire; unstuffed in the queue.
    c.write(b"Subject: hi\r\n\r\nline 1\r\n..leading dot\r\n.\r\n")
        .await;
    let r = c.reply().await.unwrap();
    let id = queued_id(&r);
    c.expect("QUIT", "221").await;

    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    let msg = h.message(id).await;
    let (received, body) = split_received(&msg);
    assert_eq!(body, b"Subject: hi\r\n\r\nline 1\r\n.leading dot\r\n");
    assert!(
        received.starts_with("Received: from client.example ([192.0.2.10])\r\n\tby mx.test"),
        "{received}"
    );
    assert!(received.contains("with ESMTP\r\n"), "{received}");

    let job = h.job(id).await;
    assert_eq!(job.mail_from, "sender@remote.example");
    assert_eq!(job.recipients.len(), 1);
    let rcpt = job.recipients[0].recipient.clone().unwrap();
    assert_eq!(rcpt.address, "Alice@ours.example");
    assert_eq!(rcpt.orcpt, "rfc822;alice@ours.example");
    assert_eq!(rcpt.notify, 2 | 4);
    assert_eq!(job.envid, "env+2B1");
    assert_eq!(job.ret, "HDRS");
    assert_eq!(job.body_type, "8BITMIME");
    assert_eq!(job.client_ip, "192.0.2.10");
    assert_eq!(job.helo, "client.example");
    assert!(
        received.contains(&format!("id {}.1", job.session_id)),
        "{received}"
    );
    assert!(job.authenticated_user.is_empty());
    // Issue 14: mail from the MX is never marked for our DKIM signature.
    assert!(!job.sign);
    assert!(!job.requiretls);
}

/// threat model T14: no relay for an unauthenticated client, whatever the
/// address form; nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_battery_denied() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    for rcpt in [
        "<v@external.example>",
        "<v%external.example@ours.example>",
        "<\"v@external.example\">",
        "<\"v@external.example\"@ours.example>",
        "<v@external.example@ours.example>",
        "<external.example!v@ours.example>",
        "<@ours.example:v@external.example>",
        "<@ours.example,@x.example:v@external.example>",
        "<v@[192.0.2.1]>",
        "<v@[IPv6:2001:db8::1]>",
        "<\"v%external.example\"@ours.example>",
        "<v@external.example.>",
        "<alice@ours.example.>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(r.last().starts_with("554 5.7.1"), "{rcpt}: {:?}", r.lines);
    }
    c.expect("DATA", "503 5.5.1").await;
    c.expect("QUIT", "221").await;
    assert!(h.jobs().await.is_empty());
}

/// threat model T1–T3: only <CRLF>.<CRLF> ends DATA; a message with a bare CR
/// or LF is refused as a whole (550 5.5.2) and nothing is queued; the
/// smuggled commands are never executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_end_data() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    for fake in [
        "\n.\r\n",
        "\n.\n",
        "\r.\r",
        "\r.\n",
        "\n.\r",
        "\r\n.\n",
        "\r.\r\n",
        "\r\n.\r",
        "\r\n\x00.\r\n",
    ] {
        c.expect("MAIL FROM:<x@remote.example>", "250").await;
        c.expect("RCPT TO:<alice@ours.example>", "250").await;
        c.expect("DATA", "354").await;
        let payload = format!(
            "Subject: s\r\n\r\nhello{fake}MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<alice@ours.example>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n"
        );
        // One write, as an attacker would send it.
        c.write(payload.as_bytes()).await;
        let r = c.reply().await.unwrap();
        if fake == "\r\n\x00.\r\n" {
            // NUL is not a line ending: one message, smuggled text inside.
            let id = queued_id(&r);
            let (_, body) = split_received(&h.message(id).await);
            assert!(body.ends_with(b"DATA\r\nsmuggled\r\n"), "{body:?}");
        } else {
            assert!(r.last().starts_with("550 5.5.2"), "{fake:?}: {:?}", r.lines);
        }
        // The next reply is the NOOP after the real end: no second transaction.
        c.expect_reply("250 2.0.0 Ok").await;
    }
    assert_eq!(h.jobs().await.len(), 1, "only the NUL case is a message");
}

/// BDAT (RFC 3030): chunks assemble one message; the same bare-LF policy;
/// DATA during BDAT and BDAT before MAIL are refused after the chunk is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    // BDAT before MAIL: refused, but its 5 octets are read, not run as commands.
    c.write(b"BDAT 5\r\nHELLO").await;
    c.expect_reply("503 5.5.1").await;
    c.expect("NOOP", "250").await;
    c.script(
        "C: MAIL FROM:<x@remote.example>
         C: RCPT TO:<alice@ours.example>
         S: 250
         S: 250",
    )
    .await;
    c.write(b"BDAT 14\r\nSubject: b\r\n\r\nBDAT 0 LAST\r\n")
        .await;
    c.expect_reply("250 2.0.0 14 octets").await;
    let r = c.reply().await.unwrap();
    let id = queued_id(&r);
    let (_, body) = split_received(&h.message(id).await);
    assert_eq!(body, b"Subject: b\r\n\r\n");

    // Bare LF inside a chunk: refused, nothing queued.
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.write(b"BDAT 6 LAST\r\na\nbc\r\n").await;
    c.expect_reply("550 5.5.2").await;

    // DATA after BDAT.
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.write(b"BDAT 3\r\na\r\n").await;
    c.expect_reply("250").await;
    c.expect("DATA", "503 5.5.1").await;
    c.expect("RSET", "250").await;
    // Hostile chunk sizes: unparseable, then larger than any message
    // (refused and the connection closed: it cannot be resynchronised).
    c.expect("BDAT 4294967296000000000000 LAST", "552").await;
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.expect("BDAT 4294967296 LAST", "552 5.3.4").await;
    assert!(c.reply().await.is_none());
    assert_eq!(h.jobs().await.len(), 1);
}

/// threat model T6, T9, T10: STARTTLS with a pipelined RSET in the same
/// write: only the 220 is answered in plaintext, nothing answers the RSET
/// inside TLS, the session restarts (EHLO needed), no second STARTTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_injection() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    c.write(b"STARTTLS\r\nRSET\r\n").await;
    c.expect_reply("220 2.0.0").await;
    let (raw, leftover) = c.into_inner();
    assert!(leftover.is_empty(), "plaintext after 220: {leftover:?}");
    let tls = h.tls(raw).await;
    let mut c = common::Client::new(tls);
    // First thing inside TLS: MAIL without EHLO must be refused (state was
    // reset), and it is the first reply, not an answer to the injected RSET.
    let r = c.cmd("MAIL FROM:<x@remote.example>").await;
    assert!(r.last().starts_with("503 5.5.1"), "{:?}", r.lines);
    let ehlo = c.expect("EHLO client.example", "250 ").await;
    assert!(!ehlo.text().contains("STARTTLS"), "{:?}", ehlo.lines);
    c.expect("STARTTLS", "503").await;
    let r = c
        .send_mail(
            "x@remote.example",
            &["alice@ours.example"],
            b"Subject: t\r\n\r\nx\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let (received, _) = split_received(&h.message(id).await);
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(
        received.contains("(version=TLSv1_3 cipher=TLS13_"),
        "{received}"
    );
}

/// threat model T11, T16, T18 and submission rules (RFC 6409, RFC 4954).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_auth_and_relay() {
    let h = Harness::new().await;
    let mut c = h.connect(ListenerKind::Submission);
    c.expect_reply("220").await;
    let ehlo = c.expect("EHLO laptop", "250 ").await;
    assert!(
        !ehlo.text().contains("AUTH"),
        "no AUTH before TLS: {:?}",
        ehlo.lines
    );
    c.expect(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)),
        "530 5.7.0",
    )
    .await;
    c.expect("MAIL FROM:<alice@ours.example>", "530 5.7.0")
        .await;
    c.expect("STARTTLS", "220").await;
    let (raw, _) = c.into_inner();
    let mut c = common::Client::new(h.tls(raw).await);
    let ehlo = c.expect("EHLO laptop", "250 ").await;
    assert!(ehlo.text().contains("AUTH PLAIN LOGIN"), "{:?}", ehlo.lines);
    c.expect("MAIL FROM:<alice@ours.example>", "530 5.7.0")
        .await;

    // Wrong password and unknown user: the same bytes (sid aside, same session).
    let wrong = c.cmd(&format!("AUTH PLAIN {}", plain(ALICE, "nope"))).await;
    let unknown = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            plain("ghost@ours.example", "nope")
        ))
        .await;
    assert_eq!(wrong.lines, unknown.lines);
    assert!(wrong.last().starts_with("535 5.7.8"));
    // authzid different from authcid.
    c.expect(
        &format!(
            "AUTH PLAIN {}",
            B64.encode(format!("bob@ours.example\0{ALICE}\0{ALICE_PW}"))
        ),
        "535",
    )
    .await;
    // Garbage and cancel.
    c.expect("AUTH PLAIN !!!", "501").await;
    c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.expect("*", "501").await;
    // 100 kB of junk in a SASL response: bounded, refused.
    c.expect("AUTH PLAIN", "334").await;
    c.expect(&"A".repeat(100_000), "501").await;

    // AUTH LOGIN, the right way.
    c.expect("AUTH LOGIN", "334").await;
    c.expect(&B64.encode(ALICE), "334 UGFzc3dvcmQ6").await;
    c.expect(&B64.encode(ALICE_PW), "235 2.7.0").await;
    c.expect(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)), "503")
        .await;

    // Sender must be owned; relay allowed once authenticated.
    c.expect("MAIL FROM:<bob@ours.example>", "553 5.7.1").await;
    c.expect("MAIL FROM:<>", "553 5.7.1").await;
    c.expect("MAIL FROM:<alice@ours.example>", "250").await;
    c.expect("RCPT TO:<friend@external.example>", "250").await;
    c.expect("RCPT TO:<nobody@ours.example>", "550 5.1.1").await;
    c.expect("DATA", "354").await;
    c.write(b"Subject: out\r\n\r\nbye\r\n.\r\n").await;
    let id = queued_id(&c.reply().await.unwrap());
    let job = h.job(id).await;
    assert_eq!(job.authenticated_user, ALICE);
    // Issue 14: an authenticated submission that passed the sender check
    // is the one kind of client mail smtp-out signs.
    assert!(job.sign);
    assert_eq!(
        job.recipients[0].recipient.as_ref().unwrap().address,
        "friend@external.example"
    );
    let (received, _) = split_received(&h.message(id).await);
    assert!(received.contains("with ESMTPSA"), "{received}");
}

/// RFC 8314: implicit TLS on 465; AUTH PLAIN with a 334 continuation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_implicit_tls() {
    let h = Harness::new().await;
    let raw = h.connect(ListenerKind::Submissions).into_inner().0;
    let mut c = common::Client::new(h.tls(raw).await);
    c.expect_reply("220 mx.test").await;
    let ehlo = c.expect("EHLO laptop", "250 ").await;
    assert!(!ehlo.text().contains("STARTTLS"));
    c.expect("AUTH PLAIN", "334").await;
    c.expect(&plain(ALICE, ALICE_PW), "235").await;
    let r = c
        .send_mail(
            ALICE,
            &["alice@ours.example"],
            b"Subject: self\r\n\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let (_, body) = split_received(&h.message(id).await);
    assert_eq!(body, b"Subject: self\r\n\r\n");
}

/// threat model T15, T20, T21, T23, T24, T25, T26: limits and hostile syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_hostile_syntax() {
    let h = Harness::with_limits(smtp_in::Limits {
        max_message_size: 1000,
        max_recipients: 3,
        ..common::limits()
    })
    .await;
    let mut c = h.mx().await;
    c.script(
        "C: VRFY root
         S: 252
         C: EXPN staff
         S: 502
         C: MAIL FROM:<a@remote.example> SIZE=99999999999999999999999
         S: 552 5.3.4
         C: MAIL FROM:<a@remote.example> SIZE=-1
         S: 501
         C: MAIL FROM:<a@remote.example> BODY=WHATEVER
         S: 555
         C: MAIL FROM:<a@remote.example> XFOO=1
         S: 555
         C: MAIL FROM:<a@remote.example> SIZE=1 SIZE=2
         S: 501
         C: MAIL FROM:<a@remote.example> SIZE=1001
         S: 552 5.3.4
         C: DATA
         S: 503
         C: RCPT TO:<alice@ours.example>
         S: 503",
    )
    .await;
    c.expect(&format!("EHLO {}", "x".repeat(2000)), "500 5.5.2")
        .await;
    c.expect("MAIL FROM:<a@remote.example> SIZE=500", "250")
        .await;
    for i in 0..3 {
        // The same local user under plus-tags: each is a recipient.
        c.expect(&format!("RCPT TO:<alice+{i}@ours.example>"), "250")
            .await;
    }
    c.expect("RCPT TO:<alice+9@ours.example>", "452 4.5.3")
        .await;
    c.expect("DATA", "354").await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789012345678\r\n");
    }
    big.extend_from_slice(b".\r\n");
    c.write(&big).await;
    c.expect_reply("552 5.3.4").await;
    assert!(
        h.jobs().await.is_empty(),
        "an oversized message is never stored"
    );
}

/// threat model T15/T26: too many errors → 421 and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_closes() {
    let h = Harness::with_limits(smtp_in::Limits {
        max_errors: 5,
        ..common::limits()
    })
    .await;
    let mut c = h.mx().await;
    for _ in 0..4 {
        c.expect("JUNK", "500").await;
    }
    c.write(b"JUNK\r\n").await;
    c.expect_reply("500").await;
    c.expect_reply("421 4.7.0").await;
    assert!(c.reply().await.is_none());
}

/// Commands before the greeting (threat model T5), command timeout, shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talker_timeout_and_shutdown() {
    let mut h = Harness::with_limits(smtp_in::Limits {
        command_timeout: Duration::from_millis(500),
        ..common::limits()
    })
    .await;
    h.options.early_talker_delay = Duration::from_millis(300);
    let mut c = h.connect(ListenerKind::Mx);
    c.write(b"EHLO hasty\r\n").await;
    c.expect_reply("554 5.5.1").await;
    assert!(c.reply().await.is_none());

    let mut c = h.connect(ListenerKind::Mx);
    c.expect_reply("220").await;
    c.expect_reply("421 4.4.2").await;

    h.options.early_talker_delay = Duration::ZERO;
    let mut c = h.connect(ListenerKind::Submission);
    c.expect_reply("220").await;
    h.shutdown.cancel();
    c.expect_reply("421 4.3.2").await;
}

/// Durability: the store goes away mid-session → 451 and nothing stored;
/// it comes back → the resend is accepted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_means_451_then_resend_once() {
    let mut h = Harness::new().await;
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.expect("DATA", "354").await;
    c.write(b"Subject: durable\r\n\r\nbody\r\n").await;
    h.crash_store().await;
    c.write(b".\r\n").await;
    let r = c.reply().await.unwrap();
    assert!(r.last().starts_with("451 4.3.0"), "{:?}", r.lines);
    // RCPT during the outage: 451 too, never 5xx.
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<alice@ours.example>", "451 4.3.0").await;
    c.expect("RSET", "250").await;

    h.store.restart().await;
    assert!(h.jobs().await.is_empty(), "nothing half-written");
    let r = c
        .send_mail(
            "x@remote.example",
            &["alice@ours.example"],
            b"Subject: durable\r\n\r\nbody\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, id);
    let (_, body) = split_received(&h.message(id).await);
    assert_eq!(body, b"Subject: durable\r\n\r\nbody\r\n");
    let _ = pb::QueueKind::Inbound;
}

/// Pipelining (RFC 2920): a whole transaction in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    c.write(b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<alice@ours.example>\r\nRCPT TO:<v@external.example>\r\nDATA\r\n").await;
    c.expect_reply("250").await;
    c.expect_reply("250").await;
    c.expect_reply("554 5.7.1").await;
    c.expect_reply("354").await;
    c.write(b"Subject: p\r\n\r\n.\r\nQUIT\r\n").await;
    queued_id(&c.reply().await.unwrap());
    c.expect_reply("221").await;
    let job = h.job(h.jobs().await[0].id).await;
    assert_eq!(job.recipients.len(), 1);
}

/// RFC 1870 §6: a message much larger than its declared SIZE is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_size_enforced() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<x@remote.example> SIZE=1000", "250")
        .await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.expect("DATA", "354").await;
    let line = format!("{}\r\n", "y".repeat(998));
    for _ in 0..200 {
        c.write(line.as_bytes()).await;
    }
    c.write(b".\r\n").await;
    c.expect_reply("552 5.3.4").await;
    c.expect("NOOP", "250").await;
    assert!(h.jobs().await.is_empty());
}

/// threat model T15: unknown recipients are tarpitted, then 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_recipients_slowed_then_closed() {
    let h = Harness::with_limits(smtp_in::Limits {
        max_errors: 6,
        errors_before_delay: 2,
        error_delay: Duration::from_millis(200),
        ..common::limits()
    })
    .await;
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    let start = std::time::Instant::now();
    for i in 0..5 {
        c.expect(&format!("RCPT TO:<nobody{i}@ours.example>"), "550 5.1.1")
            .await;
    }
    c.write(b"RCPT TO:<nobody9@ours.example>\r\n").await;
    c.expect_reply("550 5.1.1").await;
    c.expect_reply("421 4.7.0").await;
    assert!(c.reply().await.is_none());
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
}

/// Sender addresses grant nothing: RFC 5321 forms that are refused as
/// recipients ("%", "!", quoted local parts) are fine as senders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_but_legal_senders() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    let r = c
        .send_mail(
            "\"john doe\"@remote.example",
            &["alice@ours.example"],
            b"Subject: q\r\n\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    assert_eq!(h.job(id).await.mail_from, "\"john doe\"@remote.example");
    c.expect("MAIL FROM:<a%b@remote.example>", "250").await;
    c.expect("RSET", "250").await;
    c.expect("MAIL FROM:<a@b@remote.example>", "501 5.1.3")
        .await;
}

/// RFC 6531: UTF-8 addresses only with SMTPUTF8; the Received header then
/// says UTF8SMTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8() {
    let h = Harness::new().await;
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<x@remote.example>", "250").await;
    c.expect("RCPT TO:<j\u{f6}rg@ours.example>", "553 5.6.7")
        .await;
    c.expect("RSET", "250").await;
    c.expect("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8", "250")
        .await;
    c.expect("RCPT TO:<j\u{f6}rg@ours.example>", "550 5.1.1")
        .await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.expect("DATA", "354").await;
    c.write("Subject: gr\u{fc}\u{df}e\r\n\r\n\u{e9}\r\n.\r\n".as_bytes())
        .await;
    let id = queued_id(&c.reply().await.unwrap());
    let job = h.job(id).await;
    assert!(job.smtputf8);
    assert_eq!(job.mail_from, "j\u{f6}rg@b\u{fc}cher.example");
    let (received, body) = split_received(&h.message(id).await);
    assert!(
        received.contains("with UTF8SMTPS") || received.contains("with UTF8SMTP\r\n"),
        "{received}"
    );
    assert_eq!(
        body,
        "Subject: gr\u{fc}\u{df}e\r\n\r\n\u{e9}\r\n".as_bytes()
    );
}

/// RFC 8689 §4 (threat model T104): REQUIRETLS is offered only inside TLS;
/// the MAIL parameter outside TLS is refused 530 5.7.10; inside TLS the
/// queued job carries the flag for smtp-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_only_over_tls() {
    let h = Harness::new().await;
    let mut c = h.connect(ListenerKind::Mx);
    c.expect_reply("220").await;
    let ehlo = c.expect("EHLO client.example", "250 ").await;
    assert!(!ehlo.text().contains("REQUIRETLS"), "{:?}", ehlo.lines);
    c.expect("MAIL FROM:<x@remote.example> REQUIRETLS", "530 5.7.10")
        .await;
    c.expect("MAIL FROM:<x@remote.example> REQUIRETLS=yes", "501")
        .await;
    c.expect("STARTTLS", "220").await;
    let (raw, _) = c.into_inner();
    let mut c = common::Client::new(h.tls(raw).await);
    let ehlo = c.expect("EHLO client.example", "250 ").await;
    assert!(ehlo.text().contains("REQUIRETLS"), "{:?}", ehlo.lines);
    c.expect("MAIL FROM:<x@remote.example> REQUIRETLS", "250")
        .await;
    c.expect("RCPT TO:<alice@ours.example>", "250").await;
    c.expect("DATA", "354").await;
    c.write(b"Subject: tls only\r\n\r\nx\r\n.\r\n").await;
    let id = queued_id(&c.reply().await.unwrap());
    assert!(h.job(id).await.requiretls);
    // Without the parameter, the flag is not set.
    let r = c
        .send_mail(
            "x@remote.example",
            &["alice@ours.example"],
            b"Subject: t\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(!h.job(queued_id(&r)).await.requiretls);
}

/// SRS (threat model T106): a bounce to a sender delivery rewrote is
/// accepted on the MX and queued to the original sender (delivery relays
/// it); a forged hash, an expired address or a changed original is 550
/// 5.1.1 — the SRS domain is no open relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srs_bounces_go_back_to_the_original_sender_only_when_valid() {
    let h = Harness::new().await;
    let srs = mail_wire::srs::Srs::new(common::SRS_SECRET, "ours.example", 21);
    let now = chrono::Utc::now().timestamp();
    let good = srs.forward("carol@origin.example", now).unwrap();
    let old = srs
        .forward("carol@origin.example", now - 30 * 86_400)
        .unwrap();
    let forged = mail_wire::srs::Srs::new(b"guess", "ours.example", 21)
        .forward("victim@origin.example", now)
        .unwrap();
    let tampered = good.replace("=carol@", "=mallory@");
    let mut c = h.mx().await;
    c.expect("MAIL FROM:<>", "250").await;
    for bad in [&old, &forged, &tampered] {
        c.expect(&format!("RCPT TO:<{bad}>"), "550 5.1.1").await;
    }
    c.expect(&format!("RCPT TO:<{good}>"), "250").await;
    c.expect("DATA", "354").await;
    c.write(b"Subject: Undelivered Mail\r\n\r\nbounce\r\n.\r\n")
        .await;
    let id = queued_id(&c.reply().await.unwrap());
    let job = h.job(id).await;
    assert_eq!(job.mail_from, "");
    let rcpt = job.recipients[0].recipient.clone().unwrap();
    assert_eq!(rcpt.address, "carol@origin.example");
    assert_eq!(rcpt.orcpt, format!("rfc822;{good}"));
    assert!(!job.sign, "a bounce from outside is not ours to sign");
}
