//! A message as the store parses it at APPEND/delivery time
//! (`mailbox_store::structure::parse`: ENVELOPE and BODYSTRUCTURE with
//! byte offsets), then every header-derived string rendered as the IMAP
//! server writes it (`imap::response::string`).
//!
//! Invariants: every part's offsets lie inside the message and in order;
//! parents come before children; the part count is bounded; every string
//! renders to one well-formed IMAP string that reads back as the original
//! bytes (no response injection from a hostile header).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailbox_store::structure::{self, MAX_PARTS};
use mailstore_api::pb;

/// Reads back one IMAP `string` (quoted or literal) that must fill `wire`.
fn read_string(wire: &[u8]) -> Vec<u8> {
    if let Some(rest) = wire.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match rest[i] {
                b'\\' => {
                    assert!(matches!(rest[i + 1], b'"' | b'\\'), "bad escape");
                    out.push(rest[i + 1]);
                    i += 2;
                }
                b'"' => {
                    assert_eq!(i + 1, rest.len(), "bytes after the closing quote");
                    return out;
                }
                b'\r' | b'\n' | 0 => panic!("CR, LF or NUL in a quoted string"),
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }
    let rest = wire.strip_prefix(b"{").expect("quoted or literal");
    let close = rest.iter().position(|&b| b == b'}').expect("}");
    let n: usize = std::str::from_utf8(&rest[..close])
        .unwrap()
        .parse()
        .unwrap();
    let body = rest[close + 1..]
        .strip_prefix(b"\r\n")
        .expect("CRLF after {n}");
    assert_eq!(body.len(), n, "literal length");
    body.to_vec()
}

fn check_string(s: &[u8]) {
    for utf8 in [false, true] {
        let mut out = Vec::new();
        imap::response::string(&mut out, s, utf8);
        assert_eq!(read_string(&out), s);
    }
}

fn check_envelope(e: &pb::Envelope) {
    for s in [&e.date, &e.subject, &e.in_reply_to, &e.message_id]
        .into_iter()
        .flatten()
    {
        check_string(s);
    }
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        for a in list {
            for s in [&a.name, &a.adl, &a.mailbox, &a.host].into_iter().flatten() {
                check_string(s);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = structure::parse(data);
    let s = &parsed.structure;
    let len = data.len() as u64;
    assert!(!s.parts.is_empty());
    assert!(s.parts.len() <= MAX_PARTS + 1, "{} parts", s.parts.len());
    if let Some(e) = &s.envelope {
        check_envelope(e);
    }
    for (i, p) in s.parts.iter().enumerate() {
        assert!(
            p.header_offset <= p.body_offset
                && p.body_offset <= p.end_offset
                && p.end_offset <= len,
            "part {i}: {}..{}..{} of {len}",
            p.header_offset,
            p.body_offset,
            p.end_offset
        );
        if let Some(parent) = p.parent {
            assert!((parent as usize) < i, "part {i} has parent {parent}");
        } else {
            assert_eq!(i, 0, "part {i} without parent");
        }
        for param in &p.params {
            check_string(&param.name);
            check_string(&param.value);
        }
        for s in [
            &p.content_id,
            &p.description,
            &p.encoding,
            &p.md5,
            &p.location,
        ]
        .into_iter()
        .flatten()
        {
            check_string(s);
        }
        if let Some(d) = &p.disposition {
            check_string(&d.kind);
            for param in &d.params {
                check_string(&param.name);
                check_string(&param.value);
            }
        }
        for l in &p.language {
            check_string(l);
        }
        if let Some(e) = &p.envelope {
            check_envelope(e);
        }
    }
    let mut shifted = parsed.structure.clone();
    structure::shift(&mut shifted, 7);
});
