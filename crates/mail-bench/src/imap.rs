//! A minimal IMAP client (implicit TLS) and a mail-client-like command mix:
//! per login LIST, STATUS, SELECT, then `--loops` rounds of FETCH FLAGS of
//! 1:*, FETCH ENVELOPE of the last ten, FETCH BODY.PEEK[] of two, SEARCH
//! UNSEEN, STORE, APPEND, UID STORE \Deleted and UID EXPUNGE of the
//! appended message (UIDPLUS, RFC 4315), then LOGOUT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_rustls::TlsConnector;

use crate::conn::{self, Tls};

/// One logged-in IMAP connection.
pub struct Imap {
    io: Tls,
    tag: u64,
    buf: Vec<u8>,
    /// Untagged data of the last command (literals inline).
    pub data: Vec<u8>,
    /// Messages in the selected mailbox as the server told this session
    /// (`* N EXISTS`, minus each `* N EXPUNGE`): sequence numbers beyond
    /// it are invalid (another client may have expunged).
    pub exists: u64,
}

impl Imap {
    /// Connects with implicit TLS and logs in.
    pub async fn login(
        tls: &TlsConnector,
        addr: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        Self::login_from(tls, addr, None, user, password).await
    }

    /// Connects from a given local address (`None`: any) and logs in.
    pub async fn login_from(
        tls: &TlsConnector,
        addr: &str,
        source: Option<std::net::IpAddr>,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let io = conn::upgrade(tls, conn::connect_from(addr, source).await?).await?;
        let mut s = Self {
            io,
            tag: 0,
            buf: Vec::with_capacity(1024),
            data: Vec::new(),
            exists: 0,
        };
        conn::line(&mut s.io, &mut s.buf).await?;
        if !s.buf.starts_with(b"* OK") {
            bail!("IMAP greeting {:?}", String::from_utf8_lossy(&s.buf));
        }
        s.ok(&format!("LOGIN \"{user}\" \"{password}\"")).await?;
        Ok(s)
    }

    /// Sends a command, reads through its tagged response; returns that line.
    pub async fn cmd(&mut self, text: &str) -> anyhow::Result<String> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        conn::send(&mut self.io, format!("{tag} {text}\r\n").as_bytes()).await?;
        self.finish(&tag).await
    }

    async fn finish(&mut self, tag: &str) -> anyhow::Result<String> {
        self.data.clear();
        loop {
            conn::line(&mut self.io, &mut self.buf).await?;
            if self.buf.starts_with(tag.as_bytes()) && self.buf.get(tag.len()) == Some(&b' ') {
                return Ok(String::from_utf8_lossy(&self.buf[tag.len() + 1..])
                    .trim_end()
                    .to_string());
            }
            self.data.extend_from_slice(&self.buf);
            self.track();
            // A line ending in {N} announces a literal of N bytes.
            while let Some(n) = literal(&self.buf) {
                conn::exact(&mut self.io, n, &mut self.data).await?;
                conn::line(&mut self.io, &mut self.buf).await?;
                self.data.extend_from_slice(&self.buf);
            }
        }
    }

    fn track(&mut self) {
        let line = String::from_utf8_lossy(&self.buf);
        let mut words = line.trim_end().split(' ');
        if words.next() != Some("*") {
            return;
        }
        let (Some(n), Some(kind)) = (words.next(), words.next()) else {
            return;
        };
        match (n.parse::<u64>(), kind) {
            (Ok(n), "EXISTS") if words.next().is_none() => self.exists = n,
            (Ok(_), "EXPUNGE") => self.exists = self.exists.saturating_sub(1),
            _ => {}
        }
    }

    /// A command that must answer OK — or `NO [EXPUNGEISSUED]` (RFC 9051
    /// §7.1: another session expunged some of the requested messages), the
    /// race a mail client meets when others expunge in the same mailbox; a
    /// client carries on, so the mix does too.
    pub async fn ok(&mut self, text: &str) -> anyhow::Result<String> {
        let r = self.cmd(text).await?;
        if !r.starts_with("OK") && !r.starts_with("NO [EXPUNGEISSUED]") {
            let verb = text.split(' ').next().unwrap_or(text);
            bail!("IMAP {verb}: {r}");
        }
        Ok(r)
    }

    /// STATUS MESSAGES of a mailbox.
    pub async fn status_messages(&mut self, mailbox: &str) -> anyhow::Result<u64> {
        self.ok(&format!("STATUS {mailbox} (MESSAGES)")).await?;
        let text = String::from_utf8_lossy(&self.data);
        number_after(&text, "MESSAGES ").context("STATUS without MESSAGES")
    }

    /// APPEND with a synchronising literal; the UID from APPENDUID.
    async fn append(&mut self, mailbox: &str, msg: &[u8]) -> anyhow::Result<Option<u64>> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        let head = format!("{tag} APPEND {mailbox} {{{}}}\r\n", msg.len());
        conn::send(&mut self.io, head.as_bytes()).await?;
        conn::line(&mut self.io, &mut self.buf).await?;
        if !self.buf.starts_with(b"+") {
            bail!("APPEND: {}", String::from_utf8_lossy(&self.buf).trim_end());
        }
        let mut body = msg.to_vec();
        body.extend_from_slice(b"\r\n");
        conn::send(&mut self.io, &body).await?;
        let r = self.finish(&tag).await?;
        if !r.starts_with("OK") {
            bail!("APPEND: {r}");
        }
        Ok(r.split("APPENDUID ")
            .nth(1)
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|u| u.trim_end_matches(']').parse().ok()))
    }

    /// Starts IDLE (RFC 2177 §3) and hands back the connection once the
    /// server's continuation request arrived; the caller reads the
    /// untagged responses and ends it with `DONE`.
    pub async fn idle(mut self) -> anyhow::Result<(Tls, u64)> {
        self.start_idle().await?;
        Ok((self.io, self.exists))
    }

    /// Starts IDLE (RFC 2177 §3) and returns once the server's
    /// continuation request arrived; [`Self::done_and_logout`] ends it.
    pub async fn start_idle(&mut self) -> anyhow::Result<()> {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        conn::send(&mut self.io, format!("{tag} IDLE\r\n").as_bytes()).await?;
        loop {
            conn::line(&mut self.io, &mut self.buf).await?;
            if self.buf.starts_with(b"+") {
                return Ok(());
            }
            if self.buf.starts_with(tag.as_bytes()) {
                bail!("IDLE: {}", String::from_utf8_lossy(&self.buf).trim_end());
            }
            self.track();
        }
    }

    /// Ends an IDLE with DONE, then LOGOUT; errors ignored.
    pub async fn done_and_logout(&mut self) {
        if conn::send(&mut self.io, b"DONE\r\n").await.is_ok() {
            self.logout().await;
        }
    }

    /// LOGOUT, errors ignored.
    pub async fn logout(&mut self) {
        let _ = self.cmd("LOGOUT").await;
        conn::close(&mut self.io).await;
    }
}

fn literal(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..])
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The mix's parameters.
#[derive(Clone, Debug)]
pub struct Mix {
    pub addr: String,
    pub clients: usize,
    pub users: Vec<String>,
    pub password: String,
    pub loops: usize,
    pub duration: Duration,
}

/// Commands done and their latencies per command name.
#[derive(Debug, Default)]
pub struct MixOutcome {
    pub commands: u64,
    pub logins: u64,
    pub secs: f64,
    pub latency: BTreeMap<&'static str, Vec<Duration>>,
}

async fn timed(
    out: &mut MixOutcome,
    name: &'static str,
    fut: impl Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<String> {
    let t = Instant::now();
    let r = fut.await.with_context(|| name.to_string())?;
    out.latency.entry(name).or_default().push(t.elapsed());
    out.commands += 1;
    Ok(r)
}

async fn session(
    tls: &TlsConnector,
    mix: &Mix,
    user: &str,
    seq: &mut u64,
    out: &mut MixOutcome,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut s = Imap::login(tls, &mix.addr, user, &mix.password).await?;
    out.latency.entry("LOGIN").or_default().push(t.elapsed());
    out.commands += 1;
    out.logins += 1;
    timed(out, "LIST", s.ok("LIST \"\" \"*\"")).await?;
    timed(
        out,
        "STATUS",
        s.ok("STATUS INBOX (MESSAGES UNSEEN UIDNEXT)"),
    )
    .await?;
    timed(out, "SELECT", s.ok("SELECT INBOX")).await?;
    for _ in 0..mix.loops {
        *seq += 1;
        let exists = s.exists;
        if exists > 0 {
            timed(out, "FETCH FLAGS", s.ok("FETCH 1:* (FLAGS)")).await?;
            let from = exists.saturating_sub(9).max(1);
            let cmd = format!("FETCH {from}:{exists} (FLAGS ENVELOPE)");
            timed(out, "FETCH ENVELOPE", s.ok(&cmd)).await?;
            let a = 1 + (*seq * 7919) % exists;
            let b = 1 + (*seq * 104_729) % exists;
            let cmd = format!("FETCH {a},{b} (BODY.PEEK[])");
            timed(out, "FETCH BODY", s.ok(&cmd)).await?;
            let cmd = format!("STORE {a} FLAGS (\\Seen)");
            timed(out, "STORE", s.ok(&cmd)).await?;
        }
        timed(out, "SEARCH", s.ok("SEARCH UNSEEN")).await?;
        let msg = crate::sample::message("bench@bench.test", user, 2, *seq as usize);
        let t = Instant::now();
        let uid = s.append("INBOX", &msg).await.context("APPEND")?;
        out.latency.entry("APPEND").or_default().push(t.elapsed());
        out.commands += 1;
        if let Some(uid) = uid {
            let cmd = format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)");
            timed(out, "UID STORE", s.ok(&cmd)).await?;
            let cmd = format!("UID EXPUNGE {uid}");
            timed(out, "UID EXPUNGE", s.ok(&cmd)).await?;
        }
    }
    let t = Instant::now();
    s.logout().await;
    out.latency.entry("LOGOUT").or_default().push(t.elapsed());
    out.commands += 1;
    Ok(())
}

/// Runs the mix for `duration` (each client finishes its session).
pub async fn run(mix: &Mix) -> anyhow::Result<MixOutcome> {
    let tls = conn::connector();
    let start = Instant::now();
    let mix = Arc::new(mix.clone());
    let mut tasks = Vec::new();
    for c in 0..mix.clients {
        let (tls, mix) = (tls.clone(), mix.clone());
        tasks.push(tokio::spawn(async move {
            let user = mix.users[c % mix.users.len()].clone();
            let mut out = MixOutcome::default();
            let mut seq = c as u64 * 1_000_000;
            while start.elapsed() < mix.duration {
                session(&tls, &mix, &user, &mut seq, &mut out).await?;
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut total = MixOutcome::default();
    for t in tasks {
        let o = t.await??;
        total.commands += o.commands;
        total.logins += o.logins;
        for (k, v) in o.latency {
            total.latency.entry(k).or_default().extend(v);
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal(b"* 1 FETCH (BODY[] {123}\r\n"), Some(123));
        assert_eq!(literal(b"* 1 FETCH (BODY[] {12+}\r\n"), Some(12));
        assert_eq!(literal(b"* 1 FETCH (FLAGS ())\r\n"), None);
    }

    #[test]
    fn numbers_in_responses() {
        assert_eq!(
            number_after("* STATUS INBOX (MESSAGES 42)", "MESSAGES "),
            Some(42)
        );
    }
}
