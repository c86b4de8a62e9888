//! Idle connections: open N implicit-TLS IMAP connections, each logged in
//! with INBOX selected and in IDLE (RFC 2177: what a mail client leaves
//! open all day), from several local source addresses in turn (a
//! server's per-IP cap counts per address), hold them, and measure the
//! server's PSS before and while they are held. What a connection costs
//! the server = (PSS held − PSS before) / N.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::conn;
use crate::imap::Imap;
use crate::procs;

/// What the phase needs.
#[derive(Clone, Debug)]
pub struct Job {
    pub addr: String,
    pub users: Vec<String>,
    pub password: String,
    pub connections: usize,
    /// Local addresses to connect from, in turn (empty: the system's choice).
    pub sources: Vec<IpAddr>,
    /// Connections being set up at the same time.
    pub parallel: usize,
    /// How long to hold them all before measuring.
    pub hold: Duration,
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub opened: usize,
    pub open_secs: f64,
    /// PSS KiB per `--proc` group before the first connection.
    pub pss_before_kib: Vec<u64>,
    /// PSS KiB per group with every connection held for `hold`.
    pub pss_held_kib: Vec<u64>,
    /// The soft RLIMIT_NOFILE the client ran with.
    pub nofile: u64,
}

/// Raises this process's soft open-file limit to the hard one and returns
/// the soft limit in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.maximum.is_none() || lim.maximum > lim.current {
        lim.current = lim.maximum.or(Some(1 << 20));
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Runs the phase; the connections are logged out at the end.
pub async fn run(job: &Job, groups: &[procs::Group]) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        nofile: raise_nofile(),
        ..Outcome::default()
    };
    if out.nofile < job.connections as u64 + 64 {
        anyhow::bail!(
            "open-file limit {} too low for {} connections (raise the hard limit)",
            out.nofile,
            job.connections
        );
    }
    out.pss_before_kib = procs::pss(groups);
    let tls = conn::connector();
    let gate = Arc::new(Semaphore::new(job.parallel.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(job.connections);
    for i in 0..job.connections {
        let (tls, gate, job) = (tls.clone(), gate.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let user = &job.users[i % job.users.len()];
            let source = (!job.sources.is_empty()).then(|| job.sources[i % job.sources.len()]);
            let mut s = Imap::login_from(&tls, &job.addr, source, user, &job.password)
                .await
                .with_context(|| format!("connection {i} from {source:?}"))?;
            s.ok("SELECT INBOX").await?;
            s.start_idle().await?;
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let mut held = Vec::with_capacity(job.connections);
    for t in tasks {
        held.push(t.await??);
    }
    out.opened = held.len();
    out.open_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(job.hold).await;
    let g = groups.to_vec();
    out.pss_held_kib = tokio::task::spawn_blocking(move || procs::pss(&g)).await?;
    let gate = Arc::new(Semaphore::new(job.parallel.max(1)));
    let mut tasks = Vec::with_capacity(held.len());
    for mut s in held {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            s.done_and_logout().await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(out)
}

/// `127.0.0.2..` style ranges: "127.0.0.2-127.0.0.41" or a comma list.
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part}"));
            }
            out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
        } else {
            out.push(part.trim().parse().map_err(|e| format!("{part}: {e}"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_ranges() {
        let v = super::parse_sources("127.0.0.2-127.0.0.4,::1").unwrap_or_default();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].to_string(), "127.0.0.2");
        assert_eq!(v[2].to_string(), "127.0.0.4");
        assert!(super::parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(super::parse_sources("nonsense").is_err());
    }

    #[test]
    fn open_file_limit_is_at_least_what_it_was() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(super::raise_nofile() >= before);
    }
}
