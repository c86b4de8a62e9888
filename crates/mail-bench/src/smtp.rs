//! SMTP ingest: N sessions, each sending its share of M messages of S KiB,
//! one new connection (greeting, EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA,
//! QUIT) per message, the way other MTAs deliver to an MX. Measures accepted
//! msg/s, DATA→250 latency (final dot sent → 250 read) and, with `--imap`,
//! the time until every accepted message is visible in its recipient's INBOX
//! (IMAP STATUS polling).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_rustls::TlsConnector;

use crate::conn::{self, Io};
use crate::imap::Imap;

/// What one SMTP run needs.
#[derive(Clone, Debug)]
pub struct Job {
    pub addr: String,
    pub starttls: bool,
    pub sessions: usize,
    pub messages: usize,
    pub size_kib: usize,
    pub from: String,
    pub rcpts: Vec<String>,
    pub helo: String,
}

/// One run's figures.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub refused: usize,
    pub accept_secs: f64,
    pub latencies: Vec<Duration>,
    pub visible_secs: Option<f64>,
}

async fn reply(io: &mut impl Io, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        conn::line(io, buf).await?;
        if buf.len() < 4 {
            bail!("short SMTP reply {:?}", String::from_utf8_lossy(buf));
        }
        if buf[3] != b'-' {
            let code = std::str::from_utf8(&buf[..3])?.parse()?;
            return Ok(code);
        }
    }
}

async fn expect(io: &mut impl Io, buf: &mut Vec<u8>, want: u16, what: &str) -> anyhow::Result<()> {
    let code = reply(io, buf).await?;
    if code != want {
        bail!("{what}: {}", String::from_utf8_lossy(buf).trim_end());
    }
    Ok(())
}

/// One message on a new connection: whether it got its 250, the DATA→250
/// latency, and when the 250 was read.
pub async fn one(
    tls: &TlsConnector,
    job: &Job,
    n: usize,
) -> anyhow::Result<(bool, Duration, Instant)> {
    let rcpt = &job.rcpts[n % job.rcpts.len()];
    let mut buf = Vec::with_capacity(512);
    let mut plain = conn::connect(&job.addr).await?;
    expect(&mut plain, &mut buf, 220, "greeting").await?;
    let ehlo = format!("EHLO {}\r\n", job.helo);
    conn::send(&mut plain, ehlo.as_bytes()).await?;
    expect(&mut plain, &mut buf, 250, "EHLO").await?;
    let mut io: Box<dyn Io> = if job.starttls {
        conn::send(&mut plain, b"STARTTLS\r\n").await?;
        expect(&mut plain, &mut buf, 220, "STARTTLS").await?;
        let mut tls = conn::upgrade(tls, plain).await?;
        conn::send(&mut tls, ehlo.as_bytes()).await?;
        expect(&mut tls, &mut buf, 250, "EHLO after STARTTLS").await?;
        Box::new(tls)
    } else {
        Box::new(plain)
    };
    let env = format!("MAIL FROM:<{}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n", job.from);
    // Pipelined (RFC 2920), as MTAs do.
    conn::send(&mut io, env.as_bytes()).await?;
    let mail = reply(&mut io, &mut buf).await?;
    let rc = reply(&mut io, &mut buf).await?;
    let data = reply(&mut io, &mut buf).await?;
    if mail != 250 || rc != 250 || data != 354 {
        conn::send(&mut io, b"QUIT\r\n").await.ok();
        return Ok((false, Duration::ZERO, Instant::now()));
    }
    let mut body = crate::sample::message(&job.from, rcpt, job.size_kib, n);
    body.extend_from_slice(b".\r\n");
    let (head, dot) = body.split_at(body.len() - 3);
    conn::send(&mut io, head).await?;
    let t = Instant::now();
    conn::send(&mut io, dot).await?;
    let code = reply(&mut io, &mut buf).await?;
    let at = Instant::now();
    let latency = at - t;
    conn::send(&mut io, b"QUIT\r\n").await?;
    let _ = reply(&mut io, &mut buf).await;
    conn::close(&mut io).await;
    Ok((code == 250, latency, at))
}

/// Messages in every recipient's INBOX, summed.
async fn visible(watchers: &mut [Imap]) -> anyhow::Result<u64> {
    let mut total = 0;
    for w in watchers.iter_mut() {
        total += w.status_messages("INBOX").await?;
    }
    Ok(total)
}

/// Runs one ingest; with `watch` (IMAP address, password) also waits until
/// every accepted message is in its INBOX.
pub async fn run(job: &Job, watch: Option<(&str, &str)>) -> anyhow::Result<Outcome> {
    let tls = conn::connector();
    let mut watchers = Vec::new();
    if let Some((addr, password)) = watch {
        for user in &job.rcpts {
            watchers.push(Imap::login(&tls, addr, user, password).await?);
        }
    }
    let baseline = visible(&mut watchers).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..job.sessions {
        let (tls, job, next) = (tls.clone(), job.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= job.messages {
                    return Ok::<_, anyhow::Error>(out);
                }
                let (ok, latency, _) = one(&tls, &job, n)
                    .await
                    .with_context(|| format!("message {n}"))?;
                if ok {
                    out.accepted += 1;
                    out.latencies.push(latency);
                } else {
                    out.refused += 1;
                }
            }
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await??;
        total.accepted += o.accepted;
        total.refused += o.refused;
        total.latencies.extend(o.latencies);
    }
    total.accept_secs = start.elapsed().as_secs_f64();
    if !watchers.is_empty() {
        let want = baseline + total.accepted as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if visible(&mut watchers).await? >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("accepted messages not all visible after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        total.visible_secs = Some(start.elapsed().as_secs_f64());
        for w in &mut watchers {
            w.logout().await;
        }
    }
    Ok(total)
}
