//! COPY and MOVE (RFC 9051 §6.4.7, §6.4.8), also used by RENAME INBOX.

use mailstore_api::pb;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::messages::{lock_mailbox, mailbox_id_by_name, notify};
use crate::names;
use crate::notify::MailboxChange;
use crate::quota;
use crate::wire::id;

use super::expunge::remove_messages;
use super::{MailboxesSvc, ranges};

/// Copies (and with `move_` removes) messages between mailboxes in one
/// transaction; returns (uidvalidity, source uids, destination uids).
/// Moving into the same mailbox is allowed (RFC 6851 §3.3 does not forbid
/// it): the messages get new UIDs and the old ones are expunged.
pub(crate) async fn copy_in_tx(
    conn: &mut PgConnection,
    src: i64,
    set: Option<(Vec<i64>, Vec<i64>)>,
    dst: i64,
    move_: bool,
) -> Result<pb::CopyMessagesResponse> {
    // Lock order: lower id first.
    let (first, second) = if src <= dst { (src, dst) } else { (dst, src) };
    let a = lock_mailbox(conn, first).await?;
    let b = if first == second {
        a
    } else {
        lock_mailbox(conn, second).await?
    };
    let (src_info, dst_info) = if src <= dst { (a, b) } else { (b, a) };
    if src_info.0 != dst_info.0 {
        return Err(StoreError::precondition(
            "mailboxes belong to different users",
        ));
    }
    let user_id = src_info.0;
    let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
    let rows = sqlx::query!(
        "SELECT m.uid, m.size FROM messages m WHERE m.mailbox_id = $1 AND ($2::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b)) ORDER BY m.uid",
        src,
        lo.as_deref(),
        hi.as_deref()
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut resp = pb::CopyMessagesResponse {
        uidvalidity: dst_info.1 as u32,
        destination_mailbox_id: dst as u64,
        ..Default::default()
    };
    if rows.is_empty() {
        return Ok(resp);
    }
    let n = rows.len() as i64;
    let src_uids: Vec<i64> = rows.iter().map(|r| r.uid).collect();
    let total: i64 = rows.iter().map(|r| r.size).sum();
    let r = sqlx::query!(
        "UPDATE mailboxes SET uidnext = uidnext + $2, highestmodseq = highestmodseq + 1 WHERE id = $1 \
         RETURNING uidnext - $2 AS \"first_uid!\", highestmodseq, uidnext",
        dst,
        n
    )
    .fetch_one(&mut *conn)
    .await?;
    let first_uid: i64 = r.first_uid;
    let modseq: i64 = r.highestmodseq;
    let uidnext: i64 = r.uidnext;
    if uidnext - 1 > i64::from(u32::MAX) {
        return Err(StoreError::precondition("mailbox UID space exhausted"));
    }
    sqlx::query!(
        "INSERT INTO messages (mailbox_id, uid, blob_hash, size, internal_date, sent_date, flags, keywords, modseq, structure, crlf_size) \
         SELECT $1, $3 + o.ord - 1, m.blob_hash, m.size, m.internal_date, m.sent_date, m.flags, m.keywords, $4, m.structure, m.crlf_size \
         FROM unnest($5::bigint[]) WITH ORDINALITY AS o(uid, ord) JOIN messages m ON m.mailbox_id = $2 AND m.uid = o.uid",
        dst,
        src,
        first_uid,
        modseq,
        &src_uids
    )
    .execute(&mut *conn)
    .await?;
    notify(
        conn,
        MailboxChange {
            user_id: user_id as u64,
            mailbox_id: dst as u64,
            kind: pb::MailboxEventKind::Appended as i32,
            modseq: modseq as u64,
            uidnext: uidnext as u32,
        },
    )
    .await?;
    if move_ {
        // Usage moves with the messages (net zero): a move never fails
        // for quota (RFC 9208 §5.1 counts what the operation adds).
        quota::charge(conn, user_id, total, n, false).await?;
        remove_messages(conn, src, user_id, &src_uids).await?;
    } else {
        // RFC 9208 §4.3: COPY over quota is NO [OVERQUOTA]; nothing copied.
        quota::charge(conn, user_id, total, n, true).await?;
    }
    resp.source_uids = src_uids.iter().map(|u| *u as u32).collect();
    resp.destination_uids = (0..n).map(|i| (first_uid + i) as u32).collect();
    Ok(resp)
}

pub(super) async fn copy_messages(
    svc: &MailboxesSvc,
    req: Request<pb::CopyMessagesRequest>,
) -> Result<Response<pb::CopyMessagesResponse>, Status> {
    let req = req.into_inner();
    let src = id(req.mailbox_id, "mailbox")?;
    let user_id = id(req.user_id, "user")?;
    let dest = names::mailbox(&req.destination)?;
    let set = ranges(req.uids.as_ref())?;
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let dst = mailbox_id_by_name(&mut tx, user_id, &dest)
        .await?
        .ok_or(StoreError::NotFound("mailbox"))?;
    let resp = copy_in_tx(&mut tx, src, set, dst, req.r#move).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(resp))
}
