//! Connections: TLS configuration, the accept loops for port 110 (STLS,
//! RFC 2595 §4) and 995 (implicit TLS, RFC 8314 §3.3), the STLS swap, and the
//! connection limits (total and per client IP).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::proto::{Reply, RespCode};
use crate::session::{Outcome, Session, Shared, new_session_id};

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the rustls server configuration (shared construction in
/// `tls-kit`): PEM files, or a freshly generated self-signed certificate when
/// `self_signed` is set explicitly. `Ok(None)` when neither is configured:
/// then no STLS and no port 995.
///
/// # Errors
/// Unreadable or invalid PEM files; certificate/key mismatch.
pub fn tls_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    self_signed: bool,
    hostname: &str,
) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    Ok(tls_kit::configure(cert, key, self_signed, hostname)?)
}

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

    /// A slot for one connection from `ip`, or the reply to refuse it with.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Reply> {
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err(Reply::err_code(
                RespCode::SysTemp,
                "Too many connections, try again later",
            ));
        };
        let mut map = self
            .per_ip
            .lock()
            .map_err(|_| Reply::err_code(RespCode::SysTemp, "Try again later"))?;
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Reply::err_code(
                RespCode::SysTemp,
                "Too many connections from your address, try again later",
            ));
        }
        *n += 1;
        Ok(Slot {
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
    /// Session configuration and store.
    pub shared: Arc<Shared>,
    /// TLS for STLS and port 995.
    pub acceptor: Option<TlsAcceptor>,
    /// Connection limits.
    pub limits: Arc<Limits>,
}

/// Accepts connections until shutdown. `implicit_tls`: port 995 behaviour.
pub async fn accept_loop(
    server: Server,
    listener: TcpListener,
    implicit_tls: bool,
    shutdown: CancellationToken,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
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
        let server = server.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { handle_tcp(server, tcp, peer, implicit_tls, shutdown).await });
    }
    tasks.close();
    // Sessions got their goodbye from the shutdown token; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
}

async fn handle_tcp(
    server: Server,
    mut tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shutdown: CancellationToken,
) {
    let slot = match server.limits.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(reply) => {
            metrics::counter!("pop3_connections_refused_total").increment(1);
            if !implicit_tls {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&reply.to_bytes()))
                        .await;
            }
            return;
        }
    };
    metrics::counter!("pop3_connections_total").increment(1);
    let sid = new_session_id();
    let span = tracing::info_span!("pop3", sid = %sid, peer = %peer, tls = implicit_tls);
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

/// Runs one connection: the optional implicit TLS handshake, the session,
/// and the STLS swap. Generic, so tests can drive it over `duplex`.
///
/// # Errors
/// TLS handshake failures and fatal session errors.
pub async fn serve_connection<S>(
    server: &Server,
    io: S,
    peer: IpAddr,
    sid: String,
    implicit_tls: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if implicit_tls {
        let acceptor = server
            .acceptor
            .clone()
            .context("no TLS configured for implicit TLS")?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let mut session = Session::new(server.shared.clone(), sid, peer, true);
        session.serve(tls, true, shutdown).await?;
        return Ok(());
    }
    let mut session = Session::new(server.shared.clone(), sid, peer, false);
    match session.serve(io, true, shutdown).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(io) => {
            let acceptor = server
                .acceptor
                .clone()
                .context("STLS without TLS configuration")?;
            // The session discarded every byte read before this point; the
            // handshake reads fresh from the socket (RFC 2595 §4).
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            session.tls_established();
            session.serve(tls, false, shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_total() {
        let limits = Limits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let a1 = limits.admit(a).expect("first");
        let a2 = limits.admit(a).expect("second");
        let refused = limits.admit(a).err().expect("third from a refused");
        assert_eq!(
            refused.to_bytes(),
            b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
        );
        let b1 = limits.admit(b).expect("other address");
        // Total of 3 reached.
        assert!(limits.admit(b).is_err());
        drop(a1);
        let _a3 = limits.admit(a).expect("slot freed on drop");
        drop((a2, b1));
        assert_eq!(limits.per_ip.lock().expect("lock").get(&b), None);
    }

    #[test]
    fn tls_config_needs_both_files_and_self_signed_is_explicit() {
        assert!(
            tls_config(None, None, false, "localhost")
                .expect("ok")
                .is_none()
        );
        assert!(
            tls_config(None, None, true, "localhost")
                .expect("ok")
                .is_some()
        );
        assert!(tls_config(Some(Path::new("/nonexistent")), None, false, "x").is_err());
        assert!(
            tls_config(
                Some(Path::new("/nonexistent")),
                Some(Path::new("/nonexistent")),
                false,
                "x"
            )
            .is_err()
        );
    }
}
