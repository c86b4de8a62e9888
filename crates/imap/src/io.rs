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

/// The read buffer of a session waiting for its next command: a command
/// line fits; a longer one or a literal grows it with large reads.
pub const IDLE_READ: usize = 1024;

/// At most this much decompressed input is produced per read, so a
/// small compressed input cannot expand into a huge buffer before the
/// framer's limits see it.
pub const INFLATE_STEP: usize = 64 * 1024;

/// A byte stream with its buffers.
pub struct Io<S> {
    pub stream: S,
    /// Unconsumed input; starts at the current command.
    pub rbuf: Vec<u8>,
    pub framer: Framer,
    wbuf: Vec<u8>,
    /// COMPRESS=DEFLATE in force (RFC 4978), both directions.
    deflate: Option<Box<Deflate>>,
}

/// Raw DEFLATE (RFC 1951) streams of a compressed session: what the
/// client sent but was not yet inflated, and both stream states.
struct Deflate {
    out: flate2::Compress,
    inp: flate2::Decompress,
    raw: Vec<u8>,
}

impl Deflate {
    fn new() -> Self {
        Self {
            out: flate2::Compress::new(flate2::Compression::fast(), false),
            inp: flate2::Decompress::new(false),
            raw: Vec::new(),
        }
    }

    /// Inflates pending input into `to`, at most [`INFLATE_STEP`] bytes.
    fn inflate(&mut self, to: &mut Vec<u8>) -> std::io::Result<usize> {
        let (in0, out0) = (self.inp.total_in(), self.inp.total_out());
        let keep = to.len();
        to.resize(keep + INFLATE_STEP, 0);
        let r = self
            .inp
            .decompress(&self.raw, &mut to[keep..], flate2::FlushDecompress::Sync);
        let consumed = usize::try_from(self.inp.total_in() - in0).unwrap_or(usize::MAX);
        let produced = usize::try_from(self.inp.total_out() - out0).unwrap_or(usize::MAX);
        to.truncate(keep + produced.min(INFLATE_STEP));
        self.raw.drain(..consumed.min(self.raw.len()));
        r.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(produced)
    }

    /// `data` deflated and sync-flushed (RFC 4978 §4: every response
    /// leaves in full).
    fn deflate(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut at = 0;
        loop {
            let before = self.out.total_in();
            self.out
                .compress_vec(&data[at..], &mut out, flate2::FlushCompress::Sync)
                .map_err(std::io::Error::other)?;
            at += usize::try_from(self.out.total_in() - before).unwrap_or(0);
            if at >= data.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(4096));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: Vec::new(),
            framer: Framer::new(),
            wbuf: Vec::new(),
            deflate: None,
        }
    }

    /// Whether COMPRESS=DEFLATE is in force.
    #[must_use]
    pub fn compressing(&self) -> bool {
        self.deflate.is_some()
    }

    /// Turns COMPRESS=DEFLATE on, after the tagged OK was flushed (RFC
    /// 4978 §3): whatever follows is compressed both ways, including input
    /// already received behind the command.
    pub fn start_compression(&mut self) {
        let mut z = Box::new(Deflate::new());
        z.raw = std::mem::take(&mut self.rbuf);
        self.deflate = Some(z);
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
                match &mut self.deflate {
                    Some(z) => {
                        let out = z.deflate(&self.wbuf)?;
                        self.stream.write_all(&out).await?;
                    }
                    None => self.stream.write_all(&self.wbuf).await?,
                }
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
        if let Some(z) = &mut self.deflate {
            // Inflate what is pending first; read only when that yields
            // nothing (a partial block), so no input waits behind a read.
            loop {
                if !z.raw.is_empty() {
                    let n = z.inflate(&mut self.rbuf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
                if z.raw.len() > INFLATE_STEP {
                    // Input that inflates to nothing, piling up.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "compressed input that inflates to nothing",
                    ));
                }
                z.raw.reserve(16 * 1024);
                if self.stream.read_buf(&mut z.raw).await? == 0 {
                    return Ok(0);
                }
            }
        }
        if self.rbuf.is_empty() {
            // Waiting for the next command, perhaps for hours (IDLE): hold
            // no more than a small read buffer meanwhile, and give back
            // what the last command and its response grew (10,000 idle
            // sessions held 20 KiB each here; docs/benchmarks.md).
            if self.rbuf.capacity() > IDLE_READ {
                self.rbuf = Vec::new();
            }
            if self.wbuf.is_empty() {
                self.wbuf = Vec::new();
            }
            self.rbuf.reserve(IDLE_READ);
        } else {
            // In the middle of a command (a literal): large reads.
            self.rbuf.reserve(16 * 1024);
        }
        // Read straight into the buffer (no large array in the future).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// RFC 4978 both ways over a pipe, and a decompression bomb (10 MB of
    /// one byte, compressed to a few KB) that is inflated at most
    /// [`INFLATE_STEP`] bytes per read, so the framer's limits see it
    /// before it can fill memory.
    #[tokio::test]
    async fn deflate_both_ways_and_bounded_inflation() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut io = Io::new(server);
        io.start_compression();
        io.write(b"* OK hello\r\n");
        io.flush().await.expect("flush");
        let mut wire = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut client, &mut wire)
            .await
            .expect("read");
        let mut inflate = flate2::Decompress::new(false);
        let mut plain = Vec::with_capacity(64);
        inflate
            .decompress_vec(&wire[..n], &mut plain, flate2::FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(plain, b"* OK hello\r\n");

        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        deflate.write_all(&vec![b'a'; 10 << 20]).expect("deflate");
        let bomb = deflate.finish().expect("finish");
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        client.write_all(&bomb).await.expect("send");
        for _ in 0..3 {
            let before = io.rbuf.len();
            let got = io.fill().await.expect("fill");
            assert!(got > 0 && got <= INFLATE_STEP, "{got}");
            assert_eq!(io.rbuf.len(), before + got);
        }
        assert!(io.rbuf.len() <= 3 * INFLATE_STEP);
    }

    /// A session waiting for its next command gives back the buffers the
    /// previous command and response grew, and reads into a small one.
    #[tokio::test]
    async fn waiting_for_a_command_holds_small_buffers() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut io = Io::new(server);
        client.write_all(&vec![b'x'; 100_000]).await.expect("send");
        while io.rbuf.len() < 100_000 {
            io.fill().await.expect("fill");
        }
        assert!(io.rbuf.capacity() >= 100_000);
        io.rbuf.clear();
        io.write(&vec![b'y'; 50_000]);
        io.flush().await.expect("flush");
        let mut sink = vec![0u8; 50_000];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut sink)
            .await
            .expect("read");
        client.write_all(b"a NOOP\r\n").await.expect("send");
        io.fill().await.expect("fill");
        assert_eq!(io.rbuf, b"a NOOP\r\n");
        assert!(io.rbuf.capacity() <= IDLE_READ, "{}", io.rbuf.capacity());
        assert_eq!(io.wbuf.capacity(), 0);
    }

    /// Garbage after COMPRESS is an error, not a hang or a panic.
    #[tokio::test]
    async fn corrupt_deflate_input_is_an_error() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut io = Io::new(server);
        io.start_compression();
        client.write_all(&[0xff; 64]).await.expect("send");
        assert!(io.fill().await.is_err());
    }
}
