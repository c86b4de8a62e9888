//! DKIM signing of outgoing mail (RFC 6376; rsa-sha256, and ed25519-sha256
//! of RFC 8463) with mail-auth on ring.
//!
//! Keys come from PEM files named on the command line
//! (`--dkim-key DOMAIN=SELECTOR:PATH`; PKCS#8 RSA or Ed25519, or PKCS#1
//! RSA). The signing domain is the `From:` header's domain when we hold a
//! key for it (DMARC alignment, RFC 7489 §3.1), else the envelope sender's.
//! The message is signed as it goes on the wire: every line ending CRLF.

use std::collections::HashMap;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Header fields signed when present (RFC 6376 §5.4.1 recommendations).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
];

/// Parses a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 RSA.
///
/// # Errors
/// When no supported key is found.
pub fn key_from_pem(pem: &str) -> Result<DkimKey, String> {
    if let Ok(der) = PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        if let PrivateKeyDer::Pkcs8(p8) = &der
            && let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
        {
            return Ok(DkimKey::Ed25519(k));
        }
        return RsaKey::<Sha256>::from_key_der(der)
            .map(DkimKey::Rsa)
            .map_err(|e| format!("not an RSA or Ed25519 key: {e}"));
    }
    if let Ok(p8) = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
        return Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
            .map(DkimKey::Ed25519)
            .map_err(|e| e.to_string());
    }
    Err("no PEM private key found".into())
}

/// The DNS TXT record to publish at `SELECTOR._domainkey.DOMAIN`
/// (RFC 6376 §3.6.1): `v=DKIM1; k=rsa|ed25519; p=BASE64`.
#[must_use]
pub fn txt_record(key: &DkimKey) -> String {
    use base64::Engine as _;
    let (k, public) = match key {
        DkimKey::Rsa(k) => ("rsa", k.public_key()),
        DkimKey::Ed25519(k) => ("ed25519", k.public_key()),
    };
    format!(
        "v=DKIM1; k={k}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    )
}

/// The keys, by domain, each ready to sign.
#[derive(Default)]
pub struct Signer {
    keys: HashMap<String, DkimSigner<DkimKey, Done>>,
    /// The same keys as ARC sealers (RFC 8617), for forwarded mail; only
    /// for keys added from their PEM (the key itself cannot be copied).
    sealers: HashMap<String, ArcSealer<DkimKey, Done>>,
    /// The selector of each domain's key, and whether it came from the
    /// store (not from a `--dkim-key` file).
    selectors: HashMap<String, (String, bool)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domains", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Signer {
    /// Loads `DOMAIN=SELECTOR:PATH` specs.
    ///
    /// # Errors
    /// A description naming the bad spec or file.
    pub fn load(specs: &[String]) -> Result<Self, String> {
        let mut s = Self::default();
        for spec in specs {
            let (domain, rest) = spec
                .split_once('=')
                .ok_or_else(|| format!("dkim key {spec:?}: expected DOMAIN=SELECTOR:PATH"))?;
            let (selector, path) = rest
                .split_once(':')
                .ok_or_else(|| format!("dkim key {spec:?}: expected DOMAIN=SELECTOR:PATH"))?;
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("dkim key {domain}: read {path}: {e}"))?;
            s.add_pem(domain, selector, &pem, false)
                .map_err(|e| format!("dkim key {domain}: {e}"))?;
        }
        Ok(s)
    }

    /// Adds a key for a domain (replacing any other); `from_store` when
    /// it is the store's active key rather than a `--dkim-key` file.
    pub fn add(&mut self, domain: &str, selector: &str, key: DkimKey, from_store: bool) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let signer = DkimSigner::from_key(key)
            .domain(domain.clone())
            .selector(selector)
            .headers(SIGNED_HEADERS.iter().copied());
        self.keys.insert(domain.clone(), signer);
        // A key given as such has no sealer; drop one of an older key.
        self.sealers.remove(&domain);
        self.selectors
            .insert(domain, (selector.to_string(), from_store));
    }

    /// Adds a key from its PEM for DKIM signing and for ARC sealing.
    ///
    /// # Errors
    /// When the PEM holds no usable key.
    pub fn add_pem(
        &mut self,
        domain: &str,
        selector: &str,
        pem: &str,
        from_store: bool,
    ) -> Result<(), String> {
        let key = key_from_pem(pem)?;
        let seal_key = key_from_pem(pem)?;
        self.add(domain, selector, key, from_store);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let sealer = ArcSealer::from_key(seal_key)
            .domain(domain.clone())
            .selector(selector)
            .headers(SIGNED_HEADERS.iter().copied().chain(["DKIM-Signature"]));
        self.sealers.insert(domain, sealer);
        Ok(())
    }

    /// The ARC sealer of the first of `domains` we hold a key for.
    #[must_use]
    pub fn sealer<'a>(
        &self,
        domains: impl IntoIterator<Item = &'a str>,
    ) -> Option<&ArcSealer<DkimKey, Done>> {
        domains.into_iter().find_map(|d| {
            self.sealers
                .get(d.trim_end_matches('.').to_ascii_lowercase().as_str())
        })
    }

    /// The selector of the key loaded for `domain`, and whether it came
    /// from the store.
    #[must_use]
    pub fn selector(&self, domain: &str) -> Option<(&str, bool)> {
        self.selectors
            .get(domain)
            .map(|(s, from_store)| (s.as_str(), *from_store))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The domains a message could be signed for, in order (the `From:`
    /// domain, then the envelope sender's), whether or not we hold keys.
    #[must_use]
    pub fn candidates(message: &[u8], mail_from: &str) -> Vec<String> {
        let crlf = normalise_crlf(message);
        let envelope = mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        let mut out: Vec<String> = [header_from_domain(&crlf), envelope]
            .into_iter()
            .flatten()
            .collect();
        out.dedup();
        out
    }

    /// Whether a key for `domain` is loaded.
    #[must_use]
    pub fn has(&self, domain: &str) -> bool {
        self.keys.contains_key(domain)
    }

    /// The message with a `DKIM-Signature` header in front and every line
    /// ending CRLF, or `None` when we hold no key for its domains (or the
    /// message cannot be signed: it is then sent unsigned).
    #[must_use]
    pub fn sign(&self, message: &[u8], mail_from: &str) -> Option<Vec<u8>> {
        if self.keys.is_empty() {
            return None;
        }
        let crlf = normalise_crlf(message);
        let from_domain = header_from_domain(&crlf);
        let envelope_domain = mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase());
        let (domain, signer) = [from_domain, envelope_domain]
            .into_iter()
            .flatten()
            .find_map(|d| self.keys.get(&d).map(|k| (d, k)))?;
        let header = match signer.sign(&crlf) {
            Ok(sig) => sig.to_header(),
            Err(e) => {
                tracing::warn!(%domain, error = %e, "DKIM signing failed; sending unsigned");
                return None;
            }
        };
        let mut out = header.into_bytes();
        out.extend_from_slice(&crlf);
        Some(out)
    }
}

pub use mail_wire::dotstuff::normalise_crlf;

/// The domain of the first address in the `From:` header.
fn header_from_domain(message: &[u8]) -> Option<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 2);
    let headers = mail_dsn::Headers::parse(&message[..end]);
    let from = headers.get("from").next()?;
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from.trim(),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_from_domain() {
        assert_eq!(
            normalise_crlf(b"a\nb\rc\r\nd"),
            b"a\r\nb\r\nc\r\nd".to_vec()
        );
        assert_eq!(
            header_from_domain(b"Subject: x\r\nFrom: \"A\" <a@Ex.ORG>\r\n\r\nbody"),
            Some("ex.org".into())
        );
        assert_eq!(
            header_from_domain(b"From: a@b.test\r\n\r\n"),
            Some("b.test".into())
        );
        assert_eq!(header_from_domain(b"Subject: x\r\n\r\n"), None);
    }

    #[test]
    fn ed25519_signature_header() {
        let der = Ed25519Key::generate_pkcs8().expect("generate");
        let key = Ed25519Key::from_pkcs8_der(&der).expect("key");
        let key = DkimKey::Ed25519(key);
        assert!(txt_record(&key).starts_with("v=DKIM1; k=ed25519; p="));
        let mut s = Signer::default();
        s.add("a.test", "sel", key, false);
        let signed = s
            .sign(
                b"From: alice@a.test\nSubject: hi\n\nbody\n",
                "bounce@other.test",
            )
            .expect("signed");
        let text = String::from_utf8(signed).expect("utf8");
        assert!(
            text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=sel; d=a.test"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
        assert!(
            s.sign(b"From: x@unknown.test\r\n\r\n", "y@unknown.test")
                .is_none()
        );
    }
}
