//! Validation and normalisation of the names the store keeps: domains,
//! addresses and mailbox names. Everything a client sends is checked here
//! before it reaches SQL.

use crate::error::{Result, StoreError};

/// Hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';
pub const MAX_MAILBOX_NAME: usize = 512;
pub const MAX_MAILBOX_DEPTH: usize = 16;

/// Lower-cased domain without a trailing dot, checked against RFC 1035 / 5321
/// label rules. Address literals (`[192.0.2.1]`) are never our domains.
///
/// # Errors
/// When the domain is not a plain DNS name.
pub fn domain(raw: &str) -> Result<String> {
    let d = raw.trim().to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || d.ends_with('.') || d.starts_with('.') {
        return Err(StoreError::invalid("invalid domain"));
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(StoreError::invalid("invalid domain"));
        }
    }
    Ok(d)
}

/// A local part as we store it: lower-case dot-atom text only. Quoted local
/// parts, `%`, `!` and `@` never name a local user (so source routes and
/// the `%`-hack can never match anything of ours).
///
/// # Errors
/// When it is not a plain dot-atom.
pub fn local_part(raw: &str) -> Result<String> {
    let l = raw.to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.len() <= 64
        && !l.starts_with('.')
        && !l.ends_with('.')
        && !l.contains("..")
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-/=?^_`{|}~.".contains(&b))
        && !l.contains('!');
    if ok {
        Ok(l)
    } else {
        Err(StoreError::invalid("invalid local part"))
    }
}

/// Splits and normalises `local@domain`.
///
/// # Errors
/// When either half is invalid.
pub fn address(raw: &str) -> Result<(String, String)> {
    let (l, d) = raw
        .trim()
        .rsplit_once('@')
        .ok_or_else(|| StoreError::invalid("address without @"))?;
    Ok((local_part(l)?, domain(d)?))
}

/// The special-use folders every user gets (RFC 6154), by their canonical
/// names. Another spelling of one of them ("junk", "TRASH") is refused for
/// CREATE and RENAME: clients and users would take it for the special
/// folder, and a `+junk` address (local parts are lower-cased) would file
/// into the look-alike. INBOX in any case is INBOX itself (RFC 9051 §5.1).
pub const SPECIAL_FOLDERS: [&str; 5] = ["Sent", "Drafts", "Trash", "Junk", "Archive"];

/// Whether `name` is another spelling of a special folder's canonical name.
#[must_use]
pub fn special_lookalike(name: &str) -> bool {
    SPECIAL_FOLDERS
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s) && name != *s)
}

/// The canonical mailbox name: INBOX in any case is "INBOX".
///
/// # Errors
/// On empty components, `.`/`..`, control characters, or names too long/deep.
pub fn mailbox(raw: &str) -> Result<String> {
    if raw.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".into());
    }
    if raw.is_empty() || raw.len() > MAX_MAILBOX_NAME {
        return Err(StoreError::invalid("invalid mailbox name"));
    }
    let parts: Vec<&str> = raw.split(DELIMITER).collect();
    if parts.len() > MAX_MAILBOX_DEPTH {
        return Err(StoreError::invalid("mailbox name nested too deeply"));
    }
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." || p.chars().any(char::is_control) {
            return Err(StoreError::invalid("invalid mailbox name"));
        }
    }
    // INBOX/child keeps INBOX canonical.
    if parts[0].eq_ignore_ascii_case("INBOX") {
        return Ok(format!("INBOX{}", &raw[5..]));
    }
    Ok(raw.to_string())
}

/// The key a client address is counted under: an IPv4 address as is
/// (IPv4-mapped IPv6 too), an IPv6 address reduced to its first
/// `v6_prefix` bits, written as `network/prefix`. An attacker holds a whole
/// /64 (RFC 6177), so counting per /128 would give them 2^64 tries.
/// None when `raw` is not an IP address (brackets and a zone are accepted).
#[must_use]
pub fn ip_key(raw: &str, v6_prefix: u8) -> Option<String> {
    let s = raw.trim().trim_start_matches('[').trim_end_matches(']');
    let s = s.split_once('%').map_or(s, |(a, _)| a);
    match s.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => Some(v4.to_string()),
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Some(v4.to_string());
            }
            let bits = u32::from(v6_prefix.clamp(1, 128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            Some(format!("{net}/{bits}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys() {
        for (raw, prefix, want) in [
            ("192.0.2.7", 64, Some("192.0.2.7")),
            ("::ffff:192.0.2.7", 64, Some("192.0.2.7")),
            ("2001:db8:1:2:3:4:5:6", 64, Some("2001:db8:1:2::/64")),
            ("[2001:db8:1:2::9]", 64, Some("2001:db8:1:2::/64")),
            ("fe80::1%eth0", 64, Some("fe80::/64")),
            ("2001:db8:1:2:3:4:5:6", 48, Some("2001:db8:1::/48")),
            ("2001:db8::1", 128, Some("2001:db8::1/128")),
            ("alice@example.org", 64, None),
            ("", 64, None),
        ] {
            assert_eq!(ip_key(raw, prefix).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(domain("Example.ORG").expect("ok"), "example.org");
        for bad in [
            "",
            "example.org.",
            "[192.0.2.1]",
            "a..b",
            "-a.b",
            "a_b.c",
            "x y",
        ] {
            assert!(domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address("Alice+Tag@Example.org").expect("ok"),
            ("alice+tag".to_string(), "example.org".to_string())
        );
        for bad in [
            "v%ext@ours.test",
            "\"v@ext\"@ours.test",
            "ext!v@ours.test",
            "v@[192.0.2.1]",
            "v@ext.example.",
            "@ours:v@ext.example",
            "noat",
        ] {
            // Either rejected, or at least never a plain local address.
            if let Ok((l, _)) = address(bad) {
                assert!(l.contains('%'), "{bad} parsed as {l}");
            }
        }
    }

    #[test]
    fn mailbox_names() {
        assert_eq!(mailbox("inbox").expect("ok"), "INBOX");
        assert_eq!(mailbox("Inbox/Sub").expect("ok"), "INBOX/Sub");
        assert_eq!(mailbox("Work/2025").expect("ok"), "Work/2025");
        for bad in [
            "",
            "../../x",
            "a//b",
            "/a",
            "a/",
            "x\u{0}y",
            &"a/".repeat(20),
        ] {
            assert!(mailbox(bad).is_err(), "{bad:?}");
        }
    }
}
