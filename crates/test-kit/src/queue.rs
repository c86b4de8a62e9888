//! The queue as delivery and smtp-in use it: enqueue, lease, deliver.

use mailstore_api::{StoreClient, pb};

/// Enqueues a message into the inbound queue.
///
/// # Errors
/// The store's status.
pub async fn enqueue(
    client: &StoreClient,
    key: &str,
    from: &str,
    to: &[&str],
    raw: &[u8],
) -> Result<pb::EnqueueResponse, tonic::Status> {
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Inbound as i32,
        idempotency_key: key.into(),
        mail_from: from.into(),
        recipients: to
            .iter()
            .map(|a| pb::Recipient {
                address: (*a).to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    enqueue_header(client, header, raw).await
}

/// Enqueues `raw` under any `header` (its `size` is filled in), in 256 KiB
/// chunks, as smtp-in does.
///
/// # Errors
/// The store's status.
pub async fn enqueue_header(
    client: &StoreClient,
    header: pb::EnqueueHeader,
    raw: &[u8],
) -> Result<pb::EnqueueResponse, tonic::Status> {
    let header = pb::EnqueueHeader {
        size: raw.len() as u64,
        ..header
    };
    let mut msgs = vec![pb::EnqueueRequest {
        part: Some(pb::enqueue_request::Part::Header(header)),
    }];
    for c in raw.chunks(256 * 1024) {
        msgs.push(pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Data(c.to_vec())),
        });
    }
    let mut q = client.queue.clone();
    q.enqueue(futures::stream::iter(msgs))
        .await
        .map(tonic::Response::into_inner)
}

/// Leases up to `max` inbound jobs as `worker` (a 60 s lease, no waiting),
/// as delivery does.
///
/// # Errors
/// The store's status.
pub async fn lease_inbound(
    client: &StoreClient,
    worker: &str,
    max: u32,
) -> Result<pb::LeaseResponse, tonic::Status> {
    let mut q = client.queue.clone();
    q.lease(pb::LeaseRequest {
        kind: pb::QueueKind::Inbound as i32,
        worker_id: worker.into(),
        max_jobs: max,
        lease_ttl_ms: 60_000,
        wait_ms: 0,
        max_attempts: 0,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The `DeliverFromQueue` delivery makes for recipient `index` of `job`
/// into `user`'s INBOX as `worker`, with `prefix`: quota enforced, the
/// recipient completed, the job left to `FinishJob` (struct update syntax
/// changes the rest).
#[must_use]
pub fn deliver_request(
    job: u64,
    index: u32,
    worker: &str,
    user: u64,
    prefix: &[u8],
) -> pb::DeliverFromQueueRequest {
    pb::DeliverFromQueueRequest {
        job_id: job,
        recipient_index: index,
        worker_id: worker.into(),
        user_id: user,
        mailbox: "INBOX".into(),
        prefix: prefix.to_vec(),
        flags: vec![],
        enforce_quota: true,
        complete_recipient: true,
        finish_job: false,
    }
}
