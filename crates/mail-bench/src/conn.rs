//! Client connections: TCP, implicit TLS or STARTTLS, line and literal
//! reading. The benchmark trusts any certificate (it only ever talks to a
//! server on loopback that the bench script configured itself).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single read or write may take before the run fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A plain connection (before STARTTLS).
pub type Plain = BufReader<TcpStream>;
/// A TLS connection.
pub type Tls = BufReader<TlsStream<TcpStream>>;

/// A TLS connector that accepts the server's certificate whatever it is.
#[must_use]
pub fn connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// TCP connect with TCP_NODELAY, as mail clients do.
pub async fn connect(addr: &str) -> anyhow::Result<Plain> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(BufReader::new(tcp))
}

/// TCP connect from a given local address (several loopback sources get
/// round a server's per-IP connection cap), with TCP_NODELAY.
pub async fn connect_from(addr: &str, source: Option<std::net::IpAddr>) -> anyhow::Result<Plain> {
    let Some(source) = source else {
        return connect(addr).await;
    };
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .with_context(|| format!("{addr}: no address"))?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let tcp = tokio::time::timeout(IO_TIMEOUT, socket.connect(target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {addr} from {source}"))?;
    tcp.set_nodelay(true)?;
    Ok(BufReader::new(tcp))
}

/// Upgrades a plain connection (nothing may be buffered).
pub async fn upgrade(tls: &TlsConnector, plain: Plain) -> anyhow::Result<Tls> {
    if !plain.buffer().is_empty() {
        bail!("server sent data before the TLS handshake");
    }
    let name = ServerName::try_from("localhost")?.to_owned();
    let stream = tokio::time::timeout(IO_TIMEOUT, tls.connect(name, plain.into_inner()))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    Ok(BufReader::new(stream))
}

/// Implicit TLS.
pub async fn connect_tls(tls: &TlsConnector, addr: &str) -> anyhow::Result<Tls> {
    upgrade(tls, connect(addr).await?).await
}

/// Any buffered bidirectional stream.
pub trait Io: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Reads one line (CRLF kept); an error at end of stream.
pub async fn line(io: &mut impl Io, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    let n = tokio::time::timeout(IO_TIMEOUT, io.read_until(b'\n', buf))
        .await
        .context("read timed out")??;
    if n == 0 {
        bail!("connection closed by the server");
    }
    Ok(())
}

/// Reads exactly `n` bytes (an IMAP literal) and appends them to `buf`.
pub async fn exact(io: &mut impl Io, n: usize, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let start = buf.len();
    buf.resize(start + n, 0);
    tokio::time::timeout(IO_TIMEOUT, io.read_exact(&mut buf[start..]))
        .await
        .context("read timed out")??;
    Ok(())
}

/// Writes and flushes.
pub async fn send(io: &mut impl Io, data: &[u8]) -> anyhow::Result<()> {
    tokio::time::timeout(IO_TIMEOUT, async {
        io.write_all(data).await?;
        io.flush().await
    })
    .await
    .context("write timed out")??;
    Ok(())
}

/// Closes the write side, ignoring errors (the server may have gone).
pub async fn close(io: &mut impl Io) {
    let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
