//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, UTF-8.

use super::{Credentials, SaslError, decode_base64};

/// A decoded PLAIN message. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// The authorization identity, when one was given (RFC 4616 §2).
    pub authzid: Option<String>,
    /// The authentication identity (never empty).
    pub authcid: String,
    /// The password (may be empty: whether that is acceptable is the
    /// caller's policy, see [`Plain::into_credentials`]).
    pub password: String,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Plain {
    /// RFC 4616 §2: the server may refuse an authzid it does not allow; we
    /// never let one user act as another, so an authzid must equal the
    /// authcid.
    ///
    /// # Errors
    /// [`SaslError::AuthzMismatch`].
    pub fn check_authzid(&self) -> Result<(), SaslError> {
        match &self.authzid {
            Some(z) if *z != self.authcid => Err(SaslError::AuthzMismatch),
            _ => Ok(()),
        }
    }

    /// The user name and password, after [`Plain::check_authzid`] and
    /// refusing an empty password.
    ///
    /// # Errors
    /// [`SaslError::Malformed`] for an empty password,
    /// [`SaslError::AuthzMismatch`].
    pub fn into_credentials(self) -> Result<Credentials, SaslError> {
        if self.password.is_empty() {
            return Err(SaslError::Malformed);
        }
        self.check_authzid()?;
        Ok(Credentials {
            username: self.authcid,
            password: self.password,
        })
    }
}

/// Parses a raw (already base64-decoded) PLAIN message. Exactly two NULs;
/// every part UTF-8; the authcid non-empty.
///
/// # Errors
/// [`SaslError::Malformed`].
pub fn parse(raw: &[u8]) -> Result<Plain, SaslError> {
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| SaslError::Malformed)
    };
    let (authzid, authcid, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if authcid.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Plain {
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid,
        password,
    })
}

/// Decodes a base64 PLAIN response (RFC 4954 §4 / RFC 5034 §4 /
/// RFC 4959): "*" cancels, then [`parse`].
///
/// # Errors
/// [`SaslError::Cancelled`], [`SaslError::Decode`] (not base64),
/// [`SaslError::Malformed`].
pub fn decode(line: &[u8]) -> Result<Plain, SaslError> {
    parse(&decode_base64(line)?)
}

/// The SMTP receiver's rule: [`decode`], then
/// [`Plain::into_credentials`]. Undecodable text is [`SaslError::Decode`].
///
/// # Errors
/// See [`SaslError`].
pub fn decode_credentials(line: &str) -> Result<Credentials, SaslError> {
    let raw = decode_base64(line.as_bytes())?;
    if std::str::from_utf8(&raw).is_err() {
        return Err(SaslError::Decode);
    }
    parse(&raw)?.into_credentials()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    /// The table smtp-in has always used (`decode_plain`).
    #[test]
    fn plain() {
        let decode_plain = decode_credentials;
        let c = decode_plain(&b64("\0alice@example.org\0secret")).expect("valid");
        assert_eq!(c.username, "alice@example.org");
        assert_eq!(c.password, "secret");
        assert!(!format!("{c:?}").contains("secret"));
        assert!(decode_plain(&b64("alice@example.org\0alice@example.org\0pw")).is_ok());
        assert_eq!(
            decode_plain(&b64("bob@x\0alice@x\0pw")),
            Err(SaslError::AuthzMismatch)
        );
        assert_eq!(decode_plain(&b64("\0alice")), Err(SaslError::Malformed));
        assert_eq!(
            decode_plain(&b64("\0alice\0pw\0x")),
            Err(SaslError::Malformed)
        );
        assert_eq!(decode_plain(&b64("\0\0pw")), Err(SaslError::Malformed));
        assert_eq!(decode_plain("!!!"), Err(SaslError::Decode));
        assert_eq!(decode_plain("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_plain(&"A".repeat(100_001)), Err(SaslError::Decode));
    }

    #[test]
    fn raw_messages() {
        let p = parse(b"\0alice\0").expect("empty password parses");
        assert_eq!((p.authzid, p.password.as_str()), (None, ""));
        assert!(!format!("{:?}", parse(b"z\0a\0hunter2")).contains("hunter2"));
        assert_eq!(parse(b"\0\xff\0pw"), Err(SaslError::Malformed));
        assert_eq!(
            parse(b"bob\0alice\0pw").and_then(|p| p.check_authzid()),
            Err(SaslError::AuthzMismatch)
        );
        assert_eq!(
            decode(b64("\0alice\0").as_bytes()).map(|p| p.authcid),
            Ok("alice".into())
        );
        assert_eq!(decode(b"=").err(), Some(SaslError::Malformed));
        assert_eq!(decode(b"%%%").err(), Some(SaslError::Decode));
    }
}
