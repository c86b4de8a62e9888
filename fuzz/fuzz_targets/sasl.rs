//! SASL client messages (`mail_wire::sasl`): the base64 layer, PLAIN,
//! LOGIN and SCRAM first/final messages, raw and base64-wrapped, as SMTP
//! AUTH, IMAP AUTHENTICATE and POP3 AUTH receive them.
//!
//! Invariant: a PLAIN message that parses, written out again, parses to
//! the same value (and its base64 form decodes to it, unless that form is
//! longer than `MAX_ENCODED`, which is refused).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mail_wire::sasl::{self, login, plain, scram};

fn plain_raw(raw: &[u8]) {
    let Ok(p) = plain::parse(raw) else { return };
    assert!(!p.authcid.is_empty());
    let mut again = p.authzid.clone().unwrap_or_default().into_bytes();
    again.push(0);
    again.extend_from_slice(p.authcid.as_bytes());
    again.push(0);
    again.extend_from_slice(p.password.as_bytes());
    assert_eq!(plain::parse(&again), Ok(p.clone()));
    let b64 = sasl::encode(&again);
    if b64.len() <= sasl::MAX_ENCODED {
        assert_eq!(plain::decode(b64.as_bytes()), Ok(p.clone()));
    } else {
        // A response longer than the bound is refused before decoding,
        // however well-formed it would be.
        assert_eq!(plain::decode(b64.as_bytes()), Err(sasl::SaslError::Decode));
    }
    let _ = p.check_authzid();
    let _ = p.into_credentials();
}

fn scram_raw(raw: &[u8]) {
    if let Ok(first) = scram::parse_client_first(raw) {
        assert!(raw.ends_with(first.bare.as_bytes()));
        if let Ok(last) = scram::parse_client_final(raw) {
            let _ = scram::auth_message(&first, "r=x,s=eA==,i=4096", &last);
        }
    }
    if let Ok(last) = scram::parse_client_final(raw) {
        assert!(raw.starts_with(last.without_proof.as_bytes()));
    }
}

fuzz_target!(|data: &[u8]| {
    plain_raw(data);
    scram_raw(data);
    let _ = plain::decode(data);
    if let Ok(decoded) = sasl::decode_base64(data) {
        plain_raw(&decoded);
        scram_raw(&decoded);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = plain::decode_credentials(s);
        if let Ok(user) = login::decode_username(s) {
            let _ = login::decode_password(user, s);
        }
    }
});
