//! The store's configuration: every option is a flag and an environment variable.

use std::net::SocketAddr;

/// mailbox-store configuration: every option is a flag and an environment variable.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// gRPC listen address.
    #[arg(long, env = "EPISTOLE_STORE_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "EPISTOLE_STORE_HTTP", default_value = "127.0.0.1:7001")]
    pub http_listen: SocketAddr,
    /// Service token: the secret the protocol services and workers present as
    /// `authorization: Bearer …`. Must not be empty.
    #[arg(
        long,
        env = "EPISTOLE_STORE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// File holding the service token (a mounted secret), used when --token
    /// is not given.
    #[arg(long, env = "EPISTOLE_STORE_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// File holding the admin token, used when --admin-token is not given.
    #[arg(long, env = "EPISTOLE_STORE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// File holding the database password; it replaces any password in
    /// --database-url (so the URL itself holds no secret).
    #[arg(long, env = "EPISTOLE_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<std::path::PathBuf>,
    /// Admin token: required for the administrative RPCs (domains, users,
    /// aliases, filters, DKIM keys, queue inspection; table in `auth.rs`).
    /// Without it those RPCs are refused for everyone. Must differ from --token.
    #[arg(long, env = "EPISTOLE_STORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest message accepted by Append and Enqueue, in bytes.
    #[arg(long, env = "EPISTOLE_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Database connections in the pool.
    #[arg(long, env = "EPISTOLE_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Failed logins per client IP (IPv4 address or IPv6 prefix) per minute
    /// that start a ban (Authenticate then answers THROTTLED).
    #[arg(long, env = "EPISTOLE_AUTH_FAILURE_LIMIT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failure_limit: u32,
    /// Failed logins per account, from any number of IPs, per
    /// --auth-account-window-secs that start a ban of that account.
    #[arg(long, env = "EPISTOLE_AUTH_ACCOUNT_FAILURE_LIMIT", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_account_failure_limit: u32,
    /// Window of the per-account failure count, in seconds.
    #[arg(long, env = "EPISTOLE_AUTH_ACCOUNT_WINDOW_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_account_window_secs: u32,
    /// First ban, in seconds; each further ban in an episode doubles it.
    #[arg(long, env = "EPISTOLE_AUTH_BAN_SECS", default_value_t = 60)]
    pub auth_ban_secs: u32,
    /// Longest ban, in seconds.
    #[arg(long, env = "EPISTOLE_AUTH_BAN_MAX_SECS", default_value_t = 3600)]
    pub auth_ban_max_secs: u32,
    /// Seconds without a failure or a ban after which a client or account
    /// starts afresh (the doubling restarts at --auth-ban-secs).
    #[arg(long, env = "EPISTOLE_AUTH_BAN_RESET_SECS", default_value_t = 3600)]
    pub auth_ban_reset_secs: u32,
    /// IPv6 clients are counted per prefix of this length (an attacker
    /// usually holds a whole /64).
    #[arg(long, env = "EPISTOLE_AUTH_IPV6_PREFIX", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub auth_ipv6_prefix: u8,
    /// Threads that compute argon2 password hashes (each holds ~19 MiB).
    #[arg(long, env = "EPISTOLE_HASH_THREADS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub hash_threads: u16,
    /// Password checks that may wait for a hashing thread; beyond, Authenticate
    /// answers UNAVAILABLE at once.
    #[arg(long, env = "EPISTOLE_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: u32,
    /// Seconds a successful password check is remembered (keyed by a keyed
    /// hash of user, password and stored hash); 0 disables the cache.
    #[arg(long, env = "EPISTOLE_AUTH_CACHE_TTL_SECS", default_value_t = 60)]
    pub auth_cache_ttl_secs: u32,
    /// Mailboxes one user may have; CreateMailbox beyond answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "EPISTOLE_MAX_MAILBOXES_PER_USER", default_value_t = 1000)]
    pub max_mailboxes_per_user: u32,
    /// Address of the client autoconfiguration endpoint (Thunderbird
    /// autoconfig, Outlook autodiscover, the MTA-STS policy file; see
    /// `autoconfig.rs`). Off unless set; needs --mail-host.
    #[arg(long, env = "EPISTOLE_STORE_AUTOCONFIG_LISTEN")]
    pub autoconfig_listen: Option<SocketAddr>,
    /// The host name mail clients and MXs use (`mail.example.org`): what
    /// autoconfig advertises and the MTA-STS policy's `mx:`.
    #[arg(long, env = "EPISTOLE_MAIL_HOST")]
    pub mail_host: Option<String>,
    /// MTA-STS mode served in the policy file (RFC 8461 §3.2).
    #[arg(long, env = "EPISTOLE_MTA_STS_MODE", default_value = "testing",
          value_parser = ["testing", "enforce", "none"])]
    pub mta_sts_mode: String,
    /// Certificate chain (PEM) for TLS on the gRPC listener; needs
    /// --grpc-tls-key. Clients then use https:// URLs and --store-ca.
    #[arg(long, env = "EPISTOLE_STORE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "EPISTOLE_STORE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<std::path::PathBuf>,
    /// CA (PEM) whose client certificates the gRPC listener requires
    /// (mutual TLS between the services and the store; threat model T118).
    /// Needs --grpc-tls-cert. The bearer tokens are still checked.
    #[arg(long, env = "EPISTOLE_STORE_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<std::path::PathBuf>,
    /// Apply migrations on start.
    #[arg(long, env = "EPISTOLE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("max_message_size", &self.max_message_size)
            .field("db_connections", &self.db_connections)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("hash_threads", &self.hash_threads)
            .field("hash_queue", &self.hash_queue)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Refuses configurations that would leave the store open: an empty
    /// service token, an empty admin token, or one token for both roles.
    ///
    /// # Errors
    /// With a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.token.trim().is_empty() {
            return Err("--token (EPISTOLE_STORE_TOKEN) must not be empty".into());
        }
        if let Some(admin) = &self.admin_token {
            if admin.trim().is_empty() {
                return Err("--admin-token (EPISTOLE_STORE_ADMIN_TOKEN) must not be empty; leave it unset to disable administrative RPCs".into());
            }
            if *admin == self.token {
                return Err("--admin-token must differ from --token".into());
            }
        }
        if self.autoconfig_listen.is_some()
            && self
                .mail_host
                .as_deref()
                .is_none_or(|h| h.trim().is_empty())
        {
            return Err("--autoconfig-listen needs --mail-host (EPISTOLE_MAIL_HOST)".into());
        }
        if self.grpc_tls_cert.is_some() != self.grpc_tls_key.is_some() {
            return Err("--grpc-tls-cert and --grpc-tls-key go together".into());
        }
        if self.grpc_client_ca.is_some() && self.grpc_tls_cert.is_none() {
            return Err("--grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key".into());
        }
        Ok(())
    }

    /// Reads the secrets given as files (`--token-file`, `--admin-token-file`)
    /// into the configuration; the first line of each file counts.
    ///
    /// # Errors
    /// An unreadable file.
    pub fn load_secret_files(&mut self) -> Result<(), String> {
        if self.token.is_empty()
            && let Some(path) = &self.token_file
        {
            self.token = first_line(path)?;
        }
        if self.admin_token.is_none()
            && let Some(path) = &self.admin_token_file
        {
            self.admin_token = Some(first_line(path)?);
        }
        Ok(())
    }

    /// TLS for the gRPC listener (`--grpc-tls-cert`, `--grpc-tls-key`,
    /// `--grpc-client-ca`), read at start.
    ///
    /// # Errors
    /// An unreadable file.
    pub fn grpc_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.grpc_tls_cert, &self.grpc_tls_key) else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.grpc_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }

    /// The database password from `--database-password-file`, if given.
    ///
    /// # Errors
    /// An unreadable file.
    pub fn database_password(&self) -> Result<Option<String>, String> {
        self.database_password_file
            .as_deref()
            .map(first_line)
            .transpose()
    }

    /// A configuration with defaults for everything but the database and token.
    #[must_use]
    pub fn new(database_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
            token_file: None,
            admin_token_file: None,
            database_password_file: None,
            admin_token: None,
            max_message_size: 64 * 1024 * 1024,
            db_connections: 16,
            auth_failure_limit: 20,
            auth_account_failure_limit: 30,
            auth_account_window_secs: 900,
            auth_ban_secs: 60,
            auth_ban_max_secs: 3600,
            auth_ban_reset_secs: 3600,
            auth_ipv6_prefix: 64,
            hash_threads: 2,
            hash_queue: 64,
            auth_cache_ttl_secs: 60,
            max_mailboxes_per_user: 1000,
            autoconfig_listen: None,
            mail_host: None,
            mta_sts_mode: "testing".into(),
            grpc_tls_cert: None,
            grpc_tls_key: None,
            grpc_client_ca: None,
            migrate: true,
        }
    }
}

fn first_line(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("read secret file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_when_not_given() {
        let dir = std::env::temp_dir().join(format!("store-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "service-secret\n").expect("write");
        std::fs::write(dir.join("admin"), "admin-secret\nignored\n").expect("write");
        std::fs::write(dir.join("db"), "pg-secret").expect("write");
        let mut c = Config::new("postgres://x@localhost/db", "");
        c.token_file = Some(dir.join("token"));
        c.admin_token_file = Some(dir.join("admin"));
        c.database_password_file = Some(dir.join("db"));
        c.load_secret_files().expect("load");
        assert_eq!(c.token, "service-secret");
        assert_eq!(c.admin_token.as_deref(), Some("admin-secret"));
        assert_eq!(c.database_password().expect("db"), Some("pg-secret".into()));
        assert!(c.validate().is_ok());
        // A flag given directly wins over its file.
        let mut d = Config::new("postgres://x@localhost/db", "direct");
        d.token_file = Some(dir.join("token"));
        d.load_secret_files().expect("load");
        assert_eq!(d.token, "direct");
        // A missing file is an error, not an empty secret.
        let mut e = Config::new("postgres://x@localhost/db", "");
        e.token_file = Some(dir.join("missing"));
        assert!(e.load_secret_files().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
