//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463,
//! carried at the start of every reply line as RFC 2034 §4 says).
//!
//! One [`Reply`] type serves both directions: the receiver builds replies
//! and serialises them with [`Reply::write_to`] (the only place that turns a
//! reply into bytes), the client parses a server's replies with
//! [`parse`] and reads them back with [`Reply::summary`],
//! [`Reply::enhanced`] and the class predicates.

mod parse;
mod status;

use std::borrow::Cow;
use std::fmt;

pub use parse::{MAX_LINE, MAX_LINES, ReplyError, parse};
pub use status::EnhancedStatus;

/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic reply code (RFC 5321 §4.2.1), 200..=599.
    pub code: u16,
    /// Enhanced status code ("5.1.1"), sent at the start of every line
    /// (RFC 2034 §4). `None` for 220 greetings, 221 closes and 334 challenges,
    /// which conventionally carry none, and for parsed replies whose lines do
    /// not all start with the same code.
    pub status: Option<EnhancedStatus>,
    /// Text lines (without the status code); more than one makes a
    /// multiline reply (RFC 5321 §4.2.1).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply.
    #[must_use]
    pub fn new(
        code: u16,
        status: Option<EnhancedStatus>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A multiline reply.
    #[must_use]
    pub fn multi(code: u16, status: Option<EnhancedStatus>, lines: Vec<Cow<'static, str>>) -> Self {
        Self {
            code,
            status,
            lines,
        }
    }

    /// Transient (4xx) or permanent (5xx) failure.
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The reply class (RFC 5321 §4.2.1): 2 positive, 3 intermediate,
    /// 4 transient, 5 permanent.
    #[must_use]
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// 2xx.
    #[must_use]
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// 4xx.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    /// 5xx.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// The RFC 3463 enhanced status code: [`Reply::status`], or else the
    /// one at the start of the first line when its class matches the reply
    /// code.
    #[must_use]
    pub fn enhanced(&self) -> Option<EnhancedStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let first = self.lines.first()?.split(' ').next()?;
        EnhancedStatus::parse(first).filter(|s| u16::from(s.class()) == self.class())
    }

    /// Appends text to the last line (used to put the session id into error
    /// replies so that a user's complaint can be found in the logs).
    #[must_use]
    pub fn with_suffix(mut self, suffix: &str) -> Self {
        match self.lines.last_mut() {
            Some(last) => last.to_mut().push_str(suffix),
            None => self.lines.push(Cow::Owned(suffix.trim_start().to_string())),
        }
        self
    }

    /// One line of text as it goes on the wire after the code and separator:
    /// the status code, a space, the text.
    fn line_text(&self, line: &str, out: &mut String) {
        if let Some(status) = self.status {
            out.push_str(&status.to_string());
            if !line.is_empty() {
                out.push(' ');
            }
        }
        out.push_str(line);
    }

    /// Serialises the reply: `code-status text CRLF` for all but the last
    /// line, `code status text CRLF` for the last (RFC 5321 §4.2.1).
    /// CR and LF inside a text line are replaced by spaces so that no text can
    /// ever forge an extra reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let empty = [Cow::Borrowed("")];
        let lines: &[Cow<'static, str>] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let code = self.code.clamp(200, 599);
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let mut text = String::new();
            self.line_text(line, &mut text);
            out.extend_from_slice(format!("{code}{sep}").as_bytes());
            out.extend(
                text.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The reply as a string (tests and logs).
    #[must_use]
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One line for logs, DSNs and the queue: `550 5.1.1 no such user`, the
    /// lines of a multiline reply joined by " / ", at most 500 characters
    /// of text.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                text.push_str(" / ");
            }
            self.line_text(line, &mut text);
        }
        let text: String = text.chars().take(500).collect();
        format!("{} {}", self.code, text).trim_end().to_string()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_UNKNOWN: Option<EnhancedStatus> = Some(EnhancedStatus::USER_UNKNOWN);

    #[test]
    fn single_line() {
        let r = Reply::new(
            550,
            USER_UNKNOWN,
            "Recipient address rejected: user unknown",
        );
        assert_eq!(
            r.to_wire(),
            "550 5.1.1 Recipient address rejected: user unknown\r\n"
        );
        assert_eq!(
            Reply::new(354, None, "End data with <CR><LF>.<CR><LF>").to_wire(),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(Reply::new(250, USER_UNKNOWN, "").to_wire(), "250 5.1.1\r\n");
    }

    #[test]
    fn multiline_and_injection() {
        let r = Reply::multi(250, None, vec!["a".into(), "b\r\n250 evil".into()]);
        assert_eq!(r.to_wire(), "250-a\r\n250 b  250 evil\r\n");
    }

    #[test]
    fn suffix() {
        let r = Reply::new(451, Some(EnhancedStatus::TEMP_SYSTEM), "try again later")
            .with_suffix(" [sid abc]");
        assert!(r.to_wire().ends_with("later [sid abc]\r\n"));
        assert!(r.is_error());
        assert!(r.is_transient());
    }

    /// What the receiver writes, the client reads back unchanged.
    #[test]
    fn render_parse_round_trip() {
        for r in [
            Reply::new(550, USER_UNKNOWN, "no such user"),
            Reply::multi(250, None, vec!["mx Hello".into(), "PIPELINING".into()]),
            Reply::multi(
                452,
                Some(EnhancedStatus::TOO_MANY_RECIPIENTS),
                vec!["one".into(), String::new().into(), "three".into()],
            ),
        ] {
            let wire = r.to_wire();
            let (back, n) = parse(wire.as_bytes()).expect("valid").expect("complete");
            assert_eq!(n, wire.len());
            assert_eq!(back, r, "{wire:?}");
            assert_eq!(back.to_wire(), wire);
        }
    }

    #[test]
    fn summary_keeps_status_on_every_line() {
        let (r, _) = parse(b"550-5.1.1 first\r\n550 5.1.1 second\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.status, USER_UNKNOWN);
        assert_eq!(r.lines, vec!["first", "second"]);
        assert_eq!(r.summary(), "550 5.1.1 first / 5.1.1 second");
        assert_eq!(r.to_string(), r.summary());
        // Only the first line has a code: kept as text, still found.
        let (r, _) = parse(b"550-5.1.1 first\r\n550 second\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.status, None);
        assert_eq!(r.enhanced(), USER_UNKNOWN);
        assert_eq!(r.summary(), "550 5.1.1 first / second");
    }
}
