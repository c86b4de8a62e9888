//! Message metadata computed once, when a message enters the store: the IMAP
//! ENVELOPE and BODYSTRUCTURE (RFC 9051 §7.5.2) as a flat list of parts with
//! byte offsets into the raw message, so FETCH never parses again and
//! `BODY[section]` becomes a byte-range read.

use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};
use mailstore_api::pb;

/// Deeper MIME nesting than this is described as one opaque leaf: a hostile
/// message with 10,000 nested parts costs a bounded structure.
pub const MAX_DEPTH: usize = 48;
/// At most this many parts are described; the rest are folded into their parent.
pub const MAX_PARTS: usize = 2_000;

/// Envelope, structure and the parsed Date: of a raw message.
pub struct Parsed {
    pub structure: pb::MessageStructure,
    pub sent_date: Option<chrono::DateTime<chrono::Utc>>,
}

/// Parses a raw message. Never fails: unparseable input becomes a single
/// text/plain part covering every byte.
pub fn parse(raw: &[u8]) -> Parsed {
    // mail-parser 0.11 reaches a `debug_assert!(false, "Invalid part ID")`
    // on some broken multipart/rfc822 nesting (found by fuzz/mime_structure):
    // a hostile sender must not fail the append in a debug build either.
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse(raw));
    let Some(msg) = parsed.ok().flatten() else {
        return Parsed {
            structure: opaque(raw.len() as u64),
            sent_date: None,
        };
    };
    let envelope = envelope(&msg, raw, 0);
    let sent_date = msg
        .date()
        .and_then(|d| chrono::DateTime::from_timestamp(d.to_timestamp(), 0));
    let mut parts = Vec::new();
    walk(&msg, raw, &mut parts);
    if parts.is_empty() {
        parts = opaque(raw.len() as u64).parts;
    }
    Parsed {
        structure: pb::MessageStructure {
            envelope: Some(envelope),
            parts,
        },
        sent_date,
    }
}

fn opaque(len: u64) -> pb::MessageStructure {
    pb::MessageStructure {
        envelope: Some(pb::Envelope::default()),
        parts: vec![pb::BodyPart {
            media_type: "text".into(),
            media_subtype: "plain".into(),
            header_offset: 0,
            body_offset: 0,
            end_offset: len,
            ..Default::default()
        }],
    }
}

/// One pending part on the explicit walk stack (no recursion: depth is data).
struct Pending<'m, 'x> {
    msg: &'m Message<'x>,
    part_id: usize,
    parent: Option<u32>,
    section: String,
    depth: usize,
    /// True for the root part of a message (top level or encapsulated).
    is_message_root: bool,
}

fn walk(root: &Message<'_>, raw: &[u8], out: &mut Vec<pb::BodyPart>) {
    let mut stack = vec![Pending {
        msg: root,
        part_id: 0,
        parent: None,
        section: String::new(),
        depth: 0,
        is_message_root: true,
    }];
    while let Some(p) = stack.pop() {
        // Past MAX_PARTS the remaining siblings are folded into their
        // parent (whose end offset covers them); a multipart still gets its
        // first child, as a leaf. Without this a flat multipart with more
        // children than MAX_PARTS was described in full (fuzz/mime_structure).
        let first_child = p.is_message_root || p.section.rsplit('.').next() == Some("1");
        if out.len() >= MAX_PARTS && !first_child {
            continue;
        }
        let Some(part) = p.msg.parts.get(p.part_id) else {
            continue;
        };
        let index = out.len() as u32;
        let mut bp = describe(part, raw);
        bp.parent = p.parent;
        bp.section.clone_from(&p.section);
        let too_deep = p.depth >= MAX_DEPTH || out.len() >= MAX_PARTS;
        match &part.body {
            PartType::Multipart(children) if !too_deep => {
                bp.multipart = true;
                // Push in reverse so children come out in order (pre-order list).
                for (i, child) in children.iter().enumerate().rev() {
                    let n = i + 1;
                    stack.push(Pending {
                        msg: p.msg,
                        part_id: *child as usize,
                        parent: Some(index),
                        section: join(&p.section, n),
                        depth: p.depth + 1,
                        is_message_root: false,
                    });
                }
            }
            PartType::Message(inner) if !too_deep => {
                bp.envelope = Some(envelope(inner, raw, part.offset_body as usize));
                // An encapsulated message parsed from a transfer-encoded body
                // has offsets into the decoded bytes, not into `raw`: then it
                // is described as a leaf.
                let inline = inner.parts.first().is_some_and(|r| {
                    r.offset_header >= part.offset_body && r.offset_end <= part.offset_end
                });
                if inline {
                    stack.push(Pending {
                        msg: inner,
                        part_id: 0,
                        parent: Some(index),
                        // The encapsulated root answers to the same section as
                        // the message/rfc822 part ("2.HEADER", "2.1", …).
                        section: p.section.clone(),
                        depth: p.depth + 1,
                        is_message_root: true,
                    });
                }
            }
            PartType::Multipart(_) | PartType::Message(_) => {
                bp.truncated = true;
                bp.media_type = "application".into();
                bp.media_subtype = "octet-stream".into();
                bp.params.clear();
            }
            _ => {}
        }
        // RFC 9051 §6.4.5: the body of a non-multipart message is part "1".
        if p.is_message_root && !bp.multipart && bp.section.is_empty() {
            // Top-level single-part message: keep "" for the message itself;
            // IMAP maps "1" to its body.
        }
        out.push(bp);
    }
}

fn join(section: &str, n: usize) -> String {
    if section.is_empty() {
        n.to_string()
    } else {
        format!("{section}.{n}")
    }
}

fn describe(part: &mail_parser::MessagePart<'_>, raw: &[u8]) -> pb::BodyPart {
    let (media_type, media_subtype, params) = match part.content_type() {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype()
                .map(str::to_ascii_lowercase)
                .unwrap_or_default(),
            ct.attributes()
                .map(|attrs| {
                    attrs
                        .iter()
                        .map(|a| pb::Param {
                            name: a.name.as_bytes().to_vec(),
                            value: a.value.as_bytes().to_vec(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => match &part.body {
            PartType::Message(_) => ("message".into(), "rfc822".into(), Vec::new()),
            _ => ("text".into(), "plain".into(), Vec::new()),
        },
    };
    // RFC 2045 §5.2: the default is text/plain; charset=us-ascii.
    let (media_type, media_subtype) = if media_subtype.is_empty() {
        ("text".to_string(), "plain".to_string())
    } else {
        (media_type, media_subtype)
    };
    let body_offset = u64::from(part.offset_body);
    let end_offset = u64::from(part.offset_end).max(body_offset);
    let body = raw
        .get(body_offset as usize..end_offset as usize)
        .unwrap_or_default();
    let lines = if media_type == "text" || (media_type == "message" && media_subtype == "rfc822") {
        body.iter().filter(|&&b| b == b'\n').count() as u64
    } else {
        0
    };
    pb::BodyPart {
        parent: None,
        section: String::new(),
        media_type,
        media_subtype,
        params,
        content_id: part.content_id().map(|s| s.as_bytes().to_vec()),
        description: part.content_description().map(|s| s.as_bytes().to_vec()),
        encoding: part
            .content_transfer_encoding()
            .map(|s| s.as_bytes().to_vec()),
        header_offset: u64::from(part.offset_header),
        body_offset,
        end_offset,
        lines,
        md5: raw_header(part, raw, "Content-MD5"),
        disposition: part.content_disposition().map(|d| pb::Disposition {
            kind: d.ctype().as_bytes().to_vec(),
            params: d
                .attributes()
                .map(|attrs| {
                    attrs
                        .iter()
                        .map(|a| pb::Param {
                            name: a.name.as_bytes().to_vec(),
                            value: a.value.as_bytes().to_vec(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }),
        language: part
            .content_language()
            .as_text_list()
            .map(|l| l.iter().map(|s| s.as_bytes().to_vec()).collect())
            .unwrap_or_default(),
        location: part.content_location().map(|s| s.as_bytes().to_vec()),
        envelope: None,
        multipart: false,
        truncated: false,
    }
}

/// The raw value of a header (folding removed, trimmed), as IMAP puts
/// ENVELOPE strings on the wire: encoded-words stay encoded.
fn raw_header(part: &mail_parser::MessagePart<'_>, raw: &[u8], name: &str) -> Option<Vec<u8>> {
    let h = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let bytes = raw.get(h.offset_start as usize..h.offset_end as usize)?;
    Some(unfold(bytes))
}

fn unfold(bytes: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    while out.first().is_some_and(|b| b.is_ascii_whitespace()) {
        out.remove(0);
    }
    while out.last().is_some_and(|b| b.is_ascii_whitespace()) {
        out.pop();
    }
    out
}

fn envelope(msg: &Message<'_>, raw: &[u8], _base: usize) -> pb::Envelope {
    let Some(root) = msg.parts.first() else {
        return pb::Envelope::default();
    };
    // Offsets of an inline encapsulated message point into `raw`; for a
    // decoded one they point into msg.raw_message.
    let src: &[u8] = if root.offset_end as usize <= raw.len() && msg.raw_message.len() == raw.len()
    {
        raw
    } else {
        msg.raw_message.as_ref()
    };
    let from = addresses(root, HeaderName::From);
    let sender = non_empty_or(addresses(root, HeaderName::Sender), &from);
    let reply_to = non_empty_or(addresses(root, HeaderName::ReplyTo), &from);
    pb::Envelope {
        date: raw_header(root, src, "Date"),
        subject: raw_header(root, src, "Subject"),
        from,
        sender,
        reply_to,
        to: addresses(root, HeaderName::To),
        cc: addresses(root, HeaderName::Cc),
        bcc: addresses(root, HeaderName::Bcc),
        in_reply_to: raw_header(root, src, "In-Reply-To"),
        message_id: raw_header(root, src, "Message-ID"),
        references: raw_header(root, src, "References").map(nearest_references),
    }
}

/// The most a References field keeps (its tail: the nearest ancestors).
const MAX_REFERENCES: usize = 4096;

/// `refs` cut to its last [`MAX_REFERENCES`] bytes at the start of a
/// message-id, so no id is kept half.
fn nearest_references(refs: Vec<u8>) -> Vec<u8> {
    if refs.len() <= MAX_REFERENCES {
        return refs;
    }
    let tail = &refs[refs.len() - MAX_REFERENCES..];
    match tail.iter().position(|&b| b == b'<') {
        Some(i) => tail[i..].to_vec(),
        None => Vec::new(),
    }
}

/// RFC 9051 §7.5.2: Sender and Reply-To default to From.
fn non_empty_or(v: Vec<pb::ImapAddress>, from: &[pb::ImapAddress]) -> Vec<pb::ImapAddress> {
    if v.is_empty() { from.to_vec() } else { v }
}

fn addresses(part: &mail_parser::MessagePart<'_>, name: HeaderName<'_>) -> Vec<pb::ImapAddress> {
    let Some(h) = part.headers.iter().find(|h| h.name == name) else {
        return Vec::new();
    };
    let HeaderValue::Address(addr) = &h.value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match addr {
        Address::List(list) => {
            for a in list.iter().take(1_000) {
                out.push(imap_addr(a.name.as_deref(), a.address.as_deref()));
            }
        }
        Address::Group(groups) => {
            for g in groups.iter().take(100) {
                if let Some(gname) = &g.name {
                    out.push(pb::ImapAddress {
                        mailbox: Some(gname.as_bytes().to_vec()),
                        ..Default::default()
                    });
                    // `group2: (comment) ;` is an empty group: mail-parser
                    // gives the comment as an address without a mailbox,
                    // which must not show up as a member (RFC 9051 §7.5.2).
                    for a in g
                        .addresses
                        .iter()
                        .take(1_000)
                        .filter(|a| a.address.is_some())
                    {
                        out.push(imap_addr(a.name.as_deref(), a.address.as_deref()));
                    }
                    out.push(pb::ImapAddress::default());
                } else {
                    for a in g.addresses.iter().take(1_000) {
                        out.push(imap_addr(a.name.as_deref(), a.address.as_deref()));
                    }
                }
            }
        }
    }
    out
}

fn imap_addr(name: Option<&str>, address: Option<&str>) -> pb::ImapAddress {
    let (mailbox, host) = match address {
        Some(a) => match a.rsplit_once('@') {
            Some((l, d)) => (Some(l.as_bytes().to_vec()), Some(d.as_bytes().to_vec())),
            None => (Some(a.as_bytes().to_vec()), Some(Vec::new())),
        },
        None => (None, None),
    };
    // An obsolete source route (`<@route:user@domain>`, RFC 5322 §4.4) is
    // the envelope's adl, not part of the mailbox (RFC 9051 §7.5.2).
    let (adl, mailbox) = match mailbox {
        Some(m) if m.first() == Some(&b'@') => match m.iter().position(|&b| b == b':') {
            Some(i) => (Some(m[..i].to_vec()), Some(m[i + 1..].to_vec())),
            None => (None, Some(m)),
        },
        m => (None, m),
    };
    pb::ImapAddress {
        name: name.map(|n| n.as_bytes().to_vec()),
        adl,
        mailbox,
        host,
    }
}

/// Shifts every offset by `delta` (headers put in front of a stored message).
pub fn shift(structure: &mut pb::MessageStructure, delta: u64) {
    for (i, p) in structure.parts.iter_mut().enumerate() {
        if i > 0 {
            p.header_offset += delta;
        }
        p.body_offset += delta;
        p.end_offset += delta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_message() {
        let raw = b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\nhello\r\nworld\r\n";
        let p = parse(raw);
        let env = p.structure.envelope.expect("envelope");
        assert_eq!(env.subject.as_deref(), Some(&b"=?utf-8?q?h=C3=A9?="[..]));
        assert_eq!(env.from[0].mailbox.as_deref(), Some(&b"alice"[..]));
        assert_eq!(env.from[0].host.as_deref(), Some(&b"example.org"[..]));
        assert_eq!(env.sender, env.from);
        assert_eq!(p.structure.parts.len(), 1);
        let root = &p.structure.parts[0];
        assert_eq!(
            (root.media_type.as_str(), root.media_subtype.as_str()),
            ("text", "plain")
        );
        assert_eq!(
            &raw[root.body_offset as usize..root.end_offset as usize],
            b"hello\r\nworld\r\n"
        );
        assert_eq!(root.lines, 2);
        assert!(p.sent_date.is_some());
    }

    /// THREAD=REFERENCES reads References from the envelope: unfolded,
    /// and of a huge field only the last 4 KiB from a whole message-id.
    #[test]
    fn references_are_kept_unfolded_and_bounded() {
        let raw = b"References: <a@x>\r\n <b@x>\r\n\r\nx\r\n";
        let env = parse(raw).structure.envelope.expect("envelope");
        assert_eq!(env.references.as_deref(), Some(&b"<a@x> <b@x>"[..]));
        let many: String = (0..2000).map(|i| format!(" <id{i}@example.org>")).collect();
        let raw = format!("References:{many}\r\n\r\nx\r\n");
        let env = parse(raw.as_bytes()).structure.envelope.expect("envelope");
        let kept = env.references.expect("references");
        assert!(kept.len() <= MAX_REFERENCES && kept.len() > MAX_REFERENCES - 40);
        assert!(
            kept.starts_with(b"<id"),
            "{}",
            String::from_utf8_lossy(&kept[..40])
        );
        assert!(kept.ends_with(b"<id1999@example.org>"));
        assert!(
            parse(b"Subject: x\r\n\r\nx\r\n")
                .structure
                .envelope
                .expect("envelope")
                .references
                .is_none()
        );
    }

    /// imaptest fetch-envelope: a source route is the adl; a comment in an
    /// empty group is not a member (RFC 9051 §7.5.2).
    #[test]
    fn envelope_route_and_empty_group() {
        let raw = b"From: <@route:user@domain>\r\nCc: g1:;, g2: (foo) ;\r\n\r\nx\r\n";
        let env = parse(raw).structure.envelope.expect("envelope");
        assert_eq!(env.from[0].adl.as_deref(), Some(&b"@route"[..]));
        assert_eq!(env.from[0].mailbox.as_deref(), Some(&b"user"[..]));
        assert_eq!(env.from[0].host.as_deref(), Some(&b"domain"[..]));
        let cc: Vec<Option<&[u8]>> = env.cc.iter().map(|a| a.mailbox.as_deref()).collect();
        assert_eq!(cc, vec![Some(&b"g1"[..]), None, Some(&b"g2"[..]), None]);
    }

    #[test]
    fn multipart_with_encapsulated_message() {
        let raw = b"From: a@x\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nbody one\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@y\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\n\r\nplain\r\n--YY\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--YY--\r\n\r\n--XX--\r\n";
        let p = parse(raw);
        let secs: Vec<_> = p
            .structure
            .parts
            .iter()
            .map(|x| {
                (
                    x.section.as_str(),
                    format!("{}/{}", x.media_type, x.media_subtype),
                )
            })
            .collect();
        assert_eq!(
            secs,
            vec![
                ("", "multipart/mixed".to_string()),
                ("1", "text/plain".to_string()),
                ("2", "message/rfc822".to_string()),
                ("2", "multipart/alternative".to_string()),
                ("2.1", "text/plain".to_string()),
                ("2.2", "text/html".to_string()),
            ]
        );
        let inner = &p.structure.parts[2];
        assert_eq!(
            inner
                .envelope
                .as_ref()
                .and_then(|e| e.subject.clone())
                .as_deref(),
            Some(&b"inner"[..])
        );
        let html = &p.structure.parts[5];
        assert_eq!(
            &raw[html.body_offset as usize..html.end_offset as usize],
            b"<b>x</b>"
        );
        assert_eq!(p.structure.parts[3].parent, Some(2));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let depth = 10_000;
        let mut raw = Vec::new();
        raw.extend_from_slice(b"From: a@x\r\n");
        for i in 0..depth {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\nleaf\r\n");
        for i in (0..depth).rev() {
            raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        let p = parse(&raw);
        assert!(p.structure.parts.len() <= MAX_DEPTH + 2);
        assert!(p.structure.parts.iter().any(|x| x.truncated));
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            &b""[..],
            b"\0\0\0",
            b"\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
        ] {
            let p = parse(raw);
            assert!(!p.structure.parts.is_empty());
        }
    }

    /// Fuzzer find (fuzz/mime_structure): mail-parser's debug assertion on
    /// a message/rfc822 part inside a broken multipart. Never a panic; every
    /// offset inside the message.
    #[test]
    fn broken_nested_rfc822_does_not_panic() {
        let raw = b"@\r\nContent-Type: multipart/; boundary=XX\r\n\n---XX\r\nContent-Type:message/rfc822\n\r\nrom\nContent-Type:message/rfc822\r\n\n\x00\x00\r\n\n--XX--\n";
        let p = parse(raw);
        assert!(!p.structure.parts.is_empty());
        for part in &p.structure.parts {
            assert!(part.header_offset <= part.body_offset);
            assert!(part.body_offset <= part.end_offset);
            assert!(part.end_offset <= raw.len() as u64);
        }
    }

    /// Fuzzer find (fuzz/mime_structure): a flat multipart with more
    /// children than MAX_PARTS was described in full. Now bounded, and every
    /// multipart described still has a child.
    #[test]
    fn wide_multipart_is_bounded() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n".to_vec();
        for _ in 0..MAX_PARTS + 500 {
            raw.extend_from_slice(b"--B\r\n\r\nx\r\n");
        }
        raw.extend_from_slice(b"--B--\r\n");
        let parts = parse(&raw).structure.parts;
        assert!(parts.len() <= MAX_PARTS + 1, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            if p.multipart {
                assert!(parts.iter().any(|c| c.parent == Some(i as u32)), "part {i}");
            }
        }
    }
}
