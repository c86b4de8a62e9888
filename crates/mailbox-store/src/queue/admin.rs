//! Operator RPCs (mailctl queue): list, inspect, retry and delete jobs.

use mailstore_api::pb;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::blobs::collect_garbage;
use crate::error::{Result, StoreError, sqlstate};
use crate::notify::QUEUE_CHANNEL;
use crate::wire::id;

use super::events::{event, list_events};
use super::jobs::{JOB_COLS, job_recipients, job_row, summary_row};
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
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLS}, (SELECT count(*) FROM queue_recipients r WHERE r.job_id = q.id) AS rcpts FROM queue_jobs q \
         WHERE ($1 = 0 OR kind = $1) AND ($2 = 0 OR state = $2) AND id > $3 ORDER BY id LIMIT $4"
    )))
    .bind(kind)
    .bind(state)
    .bind(i64::try_from(req.after_id).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let jobs = rows
        .iter()
        .map(|r| summary_row(r, r.try_get::<i64, _>("rcpts").unwrap_or(0) as u32))
        .collect::<Result<Vec<_>>>()?;
    Ok(Response::new(pb::ListJobsResponse { jobs }))
}

pub(super) async fn get_job(
    svc: &QueueSvc,
    req: Request<pb::GetJobRequest>,
) -> Result<Response<pb::JobDetail>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLS} FROM queue_jobs WHERE id = $1"
    )))
    .bind(job_id)
    .fetch_optional(svc.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or(StoreError::NotFound("job"))?;
    let mut rcpts = job_recipients(svc.pool(), &[job_id]).await?;
    let rcpts = rcpts.remove(&job_id).unwrap_or_default();
    let summary = summary_row(&row, rcpts.len() as u32)?;
    let job = job_row(&row, rcpts)?;
    let events = list_events(svc.pool(), job_id).await?;
    Ok(Response::new(pb::JobDetail {
        summary: Some(summary),
        job: Some(job),
        events,
    }))
}

pub(super) async fn retry_job(
    svc: &QueueSvc,
    req: Request<pb::RetryJobRequest>,
) -> Result<Response<pb::RetryJobResponse>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let kind: Option<i16> = sqlx::query_scalar(
        "UPDATE queue_jobs SET state = 1, next_attempt_at = now(), open_leases = 0, lease_owner = NULL, lease_expires_at = NULL, \
         updated_at = now() WHERE id = $1 AND state IN (1, 3) RETURNING kind",
    )
    .bind(job_id)
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
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(QUEUE_CHANNEL)
        .bind(kind.to_string())
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
    let hash: Option<Vec<u8>> =
        sqlx::query_scalar("DELETE FROM queue_jobs WHERE id = $1 RETURNING blob_hash")
            .bind(job_id)
            .fetch_optional(svc.pool())
            .await
            .map_err(|e| {
                if sqlstate(&e).as_deref() == Some("23503") {
                    StoreError::precondition("job is referenced")
                } else {
                    e.into()
                }
            })?;
    let hash = hash.ok_or(StoreError::NotFound("job"))?;
    collect_garbage(svc.pool(), vec![hash]).await;
    Ok(Response::new(pb::DeleteJobResponse {}))
}
