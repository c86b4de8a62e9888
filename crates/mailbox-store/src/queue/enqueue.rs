//! Enqueue: a new job with its recipients, idempotent per key; relayed
//! jobs reuse their parent's stored message.

use mailstore_api::pb;
use sqlx::PgConnection;
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::put_blob;
use crate::db::{FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::messages::{analyse, collect_body};
use crate::notify::QUEUE_CHANNEL;
use crate::text::SearchText;
use crate::wire::{from_pb_ts, id};

use super::events::event;
use super::{QueueSvc, check_lease, kind_of};

const MAX_RECIPIENTS: usize = 10_000;

/// Validates the envelope of a new job.
fn check_envelope(h: &pb::EnqueueHeader) -> Result<()> {
    if h.recipients.is_empty() || h.recipients.len() > MAX_RECIPIENTS {
        return Err(StoreError::invalid("1 to 10000 recipients required"));
    }
    if h.idempotency_key.len() > 256 || h.mail_from.len() > 1024 {
        return Err(StoreError::invalid("envelope field too long"));
    }
    if h.received.len() > 32
        || h.received
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 2048)
    {
        return Err(StoreError::invalid("received facts too long"));
    }
    for r in &h.recipients {
        if r.address.is_empty() || r.address.len() > 1024 || r.orcpt.len() > 1024 {
            return Err(StoreError::invalid("invalid recipient"));
        }
    }
    Ok(())
}

/// The destination domain of an outbound job (jobs are grouped by it).
fn destination(h: &pb::EnqueueHeader) -> String {
    h.recipients
        .first()
        .and_then(|r| r.address.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

async fn existing_job(conn: &mut PgConnection, kind: i16, key: &str) -> Result<Option<(i64, i64)>> {
    if key.is_empty() {
        return Ok(None);
    }
    let row = sqlx::query!(
        "SELECT id, size FROM queue_jobs WHERE kind = $1 AND idempotency_key = $2",
        kind,
        key
    )
    .fetch_optional(conn)
    .await?;
    row.map(|r| Ok((r.id, r.size))).transpose()
}

/// The stored message a job refers to, with what was computed from it once.
struct Body<'a> {
    hash: &'a [u8],
    size: i64,
    structure: &'a [u8],
    sent_date: Option<chrono::DateTime<chrono::Utc>>,
    crlf_size: i64,
    message_id: &'a str,
    /// The Enqueue call's W3C `traceparent` ("" when none).
    traceparent: &'a str,
    /// The message's searchable text, for local delivery to derive each
    /// copy's from (`queue::deliver`); none for a relay's child job.
    text: Option<&'a SearchText>,
}

/// Inserts a job row, its recipients and the QUEUED event; notifies workers.
async fn insert_job(
    conn: &mut PgConnection,
    h: &pb::EnqueueHeader,
    kind: i16,
    body: &Body<'_>,
) -> Result<i64> {
    let not_before = h
        .not_before
        .as_ref()
        .and_then(from_pb_ts)
        .unwrap_or_else(chrono::Utc::now);
    let key = (!h.idempotency_key.is_empty()).then_some(h.idempotency_key.as_str());
    let parent = (h.parent_job_id != 0).then(|| i64::try_from(h.parent_job_id).unwrap_or(0));
    let about = (h.about_job_id != 0).then(|| i64::try_from(h.about_job_id).unwrap_or(0));
    let dest = if kind == 2 {
        destination(h)
    } else {
        String::new()
    };
    // One header line's worth, no control characters (it goes on the wire).
    let delivered_to: String = h
        .delivered_to
        .chars()
        .filter(|c| !c.is_control())
        .take(998 - "Delivered-To: ".len())
        .collect();
    let job_id: i64 = sqlx::query_scalar!(
        "INSERT INTO queue_jobs (kind, idempotency_key, blob_hash, size, structure, mail_from, envid, ret, body_type, \
         smtputf8, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
         sent_date, crlf_size, requiretls, sign, delivered_to, message_id, about_job_id, traceparent, \
         text_headers, text_body, text_complete) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 $20 OR COALESCE((SELECT p.requiretls FROM queue_jobs p WHERE p.id = $15), false), \
                 $21 AND COALESCE((SELECT p.sign FROM queue_jobs p WHERE p.id = $15), true), $22, $23, $24, $25, \
                 $26, $27, $28) RETURNING id",
        kind,
        key,
        body.hash,
        body.size,
        body.structure,
        &h.mail_from,
        &h.envid,
        &h.ret,
        &h.body_type,
        h.smtputf8,
        &h.client_ip,
        &h.helo,
        &h.authenticated_user,
        &h.session_id,
        parent,
        &dest,
        not_before,
        body.sent_date,
        body.crlf_size,
        h.requiretls,
        h.sign,
        &delivered_to,
        body.message_id,
        about,
        body.traceparent,
        body.text.map(|t| t.headers.as_str()),
        body.text.map(|t| t.body.as_str()),
        body.text.is_some_and(|t| t.complete)
    )
    .fetch_one(&mut *conn)
    .await?;
    if !h.received.is_empty() {
        // Who took the message, and what it knew then (mailctl trace).
        let source = h.received.get("service").map_or("receiver", String::as_str);
        let detail = format!("from {} [{}]", h.helo, h.client_ip);
        sqlx::query!(
            "INSERT INTO events (job_id, kind, source, recipient, detail, attributes) VALUES ($1, $2, $3, '', $4, $5::text::jsonb)",
            job_id,
            pb::EventKind::Received as i16,
            source,
            &detail,
            serde_json::to_string(&h.received).unwrap_or_else(|_| "{}".into())
        )
        .execute(&mut *conn)
        .await?;
    }
    let addrs: Vec<String> = h.recipients.iter().map(|r| r.address.clone()).collect();
    let orcpts: Vec<String> = h.recipients.iter().map(|r| r.orcpt.clone()).collect();
    let notify: Vec<i32> = h
        .recipients
        .iter()
        .map(|r| i32::try_from(r.notify).unwrap_or(0))
        .collect();
    sqlx::query!(
        "INSERT INTO queue_recipients (job_id, idx, address, orcpt, notify) \
         SELECT $1, (o.n - 1)::int, o.a, o.o, o.f FROM unnest($2::text[], $3::text[], $4::int[]) WITH ORDINALITY AS o(a, o, f, n)",
        job_id,
        &addrs,
        &orcpts,
        &notify
    )
    .execute(&mut *conn)
    .await?;
    let detail = format!(
        "from=<{}> rcpts={} size={} ip={} sid={}",
        h.mail_from,
        h.recipients.len(),
        body.size,
        h.client_ip,
        h.session_id
    );
    event(
        conn,
        job_id,
        pb::EventKind::Queued,
        "mailbox-store",
        "",
        &detail,
    )
    .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, kind.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(job_id)
}

pub(super) async fn enqueue(
    svc: &QueueSvc,
    req: Request<Streaming<pb::EnqueueRequest>>,
) -> Result<Response<pb::EnqueueResponse>, Status> {
    let started = std::time::Instant::now();
    let max = svc.store.config.max_message_size;
    let traceparent = service_kit::otel::request_traceparent(&req);
    let (h, data) = collect_body(
        req.into_inner(),
        max,
        |m: pb::EnqueueRequest| match m.part? {
            pb::enqueue_request::Part::Header(h) => Some(Ok(h)),
            pb::enqueue_request::Part::Data(d) => Some(Err(d)),
        },
        |h: &pb::EnqueueHeader| h.size,
    )
    .await?;
    check_envelope(&h)?;
    let kind = kind_of(h.kind)?;
    let pool = svc.pool();
    let resp = if h.parent_job_id != 0 {
        // Reuse the parent's stored message; mark parent recipients relayed.
        let parent = id(h.parent_job_id, "job")?;
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        if let Some((job_id, size)) = existing_job(&mut tx, kind, &h.idempotency_key).await? {
            return Ok(Response::new(pb::EnqueueResponse {
                job_id: job_id as u64,
                duplicate: true,
                size: size as u64,
            }));
        }
        check_lease(&mut tx, parent, &h.parent_worker_id).await?;
        let p = sqlx::query!(
            "SELECT blob_hash, size, structure, sent_date, crlf_size, message_id FROM queue_jobs WHERE id = $1",
            parent
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let hash: Vec<u8> = p.blob_hash;
        let size: i64 = p.size;
        let st: Vec<u8> = p.structure;
        let body = Body {
            hash: &hash,
            size,
            structure: &st,
            sent_date: p.sent_date,
            crlf_size: p.crlf_size,
            message_id: &p.message_id,
            traceparent: &traceparent,
            text: None,
        };
        let job_id = insert_job(&mut tx, &h, kind, &body).await?;
        let idxs: Vec<i32> = h
            .parent_recipient_indexes
            .iter()
            .map(|i| i32::try_from(*i).unwrap_or(-1))
            .collect();
        sqlx::query!(
            "UPDATE queue_recipients SET state = $3, detail = $4, updated_at = now() WHERE job_id = $1 AND idx = ANY($2)",
            parent,
            &idxs,
            pb::RecipientState::Relayed as i16,
            format!("relayed as job {job_id}")
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        pb::EnqueueResponse {
            job_id: job_id as u64,
            duplicate: false,
            size: size as u64,
        }
    } else {
        let size = data.len() as i64;
        let a = analyse(data).await?;
        let body = Body {
            hash: &a.hash,
            size,
            structure: &a.structure,
            sent_date: a.sent_date,
            crlf_size: a.crlf_size,
            message_id: &a.message_id,
            traceparent: &traceparent,
            // Kept with the job, not indexed: only the delivered copies are
            // searched (migration 0017). Only inbound jobs are delivered
            // locally; an outbound one (smtp-out's) needs none.
            text: (kind == 1).then_some(&a.text),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = pool.begin().await.map_err(StoreError::from)?;
            if let Some((job_id, size)) = existing_job(&mut tx, kind, &h.idempotency_key).await? {
                break pb::EnqueueResponse {
                    job_id: job_id as u64,
                    duplicate: true,
                    size: size as u64,
                };
            }
            put_blob(&mut tx, &a.hash, &a.data).await?;
            match insert_job(&mut tx, &h, kind, &body).await {
                Ok(job_id) => match tx.commit().await {
                    Ok(()) => {
                        break pb::EnqueueResponse {
                            job_id: job_id as u64,
                            duplicate: false,
                            size: size as u64,
                        };
                    }
                    // A concurrent enqueue with the same key won the race.
                    Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) && attempt < 3 => {
                        continue;
                    }
                    Err(e) => return Err(StoreError::from(e).into()),
                },
                Err(StoreError::Internal(e))
                    if attempt < 3
                        && (e.starts_with(UNIQUE_VIOLATION)
                            || e.starts_with(FOREIGN_KEY_VIOLATION)) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    metrics::counter!("store_enqueued_total").increment(1);
    metrics::histogram!("store_enqueue_seconds").record(started.elapsed().as_secs_f64());
    Ok(Response::new(resp))
}
