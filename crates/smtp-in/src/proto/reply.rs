//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463,
//! advertised as ENHANCEDSTATUSCODES, RFC 2034).
//!
//! Every reply the server sends is a [`Reply`] value; the only place that
//! turns one into bytes is [`Reply::write_to`]. Handlers never write ad-hoc
//! bytes.

use std::borrow::Cow;

/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic reply code (RFC 5321 §4.2.1), 200..=599.
    pub code: u16,
    /// Enhanced status code ("5.1.1"), sent at the start of every line
    /// (RFC 2034 §4). `None` for 220 greetings, 221 closes and 334 challenges,
    /// which conventionally carry none.
    pub status: Option<&'static str>,
    /// Text lines; more than one makes a multiline reply (RFC 5321 §4.2.1).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply.
    #[must_use]
    pub fn new(
        code: u16,
        status: Option<&'static str>,
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
    pub fn multi(code: u16, status: Option<&'static str>, lines: Vec<Cow<'static, str>>) -> Self {
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
            out.extend_from_slice(format!("{code}{sep}").as_bytes());
            if let Some(status) = self.status {
                out.extend_from_slice(status.as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(
                line.bytes()
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
}

macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $status:expr, $text:literal;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name() -> Reply {
                Reply::new($code, $status, $text)
            }
        )*
    };
}

/// The closed table of fixed replies. Replies with variable text (greeting,
/// EHLO, "queued as") are built by the session from these codes.
pub mod codes {
    use super::Reply;

    replies! {
        /// RFC 5321 §4.1.1.1 / §4.1.1.5 etc.: generic success.
        ok = 250, Some("2.0.0"), "Ok";
        /// MAIL accepted (RFC 3463 X.1.0: other address status).
        sender_ok = 250, Some("2.1.0"), "Sender ok";
        /// RCPT accepted (X.1.5: destination address valid).
        recipient_ok = 250, Some("2.1.5"), "Recipient ok";
        /// RSET.
        reset_ok = 250, Some("2.0.0"), "Reset state";
        /// QUIT (RFC 5321 §4.1.1.10).
        bye = 221, Some("2.0.0"), "Bye";
        /// VRFY: RFC 5321 §3.5.3 allows 252 "cannot VRFY user"; we never
        /// enumerate accounts.
        vrfy = 252, Some("2.5.0"), "Cannot VRFY user, but will accept message and attempt delivery";
        /// HELP (RFC 5321 §4.1.1.8).
        help = 214, Some("2.0.0"), "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH";
        /// DATA go-ahead (RFC 5321 §4.1.1.4). No enhanced code on 354.
        start_data = 354, None, "End data with <CR><LF>.<CR><LF>";
        /// STARTTLS go-ahead (RFC 3207 §4).
        ready_tls = 220, Some("2.0.0"), "Ready to start TLS";
        /// AUTH success (RFC 4954 §6).
        auth_ok = 235, Some("2.7.0"), "Authentication successful";

        /// Shutdown in progress (RFC 5321 §3.8).
        shutting_down = 421, Some("4.3.2"), "Service shutting down, closing connection";
        /// Too many errors in this session.
        too_many_errors = 421, Some("4.7.0"), "Too many errors, closing connection";
        /// Connection limits.
        too_many_connections = 421, Some("4.7.0"), "Too many connections, try again later";
        /// Command or data timeout (RFC 5321 §4.5.3.2).
        timeout = 421, Some("4.4.2"), "Timeout, closing connection";
        /// Early talker: the client sent commands before the greeting.
        early_talker = 554, Some("5.5.1"), "Protocol error: command sent before greeting";
        /// Store unreachable or outcome unknown: the sender must retry.
        store_unavailable = 451, Some("4.3.0"), "Temporary failure, please try again later";
        /// Spool memory budget exhausted (X.3.1: mail system full).
        insufficient_storage = 452, Some("4.3.1"), "Insufficient system storage, try again later";
        /// RFC 5321 §4.5.3.1.10: recipients past the limit get 452.
        too_many_recipients = 452, Some("4.5.3"), "Too many recipients";
        /// AUTH throttled by the store.
        auth_throttled = 454, Some("4.7.0"), "Too many failed authentications, try again later";
        /// AUTH could not be checked (store down).
        auth_temp_fail = 454, Some("4.7.0"), "Temporary authentication failure";

        /// RFC 5321 §4.2.4: unrecognised command.
        unknown_command = 500, Some("5.5.2"), "Command not recognized";
        /// A command line ended by a bare LF (RFC 5321 §2.3.8).
        bare_lf_command = 500, Some("5.5.2"), "Syntax error: lines must end with CRLF";
        /// Line longer than the limit (RFC 5321 §4.5.3.1.4).
        line_too_long = 500, Some("5.5.2"), "Line too long";
        /// Malformed arguments (RFC 5321 §4.2.2, 501).
        syntax_error = 501, Some("5.5.4"), "Syntax error in parameters or arguments";
        /// Malformed address path.
        bad_address = 501, Some("5.1.3"), "Bad address syntax";
        /// Base64 that does not decode, or a malformed SASL message.
        bad_base64 = 501, Some("5.5.2"), "Cannot decode response";
        /// The client cancelled AUTH with "*" (RFC 4954 §4).
        auth_cancelled = 501, Some("5.0.0"), "Authentication cancelled";
        /// Not implemented (EXPN, TURN, ...). RFC 5321 §3.5.3: EXPN may be disabled.
        not_implemented = 502, Some("5.5.1"), "Command not implemented";
        /// Wrong order of commands (RFC 5321 §4.1.4).
        bad_sequence = 503, Some("5.5.1"), "Bad sequence of commands";
        /// HELO/EHLO first.
        need_helo = 503, Some("5.5.1"), "Send EHLO/HELO first";
        /// MAIL first.
        need_mail = 503, Some("5.5.1"), "Need MAIL command";
        /// RCPT first.
        need_rcpt = 503, Some("5.5.1"), "Need RCPT command";
        /// Nested MAIL (RFC 5321 §4.1.1.2: MAIL during a transaction).
        nested_mail = 503, Some("5.5.1"), "Sender already specified";
        /// DATA while BDAT chunks are pending (RFC 3030 §3).
        data_after_bdat = 503, Some("5.5.1"), "DATA not allowed during BDAT transfer";
        /// Second AUTH (RFC 4954 §4).
        already_authenticated = 503, Some("5.5.1"), "Already authenticated";
        /// STARTTLS inside TLS, or TLS not configured.
        tls_not_available = 503, Some("5.5.1"), "STARTTLS not available";
        /// Unsupported parameter value (RFC 5321 §4.1.1.11 uses 555 / 504).
        bad_param_value = 501, Some("5.5.4"), "Invalid parameter value";
        /// RFC 5321 §4.1.1.11: unrecognised MAIL/RCPT parameter.
        unknown_param = 555, Some("5.5.4"), "Parameter not recognized or not implemented";
        /// AUTH mechanism not offered.
        unknown_mechanism = 504, Some("5.5.4"), "Unrecognized authentication mechanism";
        /// RFC 4954 §6: AUTH required (submission without AUTH), or before TLS.
        auth_required = 530, Some("5.7.0"), "Authentication required";
        /// RFC 3207 §4 / RFC 4954 §4: must issue STARTTLS first.
        tls_required = 530, Some("5.7.0"), "Must issue a STARTTLS command first";
        /// RFC 4954 §6: wrong credentials. Identical for unknown user and wrong
        /// password.
        auth_failed = 535, Some("5.7.8"), "Authentication credentials invalid";
        /// Unknown local recipient (RFC 3463 X.1.1).
        unknown_user = 550, Some("5.1.1"), "Recipient address rejected: user unknown";
        /// Bare CR or LF inside the message: our one documented policy.
        bare_line_ending = 550, Some("5.5.2"), "Message rejected: bare CR or LF not allowed, use CRLF";
        /// Message larger than allowed (RFC 1870 §6, X.3.4).
        too_big = 552, Some("5.3.4"), "Message size exceeds fixed maximum message size";
        /// DATA text line over the limit (RFC 5321 §4.5.3.1.6).
        data_line_too_long = 552, Some("5.3.4"), "Message rejected: text line too long";
        /// Submission: the sender is not an address of the authenticated user.
        sender_not_owned = 553, Some("5.7.1"), "Sender address rejected: not owned by authenticated user";
        /// RFC 6531 §3.5: non-ASCII address without SMTPUTF8.
        need_smtputf8 = 553, Some("5.6.7"), "Non-ASCII address requires SMTPUTF8";
        /// Relay refused (RFC 3463 X.7.1: delivery not authorized).
        relay_denied = 554, Some("5.7.1"), "Relay access denied";
        /// BODY=BINARYMIME and other media the server does not offer.
        bad_body_type = 555, Some("5.5.4"), "Unsupported BODY type";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        assert_eq!(
            codes::unknown_user().to_wire(),
            "550 5.1.1 Recipient address rejected: user unknown\r\n"
        );
        assert_eq!(
            codes::start_data().to_wire(),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }

    #[test]
    fn multiline_and_injection() {
        let r = Reply::multi(250, None, vec!["a".into(), "b\r\n250 evil".into()]);
        assert_eq!(r.to_wire(), "250-a\r\n250 b  250 evil\r\n");
    }

    #[test]
    fn suffix() {
        let r = codes::store_unavailable().with_suffix(" [sid abc]");
        assert!(r.to_wire().ends_with("later [sid abc]\r\n"));
        assert!(r.is_error());
    }
}
