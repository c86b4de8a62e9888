//! Buffered connection I/O shared by every session state: an input buffer
//! the framer looks at, and an output buffer flushed when it grows past
//! [`FLUSH_AT`] (so large FETCH bodies stream with the socket's
//! back-pressure instead of accumulating in memory).

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::framing::Framer;

/// Output is written to the socket once this many bytes are pending.
pub const FLUSH_AT: usize = 64 * 1024;

/// A client that reads nothing for this long while we have output for it
/// is dropped (a stalled reader must not pin a session forever).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A byte stream with its buffers.
pub struct Io<S> {
    pub stream: S,
    /// Unconsumed input; starts at the current command.
    pub rbuf: Vec<u8>,
    pub framer: Framer,
    wbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: Vec::with_capacity(4096),
            framer: Framer::new(),
            wbuf: Vec::with_capacity(8192),
        }
    }

    /// Queues bytes for the client.
    pub fn write(&mut self, b: &[u8]) {
        self.wbuf.extend_from_slice(b);
    }

    /// Writes the queue out when it has grown large.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.len() >= FLUSH_AT {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Writes everything queued.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let write = async {
            if !self.wbuf.is_empty() {
                self.stream.write_all(&self.wbuf).await?;
                self.wbuf.clear();
            }
            self.stream.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
            })?
    }

    /// Reads more input; `Ok(0)` at end of stream.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        // Read straight into the buffer (no large array in the future).
        self.rbuf.reserve(16 * 1024);
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Drops every byte received but not yet consumed (RFC 9051 §6.2.1:
    /// nothing sent before the TLS handshake may be acted on after it).
    pub fn discard_input(&mut self) {
        self.rbuf.clear();
        self.framer.reset();
    }

    /// Gives the stream back (for the STARTTLS swap).
    pub fn into_inner(self) -> S {
        self.stream
    }
}
