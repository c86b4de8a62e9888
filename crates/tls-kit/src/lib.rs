//! # tls-kit
//!
//! One way to build the TLS server configuration of every listener (SMTP
//! STARTTLS/465, IMAP STARTTLS/993, POP3 STLS/995): rustls with the ring
//! provider only (docs/design.md K2: two providers in one process panic at run
//! time), TLS 1.2 and 1.3, certificate chain and key from PEM files, or a
//! self-signed certificate generated on start — only when explicitly asked
//! for, for development.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("no certificate in {0}")]
    NoCertificate(String),
    #[error("--tls-cert and --tls-key go together")]
    HalfConfigured,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("generate self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A rustls server config (ring provider, TLS 1.2 and 1.3) from a chain and key.
///
/// # Errors
/// When the key does not match the certificate or is unsupported.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Reads a PEM certificate chain and private key.
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?;
    server_config(chain, key_der)
}

/// A self-signed certificate for `hostname`, `localhost` and `127.0.0.1`.
/// Returns the config and the certificate (DER) so tests can trust it.
///
/// # Errors
/// Generation failure.
pub fn self_signed(
    hostname: &str,
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), TlsError> {
    let certified = generate(hostname)?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((server_config(vec![cert.clone()], key)?, cert))
}

/// The same self-signed certificate as PEM text: (certificate, private key).
///
/// # Errors
/// Generation failure.
pub fn self_signed_pem(hostname: &str) -> Result<(String, String), TlsError> {
    let certified = generate(hostname)?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

fn generate(hostname: &str) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, TlsError> {
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.sort();
    names.dedup();
    Ok(rcgen::generate_simple_self_signed(names)?)
}

/// The usual listener flags turned into a config: PEM files when both are
/// given, a self-signed certificate when explicitly asked, else no TLS.
///
/// # Errors
/// Half a configuration, unreadable files, generation failure.
pub fn configure(
    cert: Option<&Path>,
    key: Option<&Path>,
    self_signed_ok: bool,
    hostname: &str,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => from_pem_files(c, k).map(Some),
        (Some(_), None) | (None, Some(_)) => Err(TlsError::HalfConfigured),
        (None, None) if self_signed_ok => self_signed(hostname).map(|(c, _)| Some(c)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_explicit_self_signed() {
        let dir = std::env::temp_dir().join(format!("tls-kit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed_pem("mx.test").expect("generate");
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        assert!(
            configure(
                Some(&dir.join("c.pem")),
                Some(&dir.join("k.pem")),
                false,
                "x"
            )
            .expect("pem")
            .is_some()
        );
        assert!(matches!(
            configure(Some(&dir.join("c.pem")), None, false, "x"),
            Err(TlsError::HalfConfigured)
        ));
        assert!(configure(None, None, false, "x").expect("none").is_none());
        assert!(
            configure(None, None, true, "x")
                .expect("self-signed")
                .is_some()
        );
        assert!(matches!(
            from_pem_files(&dir.join("k.pem"), &dir.join("k.pem")),
            Err(TlsError::NoCertificate(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
