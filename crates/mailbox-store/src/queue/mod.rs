//! Queue service: the inbound and outbound mail queues, leases, per-recipient
//! results, and the per-message event log. Also local delivery from the
//! queue into a mailbox (exactly once per job and user).

mod admin;
mod complete;
mod deliver;
mod enqueue;
mod events;
mod jobs;
mod lease;
mod trace;

pub use deliver::deliver;

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status, Streaming};

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::wire::BoxStream;

pub const STATE_READY: i16 = 1;

pub const STATE_DONE: i16 = 2;

pub const STATE_QUARANTINED: i16 = 3;

pub struct QueueSvc {
    store: Arc<Store>,
}

impl QueueSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

fn kind_of(k: i32) -> Result<i16> {
    match pb::QueueKind::try_from(k) {
        Ok(pb::QueueKind::Inbound) => Ok(1),
        Ok(pb::QueueKind::Outbound) => Ok(2),
        _ => Err(StoreError::invalid("queue kind required")),
    }
}

/// Checks that `worker` holds the lease on a job, locking the job row.
async fn check_lease(conn: &mut PgConnection, job_id: i64, worker: &str) -> Result<()> {
    let owner: Option<Option<String>> = sqlx::query_scalar!(
        "SELECT lease_owner FROM queue_jobs WHERE id = $1 AND state = 1 FOR UPDATE",
        job_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    match owner {
        None => Err(StoreError::NotFound("job")),
        Some(Some(o)) if o == worker => Ok(()),
        Some(_) => Err(StoreError::precondition("lease not held by this worker")),
    }
}

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueSvc {
    async fn enqueue(
        &self,
        req: Request<Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        enqueue::enqueue(self, req).await
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        lease::lease(self, req).await
    }

    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        lease::renew_lease(self, req).await
    }

    type ReadMessageStream = BoxStream<pb::BodyChunk>;

    async fn read_message(
        &self,
        req: Request<pb::ReadMessageRequest>,
    ) -> Result<Response<Self::ReadMessageStream>, Status> {
        jobs::read_message(self, req).await
    }

    async fn set_recipient_result(
        &self,
        req: Request<pb::SetRecipientResultRequest>,
    ) -> Result<Response<pb::SetRecipientResultResponse>, Status> {
        complete::set_recipient_result(self, req).await
    }

    async fn finish_job(
        &self,
        req: Request<pb::FinishJobRequest>,
    ) -> Result<Response<pb::FinishJobResponse>, Status> {
        complete::finish_job(self, req).await
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        crate::auth::require_admin(&req)?;
        admin::list_jobs(self, req).await
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobDetail>, Status> {
        crate::auth::require_admin(&req)?;
        admin::get_job(self, req).await
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        crate::auth::require_admin(&req)?;
        admin::retry_job(self, req).await
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        crate::auth::require_admin(&req)?;
        admin::delete_job(self, req).await
    }

    async fn add_event(
        &self,
        req: Request<pb::AddEventRequest>,
    ) -> Result<Response<pb::AddEventResponse>, Status> {
        events::add_event(self, req).await
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        crate::auth::require_admin(&req)?;
        events::list_events_rpc(self, req).await
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        crate::auth::require_admin(&req)?;
        trace::trace(self, req).await
    }
}
