//! Queue service: the inbound and outbound mail queues, leases, per-recipient
//! results, and the per-message event log. Also local delivery from the
//! queue into a mailbox (exactly once per job and user).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailstore_api::pb;
use prost::Message as _;
use sqlx::{PgConnection, PgPool, Row};
use tonic::{Request, Response, Status, Streaming};

use crate::accounts::timestamp;
use crate::error::{Result, StoreError, sqlstate};
use crate::mailboxes::{
    NewMessage, analyse, collect_body, collect_garbage, id, insert_message, mailbox_id_by_name,
    put_blob, stream_blob,
};
use crate::notify::QUEUE_CHANNEL;
use crate::{Store, flags, names, structure};

pub const STATE_READY: i16 = 1;
pub const STATE_DONE: i16 = 2;
pub const STATE_QUARANTINED: i16 = 3;
const DEFAULT_MAX_ATTEMPTS: i32 = 10;
const MAX_RECIPIENTS: usize = 10_000;
const MAX_LEASE_BATCH: u32 = 500;
const MAX_WAIT: Duration = Duration::from_secs(60);

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

fn ts_opt(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<prost_types::Timestamp> {
    t.and_then(timestamp)
}

fn from_pb_ts(t: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

/// Records an event inside a transaction.
pub(crate) async fn event(
    conn: &mut PgConnection,
    job_id: i64,
    kind: pb::EventKind,
    source: &str,
    recipient: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (job_id, kind, source, recipient, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job_id)
    .bind(kind as i16)
    .bind(source)
    .bind(recipient)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checks that `worker` holds the lease on a job, locking the job row.
async fn check_lease(conn: &mut PgConnection, job_id: i64, worker: &str) -> Result<()> {
    let owner: Option<Option<String>> = sqlx::query_scalar(
        "SELECT lease_owner FROM queue_jobs WHERE id = $1 AND state = 1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?;
    match owner {
        None => Err(StoreError::NotFound("job")),
        Some(Some(o)) if o == worker => Ok(()),
        Some(_) => Err(StoreError::precondition("lease not held by this worker")),
    }
}

async fn job_recipients(pool: &PgPool, ids: &[i64]) -> Result<HashMap<i64, Vec<pb::JobRecipient>>> {
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

const JOB_COLS: &str = "id, kind, state, mail_from, envid, ret, body_type, smtputf8, size, attempts, created_at, \
    lease_expires_at, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
    lease_owner, last_error";

fn job_row(r: &sqlx::postgres::PgRow, recipients: Vec<pb::JobRecipient>) -> Result<pb::Job> {
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

fn summary_row(r: &sqlx::postgres::PgRow, recipients: u32) -> Result<pb::JobSummary> {
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

/// Validates the envelope of a new job.
fn check_envelope(h: &pb::EnqueueHeader) -> Result<()> {
    if h.recipients.is_empty() || h.recipients.len() > MAX_RECIPIENTS {
        return Err(StoreError::invalid("1 to 10000 recipients required"));
    }
    if h.idempotency_key.len() > 256 || h.mail_from.len() > 1024 {
        return Err(StoreError::invalid("envelope field too long"));
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
    let row =
        sqlx::query("SELECT id, size FROM queue_jobs WHERE kind = $1 AND idempotency_key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(conn)
            .await?;
    row.map(|r| Ok((r.try_get("id")?, r.try_get("size")?)))
        .transpose()
}

/// Inserts a job row, its recipients and the QUEUED event; notifies workers.
/// The stored message a job refers to, with what was computed from it once.
struct Body<'a> {
    hash: &'a [u8],
    size: i64,
    structure: &'a [u8],
    sent_date: Option<chrono::DateTime<chrono::Utc>>,
    crlf_size: i64,
}

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
    let dest = if kind == 2 {
        destination(h)
    } else {
        String::new()
    };
    let job_id: i64 = sqlx::query_scalar(
        "INSERT INTO queue_jobs (kind, idempotency_key, blob_hash, size, structure, mail_from, envid, ret, body_type, \
         smtputf8, client_ip, helo, authenticated_user, session_id, parent_job_id, destination, next_attempt_at, \
         sent_date, crlf_size) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING id",
    )
    .bind(kind)
    .bind(key)
    .bind(body.hash)
    .bind(body.size)
    .bind(body.structure)
    .bind(&h.mail_from)
    .bind(&h.envid)
    .bind(&h.ret)
    .bind(&h.body_type)
    .bind(h.smtputf8)
    .bind(&h.client_ip)
    .bind(&h.helo)
    .bind(&h.authenticated_user)
    .bind(&h.session_id)
    .bind(parent)
    .bind(&dest)
    .bind(not_before)
    .bind(body.sent_date)
    .bind(body.crlf_size)
    .fetch_one(&mut *conn)
    .await?;
    let addrs: Vec<&str> = h.recipients.iter().map(|r| r.address.as_str()).collect();
    let orcpts: Vec<&str> = h.recipients.iter().map(|r| r.orcpt.as_str()).collect();
    let notify: Vec<i32> = h
        .recipients
        .iter()
        .map(|r| i32::try_from(r.notify).unwrap_or(0))
        .collect();
    sqlx::query(
        "INSERT INTO queue_recipients (job_id, idx, address, orcpt, notify) \
         SELECT $1, (o.n - 1)::int, o.a, o.o, o.f FROM unnest($2::text[], $3::text[], $4::int[]) WITH ORDINALITY AS o(a, o, f, n)",
    )
    .bind(job_id)
    .bind(&addrs)
    .bind(&orcpts)
    .bind(&notify)
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
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(QUEUE_CHANNEL)
        .bind(kind.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(job_id)
}

/// Local delivery of a queued message into a mailbox, exactly once per
/// (job, user): the append, the delivery record and (when asked) the
/// recipient's DELIVERED mark commit together.
pub async fn deliver(
    store: &Store,
    req: pb::DeliverFromQueueRequest,
) -> Result<pb::AppendResponse> {
    let job_id = id(req.job_id, "job")?;
    let user_id = id(req.user_id, "user")?;
    let idx = i32::try_from(req.recipient_index).map_err(|_| StoreError::NotFound("recipient"))?;
    if req.prefix.len() > 64 * 1024 {
        return Err(StoreError::invalid("prefix too long"));
    }
    let fl = flags::parse(&req.flags).map_err(StoreError::invalid)?;
    let pool = &store.pool;
    let mut tx = pool.begin().await?;
    check_lease(&mut tx, job_id, &req.worker_id).await?;
    let rcpt = sqlx::query(
        "SELECT address FROM queue_recipients WHERE job_id = $1 AND idx = $2 FOR UPDATE",
    )
    .bind(job_id)
    .bind(idx)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound("recipient"))?;
    let done = sqlx::query(
        "SELECT mailbox_id, uid, uidvalidity, modseq FROM queue_deliveries WHERE job_id = $1 AND user_id = $2",
    )
    .bind(job_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(d) = done {
        let r = pb::AppendResponse {
            mailbox_id: d.try_get::<i64, _>("mailbox_id")? as u64,
            uidvalidity: d.try_get::<i64, _>("uidvalidity")? as u32,
            uid: d.try_get::<i64, _>("uid")? as u32,
            modseq: d.try_get::<i64, _>("modseq")? as u64,
            duplicate: true,
            size: 0,
        };
        if req.complete_recipient {
            mark_delivered(&mut tx, job_id, idx, &r, "already delivered").await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        return Ok(r);
    }
    let address: String = rcpt.try_get("address")?;
    let job = sqlx::query(
        "SELECT blob_hash, size, structure, sent_date, crlf_size FROM queue_jobs WHERE id = $1",
    )
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    let parent_hash: Vec<u8> = job.try_get("blob_hash")?;
    let parent_size: i64 = job.try_get("size")?;
    let mut st = pb::MessageStructure::decode(job.try_get::<Vec<u8>, _>("structure")?.as_slice())
        .map_err(|e| StoreError::Internal(format!("stored structure: {e}")))?;
    let size = parent_size + req.prefix.len() as i64;
    if req.enforce_quota {
        let (quota, used): (i64, i64) =
            sqlx::query_as("SELECT quota_bytes, used_bytes FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("user"))?;
        if quota > 0 && used + size > quota {
            return Err(StoreError::OverQuota);
        }
    }
    let wanted = if req.mailbox.is_empty() {
        "INBOX".to_string()
    } else {
        names::mailbox(&req.mailbox).unwrap_or_else(|_| "INBOX".into())
    };
    let mailbox_id = match mailbox_id_by_name(&mut tx, user_id, &wanted).await? {
        Some(m) => m,
        None => mailbox_id_by_name(&mut tx, user_id, "INBOX")
            .await?
            .ok_or(StoreError::NotFound("mailbox"))?,
    };
    // The new message = prefix + queued message, built and hashed inside
    // PostgreSQL: the body never travels back and forth.
    let hash: Vec<u8> = if req.prefix.is_empty() {
        parent_hash
    } else {
        let h: Vec<u8> = sqlx::query_scalar(
            "WITH src AS (SELECT $1::bytea || data AS d FROM blobs WHERE hash = $2), \
             ins AS (INSERT INTO blobs (hash, size, data) SELECT sha256(d), length(d), d FROM src ON CONFLICT (hash) DO NOTHING) \
             SELECT sha256(d) FROM src",
        )
        .bind(&req.prefix)
        .bind(&parent_hash)
        .fetch_one(&mut *tx)
        .await?;
        h
    };
    structure::shift(&mut st, req.prefix.len() as u64);
    let parent_crlf: i64 = job.try_get("crlf_size")?;
    let msg = NewMessage {
        hash: &hash,
        size,
        internal_date: chrono::Utc::now(),
        sent_date: job.try_get("sent_date")?,
        flags: fl,
        structure: st.encode_to_vec(),
        // The prefix is CRLF-clean, so the CRLF size just adds up.
        crlf_size: if parent_crlf > 0 {
            parent_crlf + req.prefix.len() as i64
        } else {
            0
        },
    };
    let resp = insert_message(&mut tx, mailbox_id, &msg).await?;
    sqlx::query(
        "INSERT INTO queue_deliveries (job_id, user_id, mailbox_id, uid, uidvalidity, modseq) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job_id)
    .bind(user_id)
    .bind(mailbox_id)
    .bind(i64::from(resp.uid))
    .bind(i64::from(resp.uidvalidity))
    .bind(resp.modseq as i64)
    .execute(&mut *tx)
    .await?;
    if req.complete_recipient {
        mark_delivered(
            &mut tx,
            job_id,
            idx,
            &resp,
            &format!("delivered to {wanted}"),
        )
        .await?;
    }
    event(
        &mut tx,
        job_id,
        pb::EventKind::Delivered,
        &format!("delivery/{}", req.worker_id),
        &address,
        &format!("mailbox={wanted} uid={}", resp.uid),
    )
    .await?;
    tx.commit().await?;
    Ok(resp)
}

async fn mark_delivered(
    conn: &mut PgConnection,
    job_id: i64,
    idx: i32,
    r: &pb::AppendResponse,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE queue_recipients SET state = $3, detail = $4, attempts = attempts + 1, updated_at = now(), \
         delivered_mailbox_id = $5, delivered_uid = $6, delivered_uidvalidity = $7, delivered_modseq = $8 \
         WHERE job_id = $1 AND idx = $2",
    )
    .bind(job_id)
    .bind(idx)
    .bind(pb::RecipientState::Delivered as i16)
    .bind(detail)
    .bind(r.mailbox_id as i64)
    .bind(i64::from(r.uid))
    .bind(i64::from(r.uidvalidity))
    .bind(r.modseq as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Periodic housekeeping: old auth failures, expired locks, finished jobs
/// past retention, and the blobs they leave behind.
pub async fn janitor(store: Arc<Store>, shutdown: service_kit::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let pool = &store.pool;
        let _ = sqlx::query("DELETE FROM auth_failures WHERE at < now() - interval '1 hour'")
            .execute(pool)
            .await;
        let _ = sqlx::query("DELETE FROM locks WHERE expires_at < now() - interval '1 hour'")
            .execute(pool)
            .await;
        let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM queue_jobs WHERE state = 2 AND updated_at < now() - interval '7 days' RETURNING blob_hash",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        collect_garbage(pool, hashes).await;
    }
}

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueSvc {
    async fn enqueue(
        &self,
        req: Request<Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let started = std::time::Instant::now();
        let max = self.store.config.max_message_size;
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
        let pool = self.pool();
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
            let p = sqlx::query(
                "SELECT blob_hash, size, structure, sent_date, crlf_size FROM queue_jobs WHERE id = $1",
            )
                .bind(parent)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            let hash: Vec<u8> = p.try_get("blob_hash").map_err(StoreError::from)?;
            let size: i64 = p.try_get("size").map_err(StoreError::from)?;
            let st: Vec<u8> = p.try_get("structure").map_err(StoreError::from)?;
            let body = Body {
                hash: &hash,
                size,
                structure: &st,
                sent_date: p.try_get("sent_date").map_err(StoreError::from)?,
                crlf_size: p.try_get("crlf_size").map_err(StoreError::from)?,
            };
            let job_id = insert_job(&mut tx, &h, kind, &body).await?;
            let idxs: Vec<i32> = h
                .parent_recipient_indexes
                .iter()
                .map(|i| i32::try_from(*i).unwrap_or(-1))
                .collect();
            sqlx::query(
                "UPDATE queue_recipients SET state = $3, detail = $4, updated_at = now() WHERE job_id = $1 AND idx = ANY($2)",
            )
            .bind(parent)
            .bind(&idxs)
            .bind(pb::RecipientState::Relayed as i16)
            .bind(format!("relayed as job {job_id}"))
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
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = pool.begin().await.map_err(StoreError::from)?;
                if let Some((job_id, size)) =
                    existing_job(&mut tx, kind, &h.idempotency_key).await?
                {
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
                        Err(e) if sqlstate(&e).as_deref() == Some("23505") && attempt < 3 => {
                            continue;
                        }
                        Err(e) => return Err(StoreError::from(e).into()),
                    },
                    Err(StoreError::Internal(e))
                        if attempt < 3 && (e.starts_with("23505") || e.starts_with("23503")) =>
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

    async fn lease(
        &self,
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
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        let mut wake = self.store.hub.subscribe_queue(i32::from(kind));
        loop {
            wake.borrow_and_update();
            let jobs = lease_once(self.pool(), kind, &req.worker_id, n, ttl, max_attempts).await?;
            if !jobs.is_empty() {
                return Ok(Response::new(pb::LeaseResponse { jobs }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::LeaseResponse { jobs }));
            }
            // Sleep until a NOTIFY, the next scheduled retry or the deadline.
            let next: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM (min(next_attempt_at) - now()))::float8 FROM queue_jobs WHERE kind = $1 AND state = 1",
            )
            .bind(kind)
            .fetch_one(self.pool())
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

    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let req = req.into_inner();
        let ids: Vec<i64> = req
            .job_ids
            .iter()
            .filter_map(|i| i64::try_from(*i).ok())
            .collect();
        let ttl = i64::try_from(req.lease_ttl_ms.clamp(1_000, 3_600_000)).unwrap_or(60_000);
        let renewed: Vec<i64> = sqlx::query_scalar(
            "UPDATE queue_jobs SET lease_expires_at = now() + $3 * interval '1 millisecond', next_attempt_at = now() + $3 * interval '1 millisecond' \
             WHERE id = ANY($1) AND lease_owner = $2 AND state = 1 RETURNING id",
        )
        .bind(&ids)
        .bind(&req.worker_id)
        .bind(ttl)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(Response::new(pb::RenewLeaseResponse {
            renewed: renewed.iter().map(|i| *i as u64).collect(),
        }))
    }

    type ReadMessageStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BodyChunk, Status>> + Send>>;

    async fn read_message(
        &self,
        req: Request<pb::ReadMessageRequest>,
    ) -> Result<Response<Self::ReadMessageStream>, Status> {
        let req = req.into_inner();
        let job_id = id(req.job_id, "job")?;
        let hash: Vec<u8> = sqlx::query_scalar("SELECT blob_hash FROM queue_jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::from)?
            .ok_or(StoreError::NotFound("job"))?;
        Ok(Response::new(stream_blob(
            self.pool().clone(),
            hash,
            req.offset,
            req.length,
        )))
    }

    async fn set_recipient_result(
        &self,
        req: Request<pb::SetRecipientResultRequest>,
    ) -> Result<Response<pb::SetRecipientResultResponse>, Status> {
        let req = req.into_inner();
        let job_id = id(req.job_id, "job")?;
        let state = pb::RecipientState::try_from(req.state)
            .map_err(|_| StoreError::invalid("recipient state"))?;
        if state == pb::RecipientState::Unspecified {
            return Err(StoreError::invalid("recipient state").into());
        }
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        check_lease(&mut tx, job_id, &req.worker_id).await?;
        let detail: String = req.detail.chars().take(2_000).collect();
        let address: Option<String> = sqlx::query_scalar(
            "UPDATE queue_recipients SET state = $3, detail = $4, attempts = attempts + 1, updated_at = now() \
             WHERE job_id = $1 AND idx = $2 RETURNING address",
        )
        .bind(job_id)
        .bind(i32::try_from(req.index).unwrap_or(-1))
        .bind(state as i16)
        .bind(&detail)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let address = address.ok_or(StoreError::NotFound("recipient"))?;
        let kind = match state {
            pb::RecipientState::Delivered => pb::EventKind::Delivered,
            pb::RecipientState::Failed => pb::EventKind::Failed,
            pb::RecipientState::Deferred => pb::EventKind::Deferred,
            pb::RecipientState::Relayed => pb::EventKind::Relayed,
            _ => pb::EventKind::Attempt,
        };
        event(&mut tx, job_id, kind, &req.worker_id, &address, &detail).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(pb::SetRecipientResultResponse {}))
    }

    async fn finish_job(
        &self,
        req: Request<pb::FinishJobRequest>,
    ) -> Result<Response<pb::FinishJobResponse>, Status> {
        let req = req.into_inner();
        let job_id = id(req.job_id, "job")?;
        let reason: String = req.reason.chars().take(2_000).collect();
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        check_lease(&mut tx, job_id, &req.worker_id).await?;
        match pb::FinishOutcome::try_from(req.outcome) {
            Ok(pb::FinishOutcome::Done) => {
                sqlx::query(
                    "UPDATE queue_recipients SET state = $2, updated_at = now() WHERE job_id = $1 AND state = 1",
                )
                .bind(job_id)
                .bind(pb::RecipientState::Delivered as i16)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                sqlx::query(
                    "UPDATE queue_jobs SET state = 2, lease_owner = NULL, lease_expires_at = NULL, open_leases = 0, \
                     last_error = $2, updated_at = now() WHERE id = $1",
                )
                .bind(job_id)
                .bind(&reason)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            Ok(pb::FinishOutcome::Retry) => {
                let at = req
                    .retry_at
                    .as_ref()
                    .and_then(from_pb_ts)
                    .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::minutes(5));
                let kind: i16 = sqlx::query_scalar(
                    "UPDATE queue_jobs SET lease_owner = NULL, lease_expires_at = NULL, open_leases = 0, next_attempt_at = $2, \
                     last_error = $3, updated_at = now() WHERE id = $1 RETURNING kind",
                )
                .bind(job_id)
                .bind(at)
                .bind(&reason)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                // Waiting Lease calls recompute their wake-up time: this
                // retry may be due before anything they knew of.
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(QUEUE_CHANNEL)
                    .bind(kind.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                event(
                    &mut tx,
                    job_id,
                    pb::EventKind::Deferred,
                    &req.worker_id,
                    "",
                    &format!("retry at {at}: {reason}"),
                )
                .await?;
            }
            Ok(pb::FinishOutcome::Quarantine) => {
                sqlx::query(
                    "UPDATE queue_jobs SET state = 3, lease_owner = NULL, lease_expires_at = NULL, last_error = $2, updated_at = now() WHERE id = $1",
                )
                .bind(job_id)
                .bind(&reason)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                event(
                    &mut tx,
                    job_id,
                    pb::EventKind::Quarantined,
                    &req.worker_id,
                    "",
                    &reason,
                )
                .await?;
            }
            _ => return Err(StoreError::invalid("outcome required").into()),
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(pb::FinishJobResponse {}))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = req.into_inner();
        let kind: i16 = if req.kind == 0 { 0 } else { kind_of(req.kind)? };
        let state = i16::try_from(req.state).unwrap_or(0);
        let limit = i64::from(if req.limit == 0 {
            100
        } else {
            req.limit.min(10_000)
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLS}, (SELECT count(*) FROM queue_recipients r WHERE r.job_id = q.id) AS rcpts FROM queue_jobs q \
             WHERE ($1 = 0 OR kind = $1) AND ($2 = 0 OR state = $2) AND id > $3 ORDER BY id LIMIT $4"
        )))
        .bind(kind)
        .bind(state)
        .bind(i64::try_from(req.after_id).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        let jobs = rows
            .iter()
            .map(|r| summary_row(r, r.try_get::<i64, _>("rcpts").unwrap_or(0) as u32))
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobDetail>, Status> {
        let job_id = id(req.get_ref().job_id, "job")?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLS} FROM queue_jobs WHERE id = $1"
        )))
        .bind(job_id)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::NotFound("job"))?;
        let mut rcpts = job_recipients(self.pool(), &[job_id]).await?;
        let rcpts = rcpts.remove(&job_id).unwrap_or_default();
        let summary = summary_row(&row, rcpts.len() as u32)?;
        let job = job_row(&row, rcpts)?;
        let events = list_events(self.pool(), job_id).await?;
        Ok(Response::new(pb::JobDetail {
            summary: Some(summary),
            job: Some(job),
            events,
        }))
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let job_id = id(req.get_ref().job_id, "job")?;
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let kind: Option<i16> = sqlx::query_scalar(
            "UPDATE queue_jobs SET state = 1, next_attempt_at = now(), open_leases = 0, lease_owner = NULL, lease_expires_at = NULL, \
             updated_at = now() WHERE id = $1 AND state IN (1, 3) RETURNING kind",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let kind = kind.ok_or(StoreError::NotFound("retryable job"))?;
        event(
            &mut tx,
            job_id,
            pb::EventKind::Retried,
            "mailctl",
            "",
            "retry requested",
        )
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(QUEUE_CHANNEL)
            .bind(kind.to_string())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(pb::RetryJobResponse {}))
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let job_id = id(req.get_ref().job_id, "job")?;
        let hash: Option<Vec<u8>> =
            sqlx::query_scalar("DELETE FROM queue_jobs WHERE id = $1 RETURNING blob_hash")
                .bind(job_id)
                .fetch_optional(self.pool())
                .await
                .map_err(|e| {
                    if sqlstate(&e).as_deref() == Some("23503") {
                        StoreError::precondition("job is referenced")
                    } else {
                        e.into()
                    }
                })?;
        let hash = hash.ok_or(StoreError::NotFound("job"))?;
        collect_garbage(self.pool(), vec![hash]).await;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn add_event(
        &self,
        req: Request<pb::AddEventRequest>,
    ) -> Result<Response<pb::AddEventResponse>, Status> {
        let req = req.into_inner();
        let job_id = id(req.job_id, "job")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (job_id, kind, source, recipient, detail, attributes) VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING id",
        )
        .bind(job_id)
        .bind(i16::try_from(req.kind).unwrap_or(0))
        .bind(&req.source)
        .bind(&req.recipient)
        .bind(&req.detail)
        .bind(serde_json::to_string(&req.attributes).unwrap_or_else(|_| "{}".into()))
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(Response::new(pb::AddEventResponse { id: id as u64 }))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let job_id = id(req.get_ref().job_id, "job")?;
        Ok(Response::new(pb::ListEventsResponse {
            events: list_events(self.pool(), job_id).await?,
        }))
    }
}

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
    let poisoned: Vec<i64> = sqlx::query_scalar(
        "UPDATE queue_jobs SET state = 3, lease_owner = NULL, lease_expires_at = NULL, \
         last_error = 'quarantined after ' || open_leases || ' unfinished attempts', updated_at = now() \
         WHERE id IN (SELECT id FROM queue_jobs WHERE kind = $1 AND state = 1 AND next_attempt_at <= now() AND open_leases >= $2 \
                      ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id",
    )
    .bind(kind)
    .bind(max_attempts)
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
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE queue_jobs SET lease_owner = $2, lease_expires_at = now() + $4 * interval '1 millisecond', \
         next_attempt_at = now() + $4 * interval '1 millisecond', attempts = attempts + 1, open_leases = open_leases + 1, updated_at = now() \
         WHERE id IN (SELECT id FROM queue_jobs WHERE kind = $1 AND state = 1 AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING {JOB_COLS}"
    )))
    .bind(kind)
    .bind(worker)
    .bind(n)
    .bind(ttl_ms)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut rcpts = job_recipients(pool, &ids).await?;
    let mut jobs = rows
        .iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            job_row(r, rcpts.remove(&id).unwrap_or_default())
        })
        .collect::<Result<Vec<_>>>()?;
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

async fn list_events(pool: &PgPool, job_id: i64) -> Result<Vec<pb::Event>> {
    let rows = sqlx::query("SELECT id, job_id, kind, at, source, recipient, detail, attributes::text AS attrs FROM events WHERE job_id = $1 ORDER BY id")
        .bind(job_id)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            let attrs: String = r.try_get("attrs")?;
            Ok(pb::Event {
                id: r.try_get::<i64, _>("id")? as u64,
                job_id: r.try_get::<i64, _>("job_id")? as u64,
                kind: i32::from(r.try_get::<i16, _>("kind")?),
                at: timestamp(r.try_get("at")?),
                source: r.try_get("source")?,
                recipient: r.try_get("recipient")?,
                detail: r.try_get("detail")?,
                // A flat object of strings, as AddEvent wrote it.
                attributes: serde_json::from_str(&attrs).unwrap_or_default(),
            })
        })
        .collect()
}
