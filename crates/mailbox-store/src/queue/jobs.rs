//! Reading jobs: row mapping shared by leases and the admin RPCs, and the
//! job's message for workers.

use std::collections::HashMap;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::blobs::{FirstChunk, first_range, stream_blob};
use crate::error::{Result, StoreError};
use crate::wire::{BoxStream, id, timestamp, ts_opt};

use super::QueueSvc;

pub(super) async fn job_recipients(
    pool: &PgPool,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<pb::JobRecipient>>> {
    let rows = sqlx::query!(
        "SELECT job_id, idx, address, orcpt, notify, state, detail, attempts, updated_at FROM queue_recipients \
         WHERE job_id = ANY($1) ORDER BY job_id, idx",
        ids
    )
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<i64, Vec<pb::JobRecipient>> = HashMap::new();
    for r in rows {
        out.entry(r.job_id).or_default().push(pb::JobRecipient {
            index: r.idx as u32,
            recipient: Some(pb::Recipient {
                address: r.address,
                orcpt: r.orcpt,
                notify: r.notify as u32,
            }),
            state: i32::from(r.state),
            detail: r.detail,
            attempts: r.attempts as u32,
            updated_at: timestamp(r.updated_at),
        });
    }
    Ok(out)
}

/// A job row: every column the API shows (the same list in every query
/// that reads one: `id, kind, state, mail_from, envid, ret, body_type, smtputf8, size, attempts, created_at,  lease_expires_at, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at,  lease_owner, last_error, requiretls, sign, delivered_to, message_id, about_job_id, traceparent`).
pub(super) struct JobRow {
    pub(super) id: i64,
    pub(super) kind: i16,
    pub(super) state: i16,
    pub(super) mail_from: String,
    pub(super) envid: String,
    pub(super) ret: String,
    pub(super) body_type: String,
    pub(super) smtputf8: bool,
    pub(super) size: i64,
    pub(super) attempts: i32,
    pub(super) created_at: chrono::DateTime<chrono::Utc>,
    pub(super) lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(super) client_ip: String,
    pub(super) helo: String,
    pub(super) authenticated_user: String,
    pub(super) session_id: String,
    pub(super) parent_job_id: Option<i64>,
    pub(super) destination: String,
    pub(super) next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub(super) lease_owner: Option<String>,
    pub(super) last_error: String,
    pub(super) requiretls: bool,
    pub(super) sign: bool,
    pub(super) delivered_to: String,
    pub(super) message_id: String,
    pub(super) about_job_id: Option<i64>,
    pub(super) traceparent: String,
}

pub(super) fn job_row(r: &JobRow, recipients: Vec<pb::JobRecipient>) -> pb::Job {
    pb::Job {
        id: r.id as u64,
        kind: i32::from(r.kind),
        mail_from: r.mail_from.clone(),
        recipients,
        envid: r.envid.clone(),
        ret: r.ret.clone(),
        body_type: r.body_type.clone(),
        smtputf8: r.smtputf8,
        size: r.size as u64,
        attempts: r.attempts as u32,
        created_at: timestamp(r.created_at),
        lease_expires_at: ts_opt(r.lease_expires_at),
        client_ip: r.client_ip.clone(),
        helo: r.helo.clone(),
        authenticated_user: r.authenticated_user.clone(),
        session_id: r.session_id.clone(),
        parent_job_id: r.parent_job_id.unwrap_or(0) as u64,
        destination: r.destination.clone(),
        requiretls: r.requiretls,
        sign: r.sign,
        delivered_to: r.delivered_to.clone(),
        message_id: r.message_id.clone(),
        about_job_id: r.about_job_id.unwrap_or(0) as u64,
        traceparent: r.traceparent.clone(),
    }
}

pub(super) fn summary_row(r: &JobRow, recipients: u32) -> pb::JobSummary {
    pb::JobSummary {
        id: r.id as u64,
        kind: i32::from(r.kind),
        state: i32::from(r.state),
        mail_from: r.mail_from.clone(),
        recipients,
        size: r.size as u64,
        attempts: r.attempts as u32,
        created_at: timestamp(r.created_at),
        next_attempt_at: timestamp(r.next_attempt_at),
        lease_owner: r.lease_owner.clone().unwrap_or_default(),
        last_error: r.last_error.clone(),
    }
}

pub(super) async fn read_message(
    svc: &QueueSvc,
    req: Request<pb::ReadMessageRequest>,
) -> Result<Response<BoxStream<pb::BodyChunk>>, Status> {
    let req = req.into_inner();
    let job_id = id(req.job_id, "job")?;
    // The job's blob and its first chunk in one query (see
    // `blobs::FirstChunk`).
    let (from, n) = first_range(req.offset, req.length);
    let row = sqlx::query!(
        r#"SELECT j.blob_hash, b.size, substring(b.data FROM $2::bigint::int FOR $3::bigint::int) AS "data!"
           FROM queue_jobs j JOIN blobs b ON b.hash = j.blob_hash
           WHERE j.id = $1"#,
        job_id,
        from,
        n
    )
    .fetch_optional(svc.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or(StoreError::NotFound("job"))?;
    let first = FirstChunk {
        hash: row.blob_hash,
        total: row.size,
        data: row.data,
    };
    Ok(Response::new(stream_blob(
        svc.pool().clone(),
        first,
        req.offset,
        req.length,
    )))
}
