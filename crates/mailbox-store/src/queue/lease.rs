//! Leases: workers take ready jobs (waiting for a NOTIFY when there are
//! none), renew them, and poison jobs are set aside.

use std::time::Duration;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};

use super::events::event;
use super::jobs::{JobRow, job_recipients, job_row};
use super::{QueueSvc, kind_of};

const DEFAULT_MAX_ATTEMPTS: i32 = 10;

const MAX_LEASE_BATCH: u32 = 500;

const MAX_WAIT: Duration = Duration::from_secs(60);

/// Leases up to n jobs; quarantines jobs leased too often without finishing.
async fn lease_once(
    pool: &PgPool,
    kind: i16,
    worker: &str,
    n: i64,
    ttl_ms: i64,
    max_attempts: i32,
) -> Result<Vec<pb::Job>> {
    let mut tx = pool.begin().await?;
    // Poison messages: a job whose previous leases all ended without a
    // FinishJob (worker crashed on it) is set aside, not handed out again.
    let poisoned: Vec<i64> = sqlx::query_scalar!(
        "UPDATE queue_jobs SET state = 3, lease_owner = NULL, lease_expires_at = NULL, \
         last_error = 'quarantined after ' || open_leases || ' unfinished attempts', updated_at = now() \
         WHERE id IN (SELECT id FROM queue_jobs WHERE kind = $1 AND state = 1 AND next_attempt_at <= now() AND open_leases >= $2 \
                      ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id",
        kind,
        max_attempts
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in &poisoned {
        event(
            &mut tx,
            *id,
            pb::EventKind::Quarantined,
            "mailbox-store",
            "",
            "too many unfinished attempts",
        )
        .await?;
    }
    let rows = sqlx::query_as!(
        JobRow,
        "UPDATE queue_jobs SET lease_owner = $2, lease_expires_at = now() + $4::bigint * interval '1 millisecond', \
         next_attempt_at = now() + $4::bigint * interval '1 millisecond', attempts = attempts + 1, open_leases = open_leases + 1, updated_at = now() \
         WHERE id IN (SELECT id FROM queue_jobs WHERE kind = $1 AND state = 1 AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, kind, state, mail_from, envid, ret, body_type, smtputf8, size, attempts, created_at, \
         lease_expires_at, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
         lease_owner, last_error, requiretls, sign, delivered_to, message_id, about_job_id, traceparent",
        kind,
        worker,
        n,
        ttl_ms
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut rcpts = job_recipients(pool, &ids).await?;
    let mut jobs = rows
        .iter()
        .map(|r| job_row(r, rcpts.remove(&r.id).unwrap_or_default()))
        .collect::<Vec<_>>();
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

pub(super) async fn lease(
    svc: &QueueSvc,
    req: Request<pb::LeaseRequest>,
) -> Result<Response<pb::LeaseResponse>, Status> {
    let req = req.into_inner();
    let kind = kind_of(req.kind)?;
    if req.worker_id.is_empty() || req.worker_id.len() > 200 {
        return Err(StoreError::invalid("worker_id required").into());
    }
    let n = i64::from(req.max_jobs.clamp(1, MAX_LEASE_BATCH));
    let ttl = i64::try_from(req.lease_ttl_ms.clamp(1_000, 3_600_000)).unwrap_or(60_000);
    let max_attempts = if req.max_attempts == 0 {
        DEFAULT_MAX_ATTEMPTS
    } else {
        i32::try_from(req.max_attempts).unwrap_or(DEFAULT_MAX_ATTEMPTS)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    let mut wake = svc.store.hub.subscribe_queue(i32::from(kind));
    loop {
        wake.borrow_and_update();
        let jobs = lease_once(svc.pool(), kind, &req.worker_id, n, ttl, max_attempts).await?;
        if !jobs.is_empty() {
            return Ok(Response::new(pb::LeaseResponse { jobs }));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Response::new(pb::LeaseResponse { jobs }));
        }
        // Sleep until a NOTIFY, the next scheduled retry or the deadline.
        let next: Option<f64> = sqlx::query_scalar!(
            "SELECT extract(epoch FROM (min(next_attempt_at) - now()))::float8 FROM queue_jobs WHERE kind = $1 AND state = 1",
            kind
        )
        .fetch_one(svc.pool())
        .await
        .map_err(StoreError::from)?;
        let mut until = deadline;
        if let Some(secs) = next {
            let d = Duration::from_secs_f64(secs.max(0.0) + 0.01);
            until = until.min(now + d);
        }
        tokio::select! {
            _ = wake.changed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

pub(super) async fn renew_lease(
    svc: &QueueSvc,
    req: Request<pb::RenewLeaseRequest>,
) -> Result<Response<pb::RenewLeaseResponse>, Status> {
    let req = req.into_inner();
    let ids: Vec<i64> = req
        .job_ids
        .iter()
        .filter_map(|i| i64::try_from(*i).ok())
        .collect();
    let ttl = i64::try_from(req.lease_ttl_ms.clamp(1_000, 3_600_000)).unwrap_or(60_000);
    let renewed: Vec<i64> = sqlx::query_scalar!(
        "UPDATE queue_jobs SET lease_expires_at = now() + $3::bigint * interval '1 millisecond', next_attempt_at = now() + $3::bigint * interval '1 millisecond' \
         WHERE id = ANY($1) AND lease_owner = $2 AND state = 1 RETURNING id",
        &ids,
        &req.worker_id,
        ttl
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::RenewLeaseResponse {
        renewed: renewed.iter().map(|i| *i as u64).collect(),
    }))
}
