use super::envelope::{notify_param, orcpt_param};
use super::*;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// A scripted server on a duplex pipe: answers each command line from
/// `script` (command prefix → reply), records what it received.
async fn scripted(
    server: tokio::io::DuplexStream,
    greeting: &'static [u8],
    script: Vec<(&'static str, &'static str)>,
) -> Vec<u8> {
    let (r, mut w) = tokio::io::split(server);
    let mut r = BufReader::new(r);
    w.write_all(greeting).await.expect("greet");
    let mut seen = Vec::new();
    let mut in_data = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            break;
        }
        seen.extend_from_slice(&line);
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                w.write_all(b"250 2.0.0 queued\r\n").await.expect("w");
            }
            continue;
        }
        let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply = script
            .iter()
            .find(|(p, _)| cmd.starts_with(p))
            .map_or("250 ok\r\n", |(_, r)| r);
        if cmd.starts_with("DATA") && reply.starts_with("354") {
            in_data = true;
        }
        w.write_all(reply.as_bytes()).await.expect("w");
        if cmd.starts_with("QUIT") {
            break;
        }
    }
    seen
}

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        command: Duration::from_secs(2),
        data_init: Duration::from_secs(2),
        data_block: Duration::from_secs(2),
        data_end: Duration::from_secs(2),
    }
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        mail_from: "a@x.test".into(),
        recipients: rcpts.iter().map(|s| (*s).to_string()).collect(),
        smtputf8: false,
        dsn: None,
        requiretls: false,
    }
}

#[test]
fn dsn_parameters() {
    assert_eq!(xtext("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
    assert_eq!(notify_param(0), None);
    assert_eq!(notify_param(1), Some("NEVER".into()));
    assert_eq!(notify_param(2 | 8), Some("SUCCESS,DELAY".into()));
    assert_eq!(
        orcpt_param("rfc822;bob@b.test"),
        Some("rfc822;bob@b.test".into())
    );
    assert_eq!(
        orcpt_param("rfc822;a+2Bb@b.test"),
        Some("rfc822;a+2Bb@b.test".into())
    );
    assert_eq!(
        orcpt_param("rfc822;we ird@b.test"),
        Some("rfc822;we+20ird@b.test".into())
    );
    assert_eq!(
        orcpt_param("plain@b.test"),
        Some("rfc822;plain@b.test".into())
    );
    assert_eq!(orcpt_param("bad type;x"), None);
    assert_eq!(orcpt_param(""), None);
}

#[tokio::test]
async fn pipelined_transaction_with_mixed_recipients() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(scripted(
        s,
        b"220 mx ESMTP\r\n",
        vec![
            (
                "EHLO",
                "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n",
            ),
            ("RCPT TO:<BAD@", "550 5.1.1 no such user\r\n"),
            ("RCPT TO:<LATER@", "451 4.7.1 greylisted\r\n"),
            ("DATA", "354 go\r\n"),
        ],
    ));
    let mut conn = Connection::open(c, "out.test", None, quick())
        .await
        .expect("open");
    assert!(conn.caps.pipelining && conn.caps.eight_bit_mime);
    assert_eq!(conn.caps.size, Some(1000));
    let got = conn
        .send(
            &env(&["good@y.test", "bad@y.test", "later@y.test"]),
            b"Subject: x\n\n.hidden\n",
        )
        .await
        .expect("send");
    assert!(matches!(got[0], RcptOutcome::Delivered(_)));
    assert!(matches!(&got[1], RcptOutcome::Failed(t) if t.starts_with("550 5.1.1")));
    assert!(matches!(got[2], RcptOutcome::Deferred(_)));
    let big = vec![b'a'; 2000];
    let got = conn.send(&env(&["good@y.test"]), &big).await.expect("send");
    assert!(matches!(&got[0], RcptOutcome::Failed(t) if t.contains("5.3.4")));
    conn.quit().await;
    let seen = String::from_utf8(server.await.expect("server")).expect("utf8");
    assert!(seen.contains("MAIL FROM:<a@x.test> SIZE=24\r\n"), "{seen}");
    assert!(
        seen.contains("Subject: x\r\n\r\n..hidden\r\n.\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn starttls_reply_is_read_alone() {
    // threat model T13 without a TLS peer: the injected lines after 220 must
    // not be taken as the EHLO reply. The handshake then fails (the
    // "server" is not TLS), which is an error, never plaintext success.
    let (c, s) = tokio::io::duplex(1 << 16);
    let _server = tokio::spawn(scripted(
        s,
        b"220 mx\r\n",
        vec![
            ("EHLO", "250-mx\r\n250 STARTTLS\r\n"),
            ("STARTTLS", "220 Ready\r\n250-evil\r\n250 AUTH PLAIN\r\n"),
        ],
    ));
    let tls = Tls {
        connector: opportunistic_tls(),
        server_name: ServerName::try_from("mx.test").expect("name"),
        verifier: None,
        dane: None,
    };
    let r = Connection::open(c, "out.test", Some(&tls), quick()).await;
    assert!(
        matches!(r, Err(ClientError::Tls(_) | ClientError::Timeout(_))),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn no_8bit_to_a_7bit_server_and_helo_fallback() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let _server = tokio::spawn(scripted(
        s,
        b"220 old\r\n",
        vec![("EHLO", "502 what\r\n"), ("HELO", "250 old\r\n")],
    ));
    let mut conn = Connection::open(c, "out.test", None, quick())
        .await
        .expect("open");
    assert!(!conn.caps.esmtp);
    let got = conn
        .send(&env(&["u@y.test"]), "Subject: caf\u{e9}\r\n\r\n".as_bytes())
        .await
        .expect("send");
    assert!(matches!(&got[0], RcptOutcome::Failed(t) if t.contains("5.6.3")));
}

#[tokio::test]
async fn hostile_replies_are_errors() {
    for bad in ["2500 ok\r\n", "250-a\r\n550 b\r\n", "250\x00ok\r\n"] {
        let (c, s) = tokio::io::duplex(1 << 16);
        let _server = tokio::spawn(scripted(
            s,
            b"220 mx\r\n",
            vec![("EHLO", "250 mx\r\n"), ("MAIL", bad)],
        ));
        let mut conn = Connection::open(c, "out.test", None, quick())
            .await
            .expect("open");
        let r = conn.send(&env(&["u@y.test"]), b"x\r\n").await;
        assert!(matches!(r, Err(ClientError::Protocol(_))), "{bad:?}: {r:?}");
    }
}
