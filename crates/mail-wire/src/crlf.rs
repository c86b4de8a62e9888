//! Line endings and sizes (RFC 5321 §2.3.8, RFC 1939 §11): the one policy
//! every outbound copy of a stored message follows — CRLF, bare LF and bare
//! CR are each one line end, sent as CRLF.

/// Every CR, LF and CRLF becomes CRLF, nothing else changes (for BDAT and
/// DKIM: the octets as they go on the wire).
#[must_use]
pub fn normalise_crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Does the message contain octets ≥ 0x80?
#[must_use]
pub fn has_eight_bit(message: &[u8]) -> bool {
    message.iter().any(|&b| b >= 0x80)
}

/// Only bare LFs become CRLF; CRLF and bare CR are left alone (a header
/// block copied into a report, RFC 3464 §2 `text/rfc822-headers`).
#[must_use]
pub fn bare_lf_to_crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut prev = 0u8;
    for &b in text {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The size of a message as POP3 transmits it (RFC 1939 §11) before
/// dot-stuffing: every bare CR or LF becomes CRLF, and a last line without
/// a line ending gets one. The store computes it once per message
/// (`MessageMeta.crlf_size`); POP3 servers must count the same way.
#[must_use]
pub fn crlf_size(raw: &[u8]) -> u64 {
    let mut n: u64 = 0;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                n += 2;
                i += 2;
                continue;
            }
            b'\r' | b'\n' => n += 2,
            _ => n += 1,
        }
        i += 1;
    }
    if raw.last().is_some_and(|b| *b != b'\n' && *b != b'\r') {
        n += 2;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_size_counts_the_wire_form() {
        assert_eq!(crlf_size(b""), 0);
        assert_eq!(crlf_size(b"a\r\n"), 3);
        assert_eq!(crlf_size(b"a\n"), 3);
        assert_eq!(crlf_size(b"a\r"), 3);
        assert_eq!(crlf_size(b"a"), 3);
        assert_eq!(crlf_size(b"a\n\rb"), 8);
        assert_eq!(crlf_size(b"\r\r\n"), 4);
    }

    /// The size is what the encoder sends, stuffing and ".CRLF" aside.
    #[test]
    fn size_matches_encoder() {
        for raw in [&b""[..], b"a", b"a\n.\r\nb", b"\r\r\n", b"..x\r", b"a\n\rb"] {
            let wire = crate::dotstuff::encode_all(raw);
            let dots = wire
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b".."))
                .count() as u64;
            let body = wire.len() as u64 - dots - 3;
            assert_eq!(crlf_size(raw), body, "{raw:?}");
        }
    }

    #[test]
    fn lf_only() {
        assert_eq!(bare_lf_to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\rd");
    }
}
