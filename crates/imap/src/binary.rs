//! Binary content arriving by APPEND (RFC 3516 §4.3): a message whose body
//! is `Content-Transfer-Encoding: binary` and holds NUL octets cannot be
//! sent back in a `BODY[]` literal (RFC 9051 §4.3: no NUL in a literal), so
//! it is stored with the body in base64, as RFC 3516 §4.3 allows. `BINARY[]`
//! still returns the original octets (it decodes the transfer encoding).
//!
//! Only a single-part message is converted; a multipart one is stored as
//! it came (its NULs then only reach clients through `BINARY[]`).

use base64::Engine as _;

/// The message with a binary, NUL-bearing body re-encoded in base64, or
/// `None` when nothing needs to change.
#[must_use]
pub fn base64_binary_body(msg: &[u8]) -> Option<Vec<u8>> {
    if !msg.contains(&0) {
        return None;
    }
    let (header_end, body_start) = header_bounds(msg)?;
    let header = &msg[..header_end];
    let fields = fields(header);
    let is = |name: &str, pred: &dyn Fn(&str) -> bool| {
        fields.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(name) && pred(&String::from_utf8_lossy(v).to_ascii_lowercase())
        })
    };
    if !is("Content-Transfer-Encoding", &|v| v.trim() == "binary")
        || is("Content-Type", &|v| {
            let v = v.trim_start();
            v.starts_with("multipart/") || v.starts_with("message/")
        })
    {
        return None;
    }
    let body = &msg[body_start..];
    if !body.contains(&0) {
        return None;
    }
    let mut out = Vec::with_capacity(header_end + body.len() * 4 / 3 + body.len() / 38 + 64);
    for (name, raw) in fields.iter().map(|(n, _)| n).zip(raw_fields(header)) {
        if name.eq_ignore_ascii_case("Content-Transfer-Encoding") {
            out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
        } else {
            out.extend_from_slice(raw);
        }
    }
    out.extend_from_slice(b"\r\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    // RFC 2045 §6.8: lines of at most 76 characters.
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

/// (end of the header fields, start of the body): the header ends at the
/// first empty line.
fn header_bounds(msg: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < msg.len() {
        let rest = &msg[i..];
        if rest.starts_with(b"\r\n") {
            return Some((i, i + 2));
        }
        if rest.starts_with(b"\n") {
            return Some((i, i + 1));
        }
        i += rest.iter().position(|&b| b == b'\n')? + 1;
    }
    None
}

/// The header's fields with their continuation lines, as they came.
fn raw_fields(header: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let next_folded = matches!(header.get(end), Some(b' ' | b'\t'));
        if !next_folded {
            out.push(&header[start..end]);
            start = end;
        }
        i = end;
    }
    out
}

/// (name, unfolded value) of each field.
fn fields(header: &[u8]) -> Vec<(String, Vec<u8>)> {
    raw_fields(header)
        .into_iter()
        .map(|f| {
            let colon = f.iter().position(|&b| b == b':').unwrap_or(f.len());
            let name = String::from_utf8_lossy(&f[..colon]).trim().to_string();
            let value: Vec<u8> = f
                .get(colon + 1..)
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_body_with_nul_becomes_base64() {
        let msg = b"From: a@b.example\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n binary\r\n\r\n\x00-\xe4\r\n\r\n";
        let out = base64_binary_body(msg).expect("converted");
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(
            text,
            "From: a@b.example\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAC3kDQoNCg==\r\n"
        );
    }

    #[test]
    fn other_messages_stay_as_they_are() {
        // No NUL.
        assert!(base64_binary_body(b"Content-Transfer-Encoding: binary\r\n\r\n\xe4\r\n").is_none());
        // Not declared binary.
        assert!(base64_binary_body(b"Subject: x\r\n\r\n\x00\r\n").is_none());
        // Multipart: its parts are not rewritten.
        assert!(
            base64_binary_body(
                b"Content-Type: multipart/mixed; boundary=x\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\r\n"
            )
            .is_none()
        );
        // NUL only in the header, no body separator.
        assert!(base64_binary_body(b"Subject: \x00").is_none());
    }
}
