//! # mailctl
//!
//! The administrator's command line: domains, users (passwords read from a
//! prompt or standard input, never from argv), aliases, queue inspection and
//! retry, message traces, and database migrations. Everything but `migrate` goes through the
//! store's gRPC API with the store's **admin token**
//! (`--store-admin-token`, `EPISTOLE_STORE_ADMIN_TOKEN`); when only the
//! service token (`--store-token`) is given it is used, and the store then
//! refuses the administrative commands (PERMISSION_DENIED).

pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod quota;
pub mod search;
pub mod trace;

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mailstore_api::{StoreClient, pb};

/// mailctl: administer an Epistole installation.
#[derive(Parser, Debug)]
#[command(name = "mailctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreAccess,
    #[command(subcommand)]
    pub command: Command,
}

/// How mailctl reaches the store: the services' store flags
/// (`--store-url`, `--store-token`, `--store-token-file`) plus the admin
/// token, which administration needs.
#[derive(clap::Args)]
pub struct StoreAccess {
    #[command(flatten)]
    pub store: service_kit::StoreArgs,
    /// The store's admin token (needed for everything but reading).
    #[arg(
        long = "store-admin-token",
        env = "EPISTOLE_STORE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAccess")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoreAccess {
    /// The admin token if set (and not empty), else the service token.
    ///
    /// # Errors
    /// When neither is set, or the token is not a valid header value.
    pub fn client(&self) -> anyhow::Result<StoreClient> {
        match self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            Some(admin) => Ok(mailstore_api::connect_tls(
                &self.store.url,
                admin,
                self.store.tls()?.as_ref(),
            )?),
            None => self
                .store
                .client()
                .context("set EPISTOLE_STORE_ADMIN_TOKEN (or --store-admin-token)"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mail domains we accept mail for.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Mailbox users.
    #[command(subcommand)]
    User(UserCmd),
    /// Aliases ("sales@example.org → alice@example.org"; "@example.org" is the catch-all).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// The inbound and outbound mail queues.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Per-user filter rules applied at delivery (header contains → folder).
    #[command(subcommand)]
    Filter(FilterCmd),
    /// DKIM signing keys: prints the DNS TXT record to publish.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// Quotas (RFC 9208 STORAGE and MESSAGE): per user, and a domain default.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// The search index: `mailctl search backfill` indexes mail stored
    /// before it existed.
    #[command(subcommand)]
    Search(search::SearchCmd),
    /// DMARC aggregate reports received about our domains (`mailctl dmarc report`).
    #[command(subcommand)]
    Dmarc(dmarc::DmarcCmd),
    /// The DNS records to publish for a domain (`mailctl dns example.org`),
    /// or a check of what is published (`mailctl dns check example.org`).
    Dns(dns::DnsArgs),
    /// Where a message went: every hop with its facts, by Message-ID or
    /// queue id (`mailctl trace '<abc@example.org>'`, `mailctl trace 42`).
    Trace(trace::TraceArgs),
    /// Apply database migrations directly (the store also does this on start).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    Add {
        name: String,
    },
    List,
    Rm {
        name: String,
        /// Also delete the domain's users, their mail, and its aliases.
        #[arg(long)]
        force: bool,
    },
    /// Inbound authentication policy for mail to this domain: what smtp-in
    /// does when a message fails DMARC of a sender domain publishing
    /// p=reject (enforce: 550 5.7.1; quarantine: Junk; report: mark only;
    /// default: smtp-in's --dmarc-reject-action).
    Policy {
        name: String,
        #[arg(
            long,
            value_parser = ["enforce", "quarantine", "report", "default"]
        )]
        dmarc_reject_action: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user; the password is prompted for (or read from stdin).
    Add {
        address: String,
        /// The user's own storage quota in bytes (0 = none: the domain
        /// default, see `mailctl quota`).
        #[arg(long, default_value_t = 0)]
        quota: u64,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    List {
        domain: Option<String>,
    },
    Rm {
        address: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    Add {
        source: String,
        target: String,
    },
    List {
        domain: Option<String>,
    },
    Rm {
        source: String,
        target: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FilterCmd {
    /// File messages whose HEADER contains TEXT (case-insensitive) into FOLDER.
    Add {
        address: String,
        header: String,
        contains: String,
        folder: String,
        /// Rules apply in ascending position; the first match wins.
        #[arg(long, default_value_t = 0)]
        position: i32,
    },
    List {
        address: String,
    },
    Rm {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DkimCmd {
    /// Create the domain's first signing key (active at once).
    Generate {
        domain: String,
        /// rsa (rsa-sha256, 2048 bits; the default) or ed25519 (RFC 8463).
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Selector (default sYYYYMMDD).
        #[arg(long)]
        selector: Option<String>,
    },
    /// The domain's keys and the TXT records to publish.
    Show { domain: String },
    /// A new key becomes the signing key; the old one stays listed (keep its
    /// DNS record until mail signed with it has been delivered).
    Rotate {
        domain: String,
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        #[arg(long)]
        selector: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// List jobs.
    List {
        /// inbound | outbound
        #[arg(long)]
        kind: Option<String>,
        /// ready | done | quarantined
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A job with its recipients and event log.
    Show { id: u64 },
    /// Make a deferred or quarantined job ready now.
    Retry { id: u64 },
    /// Delete a job.
    Rm { id: u64 },
}

async fn dkim_command(
    c: &StoreClient,
    cmd: DkimCmd,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let list = |domain: &str| {
        let mut a = c.accounts.clone();
        let domain = domain.to_string();
        async move {
            a.list_dkim_keys(pb::ListDkimKeysRequest {
                domain,
                include_private: false,
                active_only: false,
            })
            .await
            .map(|r| r.into_inner().keys)
            .map_err(status)
        }
    };
    match cmd {
        DkimCmd::Show { domain } => {
            let keys = list(&domain).await?;
            if keys.is_empty() {
                writeln!(
                    out,
                    "no DKIM key for {domain}: mailctl dkim generate {domain}"
                )?;
            }
            for k in keys {
                let state = if k.active {
                    "active (signing)"
                } else {
                    "inactive"
                };
                writeln!(out, "{} {} {state}", k.selector, k.algorithm)?;
                writeln!(
                    out,
                    "{}",
                    dkim::zone_line(&k.selector, &k.domain, &k.dns_txt)
                )?;
            }
        }
        DkimCmd::Generate {
            domain,
            algorithm,
            selector,
        }
        | DkimCmd::Rotate {
            domain,
            algorithm,
            selector,
        } => {
            let existing = list(&domain).await?;
            let rotating = !existing.is_empty();
            let selector = match selector {
                Some(s) => s,
                None => (0..100)
                    .map(dkim::default_selector)
                    .find(|s| !existing.iter().any(|k| &k.selector == s))
                    .context("no free selector")?,
            };
            let key = dkim::generate(&algorithm)?;
            let stored = c
                .accounts
                .clone()
                .put_dkim_key(pb::PutDkimKeyRequest {
                    domain: domain.clone(),
                    selector,
                    algorithm: key.algorithm.to_string(),
                    private_key: key.private_pem,
                    public_key: key.public_b64,
                    activate: true,
                })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(
                out,
                "DKIM key {} ({}) for {} is now the signing key.",
                stored.selector, stored.algorithm, stored.domain
            )?;
            writeln!(out, "Publish this DNS record:")?;
            writeln!(
                out,
                "{}",
                dkim::zone_line(&stored.selector, &stored.domain, &stored.dns_txt)
            )?;
            if rotating {
                writeln!(
                    out,
                    "Keep the records of the older keys until mail signed with them has been delivered."
                )?;
            }
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("read password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("passwords differ");
        }
        a
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn kind_name(k: i32) -> &'static str {
    match pb::QueueKind::try_from(k) {
        Ok(pb::QueueKind::Inbound) => "inbound",
        Ok(pb::QueueKind::Outbound) => "outbound",
        _ => "?",
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Ready) => "ready",
        Ok(pb::JobState::Done) => "done",
        Ok(pb::JobState::Quarantined) => "quarantined",
        _ => "?",
    }
}

fn status(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::PermissionDenied {
        return anyhow::anyhow!(
            "{}: {} (set EPISTOLE_STORE_ADMIN_TOKEN or --store-admin-token to the store's admin token)",
            e.code(),
            e.message()
        );
    }
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

/// Runs one command, writing human-readable output to `out`.
///
/// # Errors
/// Store errors, bad arguments, I/O.
pub async fn run(cli: Cli, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    if let Command::Migrate { database_url } = &cli.command {
        let pool = mailbox_store::pool(database_url, 2)?;
        mailbox_store::migrate(&pool).await?;
        writeln!(out, "migrations applied")?;
        return Ok(());
    }
    let c: StoreClient = cli.store.client()?;
    match cli.command {
        Command::Quota(cmd) => quota::run(&c, cmd, out, status).await?,
        Command::Search(cmd) => search::run(&c, cmd, out, status).await?,
        Command::Domain(DomainCmd::Add { name }) => {
            let d = c
                .accounts
                .clone()
                .create_domain(pb::CreateDomainRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(out, "domain {} added", d.name)?;
        }
        Command::Domain(DomainCmd::List) => {
            let r = c
                .accounts
                .clone()
                .list_domains(pb::ListDomainsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for d in r.domains {
                if d.dmarc_reject_action.is_empty() {
                    writeln!(out, "{}", d.name)?;
                } else {
                    writeln!(
                        out,
                        "{} dmarc-reject-action={}",
                        d.name, d.dmarc_reject_action
                    )?;
                }
            }
        }
        Command::Domain(DomainCmd::Policy {
            name,
            dmarc_reject_action,
        }) => {
            let action = if dmarc_reject_action == "default" {
                String::new()
            } else {
                dmarc_reject_action
            };
            let d = c
                .accounts
                .clone()
                .set_domain_policy(pb::SetDomainPolicyRequest {
                    name,
                    dmarc_reject_action: action,
                })
                .await
                .map_err(status)?
                .into_inner();
            let shown = if d.dmarc_reject_action.is_empty() {
                "default"
            } else {
                d.dmarc_reject_action.as_str()
            };
            writeln!(out, "domain {} dmarc-reject-action={shown}", d.name)?;
        }
        Command::Domain(DomainCmd::Rm { name, force }) => {
            c.accounts
                .clone()
                .delete_domain(pb::DeleteDomainRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(status)?;
            writeln!(out, "domain {name} removed")?;
        }
        Command::User(UserCmd::Add {
            address,
            quota,
            password_stdin,
        }) => {
            let password = read_password(password_stdin)?;
            let u = c
                .accounts
                .clone()
                .create_user(pb::CreateUserRequest {
                    address,
                    password,
                    quota_bytes: quota,
                })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(out, "user {} added (id {})", u.address, u.id)?;
        }
        Command::User(UserCmd::Passwd {
            address,
            password_stdin,
        }) => {
            let password = read_password(password_stdin)?;
            c.accounts
                .clone()
                .set_password(pb::SetPasswordRequest {
                    address: address.clone(),
                    password,
                })
                .await
                .map_err(status)?;
            writeln!(out, "password of {address} changed")?;
        }
        Command::User(UserCmd::List { domain }) => {
            let r = c
                .accounts
                .clone()
                .list_users(pb::ListUsersRequest {
                    domain: domain.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            for u in r.users {
                let quota = if u.quota_bytes == 0 {
                    "default".to_string()
                } else {
                    u.quota_bytes.to_string()
                };
                writeln!(
                    out,
                    "{}\tused={}\tquota={quota}{}",
                    u.address,
                    u.used_bytes,
                    if u.disabled { "\tdisabled" } else { "" }
                )?;
            }
        }
        Command::User(UserCmd::Rm { address }) => {
            c.accounts
                .clone()
                .delete_user(pb::DeleteUserRequest {
                    address: address.clone(),
                })
                .await
                .map_err(status)?;
            writeln!(out, "user {address} removed")?;
        }
        Command::Alias(AliasCmd::Add { source, target }) => {
            let a = c
                .accounts
                .clone()
                .create_alias(pb::CreateAliasRequest { source, target })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(out, "alias {} -> {} added", a.source, a.target)?;
        }
        Command::Alias(AliasCmd::List { domain }) => {
            let r = c
                .accounts
                .clone()
                .list_aliases(pb::ListAliasesRequest {
                    domain: domain.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            for a in r.aliases {
                writeln!(out, "{}\t{}", a.source, a.target)?;
            }
        }
        Command::Alias(AliasCmd::Rm { source, target }) => {
            let r = c
                .accounts
                .clone()
                .delete_alias(pb::DeleteAliasRequest {
                    source,
                    target: target.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(out, "{} alias(es) removed", r.deleted)?;
        }
        Command::Queue(QueueCmd::List { kind, state, limit }) => {
            let kind = match kind.as_deref() {
                None => 0,
                Some("inbound") => pb::QueueKind::Inbound as i32,
                Some("outbound") => pb::QueueKind::Outbound as i32,
                Some(k) => bail!("unknown queue kind {k:?} (inbound, outbound)"),
            };
            let state = match state.as_deref() {
                None => 0,
                Some("ready") => pb::JobState::Ready as i32,
                Some("done") => pb::JobState::Done as i32,
                Some("quarantined") => pb::JobState::Quarantined as i32,
                Some(s) => bail!("unknown state {s:?} (ready, done, quarantined)"),
            };
            let r = c
                .queue
                .clone()
                .list_jobs(pb::ListJobsRequest {
                    kind,
                    state,
                    limit,
                    after_id: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(
                out,
                "ID\tKIND\tSTATE\tATTEMPTS\tSIZE\tRCPTS\tFROM\tNEXT\tLAST ERROR"
            )?;
            for j in r.jobs {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t<{}>\t{}\t{}",
                    j.id,
                    kind_name(j.kind),
                    state_name(j.state),
                    j.attempts,
                    j.size,
                    j.recipients,
                    j.mail_from,
                    when(j.next_attempt_at.as_ref()),
                    j.last_error
                )?;
            }
        }
        Command::Queue(QueueCmd::Show { id }) => {
            let d = c
                .queue
                .clone()
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .map_err(status)?
                .into_inner();
            let s = d.summary.unwrap_or_default();
            let j = d.job.unwrap_or_default();
            writeln!(
                out,
                "job {} ({}, {})",
                s.id,
                kind_name(s.kind),
                state_name(s.state)
            )?;
            writeln!(
                out,
                "from: <{}>  size: {}  attempts: {}",
                j.mail_from, j.size, j.attempts
            )?;
            writeln!(
                out,
                "received: {} from {} helo={} sid={}",
                when(j.created_at.as_ref()),
                j.client_ip,
                j.helo,
                j.session_id
            )?;
            if !s.last_error.is_empty() {
                writeln!(out, "last error: {}", s.last_error)?;
            }
            for r in j.recipients {
                let addr = r.recipient.map(|x| x.address).unwrap_or_default();
                let st = pb::RecipientState::try_from(r.state)
                    .map_or("?".into(), |x| format!("{x:?}").to_lowercase());
                writeln!(out, "  rcpt {} <{}> {} {}", r.index, addr, st, r.detail)?;
            }
            writeln!(out, "events:")?;
            for e in d.events {
                let k = pb::EventKind::try_from(e.kind)
                    .map_or("?".into(), |x| format!("{x:?}").to_lowercase());
                writeln!(
                    out,
                    "  {} {} {} {} {}",
                    when(e.at.as_ref()),
                    k,
                    e.source,
                    e.recipient,
                    e.detail
                )?;
            }
        }
        Command::Queue(QueueCmd::Retry { id }) => {
            c.queue
                .clone()
                .retry_job(pb::RetryJobRequest { job_id: id })
                .await
                .map_err(status)?;
            writeln!(out, "job {id} will be retried now")?;
        }
        Command::Queue(QueueCmd::Rm { id }) => {
            c.queue
                .clone()
                .delete_job(pb::DeleteJobRequest { job_id: id })
                .await
                .map_err(status)?;
            writeln!(out, "job {id} removed")?;
        }
        Command::Dkim(cmd) => dkim_command(&c, cmd, out).await?,
        Command::Dns(args) => dns::command(&c, args, out).await?,
        Command::Trace(args) => trace::command(&c, args, out).await?,
        Command::Dmarc(cmd) => dmarc::command(&c, cmd, out).await?,
        Command::Filter(FilterCmd::Add {
            address,
            header,
            contains,
            folder,
            position,
        }) => {
            let f = c
                .accounts
                .clone()
                .add_filter(pb::AddFilterRequest {
                    address,
                    position,
                    header,
                    contains,
                    folder,
                })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(
                out,
                "filter {} added: {} contains {:?} -> {}",
                f.id, f.header, f.contains, f.folder
            )?;
        }
        Command::Filter(FilterCmd::List { address }) => {
            let r = c
                .accounts
                .clone()
                .list_filters(pb::ListFiltersRequest {
                    key: Some(pb::list_filters_request::Key::Address(address)),
                })
                .await
                .map_err(status)?
                .into_inner();
            for f in r.filters {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    f.id, f.position, f.header, f.contains, f.folder
                )?;
            }
        }
        Command::Filter(FilterCmd::Rm { id }) => {
            c.accounts
                .clone()
                .delete_filter(pb::DeleteFilterRequest { id })
                .await
                .map_err(status)?;
            writeln!(out, "filter {id} removed")?;
        }
        Command::Migrate { .. } => unreachable!("handled above"),
    }
    out.flush()?;
    Ok(())
}
