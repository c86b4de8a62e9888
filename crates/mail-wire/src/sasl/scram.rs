//! The SCRAM message grammar (RFC 5802 §7), pure: parse what the client
//! sends, render what the server sends. Salting, hashing and the proof
//! check (RFC 5802 §3) are the caller's: they need the stored keys.
//!
//! ```text
//! client-first  = gs2-header "n=" saslname ",r=" c-nonce ["," extensions]
//! gs2-header    = ("n" / "y" / "p=" cb-name) "," ["a=" saslname] ","
//! server-first  = "r=" c-nonce s-nonce ",s=" base64(salt) ",i=" iterations
//! client-final  = "c=" base64(gs2-header [cbind-data]) ",r=" nonce
//!                 ["," extensions] ",p=" base64(proof)
//! server-final  = "v=" base64(verifier) / "e=" server-error-value
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::SaslError;

/// Channel binding as the client announced it in the GS2 header
/// (RFC 5802 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not.
    NotOffered,
    /// `p=name`: the client requires this channel binding type.
    Required(String),
}

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The GS2 channel binding flag.
    pub binding: ChannelBinding,
    /// `a=`: authorization identity, decoded.
    pub authzid: Option<String>,
    /// `n=`: the user name, decoded (`=2C` → `,`, `=3D` → `=`).
    pub username: String,
    /// `r=`: the client nonce.
    pub nonce: String,
    /// The GS2 header as sent (`n,,`), which `c=` must repeat.
    pub gs2_header: String,
    /// `client-first-message-bare` as sent: input to the AuthMessage.
    pub bare: String,
}

/// The client's final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinal {
    /// `c=`: GS2 header and channel binding data, decoded.
    pub channel_binding: Vec<u8>,
    /// `r=`: client nonce followed by server nonce.
    pub nonce: String,
    /// `p=`: the client proof, decoded.
    pub proof: Vec<u8>,
    /// `client-final-message-without-proof` as sent: input to the
    /// AuthMessage.
    pub without_proof: String,
}

/// RFC 5802 §5.1 saslname: `=2C` and `=3D` escapes, no bare `=` or `,`.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['=', ',']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(SaslError::Malformed);
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    if out.is_empty() || out.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(out)
}

/// RFC 5802 §7: `printable = %x21-2B / %x2D-7E` (no comma).
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21..=0x2B | 0x2D..=0x7E))
}

/// `key=value` with the given single-letter key.
fn attr(part: Option<&str>, key: char) -> Result<&str, SaslError> {
    part.and_then(|p| p.strip_prefix(key))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(SaslError::Malformed)
}

/// Parses `client-first-message` (already base64-decoded).
///
/// # Errors
/// [`SaslError::Malformed`], also for the mandatory-extension `m=`
/// (RFC 5802 §5.1: the server must fail the exchange).
pub fn parse_client_first(raw: &[u8]) -> Result<ClientFirst, SaslError> {
    let text = std::str::from_utf8(raw).map_err(|_| SaslError::Malformed)?;
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().ok_or(SaslError::Malformed)?;
    let binding = match flag {
        "n" => ChannelBinding::NotSupported,
        "y" => ChannelBinding::NotOffered,
        _ => match flag.strip_prefix("p=") {
            Some(name)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
            {
                ChannelBinding::Required(name.to_string())
            }
            _ => return Err(SaslError::Malformed),
        },
    };
    let authz = parts.next().ok_or(SaslError::Malformed)?;
    let authzid = if authz.is_empty() {
        None
    } else {
        Some(decode_saslname(attr(Some(authz), 'a')?)?)
    };
    let bare = parts.next().ok_or(SaslError::Malformed)?;
    let gs2_header = text[..text.len() - bare.len()].to_string();
    let mut attrs = bare.split(',');
    if attrs.clone().next().is_some_and(|a| a.starts_with("m=")) {
        return Err(SaslError::Malformed);
    }
    let username = decode_saslname(attr(attrs.next(), 'n')?)?;
    let nonce = attr(attrs.next(), 'r')?;
    if !is_printable(nonce) {
        return Err(SaslError::Malformed);
    }
    Ok(ClientFirst {
        binding,
        authzid,
        username,
        nonce: nonce.to_string(),
        gs2_header,
        bare: bare.to_string(),
    })
}

/// Renders `server-first-message`: the combined nonce, the salt and the
/// iteration count.
#[must_use]
pub fn server_first(nonce: &str, salt: &[u8], iterations: u32) -> String {
    format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt))
}

/// Parses `client-final-message` (already base64-decoded).
///
/// # Errors
/// [`SaslError::Malformed`].
pub fn parse_client_final(raw: &[u8]) -> Result<ClientFinal, SaslError> {
    let text = std::str::from_utf8(raw).map_err(|_| SaslError::Malformed)?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let proof = STANDARD.decode(proof).map_err(|_| SaslError::Malformed)?;
    let mut attrs = without_proof.split(',');
    let cbind = attr(attrs.next(), 'c')?;
    let channel_binding = STANDARD.decode(cbind).map_err(|_| SaslError::Malformed)?;
    let nonce = attr(attrs.next(), 'r')?;
    if !is_printable(nonce) || proof.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(ClientFinal {
        channel_binding,
        nonce: nonce.to_string(),
        proof,
        without_proof: without_proof.to_string(),
    })
}

/// Renders a successful `server-final-message`.
#[must_use]
pub fn server_final(verifier: &[u8]) -> String {
    format!("v={}", STANDARD.encode(verifier))
}

/// Renders a failing `server-final-message` (RFC 5802 §7
/// server-error-value, e.g. "invalid-proof", "other-error").
#[must_use]
pub fn server_error(value: &str) -> String {
    format!("e={value}")
}

/// `AuthMessage = client-first-message-bare "," server-first-message ","
/// client-final-message-without-proof` (RFC 5802 §3).
#[must_use]
pub fn auth_message(first: &ClientFirst, server_first: &str, last: &ClientFinal) -> String {
    format!("{},{server_first},{}", first.bare, last.without_proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5 example exchange (SCRAM-SHA-1).
    #[test]
    fn rfc_example() {
        let first = parse_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").expect("valid");
        assert_eq!(first.binding, ChannelBinding::NotSupported);
        assert_eq!(first.username, "user");
        assert_eq!(first.nonce, "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(first.gs2_header, "n,,");
        assert_eq!(first.bare, "n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let salt = STANDARD.decode("QSXCR+Q6sek8bf92").expect("b64");
        let sf = server_first("fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j", &salt, 4096);
        assert_eq!(
            sf,
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let last = parse_client_final(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .expect("valid");
        assert_eq!(last.channel_binding, b"n,,");
        assert_eq!(last.proof.len(), 20);
        assert!(auth_message(&first, &sf, &last).starts_with("n=user,r=fyko"));
        assert!(auth_message(&first, &sf, &last).ends_with("3rfcNHYJY1ZVvWVs7j"));
        assert_eq!(server_final(b"\x01"), "v=AQ==");
        assert_eq!(server_error("invalid-proof"), "e=invalid-proof");
    }

    #[test]
    fn client_first_variants() {
        let f = parse_client_first(b"p=tls-unique,a=adm=2Cin,n=a=3Db,r=xyz").expect("valid");
        assert_eq!(f.binding, ChannelBinding::Required("tls-unique".into()));
        assert_eq!(f.authzid.as_deref(), Some("adm,in"));
        assert_eq!(f.username, "a=b");
        assert_eq!(f.gs2_header, "p=tls-unique,a=adm=2Cin,");
        let f = parse_client_first(b"y,,n=u,r=abc,x=ext").expect("extensions ignored");
        assert_eq!(f.binding, ChannelBinding::NotOffered);
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=u,r=a",
            b"n,,n=,r=a",
            b"n,,n=u=,r=a",
            b"n,,n=u",
            b"n,,r=a,n=u",
            b"n,,m=x,n=u,r=a",
            b"n,,n=u,r=a\x7f",
            b"n,,n=u,r=",
            b"n,b=x,n=u,r=a",
            b"n,,n=\xff,r=a",
        ] {
            assert_eq!(
                parse_client_first(bad),
                Err(SaslError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_final_errors() {
        for bad in [
            &b"c=biws,r=abc"[..],
            b"c=biws,r=abc,p=",
            b"c=!!,r=abc,p=AQ==",
            b"r=abc,c=biws,p=AQ==",
            b"c=biws,r=abc,p=@@",
            b"c=biws,p=AQ==",
        ] {
            assert_eq!(
                parse_client_final(bad),
                Err(SaslError::Malformed),
                "{bad:?}"
            );
        }
    }
}
