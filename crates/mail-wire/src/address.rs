//! Addresses: [`Domain`] (IDNA, RFC 5890/5891 via the `idna` crate),
//! [`LocalPart`] (RFC 5321 §4.1.2 `Local-part`, UTF-8 per RFC 6531 §3.3)
//! and [`Address`] = `local@domain`, each validated once at construction.

use std::fmt;

/// RFC 5321 §4.5.3.1.1: maximum local-part length.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum domain length.
pub const MAX_DOMAIN: usize = 255;
/// RFC 1035 §2.3.4: maximum label length.
pub const MAX_LABEL: usize = 63;

/// Why a domain, local part or address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not the RFC 5321 syntax, or not a valid IDNA name.
    #[error("bad address syntax")]
    Syntax,
    /// Longer than RFC 5321 §4.5.3.1 allows.
    #[error("address too long")]
    TooLong,
}

/// A domain name, validated once: `as_str` is the lower-cased ASCII form
/// (A-labels, RFC 5890 §2.3.2.1) for DNS and comparisons; `as_utf8` keeps
/// the lower-cased form the name was given in (U-labels stay U-labels), which
/// is what an SMTPUTF8 (RFC 6531) envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    ascii: String,
    utf8: String,
}

/// RFC 5321 §4.1.2 `sub-domain = Let-dig [Ldh-str]` in ASCII.
fn is_ldh_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Domain {
    /// Parses a domain name (no trailing dot, no address literal). A
    /// non-ASCII name is converted with UTS #46 / IDNA2008 (`idna` crate,
    /// strict STD3 rules) and must come out as a valid ASCII name.
    ///
    /// # Errors
    /// [`AddressError`].
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Syntax);
        }
        if s.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong);
        }
        let ascii = if s.is_ascii() {
            s.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii_strict(s).map_err(|_| AddressError::Syntax)?
        };
        if ascii.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong);
        }
        if !ascii.split('.').all(is_ldh_label) {
            return Err(AddressError::Syntax);
        }
        // The name as given, lower-cased, is what we print; it must parse
        // back to the same name: no more than 255 octets, the same A-labels,
        // and only letters, digits and hyphens — the characters a UTF-8
        // path may carry (`path.rs`, RFC 6531 §3.3). Lower case can yield
        // a combining mark ("İ" → "i" + U+0307) and a mapping a symbol
        // ("¼" → "1⁄4"): such names are refused (found by fuzz/smtp_envelope).
        let utf8 = s.to_lowercase();
        if !s.is_ascii() {
            let label_char = |c: char| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '.')
                    || (!c.is_ascii() && c.is_alphanumeric())
            };
            if utf8.len() > MAX_DOMAIN {
                return Err(AddressError::TooLong);
            }
            if !utf8.chars().all(label_char)
                || idna::domain_to_ascii_strict(&utf8).ok().as_deref() != Some(ascii.as_str())
            {
                return Err(AddressError::Syntax);
            }
        }
        Ok(Self { ascii, utf8 })
    }

    /// The lower-cased ASCII (A-label) form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.ascii
    }

    /// The lower-cased form as given (U-labels kept), for SMTPUTF8.
    #[must_use]
    pub fn as_utf8(&self) -> &str {
        &self.utf8
    }

    /// True when the name was given with non-ASCII (U-label) characters.
    #[must_use]
    pub fn is_utf8(&self) -> bool {
        !self.utf8.is_ascii()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ascii)
    }
}

/// RFC 5322 atext, plus UTF-8 (RFC 6531 §3.3) when allowed.
pub(crate) fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control())
}

/// `Dot-string = Atom *("." Atom)`.
pub(crate) fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

/// A local part, unquoted, kept as sent (RFC 5321 §2.4: only the receiving
/// host interprets it, so no case folding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPart(String);

impl LocalPart {
    /// A local part from its unquoted content: a dot-string, or any
    /// printable text that will be quoted (RFC 5321 §4.1.2
    /// `Quoted-string`). At most [`MAX_LOCAL_PART`] octets.
    ///
    /// # Errors
    /// [`AddressError`].
    pub fn new(content: impl Into<String>) -> Result<Self, AddressError> {
        let content = content.into();
        if content.is_empty() || content.chars().any(char::is_control) {
            return Err(AddressError::Syntax);
        }
        if content.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        Ok(Self(content))
    }

    /// The unquoted content.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the local part has non-ASCII characters.
    #[must_use]
    pub fn is_utf8(&self) -> bool {
        !self.0.is_ascii()
    }

    /// The form written in an address: as is when it is a dot-string,
    /// otherwise quoted with `\` before `\` and `"`.
    #[must_use]
    pub fn to_wire(&self) -> String {
        if is_dot_string(&self.0, true) {
            self.0.clone()
        } else {
            let quoted = self.0.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{quoted}\"")
        }
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_wire())
    }
}

/// `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The local part.
    pub local: LocalPart,
    /// The domain.
    pub domain: Domain,
}

impl Address {
    /// Parses an address as it is stored and configured: `local@domain`,
    /// split at the last `@`; the local part a dot-string (UTF-8 allowed) or
    /// a quoted string.
    ///
    /// # Errors
    /// [`AddressError`].
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::Syntax)?;
        let local = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
            Some(quoted) => unquote(quoted)?,
            None if is_dot_string(local, true) => local.to_string(),
            None => return Err(AddressError::Syntax),
        };
        Ok(Self {
            local: LocalPart::new(local)?,
            domain: Domain::parse(domain)?,
        })
    }

    /// `local@domain` with the domain in ASCII (A-label) form.
    #[must_use]
    pub fn to_ascii_domain(&self) -> String {
        format!("{}@{}", self.local, self.domain.as_str())
    }
}

impl fmt::Display for Address {
    /// `local@domain`, the domain as given (U-labels kept).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain.as_utf8())
    }
}

/// The content of a quoted string without its quotes.
fn unquote(s: &str) -> Result<String, AddressError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(AddressError::Syntax)?),
            '"' => return Err(AddressError::Syntax),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let d = Domain::parse("Example.ORG").expect("valid");
        assert_eq!((d.as_str(), d.as_utf8()), ("example.org", "example.org"));
        let d = Domain::parse("B\u{FC}cher.example").expect("valid IDN");
        assert_eq!(d.as_str(), "xn--bcher-kva.example");
        assert_eq!(d.as_utf8(), "b\u{FC}cher.example");
        assert!(d.is_utf8());
        assert_eq!(d.to_string(), "xn--bcher-kva.example");
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.example",
            "a.b.",
            "a b",
            "\u{2764}\u{FE0F}.",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Domain::parse(&format!("{}.example", "a".repeat(64))),
            Err(AddressError::Syntax)
        );
        assert_eq!(Domain::parse(&"a.".repeat(128)), Err(AddressError::TooLong));
    }

    #[test]
    fn addresses() {
        let a = Address::parse("Alice@Example.ORG").expect("valid");
        assert_eq!(a.local.as_str(), "Alice");
        assert_eq!(a.to_string(), "Alice@example.org");
        let a = Address::parse("\"john doe\"@b\u{FC}cher.example").expect("valid");
        assert_eq!(a.local.as_str(), "john doe");
        assert_eq!(a.to_string(), "\"john doe\"@b\u{FC}cher.example");
        assert_eq!(a.to_ascii_domain(), "\"john doe\"@xn--bcher-kva.example");
        let a = Address::parse("\"a\\\"b@c\"@x.example").expect("valid");
        assert_eq!(a.local.as_str(), "a\"b@c");
        assert_eq!(a.to_string(), "\"a\\\"b@c\"@x.example");
        for bad in [
            "",
            "alice",
            "@x.example",
            "a@",
            "a..b@x.example",
            "a b@x.example",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Address::parse(&format!("{}@x.example", "a".repeat(65))),
            Err(AddressError::TooLong)
        );
    }

    /// Every domain we hold prints in a form that parses back to it: a name
    /// whose lower case holds a combining mark ("İ" → "i" + U+0307) is
    /// refused; "¼" is printed as given (fuzz/smtp_envelope).
    #[test]
    fn u_label_form_round_trips() {
        let d = Domain::parse("B\u{fc}cher.example").expect("parses");
        assert_eq!(d.as_utf8(), "b\u{fc}cher.example");
        let again = Domain::parse(d.as_utf8()).expect("printed form parses");
        assert_eq!((again.as_str(), again.as_utf8()), (d.as_str(), d.as_utf8()));
        assert_eq!(
            Domain::parse("a0JJK\u{130}JJRE.exampe"),
            Err(AddressError::Syntax)
        );
        let frac = Domain::parse("b\u{bc}cher.example").expect("kept as given");
        assert_eq!(Domain::parse(frac.as_utf8()), Ok(frac.clone()));
    }
}
