//! Envelope addresses: `Reverse-path` and `Forward-path` of RFC 5321 §4.1.2,
//! with the UTF-8 extension of RFC 6531 §3.3.
//!
//! The parser is deliberately strict about everything that was ever used to
//! turn a mail server into an open relay: `%`-hacks and `!`-paths in the
//! local part, quoted local parts hiding an `@`, several `@`, address
//! literals, trailing-dot domains. Those are reported as
//! [`PathError::RelayTrick`] (answered `554 5.7.1`) rather than being
//! interpreted. Source routes (`<@a,@b:user@c>`) are parsed and dropped, as
//! RFC 5321 §4.1.1.3 and Appendix C ask; what remains is validated normally.

use crate::address::{Domain, LocalPart, MAX_DOMAIN, MAX_LOCAL_PART, is_dot_string};

/// RFC 5321 §4.5.3.1.3: maximum path length including the angle brackets.
pub const MAX_PATH: usize = 256;

/// The host part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A domain name.
    Domain(Domain),
    /// An address literal with its brackets, lower-cased (`[192.0.2.1]`,
    /// RFC 5321 §4.1.3).
    Literal(String),
}

/// A mailbox `local@domain`. The domain is lower-cased; the local part is
/// kept as sent (RFC 5321 §2.4: only the receiving host interprets it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Local part, unquoted.
    pub local: LocalPart,
    /// Domain name or address literal.
    pub host: Host,
}

impl Mailbox {
    /// `local@domain` with the domain as the client wrote it, lower-cased
    /// (U-labels kept), the local part quoted again when it is not a
    /// dot-string (only possible for senders, see [`parse_reverse_path`]).
    #[must_use]
    pub fn address(&self) -> String {
        format!("{}@{}", self.local.to_wire(), self.host_str())
    }

    /// The domain as written (lower-cased), or the literal with brackets.
    #[must_use]
    pub fn host_str(&self) -> &str {
        match &self.host {
            Host::Domain(d) => d.as_utf8(),
            Host::Literal(l) => l,
        }
    }

    /// The domain is an address literal (`[192.0.2.1]`).
    #[must_use]
    pub fn is_literal(&self) -> bool {
        matches!(self.host, Host::Literal(_))
    }

    /// The domain, unless it is a literal.
    #[must_use]
    pub fn domain(&self) -> Option<&Domain> {
        match &self.host {
            Host::Domain(d) => Some(d),
            Host::Literal(_) => None,
        }
    }

    /// True when any part is non-ASCII (needs SMTPUTF8).
    #[must_use]
    pub fn is_utf8(&self) -> bool {
        self.local.is_utf8() || !self.host_str().is_ascii()
    }
}

/// MAIL FROM path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: the null sender of bounces (RFC 5321 §4.5.5).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

/// RCPT TO path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3, §4.5.1).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not RFC 5321 syntax.
    #[error("bad address syntax")]
    Syntax,
    /// Longer than RFC 5321 §4.5.3.1 allows.
    #[error("address too long")]
    TooLong,
    /// Non-ASCII without SMTPUTF8 (RFC 6531 §3.5).
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsUtf8,
    /// A construct used to relay through us (`%`, `!`, `@` in a quoted local
    /// part, several `@`, address literal, trailing dot).
    #[error("address form used for relaying")]
    RelayTrick,
}

/// Parses `<...>` at the start of `s`; returns the path text between the
/// brackets and the rest of the line after the `>`.
///
/// # Errors
/// [`PathError::Syntax`] when there are no angle brackets.
pub fn split_path(s: &str) -> Result<(&str, &str), PathError> {
    let rest = s.strip_prefix('<').ok_or(PathError::Syntax)?;
    // A quoted local part may contain '>' only when quoted; scan honouring quotes.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Ok((&rest[..i], &rest[i + 1..])),
            _ => {}
        }
    }
    Err(PathError::Syntax)
}

/// Parses the inside of a MAIL FROM path (without brackets).
///
/// # Errors
/// See [`PathError`].
pub fn parse_reverse_path(inner: &str, utf8: bool) -> Result<ReversePath, PathError> {
    if inner.is_empty() {
        return Ok(ReversePath::Null);
    }
    // A sender address grants nothing, so the relay-trick rules do not
    // apply: "%", "!" and quoted local parts are legal RFC 5321 senders.
    parse_path(inner, utf8, false)
        .map(ReversePath::Mailbox)
        .map_err(|e| {
            if e == PathError::RelayTrick {
                PathError::Syntax
            } else {
                e
            }
        })
}

/// Parses the inside of a RCPT TO path (without brackets).
///
/// # Errors
/// See [`PathError`].
pub fn parse_forward_path(inner: &str, utf8: bool) -> Result<ForwardPath, PathError> {
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    parse_path(inner, utf8, true).map(ForwardPath::Mailbox)
}

/// `strict`: refuse the relay-trick forms (recipients).
fn parse_path(inner: &str, utf8: bool, strict: bool) -> Result<Mailbox, PathError> {
    if inner.len() + 2 > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if !utf8 && !inner.is_ascii() {
        return Err(PathError::NeedsUtf8);
    }
    // RFC 5321 §4.1.2 A-d-l: "@dom,@dom:" source route, parsed and ignored.
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(PathError::Syntax)?;
        for hop in inner[..colon].split(',') {
            let dom = hop.strip_prefix('@').ok_or(PathError::Syntax)?;
            parse_domain(dom, utf8)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    parse_mailbox(mailbox, utf8, strict)
}

fn parse_mailbox(s: &str, utf8: bool, strict: bool) -> Result<Mailbox, PathError> {
    let (local, domain) = if s.starts_with('"') {
        // Quoted-string local part (RFC 5321 §4.1.2).
        let (content, after) = parse_quoted(s)?;
        if !strict {
            if content.is_empty() || (!utf8 && !content.is_ascii()) {
                return Err(PathError::Syntax);
            }
            let domain = after.strip_prefix('@').ok_or(PathError::Syntax)?;
            return finish_mailbox(content, domain, utf8);
        }
        if content.contains(['@', '%', '!']) {
            return Err(PathError::RelayTrick);
        }
        let domain = after.strip_prefix('@').ok_or(PathError::Syntax)?;
        // Accept the quoted form only when it is an ordinary dot-string
        // written with quotes; normalise to the unquoted form.
        if !is_dot_string(&content, utf8) {
            return Err(PathError::Syntax);
        }
        (content, domain)
    } else {
        let at = s.rfind('@').ok_or(PathError::Syntax)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.contains(['@', '"']) || (strict && local.contains(['%', '!'])) {
            return Err(PathError::RelayTrick);
        }
        if !is_dot_string(local, utf8) {
            return Err(PathError::Syntax);
        }
        (local.to_string(), domain)
    };
    finish_mailbox(local, domain, utf8)
}

fn finish_mailbox(local: String, domain: &str, utf8: bool) -> Result<Mailbox, PathError> {
    if local.len() > MAX_LOCAL_PART {
        return Err(PathError::TooLong);
    }
    let local = LocalPart::new(local).map_err(|_| PathError::Syntax)?;
    if domain.starts_with('[') {
        // Address literal (RFC 5321 §4.1.3): valid syntax, but we neither
        // deliver to nor relay for literals.
        if !domain.ends_with(']') || domain.len() < 3 {
            return Err(PathError::Syntax);
        }
        let body = &domain[1..domain.len() - 1];
        if !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
        {
            return Err(PathError::Syntax);
        }
        return Ok(Mailbox {
            local,
            host: Host::Literal(domain.to_ascii_lowercase()),
        });
    }
    let domain = parse_domain(domain, utf8)?;
    Ok(Mailbox {
        local,
        host: Host::Domain(domain),
    })
}

/// Returns the unquoted content and the rest after the closing quote.
fn parse_quoted(s: &str) -> Result<(String, &str), PathError> {
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            // quoted-pairSMTP = %d92 %d32-126
            if !(' '..='~').contains(&c) {
                return Err(PathError::Syntax);
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => return Ok((out, &s[i + 1..])),
            c if c.is_control() => return Err(PathError::Syntax),
            c => out.push(c),
        }
    }
    Err(PathError::Syntax)
}

/// Validates `Domain = sub-domain *("." sub-domain)` (RFC 5321 §4.1.2;
/// U-labels with SMTPUTF8, RFC 6531 §3.3) and makes a [`Domain`] of it.
/// A trailing dot (absolute name) is reported as a relay trick: it names
/// the same domain in a form a naive "is it ours?" comparison misses.
fn parse_domain(s: &str, utf8: bool) -> Result<Domain, PathError> {
    if s.is_empty() {
        return Err(PathError::Syntax);
    }
    if s.len() > MAX_DOMAIN {
        return Err(PathError::TooLong);
    }
    if s.ends_with('.') {
        return Err(PathError::RelayTrick);
    }
    if s.contains(['@', '%', '!']) {
        return Err(PathError::RelayTrick);
    }
    for label in s.split('.') {
        let ok_char = |c: char| {
            c.is_ascii_alphanumeric() || c == '-' || (utf8 && !c.is_ascii() && c.is_alphanumeric())
        };
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(ok_char)
        {
            return Err(PathError::Syntax);
        }
    }
    // A U-label name that IDNA refuses cannot exist in the DNS.
    Domain::parse(s).map_err(|e| match e {
        crate::address::AddressError::TooLong => PathError::TooLong,
        crate::address::AddressError::Syntax => PathError::Syntax,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<ForwardPath, PathError> {
        let (inner, rest) = split_path(s)?;
        assert!(rest.is_empty());
        parse_forward_path(inner, false)
    }

    fn mbox(local: &str, domain: &str) -> ForwardPath {
        ForwardPath::Mailbox(Mailbox {
            local: LocalPart::new(local).expect("valid local part"),
            host: Host::Domain(Domain::parse(domain).expect("valid domain")),
        })
    }

    #[test]
    fn ordinary() {
        assert_eq!(fwd("<alice@Example.ORG>"), Ok(mbox("alice", "example.org")));
        assert_eq!(
            fwd("<a.b+tag@x-y.example>"),
            Ok(mbox("a.b+tag", "x-y.example"))
        );
        assert_eq!(
            fwd("<\"alice\"@example.org>"),
            Ok(mbox("alice", "example.org"))
        );
        assert_eq!(fwd("<PostMaster>"), Ok(ForwardPath::Postmaster));
        assert_eq!(parse_reverse_path("", false), Ok(ReversePath::Null));
    }

    #[test]
    fn source_route_is_dropped() {
        assert_eq!(
            fwd("<@ours.example,@b.example:v@ext.example>"),
            Ok(mbox("v", "ext.example"))
        );
        assert_eq!(
            fwd("<@ours.example:v@ours.example>"),
            Ok(mbox("v", "ours.example"))
        );
        assert_eq!(fwd("<@:v@ours.example>"), Err(PathError::Syntax));
    }

    /// threat model T14: none of these may be read as a local address.
    #[test]
    fn relay_battery() {
        for (input, want) in [
            ("<v%external.example@ours.example>", PathError::RelayTrick),
            ("<\"v@external.example\">", PathError::RelayTrick),
            (
                "<\"v@external.example\"@ours.example>",
                PathError::RelayTrick,
            ),
            ("<v@external.example@ours.example>", PathError::RelayTrick),
            ("<external.example!v@ours.example>", PathError::RelayTrick),
            (
                "<\"v%external.example\"@ours.example>",
                PathError::RelayTrick,
            ),
            ("<v@external.example.>", PathError::RelayTrick),
            ("<v@ours.example.>", PathError::RelayTrick),
            ("<v@>", PathError::Syntax),
            ("<@ours.example>", PathError::Syntax),
            ("<v>", PathError::Syntax),
            ("<v@-a.example>", PathError::Syntax),
            ("<v@a..example>", PathError::Syntax),
            ("<.v@a.example>", PathError::Syntax),
            ("<v\"x\"@a.example>", PathError::RelayTrick),
            ("<v@\u{e9}.example>", PathError::NeedsUtf8),
        ] {
            assert_eq!(fwd(input), Err(want), "{input}");
        }
        // Literals parse, flagged, so the session refuses them.
        match fwd("<v@[192.0.2.1]>") {
            Ok(ForwardPath::Mailbox(m)) => assert!(m.is_literal()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lenient_senders() {
        let rev = |s: &str| parse_reverse_path(s, false);
        let m = |r: Result<ReversePath, PathError>| match r {
            Ok(ReversePath::Mailbox(m)) => m.address(),
            other => panic!("{other:?}"),
        };
        assert_eq!(m(rev("a%b@remote.example")), "a%b@remote.example");
        assert_eq!(m(rev("x!y@remote.example")), "x!y@remote.example");
        assert_eq!(
            m(rev("\"john doe\"@remote.example")),
            "\"john doe\"@remote.example"
        );
        assert_eq!(
            m(rev("\"a\\\"b@c\"@remote.example")),
            "\"a\\\"b@c\"@remote.example"
        );
        assert_eq!(rev("a@b@remote.example"), Err(PathError::Syntax));
        assert_eq!(rev("a@remote.example."), Err(PathError::Syntax));
    }

    #[test]
    fn utf8_when_allowed() {
        let got = parse_forward_path("j\u{f6}rg@b\u{FC}cher.example", true);
        assert_eq!(got, Ok(mbox("j\u{f6}rg", "b\u{FC}cher.example")));
    }

    #[test]
    fn limits() {
        let long_local = format!("<{}@a.example>", "a".repeat(65));
        assert_eq!(fwd(&long_local), Err(PathError::TooLong));
        let long = format!("<a@{}.example>", "a".repeat(300));
        assert_eq!(fwd(&long), Err(PathError::TooLong));
        assert_eq!(split_path("<a@b"), Err(PathError::Syntax));
        assert_eq!(split_path("<\"a>\"@b> X"), Ok(("\"a>\"@b", " X")));
    }
}
