//! Operator RPCs (mailctl queue): list, inspect, retry and delete jobs.

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::blobs::collect_garbage;
use crate::db::{FOREIGN_KEY_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::notify::QUEUE_CHANNEL;
use crate::wire::{id, timestamp};

use super::events::{event, list_events};
use super::jobs::{JobRow, job_recipients, job_row, summary_row};
use super::{QueueSvc, kind_of};

pub(super) async fn list_jobs(
    svc: &QueueSvc,
    req: Request<pb::ListJobsRequest>,
) -> Result<Response<pb::ListJobsResponse>, Status> {
    let req = req.into_inner();
    let kind: i16 = if req.kind == 0 { 0 } else { kind_of(req.kind)? };
    let state = i16::try_from(req.state).unwrap_or(0);
    let limit = i64::from(if req.limit == 0 {
        100
    } else {
        req.limit.min(10_000)
    });
    let rows = sqlx::query!(
        "SELECT id, kind, state, mail_from, size, attempts, created_at, next_attempt_at, lease_owner, last_error, \
         (SELECT count(*) FROM queue_recipients r WHERE r.job_id = q.id) AS \"rcpts!\" FROM queue_jobs q \
         WHERE ($1::smallint = 0 OR kind = $1) AND ($2::smallint = 0 OR state = $2) AND id > $3 ORDER BY id LIMIT $4",
        kind,
        state,
        i64::try_from(req.after_id).unwrap_or(i64::MAX),
        limit
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let jobs = rows
        .into_iter()
        .map(|r| pb::JobSummary {
            id: r.id as u64,
            kind: i32::from(r.kind),
            state: i32::from(r.state),
            mail_from: r.mail_from,
            recipients: r.rcpts as u32,
            size: r.size as u64,
            attempts: r.attempts as u32,
            created_at: timestamp(r.created_at),
            next_attempt_at: timestamp(r.next_attempt_at),
            lease_owner: r.lease_owner.unwrap_or_default(),
            last_error: r.last_error,
        })
        .collect();
    Ok(Response::new(pb::ListJobsResponse { jobs }))
}

pub(super) async fn get_job(
    svc: &QueueSvc,
    req: Request<pb::GetJobRequest>,
) -> Result<Response<pb::JobDetail>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    Ok(Response::new(job_detail(svc.pool(), job_id).await?))
}

/// One job with its recipients and events.
pub(super) async fn job_detail(pool: &PgPool, job_id: i64) -> Result<pb::JobDetail> {
    let row = sqlx::query_as!(
        JobRow,
        "SELECT id, kind, state, mail_from, envid, ret, body_type, smtputf8, size, attempts, created_at, \
         lease_expires_at, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
         lease_owner, last_error, requiretls, sign, delivered_to, message_id, about_job_id, traceparent \
         FROM queue_jobs WHERE id = $1",
        job_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound("job"))?;
    let mut rcpts = job_recipients(pool, &[job_id]).await?;
    let rcpts = rcpts.remove(&job_id).unwrap_or_default();
    let summary = summary_row(&row, rcpts.len() as u32);
    let job = job_row(&row, rcpts);
    let events = list_events(pool, job_id).await?;
    Ok(pb::JobDetail {
        summary: Some(summary),
        job: Some(job),
        events,
    })
}

pub(super) async fn retry_job(
    svc: &QueueSvc,
    req: Request<pb::RetryJobRequest>,
) -> Result<Response<pb::RetryJobResponse>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let kind: Option<i16> = sqlx::query_scalar!(
        "UPDATE queue_jobs SET state = 1, next_attempt_at = now(), open_leases = 0, lease_owner = NULL, lease_expires_at = NULL, \
         updated_at = now() WHERE id = $1 AND state IN (1, 3) RETURNING kind",
        job_id
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let kind = kind.ok_or(StoreError::NotFound("retryable job"))?;
    event(
        &mut tx,
        job_id,
        pb::EventKind::Retried,
        "mailctl",
        "",
        "retry requested",
    )
    .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, kind.to_string())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(pb::RetryJobResponse {}))
}

pub(super) async fn delete_job(
    svc: &QueueSvc,
    req: Request<pb::DeleteJobRequest>,
) -> Result<Response<pb::DeleteJobResponse>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    let hash: Option<Vec<u8>> = sqlx::query_scalar!(
        "DELETE FROM queue_jobs WHERE id = $1 RETURNING blob_hash",
        job_id
    )
    .fetch_optional(svc.pool())
    .await
    .map_err(|e| {
        if is_sqlstate(&e, FOREIGN_KEY_VIOLATION) {
            StoreError::precondition("job is referenced")
        } else {
            e.into()
        }
    })?;
    let hash = hash.ok_or(StoreError::NotFound("job"))?;
    collect_garbage(svc.pool(), vec![hash]).await;
    Ok(Response::new(pb::DeleteJobResponse {}))
}
