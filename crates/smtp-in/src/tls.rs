//! TLS server configuration: certificate chain and key from PEM files, or a
//! self-signed certificate generated at start-up when explicitly asked for
//! (development only). rustls with the ring provider (TOOLCHAIN.md).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds a rustls server config from a chain and key (ring provider, TLS
/// 1.2 and 1.3).
///
/// # Errors
/// When the key does not match or is unsupported.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("TLS certificate and key")?;
    Ok(Arc::new(config))
}

/// Reads a PEM certificate chain and private key.
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match.
pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("read private key {}", key.display()))?;
    Ok(TlsAcceptor::from(server_config(chain, key)?))
}

/// A self-signed certificate for `hostname` (and localhost, 127.0.0.1).
/// Returns the acceptor and the certificate (DER) so tests can trust it.
///
/// # Errors
/// Certificate generation failure.
pub fn self_signed(hostname: &str) -> anyhow::Result<(TlsAcceptor, CertificateDer<'static>)> {
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.dedup();
    let certified =
        rcgen::generate_simple_self_signed(names).context("generate self-signed certificate")?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((
        TlsAcceptor::from(server_config(vec![cert.clone()], key)?),
        cert,
    ))
}
