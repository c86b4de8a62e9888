//! `mailctl search backfill`: fills the search text of blobs stored before
//! migration 0014 (the placeholders it left), in bounded batches.
//!
//! - bounded: at most `limit` blobs (≤ 1000) and about [`BATCH_BYTES`] of
//!   blob data per call; blobs are read one at a time;
//! - resumable: the placeholders are the work list, so a new run after an
//!   interruption continues where the last one stopped; within a run the
//!   caller passes back `next_after` (hash order) so that a blob whose
//!   extraction keeps failing cannot stall it;
//! - idempotent: a row is only written while it is still a placeholder
//!   (`headers IS NULL`), so concurrent runs and re-runs write nothing twice,
//!   and an APPEND that fills the same placeholder meanwhile wins or loses
//!   with the same text.
//!
//! Until a blob is backfilled SEARCH reads it from the blob (see
//! [`crate::search`]): backfilling makes old mail fast, not findable.

use mailstore_api::pb;
use sqlx::PgPool;

use crate::error::{Result, StoreError};
use crate::text;

/// Blob bytes read per call before it returns (one blob may exceed it).
pub const BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Blobs per call when the caller does not say.
const DEFAULT_LIMIT: u32 = 100;
/// Most blobs per call.
const MAX_LIMIT: u32 = 1000;

pub async fn backfill(
    pool: &PgPool,
    req: &pb::BackfillSearchTextRequest,
) -> Result<pb::BackfillSearchTextResponse> {
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    if req.after.is_empty() {
        // A message's blob written by a store older than 0014 after the
        // migration ran (a rolling upgrade) has no row at all: it becomes a
        // placeholder. Blobs only queued have none on purpose (0017).
        sqlx::query!(
            "INSERT INTO blob_text (hash) SELECT b.hash FROM blobs b \
             WHERE NOT EXISTS (SELECT 1 FROM blob_text t WHERE t.hash = b.hash) \
             AND EXISTS (SELECT 1 FROM messages m WHERE m.blob_hash = b.hash) \
             ON CONFLICT (hash) DO NOTHING"
        )
        .execute(pool)
        .await?;
    }
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar!(
        "SELECT hash FROM blob_text WHERE NOT complete AND headers IS NULL AND hash > $1 \
         ORDER BY hash LIMIT $2",
        &req.after,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?;
    let mut resp = pb::BackfillSearchTextResponse::default();
    let mut bytes = 0usize;
    for hash in hashes {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar!("SELECT data FROM blobs WHERE hash = $1", &hash)
                .fetch_optional(pool)
                .await?;
        // None: collected meanwhile, and its row with it.
        if let Some(data) = data {
            bytes = bytes.saturating_add(data.len());
            let t = tokio::task::spawn_blocking(move || text::extract(&data))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let done = sqlx::query!(
                "UPDATE blob_text SET headers = $2, body = $3, complete = $4 \
                 WHERE hash = $1 AND headers IS NULL",
                &hash,
                t.headers,
                t.body,
                t.complete
            )
            .execute(pool)
            .await?;
            resp.indexed += u32::try_from(done.rows_affected()).unwrap_or(0);
        }
        resp.next_after = hash;
        if bytes >= BATCH_BYTES {
            break;
        }
    }
    resp.done = resp.next_after.is_empty();
    let remaining: i64 = sqlx::query_scalar!(
        "SELECT count(*) AS \"n!\" FROM blob_text WHERE NOT complete AND headers IS NULL"
    )
    .fetch_one(pool)
    .await?;
    resp.remaining = u64::try_from(remaining).unwrap_or(0);
    Ok(resp)
}
