//! Password checks for every protocol: argon2id, the same work for unknown
//! users, and a per-IP failure limit shared by all replicas.

use std::sync::LazyLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::names;

use super::AccountsSvc;

const MAX_PASSWORD: usize = 1_024;

/// A hash verified for unknown users, so that they cost the same time as a
/// wrong password for a real one.
pub(super) static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"epistole-dummy-password")
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Hashes a password with argon2id on the blocking pool (it is CPU-heavy).
///
/// # Errors
/// On an empty or oversized password.
pub async fn hash_password(password: String) -> Result<String> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(StoreError::invalid("password must be 1 to 1024 bytes"));
    }
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Counts a failed login from `ip` and tells whether the IP is now over the limit.
async fn over_failure_limit(pool: &PgPool, ip: &str, limit: u32) -> Result<bool> {
    let n: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM auth_failures WHERE ip = $1 AND at > now() - interval '1 minute'"#,
        ip
    )
    .fetch_one(pool)
    .await?;
    Ok(n >= i64::from(limit))
}

pub(super) async fn authenticate(
    svc: &AccountsSvc,
    req: Request<pb::AuthenticateRequest>,
) -> Result<Response<pb::AuthenticateResponse>, Status> {
    let req = req.into_inner();
    let pool = svc.pool();
    let ip = req.remote_ip.clone();
    let limit = svc.store.config.auth_failure_limit;
    if !ip.is_empty() && over_failure_limit(pool, &ip, limit).await? {
        metrics::counter!("store_auth_total", "result" => "throttled").increment(1);
        return Ok(Response::new(pb::AuthenticateResponse {
            status: pb::AuthStatus::Throttled as i32,
            retry_after_ms: 60_000,
            ..Default::default()
        }));
    }
    let password = if req.password.len() > MAX_PASSWORD {
        String::new()
    } else {
        req.password
    };
    let user = match names::address(&req.username) {
        Ok((local, domain)) => sqlx::query!(
            "SELECT u.id, u.password_hash, u.disabled FROM users u JOIN domains d ON d.id = u.domain_id \
             WHERE d.name = $1 AND u.local_part = $2",
            &domain,
            &local
        )
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
        .map(|r| (r.id, r.password_hash, r.disabled))
        .map(|(id, hash, disabled)| (id, hash, disabled, format!("{local}@{domain}"))),
        Err(_) => None,
    };
    // Same work whether or not the user exists (RFC 4954 §9, ATTACKS 16).
    let (hash, user) = match user {
        Some((id, hash, disabled, address)) => (hash, (!disabled).then_some((id, address))),
        None => (DUMMY_HASH.clone(), None),
    };
    let verified = !password.is_empty() && verify_password(password, hash).await;
    match (verified, user) {
        (true, Some((id, address))) => {
            metrics::counter!("store_auth_total", "result" => "ok").increment(1);
            Ok(Response::new(pb::AuthenticateResponse {
                status: pb::AuthStatus::Ok as i32,
                user_id: id as u64,
                address,
                retry_after_ms: 0,
            }))
        }
        _ => {
            metrics::counter!("store_auth_total", "result" => "failed").increment(1);
            if !ip.is_empty() {
                sqlx::query!("INSERT INTO auth_failures (ip) VALUES ($1)", &ip)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?;
            }
            tracing::info!(ip = %ip, protocol = req.protocol, sid = %req.session_id, "authentication failed");
            Ok(Response::new(pb::AuthenticateResponse {
                status: pb::AuthStatus::Failed as i32,
                ..Default::default()
            }))
        }
    }
}
