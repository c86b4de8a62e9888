//! The searchable text of a message, as the `blob_text` table keeps it
//! (migration 0014) for SEARCH (RFC 9051 §6.4.4).
//!
//! Two parts, kept apart so that each search key reads only its own:
//!
//! - **headers**: the top-level header fields, one line each,
//!   `name: raw value` (unfolded, RFC 5322 §2.2.3) and, when it differs,
//!   `name: decoded value` (RFC 2047 encoded words, addresses as
//!   `Name <addr>`). HEADER, SUBJECT, FROM, TO, CC, BCC and TEXT read it.
//! - **body**: the decoded content (transfer encoding undone: quoted-printable,
//!   base64; charset converted to UTF-8, RFC 2045 §6, RFC 2046 §4.1.2) of
//!   every text part at every nesting depth, HTML reduced to its text, the
//!   header fields of attached messages (message/rfc822, message/global) in
//!   the same line form, text/rfc822-headers parts raw and decoded, and the
//!   file name of every attachment (RFC 2183 §2.3, RFC 2231). BODY and TEXT
//!   read it.
//!
//! Both are normalised the way SEARCH compares: lower-cased with Unicode's
//! full case mapping (`str::to_lowercase`, applied to the needle too), NUL
//! replaced by a space (PostgreSQL text cannot hold it), CR and LF inside a
//! value replaced by spaces so that one field is one line.
//!
//! ## Bounds
//!
//! At most [`MAX_HEADERS`] (64 KiB) of header text and [`MAX_BODY`]
//! (1 MiB) of body text are stored per blob. 1 MiB holds the text of all
//! but exceptional mail (a long thread quoted in full is a few hundred
//! KiB) while keeping the trigram index entry and the exact `LIKE` check of
//! one row bounded: a "bomb" (a 50 MB base64 text part of one repeated
//! word, or HTML that expands) costs the index no more than 1 MiB. A text
//! cut at a bound is marked incomplete, and SEARCH then reads that message
//! from its blob as before the index existed, so the bound never changes an
//! answer; it only makes such messages as slow to search as they used to be.

use mail_parser::{HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Bound on the stored header text, in bytes (UTF-8).
pub const MAX_HEADERS: usize = 64 * 1024;
/// Bound on the stored body text, in bytes (UTF-8).
pub const MAX_BODY: usize = 1024 * 1024;
/// Deepest attached message whose text is taken (mail-parser has its own,
/// lower, nesting limit; this one keeps the walk bounded whatever it does).
const MAX_DEPTH: usize = 64;

/// What `blob_text` stores for one blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchText {
    pub headers: String,
    pub body: String,
    /// False when a part was cut at its bound: search must read the blob.
    pub complete: bool,
}

/// Text collected up to a byte bound.
struct Capped {
    out: String,
    max: usize,
    cut: bool,
}

impl Capped {
    fn new(max: usize) -> Self {
        Self {
            out: String::new(),
            max,
            cut: false,
        }
    }

    fn push(&mut self, s: &str) {
        if self.out.len().saturating_add(s.len()) <= self.max {
            self.out.push_str(s);
            return;
        }
        self.cut = true;
        let mut end = self.max.saturating_sub(self.out.len()).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&s[..end]);
    }

    fn line(&mut self, s: &str) {
        self.push(s);
        self.push("\n");
    }

    /// The normalised text; lower-casing may lengthen it (e.g. "İ" → "i̇"),
    /// so the bound is applied again.
    fn finish(self) -> (String, bool) {
        let mut s = normalise(&self.out);
        let mut cut = self.cut;
        if s.len() > self.max {
            let mut end = self.max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            cut = true;
        }
        (s, cut)
    }
}

/// SEARCH's comparison form of a text or a needle: lower case, no NUL.
#[must_use]
pub fn normalise(s: &str) -> String {
    s.to_lowercase().replace('\0', " ")
}

/// A search needle in comparison form; `None` when it holds a NUL, which
/// no stored text does (so it matches nothing).
#[must_use]
pub fn needle(s: &str) -> Option<String> {
    (!s.contains('\0')).then(|| s.to_lowercase())
}

/// Header lines of the top-level header of `raw` (what a delivery prefix
/// such as `Return-Path:`/`Delivered-To:` adds in front of a stored
/// message's own lines), normalised.
#[must_use]
pub fn header_lines(raw: &[u8]) -> String {
    let mut c = Capped::new(usize::MAX);
    if let Some(msg) = MessageParser::default().parse_headers(raw)
        && let Some(root) = msg.parts.first()
    {
        push_headers(&mut c, root, &msg.raw_message);
    }
    c.finish().0
}

/// The searchable text of a raw message, bounded as stored. Never fails:
/// what cannot be parsed contributes nothing, as it did when SEARCH
/// re-parsed blobs.
#[must_use]
pub fn extract(raw: &[u8]) -> SearchText {
    extract_within(raw, MAX_HEADERS, MAX_BODY)
}

/// The same text without the bounds: what SEARCH compares for a message
/// whose stored text is incomplete.
#[must_use]
pub fn extract_unbounded(raw: &[u8]) -> SearchText {
    extract_within(raw, usize::MAX, usize::MAX)
}

fn extract_within(raw: &[u8], max_headers: usize, max_body: usize) -> SearchText {
    // The same guard as `structure::parse`: mail-parser's debug assertion on
    // broken multipart/rfc822 nesting must not fail a store or a search.
    let full = std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten();
    let mut headers = Capped::new(max_headers);
    let mut body = Capped::new(max_body);
    match &full {
        Some(msg) => {
            if let Some(root) = msg.parts.first() {
                push_headers(&mut headers, root, &msg.raw_message);
            }
            push_parts(&mut body, msg, 0);
        }
        None => {
            if let Some(msg) = MessageParser::default().parse_headers(raw)
                && let Some(root) = msg.parts.first()
            {
                push_headers(&mut headers, root, &msg.raw_message);
            }
        }
    }
    let (headers, hcut) = headers.finish();
    let (body, bcut) = body.finish();
    SearchText {
        headers,
        body,
        complete: !hcut && !bcut,
    }
}

/// One line per field: the raw value unfolded, then the decoded value when
/// it says something else. `raw` is the buffer the header offsets index: a
/// `Message`'s `raw_message` field (for an attached message, the whole
/// enclosing buffer or its decoded copy), not the `raw_message()` slice.
fn push_headers(out: &mut Capped, part: &MessagePart<'_>, raw: &[u8]) {
    for h in &part.headers {
        let name = h.name.as_str();
        let rawv = raw
            .get(h.offset_start as usize..h.offset_end as usize)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let rawv = one_line(&rawv);
        out.line(&format!("{name}: {rawv}"));
        let decoded = match &h.value {
            HeaderValue::Text(t) => t.to_string(),
            HeaderValue::TextList(l) => l.join(" "),
            HeaderValue::Address(a) => a
                .iter()
                .map(|x| {
                    format!(
                        "{} <{}>",
                        x.name.as_deref().unwrap_or(""),
                        x.address.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        let decoded = one_line(&decoded);
        if !decoded.is_empty() && decoded != rawv {
            out.line(&format!("{name}: {decoded}"));
        }
    }
}

/// Unfolds (RFC 5322 §2.2.3: CRLF before white space is removed) and keeps
/// any other line break from splitting the field's line.
fn one_line(v: &str) -> String {
    v.replace("\r\n", "")
        .replace(['\r', '\n'], " ")
        .trim()
        .to_string()
}

fn push_parts(out: &mut Capped, msg: &Message<'_>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    for part in &msg.parts {
        if let Some(name) = part.attachment_name() {
            out.line(name);
        }
        match &part.body {
            PartType::Text(t) => {
                out.line(t);
                let is_headers = part.content_type().is_some_and(|ct| {
                    ct.ctype().eq_ignore_ascii_case("text")
                        && ct
                            .subtype()
                            .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
                });
                if is_headers {
                    // RFC 6522 §5: a text/rfc822-headers part holds header
                    // fields; their encoded words are searched decoded too.
                    let mut raw = t.as_bytes().to_vec();
                    raw.extend_from_slice(b"\r\n\r\n");
                    if let Some(h) = MessageParser::default().parse_headers(&raw)
                        && let Some(root) = h.parts.first()
                    {
                        push_headers(out, root, &h.raw_message);
                    }
                }
            }
            PartType::Html(h) => out.line(&mail_parser::decoders::html::html_to_text(h)),
            PartType::Message(m) => {
                if let Some(root) = m.parts.first() {
                    push_headers(out, root, &m.raw_message);
                }
                push_parts(out, m, depth + 1);
            }
            PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Multipart(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_body_are_apart_and_lower_case() {
        let t = extract(
            b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nFrom: Ann <ann@Example.org>\r\n\r\nHello WORLD\r\n",
        );
        assert!(t.complete);
        assert!(t.headers.contains("subject: =?iso-8859-1?q?gr=fc=dfe?=\n"));
        assert!(t.headers.contains("subject: grüße\n"), "{}", t.headers);
        assert!(t.headers.contains("from: ann <ann@example.org>\n"));
        assert!(t.body.contains("hello world"));
        assert!(!t.body.contains("subject"));
    }

    #[test]
    fn attached_message_headers_and_text_are_body_text() {
        let raw = b"Subject: outer\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nouter text\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
Subject: Inner Subject\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\r\naW5uZXIgYsO2ZHk=\r\n--b\r\n\
Content-Type: application/pdf; name=\"Report.PDF\"\r\nContent-Disposition: attachment; filename=\"Report.PDF\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
        let t = extract(raw);
        assert!(t.body.contains("outer text"), "{}", t.body);
        assert!(t.body.contains("subject: inner subject\n"), "{}", t.body);
        assert!(
            t.body.contains("content-type: text/plain; charset=utf-8\n"),
            "{}",
            t.body
        );
        // Raw and decoded values agree: one line (offsets read right).
        assert_eq!(t.body.matches("subject:").count(), 1, "{}", t.body);
        assert!(t.body.contains("inner bödy"), "{}", t.body);
        assert!(t.body.contains("report.pdf"), "{}", t.body);
        assert!(!t.headers.contains("inner"));
    }

    #[test]
    fn bounds_cut_on_a_character_and_mark_incomplete() {
        let mut raw = b"Subject: x\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n("é".as_bytes(), MAX_BODY).flatten());
        let t = extract(&raw);
        assert!(!t.complete);
        assert!(t.body.len() <= MAX_BODY && t.body.len() > MAX_BODY - 4);
    }

    #[test]
    fn nul_and_folding_are_normalised() {
        let t = extract(b"Subject: a\r\n b\0c\r\n\r\nx\0y\r\n");
        assert!(t.headers.contains("subject: a b c\n"), "{:?}", t.headers);
        assert!(t.body.contains("x y"));
        assert_eq!(
            header_lines(b"Return-Path: <X@y>\r\nDelivered-To: A@b\r\n"),
            "return-path: <x@y>\nreturn-path: x@y\ndelivered-to: a@b\n"
        );
    }
}
