//! PROXY protocol v1 and v2 (HAProxy's "PROXY protocol" specification) on
//! every listener: a load balancer in front (the compose front, a cloud
//! load balancer) tells us who the client really is, so that every limit,
//! log line, `Received:` header and SPF check sees the client and not the
//! balancer (threat model: PROXY protocol).
//!
//! Rules:
//! - A header is believed only from a source in the trusted networks
//!   (`--proxy-trusted`); such a source must send one (a balancer always
//!   does), within the handshake time-out, or the connection is closed.
//! - From any other source a connection that starts with a PROXY signature
//!   is closed before the protocol sees a byte ([`ClientStream`]).
//! - With `--proxy-required`, connections from untrusted sources are
//!   refused outright (every client must come through the balancer).
//!
//! Parsing is `ppp`'s (a maintained parser of both versions); reading
//! exactly the header's bytes and the policy are ours.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The v1 header starts with this (followed by a space).
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 header's 12-byte signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (specification §2.1).
const V1_MAX: usize = 107;
/// Largest v2 address block we accept (addresses plus TLVs).
const V2_MAX_BODY: usize = 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection ended or failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// A trusted source sent something that is not a PROXY header.
    #[error("no PROXY header from a trusted source")]
    Missing,
    /// The header is malformed or too long.
    #[error("malformed PROXY header")]
    Malformed,
}

/// Who may send PROXY headers, and whether everyone must come through them.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    trusted: Vec<IpNet>,
    /// Refuse connections that do not come from a trusted proxy.
    pub required: bool,
}

impl ProxyPolicy {
    /// A policy from a comma-separated list of networks or addresses
    /// (`10.0.0.0/8,192.0.2.7,fd00::/8`); empty for none.
    ///
    /// # Errors
    /// A malformed network.
    pub fn new(trusted: &str, required: bool) -> Result<Self, String> {
        let trusted = trusted
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("bad network in --proxy-trusted: {s:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if required && trusted.is_empty() {
            return Err("--proxy-required needs --proxy-trusted".into());
        }
        Ok(Self { trusted, required })
    }

    /// Whether `ip` is a trusted proxy (IPv4-mapped IPv6 counts as IPv4).
    #[must_use]
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Whether any proxy is trusted at all.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.trusted.is_empty()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Reads exactly one PROXY header (v1 or v2) from `stream`, byte-exact, so
/// the protocol's first byte is not consumed.
///
/// # Errors
/// See [`ProxyError`].
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    let mut buf = vec![0u8; 5];
    stream.read_exact(&mut buf).await?;
    if buf == V1_PREFIX[..5] {
        // v1: one line, at most 107 octets with its CRLF.
        loop {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await?;
            buf.push(b[0]);
            if buf.ends_with(b"\r\n") {
                return Ok(buf);
            }
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Malformed);
            }
        }
    }
    if buf == V2_SIGNATURE[..5] {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[5..]).await?;
        if &buf[..12] != V2_SIGNATURE {
            return Err(ProxyError::Malformed);
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_BODY {
            return Err(ProxyError::Malformed);
        }
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
        return Ok(buf);
    }
    Err(ProxyError::Missing)
}

/// The client and our address a header announces: `None` for a header
/// that carries no addresses (v1 `UNKNOWN`, v2 `LOCAL`, e.g. the
/// balancer's own health check): the connection's own addresses stand.
///
/// # Errors
/// A malformed header.
pub fn decode(header: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyError> {
    use ppp::HeaderResult;
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => {
            if h.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                ppp::v2::Addresses::IPv4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v2::Addresses::IPv6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            })
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyError::Malformed),
    }
}

/// Whether `prefix` could still become, or already is, a PROXY signature.
fn signature_state(prefix: &[u8]) -> Signature {
    let against = |sig: &[u8]| {
        let n = prefix.len().min(sig.len());
        if prefix[..n] != sig[..n] {
            Signature::No
        } else if n == sig.len() {
            Signature::Yes
        } else {
            Signature::Maybe
        }
    };
    match (against(V1_PREFIX), against(V2_SIGNATURE)) {
        (Signature::Yes, _) | (_, Signature::Yes) => Signature::Yes,
        (Signature::No, Signature::No) => Signature::No,
        _ => Signature::Maybe,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    No,
    Maybe,
    Yes,
}

/// A client connection as the protocol reads it. From a source that is not
/// a trusted proxy, the first bytes are checked: a PROXY signature there is
/// a forged client address and ends the connection with an error.
#[derive(Debug)]
pub struct ClientStream {
    tcp: TcpStream,
    guard: Guard,
}

#[derive(Debug)]
enum Guard {
    /// Still deciding; the bytes read so far.
    Checking(Vec<u8>),
    /// Decided: hand these bytes out first.
    Replay(Vec<u8>, usize),
    /// Nothing to check.
    Off,
}

impl ClientStream {
    /// A stream whose first bytes are checked for a PROXY signature.
    #[must_use]
    pub fn guarded(tcp: TcpStream) -> Self {
        Self {
            tcp,
            guard: Guard::Checking(Vec::new()),
        }
    }

    /// A stream passed through unchanged (the header was already read).
    #[must_use]
    pub fn plain(tcp: TcpStream) -> Self {
        Self {
            tcp,
            guard: Guard::Off,
        }
    }

    /// The TCP connection underneath.
    #[must_use]
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.guard {
                Guard::Off => return Pin::new(&mut this.tcp).poll_read(cx, buf),
                Guard::Replay(bytes, pos) => {
                    let n = (bytes.len() - *pos).min(buf.remaining());
                    buf.put_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    if *pos == bytes.len() {
                        this.guard = Guard::Off;
                    }
                    return Poll::Ready(Ok(()));
                }
                Guard::Checking(seen) => {
                    let mut chunk = [0u8; 16];
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.tcp).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let eof = rb.filled().is_empty();
                    seen.extend_from_slice(rb.filled());
                    match signature_state(seen) {
                        Signature::Yes => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                "PROXY header from an untrusted source",
                            )));
                        }
                        Signature::Maybe if !eof => {}
                        Signature::No | Signature::Maybe => {
                            let bytes = std::mem::take(seen);
                            if bytes.is_empty() {
                                this.guard = Guard::Off;
                                return Poll::Ready(Ok(()));
                            }
                            this.guard = Guard::Replay(bytes, 0);
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_networks() {
        let p = ProxyPolicy::new("10.0.0.0/8, 192.0.2.7,fd00::/8", false).expect("policy");
        assert!(p.trusts("10.1.2.3".parse().expect("ip")));
        assert!(p.trusts("192.0.2.7".parse().expect("ip")));
        assert!(p.trusts("::ffff:10.9.9.9".parse().expect("ip")));
        assert!(p.trusts("fd00::1".parse().expect("ip")));
        assert!(!p.trusts("192.0.2.8".parse().expect("ip")));
        assert!(!ProxyPolicy::default().enabled());
        assert!(ProxyPolicy::new("10.0.0.0/33", false).is_err());
        assert!(ProxyPolicy::new("", true).is_err());
    }

    #[test]
    fn decodes_v1_and_v2() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 25\r\n";
        let (src, dst) = decode(v1).expect("v1").expect("addresses");
        assert_eq!(src, "192.0.2.1:5000".parse().expect("addr"));
        assert_eq!(dst, "198.51.100.2:25".parse().expect("addr"));
        assert!(decode(b"PROXY UNKNOWN\r\n").expect("unknown").is_none());
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 993\r\n";
        let (src, _) = decode(v6).expect("v6").expect("addresses");
        assert_eq!(src, "[2001:db8::1]:40000".parse().expect("addr"));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "203.0.113.9:1234".parse::<SocketAddr>().expect("addr"),
                "198.51.100.2:587".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("build");
        let (src, dst) = decode(&v2).expect("v2").expect("addresses");
        assert_eq!(src, "203.0.113.9:1234".parse().expect("addr"));
        assert_eq!(dst.port(), 587);
        assert!(decode(b"PROXY TCP4 999.0.0.1 1.1.1.1 1 2\r\n").is_err());
        assert!(decode(b"PROXY TCP4 1.1.1.1\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let cases: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 25\r\nEHLO x\r\n".to_vec(),
            {
                let mut v = ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (
                        "203.0.113.9:1234".parse::<SocketAddr>().expect("addr"),
                        "198.51.100.2:587".parse::<SocketAddr>().expect("addr"),
                    ),
                )
                .build()
                .expect("build");
                v.extend_from_slice(b"EHLO x\r\n");
                v
            },
        ];
        for input in cases {
            let mut r: &[u8] = &input;
            let header = read_header(&mut r).await.expect("header");
            assert!(decode(&header).expect("decode").is_some());
            assert_eq!(r, b"EHLO x\r\n", "the protocol's bytes are untouched");
        }
        let mut r: &[u8] = b"EHLO x\r\n";
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyError::Missing)
        ));
        let long = format!("PROXY {}\r\n", "1".repeat(200));
        let mut r: &[u8] = long.as_bytes();
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyError::Malformed)
        ));
    }

    #[test]
    fn signature_prefixes() {
        assert_eq!(signature_state(b"P"), Signature::Maybe);
        assert_eq!(signature_state(b"PROXY"), Signature::Maybe);
        assert_eq!(signature_state(b"PROXY T"), Signature::Yes);
        assert_eq!(signature_state(b"P1 LOGIN"), Signature::No);
        assert_eq!(signature_state(b"\r\n\r\n\0\r\nQ"), Signature::Maybe);
        assert_eq!(signature_state(V2_SIGNATURE), Signature::Yes);
        assert_eq!(signature_state(b"\r\n"), Signature::Maybe);
        assert_eq!(signature_state(b"EHLO"), Signature::No);
    }

    #[tokio::test]
    async fn guarded_stream_passes_clients_and_stops_forged_headers() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        for (input, forged) in [
            (&b"A1 LOGIN x y\r\n"[..], false),
            (&b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nA1 NOOP\r\n"[..], true),
            (&b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c"[..], true),
        ] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            client.write_all(input).await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut stream = ClientStream::guarded(server);
            let mut got = Vec::new();
            let result = stream.read_to_end(&mut got).await;
            if forged {
                assert!(result.is_err(), "{input:?}");
            } else {
                result.expect("read");
                assert_eq!(got, input);
            }
        }
    }
}
