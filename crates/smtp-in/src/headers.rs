//! The header section of a received message, as smtp-in needs it: count
//! the `Received:` fields (loop detection, RFC 5321 §6.3), and remove the
//! fields no outsider may set — an `Authentication-Results:` claiming our
//! authserv-id (RFC 8601 §5) and our own quarantine mark.
//!
//! The message arrives with CRLF line endings only (the DATA/BDAT decoder
//! refuses bare CR and LF), so a field is a line not starting with space
//! or tab plus its continuation lines (RFC 5322 §2.2.3 folding), and the
//! header section ends at the first empty line.

use std::ops::Range;

/// The mark smtp-in puts on a message it accepted but wants filed as junk
/// (`--dmarc-reject-action quarantine`, `--spf-fail-action quarantine`);
/// delivery files it in `Junk` with `$Junk`.
pub use mailstore_api::QUARANTINE_HEADER;

/// One header field: its bytes (name to final CRLF) and the end of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The whole field, including the CRLF of its last line.
    pub range: Range<usize>,
    /// Length of the name (before the colon); 0 when the line has no colon.
    pub name_len: usize,
}

impl Field {
    /// The field name, as sent.
    #[must_use]
    pub fn name<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[self.range.start..self.range.start + self.name_len]
    }

    /// The value: everything after the colon, without the final CRLF.
    #[must_use]
    pub fn value<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        let start = (self.range.start + self.name_len + 1).min(self.range.end);
        let end = if msg[..self.range.end].ends_with(b"\r\n") {
            self.range.end - 2
        } else {
            self.range.end
        };
        &msg[start..end.max(start)]
    }

    fn is(&self, msg: &[u8], name: &str) -> bool {
        self.name(msg)
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The fields of the header section, in order.
#[must_use]
pub fn fields(msg: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break; // end of the header section
        }
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        match out.last_mut() {
            Some(last) if folded => last.range.end = end,
            _ => {
                let name_len = line.iter().position(|&b| b == b':').unwrap_or(0);
                out.push(Field {
                    range: pos..end,
                    name_len,
                });
            }
        }
        pos = end;
    }
    out
}

/// How many fields named `name` the header section has.
#[must_use]
pub fn count(msg: &[u8], name: &str) -> usize {
    fields(msg).iter().filter(|f| f.is(msg, name)).count()
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2:
/// `[CFWS] authserv-id [CFWS authres-version] ( no-result / 1*resinfo )`),
/// lower-cased; `None` when it cannot be read.
#[must_use]
pub fn authserv_id(value: &[u8]) -> Option<String> {
    let mut i = skip_cfws(value, 0);
    let start = i;
    let id = if value.get(i) == Some(&b'"') {
        // quoted-string
        let mut s = Vec::new();
        i += 1;
        loop {
            match value.get(i)? {
                b'"' => break,
                b'\\' => {
                    s.push(*value.get(i + 1)?);
                    i += 2;
                }
                &b => {
                    s.push(b);
                    i += 1;
                }
            }
        }
        s
    } else {
        while i < value.len() && !matches!(value[i], b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        value[start..i].to_vec()
    };
    let id = String::from_utf8(id).ok()?;
    let id = id.trim().trim_end_matches('.').to_ascii_lowercase();
    (!id.is_empty()).then_some(id)
}

fn skip_cfws(v: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(&b) = v.get(i) {
        match b {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    i
}

/// Removes every `Authentication-Results` field whose authserv-id is ours
/// (RFC 8601 §5: a forged one would be believed downstream) or cannot be
/// read, and every quarantine mark; returns how many fields were removed.
/// Fields of other authserv-ids stay (RFC 8601 §5 allows keeping them;
/// nothing of ours trusts them).
pub fn strip_forged(msg: &mut Vec<u8>, our_authserv_id: &str) -> usize {
    let ours = our_authserv_id.trim_end_matches('.').to_ascii_lowercase();
    let doomed: Vec<Range<usize>> = fields(msg)
        .into_iter()
        .filter(|f| {
            f.is(msg, QUARANTINE_HEADER)
                || (f.is(msg, "Authentication-Results")
                    && authserv_id(f.value(msg)).is_none_or(|id| id == ours))
        })
        .map(|f| f.range)
        .collect();
    for r in doomed.iter().rev() {
        msg.drain(r.clone());
    }
    doomed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_folding() {
        let m = b"Received: from a\r\n\tby b;\r\n date\r\nSubject: x\r\nNoColon\r\n\r\nReceived: in body\r\n";
        let f = fields(m);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name(m), b"Received");
        assert_eq!(f[0].value(m), b" from a\r\n\tby b;\r\n date");
        assert_eq!(f[1].value(m), b" x");
        assert_eq!(f[2].name_len, 0);
        assert_eq!(count(m, "received"), 1, "the body is not headers");
    }

    #[test]
    fn authserv_ids() {
        assert_eq!(
            authserv_id(b" mx.test; spf=pass").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            authserv_id(b" (c) MX.Test 1; none").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            authserv_id(b" \"mx.test\"; none").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            authserv_id(b"\r\n\tother.example;\r\n\tdkim=pass").as_deref(),
            Some("other.example")
        );
        assert_eq!(authserv_id(b" ; none"), None);
        assert_eq!(authserv_id(b" \"open"), None);
    }

    /// threat model T101: forged Authentication-Results with our
    /// authserv-id, and our quarantine mark, are removed; others stay.
    #[test]
    fn strips_only_what_claims_to_be_ours() {
        let mut m = b"Authentication-Results: mx.test;\r\n\tdkim=pass header.d=bank.example\r\nAuthentication-Results: other.example; spf=fail\r\nauthentication-results: (x) MX.TEST.; dmarc=pass\r\nX-Epistole-Quarantine: no\r\nSubject: s\r\n\r\nAuthentication-Results: mx.test; body\r\n".to_vec();
        assert_eq!(strip_forged(&mut m, "mx.test"), 3);
        assert_eq!(
            m,
            b"Authentication-Results: other.example; spf=fail\r\nSubject: s\r\n\r\nAuthentication-Results: mx.test; body\r\n"
        );
    }
}
