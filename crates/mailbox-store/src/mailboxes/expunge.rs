//! EXPUNGE (RFC 9051 §6.4.3) and the expunged-UID log for QRESYNC (RFC 7162 §3.2.5).

use mailstore_api::pb;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};

use crate::blobs::collect_garbage;
use crate::error::{Result, StoreError};
use crate::messages::{lock_mailbox, notify};
use crate::notify::MailboxChange;
use crate::quota;
use crate::wire::id;

use super::{MailboxesSvc, ranges};

/// Deletes messages of a locked mailbox, records them as expunged with a
/// new MODSEQ, and notifies. Returns (expunged uids, modseq, blob hashes).
pub(crate) async fn remove_messages(
    conn: &mut PgConnection,
    mailbox_id: i64,
    user_id: i64,
    uids: &[i64],
) -> Result<(Vec<i64>, i64, Vec<Vec<u8>>)> {
    if uids.is_empty() {
        let ms: i64 = sqlx::query_scalar!(
            "SELECT highestmodseq FROM mailboxes WHERE id = $1",
            mailbox_id
        )
        .fetch_one(&mut *conn)
        .await?;
        return Ok((Vec::new(), ms, Vec::new()));
    }
    let modseq: i64 = sqlx::query_scalar!(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 RETURNING highestmodseq",
        mailbox_id
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query!(
        "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING uid, size, blob_hash",
        mailbox_id,
        uids
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut gone = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut size = 0i64;
    for r in rows {
        gone.push(r.uid);
        size += r.size;
        hashes.push(r.blob_hash);
    }
    gone.sort_unstable();
    sqlx::query!(
        "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u \
         ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
        mailbox_id,
        &gone,
        modseq
    )
    .execute(&mut *conn)
    .await?;
    quota::release(conn, user_id, size, gone.len() as i64).await?;
    notify(
        conn,
        MailboxChange {
            user_id: user_id as u64,
            mailbox_id: mailbox_id as u64,
            kind: pb::MailboxEventKind::Expunged as i32,
            modseq: modseq as u64,
            uidnext: 0,
        },
    )
    .await?;
    hashes.sort();
    hashes.dedup();
    Ok((gone, modseq, hashes))
}

pub(super) async fn expunge(
    svc: &MailboxesSvc,
    req: Request<pb::ExpungeRequest>,
) -> Result<Response<pb::ExpungeResponse>, Status> {
    let req = req.into_inner();
    let mailbox_id = id(req.mailbox_id, "mailbox")?;
    let set = ranges(req.uids.as_ref())?;
    let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let (user_id, ..) = lock_mailbox(&mut tx, mailbox_id).await?;
    let uids: Vec<i64> = sqlx::query_scalar!(
        "SELECT m.uid FROM messages m WHERE m.mailbox_id = $1 AND m.flags & 8 <> 0 AND ($2::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b)) ORDER BY m.uid",
        mailbox_id,
        lo.as_deref(),
        hi.as_deref()
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let (gone, modseq, hashes) = remove_messages(&mut tx, mailbox_id, user_id, &uids).await?;
    tx.commit().await.map_err(StoreError::from)?;
    collect_garbage(svc.pool(), hashes).await;
    Ok(Response::new(pb::ExpungeResponse {
        expunged: gone.iter().map(|u| *u as u32).collect(),
        highestmodseq: modseq as u64,
    }))
}

pub(super) async fn list_expunged(
    svc: &MailboxesSvc,
    req: Request<pb::ListExpungedRequest>,
) -> Result<Response<pb::ListExpungedResponse>, Status> {
    let req = req.into_inner();
    let mailbox_id = id(req.mailbox_id, "mailbox")?;
    let uids: Vec<i64> = sqlx::query_scalar!(
        "SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
        mailbox_id,
        i64::try_from(req.since_modseq).unwrap_or(i64::MAX)
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::ListExpungedResponse {
        uids: uids.iter().map(|u| *u as u32).collect(),
    }))
}
