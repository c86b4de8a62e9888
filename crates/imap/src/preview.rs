//! PREVIEW (RFC 8970): a short plain-text rendering of a message's first
//! text part, for FETCH PREVIEW.
//!
//! The message is parsed by `mail-parser`, which decodes the transfer
//! encoding (quoted-printable, base64) and the charset into UTF-8 and,
//! when the first text part is HTML, renders it as text. What remains is
//! stripped of control characters, its whitespace collapsed (RFC 8970
//! §3.1: no leading or trailing whitespace, no line breaks) and cut at
//! [`MAX_PREVIEW_CHARS`] characters.

/// RFC 8970 §3.1: at most 256 characters.
pub const MAX_PREVIEW_CHARS: usize = 256;

/// Bytes of a message read to build its preview: the first text part
/// normally begins well within this; a longer prefix is not worth its cost.
pub const MAX_PREVIEW_INPUT: u64 = 256 * 1024;

/// Size up to which `PREVIEW (LAZY)` computes the preview; above, the
/// answer is NIL, which RFC 8970 §3.2 allows when it is not cheap.
pub const LAZY_MAX_SIZE: u64 = 64 * 1024;

/// The preview of `raw` (a whole message, or its first
/// [`MAX_PREVIEW_INPUT`] bytes): empty when it has no text.
#[must_use]
pub fn preview(raw: &[u8]) -> String {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return String::new();
    };
    let text = msg.body_text(0).unwrap_or_default();
    collapse(&text)
}

/// Whitespace runs become one space, control characters go, the ends are
/// trimmed and the result is cut at [`MAX_PREVIEW_CHARS`] characters.
#[must_use]
pub fn collapse(text: &str) -> String {
    let mut out = String::new();
    let mut n = 0usize;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() {
            continue;
        }
        if space {
            if n + 1 >= MAX_PREVIEW_CHARS {
                break;
            }
            out.push(' ');
            n += 1;
            space = false;
        }
        if n >= MAX_PREVIEW_CHARS {
            break;
        }
        out.push(c);
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_collapsed_and_cut() {
        let m = b"Subject: x\r\n\r\n  Hello,\r\n\r\n\tworld  \r\n";
        assert_eq!(preview(m), "Hello, world");
        let long = format!("Subject: x\r\n\r\n{}\r\n", "ab ".repeat(300));
        let p = preview(long.as_bytes());
        assert_eq!(p.chars().count(), MAX_PREVIEW_CHARS);
        assert!(!p.ends_with(' '));
    }

    #[test]
    fn quoted_printable_charset_and_html_are_decoded() {
        let qp = b"Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 cr=E8me=\r\n br=FBl=E9e\r\n";
        assert_eq!(preview(qp), "Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e");
        let html = b"Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\r\nPGh0bWw+PGJvZHk+PHA+SGk8L3A+PHA+PGI+dGhlcmU8L2I+PC9wPjwvYm9keT48L2h0bWw+\r\n";
        assert_eq!(preview(html), "Hi there");
        assert_eq!(preview(b""), "");
    }
}
