//! Enhanced mail system status codes (RFC 3463 §2): `class.subject.detail`.

use std::fmt;

/// An RFC 3463 status code such as `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedStatus {
    /// 2.0.0: success, nothing more to say.
    pub const SUCCESS: Self = Self::new(2, 0, 0);
    /// 2.1.0: other address status (the sender is fine).
    pub const SENDER_OK: Self = Self::new(2, 1, 0);
    /// 2.1.5: destination address valid.
    pub const DESTINATION_OK: Self = Self::new(2, 1, 5);
    /// 2.5.0: other or undefined protocol status (VRFY's 252).
    pub const PROTOCOL_OK: Self = Self::new(2, 5, 0);
    /// 2.7.0: other security status (AUTH succeeded, RFC 4954 §6).
    pub const SECURITY_OK: Self = Self::new(2, 7, 0);
    /// 4.3.0: other or undefined mail system status (store unreachable).
    pub const TEMP_SYSTEM: Self = Self::new(4, 3, 0);
    /// 4.3.1: mail system full.
    pub const SYSTEM_FULL: Self = Self::new(4, 3, 1);
    /// 4.3.2: system not accepting network messages (shutting down).
    pub const NOT_ACCEPTING: Self = Self::new(4, 3, 2);
    /// 4.4.1: no answer from host.
    pub const NO_ANSWER: Self = Self::new(4, 4, 1);
    /// 4.4.2: bad connection (timeout).
    pub const BAD_CONNECTION: Self = Self::new(4, 4, 2);
    /// 4.5.3: too many recipients.
    pub const TOO_MANY_RECIPIENTS: Self = Self::new(4, 5, 3);
    /// 4.7.0: other security status, transient (throttling, limits).
    pub const TEMP_SECURITY: Self = Self::new(4, 7, 0);
    /// 5.0.0: other undefined status.
    pub const PERMANENT: Self = Self::new(5, 0, 0);
    /// 5.1.1: bad destination mailbox address (user unknown).
    pub const USER_UNKNOWN: Self = Self::new(5, 1, 1);
    /// 5.1.3: bad destination mailbox address syntax.
    pub const BAD_ADDRESS_SYNTAX: Self = Self::new(5, 1, 3);
    /// 5.3.4: message too big for system.
    pub const TOO_BIG: Self = Self::new(5, 3, 4);
    /// 5.5.1: invalid command.
    pub const INVALID_COMMAND: Self = Self::new(5, 5, 1);
    /// 5.5.2: syntax error.
    pub const SYNTAX_ERROR: Self = Self::new(5, 5, 2);
    /// 5.5.4: invalid command arguments.
    pub const INVALID_ARGUMENTS: Self = Self::new(5, 5, 4);
    /// 5.6.7: non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    pub const NEEDS_UTF8: Self = Self::new(5, 6, 7);
    /// 5.7.0: other security status (authentication or TLS required).
    pub const SECURITY: Self = Self::new(5, 7, 0);
    /// 5.7.1: delivery not authorized (relay denied, sender not owned).
    pub const NOT_AUTHORIZED: Self = Self::new(5, 7, 1);
    /// 5.7.8: authentication credentials invalid (RFC 4954 §6).
    pub const BAD_CREDENTIALS: Self = Self::new(5, 7, 8);

    /// A code from its three parts.
    #[must_use]
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class "." subject "." detail` (RFC 3463 §2: class is 2, 4
    /// or 5; subject and detail are 1 to 3 digits).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let (Some(class), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let number = |p: &str, max: usize| {
            (!p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
        };
        let class = u8::try_from(number(class, 1)?).ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Self::new(class, number(subject, 3)?, number(detail, 3)?))
    }

    /// The class digit: 2 success, 4 persistent transient, 5 permanent.
    #[must_use]
    pub fn class(self) -> u8 {
        self.class
    }

    /// The subject (RFC 3463 §3: 1 address, 2 mailbox, 3 mail system, ...).
    #[must_use]
    pub fn subject(self) -> u16 {
        self.subject
    }

    /// The detail within the subject.
    #[must_use]
    pub fn detail(self) -> u16 {
        self.detail
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(
            EnhancedStatus::parse("5.1.1"),
            Some(EnhancedStatus::USER_UNKNOWN)
        );
        assert_eq!(
            EnhancedStatus::parse("4.123.999").map(|s| s.to_string()),
            Some("4.123.999".into())
        );
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "55.1.1", "5..1", "5.1.", "5.1234.1", "a.b.c",
            "+5.1.1", "5.1.1 ",
        ] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }
}
