//! The SMTP client side of one connection (RFC 5321 §3, §4.5.3.2 timeouts),
//! with opportunistic STARTTLS (RFC 3207, RFC 7435), PIPELINING (RFC 2920),
//! SIZE (RFC 1870), 8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531).
//!
//! State: [`Connection::open`] reads the greeting, says EHLO (HELO when EHLO
//! is refused), upgrades with STARTTLS when offered and says EHLO again
//! inside TLS; then any number of [`Connection::send`] transactions, then
//! [`Connection::quit`]. Replies are read with [`crate::reply::parse`]; a
//! hostile or broken reply is a [`ClientError`], which the worker treats as
//! a temporary failure of this host.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::dotstuff;
use crate::reply::{self, Reply, ReplyError};

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
    /// The server refused the session itself (greeting or EHLO/HELO).
    #[error("{stage} refused: {reply}")]
    Refused { stage: &'static str, reply: Reply },
}

/// The negotiated TLS parameters, for the event log.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
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

/// One message's envelope for [`Connection::send`].
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Reverse path without brackets; empty for `<>`.
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Send `SMTPUTF8` with MAIL (only when the server offers it).
    pub smtputf8: bool,
    /// RFC 3461 parameters, passed on when the server offers DSN.
    pub dsn: Option<DsnParams>,
}

/// RFC 3461 DSN parameters of one message.
#[derive(Debug, Clone, Default)]
pub struct DsnParams {
    /// ENVID (plain text; xtext-encoded here).
    pub envid: String,
    /// RET: "FULL" or "HDRS" (anything else is not sent).
    pub ret: String,
    /// Per recipient, in envelope order: NOTIFY bit set (mailstore
    /// `Notify`; 0 = not given) and ORCPT (`type;address`, as received).
    pub recipients: Vec<(u32, String)>,
}

/// RFC 3461 §4: xtext — `+XX` for `+`, `=` and anything outside 33..=126.
#[must_use]
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Is `s` already valid xtext (so an ORCPT as received passes unchanged)?
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(i + 2 < b.len() && hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            c if (33..=126).contains(&c) && c != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// `NOTIFY=` value from the mailstore bit set (RFC 3461 §4.1).
fn notify_param(bits: u32) -> Option<String> {
    use mailstore_api::pb::Notify;
    if bits == 0 {
        return None;
    }
    if bits & Notify::Never as u32 != 0 {
        return Some("NEVER".into());
    }
    let words: Vec<&str> = [
        (Notify::Success, "SUCCESS"),
        (Notify::Failure, "FAILURE"),
        (Notify::Delay, "DELAY"),
    ]
    .iter()
    .filter(|(n, _)| bits & *n as u32 != 0)
    .map(|(_, w)| *w)
    .collect();
    (!words.is_empty()).then(|| words.join(","))
}

/// `ORCPT=` value: `addr-type;xtext` (RFC 3461 §4.2).
fn orcpt_param(orcpt: &str) -> Option<String> {
    let orcpt = orcpt.trim();
    if orcpt.is_empty() {
        return None;
    }
    let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
    let kind = kind.trim();
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let addr = addr.trim();
    let value = if is_xtext(addr) {
        addr.to_string()
    } else {
        xtext(addr)
    };
    Some(format!("{kind};{value}"))
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
                // RFC 3207 §4.2 / ATTACKS 13: anything the server sent after
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
                c.tls = Some(TlsInfo {
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

    /// One mail transaction: MAIL, RCPT for each recipient, then DATA
    /// (dot-stuffed) or, when the server offers CHUNKING, one `BDAT n LAST`
    /// (RFC 3030: no dot-stuffing, the exact octets). The result has one
    /// outcome per recipient, in order. `message` is the stored message
    /// (any line endings); every line ending goes out as CRLF.
    ///
    /// Permanent refusals that are about this message and not the
    /// connection (SIZE, 8BITMIME, SMTPUTF8 missing) are returned as
    /// failures without talking to the server.
    ///
    /// # Errors
    /// An I/O, timeout or protocol error: the connection is unusable and
    /// every recipient's outcome is unknown (deferred).
    pub async fn send(
        &mut self,
        env: &Envelope,
        message: &[u8],
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let n = env.recipients.len();
        let all = |o: RcptOutcome| vec![o; n];
        let bdat = self.caps.chunking;
        // RFC 5321 §4.5.2: dot-stuffing, CRLF everywhere (DATA); CRLF only
        // (BDAT). The size declared and checked is the size on the wire.
        let payload = if bdat {
            dotstuff::normalise_crlf(message)
        } else {
            dotstuff::encode_all(message)
        };
        let size = if bdat {
            payload.len() as u64
        } else {
            payload.len().saturating_sub(3) as u64
        };
        // RFC 1870 §6: do not send what the server has said it will refuse.
        if let Some(limit) = self.caps.size
            && limit > 0
            && size > limit
        {
            return Ok(all(RcptOutcome::Failed(format!(
                "552 5.3.4 message size {size} exceeds the remote limit {limit}"
            ))));
        }
        let eight_bit = dotstuff::has_eight_bit(message);
        // RFC 6152 §3: no 8-bit data to a server without 8BITMIME; we do not
        // convert, so the message is returned.
        if eight_bit && !self.caps.eight_bit_mime {
            return Ok(all(RcptOutcome::Failed(
                "554 5.6.3 message has 8-bit content and the remote server lacks 8BITMIME".into(),
            )));
        }
        let non_ascii_envelope =
            !env.mail_from.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
        // RFC 6531 §3.2: an internationalised envelope needs SMTPUTF8.
        if non_ascii_envelope && !self.caps.smtputf8 {
            return Ok(all(RcptOutcome::Failed(
                "553 5.6.7 internationalised address and the remote server lacks SMTPUTF8".into(),
            )));
        }
        if self.dirty {
            self.write(b"RSET\r\n", "RSET").await?;
            let r = self.read_reply("RSET", self.timeouts.command).await?;
            if !r.is_positive() {
                return Err(ClientError::Refused {
                    stage: "RSET",
                    reply: r,
                });
            }
            self.dirty = false;
        }
        let mut mail = format!("MAIL FROM:<{}>", clean(&env.mail_from));
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if (env.smtputf8 || non_ascii_envelope) && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        // RFC 3461: the remote takes over DSN duties when it offers DSN.
        let dsn = env.dsn.as_ref().filter(|_| self.caps.dsn);
        if let Some(d) = dsn {
            let ret = d.ret.to_ascii_uppercase();
            if ret == "FULL" || ret == "HDRS" {
                mail.push_str(&format!(" RET={ret}"));
            }
            if !d.envid.is_empty() && d.envid.len() <= 100 {
                mail.push_str(&format!(" ENVID={}", xtext(&d.envid)));
            }
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut cmd = format!("RCPT TO:<{}>", clean(r));
                if let Some((notify, orcpt)) = dsn.and_then(|d| d.recipients.get(i)) {
                    if let Some(n) = notify_param(*notify) {
                        cmd.push_str(&format!(" NOTIFY={n}"));
                    }
                    if let Some(o) = orcpt_param(orcpt) {
                        cmd.push_str(&format!(" ORCPT={o}"));
                    }
                }
                cmd.push_str("\r\n");
                cmd
            })
            .collect();
        self.dirty = true;
        let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; n];
        let mut accepted = 0usize;
        // The reply to DATA when it was pipelined with MAIL and RCPT.
        let mut data_reply = None;
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL, the RCPTs and DATA in one group (BDAT
            // waits for the RCPT replies: no data for nobody).
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            if !bdat {
                batch.extend_from_slice(b"DATA\r\n");
            }
            self.write(&batch, "MAIL").await?;
            let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
            for o in &mut outcomes {
                let r = self.read_reply("RCPT", self.timeouts.command).await?;
                if r.is_positive() {
                    accepted += 1;
                } else {
                    *o = Some(RcptOutcome::from_reply(&r));
                }
            }
            if !bdat {
                let r = self.read_reply("DATA", self.timeouts.data_init).await?;
                // RFC 2920 §3.1: 354 although nothing was accepted: end
                // the empty data at once.
                if (!mail_reply.is_positive() || accepted == 0) && r.code == 354 {
                    self.write(b".\r\n", "data").await?;
                    let _ = self
                        .read_reply("end of data", self.timeouts.data_end)
                        .await?;
                }
                data_reply = Some(r);
            }
            if !mail_reply.is_positive() {
                return Ok(all(RcptOutcome::from_reply(&mail_reply)));
            }
        } else {
            self.write(mail.as_bytes(), "MAIL").await?;
            let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
            if !mail_reply.is_positive() {
                return Ok(all(RcptOutcome::from_reply(&mail_reply)));
            }
            for (o, cmd) in outcomes.iter_mut().zip(&rcpts) {
                self.write(cmd.as_bytes(), "RCPT").await?;
                let r = self.read_reply("RCPT", self.timeouts.command).await?;
                if r.is_positive() {
                    accepted += 1;
                } else {
                    *o = Some(RcptOutcome::from_reply(&r));
                }
            }
        }
        if accepted == 0 {
            return Ok(outcomes.into_iter().map(finalise).collect());
        }
        let end = if bdat {
            // RFC 3030 §2: BDAT <size> LAST, then exactly that many octets.
            self.write(
                format!("BDAT {} LAST\r\n", payload.len()).as_bytes(),
                "data",
            )
            .await?;
            for chunk in payload.chunks(64 * 1024) {
                self.write(chunk, "data").await?;
            }
            self.read_reply("end of data", self.timeouts.data_end)
                .await?
        } else {
            let r = match data_reply {
                Some(r) => r,
                None => {
                    self.write(b"DATA\r\n", "DATA").await?;
                    self.read_reply("DATA", self.timeouts.data_init).await?
                }
            };
            if r.code != 354 {
                // A 2xx to DATA is not a delivery: nothing was sent.
                let o = match r.class() {
                    5 => RcptOutcome::Failed(r.summary()),
                    _ => RcptOutcome::Deferred(r.summary()),
                };
                return Ok(outcomes
                    .into_iter()
                    .map(|x| x.unwrap_or_else(|| o.clone()))
                    .collect());
            }
            for chunk in payload.chunks(64 * 1024) {
                self.write(chunk, "data").await?;
            }
            self.read_reply("end of data", self.timeouts.data_end)
                .await?
        };
        self.dirty = false;
        self.transactions += 1;
        let o = RcptOutcome::from_reply(&end);
        Ok(outcomes
            .into_iter()
            .map(|x| x.unwrap_or_else(|| o.clone()))
            .collect())
    }

    /// RFC 4954 AUTH PLAIN (RFC 4616), for smarthosts: only inside TLS, so
    /// the password never crosses the network in the clear.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when TLS is missing, PLAIN is not offered or
    /// the credentials are refused; I/O and protocol errors as elsewhere.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        use base64::Engine as _;
        let refuse = |text: &str| ClientError::Refused {
            stage: "AUTH",
            reply: Reply::new(530, None, text.to_string()),
        };
        if self.tls.is_none() {
            return Err(refuse("5.7.0 not sending credentials without TLS"));
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

fn finalise(o: Option<RcptOutcome>) -> RcptOutcome {
    o.unwrap_or_else(|| RcptOutcome::Deferred("no reply".into()))
}

/// Addresses go into a command line: no CR, LF, `<`, `>` or controls.
fn clean(addr: &str) -> String {
    addr.chars()
        .filter(|c| !c.is_control() && *c != '<' && *c != '>')
        .collect()
}

/// A TLS client configuration for opportunistic STARTTLS: any certificate
/// is accepted (RFC 7435 §1.3: encryption without authentication beats
/// plaintext; an attacker who can strip STARTTLS needs no fake certificate).
/// The handshake signatures are still checked with ring.
#[must_use]
pub fn opportunistic_tls() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        // The ring provider always supports the default versions.
        Err(e) => unreachable!("ring provider: {e}"),
    }
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    /// A scripted server on a duplex pipe: answers each command line from
    /// `script` (command prefix → reply), records what it received.
    async fn scripted(
        server: tokio::io::DuplexStream,
        greeting: &'static [u8],
        script: Vec<(&'static str, &'static str)>,
    ) -> Vec<u8> {
        let (r, mut w) = tokio::io::split(server);
        let mut r = BufReader::new(r);
        w.write_all(greeting).await.expect("greet");
        let mut seen = Vec::new();
        let mut in_data = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                break;
            }
            seen.extend_from_slice(&line);
            if in_data {
                if line == b".\r\n" {
                    in_data = false;
                    w.write_all(b"250 2.0.0 queued\r\n").await.expect("w");
                }
                continue;
            }
            let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply = script
                .iter()
                .find(|(p, _)| cmd.starts_with(p))
                .map_or("250 ok\r\n", |(_, r)| r);
            if cmd.starts_with("DATA") && reply.starts_with("354") {
                in_data = true;
            }
            w.write_all(reply.as_bytes()).await.expect("w");
            if cmd.starts_with("QUIT") {
                break;
            }
        }
        seen
    }

    fn quick() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            command: Duration::from_secs(2),
            data_init: Duration::from_secs(2),
            data_block: Duration::from_secs(2),
            data_end: Duration::from_secs(2),
        }
    }

    fn env(rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: "a@x.test".into(),
            recipients: rcpts.iter().map(|s| (*s).to_string()).collect(),
            smtputf8: false,
            dsn: None,
        }
    }

    #[test]
    fn dsn_parameters() {
        assert_eq!(xtext("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        assert_eq!(notify_param(0), None);
        assert_eq!(notify_param(1), Some("NEVER".into()));
        assert_eq!(notify_param(2 | 8), Some("SUCCESS,DELAY".into()));
        assert_eq!(
            orcpt_param("rfc822;bob@b.test"),
            Some("rfc822;bob@b.test".into())
        );
        assert_eq!(
            orcpt_param("rfc822;a+2Bb@b.test"),
            Some("rfc822;a+2Bb@b.test".into())
        );
        assert_eq!(
            orcpt_param("rfc822;we ird@b.test"),
            Some("rfc822;we+20ird@b.test".into())
        );
        assert_eq!(
            orcpt_param("plain@b.test"),
            Some("rfc822;plain@b.test".into())
        );
        assert_eq!(orcpt_param("bad type;x"), None);
        assert_eq!(orcpt_param(""), None);
    }

    #[tokio::test]
    async fn pipelined_transaction_with_mixed_recipients() {
        let (c, s) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(scripted(
            s,
            b"220 mx ESMTP\r\n",
            vec![
                (
                    "EHLO",
                    "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n",
                ),
                ("RCPT TO:<BAD@", "550 5.1.1 no such user\r\n"),
                ("RCPT TO:<LATER@", "451 4.7.1 greylisted\r\n"),
                ("DATA", "354 go\r\n"),
            ],
        ));
        let mut conn = Connection::open(c, "out.test", None, quick())
            .await
            .expect("open");
        assert!(conn.caps.pipelining && conn.caps.eight_bit_mime);
        assert_eq!(conn.caps.size, Some(1000));
        let got = conn
            .send(
                &env(&["good@y.test", "bad@y.test", "later@y.test"]),
                b"Subject: x\n\n.hidden\n",
            )
            .await
            .expect("send");
        assert!(matches!(got[0], RcptOutcome::Delivered(_)));
        assert!(matches!(&got[1], RcptOutcome::Failed(t) if t.starts_with("550 5.1.1")));
        assert!(matches!(got[2], RcptOutcome::Deferred(_)));
        let big = vec![b'a'; 2000];
        let got = conn.send(&env(&["good@y.test"]), &big).await.expect("send");
        assert!(matches!(&got[0], RcptOutcome::Failed(t) if t.contains("5.3.4")));
        conn.quit().await;
        let seen = String::from_utf8(server.await.expect("server")).expect("utf8");
        assert!(seen.contains("MAIL FROM:<a@x.test> SIZE=24\r\n"), "{seen}");
        assert!(
            seen.contains("Subject: x\r\n\r\n..hidden\r\n.\r\n"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn starttls_reply_is_read_alone() {
        // ATTACKS 13 without a TLS peer: the injected lines after 220 must
        // not be taken as the EHLO reply. The handshake then fails (the
        // "server" is not TLS), which is an error, never plaintext success.
        let (c, s) = tokio::io::duplex(1 << 16);
        let _server = tokio::spawn(scripted(
            s,
            b"220 mx\r\n",
            vec![
                ("EHLO", "250-mx\r\n250 STARTTLS\r\n"),
                ("STARTTLS", "220 Ready\r\n250-evil\r\n250 AUTH PLAIN\r\n"),
            ],
        ));
        let tls = Tls {
            connector: opportunistic_tls(),
            server_name: ServerName::try_from("mx.test").expect("name"),
        };
        let r = Connection::open(c, "out.test", Some(&tls), quick()).await;
        assert!(
            matches!(r, Err(ClientError::Tls(_) | ClientError::Timeout(_))),
            "{:?}",
            r.err()
        );
    }

    #[tokio::test]
    async fn no_8bit_to_a_7bit_server_and_helo_fallback() {
        let (c, s) = tokio::io::duplex(1 << 16);
        let _server = tokio::spawn(scripted(
            s,
            b"220 old\r\n",
            vec![("EHLO", "502 what\r\n"), ("HELO", "250 old\r\n")],
        ));
        let mut conn = Connection::open(c, "out.test", None, quick())
            .await
            .expect("open");
        assert!(!conn.caps.esmtp);
        let got = conn
            .send(&env(&["u@y.test"]), "Subject: caf\u{e9}\r\n\r\n".as_bytes())
            .await
            .expect("send");
        assert!(matches!(&got[0], RcptOutcome::Failed(t) if t.contains("5.6.3")));
    }

    #[tokio::test]
    async fn hostile_replies_are_errors() {
        for bad in ["2500 ok\r\n", "250-a\r\n550 b\r\n", "250\x00ok\r\n"] {
            let (c, s) = tokio::io::duplex(1 << 16);
            let _server = tokio::spawn(scripted(
                s,
                b"220 mx\r\n",
                vec![("EHLO", "250 mx\r\n"), ("MAIL", bad)],
            ));
            let mut conn = Connection::open(c, "out.test", None, quick())
                .await
                .expect("open");
            let r = conn.send(&env(&["u@y.test"]), b"x\r\n").await;
            assert!(matches!(r, Err(ClientError::Protocol(_))), "{bad:?}: {r:?}");
        }
    }
}

#[cfg(test)]
mod drip_tests {
    use super::*;

    #[tokio::test]
    async fn dripping_greeting_times_out() {
        let (c, mut s) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            for b in b"220 slow server\r\n" {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let t = Timeouts {
            command: Duration::from_secs(1),
            ..Timeouts::default()
        };
        let started = std::time::Instant::now();
        let r = Connection::open(c, "x", None, t).await;
        assert!(
            matches!(r, Err(ClientError::Timeout("greeting"))),
            "{:?}",
            r.err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
