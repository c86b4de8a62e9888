//! SASL messages of AUTH PLAIN (RFC 4616) and AUTH LOGIN
//! (draft-murchison-sasl-login), base64 as RFC 4954 §4 carries them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (a full address).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A SASL response that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// "*": the client cancels (RFC 4954 §4).
    #[error("cancelled")]
    Cancelled,
    /// Not base64, or not UTF-8.
    #[error("cannot decode")]
    Decode,
    /// Not `[authzid] NUL authcid NUL passwd`.
    #[error("malformed PLAIN message")]
    Malformed,
    /// RFC 4616 §2: an authorization identity other than the authentication
    /// identity; we do not allow acting as another user.
    #[error("authzid differs from authcid")]
    AuthzMismatch,
}

/// Decodes one base64 response line to text; "=" is the empty response.
///
/// # Errors
/// [`SaslError::Cancelled`] for "*", [`SaslError::Decode`] otherwise.
pub fn decode_text(line: &str) -> Result<String, SaslError> {
    let line = line.trim_end();
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(String::new());
    }
    let bytes = STANDARD.decode(line).map_err(|_| SaslError::Decode)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Decode)
}

/// Decodes an AUTH PLAIN response.
///
/// # Errors
/// See [`SaslError`].
pub fn decode_plain(line: &str) -> Result<Credentials, SaslError> {
    let text = decode_text(line)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzMismatch);
    }
    Ok(Credentials {
        username: authcid.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain() {
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
    fn text() {
        assert_eq!(decode_text("="), Ok(String::new()));
        assert_eq!(decode_text(&b64("alice")), Ok("alice".into()));
        assert_eq!(
            decode_text(&STANDARD.encode([0xff, 0xfe])),
            Err(SaslError::Decode)
        );
    }
}
