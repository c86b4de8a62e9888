//! TLS server configuration (shared construction in `tls-kit`): PEM files,
//! or a self-signed certificate when explicitly asked for (development).

use std::path::Path;

use rustls_pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;

/// Reads a PEM certificate chain and private key.
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match.
pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(tls_kit::from_pem_files(cert, key)?))
}

/// A self-signed certificate for `hostname` (and localhost, 127.0.0.1).
/// Returns the acceptor and the certificate (DER) so tests can trust it.
///
/// # Errors
/// Certificate generation failure.
pub fn self_signed(hostname: &str) -> anyhow::Result<(TlsAcceptor, CertificateDer<'static>)> {
    let (config, cert) = tls_kit::self_signed(hostname)?;
    Ok((TlsAcceptor::from(config), cert))
}
