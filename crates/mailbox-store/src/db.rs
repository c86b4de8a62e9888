//! The database side of a store process: the connection pool, the embedded
//! migrations, the shared [`Store`] state every service holds, and the
//! SQLSTATE codes the services react to.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::Config;
use crate::notify;

/// Embedded migrations (`crates/mailbox-store/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Shared state of one store process.
pub struct Store {
    pub pool: PgPool,
    pub config: Config,
    pub hub: notify::Hub,
}

/// Connects a pool to the database.
///
/// # Errors
/// When the URL is malformed (connections are made lazily).
pub fn pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url.parse().context("parse database URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts))
}

/// Applies the embedded migrations (also used by `mailctl migrate` via the store).
///
/// # Errors
/// When the database is unreachable or a migration fails.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("apply migrations")?;
    Ok(())
}
