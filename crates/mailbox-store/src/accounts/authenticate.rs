//! Password checks for every protocol: argon2id on the bounded hashing pool
//! ([`crate::hashing`]), the same work for unknown users, and failed-login
//! throttling shared by all replicas.
//!
//! ## Throttling rule
//!
//! Failures are counted per **client** (the IPv4 address, or the IPv6 prefix
//! of `--auth-ipv6-prefix` bits, default /64) and per **account** (the
//! normalised `local@domain`, whether or not it exists, so a ban says
//! nothing about existence). For each of the two:
//!
//! - failures are counted in a window that starts at the first failure:
//!   60 s for a client, `--auth-account-window-secs` (900) for an account;
//! - the `--auth-failure-limit`-th (20) failure of a client, or the
//!   `--auth-account-failure-limit`-th (30) failure of an account, in its
//!   window starts a **ban**: `--auth-ban-secs` (60) for the first ban,
//!   doubling with each further ban, at most `--auth-ban-max-secs` (3600);
//! - after `--auth-ban-reset-secs` (3600) with neither a failure nor a ban,
//!   the client or account starts afresh (the next ban is 60 s again);
//! - while either the client or the account is banned, Authenticate answers
//!   THROTTLED with `retry_after_ms` before looking at the password, and the
//!   attempt is not counted.
//!
//! Recording a failure is one statement (`auth_fail()`, migration 0005) for
//! both rows: the row lock makes check-and-record atomic, so concurrent
//! failures are counted exactly and exactly one of them starts a ban. The
//! ban check before hashing is a read; attempts already admitted when a ban
//! starts still get their answer (at most the hashing queue's length).
//!
//! Consequences, accepted: a banned client does not lock out anyone else;
//! an account under distributed attack is banned for everyone, so its owner
//! gets THROTTLED from a new IP with the right password until the ban ends
//! (the alternative is unlimited guessing on one account). A successful
//! login resets nothing, so an attacker who knows one password cannot use
//! it to clear their counter.

use std::sync::LazyLock;

use argon2::{Argon2, PasswordHasher};
use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{Result, StoreError};
use crate::names;

use super::AccountsSvc;

const MAX_PASSWORD: usize = 1_024;
/// The client window is fixed: `--auth-failure-limit` means "per minute".
const IP_WINDOW_SECS: i32 = 60;

/// A hash verified for unknown users, so that they cost the same time as a
/// wrong password for a real one.
pub(super) static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"epistole-dummy-password")
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Hashes a password with argon2id on the hashing pool.
///
/// # Errors
/// On an empty or oversized password; Unavailable when the pool is full.
pub async fn hash_password(pool: &crate::hashing::HashPool, password: String) -> Result<String> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(StoreError::invalid("password must be 1 to 1024 bytes"));
    }
    pool.hash(password).await
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Milliseconds until the later of the client's and the account's bans
/// ends; 0 when neither is banned.
async fn banned_for(pool: &PgPool, ip: Option<&str>, account: Option<&str>) -> Result<u64> {
    let left: Option<f64> = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM max(banned_until) - now())::float8 AS "left"
           FROM auth_throttle
           WHERE ((kind = 'ip' AND key = $1) OR (kind = 'account' AND key = $2))
             AND banned_until > now()"#,
        ip,
        account
    )
    .fetch_one(pool)
    .await?;
    Ok(left.map_or(0, |s| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (s.max(0.0) * 1000.0).ceil() as u64;
        ms.max(1)
    }))
}

/// Records one failure for the client and the account in one statement.
async fn record_failure(
    pool: &PgPool,
    c: &Config,
    ip: Option<&str>,
    account: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        r#"SELECT auth_fail('ip', $1, $3, $4, $7, $8, $9) > now() AS "ip_banned",
                  auth_fail('account', $2, $5, $6, $7, $8, $9) > now() AS "account_banned""#,
        ip,
        account,
        int(c.auth_failure_limit.max(1)),
        IP_WINDOW_SECS,
        int(c.auth_account_failure_limit.max(1)),
        int(c.auth_account_window_secs.max(1)),
        int(c.auth_ban_secs),
        int(c.auth_ban_max_secs),
        int(c.auth_ban_reset_secs)
    )
    .fetch_one(pool)
    .await?;
    Ok(())
}

fn answer(status: pb::AuthStatus, retry_after_ms: u64) -> Response<pb::AuthenticateResponse> {
    let result = match status {
        pb::AuthStatus::Throttled => "throttled",
        pb::AuthStatus::Unavailable => "unavailable",
        _ => "failed",
    };
    metrics::counter!("store_auth_total", "result" => result).increment(1);
    Response::new(pb::AuthenticateResponse {
        status: status as i32,
        retry_after_ms,
        ..Default::default()
    })
}

pub(super) async fn authenticate(
    svc: &AccountsSvc,
    req: Request<pb::AuthenticateRequest>,
) -> Result<Response<pb::AuthenticateResponse>, Status> {
    let req = req.into_inner();
    let store = &svc.store;
    let pool = svc.pool();
    let config = &store.config;
    // An address that is not an IP (or none: an internal caller) is not
    // counted per client; the account is still counted.
    let ip = names::ip_key(&req.remote_ip, config.auth_ipv6_prefix);
    let parsed = names::address(&req.username).ok();
    let account = parsed.as_ref().map(|(l, d)| format!("{l}@{d}"));
    let wait = banned_for(pool, ip.as_deref(), account.as_deref()).await?;
    if wait > 0 {
        return Ok(answer(pb::AuthStatus::Throttled, wait));
    }
    let password = if req.password.len() > MAX_PASSWORD {
        String::new()
    } else {
        req.password
    };
    let user = match &parsed {
        Some((local, domain)) => sqlx::query!(
            "SELECT u.id, u.password_hash, u.disabled FROM users u JOIN domains d ON d.id = u.domain_id \
             WHERE d.name = $1 AND u.local_part = $2",
            domain,
            local
        )
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
        .map(|r| (r.id, r.password_hash, r.disabled)),
        None => None,
    };
    // Same work whether or not the user exists (RFC 4954 §9, threat model T16).
    let (hash, user) = match user {
        Some((id, hash, disabled)) => (hash, (!disabled).then_some(id)),
        None => (DUMMY_HASH.clone(), None),
    };
    let address = account.clone().unwrap_or_default();
    let verified = match user {
        _ if password.is_empty() => false,
        Some(id) if store.auth_cache.hit(id, &address, &password, &hash) => {
            metrics::counter!("store_auth_cache_hits_total").increment(1);
            true
        }
        _ => match store.hasher.verify(password.clone(), hash.clone()).await {
            Ok(v) => v,
            Err(crate::hashing::Busy) => {
                // Counted (store_hash_queue_full_total), logged at debug only: a
                // flood must not become a log flood.
                tracing::debug!(sid = %req.session_id, "password hashing queue full");
                return Ok(answer(pb::AuthStatus::Unavailable, 1_000));
            }
        },
    };
    match (verified, user) {
        (true, Some(id)) => {
            store.auth_cache.insert(id, &address, &password, &hash);
            metrics::counter!("store_auth_total", "result" => "ok").increment(1);
            Ok(Response::new(pb::AuthenticateResponse {
                status: pb::AuthStatus::Ok as i32,
                user_id: id as u64,
                address,
                retry_after_ms: 0,
            }))
        }
        _ => {
            record_failure(pool, config, ip.as_deref(), account.as_deref()).await?;
            tracing::info!(ip = %req.remote_ip, protocol = req.protocol, sid = %req.session_id, "authentication failed");
            Ok(answer(pb::AuthStatus::Failed, 0))
        }
    }
}
