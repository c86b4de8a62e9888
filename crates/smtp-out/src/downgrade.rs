//! 8-bit to 7-bit conversion for servers without 8BITMIME (RFC 6152 §3:
//! "the SMTP client MUST NOT send 8-bit data" to them; it may convert).
//!
//! Every MIME leaf part (RFC 2045, RFC 2046) whose body has octets above
//! 127 is re-encoded: `text/*` as quoted-printable (RFC 2045 §6.7, line
//! breaks kept as hard CRLF), anything else as base64 (§6.8), and its
//! `Content-Transfer-Encoding` replaced. Multiparts and `message/rfc822`
//! (which may not be encoded itself, RFC 2046 §5.2.1) are walked into and
//! their own encoding labelled `7bit`. Parts already 7-bit are left byte
//! for byte, so a signature over them stays valid; the result is signed
//! (DKIM) after the conversion, so our own signature is over what is sent.
//!
//! Header fields are not converted: raw UTF-8 in a header needs SMTPUTF8
//! (RFC 6532), which the caller checks first; other 8-bit header octets
//! make the conversion fail (`5.6.3`).

/// Why a message cannot be made 7-bit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeError {
    #[error("8-bit octets in the header of a MIME part")]
    EightBitHeader,
    #[error("a part labelled {0} has 8-bit octets")]
    Mislabelled(String),
    #[error("MIME nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deepest MIME nesting walked.
pub const MAX_DEPTH: usize = 32;

/// Does the header block of `message` (CRLF or LF) contain 8-bit octets?
#[must_use]
pub fn header_has_eight_bit(message: &[u8]) -> bool {
    split_entity(message).0.iter().any(|b| *b >= 0x80)
}

/// `message` (CRLF line endings) with every 8-bit part re-encoded in 7-bit.
///
/// # Errors
/// [`DowngradeError`]: 8-bit octets that cannot be re-encoded.
pub fn to_seven_bit(message: &[u8]) -> Result<Vec<u8>, DowngradeError> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 3);
    entity(message, &mut out, 0, true)?;
    Ok(out)
}

/// Header block (with its final CRLF) and body of an entity.
fn split_entity(e: &[u8]) -> (&[u8], &[u8]) {
    if e.starts_with(b"\r\n") {
        return (&e[..0], &e[2..]);
    }
    match e.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (&e[..p + 2], &e[p + 4..]),
        None => (e, &e[e.len()..]),
    }
}

/// Unfolded `(name, value)` fields with the byte range of each raw field.
fn fields(header: &[u8]) -> Vec<(String, String, std::ops::Range<usize>)> {
    let mut out: Vec<(String, String, std::ops::Range<usize>)> = Vec::new();
    let mut start = 0;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let end = start + line.len();
        let text = String::from_utf8_lossy(line);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // RFC 5322 §2.2.3: a continuation of the previous field.
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
                last.2.end = end;
            }
        } else if let Some((name, value)) = text.split_once(':') {
            out.push((
                name.trim().to_ascii_lowercase(),
                value.trim().to_string(),
                start..end,
            ));
        }
        start = end;
    }
    out
}

/// `type/subtype` (lower case) and the `boundary` parameter.
fn content_type(value: Option<&str>) -> (String, Option<String>) {
    let Some(v) = value else {
        return ("text/plain".into(), None);
    };
    let mut parts = v.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let boundary = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    });
    (mime, boundary)
}

/// Writes `e` converted into `out`.
fn entity(e: &[u8], out: &mut Vec<u8>, depth: usize, top: bool) -> Result<(), DowngradeError> {
    if depth > MAX_DEPTH {
        return Err(DowngradeError::TooDeep);
    }
    if !e.iter().any(|b| *b >= 0x80) {
        out.extend_from_slice(e);
        return Ok(());
    }
    let (header, body) = split_entity(e);
    if header.iter().any(|b| *b >= 0x80) {
        return Err(DowngradeError::EightBitHeader);
    }
    let fields = fields(header);
    let get = |n: &str| fields.iter().find(|f| f.0 == n).map(|f| f.1.as_str());
    let (mime, boundary) = content_type(get("content-type"));
    let cte = get("content-transfer-encoding").map(str::to_ascii_lowercase);
    if matches!(cte.as_deref(), Some("base64" | "quoted-printable")) {
        return Err(DowngradeError::Mislabelled(cte.unwrap_or_default()));
    }
    let body_out = &mut Vec::with_capacity(body.len() + body.len() / 3);
    let new_cte = if let (true, Some(b)) = (mime.starts_with("multipart/"), boundary) {
        multipart(body, &b, body_out, depth)?;
        "7bit"
    } else if mime == "message/rfc822" {
        entity(body, body_out, depth + 1, false)?;
        "7bit"
    } else if mime.starts_with("text/") {
        quoted_printable(body, body_out);
        "quoted-printable"
    } else {
        base64_lines(body, body_out);
        "base64"
    };
    // The header without its Content-Transfer-Encoding, then the new one.
    let mut kept = Vec::with_capacity(header.len() + 48);
    let mut pos = 0;
    for (_, _, range) in fields.iter().filter(|f| f.0 == "content-transfer-encoding") {
        kept.extend_from_slice(&header[pos..range.start]);
        pos = range.end;
    }
    kept.extend_from_slice(&header[pos..]);
    if top && get("mime-version").is_none() {
        kept.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    kept.extend_from_slice(format!("Content-Transfer-Encoding: {new_cte}\r\n").as_bytes());
    out.extend_from_slice(&kept);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body_out);
    Ok(())
}

/// RFC 2046 §5.1.1: preamble, `--boundary` parts, `--boundary--`, epilogue.
/// The parts are converted; 8-bit octets in the preamble and epilogue (to
/// be ignored by readers anyway) are dropped.
fn multipart(
    body: &[u8],
    boundary: &str,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), DowngradeError> {
    let delimiter = format!("--{boundary}");
    let mut part_start: Option<usize> = None;
    let mut closed = false;
    let mut pos = 0;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let start = pos;
        pos += line.len();
        let trimmed = line.trim_ascii_end();
        let is_close = trimmed == format!("{delimiter}--").as_bytes();
        let is_delim = is_close || trimmed == delimiter.as_bytes();
        if !is_delim || closed {
            if part_start.is_none() {
                // Preamble or epilogue.
                out.extend(line.iter().filter(|b| **b < 0x80));
            }
            continue;
        }
        if let Some(s) = part_start.take() {
            // The CRLF before the delimiter belongs to the delimiter.
            let part = &body[s..start];
            let part = part.strip_suffix(b"\r\n").unwrap_or(part);
            entity(part, out, depth + 1, false)?;
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
        if is_close {
            closed = true;
        } else {
            part_start = Some(pos);
        }
    }
    if let Some(s) = part_start {
        // No closing delimiter: the rest is the last part.
        entity(&body[s..], out, depth + 1, false)?;
    }
    Ok(())
}

/// RFC 2045 §6.7: line breaks stay hard CRLF, lines at most 76 characters
/// with `=` soft breaks, trailing white space encoded.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        let last = lines.peek().is_none();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let mut width = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                ((33..=126).contains(&b) && b != b'=') || ((b == b' ' || b == b'\t') && !at_end);
            let len = if literal { 1 } else { 3 };
            if width + len > 75 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            width += len;
        }
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// RFC 2045 §6.8: base64 in lines of 76 characters.
fn base64_lines(body: &[u8], out: &mut Vec<u8>) {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    for chunk in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_qp(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'=' {
                if s[i + 1..].starts_with(b"\r\n") {
                    i += 3;
                    continue;
                }
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn plain_text_body_becomes_quoted_printable() {
        let long = "é".repeat(60);
        let msg = format!(
            "From: a@x.test\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9} = 1 \r\n{long}\r\n.\r\n"
        );
        let out = to_seven_bit(msg.as_bytes()).expect("convert");
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        let text = String::from_utf8(out.clone()).expect("ascii");
        assert!(
            text.contains(
                "MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("8bit"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        let body = &out[text.find("\r\n\r\n").expect("sep") + 4..];
        assert_eq!(
            decode_qp(body),
            format!("caf\u{e9} = 1 \r\n{long}\r\n.\r\n").into_bytes()
        );
        // Trailing white space is encoded (RFC 2045 §6.7 rule 3).
        assert!(text.contains("=3D 1=20\r\n"), "{text}");
    }

    #[test]
    fn multipart_converts_only_the_8bit_parts() {
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\xe9amble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\xfe\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\nna\xefve\r\n--b1--\r\nepilogue\r\n";
        let out = to_seven_bit(msg).expect("convert");
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.contains("--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--b1\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAP/+\r\n\r\n--b1\r\n"), "{text}");
        assert!(text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nna=EFve\r\n--b1--\r\nepilogue\r\n"), "{text}");
        assert!(text.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n"), "{text}");
    }

    #[test]
    fn unconvertible_and_untouched() {
        let ascii = b"Subject: x\r\n\r\nplain\r\n";
        assert_eq!(to_seven_bit(ascii).expect("same"), ascii.to_vec());
        assert_eq!(
            to_seven_bit(b"Subject: caf\xc3\xa9\r\n\r\nx\xff\r\n"),
            Err(DowngradeError::EightBitHeader)
        );
        assert!(header_has_eight_bit(b"Subject: caf\xc3\xa9\r\n\r\nx\r\n"));
        assert!(!header_has_eight_bit(b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n"));
        assert_eq!(
            to_seven_bit(b"Content-Transfer-Encoding: base64\r\n\r\n\xff\r\n"),
            Err(DowngradeError::Mislabelled("base64".into()))
        );
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        deep.extend_from_slice(b"\r\n\xff");
        assert_eq!(to_seven_bit(&deep), Err(DowngradeError::TooDeep));
    }
}
