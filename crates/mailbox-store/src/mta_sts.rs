//! MtaStsCache service (`proto/mailstore/v1/mta_sts.proto`): MTA-STS
//! policies (RFC 8461 §5.1) cached for every smtp-out replica and across
//! restarts. A policy is kept for its `max_age` (at most one year, §3.2);
//! expired rows are invisible and removed on the next write.

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::db::Store;
use crate::error::{Result, StoreError};

/// Longest domain name (RFC 1035 §2.3.4).
pub const MAX_DOMAIN: usize = 255;
/// RFC 8461 §3.1: id is 1 to 32 alphanumeric characters.
pub const MAX_ID: usize = 32;
/// RFC 8461 §3.3 suggests 64 KiB for the policy body.
pub const MAX_TEXT: usize = 64 * 1024;
/// RFC 8461 §3.2: max_age at most 31557600 seconds.
pub const MAX_AGE: u64 = 31_557_600;

pub struct MtaStsSvc {
    store: Arc<Store>,
}

impl MtaStsSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

fn domain(d: &str) -> Result<String> {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > MAX_DOMAIN || d.chars().any(|c| c.is_control()) {
        return Err(StoreError::invalid("domain must be 1 to 255 bytes"));
    }
    Ok(d)
}

async fn get(
    pool: &PgPool,
    req: pb::GetMtaStsPolicyRequest,
) -> Result<pb::GetMtaStsPolicyResponse> {
    let d = domain(&req.domain)?;
    let row = sqlx::query!(
        r#"SELECT policy_id, policy_text,
                  extract(epoch FROM expires_at - now())::float8 AS "left!"
           FROM mta_sts_policies WHERE domain = $1 AND expires_at > now()"#,
        d
    )
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(r) => pb::GetMtaStsPolicyResponse {
            found: true,
            id: r.policy_id,
            text: r.policy_text,
            // Whole seconds left, rounded down (never past the expiry).
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            remaining_secs: r.left.max(0.0) as u64,
        },
        None => pb::GetMtaStsPolicyResponse::default(),
    })
}

async fn put(pool: &PgPool, req: pb::PutMtaStsPolicyRequest) -> Result<()> {
    let d = domain(&req.domain)?;
    if req.id.is_empty()
        || req.id.len() > MAX_ID
        || !req.id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(StoreError::invalid("id must be 1 to 32 letters or digits"));
    }
    if req.text.len() > MAX_TEXT || req.text.contains('\0') {
        return Err(StoreError::invalid(
            "policy text must be at most 64 KiB, without NUL",
        ));
    }
    if req.max_age_secs == 0 || req.max_age_secs > MAX_AGE {
        return Err(StoreError::invalid("max_age_secs must be 1 to 31557600"));
    }
    #[allow(clippy::cast_precision_loss)]
    let age = req.max_age_secs as f64;
    sqlx::query!(
        "INSERT INTO mta_sts_policies (domain, policy_id, policy_text, fetched_at, expires_at) \
         VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4)) \
         ON CONFLICT (domain) DO UPDATE SET policy_id = EXCLUDED.policy_id, \
             policy_text = EXCLUDED.policy_text, fetched_at = EXCLUDED.fetched_at, \
             expires_at = EXCLUDED.expires_at",
        d,
        req.id,
        req.text,
        age
    )
    .execute(pool)
    .await?;
    // Expired policies go on writes (cheap: indexed, usually none).
    sqlx::query!("DELETE FROM mta_sts_policies WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(())
}

#[tonic::async_trait]
impl pb::mta_sts_cache_server::MtaStsCache for MtaStsSvc {
    async fn get_mta_sts_policy(
        &self,
        req: Request<pb::GetMtaStsPolicyRequest>,
    ) -> Result<Response<pb::GetMtaStsPolicyResponse>, Status> {
        Ok(Response::new(get(self.pool(), req.into_inner()).await?))
    }

    async fn put_mta_sts_policy(
        &self,
        req: Request<pb::PutMtaStsPolicyRequest>,
    ) -> Result<Response<pb::PutMtaStsPolicyResponse>, Status> {
        put(self.pool(), req.into_inner()).await?;
        Ok(Response::new(pb::PutMtaStsPolicyResponse {}))
    }
}
