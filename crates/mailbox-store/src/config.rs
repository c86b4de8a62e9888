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
    /// Shared secret every client must present as `authorization: Bearer …`.
    #[arg(long, env = "EPISTOLE_STORE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Largest message accepted by Append and Enqueue, in bytes.
    #[arg(long, env = "EPISTOLE_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024 * 1024)]
    pub max_message_size: u64,
    /// Database connections in the pool.
    #[arg(long, env = "EPISTOLE_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Failed logins per client IP per minute before Authenticate answers THROTTLED.
    #[arg(long, env = "EPISTOLE_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    pub auth_failure_limit: u32,
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
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with defaults for everything but the database and token.
    #[must_use]
    pub fn new(database_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
            max_message_size: 64 * 1024 * 1024,
            db_connections: 16,
            auth_failure_limit: 20,
            migrate: true,
        }
    }
}
