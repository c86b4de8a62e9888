//! SASL messages (RFC 4422) as SMTP AUTH (RFC 4954 §4), IMAP AUTHENTICATE
//! (RFC 9051 §6.2.2) and POP3 AUTH (RFC 5034 §4) carry them: base64
//! responses, `*` to cancel, `=` for an empty initial response.
//!
//! - [`plain`]: PLAIN (RFC 4616).
//! - [`login`]: LOGIN, the de-facto exchange of a base64 user name then a
//!   base64 password (draft-murchison-sasl-login).
//! - [`scram`]: the SCRAM message grammar (RFC 5802 §7); the hashing is the
//!   caller's.
//!
//! Only parsing and rendering lives here: checking credentials is the
//! store's job.

pub mod login;
pub mod plain;
pub mod scram;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Longest base64 response accepted: RFC 4954 §4 lets a SASL response line
/// be 12288 octets.
pub const MAX_ENCODED: usize = 12_288;

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
    /// "*": the client cancels (RFC 4954 §4, RFC 5034 §4, RFC 9051 §6.2.2).
    #[error("cancelled")]
    Cancelled,
    /// Not base64, longer than [`MAX_ENCODED`], or (for text) not UTF-8.
    #[error("cannot decode")]
    Decode,
    /// Not the mechanism's message syntax (for PLAIN:
    /// `[authzid] NUL authcid NUL passwd`, UTF-8, non-empty authcid).
    #[error("malformed SASL message")]
    Malformed,
    /// RFC 4616 §2: an authorization identity other than the authentication
    /// identity; we do not allow acting as another user.
    #[error("authzid differs from authcid")]
    AuthzMismatch,
}

/// Decodes one base64 response line to bytes; "=" is the empty response,
/// "*" cancels. Trailing white space is ignored.
///
/// # Errors
/// [`SaslError::Cancelled`] for "*", [`SaslError::Decode`] otherwise.
pub fn decode_base64(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = match std::str::from_utf8(line) {
        Ok(text) => text.trim_end().as_bytes(),
        Err(_) => line.trim_ascii_end(),
    };
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Vec::new());
    }
    if line.len() > MAX_ENCODED {
        return Err(SaslError::Decode);
    }
    STANDARD.decode(line).map_err(|_| SaslError::Decode)
}

/// Decodes one base64 response line to text; "=" is the empty response.
///
/// # Errors
/// [`SaslError::Cancelled`] for "*", [`SaslError::Decode`] otherwise.
pub fn decode_text(line: &str) -> Result<String, SaslError> {
    let bytes = decode_base64(line.as_bytes())?;
    String::from_utf8(bytes).map_err(|_| SaslError::Decode)
}

/// Base64 of a server challenge (RFC 4954 §4: the text after `334 `).
#[must_use]
pub fn encode(challenge: &[u8]) -> String {
    STANDARD.encode(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn text() {
        assert_eq!(decode_text("="), Ok(String::new()));
        assert_eq!(decode_text(&b64("alice")), Ok("alice".into()));
        assert_eq!(
            decode_text(&STANDARD.encode([0xff, 0xfe])),
            Err(SaslError::Decode)
        );
        assert_eq!(decode_text("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_text(&b64("x").repeat(4_000)), Err(SaslError::Decode));
        assert_eq!(encode(b"Username:"), login::USERNAME_CHALLENGE);
    }
}
