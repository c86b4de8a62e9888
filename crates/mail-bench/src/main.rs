//! `mail-bench`: drives any SMTP/IMAP/POP3 server over TLS on the network
//! and prints what it measured as one JSON object per invocation (stdout)
//! and a short human line (stderr). scripts/bench-compare runs it against
//! Postfix + Dovecot and against Epistole with the same arguments.
//!
//! Every subcommand takes `--proc NAME=PID,PID…` (repeatable): the CPU time
//! and peak PSS of those process trees during the phase are reported too
//! (see `procs.rs`).

use std::time::Duration;

use mail_bench::{idle, imap, latency, pop3, procs, quantile, smtp};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "SMTP/IMAP/POP3 load generator with server CPU and memory from /proc")]
struct Cli {
    /// Process trees to account: NAME=PID[,PID…] (repeatable).
    #[arg(long = "proc", global = true)]
    procs: Vec<procs::Group>,
    /// Repeat the measurement this many times (median, min and max reported).
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SMTP ingest, one connection per message (STARTTLS unless --no-tls).
    Smtp {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        no_tls: bool,
        #[arg(long, default_value_t = 10)]
        sessions: usize,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 5)]
        size_kib: usize,
        #[arg(long, default_value = "sender@bench-sender.test")]
        from: String,
        /// Recipients, used in turn (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        rcpt: Vec<String>,
        #[arg(long, default_value = "client.bench-sender.test")]
        helo: String,
        /// IMAPS address: wait until every message is in its INBOX.
        #[arg(long)]
        imap: Option<String>,
        /// Password of every recipient (for --imap).
        #[arg(long, default_value = "")]
        password: String,
    },
    /// IMAP client mix (implicit TLS) for a fixed time.
    Imap {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        #[arg(long)]
        password: String,
        /// Rounds of the command mix per login.
        #[arg(long, default_value_t = 5)]
        loops: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// POP3 download of every message (implicit TLS), one client per user.
    Pop3 {
        #[arg(long)]
        addr: String,
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        #[arg(long)]
        password: String,
    },
    /// Accept → IDLE latency: one client IDLEs on the recipient's INBOX,
    /// messages go one at a time over SMTP (STARTTLS), each timed from its
    /// 250 to the `* N EXISTS` announcing it.
    Latency {
        /// SMTP address.
        #[arg(long)]
        addr: String,
        /// IMAPS address.
        #[arg(long)]
        imap: String,
        /// The recipient (also the IMAP login).
        #[arg(long)]
        rcpt: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        #[arg(long, default_value_t = 5)]
        size_kib: usize,
        #[arg(long, default_value = "sender@bench-sender.test")]
        from: String,
        #[arg(long, default_value = "client.bench-sender.test")]
        helo: String,
    },
    /// Idle connections: N logged-in, INBOX-selected IMAPS connections
    /// held open; server PSS per connection from the `--proc` groups.
    Idle {
        #[arg(long)]
        addr: String,
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Local source addresses, e.g. 127.0.0.2-127.0.0.121 (comma list
        /// or ranges), used in turn.
        #[arg(long, default_value = "", value_parser = idle::parse_sources)]
        sources: std::vec::Vec<std::net::IpAddr>,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 50)]
        parallel: usize,
        /// Seconds to hold them before measuring.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// Runs another load tool (e.g. imaptest) while sampling `--proc`; its
    /// standard output goes to `--output`.
    Exec {
        #[arg(long)]
        output: std::path::PathBuf,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

/// Median, min and max of one figure over the runs.
fn spread(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let med = if v.is_empty() { 0.0 } else { v[v.len() / 2] };
    json!({"median": med, "min": v.first(), "max": v.last(), "runs": values})
}

fn usage_json(u: &[procs::Usage], units: f64) -> Value {
    let mut m = serde_json::Map::new();
    for g in u {
        m.insert(
            g.name.clone(),
            json!({
                "cpu_ms": g.cpu_ms,
                "cpu_ms_per_unit": if units > 0.0 { g.cpu_ms as f64 / units } else { 0.0 },
                "pss_before_mib": g.pss_before_mib,
                "pss_peak_mib": g.pss_peak_mib,
                "pss_after_mib": g.pss_after_mib,
            }),
        );
    }
    Value::Object(m)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runs = cli.runs.max(1);
    let mut results = Vec::new();
    let mut rates = Vec::new();
    for run in 0..runs {
        let sampler = procs::Sampler::start(&cli.procs);
        let phase_start = std::time::Instant::now();
        let (units, mut r) = match &cli.cmd {
            Cmd::Smtp {
                addr,
                no_tls,
                sessions,
                messages,
                size_kib,
                from,
                rcpt,
                helo,
                imap,
                password,
            } => {
                let job = smtp::Job {
                    addr: addr.clone(),
                    starttls: !no_tls,
                    sessions: *sessions,
                    messages: *messages,
                    size_kib: *size_kib,
                    from: from.clone(),
                    rcpts: rcpt.clone(),
                    helo: helo.clone(),
                };
                let watch = imap.as_deref().map(|a| (a, password.as_str()));
                let mut o = smtp::run(&job, watch).await?;
                let rate = o.accepted as f64 / o.accept_secs;
                rates.push(rate);
                let into = o.visible_secs.map(|s| o.accepted as f64 / s);
                eprintln!(
                    "smtp run {run}: {} accepted, {} refused, {rate:.0} msg/s accepted{}",
                    o.accepted,
                    o.refused,
                    into.map(|r| format!(", {r:.0} msg/s into mailbox"))
                        .unwrap_or_default()
                );
                let r = json!({
                    "accepted": o.accepted, "refused": o.refused,
                    "accept_secs": o.accept_secs, "accepted_per_sec": rate,
                    "visible_secs": o.visible_secs, "into_mailbox_per_sec": into,
                    "delivery_lag_secs": o.visible_secs.map(|v| v - o.accept_secs),
                    "data_250_p50_ms": quantile(&mut o.latencies, 0.5),
                    "data_250_p99_ms": quantile(&mut o.latencies, 0.99),
                });
                (o.accepted as f64, r)
            }
            Cmd::Imap {
                addr,
                clients,
                users,
                password,
                loops,
                seconds,
            } => {
                let mix = imap::Mix {
                    addr: addr.clone(),
                    clients: *clients,
                    users: users.clone(),
                    password: password.clone(),
                    loops: *loops,
                    duration: Duration::from_secs(*seconds),
                };
                let mut o = imap::run(&mix).await?;
                let rate = o.commands as f64 / o.secs;
                rates.push(rate);
                eprintln!(
                    "imap run {run}: {} commands ({} logins) in {:.1} s, {rate:.0} cmd/s",
                    o.commands, o.logins, o.secs
                );
                let lat: serde_json::Map<String, Value> = o
                    .latency
                    .iter_mut()
                    .map(|(k, v)| {
                        let n = v.len();
                        (
                            (*k).to_string(),
                            json!({"n": n, "p50_ms": quantile(v, 0.5), "p99_ms": quantile(v, 0.99)}),
                        )
                    })
                    .collect();
                let r = json!({
                    "commands": o.commands, "logins": o.logins, "secs": o.secs,
                    "commands_per_sec": rate, "latency": lat,
                });
                (o.commands as f64, r)
            }
            Cmd::Pop3 {
                addr,
                users,
                password,
            } => {
                let job = pop3::Job {
                    addr: addr.clone(),
                    users: users.clone(),
                    password: password.clone(),
                };
                let o = pop3::run(&job).await?;
                let rate = o.messages as f64 / o.secs;
                rates.push(rate);
                eprintln!(
                    "pop3 run {run}: {} messages in {:.1} s, {rate:.0} msg/s",
                    o.messages, o.secs
                );
                let r = json!({
                    "messages": o.messages, "bytes": o.bytes, "secs": o.secs,
                    "retr_per_sec": rate,
                });
                (o.messages as f64, r)
            }
            Cmd::Latency {
                addr,
                imap,
                rcpt,
                password,
                messages,
                size_kib,
                from,
                helo,
            } => {
                let job = latency::Job {
                    smtp: smtp::Job {
                        addr: addr.clone(),
                        starttls: true,
                        sessions: 1,
                        messages: *messages,
                        size_kib: *size_kib,
                        from: from.clone(),
                        rcpts: vec![rcpt.clone()],
                        helo: helo.clone(),
                    },
                    imap: imap.clone(),
                    password: password.clone(),
                    timeout: Duration::from_secs(60),
                };
                let mut o = latency::run(&job).await?;
                let n = o.from_250.len();
                let p50 = quantile(&mut o.from_250, 0.5);
                let p99 = quantile(&mut o.from_250, 0.99);
                rates.push(p50);
                eprintln!(
                    "latency run {run}: {n} announced, 250 → EXISTS p50 {p50:.1} ms, p99 {p99:.1} ms"
                );
                let r = json!({
                    "announced": n, "refused": o.refused,
                    "p50_ms": p50, "p99_ms": p99,
                    "max_ms": quantile(&mut o.from_250, 1.0),
                    "from_dot_p50_ms": quantile(&mut o.from_dot, 0.5),
                    "from_dot_p99_ms": quantile(&mut o.from_dot, 0.99),
                });
                (n as f64, r)
            }
            Cmd::Idle {
                addr,
                users,
                password,
                connections,
                sources,
                parallel,
                hold_secs,
            } => {
                let job = idle::Job {
                    addr: addr.clone(),
                    users: users.clone(),
                    password: password.clone(),
                    connections: *connections,
                    sources: sources.clone(),
                    parallel: *parallel,
                    hold: Duration::from_secs(*hold_secs),
                };
                let o = idle::run(&job, &cli.procs).await?;
                let mut groups = serde_json::Map::new();
                for (i, g) in cli.procs.iter().enumerate() {
                    let before = o.pss_before_kib.get(i).copied().unwrap_or(0);
                    let held = o.pss_held_kib.get(i).copied().unwrap_or(0);
                    let per = (held as f64 - before as f64) * 1024.0 / o.opened.max(1) as f64;
                    groups.insert(
                        g.name.clone(),
                        json!({"pss_before_mib": before as f64 / 1024.0,
                               "pss_held_mib": held as f64 / 1024.0,
                               "bytes_per_connection": per}),
                    );
                }
                let total: u64 = o.pss_held_kib.iter().sum();
                rates.push(o.opened as f64 / o.open_secs.max(1e-9));
                eprintln!(
                    "idle run {run}: {} connections open in {:.1} s, held PSS {:.1} MiB (all groups)",
                    o.opened,
                    o.open_secs,
                    total as f64 / 1024.0
                );
                let r = json!({
                    "opened": o.opened, "open_secs": o.open_secs, "nofile": o.nofile,
                    "held": Value::Object(groups),
                });
                (o.opened as f64, r)
            }
            Cmd::Exec { output, command } => {
                let file = std::fs::File::create(output)?;
                let t = std::time::Instant::now();
                let status = tokio::process::Command::new(&command[0])
                    .args(&command[1..])
                    .stdout(file)
                    .status()
                    .await?;
                let secs = t.elapsed().as_secs_f64();
                rates.push(0.0);
                eprintln!(
                    "exec run {run}: {} exited {status} after {secs:.1} s",
                    command[0]
                );
                (0.0, json!({"secs": secs, "status": status.code()}))
            }
        };
        r["phase_secs"] = json!(phase_start.elapsed().as_secs_f64());
        let usage = sampler.finish().await;
        r["procs"] = usage_json(&usage, units);
        results.push(r);
    }
    let out = json!({"rate": spread(&rates), "results": results});
    println!("{out}");
    Ok(())
}
