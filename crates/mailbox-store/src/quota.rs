//! Quotas (RFC 9208 resources STORAGE and MESSAGE; issue #16): one quota
//! root per user. A user's limit is its own (`users.quota_bytes`,
//! `users.quota_messages`) or else its domain's default (`domains.*`); no
//! limit at either level means unlimited.
//!
//! Usage (`users.used_bytes`, `users.used_messages`) changes in the same
//! transaction as the append, copy, expunge or mailbox deletion that causes
//! it, by one `UPDATE … RETURNING` that also reads the effective limits: the
//! row lock it takes orders concurrent appends of one user, so two appends
//! can never both pass the check and together exceed the limit, and no
//! append ever scans the user's messages. An over-quota append returns
//! [`StoreError::OverQuota`] and the caller's transaction rolls back, the
//! counter increase with it.
//!
//! Refusals are `RESOURCE_EXHAUSTED`. When the request alone is larger than
//! the limit (it could never fit, whatever is expunged) the status carries
//! [`mailstore_api::QUOTA_EXCEEDS_LIMIT`]: delivery turns that into a
//! permanent 5.2.2 at once instead of retrying (RFC 3463 §3.3).

use mailstore_api::pb;
use sqlx::{PgConnection, PgPool};

use crate::error::{Result, StoreError};

/// Adds `bytes` and `messages` to a user's usage. With `enforce`, refuses
/// (and the caller rolls back) when the new usage would pass a limit
/// (RFC 9208 §5.1: the operation fails, nothing is stored); the refusal is
/// permanent when the request alone is larger than the limit.
pub(crate) async fn charge(
    conn: &mut PgConnection,
    user_id: i64,
    bytes: i64,
    messages: i64,
    enforce: bool,
) -> Result<()> {
    let row = sqlx::query!(
        "UPDATE users u SET used_bytes = u.used_bytes + $2, used_messages = u.used_messages + $3 \
         FROM domains d WHERE u.id = $1 AND d.id = u.domain_id \
         RETURNING u.used_bytes, u.used_messages, \
         COALESCE(u.quota_bytes, d.quota_bytes) AS limit_bytes, \
         COALESCE(u.quota_messages, d.quota_messages) AS limit_messages",
        user_id,
        bytes,
        messages
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("user"))?;
    if !enforce {
        return Ok(());
    }
    let over_bytes = row
        .limit_bytes
        .is_some_and(|l| bytes > 0 && row.used_bytes > l);
    let over_count = row
        .limit_messages
        .is_some_and(|l| messages > 0 && row.used_messages > l);
    if over_bytes || over_count {
        let permanent = row.limit_bytes.is_some_and(|l| bytes > l)
            || row.limit_messages.is_some_and(|l| messages > l);
        return Err(StoreError::OverQuota { permanent });
    }
    Ok(())
}

/// Removes usage (expunge, mailbox deletion, the source side of a move).
pub(crate) async fn release(
    conn: &mut PgConnection,
    user_id: i64,
    bytes: i64,
    messages: i64,
) -> Result<()> {
    sqlx::query!(
        "UPDATE users SET used_bytes = GREATEST(0, used_bytes - $2), \
         used_messages = GREATEST(0, used_messages - $3) WHERE id = $1",
        user_id,
        bytes,
        messages
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// True when every one of these users is full: its usage has reached a
/// limit, so no message at all can be delivered to it now (smtp-in then
/// answers 452 4.2.2 at RCPT). False for an empty list.
pub(crate) async fn all_full(pool: &PgPool, user_ids: &[i64]) -> Result<bool> {
    if user_ids.is_empty() {
        return Ok(false);
    }
    let full: Option<bool> = sqlx::query_scalar!(
        "SELECT bool_and(COALESCE(u.used_bytes >= COALESCE(u.quota_bytes, d.quota_bytes), false) \
                      OR COALESCE(u.used_messages >= COALESCE(u.quota_messages, d.quota_messages), false)) \
         FROM users u JOIN domains d ON d.id = u.domain_id WHERE u.id = ANY($1)",
        user_ids
    )
    .fetch_one(pool)
    .await?;
    Ok(full.unwrap_or(false))
}

/// A user's quota root: effective limits, its own settings, usage.
pub(crate) async fn get(pool: &PgPool, user_id: i64) -> Result<pb::Quota> {
    let r = sqlx::query!(
        "SELECT u.id, u.local_part, d.name AS domain, u.used_bytes, u.used_messages, \
         u.quota_bytes, u.quota_messages, d.quota_bytes AS domain_bytes, d.quota_messages AS domain_messages \
         FROM users u JOIN domains d ON d.id = u.domain_id WHERE u.id = $1",
        user_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("user"))?;
    let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    Ok(pb::Quota {
        user_id: r.id as u64,
        address: format!("{}@{}", r.local_part, r.domain),
        used_bytes: r.used_bytes.max(0) as u64,
        used_messages: r.used_messages.max(0) as u64,
        limit_bytes: u(r.quota_bytes.or(r.domain_bytes)),
        limit_messages: u(r.quota_messages.or(r.domain_messages)),
        user_bytes: u(r.quota_bytes),
        user_messages: u(r.quota_messages),
    })
}

fn limit(v: Option<u64>) -> Result<Option<i64>> {
    v.map(|v| i64::try_from(v).map_err(|_| StoreError::invalid("quota limit too large")))
        .transpose()
}

/// Replaces a user's own limits (RFC 9208 §4.1.3: limits not named are
/// removed; here that means the domain default applies again).
pub(crate) async fn set(
    pool: &PgPool,
    user_id: i64,
    bytes: Option<u64>,
    messages: Option<u64>,
) -> Result<pb::Quota> {
    let done = sqlx::query!(
        "UPDATE users SET quota_bytes = $2, quota_messages = $3 WHERE id = $1",
        user_id,
        limit(bytes)?,
        limit(messages)?
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("user"));
    }
    get(pool, user_id).await
}

/// Replaces a domain's default limits (None = unlimited).
pub(crate) async fn set_domain(
    pool: &PgPool,
    domain: &str,
    bytes: Option<u64>,
    messages: Option<u64>,
) -> Result<pb::DomainQuota> {
    let done = sqlx::query!(
        "UPDATE domains SET quota_bytes = $2, quota_messages = $3 WHERE name = $1",
        domain,
        limit(bytes)?,
        limit(messages)?
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("domain"));
    }
    Ok(pb::DomainQuota {
        domain: domain.to_string(),
        limit_bytes: bytes,
        limit_messages: messages,
    })
}
