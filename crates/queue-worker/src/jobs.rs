//! The calls a worker makes about a job it holds the lease of. Every one
//! carries the worker id: the store refuses them from a worker whose lease
//! has expired.

use std::collections::HashMap;

use mailstore_api::{StoreClient, pb};

use crate::timestamp;

/// Per-job queue calls of one worker.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: StoreClient,
    worker_id: String,
    /// `service/worker` in the event log.
    source: String,
}

impl Jobs {
    /// Calls made as `worker_id` of `service` (the event log shows
    /// `service/worker_id`).
    #[must_use]
    pub fn new(store: StoreClient, service: &str, worker_id: String) -> Self {
        Self {
            store,
            source: format!("{service}/{worker_id}"),
            worker_id,
        }
    }

    /// This worker's name.
    #[must_use]
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Records one recipient's state (`SetRecipientResult`).
    ///
    /// # Errors
    /// The store's status.
    pub async fn set_result(
        &self,
        job_id: u64,
        index: u32,
        state: pb::RecipientState,
        detail: String,
    ) -> Result<(), tonic::Status> {
        self.store
            .queue
            .clone()
            .set_recipient_result(pb::SetRecipientResultRequest {
                job_id,
                worker_id: self.worker_id.clone(),
                index,
                state: state as i32,
                detail,
            })
            .await?;
        Ok(())
    }

    /// Adds an entry to the message's event log (`AddEvent`).
    ///
    /// # Errors
    /// The store's status.
    pub async fn event(
        &self,
        job_id: u64,
        kind: pb::EventKind,
        recipient: &str,
        detail: String,
        attributes: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        self.store
            .queue
            .clone()
            .add_event(pb::AddEventRequest {
                job_id,
                kind: kind as i32,
                source: self.source.clone(),
                recipient: recipient.to_string(),
                detail,
                attributes,
            })
            .await?;
        Ok(())
    }

    /// Ends the lease (`FinishJob`): done, or retry at `retry_at`.
    ///
    /// # Errors
    /// The store's status.
    pub async fn finish(
        &self,
        job_id: u64,
        outcome: pb::FinishOutcome,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
        reason: String,
    ) -> Result<(), tonic::Status> {
        self.store
            .queue
            .clone()
            .finish_job(pb::FinishJobRequest {
                job_id,
                worker_id: self.worker_id.clone(),
                outcome: outcome as i32,
                retry_at: retry_at.map(timestamp),
                reason,
            })
            .await?;
        Ok(())
    }

    /// Reads the job's message (`ReadMessage`): its first `length` bytes,
    /// or all of it when `length` is 0. More than `limit` bytes is an error
    /// (`FailedPrecondition`, "message too large"). `capacity`: bytes to
    /// reserve up front.
    ///
    /// # Errors
    /// The store's status, or the message is over `limit`.
    pub async fn read_message(
        &self,
        job_id: u64,
        length: u64,
        limit: u64,
        capacity: usize,
    ) -> Result<Vec<u8>, tonic::Status> {
        let mut s = self
            .store
            .queue
            .clone()
            .read_message(pb::ReadMessageRequest {
                job_id,
                offset: 0,
                length,
            })
            .await?
            .into_inner();
        let mut raw = Vec::with_capacity(capacity);
        while let Some(c) = s.message().await? {
            raw.extend_from_slice(&c.data);
            if raw.len() as u64 > limit {
                return Err(tonic::Status::failed_precondition("message too large"));
            }
        }
        Ok(raw)
    }
}
