//! The one front door of every protocol service (smtp-in, imap, pop3, and
//! any later listener): binding (IPv4 and IPv6, several addresses per
//! endpoint), the accept loop with a total and a per-IP connection limit,
//! the connection id and span, TLS (implicit and STARTTLS from one
//! [`Tls`], one handshake time-out), and a bounded drain on shutdown.
//!
//! A protocol crate keeps only its session: it gives [`serve`] a
//! [`Protocol`] that says how to refuse a connection over the limits and
//! how to serve an admitted one, and receives for each connection a
//! [`ConnectionInfo`] (who, where, which endpoint) — the single place where
//! PROXY protocol, shared rate limits and certificate reload will change
//! what the peer is and which certificate is presented.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument as _;

use crate::Shutdown;
use crate::proxy::{ClientStream, ProxyError, ProxyPolicy};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener is at its total limit.
    Total,
    /// This client address has too many connections.
    PerIp,
}

impl Refused {
    /// Label for metrics and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerIp => "per_ip",
        }
    }
}

/// Connection limits shared by the listeners of one service.
#[derive(Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    max_per_ip: u32,
    /// Other replicas' connections per address, as last reported through
    /// the store (`crate::share`); empty when not shared.
    pub(crate) elsewhere: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnLimits {
    /// At most `total` connections, `per_ip` from one address (both at
    /// least 1).
    #[must_use]
    pub fn new(total: usize, per_ip: u32) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total.clamp(1, Semaphore::MAX_PERMITS))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: per_ip.max(1),
            elsewhere: Mutex::new(HashMap::new()),
        })
    }

    /// The per-address limit.
    #[must_use]
    pub fn max_per_ip(&self) -> u32 {
        self.max_per_ip
    }

    /// Addresses with at least `min` connections here, and how many.
    #[must_use]
    pub fn snapshot(&self, min: u32) -> Vec<(IpAddr, u32)> {
        self.per_ip
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| **n >= min)
                    .map(|(ip, n)| (*ip, *n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces what the other replicas hold per address.
    pub fn set_elsewhere(&self, counts: HashMap<IpAddr, u32>) {
        *self
            .elsewhere
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = counts;
    }

    /// A slot held for the life of one connection from `ip`.
    ///
    /// # Errors
    /// Which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        let mut map = self
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let others = self
            .elsewhere
            .lock()
            .map(|m| m.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0);
        let n = map.entry(ip).or_insert(0);
        if n.saturating_add(others) >= self.max_per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Refused::PerIp);
        }
        *n += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
            _permit: permit,
        })
    }

    /// Connections open from `ip` (for tests and metrics).
    #[must_use]
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.per_ip
            .lock()
            .map(|m| m.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Held for the life of one connection; frees its place when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A new random connection id (64 bits, hex): in the span, the greeting,
/// error replies and store calls, so logs join up across services.
#[must_use]
pub fn new_connection_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// One time-out for every TLS handshake of every service (implicit TLS and
/// STARTTLS/STLS alike). The copies used 15 s and 30 s; the stricter one
/// stays: a handshake is a few round trips.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What a finished TLS handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1_3".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client certificate (end entity, DER), if one was presented and
    /// verified.
    pub client_cert: Option<Vec<u8>>,
}

/// A TLS handshake that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out")]
    Timeout,
    /// The handshake failed (protocol error, peer closed, …).
    #[error("TLS handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// The TLS side of a service's listeners: one server configuration for
/// implicit TLS (465, 993, 995) and for the STARTTLS/STLS upgrade.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    metric_prefix: &'static str,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS from a rustls server configuration (see `tls-kit`); handshake
    /// failures are counted as `<metric_prefix>_tls_handshake_failures_total`.
    #[must_use]
    pub fn new(config: Arc<rustls::ServerConfig>, metric_prefix: &'static str) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
            metric_prefix,
        }
    }

    /// Runs the server side of a handshake on `stream` within
    /// [`HANDSHAKE_TIMEOUT`]. For STARTTLS the caller must have dropped
    /// every byte it buffered before (RFC 3207 §4.2, RFC 9051 §6.2.1,
    /// RFC 2595 §4): the handshake reads fresh from the socket.
    ///
    /// # Errors
    /// Time-out, or a failed handshake.
    pub async fn accept<S>(&self, stream: S) -> Result<(TlsStream<S>, TlsInfo), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await;
        let tls = match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.count_failure();
                return Err(HandshakeError::Io(e));
            }
            Err(_) => {
                self.count_failure();
                return Err(HandshakeError::Timeout);
            }
        };
        let info = {
            let (_, server) = tls.get_ref();
            TlsInfo {
                version: server
                    .protocol_version()
                    .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
                cipher: server
                    .negotiated_cipher_suite()
                    .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
                sni: server.server_name().map(str::to_owned),
                client_cert: server
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec()),
            }
        };
        tracing::debug!(version = %info.version, cipher = %info.cipher, "TLS established");
        Ok((tls, info))
    }

    fn count_failure(&self) {
        metrics::counter!(format!(
            "{}_tls_handshake_failures_total",
            self.metric_prefix
        ))
        .increment(1);
    }
}

/// How an endpoint starts its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text first; the protocol may offer STARTTLS/STLS.
    Plain,
    /// TLS from the first byte (RFC 8314 §3.3).
    ImplicitTls,
}

/// One named endpoint of a service (e.g. `imaps`), bound to one or more
/// addresses.
#[derive(Debug)]
pub struct Endpoint {
    /// Name in logs, metrics and the `listening NAME=ADDR` line.
    pub name: &'static str,
    /// Plain or implicit TLS.
    pub security: Security,
    listeners: Vec<TcpListener>,
}

/// Parses a listen option: `off` (or empty) for none, else one or more
/// socket addresses separated by commas (`0.0.0.0:143,[::]:143`).
///
/// # Errors
/// A malformed address.
pub fn parse_listen(s: &str) -> Result<Vec<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| format!("bad listen address {a:?}"))
        })
        .collect()
}

/// Binds one TCP listener. IPv6 sockets are IPv6-only, so `0.0.0.0:N` and
/// `[::]:N` can be bound side by side.
///
/// # Errors
/// The address is in use or not available.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Endpoint {
    /// Binds every address of `listen` (see [`parse_listen`]); `None` when
    /// the endpoint is off.
    ///
    /// # Errors
    /// A malformed address, or one that cannot be bound.
    pub fn bind(
        name: &'static str,
        security: Security,
        listen: &str,
    ) -> Result<Option<Self>, String> {
        let addrs = parse_listen(listen)?;
        if addrs.is_empty() {
            return Ok(None);
        }
        let listeners = addrs
            .iter()
            .map(|a| bind(*a).map_err(|e| format!("bind {name} listener on {a}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            name,
            security,
            listeners,
        }))
    }

    /// The bound addresses (useful with port 0).
    #[must_use]
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Who is connected, where, and how — what a protocol session knows of its
/// connection before the first byte.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Connection id (also the session id in greetings and logs).
    pub id: String,
    /// The client as the protocol must see it: the address every limit,
    /// log line and `Received:` header uses.
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// The endpoint's name (`mx`, `submission`, `imaps`, …).
    pub endpoint: &'static str,
    /// Plain or implicit TLS.
    pub security: Security,
}

/// A boxed future, as protocols return from [`Protocol::serve`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a protocol service plugs into the shared listener.
pub trait Protocol: Send + Sync + 'static {
    /// Lower-case protocol name for spans and metric names (`smtp_in`,
    /// `imap`, `pop3`).
    fn name(&self) -> &'static str;

    /// Bytes to send on a plain endpoint before closing a connection over
    /// the limits (`421 4.7.0 …`, `* BYE …`, `-ERR [SYS/TEMP] …`). On an
    /// implicit-TLS endpoint the connection is closed without a word.
    fn refusal(&self, why: Refused) -> Vec<u8>;

    /// Serves one admitted connection to its end. Runs inside the
    /// connection's span; must say goodbye itself when `shutdown` fires.
    fn serve(
        self: Arc<Self>,
        stream: ClientStream,
        info: ConnectionInfo,
        shutdown: Shutdown,
    ) -> BoxFuture;

    /// The store, through which the per-IP connection counts are shared
    /// with the service's other replicas (`crate::share`). `None` keeps
    /// them per process.
    fn store(&self) -> Option<mailstore_api::StoreClient> {
        None
    }
}

/// Accepts on every endpoint until `shutdown`, admitting each connection
/// against `limits` and serving it with `protocol` on its own task, then
/// waits up to `drain` for the sessions, which see the same shutdown token
/// and say goodbye themselves.
pub async fn serve<P: Protocol>(
    protocol: Arc<P>,
    endpoints: Vec<Endpoint>,
    limits: Arc<ConnLimits>,
    proxy: Arc<ProxyPolicy>,
    shutdown: Shutdown,
    drain: Duration,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    let sharing = protocol.store().map(|store| {
        tokio::spawn(crate::share::share_connections(
            limits.clone(),
            store.guard,
            format!("conn_{}", protocol.name()),
            shutdown.clone(),
        ))
    });
    for endpoint in endpoints {
        for listener in endpoint.listeners {
            let accept = AcceptLoop {
                protocol: protocol.clone(),
                name: endpoint.name,
                security: endpoint.security,
                limits: limits.clone(),
                proxy: proxy.clone(),
                shutdown: shutdown.clone(),
                sessions: tasks.clone(),
            };
            tasks.spawn(accept.run(listener));
        }
    }
    shutdown.cancelled().await;
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!("sessions still running after the drain time-out; exiting");
    }
    if let Some(s) = sharing {
        // It withdraws this replica's counts, within a bounded time.
        let _ = s.await;
    }
}

struct AcceptLoop<P> {
    protocol: Arc<P>,
    name: &'static str,
    security: Security,
    limits: Arc<ConnLimits>,
    proxy: Arc<ProxyPolicy>,
    shutdown: Shutdown,
    sessions: tokio_util::task::TaskTracker,
}

impl<P: Protocol> AcceptLoop<P> {
    async fn run(self, listener: TcpListener) {
        let local = listener.local_addr().ok();
        loop {
            let (tcp, peer) = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let info = ConnectionInfo {
                id: new_connection_id(),
                peer,
                local: tcp.local_addr().ok().or(local).unwrap_or(peer),
                endpoint: self.name,
                security: self.security,
            };
            self.sessions.spawn(self.connection(tcp, info));
        }
    }

    fn connection(
        &self,
        mut tcp: TcpStream,
        mut info: ConnectionInfo,
    ) -> impl Future<Output = ()> + use<P> {
        let proto = self.protocol.name();
        let protocol = self.protocol.clone();
        let limits = self.limits.clone();
        let proxy = self.proxy.clone();
        let shutdown = self.shutdown.clone();
        async move {
            let via = info.peer;
            let stream = if proxy.trusts(via.ip()) {
                let header =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::proxy::read_header(&mut tcp))
                        .await
                        .map_err(|_| ProxyError::Missing)
                        .and_then(|r| r)
                        .and_then(|h| crate::proxy::decode(&h));
                match header {
                    Ok(Some((client, ours))) => {
                        info.peer = client;
                        info.local = ours;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        metrics::counter!(format!("{proto}_connections_refused_total"), "reason" => "proxy_header")
                            .increment(1);
                        tracing::info!(%via, error = %e, "connection refused: PROXY header");
                        return;
                    }
                }
                ClientStream::plain(tcp)
            } else if proxy.required {
                metrics::counter!(format!("{proto}_connections_refused_total"), "reason" => "not_proxied")
                    .increment(1);
                tracing::info!(%via, "connection refused: not through a trusted proxy");
                return;
            } else {
                ClientStream::guarded(tcp)
            };
            let span = tracing::info_span!(
                "conn",
                proto,
                sid = %info.id,
                peer = %info.peer,
                endpoint = info.endpoint,
            );
            admit_and_serve(protocol, limits, stream, info, shutdown)
                .instrument(span)
                .await;
        }
    }
}

async fn admit_and_serve<P: Protocol>(
    protocol: Arc<P>,
    limits: Arc<ConnLimits>,
    mut stream: ClientStream,
    info: ConnectionInfo,
    shutdown: Shutdown,
) {
    let proto = protocol.name();
    match limits.admit(info.peer.ip()) {
        Ok(slot) => {
            metrics::counter!(format!("{proto}_connections_total"), "endpoint" => info.endpoint)
                .increment(1);
            let active = metrics::gauge!(format!("{proto}_connections_active"));
            active.increment(1.0);
            tracing::debug!("connected");
            protocol.serve(stream, info, shutdown).await;
            tracing::debug!("disconnected");
            active.decrement(1.0);
            drop(slot);
        }
        Err(why) => {
            metrics::counter!(format!("{proto}_connections_refused_total"), "reason" => why.as_str())
                .increment(1);
            tracing::info!(reason = why.as_str(), "connection refused: limit");
            if info.security == Security::Plain {
                let bytes = protocol.refusal(why);
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), stream.write_all(&bytes)).await;
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// Writes `listening NAME=ADDR` for every bound address on stdout (tests
/// and launchers read the real ports there) and in the log.
pub fn announce<'a>(lines: impl IntoIterator<Item = (&'a str, SocketAddr)>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for (name, addr) in lines {
        tracing::info!(%addr, "listening {name}");
        let _ = writeln!(out, "listening {name}={addr}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_total() {
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let l = ConnLimits::new(3, 2);
        let a1 = l.admit(a).expect("first");
        let _a2 = l.admit(a).expect("second");
        assert_eq!(l.admit(a).err(), Some(Refused::PerIp));
        let _b1 = l.admit(b).expect("other address");
        assert_eq!(
            l.admit(IpAddr::from([192, 0, 2, 3])).err(),
            Some(Refused::Total)
        );
        drop(a1);
        assert_eq!(l.open_from(a), 1);
        let _a3 = l.admit(a).expect("slot freed on drop");
    }

    #[test]
    fn listen_option_forms() {
        assert!(parse_listen("off").expect("off").is_empty());
        assert!(parse_listen("").expect("empty").is_empty());
        assert_eq!(
            parse_listen("127.0.0.1:25, [::1]:25").expect("two"),
            vec![
                "127.0.0.1:25".parse::<SocketAddr>().expect("v4"),
                "[::1]:25".parse::<SocketAddr>().expect("v6")
            ]
        );
        assert!(parse_listen("localhost:25").is_err());
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_side_by_side() {
        let v4 = bind("127.0.0.1:0".parse().expect("addr")).expect("v4");
        let port = v4.local_addr().expect("addr").port();
        // Same port on ::1 binds because the IPv6 socket is IPv6-only
        // (skipped where the machine has no IPv6 loopback).
        if let Ok(v6) = bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))) {
            assert_eq!(v6.local_addr().expect("addr").port(), port);
        }
    }

    struct Echo;
    impl Protocol for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn refusal(&self, why: Refused) -> Vec<u8> {
            format!("NO {}\r\n", why.as_str()).into_bytes()
        }
        fn serve(
            self: Arc<Self>,
            mut tcp: ClientStream,
            info: ConnectionInfo,
            shutdown: Shutdown,
        ) -> BoxFuture {
            Box::pin(async move {
                let line = format!("HI {} {}\r\n", info.endpoint, info.peer.ip());
                let _ = tcp.write_all(line.as_bytes()).await;
                shutdown.cancelled().await;
                let _ = tcp.write_all(b"BYE\r\n").await;
            })
        }
    }

    #[tokio::test]
    async fn admits_refuses_and_drains() {
        use tokio::io::AsyncReadExt as _;
        let ep = Endpoint::bind("plain", Security::Plain, "127.0.0.1:0")
            .expect("bind")
            .expect("on");
        let addr = ep.local_addrs()[0];
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve(
            Arc::new(Echo),
            vec![ep],
            ConnLimits::new(10, 1),
            Arc::new(ProxyPolicy::default()),
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let n = first.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"HI plain 127.0.0.1\r\n");
        // A second connection from the same IP is over the per-IP limit.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let mut refused = Vec::new();
        second.read_to_end(&mut refused).await.expect("read");
        assert_eq!(refused, b"NO per_ip\r\n");
        shutdown.cancel();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"BYE\r\n");
        server.await.expect("server ends after drain");
    }

    /// `--proxy-required`: a client that does not come through a trusted
    /// proxy is closed without a word (not even the refusal line).
    #[tokio::test]
    async fn proxy_required_refuses_direct_clients() {
        use tokio::io::AsyncReadExt as _;
        let ep = Endpoint::bind("plain", Security::Plain, "127.0.0.1:0")
            .expect("bind")
            .expect("on");
        let addr = ep.local_addrs()[0];
        let shutdown = Shutdown::new();
        let policy = ProxyPolicy::new("10.0.0.0/8", true).expect("policy");
        let server = tokio::spawn(serve(
            Arc::new(Echo),
            vec![ep],
            ConnLimits::new(10, 10),
            Arc::new(policy),
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        let mut direct = TcpStream::connect(addr).await.expect("connect");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), direct.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        shutdown.cancel();
        server.await.expect("server ends");
    }
}
