//! Named expiring locks (the POP3 maildrop lock, RFC 1939 §8).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};

use super::MailboxesSvc;

pub(super) async fn acquire_lock(
    svc: &MailboxesSvc,
    req: Request<pb::AcquireLockRequest>,
) -> Result<Response<pb::AcquireLockResponse>, Status> {
    let req = req.into_inner();
    if req.name.is_empty() || req.owner.is_empty() || req.name.len() > 256 || req.owner.len() > 256
    {
        return Err(StoreError::invalid("lock name and owner required").into());
    }
    let ttl = i64::try_from(req.ttl_ms.clamp(1_000, 3_600_000)).unwrap_or(60_000);
    let got: Option<String> = sqlx::query_scalar!(
        "INSERT INTO locks (name, owner, expires_at) VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
         WHERE locks.owner = EXCLUDED.owner OR locks.expires_at < now() RETURNING owner",
        &req.name,
        &req.owner,
        ttl
    )
    .fetch_optional(svc.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::AcquireLockResponse {
        acquired: got.is_some(),
    }))
}

pub(super) async fn release_lock(
    svc: &MailboxesSvc,
    req: Request<pb::ReleaseLockRequest>,
) -> Result<Response<pb::ReleaseLockResponse>, Status> {
    let req = req.into_inner();
    sqlx::query!(
        "DELETE FROM locks WHERE name = $1 AND owner = $2",
        &req.name,
        &req.owner
    )
    .execute(svc.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::ReleaseLockResponse {}))
}
