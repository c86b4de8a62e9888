//! Local delivery of a queued message into a mailbox, exactly once per job
//! and user (the Mailboxes service's DeliverFromQueue).

use mailstore_api::pb;
use prost::Message as _;
use sqlx::PgConnection;

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::messages::{NewMessage, insert_message, mailbox_id_by_name};
use crate::wire::id;
use crate::{flags, names, structure, text};

use super::check_lease;
use super::events::event;

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
    let rcpt = sqlx::query!(
        "SELECT address FROM queue_recipients WHERE job_id = $1 AND idx = $2 FOR UPDATE",
        job_id,
        idx
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound("recipient"))?;
    let done = sqlx::query!(
        "SELECT mailbox_id, uid, uidvalidity, modseq FROM queue_deliveries WHERE job_id = $1 AND user_id = $2",
        job_id,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(d) = done {
        let r = pb::AppendResponse {
            mailbox_id: d.mailbox_id as u64,
            uidvalidity: d.uidvalidity as u32,
            uid: d.uid as u32,
            modseq: d.modseq as u64,
            duplicate: true,
            size: 0,
            job_finished: false,
        };
        if req.complete_recipient {
            mark_delivered(&mut tx, job_id, idx, &r, "already delivered").await?;
            let job_finished = req.finish_job && finish_if_complete(&mut tx, job_id).await?;
            tx.commit().await?;
            return Ok(pb::AppendResponse { job_finished, ..r });
        } else {
            tx.rollback().await?;
        }
        return Ok(r);
    }
    let address: String = rcpt.address;
    let job = sqlx::query!(
        "SELECT blob_hash, size, structure, sent_date, crlf_size FROM queue_jobs WHERE id = $1",
        job_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let parent_hash: Vec<u8> = job.blob_hash;
    let parent_size: i64 = job.size;
    let mut st = pb::MessageStructure::decode(job.structure.as_slice())
        .map_err(|e| StoreError::Internal(format!("stored structure: {e}")))?;
    let size = parent_size + req.prefix.len() as i64;
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
        // The queued blob itself is the message: its text row comes from
        // the job (enqueue keeps it there, unindexed; migration 0017).
        derive_text(&mut tx, &parent_hash, &parent_hash, &[], job_id).await?;
        parent_hash
    } else {
        let h: Vec<u8> = sqlx::query_scalar!(
            "WITH src AS (SELECT $1::bytea || data AS d FROM blobs WHERE hash = $2), \
             ins AS (INSERT INTO blobs (hash, size, data) SELECT sha256(d), length(d), d FROM src ON CONFLICT (hash) DO NOTHING) \
             SELECT sha256(d) AS \"hash!\" FROM src",
            &req.prefix,
            &parent_hash
        )
        .fetch_one(&mut *tx)
        .await?;
        derive_text(&mut tx, &h, &parent_hash, &req.prefix, job_id).await?;
        h
    };
    structure::shift(&mut st, req.prefix.len() as u64);
    let parent_crlf: i64 = job.crlf_size;
    let msg = NewMessage {
        hash: &hash,
        size,
        internal_date: chrono::Utc::now(),
        sent_date: job.sent_date,
        flags: fl,
        structure: st.encode_to_vec(),
        // The prefix is CRLF-clean, so the CRLF size just adds up.
        crlf_size: if parent_crlf > 0 {
            parent_crlf + req.prefix.len() as i64
        } else {
            0
        },
        // RFC 9208 §5.1 / RFC 3463 X.2.2: checked and counted with the append.
        enforce_quota: req.enforce_quota,
    };
    let mut resp = insert_message(&mut tx, mailbox_id, &msg).await?;
    sqlx::query!(
        "INSERT INTO queue_deliveries (job_id, user_id, mailbox_id, uid, uidvalidity, modseq) VALUES ($1, $2, $3, $4, $5, $6)",
        job_id,
        user_id,
        mailbox_id,
        i64::from(resp.uid),
        i64::from(resp.uidvalidity),
        resp.modseq as i64
    )
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
        resp.job_finished = req.finish_job && finish_if_complete(&mut tx, job_id).await?;
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

/// The searchable text of prefix + queued message, derived in PostgreSQL
/// from the queued message's text (kept with the job since migration 0017;
/// before it, in `blob_text` under the queued blob's hash): the prefix's
/// header lines go in front of the message's own, the body text is the
/// same. This is what [`text::extract`] gives for the whole new blob,
/// without the blob travelling back to be parsed. A queued message without
/// text (enqueued before migration 0014) gives a placeholder, which SEARCH
/// reads from the blob until `mailctl search backfill` fills it.
async fn derive_text(
    conn: &mut PgConnection,
    hash: &[u8],
    parent: &[u8],
    prefix: &[u8],
    job_id: i64,
) -> Result<()> {
    let lines = text::header_lines(prefix);
    sqlx::query!(
        "INSERT INTO blob_text (hash, headers, body, complete) \
         SELECT $1, $2 || p.headers, p.body, p.complete AND octet_length($2 || p.headers) <= $4 \
         FROM (SELECT j.text_headers AS headers, j.text_body AS body, j.text_complete AS complete \
               FROM queue_jobs j WHERE j.id = $5 AND j.text_headers IS NOT NULL \
               UNION ALL \
               SELECT t.headers, t.body, t.complete FROM blob_text t \
               WHERE t.hash = $3 AND t.headers IS NOT NULL \
               LIMIT 1) p \
         ON CONFLICT (hash) DO UPDATE SET headers = EXCLUDED.headers, body = EXCLUDED.body, complete = EXCLUDED.complete \
         WHERE blob_text.headers IS NULL",
        hash,
        lines,
        parent,
        i32::try_from(text::MAX_HEADERS).unwrap_or(i32::MAX),
        job_id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO blob_text (hash) VALUES ($1) ON CONFLICT (hash) DO NOTHING",
        hash
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Finishes the job as done (what `FinishJob` DONE does) when none of its
/// recipients is pending or deferred any more; true when it did. Called
/// inside the delivery's transaction, under the lease checked there.
async fn finish_if_complete(conn: &mut PgConnection, job_id: i64) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE queue_jobs SET state = 2, lease_owner = NULL, lease_expires_at = NULL, open_leases = 0, \
         last_error = '', updated_at = now() \
         WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM queue_recipients r \
         WHERE r.job_id = $1 AND r.state IN ($2, $3, $4))",
        job_id,
        pb::RecipientState::Unspecified as i16,
        pb::RecipientState::Pending as i16,
        pb::RecipientState::Deferred as i16
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn mark_delivered(
    conn: &mut PgConnection,
    job_id: i64,
    idx: i32,
    r: &pb::AppendResponse,
    detail: &str,
) -> Result<()> {
    sqlx::query!(
        "UPDATE queue_recipients SET state = $3, detail = $4, attempts = attempts + 1, updated_at = now(), \
         delivered_mailbox_id = $5, delivered_uid = $6, delivered_uidvalidity = $7, delivered_modseq = $8 \
         WHERE job_id = $1 AND idx = $2",
        job_id,
        idx,
        pb::RecipientState::Delivered as i16,
        detail,
        r.mailbox_id as i64,
        i64::from(r.uid),
        i64::from(r.uidvalidity),
        r.modseq as i64
    )
    .execute(conn)
    .await?;
    Ok(())
}
