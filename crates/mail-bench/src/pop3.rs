//! POP3 download (implicit TLS): each client logs in as its own user, then
//! STAT, UIDL, RETR of every message, QUIT (no DELE: the run repeats).

use std::time::Instant;

use anyhow::{Context as _, bail};
use tokio_rustls::TlsConnector;

use crate::conn::{self, Io};

/// The run's parameters.
#[derive(Clone, Debug)]
pub struct Job {
    pub addr: String,
    pub users: Vec<String>,
    pub password: String,
}

/// Messages retrieved and bytes read.
#[derive(Debug, Default)]
pub struct Outcome {
    pub messages: u64,
    pub bytes: u64,
    pub secs: f64,
}

async fn ok(io: &mut impl Io, buf: &mut Vec<u8>, what: &str) -> anyhow::Result<()> {
    conn::line(io, buf).await?;
    if !buf.starts_with(b"+OK") {
        bail!("POP3 {what}: {}", String::from_utf8_lossy(buf).trim_end());
    }
    Ok(())
}

/// Reads a multi-line response body up to the lone dot; returns its size.
async fn multiline(io: &mut impl Io, buf: &mut Vec<u8>) -> anyhow::Result<u64> {
    let mut n = 0;
    loop {
        conn::line(io, buf).await?;
        if buf.as_slice() == b".\r\n" {
            return Ok(n);
        }
        n += buf.len() as u64;
    }
}

async fn client(tls: &TlsConnector, job: &Job, user: &str) -> anyhow::Result<Outcome> {
    let mut io = conn::connect_tls(tls, &job.addr).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut out = Outcome::default();
    ok(&mut io, &mut buf, "greeting").await?;
    conn::send(&mut io, format!("USER {user}\r\n").as_bytes()).await?;
    ok(&mut io, &mut buf, "USER").await?;
    conn::send(&mut io, format!("PASS {}\r\n", job.password).as_bytes()).await?;
    ok(&mut io, &mut buf, "PASS").await?;
    conn::send(&mut io, b"STAT\r\n").await?;
    ok(&mut io, &mut buf, "STAT").await?;
    let count: u64 = String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("STAT count")?;
    conn::send(&mut io, b"UIDL\r\n").await?;
    ok(&mut io, &mut buf, "UIDL").await?;
    multiline(&mut io, &mut buf).await?;
    for i in 1..=count {
        conn::send(&mut io, format!("RETR {i}\r\n").as_bytes()).await?;
        ok(&mut io, &mut buf, "RETR").await?;
        out.bytes += multiline(&mut io, &mut buf).await?;
        out.messages += 1;
    }
    conn::send(&mut io, b"QUIT\r\n").await?;
    ok(&mut io, &mut buf, "QUIT").await?;
    conn::close(&mut io).await;
    Ok(out)
}

/// One client per user, all at once.
pub async fn run(job: &Job) -> anyhow::Result<Outcome> {
    let tls = conn::connector();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for user in &job.users {
        let (tls, job, user) = (tls.clone(), job.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            client(&tls, &job, &user)
                .await
                .with_context(|| format!("POP3 client {user}"))
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await??;
        total.messages += o.messages;
        total.bytes += o.bytes;
    }
    total.secs = start.elapsed().as_secs_f64();
    Ok(total)
}
