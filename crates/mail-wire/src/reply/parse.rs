//! Parsing a server's reply (RFC 5321 §4.2), pure: bytes in, [`Reply`] /
//! "need more" / error out. No I/O here.
//!
//! The remote server is not trusted (threat model T38–T39): every reply
//! line must be exactly three digits `2xx`–`5xx` followed by SP, `-` or the
//! end of the line; all lines of a multiline reply carry the same code; a
//! line is capped at [`MAX_LINE`] octets and a reply at [`MAX_LINES`] lines.
//! Anything else is a protocol error, which the caller treats as a
//! temporary failure — never as success.
//!
//! When every line starts with the same enhanced status code (RFC 2034 §4),
//! written canonically and of the reply's class, it goes to
//! [`Reply::status`] and is taken off the lines; otherwise the lines are
//! kept as sent. Either way [`Reply::summary`] and [`Reply::write_to`] give
//! the text back as it was received.

use std::borrow::Cow;

use super::{EnhancedStatus, Reply};

/// Longest reply line accepted, CRLF included. RFC 5321 §4.5.3.1.5 says 512;
/// real servers exceed it a little, hostile ones a lot.
pub const MAX_LINE: usize = 2048;
/// Most lines in one (multiline) reply.
pub const MAX_LINES: usize = 64;

/// A reply that breaks RFC 5321 §4.2: the session cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line over [`MAX_LINE`].
    #[error("reply line longer than {MAX_LINE} octets")]
    LineTooLong,
    /// More than [`MAX_LINES`] lines.
    #[error("reply with more than {MAX_LINES} lines")]
    TooManyLines,
    /// Not three digits 2xx–5xx then SP, `-` or the line end.
    #[error("malformed reply code")]
    BadCode,
    /// The lines of a multiline reply disagree on the code.
    #[error("multiline reply changed its code")]
    MixedCodes,
    /// A control character in the text.
    #[error("control character in reply")]
    BadText,
}

/// Parses one complete reply from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((reply, n)))`
/// with the number of bytes consumed, or an error for a hostile reply. A
/// line ends with CRLF; a bare LF is tolerated as a line end (the CR is
/// optional, the cap still applies).
///
/// # Errors
/// [`ReplyError`] for anything that is not a well-formed reply.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() >= MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            // Reject an obviously bad code early instead of waiting for LF.
            check_prefix(rest)?;
            return Ok(None);
        };
        if nl + 1 > MAX_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let mut line = &rest[..nl];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        pos += nl + 1;
        let (c, more, text) = parse_line(line)?;
        match code {
            None => code = Some(c),
            Some(prev) if prev != c => return Err(ReplyError::MixedCodes),
            Some(_) => {}
        }
        lines.push(text);
        if !more {
            let code = code.ok_or(ReplyError::BadCode)?;
            return Ok(Some((with_status(code, lines), pos)));
        }
        if lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }
}

/// Moves a status code that starts every line into [`Reply::status`].
fn with_status(code: u16, lines: Vec<String>) -> Reply {
    let token = |l: &str| l.split(' ').next().map(str::to_string);
    let status = lines
        .first()
        .and_then(|l| token(l))
        .and_then(|t| EnhancedStatus::parse(&t).filter(|s| s.to_string() == t))
        .filter(|s| u16::from(s.class()) == code / 100)
        .filter(|s| {
            let t = s.to_string();
            lines
                .iter()
                .all(|l| token(l).as_deref() == Some(t.as_str()))
        });
    let lines = match status {
        None => lines.into_iter().map(Cow::Owned).collect(),
        Some(s) => {
            let n = s.to_string().len();
            lines
                .into_iter()
                .map(|l| Cow::Owned(l.get(n + 1..).unwrap_or_default().to_string()))
                .collect()
        }
    };
    Reply {
        code,
        status,
        lines,
    }
}

/// Validates what can be validated of an unfinished line.
fn check_prefix(rest: &[u8]) -> Result<(), ReplyError> {
    for (i, &b) in rest.iter().enumerate().take(4) {
        let ok = match i {
            0 => (b'2'..=b'5').contains(&b),
            1 | 2 => b.is_ascii_digit(),
            _ => b == b' ' || b == b'-' || b == b'\r',
        };
        if !ok {
            return Err(ReplyError::BadCode);
        }
    }
    Ok(())
}

/// One line without its line end: (code, continues?, text).
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    if line.len() < 3 {
        return Err(ReplyError::BadCode);
    }
    check_prefix(line)?;
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    let (more, text) = match line.get(3) {
        None => (false, &line[3..]),
        Some(b' ') => (false, &line[4..]),
        Some(b'-') => (true, &line[4..]),
        Some(_) => return Err(ReplyError::BadCode),
    };
    if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ReplyError::BadText);
    }
    Ok((code, more, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every byte boundary, as a reader would: the
    /// result must be the same as parsing it in one piece.
    fn parse_split(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let whole = parse(input);
        for cut in 0..input.len() {
            let mut buf = input[..cut].to_vec();
            match parse(&buf) {
                Ok(None) => {}
                // An early error or a reply that ends before `cut` must match.
                other => {
                    assert_eq!(other, whole, "cut at {cut} differs");
                    return whole;
                }
            }
            buf.extend_from_slice(&input[cut..]);
            assert_eq!(parse(&buf), whole, "rejoined at {cut}");
        }
        whole
    }

    fn ok(input: &[u8]) -> (Reply, usize) {
        parse_split(input)
            .expect("valid reply")
            .expect("complete reply")
    }

    #[test]
    fn single_and_multiline_replies() {
        let (r, n) = ok(b"250 OK\r\nrest");
        assert_eq!((r.code, r.lines.clone(), n), (250, vec!["OK".into()], 8));
        let (r, _) =
            ok(b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n");
        assert_eq!(r.lines.len(), 4);
        assert_eq!(r.lines[3], "STARTTLS");
        let (r, _) = ok(b"354\r\n");
        assert_eq!((r.code, r.lines.clone()), (354, vec![Cow::from("")]));
        let (r, _) = ok(b"550 5.1.1 <x@y>: no such user\n");
        assert_eq!(
            r.enhanced().map(|s| s.to_string()).as_deref(),
            Some("5.1.1")
        );
        assert!(r.is_permanent());
        let (r, _) = ok(b"451 5.1.1 mismatched class\r\n");
        assert_eq!(r.enhanced(), None);
        assert_eq!(parse(b"250-first\r\n250 sec").expect("ok"), None);
        assert_eq!(parse(b"").expect("ok"), None);
    }

    #[test]
    fn hostile_replies_are_errors_never_success() {
        // threat model T39.
        for bad in [
            &b"2500 ok\r\n"[..],
            b"25\r\n",
            b"250\x00ok\r\n",
            b"abc ok\r\n",
            b"650 ok\r\n",
            b"150 ok\r\n",
            b"250 ok\x00\r\n",
            b"25 0\r\n",
        ] {
            assert!(parse_split(bad).is_err(), "{bad:?} must be an error");
        }
        assert_eq!(
            parse_split(b"250-a\r\n550 b\r\n"),
            Err(ReplyError::MixedCodes)
        );
    }

    #[test]
    fn limits() {
        // threat model T38: endless multiline, and a 100 kB line.
        let endless = b"250-x\r\n".repeat(MAX_LINES + 5);
        assert_eq!(parse(&endless), Err(ReplyError::TooManyLines));
        let mut long = b"250 ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 100_000));
        assert_eq!(parse(&long), Err(ReplyError::LineTooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ReplyError::LineTooLong));
        let mut fits = b"250 ".to_vec();
        fits.extend(std::iter::repeat_n(b'a', MAX_LINE - 6));
        fits.extend_from_slice(b"\r\n");
        assert!(parse(&fits).expect("fits").is_some());
    }
}
