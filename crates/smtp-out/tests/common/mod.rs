//! Test support: scripted SMTP servers on loopback addresses, the real
//! store (test_kit::TestStore), the test DNS server, and smtp-out run
//! in-process.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

mod tls;
pub use tls::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::{StoreClient, pb};
use service_kit::{Shutdown, StoreArgs};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted server does on one connection.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: &'static str,
    /// EHLO reply lines after the first (capabilities), plaintext.
    pub caps: Vec<&'static str>,
    /// Offer STARTTLS (and inject lines after its 220 when set).
    pub starttls: Option<&'static str>,
    pub mail: &'static str,
    pub rcpt: &'static str,
    /// Reply to the final dot; `None` = close the connection instead.
    pub data_end: Option<&'static str>,
    /// Accept this many RCPTs per transaction, then `452 4.5.3`.
    pub rcpt_limit: Option<usize>,
    /// Answer EHLO with an endless `250-x` multiline reply.
    pub ehlo_flood: bool,
    /// Send the greeting one byte at a time, this far apart.
    pub drip: Option<Duration>,
    /// Offer AUTH PLAIN inside TLS and accept these credentials.
    pub auth: Option<(&'static str, &'static str)>,
    /// Wait this long before answering the final dot.
    pub data_end_delay: Option<Duration>,
    /// The certificate presented after STARTTLS (default: self-signed
    /// for mx.test).
    pub cert: Option<TestCert>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            greeting: "220 mx.test ESMTP\r\n",
            caps: vec!["PIPELINING", "8BITMIME", "SIZE 10000000"],
            starttls: None,
            mail: "250 2.1.0 ok\r\n",
            rcpt: "250 2.1.5 ok\r\n",
            data_end: Some("250 2.0.0 queued\r\n"),
            rcpt_limit: None,
            ehlo_flood: false,
            drip: None,
            auth: None,
            data_end_delay: None,
            cert: None,
        }
    }
}

/// A message the server accepted (or at least received up to the dot).
#[derive(Clone, Debug)]
pub struct Received {
    pub connection: usize,
    pub from: String,
    pub rcpts: Vec<String>,
    /// The data exactly as on the wire, terminating ".\r\n" included.
    pub wire: Vec<u8>,
    pub tls: bool,
    /// The EHLO argument the client gave last.
    pub helo: String,
}

#[derive(Default, Debug)]
pub struct Log {
    pub connections: usize,
    pub messages: Vec<Received>,
    /// Every command line received, per connection, with a "[tls]" marker.
    pub commands: Vec<String>,
    /// Users that authenticated successfully.
    pub authenticated: Vec<String>,
    /// Connections open now.
    pub open: usize,
    /// Per connection: when it was accepted and how many were open then
    /// (itself included).
    pub accepted: Vec<(std::time::Instant, usize)>,
}

pub struct Mx {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mx {
    pub fn messages(&self) -> Vec<Received> {
        self.log.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    pub fn authenticated(&self) -> Vec<String> {
        self.log.lock().unwrap().authenticated.clone()
    }

    pub fn accepted(&self) -> Vec<(std::time::Instant, usize)> {
        self.log.lock().unwrap().accepted.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().commands.clone()
    }
}

fn tls_acceptor(cert: Option<&TestCert>) -> tokio_rustls::TlsAcceptor {
    let config = match cert {
        Some(c) => c.server_config(&[]),
        None => TestCert::self_signed(&["mx.test"]).server_config(&[]),
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Starts a scripted server on `addr`; `script(n)` is the script of the
/// n-th connection (0-based).
pub async fn mx(addr: SocketAddr, script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Mx {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let l = log.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let n = {
                let mut g = l.lock().unwrap();
                g.connections += 1;
                g.open += 1;
                let open = g.open;
                g.accepted.push((std::time::Instant::now(), open));
                g.connections - 1
            };
            let sc = script(n);
            let l = l.clone();
            tokio::spawn(async move {
                let _ = connection(s, n, sc, l.clone()).await;
                l.lock().unwrap().open -= 1;
            });
        }
    });
    Mx { addr, log, task }
}

async fn connection(
    s: TcpStream,
    n: usize,
    script: Script,
    log: Arc<Mutex<Log>>,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(s);
    if let Some(gap) = script.drip {
        // threat model T41: a remote that answers one byte at a time.
        for b in script.greeting.as_bytes() {
            plain.get_mut().write_all(&[*b]).await?;
            tokio::time::sleep(gap).await;
        }
        return Ok(());
    }
    plain
        .get_mut()
        .write_all(script.greeting.as_bytes())
        .await?;
    if !script.greeting.starts_with("220") {
        return Ok(());
    }
    match session(&mut plain, n, &script, &log, false).await? {
        Next::Close => Ok(()),
        Next::StartTls => {
            let acceptor = tls_acceptor(script.cert.as_ref());
            let tls = acceptor.accept(plain.into_inner()).await?;
            let mut tls = BufReader::new(tls);
            let _ = session(&mut tls, n, &script, &log, true).await?;
            Ok(())
        }
    }
}

enum Next {
    Close,
    StartTls,
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    n: usize,
    script: &Script,
    log: &Arc<Mutex<Log>>,
    tls: bool,
) -> std::io::Result<Next> {
    let mut from = String::new();
    let mut rcpts = Vec::new();
    let mut helo = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if s.read_until(b'\n', &mut line).await? == 0 {
            return Ok(Next::Close);
        }
        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
        log.lock()
            .unwrap()
            .commands
            .push(format!("{n}{} {cmd}", if tls { "[tls]" } else { "" }));
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") && script.ehlo_flood {
            // threat model T38: a multiline reply that never ends.
            let flood = "250-x\r\n".repeat(1000);
            loop {
                s.get_mut().write_all(flood.as_bytes()).await?;
            }
        } else if upper.starts_with("EHLO") {
            helo = cmd[4..].trim().to_string();
            let mut caps: Vec<&str> = script.caps.clone();
            if script.starttls.is_some() && !tls {
                caps.push("STARTTLS");
            }
            if script.auth.is_some() && tls {
                caps.push("AUTH PLAIN LOGIN");
            }
            let mut r = String::from("250-mx.test\r\n");
            for (i, c) in caps.iter().enumerate() {
                let sep = if i + 1 == caps.len() { ' ' } else { '-' };
                r.push_str(&format!("250{sep}{c}\r\n"));
            }
            if caps.is_empty() {
                r = "250 mx.test\r\n".into();
            }
            r
        } else if upper.starts_with("STARTTLS") && !tls && script.starttls.is_some() {
            // One segment: the 220 plus whatever the script injects.
            let mut r = String::from("220 2.0.0 Ready\r\n");
            r.push_str(script.starttls.unwrap_or(""));
            s.get_mut().write_all(r.as_bytes()).await?;
            return Ok(Next::StartTls);
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            rcpts.clear();
            script.mail.to_string()
        } else if upper.starts_with("RCPT TO:")
            && script.rcpt_limit.is_some_and(|n| rcpts.len() >= n)
        {
            "452 4.5.3 too many recipients\r\n".to_string()
        } else if upper.starts_with("RCPT TO:") {
            if script.rcpt.starts_with('2') {
                rcpts.push(
                    cmd[8..]
                        .trim()
                        .trim_matches(|c| c == '<' || c == '>')
                        .to_string(),
                );
            }
            script.rcpt.to_string()
        } else if upper.starts_with("AUTH PLAIN ") && tls && script.auth.is_some() {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(cmd[11..].trim())
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
            let (user, pw) = script.auth.unwrap_or_default();
            if parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == pw.as_bytes() {
                log.lock().unwrap().authenticated.push(user.to_string());
                "235 2.7.0 authenticated\r\n".into()
            } else {
                "535 5.7.8 bad credentials\r\n".into()
            }
        } else if let Some(args) = upper.strip_prefix("BDAT ") {
            // RFC 3030: BDAT <n> [LAST], then exactly n octets.
            let mut it = args.split_whitespace();
            let len: usize = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = it.next() == Some("LAST");
            let mut chunk = vec![0u8; len];
            s.read_exact(&mut chunk).await?;
            if !last || rcpts.is_empty() {
                "554 5.5.1 only one LAST chunk with recipients in this script\r\n".into()
            } else {
                log.lock().unwrap().messages.push(Received {
                    connection: n,
                    from: from.clone(),
                    rcpts: std::mem::take(&mut rcpts),
                    wire: chunk,
                    tls,
                    helo: helo.clone(),
                });
                if let Some(d) = script.data_end_delay {
                    tokio::time::sleep(d).await;
                }
                match script.data_end {
                    Some(r) => r.to_string(),
                    None => return Ok(Next::Close),
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                s.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut wire = Vec::new();
                loop {
                    line.clear();
                    if s.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(Next::Close);
                    }
                    wire.extend_from_slice(&line);
                    if line == b".\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().messages.push(Received {
                    connection: n,
                    from: from.clone(),
                    rcpts: rcpts.clone(),
                    wire,
                    tls,
                    helo: helo.clone(),
                });
                rcpts.clear();
                if let Some(d) = script.data_end_delay {
                    tokio::time::sleep(d).await;
                }
                match script.data_end {
                    Some(r) => r.to_string(),
                    None => return Ok(Next::Close),
                }
            }
        } else if upper == "RSET" {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            s.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(Next::Close);
        } else {
            "502 5.5.2 not implemented\r\n".into()
        };
        s.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// A man in the middle: forwards the session to `upstream` and rewrites
/// `STARTTLS` in the server's replies, as seen in real downgrade attacks.
pub async fn stripping_proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = sr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let text =
                            String::from_utf8_lossy(&buf[..n]).replace("STARTTLS", "XXXXXXXA");
                        if cw.write_all(text.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                };
                let _ = tokio::join!(up, down);
            });
        }
    })
}

/// A free port on 127.0.0.1 (also used on 127.0.0.2, …, for several MX).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub fn config(store: &test_kit::TestStore, dns: SocketAddr, port: u16) -> smtp_out::Config {
    smtp_out::Config {
        store: StoreArgs::new(store.grpc_url.clone(), store.token.clone()),
        worker_id: Some(format!("test-{:08x}", rand::random::<u32>())),
        hostname: "out.a.test".into(),
        batch: 32,
        max_in_flight: 64,
        per_destination: 1,
        throttle_backoff: Duration::from_secs(1),
        messages_per_connection: 100,
        lease_ms: 10_000,
        max_unfinished: 5,
        dns_server: Some(dns),
        dns_timeout_ms: 500,
        smtp_port: port,
        relays: Vec::new(),
        retry_schedule: vec![Duration::from_millis(500)],
        give_up_after: Duration::from_secs(86_400),
        delay_notice_after: Duration::from_secs(4 * 3600),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(3),
        data_timeout: Duration::from_secs(3),
        no_starttls: false,
        dkim_keys: Vec::new(),
        relay_auth: Vec::new(),
        relay_auth_unverified_tls: false,
        // The scripted servers live on loopback: allowed explicitly.
        allow_destinations: vec!["127.0.0.0/8".into(), "::1".into()],
        ca_file: None,
        no_mta_sts: false,
        no_dane: false,
        no_arc: false,
        no_tlsrpt: false,
        tlsrpt_org: None,
        tlsrpt_contact: None,
        tlsrpt_from: None,
        no_dmarc_reports: true,
        dmarc_report_from: None,
        mta_sts_port: 443,
        http_listen: "127.0.0.1:0".parse().unwrap(),
    }
}

/// smtp-out running in this process.
pub struct Running {
    pub shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub fn start(config: smtp_out::Config) -> Running {
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = smtp_out::run(config, sd).await {
            eprintln!("smtp-out stopped: {e:#}");
        }
    });
    Running { shutdown, task }
}

/// Enqueues an outbound job (as delivery would, but with its own body),
/// not marked for signing (as relayed or forwarded mail is).
pub async fn enqueue_outbound(client: &StoreClient, from: &str, to: &[&str], raw: &[u8]) -> u64 {
    enqueue_outbound_as(client, from, to, raw, false).await
}

/// Enqueues an outbound job; `sign` is the enqueuer's DKIM mark (an
/// authenticated submission, our own DSN).
pub async fn enqueue_outbound_as(
    client: &StoreClient,
    from: &str,
    to: &[&str],
    raw: &[u8],
    sign: bool,
) -> u64 {
    let header = pb::EnqueueHeader {
        sign,
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: format!("test-{:016x}", rand::random::<u64>()),
        mail_from: from.into(),
        recipients: to
            .iter()
            .map(|a| pb::Recipient {
                address: (*a).to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    test_kit::enqueue_header(client, header, raw)
        .await
        .unwrap()
        .job_id
}

pub async fn job(client: &StoreClient, id: u64) -> pb::JobDetail {
    client
        .queue
        .clone()
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner()
}

/// Polls the job until `done(detail)` holds (panics after `secs`).
pub async fn wait_job(
    client: &StoreClient,
    id: u64,
    secs: u64,
    done: impl Fn(&pb::JobDetail) -> bool,
) -> pb::JobDetail {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let d = job(client, id).await;
        if done(&d) {
            return d;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("job {id} did not reach the expected state: {d:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_done(d: &pb::JobDetail) -> bool {
    d.summary
        .as_ref()
        .is_some_and(|s| s.state == pb::JobState::Done as i32)
}

pub fn rcpt_state(d: &pb::JobDetail, i: usize) -> pb::RecipientState {
    d.job
        .as_ref()
        .and_then(|j| j.recipients.get(i))
        .map_or(pb::RecipientState::Unspecified, |r| {
            pb::RecipientState::try_from(r.state).unwrap_or(pb::RecipientState::Unspecified)
        })
}

pub fn rcpt_detail(d: &pb::JobDetail, i: usize) -> String {
    d.job
        .as_ref()
        .and_then(|j| j.recipients.get(i))
        .map(|r| r.detail.clone())
        .unwrap_or_default()
}

/// Inbound jobs (DSNs) with their bodies.
pub async fn inbound(client: &StoreClient) -> Vec<(pb::JobSummary, pb::Job, Vec<u8>)> {
    let jobs = client
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest {
            kind: pb::QueueKind::Inbound as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let mut out = Vec::new();
    for s in jobs {
        let d = job(client, s.id).await;
        let body = test_kit::collect_body(
            client
                .queue
                .clone()
                .read_message(pb::ReadMessageRequest {
                    job_id: s.id,
                    offset: 0,
                    length: 0,
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await
        .unwrap();
        out.push((s, d.job.unwrap_or_default(), body));
    }
    out
}
