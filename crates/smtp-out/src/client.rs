//! The SMTP client side of one connection (RFC 5321 §3, §4.5.3.2 timeouts),
//! with opportunistic STARTTLS (RFC 3207, RFC 7435), PIPELINING (RFC 2920),
//! SIZE (RFC 1870), 8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531).
//!
//! State: [`Connection::open`] reads the greeting, says EHLO (HELO when EHLO
//! is refused), upgrades with STARTTLS when offered and says EHLO again
//! inside TLS; then any number of [`Connection::send`] transactions, then
//! [`Connection::quit`]. Replies are read with [`mail_wire::reply::parse`]; a
//! hostile or broken reply is a [`ClientError`], which the worker treats as
//! a temporary failure of this host.

use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use mail_wire::reply::{self, Reply, ReplyError};

mod envelope;
mod tls;
mod transaction;

pub use envelope::{DsnParams, Envelope, xtext};
pub use tls::{Verifier, opportunistic_tls};

/// Per-command time limits (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Greeting (5 min), EHLO, STARTTLS, MAIL (5 min), RCPT (5 min), RSET, QUIT.
    pub command: Duration,
    /// DATA initiation (2 min).
    pub data_init: Duration,
    /// Each data block written (3 min).
    pub data_block: Duration,
    /// The reply to the final `.` (10 min).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    /// SIZE limit; `Some(0)` = SIZE offered without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub chunking: bool,
    /// RFC 3461 DSN extension.
    pub dsn: bool,
    /// SASL mechanisms of the AUTH extension (RFC 4954), upper case.
    pub auth: Vec<String>,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
}

impl Capabilities {
    /// Parses the lines of a 250 EHLO reply (the first line is the greeting).
    #[must_use]
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self {
            esmtp: true,
            ..Self::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                "AUTH" => caps
                    .auth
                    .extend(words.by_ref().map(str::to_ascii_uppercase)),
                _ => {}
            }
        }
        caps
    }
}

/// Why a connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    #[error("connection closed by the remote during {0}")]
    Closed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(#[from] ReplyError),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// Our own policy stops here (MTA-STS `enforce` without verified TLS):
    /// the text starts with the enhanced status code.
    #[error("{0}")]
    Policy(String),
    /// The server refused the session itself (greeting or EHLO/HELO).
    #[error("{stage} refused: {reply}")]
    Refused { stage: &'static str, reply: Reply },
}

/// The negotiated TLS parameters, for the event log.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// The certificate chain is valid for the host name we asked for.
    pub verified: bool,
    /// Why it is not (empty when verified).
    pub verify_error: String,
}

/// The plain or TLS stream under a connection.
enum Io<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = match self {
            Io::Plain(s) => s.read(&mut chunk).await?,
            Io::Tls(s) => s.read(&mut chunk).await?,
        };
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

/// The outcome for one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

impl RcptOutcome {
    fn from_reply(r: &Reply) -> Self {
        match r.class() {
            2 => Self::Delivered(r.summary()),
            5 => Self::Failed(r.summary()),
            // 4xx, or a 3xx where it makes no sense: try again later.
            _ => Self::Deferred(r.summary()),
        }
    }
}

/// One established SMTP session.
pub struct Connection<S> {
    io: Io<S>,
    buf: Vec<u8>,
    pub caps: Capabilities,
    pub tls: Option<TlsInfo>,
    pub greeting: Reply,
    timeouts: Timeouts,
    /// A transaction was started and not completed: RSET before the next.
    dirty: bool,
    /// Transactions completed on this connection.
    pub transactions: u32,
}

/// How to start TLS when the server offers STARTTLS.
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
    /// Judges the presented certificate for [`TlsInfo::verified`].
    pub verifier: Option<Verifier>,
    /// DANE TLSA records of the host (RFC 7672 §3): when present they, not
    /// the PKIX verifier, decide [`TlsInfo::verified`].
    pub dane: Option<std::sync::Arc<Vec<crate::dane::Tlsa>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Greeting, EHLO, and (when `tls` is given and offered) STARTTLS.
    ///
    /// # Errors
    /// Any [`ClientError`]: the caller tries the next host.
    pub async fn open(
        stream: S,
        hostname: &str,
        tls: Option<&Tls>,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        let mut c = Self {
            io: Io::Plain(stream),
            buf: Vec::new(),
            caps: Capabilities::default(),
            tls: None,
            greeting: Reply::multi(0, None, Vec::new()),
            timeouts,
            dirty: false,
            transactions: 0,
        };
        // RFC 5321 §3.1: 220 greeting; 554 means "go away".
        let greeting = c.read_reply("greeting", timeouts.command).await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        c.greeting = greeting;
        c.hello(hostname).await?;
        if let Some(tls) = tls
            && c.caps.starttls
        {
            c.write(b"STARTTLS\r\n", "STARTTLS").await?;
            let r = c.read_reply("STARTTLS", timeouts.command).await?;
            if r.code == 220 {
                // RFC 3207 §4.2 / threat model T13: anything the server sent after
                // its 220 in plaintext is injected; drop it.
                c.buf.clear();
                let Io::Plain(plain) = c.io else {
                    return Err(ClientError::Closed("STARTTLS"));
                };
                let stream = tokio::time::timeout(
                    timeouts.command,
                    tls.connector.connect(tls.server_name.clone(), plain),
                )
                .await
                .map_err(|_| ClientError::Timeout("TLS handshake"))?
                .map_err(ClientError::Tls)?;
                let (_, session) = stream.get_ref();
                let verified = match (&tls.dane, &tls.verifier, session.peer_certificates()) {
                    (Some(records), _, Some(chain)) => {
                        crate::dane::verify(records, chain, &tls.server_name)
                    }
                    (None, Some(v), Some(chain)) => v.verify(chain, &tls.server_name),
                    (_, _, None) => Err("no certificate presented".into()),
                    (None, None, _) => Err("certificate not checked".into()),
                };
                c.tls = Some(TlsInfo {
                    verified: verified.is_ok(),
                    verify_error: verified.err().unwrap_or_default(),
                    version: session
                        .protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    cipher: session
                        .negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                        .unwrap_or_default(),
                });
                c.io = Io::Tls(Box::new(stream));
                // RFC 3207 §4.2: forget what we knew; EHLO again.
                c.caps = Capabilities::default();
                c.hello(hostname).await?;
            }
            // Otherwise (454 etc.): carry on in plaintext (opportunistic).
        }
        Ok(c)
    }

    /// EHLO, falling back to HELO when EHLO is not understood.
    async fn hello(&mut self, hostname: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {hostname}\r\n").as_bytes(), "EHLO")
            .await?;
        let r = self.read_reply("EHLO", self.timeouts.command).await?;
        if r.code == 250 {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        if r.is_permanent() && matches!(r.code, 500 | 502 | 504 | 550) {
            self.write(format!("HELO {hostname}\r\n").as_bytes(), "HELO")
                .await?;
            let r = self.read_reply("HELO", self.timeouts.command).await?;
            if r.code == 250 {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(ClientError::Refused {
                stage: "HELO",
                reply: r,
            });
        }
        Err(ClientError::Refused {
            stage: "EHLO",
            reply: r,
        })
    }

    async fn write(&mut self, data: &[u8], stage: &'static str) -> Result<(), ClientError> {
        let t = if stage == "data" {
            self.timeouts.data_block
        } else {
            self.timeouts.command
        };
        tokio::time::timeout(t, self.io.write_all(data))
            .await
            .map_err(|_| ClientError::Timeout(stage))??;
        Ok(())
    }

    /// Reads one complete reply within `limit` (for the whole reply, so a
    /// server that drips one byte at a time still times out).
    async fn read_reply(
        &mut self,
        stage: &'static str,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((r, used)) = reply::parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(r);
            }
            let n = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout(stage))??;
            if n == 0 {
                return Err(ClientError::Closed(stage));
            }
        }
    }

    /// RFC 4954 AUTH PLAIN (RFC 4616), for smarthosts: only inside TLS, so
    /// the password never crosses the network in the clear, and (unless
    /// `unverified_ok`) only when the certificate was verified, so a man in
    /// the middle with a certificate of his own does not collect it.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when TLS is missing or unverified, PLAIN is
    /// not offered or the credentials are refused; I/O and protocol errors
    /// as elsewhere.
    pub async fn auth_plain(
        &mut self,
        user: &str,
        password: &str,
        unverified_ok: bool,
    ) -> Result<(), ClientError> {
        use base64::Engine as _;
        let refuse = |text: &str| ClientError::Refused {
            stage: "AUTH",
            reply: Reply::new(530, None, text.to_string()),
        };
        let Some(tls) = &self.tls else {
            return Err(refuse("5.7.0 not sending credentials without TLS"));
        };
        if !tls.verified && !unverified_ok {
            let text = format!(
                "5.7.0 not sending credentials: {} (--ca-file, or --relay-auth-unverified-tls for a trusted local relay)",
                tls.verify_error
            );
            return Err(refuse(&text));
        }
        if !self.caps.auth.iter().any(|m| m == "PLAIN") {
            return Err(refuse("5.7.4 the smarthost does not offer AUTH PLAIN"));
        }
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.write(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH")
            .await?;
        let r = self.read_reply("AUTH", self.timeouts.command).await?;
        if r.code == 235 {
            Ok(())
        } else {
            Err(ClientError::Refused {
                stage: "AUTH",
                reply: r,
            })
        }
    }

    /// Says goodbye (errors ignored: the message is already delivered).
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n", "QUIT").await.is_ok() {
            let _ = self
                .read_reply("QUIT", self.timeouts.command.min(Duration::from_secs(10)))
                .await;
        }
    }
}

#[cfg(test)]
mod drip_tests;
#[cfg(test)]
mod tests;
