//! The database side of a store process: the connection pool, the embedded
//! migrations, the shared [`Store`] state every service holds, and the
//! SQLSTATE codes the services react to.
//!
//! Queries: every statement of the crate is a sqlx macro (`query!`,
//! `query_as!`, `query_scalar!`), checked against the schema at compile time
//! from the metadata in `crates/mailbox-store/.sqlx` (see `build.rs`), and
//! re-checked against a migrated PostgreSQL by `scripts/check-sql` in CI.
//! There are no queries built at run time; a new one would have to be listed
//! here and exercised by a test, since nothing checks it before it runs.
//! After adding or changing a query, run `scripts/check-sql --update` (or
//! `cargo sqlx prepare` in this crate's directory with `DATABASE_URL` set)
//! and commit the changed `.sqlx` files.
//!
//! Transactions: services use `pool.begin()` / `commit()` directly. There is
//! no generic retry on serialization failure (the store runs at READ
//! COMMITTED and takes row locks instead, see `mailboxes`); the two inserts
//! that can lose a race with a concurrent one (Append against blob garbage
//! collection, Enqueue against the same idempotency key) retry themselves on
//! [`FOREIGN_KEY_VIOLATION`] / [`UNIQUE_VIOLATION`].

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::Config;
use crate::error::sqlstate;
use crate::hashing::{AuthCache, HashPool};
use crate::notify;

/// Embedded migrations (`crates/mailbox-store/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Shared state of one store process.
pub struct Store {
    pub pool: PgPool,
    pub config: Config,
    pub hub: notify::Hub,
    /// The bounded argon2 pool every password check and hash goes through.
    pub hasher: HashPool,
    /// Recently verified logins.
    pub auth_cache: AuthCache,
}

/// Connects a pool to the database.
///
/// # Errors
/// When the URL is malformed (connections are made lazily).
pub fn pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    pool_with_password(url, max, None)
}

/// Like [`pool`], with the password given apart from the URL (from a
/// mounted secret file).
///
/// # Errors
/// On a malformed URL.
pub fn pool_with_password(url: &str, max: u32, password: Option<String>) -> anyhow::Result<PgPool> {
    let mut opts: PgConnectOptions = url.parse().context("parse database URL")?;
    if let Some(password) = password {
        opts = opts.password(&password);
    }
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

/// SQLSTATE `unique_violation`.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE `foreign_key_violation`.
pub(crate) const FOREIGN_KEY_VIOLATION: &str = "23503";

/// Whether a database error carries SQLSTATE `code`.
pub(crate) fn is_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    sqlstate(err).as_deref() == Some(code)
}
