//! SELECT/EXAMINE/STATUS data: one mailbox with its counts (RFC 9051 §6.3.1, §6.3.11).

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::names;
use crate::wire::id;

use super::MailboxesSvc;

/// The columns of a mailbox row that the API shows.
pub(super) struct MailboxRow {
    pub(super) id: i64,
    pub(super) user_id: i64,
    pub(super) name: String,
    pub(super) special_use: String,
    pub(super) uidvalidity: i64,
    pub(super) uidnext: i64,
    pub(super) highestmodseq: i64,
    pub(super) recent_floor: i64,
}

pub(super) fn mailbox_row(r: MailboxRow, subscribed: bool) -> pb::Mailbox {
    pb::Mailbox {
        id: r.id as u64,
        user_id: r.user_id as u64,
        name: r.name,
        special_use: r.special_use,
        subscribed,
        uidvalidity: r.uidvalidity as u32,
        uidnext: r.uidnext as u32,
        highestmodseq: r.highestmodseq as u64,
        recent_floor: r.recent_floor as u32,
        ..Default::default()
    }
}

/// Fills message counts of a mailbox.
pub(super) async fn counts(pool: &PgPool, mb: &mut pb::Mailbox) -> Result<()> {
    let r = sqlx::query!(
        "SELECT count(*) AS \"n!\", \
                count(*) FILTER (WHERE flags & 1 = 0) AS \"unseen!\", \
                count(*) FILTER (WHERE flags & 8 <> 0) AS \"deleted!\", \
                count(*) FILTER (WHERE uid >= $2) AS \"recent!\", \
                COALESCE(sum(size), 0)::bigint AS \"size!\", \
                COALESCE(sum(size) FILTER (WHERE flags & 8 <> 0), 0)::bigint AS \"deleted_size!\", \
                COALESCE(min(uid) FILTER (WHERE flags & 1 = 0), 0) AS \"first_unseen!\" \
         FROM messages WHERE mailbox_id = $1",
        mb.id as i64,
        i64::from(mb.recent_floor)
    )
    .fetch_one(pool)
    .await?;
    mb.messages = r.n as u32;
    mb.unseen = r.unseen as u32;
    mb.deleted = r.deleted as u32;
    mb.recent = r.recent as u32;
    mb.size = r.size as u64;
    mb.deleted_size = r.deleted_size as u64;
    mb.first_unseen_uid = r.first_unseen as u32;
    Ok(())
}

pub(super) async fn subscribed(pool: &PgPool, user_id: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT name FROM subscriptions WHERE user_id = $1 ORDER BY name",
        user_id
    )
    .fetch_all(pool)
    .await?)
}

pub(super) async fn get_mailbox(
    svc: &MailboxesSvc,
    req: Request<pb::GetMailboxRequest>,
) -> Result<Response<pb::Mailbox>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let name = names::mailbox(&req.name)?;
    let row = if req.claim_recent {
        // The claiming session sees [old floor, uidnext) as \Recent.
        sqlx::query_as!(
            MailboxRow,
            "UPDATE mailboxes m SET recent_floor = m.uidnext FROM (SELECT id, recent_floor AS old FROM mailboxes \
             WHERE user_id = $1 AND name = $2 FOR UPDATE) o WHERE m.id = o.id \
             RETURNING m.id, m.user_id, m.name, m.special_use, m.uidvalidity, m.uidnext, m.highestmodseq, o.old AS \"recent_floor!\"",
            uid,
            &name
        )
        .fetch_optional(svc.pool())
        .await
    } else {
        sqlx::query_as!(
            MailboxRow,
            "SELECT id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, recent_floor \
             FROM mailboxes WHERE user_id = $1 AND name = $2",
            uid,
            &name
        )
        .fetch_optional(svc.pool())
        .await
    }
    .map_err(StoreError::from)?
    .ok_or(StoreError::NotFound("mailbox"))?;
    let subs = subscribed(svc.pool(), uid).await?;
    let mut mb = mailbox_row(row, subs.contains(&name));
    counts(svc.pool(), &mut mb).await?;
    Ok(Response::new(mb))
}
