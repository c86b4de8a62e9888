//! Listeners, connection limits, implicit TLS (port 993, RFC 8314) and the
//! STARTTLS swap (RFC 9051 §6.2.1).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::io::Io;
use crate::response::{Code, Status};
use crate::session::{Exit, Session, Shared};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connection limits shared by both listeners.
#[derive(Debug)]
pub struct Limits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    max_per_ip: u32,
}

impl Limits {
    /// At most `total` connections, `per_ip` from one address.
    #[must_use]
    pub fn new(total: usize, per_ip: u32) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: per_ip,
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut map = self.per_ip.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Slot {
            limits: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

/// Held for the life of one connection.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.limits.per_ip.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Everything a connection needs.
#[derive(Clone)]
pub struct Server {
    pub shared: Arc<Shared>,
    pub acceptor: Option<TlsAcceptor>,
    pub limits: Arc<Limits>,
}

/// A short random session id for logs, the greeting and the store.
#[must_use]
pub fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Accepts connections until shutdown.
pub async fn accept_loop(
    server: Server,
    listener: TcpListener,
    implicit_tls: bool,
    shutdown: Shutdown,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { handle_tcp(server, tcp, peer, implicit_tls, shutdown).await });
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
}

async fn handle_tcp(
    server: Server,
    mut tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shutdown: Shutdown,
) {
    let Some(slot) = server.limits.admit(peer.ip()) else {
        metrics::counter!("imap_connections_refused_total").increment(1);
        if !implicit_tls {
            let bye = Status::bye("Too many connections, try again later")
                .with(Code::Unavailable)
                .encode(None);
            let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&bye)).await;
        }
        return;
    };
    metrics::counter!("imap_connections_total", "tls" => if implicit_tls { "implicit" } else { "plain" }).increment(1);
    let sid = new_session_id();
    let span = tracing::info_span!("imap", sid = %sid, peer = %peer, tls = implicit_tls);
    async move {
        tracing::debug!("connected");
        if let Err(e) =
            serve_connection(&server, tcp, peer.ip(), sid, implicit_tls, &shutdown).await
        {
            tracing::debug!(error = %e, "connection ended with error");
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
    drop(slot);
}

/// Runs one connection: optional implicit TLS, the session, and the
/// STARTTLS swap. Generic, so tests drive it over `tokio::io::duplex`.
///
/// # Errors
/// TLS handshake failures and I/O errors.
pub async fn serve_connection<S>(
    server: &Server,
    stream: S,
    peer: IpAddr,
    sid: String,
    implicit_tls: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if implicit_tls {
        let acceptor = server
            .acceptor
            .clone()
            .context("no TLS configured for implicit TLS")?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let mut session = Session::new(server.shared.clone(), sid, peer, true);
        let mut io = Io::new(tls);
        session.serve(&mut io, true, shutdown).await?;
        return Ok(());
    }
    let mut session = Session::new(server.shared.clone(), sid, peer, false);
    let mut io = Io::new(stream);
    match session.serve(&mut io, true, shutdown).await? {
        Exit::Closed => Ok(()),
        Exit::StartTls => {
            let acceptor = server
                .acceptor
                .clone()
                .context("STARTTLS without TLS configuration")?;
            // The session discarded every byte buffered before this point:
            // the handshake reads fresh from the socket.
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io.into_inner()))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            session.tls_established();
            let mut io = Io::new(tls);
            session.serve(&mut io, false, shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit() {
        let l = Limits::new(10, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let a = l.admit(ip);
        let b = l.admit(ip);
        assert!(a.is_some() && b.is_some());
        assert!(l.admit(ip).is_none());
        assert!(l.admit("192.0.2.2".parse().unwrap_or(ip)).is_some());
        drop(a);
        assert!(l.admit(ip).is_some());
    }

    #[test]
    fn total_limit() {
        let l = Limits::new(1, 5);
        let ip: IpAddr = IpAddr::from([192, 0, 2, 1]);
        let a = l.admit(ip);
        assert!(a.is_some());
        assert!(l.admit(IpAddr::from([192, 0, 2, 2])).is_none());
    }
}
