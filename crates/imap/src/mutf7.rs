//! Modified UTF-7 for mailbox names (RFC 3501 §5.1.3), used with clients
//! that have not enabled `UTF8=ACCEPT` or `IMAP4rev2` (RFC 9051 §5.1,
//! RFC 6855 §3).

use base64::Engine as _;
use base64::alphabet::IMAP_MUTF7;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Encodes a UTF-8 name in modified UTF-7.
#[must_use]
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&ENGINE.encode(bytes));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes a modified UTF-7 name. Returns `None` for anything that is not
/// the one canonical encoding of some UTF-8 name (threat model T34).
#[must_use]
pub fn decode(wire: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if !(0x20..=0x7e).contains(&b) {
            return None;
        }
        if b != b'&' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let end = i + 1 + wire[i + 1..].iter().position(|&c| c == b'-')?;
        let chunk = &wire[i + 1..end];
        if chunk.is_empty() {
            out.push('&');
        } else {
            let bytes = ENGINE.decode(chunk).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            let s = String::from_utf16(&units).ok()?;
            // Printable ASCII must not be encoded (RFC 3501 §5.1.3).
            if s.chars().any(|c| (' '..='~').contains(&c)) {
                return None;
            }
            out.push_str(&s);
        }
        i = end + 1;
    }
    // Canonical form only: re-encoding gives the same bytes.
    (encode(&out).as_bytes() == wire).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (utf8, wire) in [
            ("INBOX", "INBOX"),
            ("a&b", "a&-b"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("台北", "&U,BTFw-"),
            ("~peter/mail/日本語/台北", "~peter/mail/&ZeVnLIqe-/&U,BTFw-"),
            ("😀", "&2D3eAA-"),
        ] {
            assert_eq!(encode(utf8), wire);
            assert_eq!(decode(wire.as_bytes()).as_deref(), Some(utf8));
        }
    }

    #[test]
    fn rejects_bad_encodings() {
        for wire in [
            "&Jjo",
            "&Jjo!-",
            "&AGE-",
            "a\u{e9}",
            "&",
            "&U,BTF2XlZyyKng-&U,BTFw-x",
        ] {
            let r = decode(wire.as_bytes());
            if wire.starts_with("&U,BTF2") {
                // Two adjacent encoded runs are not canonical.
                assert!(r.is_none() || encode(r.as_deref().unwrap_or("")) == wire);
            } else {
                assert_eq!(r, None, "{wire}");
            }
        }
    }
}
