//! Completing work: per-recipient results and the job's outcome (done,
//! retry later, quarantine).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::notify::QUEUE_CHANNEL;
use crate::wire::{from_pb_ts, id};

use super::events::event;
use super::{QueueSvc, check_lease};

pub(super) async fn set_recipient_result(
    svc: &QueueSvc,
    req: Request<pb::SetRecipientResultRequest>,
) -> Result<Response<pb::SetRecipientResultResponse>, Status> {
    let req = req.into_inner();
    let job_id = id(req.job_id, "job")?;
    let state = pb::RecipientState::try_from(req.state)
        .map_err(|_| StoreError::invalid("recipient state"))?;
    if state == pb::RecipientState::Unspecified {
        return Err(StoreError::invalid("recipient state").into());
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    check_lease(&mut tx, job_id, &req.worker_id).await?;
    let detail: String = req.detail.chars().take(2_000).collect();
    let address: Option<String> = sqlx::query_scalar!(
        "UPDATE queue_recipients SET state = $3, detail = $4, attempts = attempts + 1, updated_at = now() \
         WHERE job_id = $1 AND idx = $2 RETURNING address",
        job_id,
        i32::try_from(req.index).unwrap_or(-1),
        state as i16,
        &detail
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let address = address.ok_or(StoreError::NotFound("recipient"))?;
    let kind = match state {
        pb::RecipientState::Delivered => pb::EventKind::Delivered,
        pb::RecipientState::Failed => pb::EventKind::Failed,
        pb::RecipientState::Deferred => pb::EventKind::Deferred,
        pb::RecipientState::Relayed => pb::EventKind::Relayed,
        _ => pb::EventKind::Attempt,
    };
    event(&mut tx, job_id, kind, &req.worker_id, &address, &detail).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(pb::SetRecipientResultResponse {}))
}

pub(super) async fn finish_job(
    svc: &QueueSvc,
    req: Request<pb::FinishJobRequest>,
) -> Result<Response<pb::FinishJobResponse>, Status> {
    let req = req.into_inner();
    let job_id = id(req.job_id, "job")?;
    let reason: String = req.reason.chars().take(2_000).collect();
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    check_lease(&mut tx, job_id, &req.worker_id).await?;
    match pb::FinishOutcome::try_from(req.outcome) {
        Ok(pb::FinishOutcome::Done) => {
            sqlx::query!(
                "UPDATE queue_recipients SET state = $2, updated_at = now() WHERE job_id = $1 AND state = 1",
                job_id,
                pb::RecipientState::Delivered as i16
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            sqlx::query!(
                "UPDATE queue_jobs SET state = 2, lease_owner = NULL, lease_expires_at = NULL, open_leases = 0, \
                 last_error = $2, updated_at = now() WHERE id = $1",
                job_id,
                &reason
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        Ok(pb::FinishOutcome::Retry) => {
            let at = req
                .retry_at
                .as_ref()
                .and_then(from_pb_ts)
                .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::minutes(5));
            let kind: i16 = sqlx::query_scalar!(
                "UPDATE queue_jobs SET lease_owner = NULL, lease_expires_at = NULL, open_leases = 0, next_attempt_at = $2, \
                 last_error = $3, updated_at = now() WHERE id = $1 RETURNING kind",
                job_id,
                at,
                &reason
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            // Waiting Lease calls recompute their wake-up time: this
            // retry may be due before anything they knew of.
            sqlx::query!("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, kind.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            event(
                &mut tx,
                job_id,
                pb::EventKind::Deferred,
                &req.worker_id,
                "",
                &format!("retry at {at}: {reason}"),
            )
            .await?;
        }
        Ok(pb::FinishOutcome::Quarantine) => {
            sqlx::query!(
                "UPDATE queue_jobs SET state = 3, lease_owner = NULL, lease_expires_at = NULL, last_error = $2, updated_at = now() WHERE id = $1",
                job_id,
                &reason
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            event(
                &mut tx,
                job_id,
                pb::EventKind::Quarantined,
                &req.worker_id,
                "",
                &reason,
            )
            .await?;
        }
        _ => return Err(StoreError::invalid("outcome required").into()),
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(pb::FinishJobResponse {}))
}
