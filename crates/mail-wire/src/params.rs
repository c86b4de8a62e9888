//! ESMTP parameters of MAIL FROM and RCPT TO (RFC 5321 §4.1.2
//! `Mail-parameters` / `Rcpt-parameters`): SIZE (RFC 1870), BODY
//! (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), DSN (RFC 3461: RET, ENVID,
//! NOTIFY, ORCPT), AUTH (RFC 4954 §5); and xtext (RFC 3461 §4).

/// RFC 3461 §4.4: ENVID at most 100 characters.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: ORCPT at most 500 characters.
pub const MAX_ORCPT: usize = 500;
/// Most parameters on one command.
pub const MAX_PARAMS: usize = 16;
/// Longest decimal number we parse for SIZE/BDAT (u64 has 20 digits).
const MAX_DIGITS: usize = 20;

/// BODY= values (RFC 6152 §2, RFC 3030 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// 7BIT.
    SevenBit,
    /// 8BITMIME.
    EightBitMime,
}

impl BodyType {
    /// The keyword as stored in the queue.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
        }
    }
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 declared size.
    pub size: Option<u64>,
    /// RFC 6152 BODY.
    pub body: Option<BodyType>,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 RET ("FULL" / "HDRS").
    pub ret: Option<String>,
    /// RFC 3461 ENVID (xtext, as received).
    pub envid: Option<String>,
    /// RFC 8689 §4.1 REQUIRETLS (no value).
    pub requiretls: bool,
}

/// RFC 3461 §4.1 NOTIFY bits, the same values as `mailstore.v1.Notify`.
pub mod notify {
    /// NEVER.
    pub const NEVER: u32 = 1;
    /// SUCCESS.
    pub const SUCCESS: u32 = 2;
    /// FAILURE.
    pub const FAILURE: u32 = 4;
    /// DELAY.
    pub const DELAY: u32 = 8;
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// Bit set of [`notify`] values; 0 when not given.
    pub notify: u32,
    /// RFC 3461 ORCPT, as received ("rfc822;user@example.org").
    pub orcpt: Option<String>,
}

/// Why a parameter list was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Not `SP esmtp-keyword ["=" esmtp-value]`, or too many.
    #[error("syntax error")]
    Syntax,
    /// Unknown or unoffered parameter (RFC 5321 §4.1.1.11: 555).
    #[error("unknown parameter")]
    Unknown,
    /// A parameter with a bad value or given twice.
    #[error("bad parameter value")]
    BadValue,
    /// BODY=BINARYMIME or another body type we do not offer.
    #[error("unsupported body type")]
    BodyType,
    /// A number larger than we could ever accept.
    #[error("number too large")]
    TooBig,
}

/// `key[=value]` pairs after the path: empty, or starting with a space;
/// keys upper-cased, each at most once.
///
/// # Errors
/// [`ParamError::Syntax`], [`ParamError::BadValue`] for a repeated key.
pub fn split_params(s: &str) -> Result<Vec<(String, Option<&str>)>, ParamError> {
    if !s.is_empty() && !s.starts_with(' ') {
        return Err(ParamError::Syntax);
    }
    let mut out = Vec::new();
    for p in s.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.find('=') {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        };
        // RFC 5321 §4.1.2 esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if k.is_empty()
            || !k.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ParamError::Syntax);
        }
        let key = k.to_ascii_uppercase();
        if out
            .iter()
            .any(|(seen, _): &(String, Option<&str>)| *seen == key)
        {
            return Err(ParamError::BadValue);
        }
        out.push((key, v));
    }
    if out.len() > MAX_PARAMS {
        return Err(ParamError::Syntax);
    }
    Ok(out)
}

/// Parses the parameters of MAIL FROM (the text after the `>`).
///
/// # Errors
/// See [`ParamError`].
pub fn parse_mail(tail: &str) -> Result<MailParams, ParamError> {
    let mut p = MailParams::default();
    for (key, value) in split_params(tail)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                p.size = Some(parse_decimal(v).map_err(|e| {
                    if e == ParamError::TooBig {
                        e
                    } else {
                        ParamError::BadValue
                    }
                })?);
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(ParamError::BodyType),
                });
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("REQUIRETLS", None) => p.requiretls = true,
            ("RET", Some(v)) => {
                let v = v.to_ascii_uppercase();
                if v != "FULL" && v != "HDRS" {
                    return Err(ParamError::BadValue);
                }
                p.ret = Some(v);
            }
            ("ENVID", Some(v)) => {
                if v.len() > MAX_ENVID || !is_xtext(v) {
                    return Err(ParamError::BadValue);
                }
                p.envid = Some(v.to_string());
            }
            // RFC 4954 §5: AUTH=<mailbox> is informational; we accept and
            // ignore it (the authenticated identity comes from AUTH itself).
            ("AUTH", Some(v)) => {
                if !is_xtext(v) && v != "<>" {
                    return Err(ParamError::BadValue);
                }
            }
            ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH", None)
            | ("SMTPUTF8" | "REQUIRETLS", Some(_)) => {
                return Err(ParamError::BadValue);
            }
            _ => return Err(ParamError::Unknown),
        }
    }
    Ok(p)
}

/// Parses the parameters of RCPT TO (the text after the `>`).
///
/// # Errors
/// See [`ParamError`].
pub fn parse_rcpt(tail: &str) -> Result<RcptParams, ParamError> {
    let mut p = RcptParams::default();
    for (key, value) in split_params(tail)? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => p.notify = parse_notify(v)?,
            ("ORCPT", Some(v)) => {
                // RFC 3461 §4.2: addr-type ";" xtext
                let ok = v.len() <= MAX_ORCPT
                    && v.split_once(';').is_some_and(|(t, x)| {
                        !t.is_empty()
                            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                            && !x.is_empty()
                            && is_xtext(x)
                    });
                if !ok {
                    return Err(ParamError::BadValue);
                }
                p.orcpt = Some(v.to_string());
            }
            ("NOTIFY" | "ORCPT", None) => return Err(ParamError::BadValue),
            _ => return Err(ParamError::Unknown),
        }
    }
    Ok(p)
}

/// RFC 3461 §4.1: "NEVER" or a comma list of SUCCESS, FAILURE, DELAY.
///
/// # Errors
/// [`ParamError::BadValue`].
pub fn parse_notify(v: &str) -> Result<u32, ParamError> {
    let mut bits = 0;
    for item in v.split(',') {
        let bit = match item.to_ascii_uppercase().as_str() {
            "NEVER" => notify::NEVER,
            "SUCCESS" => notify::SUCCESS,
            "FAILURE" => notify::FAILURE,
            "DELAY" => notify::DELAY,
            _ => return Err(ParamError::BadValue),
        };
        if bits & bit != 0 {
            return Err(ParamError::BadValue);
        }
        bits |= bit;
    }
    if bits & notify::NEVER != 0 && bits != notify::NEVER {
        return Err(ParamError::BadValue);
    }
    Ok(bits)
}

/// A decimal number without sign; more digits than a u64 holds is
/// [`ParamError::TooBig`].
///
/// # Errors
/// [`ParamError::Syntax`] for anything but digits, [`ParamError::TooBig`].
pub fn parse_decimal(s: &str) -> Result<u64, ParamError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParamError::Syntax);
    }
    if s.len() > MAX_DIGITS {
        return Err(ParamError::TooBig);
    }
    s.parse::<u64>().map_err(|_| ParamError::TooBig)
}

/// RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = %d33-42 / %d44-60 /
/// %d62-126, hexchar = "+" 2(%d48-57 / %d65-70).
#[must_use]
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(b.get(i + 1).copied().is_some_and(hex)
                    && b.get(i + 2).copied().is_some_and(hex))
                {
                    return false;
                }
                i += 3;
            }
            33..=42 | 44..=60 | 62..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3461 §4: encodes bytes as xtext (`+`, `=`, and anything outside
/// `!`..`~` become `+XX`).
#[must_use]
pub fn xtext_encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        match b {
            33..=42 | 44..=60 | 62..=126 => out.push(char::from(b)),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// RFC 3461 §4: decodes xtext; `None` when it is not valid xtext.
#[must_use]
pub fn xtext_decode(s: &str) -> Option<Vec<u8>> {
    if !is_xtext(s) {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext() {
        assert!(is_xtext("abc+2B"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("abc+"));
        assert!(!is_xtext("a b"));
        assert!(!is_xtext("a=b"));
        assert!(!is_xtext("+zz"));
        assert_eq!(xtext_encode(b"a+b=c d\xff"), "a+2Bb+3Dc+20d+FF");
        assert_eq!(
            xtext_decode("a+2Bb+3Dc+20d+FF").as_deref(),
            Some(&b"a+b=c d\xff"[..])
        );
        assert_eq!(xtext_decode("a+2"), None);
        for raw in [&b""[..], b"user@example.org", b"+++", b"\x00\x7f"] {
            let enc = xtext_encode(raw);
            assert!(is_xtext(&enc));
            assert_eq!(xtext_decode(&enc).as_deref(), Some(raw));
        }
    }

    #[test]
    fn lists() {
        assert_eq!(split_params(""), Ok(vec![]));
        assert_eq!(split_params("X"), Err(ParamError::Syntax));
        assert_eq!(split_params(" -X"), Err(ParamError::Syntax));
        assert_eq!(split_params(" a b A"), Err(ParamError::BadValue));
        let many: String = (0..17).map(|i| format!(" K{i}")).collect();
        assert_eq!(split_params(&many), Err(ParamError::Syntax));
        assert_eq!(
            parse_rcpt(" notify=delay"),
            Ok(RcptParams {
                notify: notify::DELAY,
                orcpt: None
            })
        );
        assert_eq!(parse_decimal("007"), Ok(7));
        assert_eq!(parse_decimal("+7"), Err(ParamError::Syntax));
    }
}
