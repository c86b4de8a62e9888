//! Buffered, timed I/O over any `AsyncRead + AsyncWrite` stream (TCP, TLS,
//! or an in-memory `tokio::io::duplex` pipe in tests).
//!
//! Replies are collected in a write buffer and flushed before the next read
//! that would block, which answers pipelined commands (RFC 2920) in one
//! segment without ever waiting with unsent replies.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::Reply;
use crate::proto::line::{self, Frame};

/// Bytes read from the socket at most per call.
const READ_CHUNK: usize = 16 * 1024;
/// An over-long line is discarded up to its LF; past this many discarded
/// bytes the client is flooding and the connection is closed.
const MAX_DISCARD: usize = 1024 * 1024;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Socket or TLS error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No data within the command or data timeout.
    #[error("timeout")]
    Timeout,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// An endless line.
    #[error("line flood")]
    Flood,
}

/// One line read in command mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line ended by CRLF, without the CRLF.
    Ok(Vec<u8>),
    /// Longer than allowed (consumed and discarded).
    TooLong,
    /// Ended by a bare LF (consumed and discarded).
    BareLf,
}

/// A stream with a read buffer and a write buffer.
pub struct Conn<S> {
    io: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream.
    pub fn new(io: S) -> Self {
        Self {
            io,
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
        }
    }

    /// Gives the stream back and DISCARDS whatever was read but not yet
    /// consumed: after STARTTLS, bytes that arrived in plaintext must never
    /// be taken as commands inside TLS (RFC 3207 §4.2, CVE-2011-0411).
    /// Returns the number of discarded bytes.
    pub fn into_inner(self) -> (S, usize) {
        (self.io, self.rbuf.len())
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf
    }

    /// Queues a reply.
    pub fn send(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wbuf);
    }

    /// Writes queued replies to the stream.
    ///
    /// # Errors
    /// On I/O failure.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Shuts the write side down (after a final reply).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// Reads more bytes (flushing replies first), waiting at most `timeout`.
    ///
    /// # Errors
    /// Timeout, EOF or I/O failure.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ConnError> {
        self.flush().await?;
        // read_buf only appends what was read: cancel-safe (the session
        // races reads against the shutdown signal).
        self.rbuf.reserve(READ_CHUNK);
        let n = match tokio::time::timeout(timeout, self.io.read_buf(&mut self.rbuf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnError::Timeout),
        };
        if n == 0 {
            return Err(ConnError::Closed);
        }
        metrics::counter!("smtp_in_bytes_received_total").increment(n as u64);
        Ok(n)
    }

    /// Reads one line of at most `max` octets (CRLF included).
    ///
    /// # Errors
    /// Timeout, EOF, I/O failure, or an endless line.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ConnError> {
        loop {
            match line::frame(&self.rbuf, max) {
                Frame::Line { len, consumed } => {
                    let line = self.rbuf[..len].to_vec();
                    self.rbuf.drain(..consumed);
                    return Ok(Line::Ok(line));
                }
                Frame::Bad { consumed, too_long } => {
                    self.rbuf.drain(..consumed);
                    return Ok(if too_long {
                        Line::TooLong
                    } else {
                        Line::BareLf
                    });
                }
                Frame::Overflow => {
                    self.discard_line(timeout).await?;
                    return Ok(Line::TooLong);
                }
                Frame::NeedMore => {
                    self.fill(timeout).await?;
                }
            }
        }
    }

    /// Drops bytes up to and including the next LF.
    async fn discard_line(&mut self, timeout: Duration) -> Result<(), ConnError> {
        let mut discarded = 0usize;
        loop {
            if let Some(lf) = self.rbuf.iter().position(|&b| b == b'\n') {
                self.rbuf.drain(..=lf);
                return Ok(());
            }
            discarded += self.rbuf.len();
            self.rbuf.clear();
            if discarded > MAX_DISCARD {
                return Err(ConnError::Flood);
            }
            self.fill(timeout).await?;
        }
    }

    /// Takes up to `max` buffered bytes, reading first if none are buffered.
    /// The caller consumes what it uses with [`Conn::consume`].
    ///
    /// # Errors
    /// Timeout, EOF or I/O failure.
    pub async fn peek_some(&mut self, timeout: Duration) -> Result<&[u8], ConnError> {
        if self.rbuf.is_empty() {
            self.fill(timeout).await?;
        }
        Ok(&self.rbuf)
    }

    /// Drops `n` consumed bytes from the read buffer.
    pub fn consume(&mut self, n: usize) {
        self.rbuf.drain(..n.min(self.rbuf.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_and_overflow() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(server);
        let t = Duration::from_secs(5);
        let writer = tokio::spawn(async move {
            let mut client = client;
            client.write_all(b"NOOP\r\nbad\nx").await.expect("write");
            client.write_all(&vec![b'a'; 5000]).await.expect("write");
            client.write_all(b"\r\nQUIT\r\n").await.expect("write");
            client
        });
        assert_eq!(
            conn.read_line(1000, t).await.expect("line"),
            Line::Ok(b"NOOP".to_vec())
        );
        assert_eq!(conn.read_line(1000, t).await.expect("line"), Line::BareLf);
        assert_eq!(conn.read_line(1000, t).await.expect("line"), Line::TooLong);
        assert_eq!(
            conn.read_line(1000, t).await.expect("line"),
            Line::Ok(b"QUIT".to_vec())
        );
        drop(writer.await);
        assert!(matches!(
            conn.read_line(1000, t).await,
            Err(ConnError::Closed)
        ));
    }

    #[tokio::test]
    async fn endless_line_is_a_flood() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(server);
        tokio::spawn(async move {
            let mut client = client;
            let junk = vec![b'a'; 64 * 1024];
            for _ in 0..40 {
                if client.write_all(&junk).await.is_err() {
                    break;
                }
            }
        });
        let got = conn.read_line(1000, Duration::from_secs(5)).await;
        assert!(matches!(got, Err(ConnError::Flood)), "{got:?}");
    }
}
