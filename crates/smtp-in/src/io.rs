//! Buffered, timed I/O over any `AsyncRead + AsyncWrite` stream (TCP, TLS,
//! or an in-memory `tokio::io::duplex` pipe in tests).
//!
//! Replies are collected in a write buffer and flushed before the next read
//! that would block, which answers pipelined commands (RFC 2920) in one
//! segment without ever waiting with unsent replies.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
// tokio's clock, so tests can run deadlines on paused time.
use tokio::time::Instant;

use crate::proto::Reply;
use crate::proto::line::{self, Frame};

/// Bytes read from the socket at most per call.
const READ_CHUNK: usize = 16 * 1024;
/// An over-long line is discarded up to its LF; past this many discarded
/// bytes the client is flooding and the connection is closed.
const MAX_DISCARD: usize = 1024 * 1024;
/// The last reply before closing gets this long to leave, whatever the
/// deadlines say (a peer that never reads cannot hold us).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

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
    /// The whole session took longer than allowed.
    #[error("session deadline")]
    SessionDeadline,
    /// A whole DATA phase or BDAT transaction took longer than allowed.
    #[error("data phase deadline")]
    PhaseDeadline,
    /// Message data arrived slower than the minimum rate.
    #[error("data rate below the minimum")]
    TooSlow,
}

/// The minimum average rate of a data phase, enforced once `grace` has
/// passed since the phase began (a slow start is forgiven, a drip is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFloor {
    /// Octets per second, averaged over the whole phase.
    pub bytes_per_sec: u64,
    /// No rate is asked for before this.
    pub grace: Duration,
}

impl RateFloor {
    /// How long after the phase began `bytes` octets keep the average at
    /// or above the floor.
    fn lasts(self, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::MAX;
        }
        #[allow(clippy::cast_precision_loss)]
        let secs = bytes as f64 / self.bytes_per_sec as f64;
        self.grace.max(Duration::from_secs_f64(secs))
    }
}

/// A data phase in progress (DATA, or a BDAT transaction).
#[derive(Debug, Clone, Copy)]
struct Phase {
    started: Instant,
    deadline: Instant,
    bytes: u64,
    floor: Option<RateFloor>,
}

/// Why a wait ends if nothing arrives.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Timeout,
    Session,
    Phase,
    Slow,
}

impl From<Cut> for ConnError {
    fn from(c: Cut) -> Self {
        match c {
            Cut::Timeout => Self::Timeout,
            Cut::Session => Self::SessionDeadline,
            Cut::Phase => Self::PhaseDeadline,
            Cut::Slow => Self::TooSlow,
        }
    }
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
    session_deadline: Option<Instant>,
    phase: Option<Phase>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream.
    pub fn new(io: S) -> Self {
        Self {
            io,
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            session_deadline: None,
            phase: None,
        }
    }

    /// Every later read and write ends at `at` with
    /// [`ConnError::SessionDeadline`].
    pub fn set_session_deadline(&mut self, at: Instant) {
        self.session_deadline = Some(at);
    }

    /// Starts a data phase (unless one is running): reads end at
    /// `limit` from now with [`ConnError::PhaseDeadline`], or as soon as
    /// the average rate falls under `floor` with [`ConnError::TooSlow`].
    pub fn start_phase(&mut self, limit: Duration, floor: Option<RateFloor>) {
        if self.phase.is_none() {
            let now = Instant::now();
            self.phase = Some(Phase {
                started: now,
                deadline: now
                    .checked_add(limit)
                    .unwrap_or(now + Duration::from_secs(86_400)),
                bytes: 0,
                floor,
            });
        }
    }

    /// Ends the data phase, if any.
    pub fn end_phase(&mut self) {
        self.phase = None;
    }

    /// How long the next wait may last, and what ends it: the per-read
    /// `timeout`, the session deadline, the phase deadline, or the moment
    /// the phase's average rate would fall under its floor.
    fn budget(&self, timeout: Duration) -> (Instant, Cut) {
        let now = Instant::now();
        let mut until = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400));
        let mut cut = Cut::Timeout;
        let mut earlier = |at: Instant, why: Cut| {
            if at < until {
                until = at;
                cut = why;
            }
        };
        if let Some(d) = self.session_deadline {
            earlier(d, Cut::Session);
        }
        if let Some(p) = self.phase {
            earlier(p.deadline, Cut::Phase);
            if let Some(floor) = p.floor
                && let Some(at) = p.started.checked_add(floor.lasts(p.bytes))
            {
                earlier(at, Cut::Slow);
            }
        }
        (until, cut)
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
        match self.session_deadline {
            // A peer that stops reading cannot hold the session past its
            // deadline by letting our writes block.
            Some(d) => tokio::time::timeout_at(d, self.write_out())
                .await
                .map_err(|_| ConnError::SessionDeadline)?,
            None => self.write_out().await,
        }
    }

    async fn write_out(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Shuts the write side down (after a final reply), giving the reply
    /// at most a few seconds to leave.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = self.write_out().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Reads more bytes (flushing replies first), waiting at most `timeout`
    /// and never past the session deadline, the data phase deadline or the
    /// moment the phase's rate falls under its floor (the error says which).
    ///
    /// # Errors
    /// Timeout, deadline, too slow, EOF or I/O failure.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ConnError> {
        let (until, cut) = self.budget(timeout);
        if until <= Instant::now() {
            return Err(cut.into());
        }
        match tokio::time::timeout_at(until, self.write_out()).await {
            Ok(r) => r?,
            Err(_) => return Err(cut.into()),
        }
        // read_buf only appends what was read: cancel-safe (the session
        // races reads against the shutdown signal).
        self.rbuf.reserve(READ_CHUNK);
        let n = match tokio::time::timeout_at(until, self.io.read_buf(&mut self.rbuf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(cut.into()),
        };
        if n == 0 {
            return Err(ConnError::Closed);
        }
        if let Some(p) = &mut self.phase {
            p.bytes += n as u64;
        }
        metrics::counter!("smtp_in_bytes_received_total").increment(n as u64);
        Ok(n)
    }

    /// Capacity of the read buffer (tests: proof that refused data is not
    /// buffered whole).
    #[must_use]
    pub fn read_capacity(&self) -> usize {
        self.rbuf.capacity()
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

    /// Reads until the connection fails, returning the error and the time
    /// it took. (Real time: bounds below are exact, bounds above generous.)
    async fn read_until_cut<S: AsyncRead + AsyncWrite + Unpin>(
        conn: &mut Conn<S>,
    ) -> (ConnError, Duration) {
        let start = Instant::now();
        loop {
            match conn.peek_some(Duration::from_secs(300)).await {
                Ok(buf) => {
                    let n = buf.len();
                    conn.consume(n);
                }
                Err(e) => return (e, start.elapsed()),
            }
        }
    }

    /// Writes `chunk` every `every` until the other side goes away.
    fn drip(mut client: tokio::io::DuplexStream, chunk: &'static [u8], every: Duration) {
        tokio::spawn(async move {
            while client.write_all(chunk).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        });
    }

    /// One byte every 200 ms keeps every single read far inside RFC 5321
    /// §4.5.3.2's 3 minutes, yet is cut as too slow once the grace is over.
    #[tokio::test]
    async fn drip_is_cut_after_the_grace_period() {
        let (client, server) = tokio::io::duplex(1024);
        drip(client, b"x", Duration::from_millis(200));
        let mut conn = Conn::new(server);
        conn.start_phase(
            Duration::from_secs(600),
            Some(RateFloor {
                bytes_per_sec: 256,
                grace: Duration::from_secs(1),
            }),
        );
        let (e, took) = read_until_cut(&mut conn).await;
        assert!(matches!(e, ConnError::TooSlow), "{e:?}");
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert!(took < Duration::from_secs(30), "{took:?}");
    }

    /// A steady sender above the floor runs into the phase deadline, and
    /// after the phase ends only the session deadline is left.
    #[tokio::test]
    async fn phase_then_session_deadline() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        drip(client, &[b'x'; 1024], Duration::from_millis(100));
        let mut conn = Conn::new(server);
        let start = Instant::now();
        conn.set_session_deadline(start + Duration::from_secs(4));
        let floor = RateFloor {
            bytes_per_sec: 256,
            grace: Duration::from_millis(500),
        };
        conn.start_phase(Duration::from_secs(2), Some(floor));
        let (e, took) = read_until_cut(&mut conn).await;
        assert!(matches!(e, ConnError::PhaseDeadline), "{e:?}");
        assert!(took >= Duration::from_secs(2), "{took:?}");
        conn.end_phase();
        let (e, _) = read_until_cut(&mut conn).await;
        assert!(matches!(e, ConnError::SessionDeadline), "{e:?}");
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(4), "{took:?}");
        assert!(took < Duration::from_secs(60), "{took:?}");
    }

    /// A peer that never reads our replies cannot hold the session past its
    /// deadline: the blocked write is cut too.
    #[tokio::test]
    async fn blocked_write_is_cut_at_the_session_deadline() {
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(server);
        conn.set_session_deadline(Instant::now() + Duration::from_secs(1));
        for _ in 0..100 {
            conn.send(&Reply::new(250, None, "a reply nobody reads"));
        }
        let got = conn.fill(Duration::from_secs(300)).await;
        assert!(matches!(got, Err(ConnError::SessionDeadline)), "{got:?}");
    }

    #[test]
    fn rate_floor_arithmetic() {
        let f = RateFloor {
            bytes_per_sec: 100,
            grace: Duration::from_secs(30),
        };
        assert_eq!(f.lasts(0), Duration::from_secs(30));
        assert_eq!(f.lasts(3000), Duration::from_secs(30));
        assert_eq!(f.lasts(6000), Duration::from_secs(60));
        let off = RateFloor {
            bytes_per_sec: 0,
            grace: Duration::ZERO,
        };
        assert_eq!(off.lasts(0), Duration::MAX);
    }
}
