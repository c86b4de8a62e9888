//! The per-message event log: what happened to a job, across services.

use mailstore_api::pb;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::wire::{id, timestamp};

use super::QueueSvc;

/// Records an event inside a transaction.
pub(crate) async fn event(
    conn: &mut PgConnection,
    job_id: i64,
    kind: pb::EventKind,
    source: &str,
    recipient: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO events (job_id, kind, source, recipient, detail) VALUES ($1, $2, $3, $4, $5)",
        job_id,
        kind as i16,
        source,
        recipient,
        detail
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn list_events(pool: &PgPool, job_id: i64) -> Result<Vec<pb::Event>> {
    let rows = sqlx::query!(
        "SELECT id, job_id, kind, at, source, recipient, detail, attributes::text AS \"attrs!\" FROM events WHERE job_id = $1 ORDER BY id",
        job_id
    )
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            let attrs: String = r.attrs;
            Ok(pb::Event {
                id: r.id as u64,
                job_id: r.job_id as u64,
                kind: i32::from(r.kind),
                at: timestamp(r.at),
                source: r.source,
                recipient: r.recipient,
                detail: r.detail,
                // A flat object of strings, as AddEvent wrote it.
                attributes: serde_json::from_str(&attrs).unwrap_or_default(),
            })
        })
        .collect()
}

pub(super) async fn add_event(
    svc: &QueueSvc,
    req: Request<pb::AddEventRequest>,
) -> Result<Response<pb::AddEventResponse>, Status> {
    let req = req.into_inner();
    let job_id = id(req.job_id, "job")?;
    let id: i64 = sqlx::query_scalar!(
        "INSERT INTO events (job_id, kind, source, recipient, detail, attributes) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) RETURNING id",
        job_id,
        i16::try_from(req.kind).unwrap_or(0),
        &req.source,
        &req.recipient,
        &req.detail,
        serde_json::to_string(&req.attributes).unwrap_or_else(|_| "{}".into())
    )
    .fetch_one(svc.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::AddEventResponse { id: id as u64 }))
}

pub(super) async fn list_events_rpc(
    svc: &QueueSvc,
    req: Request<pb::ListEventsRequest>,
) -> Result<Response<pb::ListEventsResponse>, Status> {
    let job_id = id(req.get_ref().job_id, "job")?;
    Ok(Response::new(pb::ListEventsResponse {
        events: list_events(svc.pool(), job_id).await?,
    }))
}
