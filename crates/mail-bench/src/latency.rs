//! Accept → IDLE latency: one IMAP client SELECTs the recipient's INBOX and
//! IDLEs (RFC 2177); messages are sent one at a time over SMTP (a new
//! STARTTLS connection each, as in the `smtp` phase) and each one's latency
//! is the time from reading its 250 after DATA (and, second figure, from
//! sending the final dot) to reading the untagged `* N EXISTS` that
//! announces it (RFC 3501 §7.3.1). The next message is sent only after the
//! previous one was announced, so each figure is one message's path
//! through the server, not a queue.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::conn;
use crate::imap::Imap;
use crate::smtp;

/// What the phase needs.
#[derive(Clone, Debug)]
pub struct Job {
    /// SMTP side (its `messages` = how many to send; `rcpts[0]` is watched).
    pub smtp: smtp::Job,
    /// IMAPS address.
    pub imap: String,
    pub password: String,
    /// How long to wait for one announcement before failing.
    pub timeout: Duration,
}

/// Latencies of the announced messages.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the 250 after DATA to the EXISTS.
    pub from_250: Vec<Duration>,
    /// From the final dot of DATA to the EXISTS.
    pub from_dot: Vec<Duration>,
    /// Messages refused over SMTP (not waited for).
    pub refused: usize,
}

/// Longest untagged line the reader accepts (a bound, not a guess at the
/// server's output: EXISTS lines are short).
const MAX_LINE: usize = 64 * 1024;

/// Reads untagged responses during IDLE and sends the new message count
/// of every `* N EXISTS` with the instant it was read.
async fn reader(
    mut rd: tokio::io::BufReader<tokio::io::ReadHalf<conn::Tls>>,
    tx: mpsc::UnboundedSender<(u64, Instant)>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = rd.read_until(b'\n', &mut buf).await?;
        let at = Instant::now();
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_LINE {
            bail!("IDLE: line over {MAX_LINE} bytes");
        }
        let line = String::from_utf8_lossy(&buf);
        let mut w = line.trim_end().split(' ');
        if let (Some("*"), Some(n), Some("EXISTS"), None) = (w.next(), w.next(), w.next(), w.next())
            && let Ok(n) = n.parse::<u64>()
            && tx.send((n, at)).is_err()
        {
            return Ok(());
        }
    }
}

/// Runs the phase.
pub async fn run(job: &Job) -> anyhow::Result<Outcome> {
    let tls = conn::connector();
    let user = job.smtp.rcpts.first().context("no recipient")?.clone();
    let mut s = Imap::login(&tls, &job.imap, &user, &job.password).await?;
    s.ok("SELECT INBOX").await?;
    let (io, mut exists) = s.idle().await?;
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(reader(tokio::io::BufReader::new(rd), tx));
    let mut out = Outcome::default();
    let mut smtp = job.smtp.clone();
    smtp.rcpts = vec![user];
    for n in 0..job.smtp.messages {
        let (ok, data_250, at_250) = smtp::one(&tls, &smtp, n)
            .await
            .with_context(|| format!("message {n}"))?;
        if !ok {
            out.refused += 1;
            continue;
        }
        let dot = at_250.checked_sub(data_250).unwrap_or(at_250);
        loop {
            let (count, at) = tokio::time::timeout(job.timeout, rx.recv())
                .await
                .with_context(|| format!("message {n} not announced within {:?}", job.timeout))?
                .context("IDLE connection closed")?;
            if count > exists {
                exists = count;
                out.from_250.push(at.saturating_duration_since(at_250));
                out.from_dot.push(at.saturating_duration_since(dot));
                break;
            }
            exists = count;
        }
    }
    let _ = wr.write_all(b"DONE\r\nb9999 LOGOUT\r\n").await;
    let _ = wr.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    Ok(out)
}
