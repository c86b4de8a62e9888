//! The POP3 grammar, apart from any I/O: command lines in, typed [`Command`]s
//! out; typed [`Reply`] values in, wire bytes out.
//!
//! - RFC 1939 §3: commands are a case-insensitive keyword, then arguments
//!   separated by single spaces, terminated by CRLF.
//! - RFC 2449 §4: a command line is at most 255 octets *including* the
//!   terminating CRLF. Longer lines get `-ERR` and are discarded up to their
//!   end without being buffered.
//! - RFC 1939 §5 and §7: message numbers are decimal, start at 1 and must be
//!   refused when they do not fit; `TOP` takes a non-negative line count.
//!
//! Line endings: CRLF is the rule; a bare LF is accepted as the end of a
//! command line (telnet users, some old clients). A CR anywhere but right
//! before the LF, or a NUL, makes the line invalid. Commands carry no message
//! data in POP3, so this leniency cannot smuggle anything.

use std::borrow::Cow;
use std::fmt;

use bytes::{Buf, BytesMut};

/// RFC 2449 §4: "The maximum length of a command line ... is 255 octets,
/// including the terminating CRLF."
pub const MAX_COMMAND_LINE: usize = 255;

/// Upper bound for a SASL response line (RFC 5034 §4 lets the client answer a
/// challenge with a base64 line that may exceed the command limit).
pub const MAX_SASL_LINE: usize = 2048;

/// A decimal message number never needs more digits than `u32::MAX` has;
/// anything longer is refused before any arithmetic.
const MAX_DIGITS: usize = 10;

/// A parsed POP3 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 2449 §5.
    Capa,
    /// RFC 1939 §7: the mailbox name (for us: the full address).
    User(String),
    /// RFC 1939 §7: the rest of the line after `PASS ` (may contain spaces).
    Pass(String),
    /// RFC 5034 §4: `AUTH mechanism [initial-response]`. Without a mechanism
    /// the server lists the mechanisms it supports.
    Auth {
        /// Upper-cased mechanism name.
        mechanism: Option<String>,
        /// Base64 initial response, `=` meaning an empty one.
        initial: Option<String>,
    },
    /// RFC 2595 §4.
    Stls,
    /// RFC 6856 §2.
    Utf8,
    /// RFC 1939 §5.
    Stat,
    /// RFC 1939 §5.
    List(Option<u32>),
    /// RFC 1939 §5.
    Retr(u32),
    /// RFC 1939 §5.
    Dele(u32),
    /// RFC 1939 §5.
    Noop,
    /// RFC 1939 §5.
    Rset,
    /// RFC 1939 §5 (AUTHORIZATION) and §6 (enters UPDATE).
    Quit,
    /// RFC 1939 §7: headers, the blank line, then `lines` lines of the body.
    Top {
        /// Message number.
        msg: u32,
        /// Number of body lines.
        lines: u32,
    },
    /// RFC 1939 §7.
    Uidl(Option<u32>),
}

impl Command {
    /// The keyword, for logs and metrics (never the arguments: PASS).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Capa => "CAPA",
            Self::User(_) => "USER",
            Self::Pass(_) => "PASS",
            Self::Auth { .. } => "AUTH",
            Self::Stls => "STLS",
            Self::Utf8 => "UTF8",
            Self::Stat => "STAT",
            Self::List(_) => "LIST",
            Self::Retr(_) => "RETR",
            Self::Dele(_) => "DELE",
            Self::Noop => "NOOP",
            Self::Rset => "RSET",
            Self::Quit => "QUIT",
            Self::Top { .. } => "TOP",
            Self::Uidl(_) => "UIDL",
        }
    }
}

/// Why a line is not a valid command. Every variant is a client mistake:
/// the session answers `-ERR` and carries on (counting errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// RFC 2449 §4 limit exceeded.
    #[error("line too long")]
    LineTooLong,
    /// NUL or a CR that is not part of the line end.
    #[error("invalid characters in command")]
    BadCharacters,
    /// Empty line or unknown keyword (APOP is deliberately unknown).
    #[error("unknown command")]
    Unknown,
    /// Wrong number of arguments, or a malformed one.
    #[error("syntax error in arguments")]
    Syntax,
    /// A message number that is zero, signed, not decimal or too large.
    #[error("invalid message number")]
    BadNumber,
}

/// Splits a byte stream into lines, enforcing a length limit without ever
/// buffering more than the limit: an over-long line is reported once and
/// its remainder discarded as it arrives.
#[derive(Debug, Default)]
pub struct LineDecoder {
    skipping: bool,
}

impl LineDecoder {
    /// A decoder at the start of a line.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next complete line (without its line end) off `buf`.
    ///
    /// `Ok(None)`: more bytes are needed. `Err(LineTooLong)`: the line
    /// exceeded `max` octets including its CRLF; it is consumed (now or as
    /// the rest arrives) and reported exactly once.
    ///
    /// # Errors
    /// [`ParseError::LineTooLong`] or [`ParseError::BadCharacters`].
    pub fn next_line(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ParseError> {
        if self.skipping {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    buf.advance(i + 1);
                    self.skipping = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        let window = buf.len().min(max);
        match buf[..window].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut line = buf.split_to(i + 1).to_vec();
                line.pop(); // LF
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().any(|&b| b == b'\r' || b == 0) {
                    return Err(ParseError::BadCharacters);
                }
                Ok(Some(line))
            }
            None if buf.len() >= max => {
                // No line end within the limit: report now, discard the rest
                // of this line whenever it comes (pipelined lines after it stay).
                buf.advance(window);
                self.skipping = true;
                Err(ParseError::LineTooLong)
            }
            None => Ok(None),
        }
    }
}

/// Parses one command line (without its line end).
///
/// # Errors
/// A [`ParseError`] describing the client's mistake.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadCharacters)?;
    let (keyword, rest) = match line.split_once(' ') {
        Some((k, r)) => (k, Some(r)),
        None => (line, None),
    };
    // RFC 2449 §4: keywords are 3 or 4 characters.
    if keyword.is_empty() || keyword.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let keyword = keyword.to_ascii_uppercase();
    // PASS takes the remainder verbatim (RFC 1939 §7 allows spaces in it).
    if keyword == "PASS" {
        return match rest {
            Some(r) if !r.is_empty() => Ok(Command::Pass(r.to_string())),
            _ => Err(ParseError::Syntax),
        };
    }
    let args: Vec<&str> = match rest {
        None => Vec::new(),
        Some(r) => {
            let args: Vec<&str> = r.split(' ').collect();
            // Empty arguments mean doubled or trailing spaces: strict.
            if args.iter().any(|a| a.is_empty()) {
                return Err(ParseError::Syntax);
            }
            args
        }
    };
    let cmd = match (keyword.as_str(), args.as_slice()) {
        ("CAPA", []) => Command::Capa,
        ("USER", [name]) => Command::User((*name).to_string()),
        ("AUTH", []) => Command::Auth {
            mechanism: None,
            initial: None,
        },
        ("AUTH", [mech]) => Command::Auth {
            mechanism: Some(mech.to_ascii_uppercase()),
            initial: None,
        },
        ("AUTH", [mech, ir]) => Command::Auth {
            mechanism: Some(mech.to_ascii_uppercase()),
            initial: Some((*ir).to_string()),
        },
        ("STLS", []) => Command::Stls,
        ("UTF8", []) => Command::Utf8,
        ("STAT", []) => Command::Stat,
        ("LIST", []) => Command::List(None),
        ("LIST", [n]) => Command::List(Some(message_number(n)?)),
        ("RETR", [n]) => Command::Retr(message_number(n)?),
        ("DELE", [n]) => Command::Dele(message_number(n)?),
        ("NOOP", []) => Command::Noop,
        ("RSET", []) => Command::Rset,
        ("QUIT", []) => Command::Quit,
        ("TOP", [n, l]) => Command::Top {
            msg: message_number(n)?,
            lines: decimal(l)?,
        },
        ("UIDL", []) => Command::Uidl(None),
        ("UIDL", [n]) => Command::Uidl(Some(message_number(n)?)),
        (
            "CAPA" | "USER" | "AUTH" | "STLS" | "UTF8" | "STAT" | "LIST" | "RETR" | "DELE" | "NOOP"
            | "RSET" | "QUIT" | "TOP" | "UIDL",
            _,
        ) => return Err(ParseError::Syntax),
        _ => return Err(ParseError::Unknown),
    };
    Ok(cmd)
}

/// RFC 1939 §3: "a message-number argument ... may NOT refer to ... 0".
fn message_number(s: &str) -> Result<u32, ParseError> {
    match decimal(s)? {
        0 => Err(ParseError::BadNumber),
        n => Ok(n),
    }
}

/// Plain decimal digits only (no sign, no whitespace), bounded length,
/// checked conversion: `4294967296` and `-1` are refused, never wrapped.
fn decimal(s: &str) -> Result<u32, ParseError> {
    if s.is_empty() || s.len() > MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadNumber);
    }
    s.parse::<u32>().map_err(|_| ParseError::BadNumber)
}

/// Convenience for tests and fuzzing: decode one command line off `buf`.
///
/// # Errors
/// As [`LineDecoder::next_line`] and [`parse_command`].
pub fn parse(decoder: &mut LineDecoder, buf: &mut BytesMut) -> Result<Option<Command>, ParseError> {
    match decoder.next_line(buf, MAX_COMMAND_LINE)? {
        None => Ok(None),
        Some(line) => parse_command(&line).map(Some),
    }
}

/// RFC 2449 §8 / RFC 3206 extended response codes, written in brackets right
/// after the status indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// RFC 2449 §8.1.2: the maildrop is locked by another session.
    InUse,
    /// RFC 2449 §8.1.1: the user logged in too recently.
    LoginDelay,
    /// RFC 3206 §4: temporary system problem; retry later.
    SysTemp,
    /// RFC 3206 §4: permanent system problem.
    SysPerm,
    /// RFC 3206 §5: the credentials were not accepted.
    Auth,
    /// RFC 6856 §2: the command needs UTF-8 mode or is refused because of it.
    Utf8,
}

impl RespCode {
    /// The code as written on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InUse => "IN-USE",
            Self::LoginDelay => "LOGIN-DELAY",
            Self::SysTemp => "SYS/TEMP",
            Self::SysPerm => "SYS/PERM",
            Self::Auth => "AUTH",
            Self::Utf8 => "UTF8",
        }
    }
}

/// Positive or negative status indicator (RFC 1939 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `+OK`
    Ok,
    /// `-ERR`
    Err,
}

/// A server reply. Serialised only by [`Reply::encode`]; handlers never
/// write ad-hoc bytes (message bodies go through [`crate::body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A single-line `+OK` or `-ERR`, optionally with a response code.
    Single {
        /// `+OK` or `-ERR`.
        status: Status,
        /// RFC 2449 response code.
        code: Option<RespCode>,
        /// Human-readable text.
        text: Cow<'static, str>,
    },
    /// `+OK text`, then lines, then `.` (RFC 1939 §3 multi-line response;
    /// lines are dot-stuffed when written).
    Multi {
        /// Text of the first line.
        text: Cow<'static, str>,
        /// The body lines, without line ends.
        lines: Vec<String>,
    },
    /// RFC 5034 §4 server challenge: `+ base64`.
    Continue(String),
}

impl Reply {
    /// `+OK text`.
    pub fn ok(text: impl Into<Cow<'static, str>>) -> Self {
        Self::Single {
            status: Status::Ok,
            code: None,
            text: text.into(),
        }
    }

    /// `-ERR text`.
    pub fn err(text: impl Into<Cow<'static, str>>) -> Self {
        Self::Single {
            status: Status::Err,
            code: None,
            text: text.into(),
        }
    }

    /// `-ERR [CODE] text`.
    pub fn err_code(code: RespCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self::Single {
            status: Status::Err,
            code: Some(code),
            text: text.into(),
        }
    }

    /// `+OK text` followed by `lines` and the terminating `.`.
    pub fn multi(text: impl Into<Cow<'static, str>>, lines: Vec<String>) -> Self {
        Self::Multi {
            text: text.into(),
            lines,
        }
    }

    /// Whether this is a negative reply.
    #[must_use]
    pub fn is_err(&self) -> bool {
        matches!(
            self,
            Self::Single {
                status: Status::Err,
                ..
            }
        )
    }

    /// Appends the wire form to `out`. CR and LF inside texts are replaced by
    /// spaces, so no reply can ever span or inject lines.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Single { status, code, text } => {
                out.extend_from_slice(match status {
                    Status::Ok => b"+OK",
                    Status::Err => b"-ERR",
                });
                if let Some(code) = code {
                    out.extend_from_slice(b" [");
                    out.extend_from_slice(code.as_str().as_bytes());
                    out.push(b']');
                }
                if !text.is_empty() {
                    out.push(b' ');
                    push_clean(out, text);
                }
                out.extend_from_slice(b"\r\n");
            }
            Self::Multi { text, lines } => {
                out.extend_from_slice(b"+OK");
                if !text.is_empty() {
                    out.push(b' ');
                    push_clean(out, text);
                }
                out.extend_from_slice(b"\r\n");
                for line in lines {
                    // RFC 1939 §3: byte-stuff lines starting with ".".
                    if line.starts_with('.') {
                        out.push(b'.');
                    }
                    push_clean(out, line);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b".\r\n");
            }
            Self::Continue(challenge) => {
                out.extend_from_slice(b"+ ");
                push_clean(out, challenge);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The wire form as a new buffer.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn push_clean(out: &mut Vec<u8>, text: &str) {
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expect = Result<Option<Command>, ParseError>;

    fn table() -> Vec<(&'static [u8], Expect)> {
        use Command as C;
        use ParseError as E;
        vec![
            (b"CAPA\r\n", Ok(Some(C::Capa))),
            (b"capa\r\n", Ok(Some(C::Capa))),
            (b"CAPA\n", Ok(Some(C::Capa))),
            (b"CAPA", Ok(None)),
            (b"CAPA\r", Ok(None)),
            (
                b"USER alice@example.org\r\n",
                Ok(Some(C::User("alice@example.org".into()))),
            ),
            (b"USER\r\n", Err(E::Syntax)),
            (b"USER a b\r\n", Err(E::Syntax)),
            (b"PASS sec ret \r\n", Ok(Some(C::Pass("sec ret ".into())))),
            (b"PASS\r\n", Err(E::Syntax)),
            (b"PASS \r\n", Err(E::Syntax)),
            (
                b"AUTH\r\n",
                Ok(Some(C::Auth {
                    mechanism: None,
                    initial: None,
                })),
            ),
            (
                b"AUTH plain\r\n",
                Ok(Some(C::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: None,
                })),
            ),
            (
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
                Ok(Some(C::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: Some("AGFsaWNlAHNlY3JldA==".into()),
                })),
            ),
            (b"AUTH PLAIN a b\r\n", Err(E::Syntax)),
            (b"STLS\r\n", Ok(Some(C::Stls))),
            (b"STLS x\r\n", Err(E::Syntax)),
            (b"UTF8\r\n", Ok(Some(C::Utf8))),
            (b"STAT\r\n", Ok(Some(C::Stat))),
            (b"LIST\r\n", Ok(Some(C::List(None)))),
            (b"LIST 1\r\n", Ok(Some(C::List(Some(1))))),
            (b"LIST 99999999999999999999\r\n", Err(E::BadNumber)),
            (b"LIST 0\r\n", Err(E::BadNumber)),
            (b"RETR 1\r\n", Ok(Some(C::Retr(1)))),
            (b"RETR 4294967295\r\n", Ok(Some(C::Retr(u32::MAX)))),
            (b"RETR 0\r\n", Err(E::BadNumber)),
            (b"RETR 4294967296\r\n", Err(E::BadNumber)),
            (b"RETR 99999999999\r\n", Err(E::BadNumber)),
            (b"RETR -1\r\n", Err(E::BadNumber)),
            (b"RETR +1\r\n", Err(E::BadNumber)),
            (b"RETR 0x1\r\n", Err(E::BadNumber)),
            (b"RETR 1.0\r\n", Err(E::BadNumber)),
            (b"RETR\r\n", Err(E::Syntax)),
            (b"RETR  1\r\n", Err(E::Syntax)),
            (b"RETR 1 \r\n", Err(E::Syntax)),
            (b"RETR 1\t\r\n", Err(E::BadNumber)),
            (b"DELE 1\r\n", Ok(Some(C::Dele(1)))),
            (b"DELE 1 2\r\n", Err(E::Syntax)),
            (b"DELE\r\n", Err(E::Syntax)),
            (b"NOOP\r\n", Ok(Some(C::Noop))),
            (b"RSET\r\n", Ok(Some(C::Rset))),
            (b"QUIT\r\n", Ok(Some(C::Quit))),
            (b"QUIT now\r\n", Err(E::Syntax)),
            (b"TOP 1 0\r\n", Ok(Some(C::Top { msg: 1, lines: 0 }))),
            (b"top 2 10\r\n", Ok(Some(C::Top { msg: 2, lines: 10 }))),
            (b"TOP 1 -1\r\n", Err(E::BadNumber)),
            (b"TOP 0 1\r\n", Err(E::BadNumber)),
            (b"TOP 1\r\n", Err(E::Syntax)),
            (b"TOP 1 4294967296\r\n", Err(E::BadNumber)),
            (b"UIDL\r\n", Ok(Some(C::Uidl(None)))),
            (b"UIDL 3\r\n", Ok(Some(C::Uidl(Some(3))))),
            (b"UIDL 0\r\n", Err(E::BadNumber)),
            (b"APOP alice 0123456789abcdef\r\n", Err(E::Unknown)),
            (b"XYZZY\r\n", Err(E::Unknown)),
            (b"\r\n", Err(E::Unknown)),
            (b" CAPA\r\n", Err(E::Unknown)),
            (b"CA\0PA\r\n", Err(E::BadCharacters)),
            (b"CAPA\r\r\n", Err(E::BadCharacters)),
            (b"CA\rPA\r\n", Err(E::BadCharacters)),
            (b"USER \xff\xfe\r\n", Err(E::BadCharacters)),
            (
                b"USER j\xc3\xb6rg@example.org\r\n",
                Ok(Some(C::User("jörg@example.org".into()))),
            ),
        ]
    }

    /// Feeds `input` split into two writes at every byte boundary, and one
    /// byte at a time; the first outcome must be the same every time.
    fn first_outcome_split(input: &[u8], split: usize) -> Expect {
        let mut dec = LineDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&input[..split]);
        match parse(&mut dec, &mut buf) {
            Ok(None) => {}
            other => return other,
        }
        buf.extend_from_slice(&input[split..]);
        parse(&mut dec, &mut buf)
    }

    #[test]
    fn commands_split_at_every_boundary() {
        for (input, expected) in table() {
            for split in 0..=input.len() {
                assert_eq!(
                    first_outcome_split(input, split),
                    expected,
                    "input {:?} split at {split}",
                    String::from_utf8_lossy(input)
                );
            }
            // one byte at a time
            let mut dec = LineDecoder::new();
            let mut buf = BytesMut::new();
            let mut got = Ok(None);
            for &b in input {
                buf.extend_from_slice(&[b]);
                got = parse(&mut dec, &mut buf);
                if !matches!(got, Ok(None)) {
                    break;
                }
            }
            assert_eq!(
                got,
                expected,
                "bytewise {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn line_limit_is_255_including_crlf() {
        // 253 + CRLF = 255: accepted (as PASS, whose argument is free-form).
        let mut ok = b"PASS ".to_vec();
        ok.resize(253, b'x');
        ok.extend_from_slice(b"\r\n");
        assert_eq!(ok.len(), 255);
        let mut dec = LineDecoder::new();
        let mut buf = BytesMut::from(&ok[..]);
        assert!(matches!(
            parse(&mut dec, &mut buf),
            Ok(Some(Command::Pass(_)))
        ));

        // 254 + CRLF = 256: refused, at every split.
        let mut long = b"PASS ".to_vec();
        long.resize(254, b'x');
        long.extend_from_slice(b"\r\nNOOP\r\n");
        for split in 0..=long.len() {
            let mut dec = LineDecoder::new();
            let mut buf = BytesMut::from(&long[..split]);
            let mut outcomes = Vec::new();
            loop {
                match parse(&mut dec, &mut buf) {
                    Ok(None) => break,
                    o => outcomes.push(o),
                }
            }
            buf.extend_from_slice(&long[split..]);
            loop {
                match parse(&mut dec, &mut buf) {
                    Ok(None) => break,
                    o => outcomes.push(o),
                }
            }
            assert_eq!(
                outcomes,
                vec![Err(ParseError::LineTooLong), Ok(Some(Command::Noop))],
                "split {split}"
            );
        }
    }

    #[test]
    fn three_hundred_octet_command_is_refused_and_endless_line_is_bounded() {
        let mut dec = LineDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'A'; 300]);
        assert_eq!(parse(&mut dec, &mut buf), Err(ParseError::LineTooLong));
        // A megabyte without LF, fed in pieces: never reported again, buffer stays empty.
        for _ in 0..256 {
            buf.extend_from_slice(&[b'B'; 4096]);
            assert_eq!(parse(&mut dec, &mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"tail\r\nSTAT\r\n");
        assert_eq!(parse(&mut dec, &mut buf), Ok(Some(Command::Stat)));
    }

    #[test]
    fn pipelined_commands_come_out_in_order() {
        let mut dec = LineDecoder::new();
        let mut buf = BytesMut::from(&b"STAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n"[..]);
        let mut got = Vec::new();
        while let Ok(Some(c)) = parse(&mut dec, &mut buf) {
            got.push(c);
        }
        assert_eq!(
            got,
            vec![
                Command::Stat,
                Command::List(None),
                Command::Retr(1),
                Command::Quit
            ]
        );
    }

    /// A small deterministic fuzzer: mutated real commands and random bytes,
    /// in random chunkings. Nothing may panic, the buffer stays bounded, and
    /// every complete line yields exactly one outcome.
    #[test]
    fn fuzz_decoder_and_parser() {
        let seeds: &[&[u8]] = &[
            b"USER alice@example.org\r\n",
            b"PASS x y\r\n",
            b"RETR 4294967295\r\n",
            b"TOP 1 0\r\n",
            b"AUTH PLAIN =\r\n",
            b"LIST 1\n",
            b"UIDL\r\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..(next() % 4) {
                let seed = seeds[(next() % seeds.len() as u64) as usize];
                input.extend_from_slice(seed);
            }
            for _ in 0..(next() % 6) {
                let pos = (next() % (input.len() as u64 + 1)) as usize;
                let byte = match next() % 5 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b' ',
                    3 => b'0' + (next() % 10) as u8,
                    _ => next() as u8,
                };
                input.insert(pos, byte);
            }
            if next() % 10 == 0 {
                input.extend(std::iter::repeat_n(b'x', (next() % 600) as usize));
            }
            let mut dec = LineDecoder::new();
            let mut buf = BytesMut::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() % 64) as usize;
                let (chunk, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                buf.extend_from_slice(chunk);
                while let Ok(Some(_)) | Err(_) = parse(&mut dec, &mut buf) {}
                assert!(buf.len() < MAX_COMMAND_LINE, "buffer grew to {}", buf.len());
            }
        }
    }

    #[test]
    fn replies_serialise() {
        assert_eq!(Reply::ok("hi").to_bytes(), b"+OK hi\r\n");
        assert_eq!(Reply::ok("").to_bytes(), b"+OK\r\n");
        assert_eq!(Reply::err("no").to_bytes(), b"-ERR no\r\n");
        assert_eq!(
            Reply::err_code(RespCode::InUse, "locked").to_bytes(),
            b"-ERR [IN-USE] locked\r\n"
        );
        assert_eq!(
            Reply::err_code(RespCode::SysTemp, "x").to_bytes(),
            b"-ERR [SYS/TEMP] x\r\n"
        );
        assert_eq!(
            Reply::multi("list", vec!["1 10".into(), ".dot".into()]).to_bytes(),
            b"+OK list\r\n1 10\r\n..dot\r\n.\r\n"
        );
        assert_eq!(Reply::Continue(String::new()).to_bytes(), b"+ \r\n");
        // No line injection through texts.
        assert_eq!(Reply::err("a\r\n+OK b").to_bytes(), b"-ERR a  +OK b\r\n");
        assert!(Reply::err("x").is_err());
        assert!(!Reply::ok("x").is_err());
    }
}
