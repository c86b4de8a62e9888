//! Content-addressed message blobs: stored once, streamed in chunks, and
//! collected when nothing refers to them.

use mailstore_api::pb;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Result, StoreError};
use crate::text::SearchText;
use crate::wire::BoxStream;

pub const BODY_CHUNK: i64 = 256 * 1024;

/// Ensures a blob exists (stored once per content).
pub(crate) async fn put_blob(conn: &mut PgConnection, hash: &[u8], data: &[u8]) -> Result<()> {
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = $1) AS "exists!""#,
        hash
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        sqlx::query!(
            "INSERT INTO blobs (hash, size, data) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
            hash,
            data.len() as i64,
            data
        )
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Stores a blob's searchable text (migration 0014) in the caller's
/// transaction, after [`put_blob`]: a new row, or the text of a placeholder
/// left by the migration. A complete row is left alone and not locked, so
/// concurrent appends of one message do not queue on it.
pub(crate) async fn put_text(conn: &mut PgConnection, hash: &[u8], t: &SearchText) -> Result<()> {
    let inserted = sqlx::query!(
        "INSERT INTO blob_text (hash, headers, body, complete) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (hash) DO NOTHING",
        hash,
        t.headers,
        t.body,
        t.complete
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        sqlx::query!(
            "UPDATE blob_text SET headers = $2, body = $3, complete = $4 WHERE hash = $1 AND headers IS NULL",
            hash,
            t.headers,
            t.body,
            t.complete
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The first chunk of a blob's byte range, read with the blob's size in
/// one query: most messages fit in one chunk, so a body costs one round
/// trip to PostgreSQL (before: three, the row, the size, the chunk).
pub(crate) struct FirstChunk {
    pub hash: Vec<u8>,
    pub total: i64,
    pub data: Vec<u8>,
}

/// `substring`'s arguments for the first chunk of `offset`/`length` (0 =
/// to the end): 1-based start, and how many bytes. A start past the end
/// gives an empty chunk; bytea values stop well below `i32::MAX`.
pub(crate) fn first_range(offset: u64, length: u64) -> (i64, i64) {
    let start = i64::try_from(offset)
        .unwrap_or(i64::MAX)
        .min(i64::from(i32::MAX) - 1);
    let n = if length == 0 {
        BODY_CHUNK
    } else {
        i64::try_from(length).unwrap_or(i64::MAX).min(BODY_CHUNK)
    };
    (start + 1, n)
}

/// Streams a blob's byte range (`offset`, `length`; 0 = to the end) in
/// chunks, starting with `first` (read by the query that found the blob),
/// reading each further chunk with `substring` so memory stays at one
/// chunk however large the message. A range that fits in the first chunk
/// is sent without another query or task.
pub(crate) fn stream_blob(
    pool: PgPool,
    first: FirstChunk,
    offset: u64,
    length: u64,
) -> BoxStream<pb::BodyChunk> {
    let FirstChunk { hash, total, data } = first;
    let start = i64::try_from(offset).unwrap_or(i64::MAX).min(total);
    let end = if length == 0 {
        total
    } else {
        start
            .saturating_add(i64::try_from(length).unwrap_or(i64::MAX))
            .min(total)
    };
    let mut pos = start + data.len() as i64;
    let chunk = pb::BodyChunk {
        data,
        total_size: total as u64,
    };
    if pos >= end || chunk.data.is_empty() {
        return Box::pin(futures::stream::iter([Ok(chunk)]));
    }
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
        loop {
            let n = (end - pos).min(BODY_CHUNK);
            let data: Vec<u8> = match sqlx::query_scalar!(
                // The offsets are bound as bigint and narrowed by PostgreSQL.
                r#"SELECT substring(data FROM $2::bigint::int FOR $3::bigint::int) AS "data!" FROM blobs WHERE hash = $1"#,
                &hash,
                pos + 1,
                n
            )
            .fetch_one(&pool)
            .await
            {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(StoreError::from(e).into())).await;
                    return;
                }
            };
            pos += data.len() as i64;
            let done = pos >= end || data.is_empty();
            let chunk = pb::BodyChunk {
                data,
                total_size: 0,
            };
            if tx.send(Ok(chunk)).await.is_err() || done {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Deletes blobs no message and no queued job refers to any more. Best
/// effort after commit: the foreign keys make it safe against a concurrent
/// append that starts referring to the blob again (that delete then fails).
pub(crate) async fn collect_garbage(pool: &PgPool, hashes: Vec<Vec<u8>>) {
    if hashes.is_empty() {
        return;
    }
    let res = sqlx::query!(
        "DELETE FROM blobs b WHERE b.hash = ANY($1) \
         AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_hash = b.hash) \
         AND NOT EXISTS (SELECT 1 FROM queue_jobs q WHERE q.blob_hash = b.hash)",
        &hashes
    )
    .execute(pool)
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "blob garbage collection skipped");
    }
}
