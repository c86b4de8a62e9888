//! SASL LOGIN: not an RFC, but what every client speaks
//! (draft-murchison-sasl-login): the server asks `Username:` then
//! `Password:`, each answer base64 text.

use super::{Credentials, SaslError, decode_text};

/// base64("Username:"), the first challenge.
pub const USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// base64("Password:"), the second challenge.
pub const PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Decodes the user name response (or the initial response).
///
/// # Errors
/// [`SaslError::Cancelled`] for "*", [`SaslError::Decode`] otherwise.
pub fn decode_username(line: &str) -> Result<String, SaslError> {
    decode_text(line)
}

/// Decodes the password response and pairs it with the user name.
///
/// # Errors
/// [`SaslError::Cancelled`] for "*", [`SaslError::Decode`] otherwise.
pub fn decode_password(username: String, line: &str) -> Result<Credentials, SaslError> {
    decode_text(line).map(|password| Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange() {
        let user = decode_username("YWxpY2U=").expect("valid");
        assert_eq!(user, "alice");
        let c = decode_password(user, "c2VjcmV0").expect("valid");
        assert_eq!(c.password, "secret");
        assert_eq!(decode_username("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_password("a".into(), "@@"), Err(SaslError::Decode));
    }
}
