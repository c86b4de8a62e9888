//! `mailctl dkim`: DKIM keys (RFC 6376) generated here, kept in the store,
//! used by smtp-out. Prints the DNS TXT record to publish at
//! `<selector>._domainkey.<domain>`.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

/// A freshly generated key pair.
pub struct Generated {
    pub algorithm: &'static str,
    /// PKCS#8 PEM.
    pub private_pem: String,
    /// Base64 of the public key as DKIM wants it (`p=`).
    pub public_b64: String,
}

/// Generates an RSA (2048 bits, rsa-sha256) or Ed25519 (ed25519-sha256, RFC 8463) key.
///
/// # Errors
/// An unknown algorithm or a failing generator.
pub fn generate(algorithm: &str) -> anyhow::Result<Generated> {
    match algorithm {
        "rsa" | "rsa-sha256" => {
            let mut rng = rand::thread_rng();
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048).context("generate RSA key")?;
            let private_pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .context("encode RSA key")?
                .to_string();
            // RFC 6376 §3.6.1: p= is the DER SubjectPublicKeyInfo, base64.
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .context("encode RSA public key")?;
            Ok(Generated {
                algorithm: "rsa-sha256",
                private_pem,
                public_b64: base64::engine::general_purpose::STANDARD.encode(spki.as_bytes()),
            })
        }
        "ed25519" | "ed25519-sha256" => {
            use ring::signature::KeyPair as _;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("generate Ed25519 key"))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("read back Ed25519 key"))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            // RFC 8463 §4.2: p= is the raw 32-byte Ed25519 public key.
            Ok(Generated {
                algorithm: "ed25519-sha256",
                private_pem: pem,
                public_b64: base64::engine::general_purpose::STANDARD
                    .encode(pair.public_key().as_ref()),
            })
        }
        other => bail!("unknown DKIM algorithm {other:?} (rsa, ed25519)"),
    }
}

/// A selector for a key made today: `sYYYYMMDD` (plus a suffix when taken).
#[must_use]
pub fn default_selector(n: usize) -> String {
    let day = chrono::Utc::now().format("%Y%m%d");
    if n == 0 {
        format!("s{day}")
    } else {
        format!("s{day}-{n}")
    }
}

/// The zone-file line to publish, split in 255-octet strings (RFC 7208 §3.3
/// style, which DNS servers join back).
#[must_use]
pub fn zone_line(selector: &str, domain: &str, txt: &str) -> String {
    let parts: Vec<String> = txt
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        parts.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_dkim_public_forms() {
        let ed = generate("ed25519").expect("ed25519");
        assert_eq!(ed.algorithm, "ed25519-sha256");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&ed.public_b64)
            .expect("b64");
        assert_eq!(raw.len(), 32);
        assert!(ed.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let rsa = generate("rsa").expect("rsa");
        assert!(rsa.private_pem.contains("BEGIN PRIVATE KEY"));
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&rsa.public_b64)
            .expect("b64");
        assert!(spki.len() > 256, "2048-bit SPKI");
        assert!(generate("dsa").is_err());
        let line = zone_line("s1", "example.org", &"x".repeat(300));
        assert!(line.starts_with("s1._domainkey.example.org. IN TXT ( \""));
        assert_eq!(line.matches('"').count(), 4);
    }
}
