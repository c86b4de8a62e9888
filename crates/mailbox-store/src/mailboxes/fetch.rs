//! FETCH (RFC 9051 §6.4.5): message metadata in batches and bodies in chunks.

use futures::StreamExt;
use mailstore_api::pb;
use prost::Message as _;
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::blobs::stream_blob;
use crate::error::{Result, StoreError};
use crate::flags;
use crate::wire::{BoxStream, id, timestamp};

use super::{MailboxesSvc, ranges, uid_filter};

/// Rows per FetchMeta batch, and bytes per body chunk.
const META_BATCH: usize = 256;

fn meta_row(r: &sqlx::postgres::PgRow) -> Result<pb::MessageMeta> {
    let bits: i32 = r.try_get("flags")?;
    let keywords: Vec<String> = r.try_get("keywords")?;
    let structure: Option<Vec<u8>> = r.try_get("structure")?;
    let hash: Vec<u8> = r.try_get("blob_hash")?;
    Ok(pb::MessageMeta {
        uid: r.try_get::<i64, _>("uid")? as u32,
        flags: flags::render(bits, &keywords),
        internal_date: timestamp(r.try_get("internal_date")?),
        size: r.try_get::<i64, _>("size")? as u64,
        modseq: r.try_get::<i64, _>("modseq")? as u64,
        structure: structure
            .map(|s| pb::MessageStructure::decode(s.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Internal(format!("stored structure: {e}")))?,
        blob_id: hex::encode(hash),
        crlf_size: r.try_get::<i64, _>("crlf_size")?.max(0) as u64,
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
        let sql = format!(
            "SELECT m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq, m.blob_hash, m.crlf_size, \
             CASE WHEN $5 THEN m.structure ELSE NULL END AS structure \
             FROM messages m WHERE m.mailbox_id = $1 AND m.modseq > $4 AND {} ORDER BY m.uid",
            uid_filter(2, 3)
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(mailbox_id)
            .bind(&lo)
            .bind(&hi)
            .bind(changed_since)
            .bind(with_structure)
            .fetch(&pool);
        let mut batch = Vec::with_capacity(META_BATCH);
        while let Some(row) = rows.next().await {
            let item = row.map_err(StoreError::from).and_then(|r| meta_row(&r));
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
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT blob_hash FROM messages WHERE mailbox_id = $1 AND uid = $2")
            .bind(mailbox_id)
            .bind(i64::from(req.uid))
            .fetch_optional(svc.pool())
            .await
            .map_err(StoreError::from)?
            .ok_or(StoreError::NotFound("message"))?;
    Ok(Response::new(stream_blob(
        svc.pool().clone(),
        hash,
        req.offset,
        req.length,
    )))
}
