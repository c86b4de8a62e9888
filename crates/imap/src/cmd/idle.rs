//! IDLE (RFC 2177): updates pushed from the store's watch stream until
//! the client says DONE.

use std::time::Duration;

use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::response::Status;
use crate::session::{Exit, Session};

/// IDLE also resynchronises this often, whatever the watch stream says.
const IDLE_POLL: Duration = Duration::from_secs(60);

impl Session {
    /// IDLE (RFC 2177): updates pushed from the store's watch stream.
    pub(super) async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        shutdown: &Shutdown,
    ) -> std::io::Result<Option<Exit>> {
        Box::pin(self.sync(io, true)).await;
        io.write(b"+ idling\r\n");
        io.flush().await?;
        let notify = self
            .selected()
            .and_then(|m| m.watch.as_ref())
            .map(|w| w.notify.clone());
        // NOTIFY (RFC 5465 §4): other mailboxes are reported during IDLE too.
        let queue = self.notify.as_ref().map(|n| n.queue.clone());
        let deadline = tokio::time::Instant::now() + self.cfg().idle_timeout;
        loop {
            if let Some(lf) = io.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = io.rbuf.drain(..=lf).collect();
                let word = line.strip_suffix(b"\n").unwrap_or(&line);
                let word = word.strip_suffix(b"\r").unwrap_or(word);
                let st = if word.eq_ignore_ascii_case(b"DONE") {
                    Status::ok("IDLE terminated")
                } else {
                    Status::bad("Expected DONE")
                };
                io.write(&st.encode(Some(tag)));
                return Ok(None);
            }
            if io.rbuf.len() > 1024 {
                io.write(&Status::bye("Expected DONE").encode(None));
                io.flush().await?;
                return Ok(Some(Exit::Closed));
            }
            let notified = async {
                match &notify {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let others = async {
                match &queue {
                    Some(q) => q.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = others => {
                    Box::pin(self.notify_drain(io)).await;
                    io.flush().await?;
                }
                () = shutdown.cancelled() => {
                    io.write(&Status::bye("Server shutting down").encode(None));
                    io.flush().await?;
                    return Ok(Some(Exit::Closed));
                }
                () = tokio::time::sleep_until(deadline) => {
                    io.write(&Status::bye("Autologout; idle for too long").encode(None));
                    io.flush().await?;
                    return Ok(Some(Exit::Closed));
                }
                () = notified => {
                    Box::pin(self.sync(io, true)).await;
                    io.flush().await?;
                }
                // Safety net should the watch stream be unavailable.
                () = tokio::time::sleep(IDLE_POLL), if notify.is_some() => {
                    Box::pin(self.sync(io, true)).await;
                    io.flush().await?;
                }
                r = io.fill() => {
                    if r? == 0 {
                        return Ok(Some(Exit::Closed));
                    }
                }
            }
        }
    }
}
