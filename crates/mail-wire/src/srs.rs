//! The Sender Rewriting Scheme (SRS), SRS0 form, as libsrs2 and postsrsd
//! implement it (Shevek's "Sender Rewriting Scheme" paper; SPF's answer to
//! forwarding, RFC 7208 Appendix D.2 / RFC 5321 §3.9.1: a forwarder that
//! keeps the original sender breaks SPF, one that rewrites it must be able
//! to route the bounces back).
//!
//! `SRS0=HHHH=TT=orig-domain=orig-local@our-domain`
//! - `TT`: the day (Unix time / 86400) modulo 1024 in two base32 characters
//!   (RFC 4648 alphabet, high five bits first);
//! - `HHHH`: the first four characters of base64(HMAC-SHA1(secret,
//!   lower(TT ‖ orig-domain ‖ orig-local))), compared without case (some
//!   MTAs lower-case local parts).
//!
//! A reversed address is accepted only with a good hash and a timestamp no
//! older than the maximum age (21 days by default): anything else is
//! refused, so the rewritten address is no open relay.

use base64::Engine as _;
use ring::hmac;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Days the timestamp wraps at (two base32 characters).
const TIME_SLOTS: i64 = 1024;
const HASH_LEN: usize = 4;

/// Why an address that looks like ours is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("malformed SRS address")]
    Malformed,
    #[error("SRS hash does not match")]
    BadHash,
    #[error("SRS address expired")]
    Expired,
}

/// The rewriting with one secret and one domain.
#[derive(Clone)]
pub struct Srs {
    key: hmac::Key,
    domain: String,
    max_age_days: i64,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .field("max_age_days", &self.max_age_days)
            .finish_non_exhaustive()
    }
}

impl Srs {
    /// `secret` keys the HMAC; `domain` is where the rewritten addresses
    /// live (one of ours, its MX pointing at our smtp-in).
    #[must_use]
    pub fn new(secret: &[u8], domain: &str, max_age_days: u32) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            max_age_days: i64::from(max_age_days),
        }
    }

    #[must_use]
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn hash(&self, stamp: &str, domain: &str, local: &str) -> String {
        let data = format!("{stamp}{domain}{local}").to_ascii_lowercase();
        let tag = hmac::sign(&self.key, data.as_bytes());
        let mut h = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        h.truncate(HASH_LEN);
        h
    }

    /// The rewritten envelope sender for forwarding `sender` at `now`
    /// (Unix seconds): `None` for the null sender (it stays `<>`) or an
    /// address without `@`. Our own SRS address is kept as it is.
    #[must_use]
    pub fn forward(&self, sender: &str, now: i64) -> Option<String> {
        let (local, domain) = sender.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        if domain.eq_ignore_ascii_case(&self.domain) && is_srs0(local) {
            return Some(sender.to_string());
        }
        let stamp = stamp(now.div_euclid(86_400));
        let hash = self.hash(&stamp, domain, local);
        Some(format!(
            "SRS0={hash}={stamp}={domain}={local}@{}",
            self.domain
        ))
    }

    /// The original sender behind `address` at `now`: `Ok(None)` when it is
    /// not an SRS0 address at our domain; an error when it looks like one but
    /// its hash is wrong or it has expired.
    ///
    /// # Errors
    /// See [`SrsError`].
    pub fn reverse(&self, address: &str, now: i64) -> Result<Option<String>, SrsError> {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(None);
        };
        if !domain.eq_ignore_ascii_case(&self.domain) || !is_srs0(local) {
            return Ok(None);
        }
        let mut parts = local[5..].splitn(4, '=');
        let (Some(hash), Some(ts), Some(orig_domain), Some(orig_local)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::Malformed);
        };
        if ts.len() != 2 || orig_domain.is_empty() || orig_local.is_empty() {
            return Err(SrsError::Malformed);
        }
        let then = unstamp(ts).ok_or(SrsError::Malformed)?;
        if !self
            .hash(ts, orig_domain, orig_local)
            .eq_ignore_ascii_case(hash)
        {
            return Err(SrsError::BadHash);
        }
        let today = now.div_euclid(86_400).rem_euclid(TIME_SLOTS);
        let age = (today - then).rem_euclid(TIME_SLOTS);
        if age > self.max_age_days {
            return Err(SrsError::Expired);
        }
        Ok(Some(format!("{orig_local}@{orig_domain}")))
    }
}

/// `SRS0` then one of the separators libsrs2 accepts.
fn is_srs0(local: &str) -> bool {
    local.len() > 5
        && local.is_char_boundary(5)
        && local[..4].eq_ignore_ascii_case("SRS0")
        && matches!(local.as_bytes()[4], b'=' | b'+' | b'-')
}

fn stamp(days: i64) -> String {
    let t = days.rem_euclid(TIME_SLOTS) as usize;
    let chars = [BASE32[(t >> 5) & 31], BASE32[t & 31]];
    String::from_utf8_lossy(&chars).into_owned()
}

fn unstamp(ts: &str) -> Option<i64> {
    let mut t = 0i64;
    for c in ts.bytes() {
        let v = BASE32.iter().position(|&b| b == c.to_ascii_uppercase())?;
        t = (t << 5) | v as i64;
    }
    Some(t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 20_000 * DAY + 3600;

    #[test]
    fn round_trip_and_form() {
        let srs = Srs::new(b"secret", "Fwd.Example.", 21);
        let a = srs.forward("Bob@Origin.test", NOW).unwrap();
        // 20000 mod 1024 = 544 = 17*32 + 0 → "RA".
        assert!(a.starts_with("SRS0="), "{a}");
        assert!(a.ends_with("=RA=Origin.test=Bob@fwd.example"), "{a}");
        assert_eq!(a.split('=').nth(1).unwrap().len(), 4);
        assert_eq!(
            srs.reverse(&a, NOW).unwrap().as_deref(),
            Some("Bob@Origin.test")
        );
        // Case-smashed by a relay: still good.
        assert_eq!(
            srs.reverse(&a.to_ascii_lowercase(), NOW)
                .unwrap()
                .as_deref(),
            Some("bob@origin.test")
        );
        // A local part with '=' survives.
        let b = srs.forward("a=b@x.test", NOW).unwrap();
        assert_eq!(
            srs.reverse(&b, NOW + DAY).unwrap().as_deref(),
            Some("a=b@x.test")
        );
        // Our own SRS address is not wrapped again; the null sender stays.
        assert_eq!(srs.forward(&a, NOW).as_deref(), Some(a.as_str()));
        assert_eq!(srs.forward("", NOW), None);
    }

    #[test]
    fn forged_expired_and_foreign_addresses() {
        let srs = Srs::new(b"secret", "fwd.example", 21);
        let a = srs.forward("bob@origin.test", NOW).unwrap();
        // Another secret's hash, a changed original, a bad timestamp.
        let other = Srs::new(b"other", "fwd.example", 21)
            .forward("bob@origin.test", NOW)
            .unwrap();
        assert_eq!(srs.reverse(&other, NOW), Err(SrsError::BadHash));
        let changed = a.replace("=bob@", "=eve@");
        assert_eq!(srs.reverse(&changed, NOW), Err(SrsError::BadHash));
        assert_eq!(
            srs.reverse("SRS0=abcd=!!=x.test=y@fwd.example", NOW),
            Err(SrsError::Malformed)
        );
        assert_eq!(
            srs.reverse("SRS0=abcd@fwd.example", NOW),
            Err(SrsError::Malformed)
        );
        // 21 days is still good, 22 is not; the wrap at 1024 days is handled.
        assert!(srs.reverse(&a, NOW + 21 * DAY).unwrap().is_some());
        assert_eq!(srs.reverse(&a, NOW + 22 * DAY), Err(SrsError::Expired));
        let late = srs.forward("bob@origin.test", 1023 * DAY).unwrap();
        assert!(srs.reverse(&late, 1030 * DAY).unwrap().is_some());
        // Not ours: another domain, or not SRS0.
        assert_eq!(
            srs.reverse(&a.replace("fwd.example", "x.test"), NOW),
            Ok(None)
        );
        assert_eq!(srs.reverse("alice@fwd.example", NOW), Ok(None));
    }
}
