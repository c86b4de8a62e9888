//! `Trace` (mailctl trace): every job of one message. A message is found
//! by its Message-ID, by any of its job ids, or (the last 10 messages) by a
//! sender or recipient address; from there the store walks
//! up to the job that was received (`parent_job_id`: delivery's relayed
//! copies; `about_job_id`: DSNs about a job) and back down to every copy
//! and report, so one answer holds each hop the message took.

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::messages::message_id;
use crate::wire::id;

use super::QueueSvc;
use super::admin::job_detail;

/// Most jobs one trace returns (a message to many domains has one outbound
/// job per domain).
const MAX_JOBS: i64 = 100;

pub(super) async fn trace(
    svc: &QueueSvc,
    req: Request<pb::TraceRequest>,
) -> Result<Response<pb::TraceResponse>, Status> {
    let (job_id, mid) = match req.into_inner().key {
        Some(pb::trace_request::Key::Address(a)) => {
            return Ok(Response::new(by_address(svc, &a).await?));
        }
        Some(pb::trace_request::Key::JobId(j)) => (id(j, "job")?, String::new()),
        Some(pb::trace_request::Key::MessageId(m)) => {
            let m = message_id(&m);
            if m.is_empty() {
                return Err(StoreError::invalid("empty Message-ID").into());
            }
            (0, m)
        }
        None => return Err(StoreError::invalid("message_id or job_id required").into()),
    };
    let ids = related_jobs(svc, job_id, &mid).await?;
    Ok(Response::new(details(svc, ids).await?))
}

/// The last messages sent from or to `address` (each with all its jobs),
/// newest first, at most [`MAX_JOBS`] jobs in all.
async fn by_address(svc: &QueueSvc, address: &str) -> Result<pb::TraceResponse> {
    let address = address.trim().trim_matches(['<', '>']).to_lowercase();
    if address.is_empty() || address.len() > 320 {
        return Err(StoreError::invalid("address must be 1 to 320 bytes"));
    }
    let seeds: Vec<i64> = sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM queue_jobs j
           WHERE lower(j.mail_from) = $1
              OR EXISTS (SELECT 1 FROM queue_recipients r
                         WHERE r.job_id = j.id AND lower(r.address) = $1)
           ORDER BY id DESC LIMIT 10"#,
        address
    )
    .fetch_all(svc.pool())
    .await?;
    let mut ids: Vec<i64> = Vec::new();
    for seed in seeds {
        for j in related_jobs(svc, seed, "").await? {
            if !ids.contains(&j) {
                ids.push(j);
            }
        }
        if ids.len() >= usize::try_from(MAX_JOBS).unwrap_or(100) {
            break;
        }
    }
    ids.sort_unstable();
    ids.truncate(usize::try_from(MAX_JOBS).unwrap_or(100));
    details(svc, ids).await
}

async fn details(svc: &QueueSvc, ids: Vec<i64>) -> Result<pb::TraceResponse> {
    let mut jobs = Vec::with_capacity(ids.len());
    for j in ids {
        match job_detail(svc.pool(), j).await {
            Ok(d) => jobs.push(d),
            // Removed (janitor, mailctl queue rm) between the two reads.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pb::TraceResponse { jobs })
}

/// The ids of the seed jobs, their ancestors and all their descendants.
async fn related_jobs(svc: &QueueSvc, job_id: i64, mid: &str) -> Result<Vec<i64>> {
    // Job ids only grow along both links (a child is made after its
    // parent), so neither walk can loop; UNION drops repeats.
    let ids: Vec<i64> = sqlx::query_scalar!(
        "WITH RECURSIVE up(id, parent_job_id, about_job_id) AS ( \
             SELECT id, parent_job_id, about_job_id FROM queue_jobs \
             WHERE id = $1 OR ($2 <> '' AND message_id = $2) \
           UNION \
             SELECT q.id, q.parent_job_id, q.about_job_id FROM queue_jobs q \
             JOIN up ON q.id = up.parent_job_id OR q.id = up.about_job_id \
         ), down(id) AS ( \
             SELECT id FROM up \
           UNION \
             SELECT q.id FROM queue_jobs q \
             JOIN down ON q.parent_job_id = down.id OR q.about_job_id = down.id \
         ) \
         SELECT id AS \"id!\" FROM down ORDER BY id LIMIT $3",
        job_id,
        mid,
        MAX_JOBS
    )
    .fetch_all(svc.pool())
    .await?;
    Ok(ids)
}
