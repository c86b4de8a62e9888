//! The one-machine launcher (`scripts/run`), as a user runs it: start it,
//! send a message with smtplib, read it with imaplib and poplib, press
//! Ctrl-C, and check that everything it started has exited.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt as _;

/// On any failure: kill what the launcher started, including its PostgreSQL
/// (pg_ctl puts the server in a session of its own).
struct Cleanup {
    pgid: u32,
    var: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .status();
        let data = self.var.join("pg/data");
        if data.join("postmaster.pid").exists() {
            let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
                .map(|e| e.path().join("bin/pg_ctl"))
                .unwrap_or_else(|| "pg_ctl".into());
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.var);
    }
}

fn alive_in_group(pgid: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pgid=,pid=,comm="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&pgid.to_string()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_send_read_ctrl_c_nothing_left_running() {
    let var = std::env::temp_dir().join(format!("epistole-launch-{}", std::process::id()));
    std::fs::create_dir_all(&var).unwrap();
    let offset = 10_000 + (std::process::id() % 150) * 100;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run");
    // As from a terminal: SIGINT at its default disposition, even when this
    // test itself runs with SIGINT ignored (a background job of a shell).
    let mut std_cmd = Command::new("python3");
    std_cmd
        .args([
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp('bash', ['bash', sys.argv[1]])",
            script,
        ])
        .env("EPISTOLE_BIN", env!("CARGO_BIN_EXE_epistole"))
        .env("EPISTOLE_VAR", &var)
        .env("EPISTOLE_PORT_OFFSET", offset.to_string())
        .env("EPISTOLE_DOMAIN", "launch.test")
        .env("EPISTOLE_USER", "me@launch.test")
        .env("EPISTOLE_PASSWORD", "launch-password-1")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0);
    let mut child = tokio::process::Command::from(std_cmd).spawn().unwrap();
    let pgid = child.id().unwrap();
    let _cleanup = Cleanup {
        pgid,
        var: var.clone(),
    };
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("launcher ready in time")
            .unwrap()
            .expect("launcher exited before it was ready");
        banner.push_str(&line);
        banner.push('\n');
        if line == "ready" {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(
        banner.contains("me@launch.test / launch-password-1"),
        "{banner}"
    );
    let p = |base: u32| (base + offset).to_string();
    let py = r#"
import smtplib, imaplib, poplib, ssl, sys, time
sub, imaps, pop3s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", sub) as c:
    c.starttls(context=ctx)
    c.login("me@launch.test", "launch-password-1")
    c.sendmail("me@launch.test", ["me@launch.test"], "From: me@launch.test\r\nTo: me@launch.test\r\nSubject: launched\r\n\r\nIt works.\r\n")
deadline = time.time() + 60
while True:
    m = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=ctx)
    m.login("me@launch.test", "launch-password-1")
    typ, data = m.select("INBOX")
    if int(data[0]) >= 1:
        break
    m.logout()
    assert time.time() < deadline, "message never arrived"
    time.sleep(0.5)
typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert b"launched" in data[0][1], data
m.logout()
p = poplib.POP3_SSL("127.0.0.1", pop3s, context=ctx)
p.user("me@launch.test"); p.pass_("launch-password-1")
resp, lines, _ = p.retr(1)
assert any(b"It works." in l for l in lines), lines
p.quit()
print("ok")
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", py, &p(5587), &p(1993), &p(1995)])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "clients failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Ctrl-C: SIGINT to the whole foreground process group, as a terminal does.
    let sent = Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(sent.success(), "SIGINT to the launcher's process group");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("launcher exits after Ctrl-C")
        .unwrap();
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    let start = Instant::now();
    while !alive_in_group(pgid).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left running: {:?}",
            alive_in_group(pgid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !var.join("pg/data/postmaster.pid").exists(),
        "PostgreSQL stopped"
    );
    let _ = std::fs::remove_dir_all(&var);
}
