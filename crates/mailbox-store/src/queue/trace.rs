//! `Trace` (mailctl trace): every job of one message. A message is found
//! by its Message-ID or by any of its job ids; from there the store walks
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
    let mut jobs = Vec::with_capacity(ids.len());
    for j in ids {
        match job_detail(svc.pool(), j).await {
            Ok(d) => jobs.push(d),
            // Removed (janitor, mailctl queue rm) between the two reads.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Response::new(pb::TraceResponse { jobs }))
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
