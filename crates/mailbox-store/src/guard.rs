//! Guard service (`proto/mailstore/v1/guard.proto`): rate-limit counters and
//! marks shared by every replica of every protocol service (threat model:
//! limits behind a load balancer must hold across replicas).
//!
//! - **Counters** are fixed windows aligned to the epoch, by the database's
//!   clock: the window of a hit is `floor(now / window_secs) * window_secs`.
//!   A hit is one `INSERT … ON CONFLICT DO UPDATE … WHERE used + cost <=
//!   limit`: PostgreSQL locks the row and re-checks the condition on its
//!   latest version, so two replicas racing cannot both take the last slot.
//!   A refused hit records nothing; a second statement reads the count for
//!   the answer.
//! - **Marks** are (scope, key) remembered until an expiry; setting again
//!   keeps the later expiry; `ttl_secs = 0` forgets the mark.
//! - **Keys**: a key that parses as an IP address is normalised by
//!   [`names::ip_key`] (IPv4-mapped → IPv4, IPv6 → its /64); any other key
//!   (an account) is lower-cased. Scope: 1–64 bytes; key: 1–320 bytes
//!   (RFC 5321 §4.5.3.1: 64 + 1 + 255); otherwise INVALID_ARGUMENT.
//! - **Open connections** per client address are shared by replicas as
//!   reports (`ShareConnections`): each replica replaces its own rows
//!   every few seconds and reads the others' sums; rows of a replica that
//!   stopped reporting expire. A connection limit is then eventually
//!   consistent across replicas (one report interval late), without a
//!   store round trip per connection.
//! - Expired rows are deleted by the janitor.

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::names;

pub const MAX_SCOPE: usize = 64;
pub const MAX_KEY: usize = 320;
/// Longest window and mark: 31 days.
pub const MAX_SECS: u32 = 31 * 24 * 3600;

pub struct GuardSvc {
    store: Arc<Store>,
}

impl GuardSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

/// Checks the scope and normalises the key.
fn scope_key(scope: &str, key: &str) -> Result<(String, String)> {
    if scope.is_empty() || scope.len() > MAX_SCOPE || scope.chars().any(char::is_control) {
        return Err(StoreError::invalid("scope must be 1 to 64 bytes"));
    }
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(StoreError::invalid("key must be 1 to 320 bytes"));
    }
    let key = names::ip_key(key, 64).unwrap_or_else(|| key.to_lowercase());
    Ok((scope.to_string(), key))
}

fn millis(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        // Rounded up: a caller that waits this long is in the next window.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (secs * 1000.0).ceil() as u64;
        ms
    } else {
        0
    }
}

fn clamp_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

async fn hit(pool: &PgPool, req: pb::HitRequest) -> Result<pb::HitResponse> {
    let (scope, key) = scope_key(&req.scope, &req.key)?;
    if req.window_secs == 0 || req.window_secs > MAX_SECS {
        return Err(StoreError::invalid("window_secs must be 1 to 31 days"));
    }
    let window = i32::try_from(req.window_secs).unwrap_or(i32::MAX);
    let (cost, limit) = (i64::from(req.cost), i64::from(req.limit));
    if cost > 0 {
        let row = sqlx::query!(
            r#"WITH w AS (SELECT (floor(extract(epoch FROM now()) / $3::int4) * $3::int4)::int8 AS start)
               INSERT INTO guard_counters AS c (scope, key, window_secs, window_start, used, expires_at)
               SELECT $1::text, $2::text, $3::int4, w.start, $4::int8, to_timestamp((w.start + $3::int4)::float8)
               FROM w WHERE $4::int8 <= $5::int8
               ON CONFLICT (scope, key, window_secs, window_start)
               DO UPDATE SET used = c.used + EXCLUDED.used WHERE c.used + EXCLUDED.used <= $5::int8
               RETURNING c.used"#,
            scope,
            key,
            window,
            cost,
            limit
        )
        .fetch_optional(pool)
        .await?;
        if let Some(r) = row {
            return Ok(pb::HitResponse {
                allowed: true,
                used: clamp_u32(r.used),
                retry_after_ms: 0,
            });
        }
    }
    // A read: cost 0, or the hit was refused.
    let r = sqlx::query!(
        r#"WITH w AS (SELECT (floor(extract(epoch FROM now()) / $3::int4) * $3::int4)::int8 AS start)
           SELECT COALESCE((SELECT used FROM guard_counters c, w
                             WHERE c.scope = $1::text AND c.key = $2::text AND c.window_secs = $3::int4
                               AND c.window_start = w.start), 0)::int8 AS "used!",
                  (SELECT (w.start + $3::int4)::float8 - extract(epoch FROM now())::float8 FROM w) AS "left!""#,
        scope,
        key,
        window
    )
    .fetch_one(pool)
    .await?;
    let allowed = r.used + cost <= limit;
    Ok(pb::HitResponse {
        allowed,
        used: clamp_u32(r.used),
        retry_after_ms: if allowed { 0 } else { millis(r.left) },
    })
}

async fn set_mark(pool: &PgPool, req: pb::SetMarkRequest) -> Result<()> {
    let (scope, key) = scope_key(&req.scope, &req.key)?;
    if req.ttl_secs > MAX_SECS {
        return Err(StoreError::invalid("ttl_secs must be at most 31 days"));
    }
    if req.ttl_secs == 0 {
        sqlx::query!(
            "DELETE FROM guard_marks WHERE scope = $1 AND key = $2",
            scope,
            key
        )
        .execute(pool)
        .await?;
        return Ok(());
    }
    let ttl = i32::try_from(req.ttl_secs).unwrap_or(i32::MAX);
    sqlx::query!(
        "INSERT INTO guard_marks AS m (scope, key, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (scope, key) DO UPDATE SET expires_at = GREATEST( \
             CASE WHEN m.expires_at > now() THEN m.expires_at ELSE EXCLUDED.expires_at END, \
             EXCLUDED.expires_at)",
        scope,
        key,
        f64::from(ttl)
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn check_mark(pool: &PgPool, req: pb::CheckMarkRequest) -> Result<pb::CheckMarkResponse> {
    let (scope, key) = scope_key(&req.scope, &req.key)?;
    let left: Option<f64> = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM expires_at - now())::float8 AS "left!"
           FROM guard_marks WHERE scope = $1 AND key = $2 AND expires_at > now()"#,
        scope,
        key
    )
    .fetch_optional(pool)
    .await?;
    Ok(match left {
        Some(s) => pb::CheckMarkResponse {
            marked: true,
            remaining_ms: millis(s).max(1),
        },
        None => pb::CheckMarkResponse::default(),
    })
}

/// Most addresses in one connection report, and in its answer.
pub const MAX_SHARED: usize = 10_000;

async fn share_connections(
    pool: &PgPool,
    req: pb::ShareConnectionsRequest,
) -> Result<pb::ShareConnectionsResponse> {
    let bad = |s: &str| s.is_empty() || s.len() > MAX_SCOPE || s.chars().any(char::is_control);
    if bad(&req.scope) || bad(&req.replica) {
        return Err(StoreError::invalid(
            "scope and replica must be 1 to 64 bytes",
        ));
    }
    if req.ttl_secs == 0 || req.ttl_secs > 3600 {
        return Err(StoreError::invalid("ttl_secs must be 1 s to 1 hour"));
    }
    if req.counts.len() > MAX_SHARED {
        return Err(StoreError::invalid("at most 10,000 addresses per report"));
    }
    let mut keys = Vec::with_capacity(req.counts.len());
    let mut counts = Vec::with_capacity(req.counts.len());
    for c in req.counts.iter().filter(|c| c.count > 0) {
        if c.key.is_empty() || c.key.len() > MAX_KEY || c.key.chars().any(char::is_control) {
            return Err(StoreError::invalid("key must be 1 to 320 bytes"));
        }
        keys.push(c.key.clone());
        counts.push(i32::try_from(c.count).unwrap_or(i32::MAX));
    }
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "DELETE FROM guard_connections WHERE scope = $1 AND replica = $2",
        req.scope,
        req.replica
    )
    .execute(&mut *tx)
    .await?;
    // A key reported twice counts once (the first).
    sqlx::query!(
        "INSERT INTO guard_connections (scope, replica, key, count, expires_at) \
         SELECT $1, $2, k, c, now() + make_interval(secs => $5) \
         FROM UNNEST($3::text[], $4::int4[]) AS r(k, c) \
         ON CONFLICT DO NOTHING",
        req.scope,
        req.replica,
        &keys,
        &counts,
        f64::from(req.ttl_secs)
    )
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query!(
        r#"SELECT key, sum(count)::int8 AS "total!" FROM guard_connections
           WHERE scope = $1 AND replica <> $2 AND expires_at > now()
           GROUP BY key ORDER BY 2 DESC LIMIT 10000"#,
        req.scope,
        req.replica
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pb::ShareConnectionsResponse {
        elsewhere: rows
            .into_iter()
            .map(|r| pb::ConnectionCount {
                key: r.key,
                count: clamp_u32(r.total),
            })
            .collect(),
    })
}

/// Deletes expired counters and marks (called by the janitor).
pub async fn collect_expired(pool: &PgPool) {
    let _ = sqlx::query!("DELETE FROM guard_counters WHERE expires_at < now()")
        .execute(pool)
        .await;
    let _ = sqlx::query!("DELETE FROM guard_marks WHERE expires_at < now()")
        .execute(pool)
        .await;
    let _ = sqlx::query!("DELETE FROM guard_connections WHERE expires_at < now()")
        .execute(pool)
        .await;
}

#[tonic::async_trait]
impl pb::guard_server::Guard for GuardSvc {
    async fn hit(&self, req: Request<pb::HitRequest>) -> Result<Response<pb::HitResponse>, Status> {
        Ok(Response::new(hit(self.pool(), req.into_inner()).await?))
    }

    async fn set_mark(
        &self,
        req: Request<pb::SetMarkRequest>,
    ) -> Result<Response<pb::SetMarkResponse>, Status> {
        set_mark(self.pool(), req.into_inner()).await?;
        Ok(Response::new(pb::SetMarkResponse {}))
    }

    async fn check_mark(
        &self,
        req: Request<pb::CheckMarkRequest>,
    ) -> Result<Response<pb::CheckMarkResponse>, Status> {
        Ok(Response::new(
            check_mark(self.pool(), req.into_inner()).await?,
        ))
    }

    async fn share_connections(
        &self,
        req: Request<pb::ShareConnectionsRequest>,
    ) -> Result<Response<pb::ShareConnectionsResponse>, Status> {
        Ok(Response::new(
            share_connections(self.pool(), req.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_and_bounded() {
        let k = |s: &str, k: &str| scope_key(s, k).map(|(_, k)| k);
        assert_eq!(k("a", "2001:db8::1").ok().as_deref(), Some("2001:db8::/64"));
        assert_eq!(k("a", "::ffff:10.0.0.1").ok().as_deref(), Some("10.0.0.1"));
        assert_eq!(
            k("a", "Alice@Example.ORG").ok().as_deref(),
            Some("alice@example.org")
        );
        assert!(k("", "x").is_err());
        assert!(k(&"s".repeat(65), "x").is_err());
        assert!(k("a", "").is_err());
        assert!(k("a", &"x".repeat(321)).is_err());
        assert!(k("a", &"x".repeat(320)).is_ok());
        assert!(k("a", "x\ny").is_err());
    }
}
