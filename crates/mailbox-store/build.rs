//! Builds read the committed query metadata (`.sqlx/`) for sqlx's
//! compile-checked queries and never connect to a database, even when
//! `DATABASE_URL` is set (the tests use it to pick a PostgreSQL server).
//! An explicit `SQLX_OFFLINE` in the environment wins: `scripts/check-sql`
//! sets `SQLX_OFFLINE=false` to check the queries against a real schema.
//!
//! (A `SQLX_OFFLINE` entry in `.cargo/config.toml`'s `[env]` would do the
//! same, but cargo then rebuilds every crate of the workspace whenever it
//! changes; this applies to this crate alone.)

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SQLX_OFFLINE");
    if std::env::var_os("SQLX_OFFLINE").is_none() {
        println!("cargo::rustc-env=SQLX_OFFLINE=true");
    }
}
