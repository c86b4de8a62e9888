//! PREVIEW (RFC 8970) over a real loopback TCP connection to the real
//! session and the real store: text decoded from quoted-printable and
//! base64 in its charset, HTML rendered as text, whitespace collapsed,
//! 256 characters at most, LAZY answered NIL for a large message.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use common::{Client, env};

/// The quoted PREVIEW value of a FETCH line (`None` for NIL).
fn preview(line: &str) -> Option<String> {
    let rest = &line[line.find("PREVIEW ").unwrap_or_else(|| panic!("{line}")) + 8..];
    if rest.starts_with("NIL") {
        return None;
    }
    let mut out = String::new();
    let mut chars = rest.strip_prefix('"').unwrap().chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    panic!("unterminated: {line}")
}

#[tokio::test]
async fn preview_decodes_the_first_text_part() {
    let env = env().await;
    let mut a = Client::login(&env).await;
    let caps = a.ok("c", "CAPABILITY").await;
    assert!(caps.contains(" PREVIEW"), "{caps}");
    // UTF-8 on the wire as a quoted string.
    a.ok("e", "ENABLE UTF8=ACCEPT").await;
    let msgs: [&[u8]; 4] = [
        b"Subject: qp\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n  Caf=E9\r\n\r\n\tcr=E8me  \"br=FBl=E9e\"=\r\n!\r\n",
        b"Subject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
PGh0bWw+PGJvZHk+PHA+SGk8L3A+PHA+PGI+dGhlcmU8L2I+PC9wPjwvYm9keT48L2h0bWw+\r\n--b--\r\n",
        b"Subject: none\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
        b"Subject: x\r\n\r\n",
    ];
    for (i, m) in msgs.iter().enumerate() {
        a.append(&format!("p{i}"), "INBOX", m).await;
    }
    let long = format!("Subject: long\r\n\r\n{}\r\n", "word ".repeat(20_000));
    a.append("p9", "INBOX", long.as_bytes()).await;
    a.ok("s", "SELECT INBOX").await;
    let u = a.ok("f", "FETCH 1:5 (PREVIEW)").await;
    let lines: Vec<&str> = u.lines().collect();
    assert_eq!(lines.len(), 5, "{u}");
    assert_eq!(
        preview(lines[0]).as_deref(),
        Some("Caf\u{e9} cr\u{e8}me \"br\u{fb}l\u{e9}e\"!")
    );
    assert_eq!(preview(lines[1]).as_deref(), Some("Hi there"));
    assert_eq!(preview(lines[2]).as_deref(), Some(""));
    assert_eq!(preview(lines[3]).as_deref(), Some(""));
    let p = preview(lines[4]).unwrap();
    assert_eq!(p.chars().count(), 256, "{p}");
    assert!(p.starts_with("word word ") && !p.ends_with(' '), "{p}");
    // PREVIEW never sets \Seen.
    let u = a.ok("g", "FETCH 1 (FLAGS)").await;
    assert!(!u.contains("\\Seen"), "{u}");

    // LAZY: computed for a small message, NIL for the 100 KB one.
    let u = a.ok("l", "UID FETCH 1,5 (PREVIEW (LAZY))").await;
    let lines: Vec<&str> = u.lines().collect();
    assert_eq!(lines.len(), 2, "{u}");
    assert!(preview(lines[0]).unwrap().starts_with("Caf"), "{u}");
    assert_eq!(preview(lines[1]), None, "{u}");
    // The plain form of the item, and a bad modifier.
    a.ok("p", "FETCH 2 PREVIEW").await;
    let (_, t) = a.cmd("b", "FETCH 2 (PREVIEW (EAGER))").await;
    assert!(t.starts_with("b BAD"), "{t}");
}
