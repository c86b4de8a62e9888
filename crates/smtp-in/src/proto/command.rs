//! SMTP command lines (RFC 5321 §4.1). Paths and ESMTP parameters (SIZE,
//! BODY, SMTPUTF8, DSN, AUTH) are parsed by `mail-wire`.
//!
//! Bytes in, [`Command`] or [`ParseError`] out: no I/O here.

use mail_wire::params::{self, ParamError};
pub use mail_wire::params::{BodyType, MailParams, RcptParams, notify};
use mail_wire::path::{self, ForwardPath, PathError, ReversePath};

/// RFC 5321 §4.5.3.1.4 allows 512 octets for a command line; the DSN
/// extension (RFC 3461 §5) adds up to 500 for ORCPT/ENVID. We accept 1000
/// octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 1000;
/// RFC 4954 §4: a SASL response line may be up to 12288 octets.
pub const MAX_AUTH_LINE: usize = 12_288;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO domain (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// HELO domain.
    Helo(String),
    /// MAIL FROM:<path> params.
    Mail {
        /// Sender.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// RCPT TO:<path> params. The path is parsed by the session (it
    /// depends on the transaction's SMTPUTF8) with [`parse_rcpt_path`].
    Rcpt {
        /// Text between the angle brackets.
        path: String,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// DATA (RFC 5321 §4.1.1.4).
    Data,
    /// BDAT size [LAST] (RFC 3030 §2).
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// Last chunk.
        last: bool,
    },
    /// RSET.
    Rset,
    /// NOOP (argument ignored).
    Noop,
    /// QUIT.
    Quit,
    /// VRFY (argument ignored: answered 252).
    Vrfy,
    /// EXPN (not implemented: 502).
    Expn,
    /// HELP.
    Help,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// AUTH mechanism [initial-response] (RFC 4954 §4).
    Auth {
        /// Upper-cased mechanism name.
        mechanism: String,
        /// Base64 initial response; "=" means empty.
        initial: Option<String>,
    },
}

impl Command {
    /// The verb, for logs (never the arguments: AUTH carries secrets).
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy => "VRFY",
            Self::Expn => "EXPN",
            Self::Help => "HELP",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
        }
    }
}

/// Why a command line was refused. Each maps to one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Unknown verb (500 5.5.2).
    #[error("unknown command")]
    Unknown,
    /// Malformed arguments (501 5.5.4).
    #[error("syntax error")]
    Syntax,
    /// Bad path (501 5.1.3, 553 5.6.7, 554 5.7.1...).
    #[error("bad path: {0}")]
    Path(PathError),
    /// Unknown or unoffered parameter (555 5.5.4).
    #[error("unknown parameter")]
    UnknownParam,
    /// A parameter with a bad value or given twice (501 5.5.4).
    #[error("bad parameter value")]
    BadParamValue,
    /// BODY=BINARYMIME or another body type we do not offer (555).
    #[error("unsupported body type")]
    BodyType,
    /// SIZE larger than we could ever accept (552 5.3.4).
    #[error("size too large")]
    TooBig,
}

impl From<PathError> for ParseError {
    fn from(e: PathError) -> Self {
        Self::Path(e)
    }
}

impl From<ParamError> for ParseError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::Syntax => Self::Syntax,
            ParamError::Unknown => Self::UnknownParam,
            ParamError::BadValue => Self::BadParamValue,
            ParamError::BodyType => Self::BodyType,
            ParamError::TooBig => Self::TooBig,
        }
    }
}

/// Parses one command line, without its CRLF.
///
/// # Errors
/// See [`ParseError`].
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    // RFC 6531 allows UTF-8 in arguments; anything that is not UTF-8 is junk.
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax)?;
    if line.contains(|c: char| c.is_control() && c != '\t') {
        return Err(ParseError::Syntax);
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(ParseError::Syntax)
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim();
            // RFC 5321 §4.1.1.1: a domain or address literal; we take one
            // token, used only in the Received header.
            if domain.is_empty() || domain.contains(' ') || domain.len() > 255 {
                return Err(ParseError::Syntax);
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut parts = rest.split(' ');
            let mechanism = parts.next().unwrap_or_default().to_ascii_uppercase();
            let initial = parts.next().map(str::to_string);
            if mechanism.is_empty() || parts.next().is_some() {
                return Err(ParseError::Syntax);
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(ParseError::Unknown),
    }
}

/// Splits `FROM:<path> params` (RFC 5321 §4.1.1.2: no space is allowed
/// after the colon, but many clients send one; we tolerate it).
fn split_keyword<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), ParseError> {
    let head = rest.get(..keyword.len()).ok_or(ParseError::Syntax)?;
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(ParseError::Syntax);
    }
    let after = rest[keyword.len()..].trim_start_matches(' ');
    Ok(path::split_path(after)?)
}

fn parse_mail(rest: &str) -> Result<Command, ParseError> {
    let (inner, tail) = split_keyword(rest, "FROM:")?;
    let p = params::parse_mail(tail)?;
    let from = path::parse_reverse_path(inner, p.smtputf8)?;
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(rest: &str) -> Result<Command, ParseError> {
    let (inner, tail) = split_keyword(rest, "TO:")?;
    let p = params::parse_rcpt(tail)?;
    Ok(Command::Rcpt {
        path: inner.to_string(),
        params: p,
    })
}

/// Parses the path of a RCPT command once the transaction's SMTPUTF8 is known.
///
/// # Errors
/// See [`PathError`].
pub fn parse_rcpt_path(inner: &str, smtputf8: bool) -> Result<ForwardPath, PathError> {
    path::parse_forward_path(inner, smtputf8)
}

/// RFC 3030 §2: `BDAT SP chunk-size [SP end-marker]`.
fn parse_bdat(rest: &str) -> Result<Command, ParseError> {
    let mut parts = rest.split(' ');
    let size = params::parse_decimal(parts.next().unwrap_or_default())?;
    let last = match parts.next() {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax),
    };
    if parts.next().is_some() {
        return Err(ParseError::Syntax);
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_wire::path::{Host, Mailbox};
    use mail_wire::{Domain, LocalPart};

    fn p(s: &str) -> Result<Command, ParseError> {
        parse_command(s.as_bytes())
    }

    #[test]
    fn simple_verbs() {
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("HELO x"), Ok(Command::Helo("x".into())));
        assert_eq!(p("EHLO"), Err(ParseError::Syntax));
        assert_eq!(p("DATA"), Ok(Command::Data));
        assert_eq!(p("DATA x"), Err(ParseError::Syntax));
        assert_eq!(p("rset"), Ok(Command::Rset));
        assert_eq!(p("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(p("VRFY root"), Ok(Command::Vrfy));
        assert_eq!(p("EXPN staff"), Ok(Command::Expn));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(p("XYZZY"), Err(ParseError::Unknown));
        assert_eq!(p(""), Err(ParseError::Unknown));
        assert_eq!(p("NOOP \0"), Err(ParseError::Syntax));
        assert_eq!(parse_command(b"EHLO \xff"), Err(ParseError::Syntax));
    }

    #[test]
    fn mail_from() {
        let got = p("MAIL FROM:<a@B.example> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1");
        let want = Command::Mail {
            from: ReversePath::Mailbox(Mailbox {
                local: LocalPart::new("a").expect("valid"),
                host: Host::Domain(Domain::parse("b.example").expect("valid")),
            }),
            params: MailParams {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: false,
                ret: Some("HDRS".into()),
                envid: Some("QQ+2B1".into()),
                requiretls: false,
            },
        };
        assert_eq!(got, Ok(want));
        // RFC 8689 §4.1: REQUIRETLS takes no value.
        assert!(matches!(
            p("MAIL FROM:<a@b.example> REQUIRETLS"),
            Ok(Command::Mail {
                params: MailParams {
                    requiretls: true,
                    ..
                },
                ..
            })
        ));
        assert!(matches!(
            p("MAIL FROM:<>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                ..
            })
        ));
        assert!(matches!(p("mail from: <>"), Ok(Command::Mail { .. })));
        assert!(matches!(
            p("MAIL FROM:<j\u{f6}@x.example> SMTPUTF8"),
            Ok(Command::Mail {
                params: MailParams { smtputf8: true, .. },
                ..
            })
        ));
        assert_eq!(
            p("MAIL FROM:<j\u{f6}@x.example>"),
            Err(ParseError::Path(PathError::NeedsUtf8))
        );
    }

    /// threat model T23.
    #[test]
    fn hostile_params() {
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE=99999999999999999999999"),
            Err(ParseError::TooBig)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE=18446744073709551616"),
            Err(ParseError::TooBig)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE=-1"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE="),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> BODY=WHATEVER"),
            Err(ParseError::BodyType)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
            Err(ParseError::BodyType)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> XFOO=1"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> SIZE=1 SIZE=2"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> ENVID=a=b"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> ENVID=a+2"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(p("MAIL FROM:<a@b.example>SIZE=1"), Err(ParseError::Syntax));
        assert_eq!(p("MAIL TO:<a@b.example>"), Err(ParseError::Syntax));
        assert_eq!(
            p("MAIL FROM:a@b.example"),
            Err(ParseError::Path(PathError::Syntax))
        );
        assert_eq!(p("MAIL"), Err(ParseError::Syntax));
        assert_eq!(
            p("MAIL FROM:<a@b.example> SMTPUTF8=yes"),
            Err(ParseError::BadParamValue)
        );
    }

    #[test]
    fn rcpt_to() {
        let got =
            p("RCPT TO:<u@ours.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+40ours.example");
        assert_eq!(
            got,
            Ok(Command::Rcpt {
                path: "u@ours.example".into(),
                params: RcptParams {
                    notify: notify::SUCCESS | notify::FAILURE,
                    orcpt: Some("rfc822;u+40ours.example".into()),
                },
            })
        );
        assert_eq!(
            p("RCPT TO:<u@x> NOTIFY=NEVER,SUCCESS"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("RCPT TO:<u@x> NOTIFY=SOMETIMES"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(
            p("RCPT TO:<u@x> ORCPT=nosemicolon"),
            Err(ParseError::BadParamValue)
        );
        assert_eq!(p("RCPT TO:<u@x> FOO"), Err(ParseError::UnknownParam));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            p("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            p("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            p("BDAT 4294967296 LAST"),
            Ok(Command::Bdat {
                size: 4_294_967_296,
                last: true
            })
        );
        assert_eq!(
            p("BDAT 999999999999999999999 LAST"),
            Err(ParseError::TooBig)
        );
        assert_eq!(p("BDAT -1"), Err(ParseError::Syntax));
        assert_eq!(p("BDAT 1 FIRST"), Err(ParseError::Syntax));
        assert_eq!(p("BDAT"), Err(ParseError::Syntax));
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(p("AUTH"), Err(ParseError::Syntax));
        assert_eq!(p("AUTH PLAIN a b"), Err(ParseError::Syntax));
    }
}
