//! # test-kit
//!
//! - [`Postgres`]: a throwaway PostgreSQL cluster for the whole test process
//!   (initdb + pg_ctl in a temp dir, as the `postgres` user when we are root),
//!   or the server named by `DATABASE_URL`. A watchdog process stops the
//!   cluster and removes its directory when the test process exits, however
//!   it exits; stale clusters of dead runs are swept at start.
//! - [`fresh_database`]: a new, empty database per test.
//! - [`TestStore`]: the real mailbox-store, in-process on 127.0.0.1:0.
//!
//! Durability settings are PostgreSQL's defaults (fsync and synchronous
//! commit on), so tests see what production sees.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use mailstore_api::{StoreClient, pb};
use service_kit::Shutdown;
use sqlx::Connection as _;

/// A PostgreSQL server usable by tests.
pub struct Postgres {
    /// Admin URL (database `postgres`).
    pub admin_url: String,
    /// Builds a URL for another database on the same server.
    base: String,
    query: String,
    /// `pg_ctl`, the cluster's data directory and whether to run it as the
    /// `postgres` user; `None` for a server given by `DATABASE_URL`.
    control: Option<(PathBuf, PathBuf, bool)>,
}

mod queue;
mod tls_pg;
pub use queue::{deliver_request, enqueue, enqueue_header, lease_inbound};
pub use tls_pg::TlsPostgres;

static PG: OnceLock<Result<Postgres, String>> = OnceLock::new();

impl Postgres {
    /// The process-wide server (started on first use).
    ///
    /// # Panics
    /// With a clear message when no PostgreSQL can be found or started.
    pub fn get() -> &'static Postgres {
        match PG.get_or_init(Self::start) {
            Ok(pg) => pg,
            Err(e) => panic!("test-kit: no PostgreSQL for tests: {e}"),
        }
    }

    /// Stops the server the way a crash does (`pg_ctl -m immediate`: no
    /// checkpoint, clients cut), then starts it again on the same socket.
    /// Fault-injection tests use it; the data survives through the WAL.
    ///
    /// # Errors
    /// A server this process did not start (`DATABASE_URL`), or `pg_ctl`
    /// failing.
    pub fn crash_restart(&self) -> Result<(), String> {
        let (pg_ctl, data, as_root) = self
            .control
            .as_ref()
            .ok_or("the server comes from DATABASE_URL; it is not ours to restart")?;
        // `restart` keeps the options of the first start (postmaster.opts).
        run(pg_cmd(*as_root, pg_ctl, |c| {
            c.arg("-D")
                .arg(data)
                .arg("-l")
                .arg(data.with_file_name("pg.log"))
                .args(["-m", "immediate", "-w", "restart"]);
        }))
    }

    /// URL of database `name` on this server.
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}{}", self.base, self.query)
    }

    fn start() -> Result<Postgres, String> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(split_url(&url));
        }
        let bin = find_pg_bin().ok_or(
            "set DATABASE_URL, or install the PostgreSQL server binaries (initdb, pg_ctl), e.g. apt-get install postgresql",
        )?;
        sweep_stale();
        let dir = PathBuf::from(format!(
            "/tmp/epg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| e.to_string())?;
        let as_root = is_root();
        if as_root {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown)?;
        }
        let data = dir.join("data");
        let initdb = pg_cmd(as_root, &bin.join("initdb"), |c| {
            c.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]);
        });
        run(initdb)?;
        let port = 5432;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses='' -c max_connections=300",
            dir.display()
        );
        let start = pg_cmd(as_root, &bin.join("pg_ctl"), |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("pg.log"))
                .args(["-w", "-o", &opts, "start"]);
        });
        run(start)?;
        spawn_watchdog(&dir, &bin, as_root);
        let host = dir.display().to_string();
        Ok(Postgres {
            admin_url: format!("postgres://postgres@localhost:{port}/postgres?host={host}"),
            base: format!("postgres://postgres@localhost:{port}"),
            query: format!("?host={host}"),
            control: Some((bin.join("pg_ctl"), data, as_root)),
        })
    }
}

fn split_url(url: &str) -> Postgres {
    // postgres://user@host:port/db?query  →  base, query
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m.to_string(), format!("?{q}")),
        None => (url.to_string(), String::new()),
    };
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let base = match main[scheme_end..].find('/') {
        Some(i) => main[..scheme_end + i].to_string(),
        None => main.clone(),
    };
    Postgres {
        admin_url: url.to_string(),
        base,
        query,
        control: None,
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .collect();
        v.sort();
        v.reverse();
        candidates.extend(v);
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn pg_cmd(as_root: bool, program: &Path, f: impl FnOnce(&mut Command)) -> Command {
    let mut c = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    f(&mut c);
    c
}

fn run(mut c: Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A detached shell that waits for this process to exit, then stops the
/// cluster and removes its directory.
fn spawn_watchdog(dir: &Path, bin: &Path, as_root: bool) {
    use std::os::unix::process::CommandExt as _;
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_root {
        format!(
            "runuser -u postgres -- {} -D {}/data -m immediate -w stop",
            pg_ctl.display(),
            dir.display()
        )
    } else {
        format!(
            "{} -D {}/data -m immediate -w stop",
            pg_ctl.display(),
            dir.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// Stops and removes clusters whose owning test process is gone.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("epg-") {
            continue;
        }
        let dir = e.path();
        let pid = std::fs::read_to_string(dir.join("owner.pid")).unwrap_or_default();
        let alive = !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists();
        if !alive {
            let pidfile = dir.join("data/postmaster.pid");
            if let Ok(s) = std::fs::read_to_string(&pidfile)
                && let Some(p) = s.lines().next()
            {
                let _ = Command::new("kill").args(["-9", p.trim()]).status();
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Creates a new empty database and returns its URL.
pub async fn fresh_database() -> String {
    let pg = Postgres::get();
    let name = format!("t_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let mut conn = sqlx::PgConnection::connect(&pg.admin_url)
        .await
        .unwrap_or_else(|e| panic!("test-kit: connect to {}: {e}", pg.admin_url));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    pg.url(&name)
}

/// A token for tests.
#[must_use]
pub fn random_token() -> String {
    format!(
        "test-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The real mailbox-store running in this process, on a runtime of its own
/// (its own threads), so that [`TestStore::stop`] can kill it the way a
/// crash would: every open connection drops at once.
pub struct TestStore {
    pub grpc_url: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin token: allows every RPC (what tests use for setup and
    /// what `mailctl` holds).
    pub token: String,
    /// The service token: what the protocol services and workers hold;
    /// administrative RPCs are refused with it.
    pub service_token: String,
    pub database_url: String,
    tune: Tune,
    running: Option<Running>,
}

/// Adjusts the store's configuration before it starts.
pub type Tune = fn(&mut mailbox_store::Config);

fn no_tune(_: &mut mailbox_store::Config) {}

struct Running {
    kill: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts a store on its own runtime thread; returns its addresses.
fn launch(
    database_url: &str,
    (admin_token, service_token): (&str, &str),
    listen: SocketAddr,
    tune: Tune,
) -> Result<(SocketAddr, SocketAddr, Running), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let mut config =
        mailbox_store::Config::new(database_url.to_string(), service_token.to_string());
    config.admin_token = Some(admin_token.to_string());
    config.listen = listen;
    tune(&mut config);
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let server = match mailbox_store::Server::bind(config).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let addrs = (server.grpc_addr(), server.http_addr());
            let (Ok(g), Ok(h)) = addrs else {
                let _ = ready_tx.send(Err("no local address".into()));
                return;
            };
            let _ = ready_tx.send(Ok((g, h)));
            let shutdown = Shutdown::new();
            tokio::select! {
                r = server.serve(shutdown.clone()) => {
                    if let Err(e) = r {
                        eprintln!("test store stopped: {e:#}");
                    }
                }
                _ = kill_rx => shutdown.cancel(),
            }
        });
        // Dropping the runtime cancels every task it still runs: open
        // connections and streams die as in a crash.
        rt.shutdown_background();
    });
    let (g, h) = ready_rx
        .recv()
        .map_err(|_| "store thread died".to_string())??;
    Ok((g, h, Running { kill, thread }))
}

impl TestStore {
    /// A fresh database and a store serving it.
    pub async fn start() -> Self {
        Self::start_tuned(no_tune).await
    }

    /// A fresh database and a store serving it, with its configuration
    /// adjusted by `tune` (limits, hashing pool, …); replicas and restarts
    /// keep the adjustment.
    pub async fn start_tuned(tune: Tune) -> Self {
        let db = fresh_database().await;
        let tokens = (random_token(), random_token());
        Self::start_on(db, tokens, SocketAddr::from(([127, 0, 0, 1], 0)), tune).await
    }

    /// Another store process (replica) over the same database and tokens.
    pub async fn replica(&self) -> Self {
        Self::start_on(
            self.database_url.clone(),
            (self.token.clone(), self.service_token.clone()),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            self.tune,
        )
        .await
    }

    /// A store over an existing database (one restored from a backup, say),
    /// with new tokens: tokens are configuration, not data.
    pub async fn start_over(database_url: &str) -> Self {
        let tokens = (random_token(), random_token());
        Self::start_on(
            database_url.to_string(),
            tokens,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            no_tune,
        )
        .await
    }

    async fn start_on(
        database_url: String,
        (token, service_token): (String, String),
        listen: SocketAddr,
        tune: Tune,
    ) -> Self {
        service_kit::init_tracing(
            &service_kit::LogArgs {
                format: "text".into(),
                filter: "warn".into(),
                otlp_endpoint: None,
            },
            "mailbox-store",
        );
        let (db, tk, st) = (database_url.clone(), token.clone(), service_token.clone());
        let (grpc_addr, http_addr, running) =
            tokio::task::spawn_blocking(move || launch(&db, (&tk, &st), listen, tune))
                .await
                .expect("launch thread")
                .unwrap_or_else(|e| panic!("start mailbox-store: {e}"));
        Self {
            grpc_url: format!("http://{grpc_addr}"),
            grpc_addr,
            http_addr,
            token,
            service_token,
            database_url,
            tune,
            running: Some(running),
        }
    }

    /// A client with the admin token (allowed everything).
    #[must_use]
    pub fn client(&self) -> StoreClient {
        mailstore_api::connect(&self.grpc_url, &self.token).expect("store client")
    }

    /// A client with the service token, as a protocol service holds it.
    #[must_use]
    pub fn service_client(&self) -> StoreClient {
        mailstore_api::connect(&self.grpc_url, &self.service_token).expect("store client")
    }

    /// Kills the store as a crash would: the listener closes and every open
    /// connection drops. The database stays.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.kill.send(());
            let _ = tokio::task::spawn_blocking(move || r.thread.join()).await;
        }
    }

    /// Starts the store again on the same gRPC port, over the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last = String::new();
        for _ in 0..50 {
            let (db, tk, st, addr, tune) = (
                self.database_url.clone(),
                self.token.clone(),
                self.service_token.clone(),
                self.grpc_addr,
                self.tune,
            );
            match tokio::task::spawn_blocking(move || launch(&db, (&tk, &st), addr, tune))
                .await
                .expect("launch thread")
            {
                Ok((_, http, running)) => {
                    self.http_addr = http;
                    self.running = Some(running);
                    return;
                }
                Err(e) => {
                    last = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        panic!("rebind mailbox-store on {}: {last}", self.grpc_addr);
    }

    /// Creates a domain.
    pub async fn add_domain(&self, name: &str) {
        self.client()
            .accounts
            .create_domain(pb::CreateDomainRequest { name: name.into() })
            .await
            .expect("create domain");
    }

    /// Creates a user, returns its id.
    pub async fn add_user(&self, address: &str, password: &str) -> u64 {
        self.client()
            .accounts
            .create_user(pb::CreateUserRequest {
                address: address.into(),
                password: password.into(),
                quota_bytes: 0,
            })
            .await
            .expect("create user")
            .into_inner()
            .id
    }

    /// Appends a raw message to a mailbox, returns the UID.
    pub async fn append(&self, user_id: u64, mailbox: &str, raw: &[u8]) -> u32 {
        append(&self.client(), user_id, mailbox, raw, &[])
            .await
            .expect("append")
            .uid
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.kill.send(());
            // Not joined: the thread ends by itself; a Drop must not block.
        }
    }
}

/// Appends through the client-streaming RPC in 256 KiB chunks.
///
/// # Errors
/// The store's status.
pub async fn append(
    client: &StoreClient,
    user_id: u64,
    mailbox: &str,
    raw: &[u8],
    flags: &[&str],
) -> Result<pb::AppendResponse, tonic::Status> {
    let mut msgs = vec![pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            user_id,
            mailbox: mailbox.into(),
            flags: flags.iter().map(|f| (*f).to_string()).collect(),
            internal_date: None,
            size: raw.len() as u64,
        })),
    }];
    for c in raw.chunks(256 * 1024) {
        msgs.push(pb::AppendRequest {
            part: Some(pb::append_request::Part::Data(c.to_vec())),
        });
    }
    let mut c = client.mailboxes.clone();
    c.append(futures::stream::iter(msgs))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads a whole message body stream into memory.
///
/// # Errors
/// The store's status.
pub async fn collect_body(
    mut s: tonic::Streaming<pb::BodyChunk>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(c) = s.message().await? {
        out.extend_from_slice(&c.data);
    }
    Ok(out)
}

/// Path of the multi-call `epistole` binary next to the test executable
/// (target/debug/epistole). Root-package tests should prefer
/// `env!("CARGO_BIN_EXE_epistole")`.
#[must_use]
pub fn epistole_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("epistole")
}

/// A service process started by [`spawn_service`]; killed when dropped.
pub struct ServiceProcess {
    pub child: tokio::process::Child,
    /// `name → address` from the `listening name=addr …` lines it printed.
    pub addrs: std::collections::HashMap<String, SocketAddr>,
}

impl ServiceProcess {
    /// The address the service reported under `name`.
    #[must_use]
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("service reported no {name:?} listener: {:?}", self.addrs))
    }

    /// SIGKILL, and wait for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `epistole <args…>` connected to `store`, and waits until it has
/// printed a `listening …` line naming every listener in `expect`.
pub async fn spawn_service(store: &TestStore, args: &[&str], expect: &[&str]) -> ServiceProcess {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(epistole_bin())
        .args(args)
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_TOKEN", &store.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn epistole");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addrs = std::collections::HashMap::new();
    while !expect.iter().all(|e| addrs.contains_key(*e)) {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("service did not report its listeners in time")
            .expect("read service stdout")
            .expect("service exited before listening");
        if let Some(rest) = line.strip_prefix("listening ") {
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=')
                    && let Ok(a) = v.parse()
                {
                    addrs.insert(k.to_string(), a);
                }
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ServiceProcess { child, addrs }
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The Subject of every message in a user's mailbox, in UID order (empty
/// when the mailbox does not exist).
pub async fn subjects(store: &TestStore, user: u64, mailbox: &str) -> Vec<String> {
    let c = store.client();
    let Ok(mb) = c
        .mailboxes
        .clone()
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: mailbox.into(),
            claim_recent: false,
        })
        .await
    else {
        return Vec::new();
    };
    let mut s = c
        .mailboxes
        .clone()
        .fetch_meta(pb::FetchMetaRequest {
            mailbox_id: mb.into_inner().id,
            with_structure: true,
            ..Default::default()
        })
        .await
        .expect("fetch meta")
        .into_inner();
    let mut out = Vec::new();
    while let Some(b) = s.message().await.expect("meta batch") {
        for m in b.messages {
            let subject = m
                .structure
                .and_then(|s| s.envelope)
                .and_then(|e| e.subject)
                .unwrap_or_default();
            out.push(String::from_utf8_lossy(&subject).into_owned());
        }
    }
    out
}

/// Queue jobs of a kind and state (`Unspecified` = any), up to 10,000.
pub async fn jobs(
    store: &TestStore,
    kind: pb::QueueKind,
    state: pb::JobState,
) -> Vec<pb::JobSummary> {
    store
        .client()
        .queue
        .clone()
        .list_jobs(pb::ListJobsRequest {
            kind: kind as i32,
            state: state as i32,
            limit: 10_000,
            after_id: 0,
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs
}
