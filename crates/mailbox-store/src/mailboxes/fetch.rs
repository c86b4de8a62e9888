//! FETCH (RFC 9051 §6.4.5): message metadata in batches and bodies in chunks.

use futures::StreamExt;
use mailstore_api::pb;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::blobs::{FirstChunk, first_range, stream_blob};
use crate::error::{Result, StoreError};
use crate::flags;
use crate::wire::{BoxStream, id, timestamp};

use super::{MailboxesSvc, ranges};

/// Rows per FetchMeta batch, and bytes per body chunk.
const META_BATCH: usize = 256;

/// A message row as FetchMeta reads it (`structure` only when asked for).
struct MetaRow {
    uid: i64,
    flags: i32,
    keywords: Vec<String>,
    internal_date: chrono::DateTime<chrono::Utc>,
    size: i64,
    modseq: i64,
    blob_hash: Vec<u8>,
    crlf_size: i64,
    structure: Option<Vec<u8>>,
}

fn meta_row(r: MetaRow) -> Result<pb::MessageMeta> {
    Ok(pb::MessageMeta {
        uid: r.uid as u32,
        flags: flags::render(r.flags, &r.keywords),
        internal_date: timestamp(r.internal_date),
        size: r.size as u64,
        modseq: r.modseq as u64,
        structure: r
            .structure
            .map(|s| pb::MessageStructure::decode(s.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Internal(format!("stored structure: {e}")))?,
        blob_id: hex::encode(r.blob_hash),
        crlf_size: r.crlf_size.max(0) as u64,
    })
}

pub(super) async fn fetch_meta(
    svc: &MailboxesSvc,
    req: Request<pb::FetchMetaRequest>,
) -> Result<Response<BoxStream<pb::FetchMetaResponse>>, Status> {
    let req = req.into_inner();
    let mailbox_id = id(req.mailbox_id, "mailbox")?;
    let set = ranges(req.uids.as_ref())?;
    let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
    let pool = svc.pool().clone();
    let with_structure = req.with_structure;
    let changed_since = i64::try_from(req.changed_since).unwrap_or(i64::MAX);
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut rows = sqlx::query_as!(
            MetaRow,
            "SELECT m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq, m.blob_hash, m.crlf_size, \
             CASE WHEN $5 THEN m.structure ELSE NULL END AS structure \
             FROM messages m WHERE m.mailbox_id = $1 AND m.modseq > $4 AND ($2::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b)) ORDER BY m.uid",
            mailbox_id,
            lo.as_deref(),
            hi.as_deref(),
            changed_since,
            with_structure
        )
        .fetch(&pool);
        let mut batch = Vec::with_capacity(META_BATCH);
        while let Some(row) = rows.next().await {
            let item = row.map_err(StoreError::from).and_then(meta_row);
            match item {
                Ok(m) => batch.push(m),
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            if batch.len() >= META_BATCH
                && tx
                    .send(Ok(pb::FetchMetaResponse {
                        messages: std::mem::take(&mut batch),
                    }))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(Ok(pb::FetchMetaResponse { messages: batch })).await;
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

pub(super) async fn fetch_body(
    svc: &MailboxesSvc,
    req: Request<pb::FetchBodyRequest>,
) -> Result<Response<BoxStream<pb::BodyChunk>>, Status> {
    let req = req.into_inner();
    let mailbox_id = id(req.mailbox_id, "mailbox")?;
    // The message's blob and its first chunk in one query (see
    // `blobs::FirstChunk`).
    let (from, n) = first_range(req.offset, req.length);
    let row = sqlx::query!(
        r#"SELECT m.blob_hash, b.size, substring(b.data FROM $3::bigint::int FOR $4::bigint::int) AS "data!"
           FROM messages m JOIN blobs b ON b.hash = m.blob_hash
           WHERE m.mailbox_id = $1 AND m.uid = $2"#,
        mailbox_id,
        i64::from(req.uid),
        from,
        n
    )
    .fetch_optional(svc.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or(StoreError::NotFound("message"))?;
    let first = FirstChunk {
        hash: row.blob_hash,
        total: row.size,
        data: row.data,
    };
    Ok(Response::new(stream_blob(
        svc.pool().clone(),
        first,
        req.offset,
        req.length,
    )))
}
