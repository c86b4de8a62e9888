//! APPEND (RFC 9051 §6.3.12): a client-supplied message into a mailbox.

use mailstore_api::pb;
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::{put_blob, put_text};
use crate::db::FOREIGN_KEY_VIOLATION;
use crate::error::{Result, StoreError};
use crate::messages::{
    Analysed, NewMessage, analyse, collect_body, insert_message, mailbox_id_by_name,
};
use crate::wire::id;
use crate::{flags, names};

use super::MailboxesSvc;

pub(super) async fn append(
    svc: &MailboxesSvc,
    req: Request<Streaming<pb::AppendRequest>>,
) -> Result<Response<pb::AppendResponse>, Status> {
    let max = svc.store.config.max_message_size;
    let (header, data) = collect_body(
        req.into_inner(),
        max,
        |m: pb::AppendRequest| match m.part? {
            pb::append_request::Part::Header(h) => Some(Ok(h)),
            pb::append_request::Part::Data(d) => Some(Err(d)),
        },
        |h: &pb::AppendHeader| h.size,
    )
    .await?;
    let user_id = id(header.user_id, "user")?;
    let name = names::mailbox(&header.mailbox)?;
    let fl = flags::parse(&header.flags).map_err(StoreError::invalid)?;
    let internal_date = header
        .internal_date
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .unwrap_or_else(chrono::Utc::now);
    let size = data.len() as i64;
    let Analysed {
        hash,
        structure,
        sent_date,
        crlf_size,
        text,
        data,
        ..
    } = analyse(data).await?;
    let started = std::time::Instant::now();
    // One retry: a concurrent garbage collection may remove the blob
    // between our existence check and the message insert (FK violation).
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
        let mailbox_id = mailbox_id_by_name(&mut tx, user_id, &name)
            .await?
            .ok_or(StoreError::NotFound("mailbox"))?;
        put_blob(&mut tx, &hash, &data).await?;
        put_text(&mut tx, &hash, &text).await?;
        let msg = NewMessage {
            hash: &hash,
            size,
            internal_date,
            sent_date,
            flags: fl.clone(),
            structure: structure.clone(),
            crlf_size,
            // RFC 9208 §4.3 / §5.1: APPEND over quota is NO [OVERQUOTA].
            enforce_quota: true,
        };
        match insert_message(&mut tx, mailbox_id, &msg).await {
            Ok(r) => {
                tx.commit().await.map_err(StoreError::from)?;
                break r;
            }
            Err(StoreError::Internal(e)) if attempt < 3 && e.contains(FOREIGN_KEY_VIOLATION) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    };
    metrics::counter!("store_appends_total").increment(1);
    metrics::histogram!("store_append_seconds").record(started.elapsed().as_secs_f64());
    Ok(Response::new(resp))
}
