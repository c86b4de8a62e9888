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
    #[arg(long, env = "EPISTOLE_STORE_TOKEN", hide_env_values = true)]
    pub token: String,
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
    #[arg(long, env = "EPISTOLE_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    pub auth_failure_limit: u32,
    /// Failed logins per account, from any number of IPs, per
    /// --auth-account-window-secs that start a ban of that account.
    #[arg(
        long,
        env = "EPISTOLE_AUTH_ACCOUNT_FAILURE_LIMIT",
        default_value_t = 30
    )]
    pub auth_account_failure_limit: u32,
    /// Window of the per-account failure count, in seconds.
    #[arg(long, env = "EPISTOLE_AUTH_ACCOUNT_WINDOW_SECS", default_value_t = 900)]
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
        Ok(())
    }

    /// A configuration with defaults for everything but the database and token.
    #[must_use]
    pub fn new(database_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
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
            migrate: true,
        }
    }
}
