//! Test PKI and an HTTPS server: a certificate authority whose PEM file
//! smtp-out trusts through `--ca-file`, leaf certificates it signs for
//! the scripted SMTP servers, and a loopback HTTPS server that serves an
//! MTA-STS policy file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A certificate authority for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate as PEM, for `--ca-file`.
    pub pem_path: PathBuf,
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_path);
    }
}

/// A certificate chain and its key, for a server.
#[derive(Clone)]
pub struct TestCert {
    pub chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TestCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCert")
    }
}

impl TestCert {
    /// A self-signed certificate for `names` (trusted by nobody).
    pub fn self_signed(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        Self {
            chain: vec![ck.cert.der().clone()],
            key: ck.signing_key.serialize_der(),
        }
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Epistole Test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_path = std::env::temp_dir().join(format!(
            "epistole-test-ca-{:016x}.pem",
            rand::random::<u64>()
        ));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem_path,
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.use_authority_key_identifier_extension = true;
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCert {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }
}

/// One request an [`Https`] server received: head and body.
pub type Request = (String, Vec<u8>);

/// An HTTPS server answering every request with one response.
pub struct Https {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// The body served (changeable by the test).
    pub body: Arc<Mutex<String>>,
    /// Every request received: head and body (by Content-Length).
    pub requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Https {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Https {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

/// Serves `body` as `text/plain` over HTTPS with `cert` on `addr`.
pub async fn https(addr: SocketAddr, cert: &TestCert, body: &str) -> Https {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config(&[b"http/1.1"])));
    let hits = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(Mutex::new(body.to_string()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (h, b, rq) = (hits.clone(), body.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, h, b, rq) = (acceptor.clone(), h.clone(), b.clone(), rq.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16_384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&req[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())
                            .flatten()
                    })
                    .unwrap_or(0)
                    .min(1 << 20);
                let mut content = req[end..].to_vec();
                while content.len() < length {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => content.extend_from_slice(&buf[..n]),
                    }
                }
                rq.lock().unwrap().push((head, content));
                h.fetch_add(1, Ordering::SeqCst);
                let text = b.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Https {
        addr,
        hits,
        body,
        requests,
        task,
    }
}
