//! # tls-kit
//!
//! One way to build the TLS server configuration of every listener (SMTP
//! STARTTLS/465, IMAP STARTTLS/993, POP3 STLS/995): rustls with the ring
//! provider only (docs/design.md K2: two providers in one process panic at run
//! time), TLS 1.2 and 1.3, certificate chain and key from PEM files, or a
//! self-signed certificate generated on start — only when explicitly asked
//! for, for development.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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

/// Reads a PEM certificate chain and private key, and keeps watching
/// them: every handshake first compares the files' modification time and
/// size with what was loaded (two `stat` calls), and a changed pair is
/// loaded before the handshake goes on — a renewed certificate (certbot,
/// cert-manager's Secret volume swap) is used by the next connection
/// without a restart. A new pair that does not load (half written, key and
/// certificate not matching) is logged and the previous pair stays in use.
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match
/// (at start-up: a service does not start with a broken pair).
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = ReloadingCert::load(cert, key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks one certificate/key pair.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
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
    let pair = CertifiedKey::from_der(chain, key_der, &provider())?;
    record_expiry(&pair);
    Ok(pair)
}

/// `tls_certificate_not_after_seconds`: when the certificate in use
/// expires (Unix time), set at start and at every reload, so an alert can
/// warn before a renewal that did not happen (`deploy/monitoring/`).
fn record_expiry(pair: &CertifiedKey) {
    if let Some(t) = not_after(pair) {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("tls_certificate_not_after_seconds").set(t as f64);
    }
}

/// The leaf certificate's notAfter, Unix time.
fn not_after(pair: &CertifiedKey) -> Option<i64> {
    let leaf = pair.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Modification time and length of both files: what "changed" means.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// The certificate resolver behind [`from_pem_files`].
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Option<Stamp>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let before = stamp(cert, key);
        let pair = load_pair(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new((before, Arc::new(pair))),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = stamp(&self.cert, &self.key);
        if now.is_some() && now != state.0 {
            match load_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    state.1 = Arc::new(pair);
                }
                Err(e) => {
                    tracing::error!(error = %e, "new TLS certificate not usable; keeping the previous one");
                }
            }
            state.0 = now;
        }
        state.1.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
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

    /// What `tls_certificate_not_after_seconds` reports: the leaf's
    /// notAfter (rcgen's default validity ends in 4096).
    #[test]
    fn not_after_of_the_served_certificate() {
        let dir = std::env::temp_dir().join(format!("tls-kit-na-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed_pem("mx.test").expect("generate");
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        let pair = load_pair(&dir.join("c.pem"), &dir.join("k.pem")).expect("load");
        let t = not_after(&pair).expect("parsed");
        assert!(t > 4_000_000_000, "{t}");
        let _ = std::fs::remove_dir_all(&dir);
    }

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

#[cfg(test)]
mod reload_tests {
    use super::*;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    /// The server certificate a client sees in one in-memory handshake.
    fn handshake(server: &Arc<ServerConfig>, roots: &RootCertStore) -> Vec<u8> {
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(Arc::new(client_cfg), name).expect("client");
        let mut srv = ServerConnection::new(server.clone()).expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client write");
            srv.read_tls(&mut buf.as_slice()).expect("server read");
            srv.process_new_packets().expect("server process");
            let mut buf = Vec::new();
            srv.write_tls(&mut buf).expect("server write");
            client.read_tls(&mut buf.as_slice()).expect("client read");
            client.process_new_packets().expect("client process");
            if !client.is_handshaking() && !srv.is_handshaking() {
                break;
            }
        }
        client.peer_certificates().expect("certificate")[0]
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_replaced_certificate_is_used_by_the_next_handshake() {
        let dir = std::env::temp_dir().join(format!("tls-kit-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        let mut roots = RootCertStore::empty();
        let mut ders = Vec::new();
        for _ in 0..2 {
            let certified = generate("localhost").expect("generate");
            roots.add(certified.cert.der().clone()).expect("root");
            ders.push((
                certified.cert.der().as_ref().to_vec(),
                certified.cert.pem(),
                certified.signing_key.serialize_pem(),
            ));
        }
        std::fs::write(&cert_path, &ders[0].1).expect("write");
        std::fs::write(&key_path, &ders[0].2).expect("write");
        let server = from_pem_files(&cert_path, &key_path).expect("config");
        assert_eq!(handshake(&server, &roots), ders[0].0);

        // Renewal: the next handshake presents the new certificate.
        std::fs::write(&cert_path, &ders[1].1).expect("write");
        std::fs::write(&key_path, &ders[1].2).expect("write");
        assert_eq!(handshake(&server, &roots), ders[1].0);

        // A broken new pair (key of the other certificate) keeps the last good one.
        std::fs::write(&key_path, format!("{}\n", ders[0].2)).expect("write");
        assert_eq!(handshake(&server, &roots), ders[1].0);
        std::fs::write(&cert_path, "not a certificate").expect("write");
        assert_eq!(handshake(&server, &roots), ders[1].0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
