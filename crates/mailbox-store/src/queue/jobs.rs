//! Reading jobs: row mapping shared by leases and the admin RPCs, and the
//! job's message for workers.

use std::collections::HashMap;

use mailstore_api::pb;
use sqlx::{PgPool, Row};
use tonic::{Request, Response, Status};

use crate::blobs::stream_blob;
use crate::error::{Result, StoreError};
use crate::wire::{BoxStream, id, timestamp, ts_opt};

use super::QueueSvc;

pub(super) async fn job_recipients(
    pool: &PgPool,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<pb::JobRecipient>>> {
    let rows = sqlx::query(
        "SELECT job_id, idx, address, orcpt, notify, state, detail, attempts, updated_at FROM queue_recipients \
         WHERE job_id = ANY($1) ORDER BY job_id, idx",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<i64, Vec<pb::JobRecipient>> = HashMap::new();
    for r in &rows {
        out.entry(r.try_get("job_id")?)
            .or_default()
            .push(pb::JobRecipient {
                index: r.try_get::<i32, _>("idx")? as u32,
                recipient: Some(pb::Recipient {
                    address: r.try_get("address")?,
                    orcpt: r.try_get("orcpt")?,
                    notify: r.try_get::<i32, _>("notify")? as u32,
                }),
                state: i32::from(r.try_get::<i16, _>("state")?),
                detail: r.try_get("detail")?,
                attempts: r.try_get::<i32, _>("attempts")? as u32,
                updated_at: timestamp(r.try_get("updated_at")?),
            });
    }
    Ok(out)
}

pub(super) const JOB_COLS: &str = "id, kind, state, mail_from, envid, ret, body_type, smtputf8, size, attempts, created_at, \
    lease_expires_at, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
    lease_owner, last_error";

pub(super) fn job_row(
    r: &sqlx::postgres::PgRow,
    recipients: Vec<pb::JobRecipient>,
) -> Result<pb::Job> {
    Ok(pb::Job {
        id: r.try_get::<i64, _>("id")? as u64,
        kind: i32::from(r.try_get::<i16, _>("kind")?),
        mail_from: r.try_get("mail_from")?,
        recipients,
        envid: r.try_get("envid")?,
        ret: r.try_get("ret")?,
        body_type: r.try_get("body_type")?,
        smtputf8: r.try_get("smtputf8")?,
        size: r.try_get::<i64, _>("size")? as u64,
        attempts: r.try_get::<i32, _>("attempts")? as u32,
        created_at: timestamp(r.try_get("created_at")?),
        lease_expires_at: ts_opt(r.try_get("lease_expires_at")?),
        client_ip: r.try_get("client_ip")?,
        helo: r.try_get("helo")?,
        authenticated_user: r.try_get("authenticated_user")?,
        session_id: r.try_get("session_id")?,
        parent_job_id: r.try_get::<Option<i64>, _>("parent_job_id")?.unwrap_or(0) as u64,
        destination: r.try_get("destination")?,
    })
}

pub(super) fn summary_row(r: &sqlx::postgres::PgRow, recipients: u32) -> Result<pb::JobSummary> {
    Ok(pb::JobSummary {
        id: r.try_get::<i64, _>("id")? as u64,
        kind: i32::from(r.try_get::<i16, _>("kind")?),
        state: i32::from(r.try_get::<i16, _>("state")?),
        mail_from: r.try_get("mail_from")?,
        recipients,
        size: r.try_get::<i64, _>("size")? as u64,
        attempts: r.try_get::<i32, _>("attempts")? as u32,
        created_at: timestamp(r.try_get("created_at")?),
        next_attempt_at: timestamp(r.try_get("next_attempt_at")?),
        lease_owner: r
            .try_get::<Option<String>, _>("lease_owner")?
            .unwrap_or_default(),
        last_error: r.try_get("last_error")?,
    })
}

pub(super) async fn read_message(
    svc: &QueueSvc,
    req: Request<pb::ReadMessageRequest>,
) -> Result<Response<BoxStream<pb::BodyChunk>>, Status> {
    let req = req.into_inner();
    let job_id = id(req.job_id, "job")?;
    let hash: Vec<u8> = sqlx::query_scalar("SELECT blob_hash FROM queue_jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(svc.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::NotFound("job"))?;
    Ok(Response::new(stream_blob(
        svc.pool().clone(),
        hash,
        req.offset,
        req.length,
    )))
}
