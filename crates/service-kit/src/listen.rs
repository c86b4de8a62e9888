//! What every protocol listener shares: connection limits (in total and per
//! client IP) and an accept loop that stops on shutdown, survives accept
//! errors (EMFILE: back off, don't spin) and lets sessions end in a bounded
//! time.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Shutdown;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener is at its total limit.
    Total,
    /// This client address has too many connections.
    PerIp,
}

/// Connection limits shared by the listeners of one service.
#[derive(Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    max_per_ip: u32,
}

impl ConnLimits {
    /// At most `total` connections, `per_ip` from one address.
    #[must_use]
    pub fn new(total: usize, per_ip: u32) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: per_ip,
        })
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
        let mut map = self.per_ip.lock().map_err(|_| Refused::Total)?;
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
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

/// Accepts connections until `shutdown`, running `handle` for each on its
/// own task (TCP_NODELAY set), then waits up to `drain` for the sessions,
/// which see the same shutdown token and say goodbye themselves.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: Shutdown,
    drain: Duration,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        tasks.spawn(handle(tcp, peer));
    }
    tasks.close();
    let _ = tokio::time::timeout(drain, tasks.wait()).await;
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
}
