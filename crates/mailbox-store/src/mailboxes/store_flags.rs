//! STORE (RFC 9051 §6.4.6) with CONDSTORE's UNCHANGEDSINCE (RFC 7162 §3.2).

use mailstore_api::pb;
use tonic::{Request, Response, Status};

use crate::error::{Result, StoreError};
use crate::flags;
use crate::messages::{lock_mailbox, notify};
use crate::notify::MailboxChange;
use crate::wire::id;

use super::{MailboxesSvc, ranges};

pub(super) async fn store_flags(
    svc: &MailboxesSvc,
    req: Request<pb::StoreFlagsRequest>,
) -> Result<Response<pb::StoreFlagsResponse>, Status> {
    let req = req.into_inner();
    let mailbox_id = id(req.mailbox_id, "mailbox")?;
    let change = flags::parse(&req.flags).map_err(StoreError::invalid)?;
    let set = ranges(req.uids.as_ref())?;
    let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
    let unchanged_since = i64::try_from(req.unchanged_since).unwrap_or(i64::MAX);
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let (user_id, _, _, mut highest) = lock_mailbox(&mut tx, mailbox_id).await?;
    let rows = sqlx::query!(
        "SELECT m.uid, m.flags, m.keywords, m.modseq FROM messages m WHERE m.mailbox_id = $1 AND ($2::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b)) ORDER BY m.uid",
        mailbox_id,
        lo.as_deref(),
        hi.as_deref()
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let mut resp = pb::StoreFlagsResponse::default();
    let mut to_change: Vec<(i64, flags::FlagSet)> = Vec::new();
    let mut unchanged: Vec<pb::FlagUpdate> = Vec::new();
    for r in rows {
        let uid: i64 = r.uid;
        let cur = flags::FlagSet {
            bits: r.flags,
            keywords: r.keywords,
        };
        let modseq: i64 = r.modseq;
        // RFC 7162 §3.2: UNCHANGEDSINCE fails messages modified after it.
        if req.unchanged_since != 0 && modseq > unchanged_since {
            resp.modified.push(uid as u32);
            continue;
        }
        let new = flags::apply(req.op, &cur, &change);
        if new == cur {
            unchanged.push(pb::FlagUpdate {
                uid: uid as u32,
                flags: flags::render(cur.bits, &cur.keywords),
                modseq: modseq as u64,
            });
        } else {
            to_change.push((uid, new));
        }
    }
    if !to_change.is_empty() {
        highest = sqlx::query_scalar!(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 RETURNING highestmodseq",
            mailbox_id
        )
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let uids: Vec<i64> = to_change.iter().map(|(u, _)| *u).collect();
        let bits: Vec<i32> = to_change.iter().map(|(_, f)| f.bits).collect();
        // Keywords as one joined string per row (arrays of arrays must be rectangular).
        let kws: Vec<String> = to_change
            .iter()
            .map(|(_, f)| f.keywords.join(" "))
            .collect();
        sqlx::query!(
            "UPDATE messages m SET flags = c.flags, keywords = COALESCE(string_to_array(NULLIF(c.kw, ''), ' ')::text[], '{}'), modseq = $5 \
             FROM unnest($2::bigint[], $3::int[], $4::text[]) AS c(uid, flags, kw) \
             WHERE m.mailbox_id = $1 AND m.uid = c.uid",
            mailbox_id,
            &uids,
            &bits,
            &kws,
            highest
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        notify(
            &mut tx,
            MailboxChange {
                user_id: user_id as u64,
                mailbox_id: mailbox_id as u64,
                kind: pb::MailboxEventKind::Flags as i32,
                modseq: highest as u64,
                uidnext: 0,
            },
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    resp.updated = unchanged;
    resp.updated
        .extend(to_change.into_iter().map(|(uid, f)| pb::FlagUpdate {
            uid: uid as u32,
            flags: flags::render(f.bits, &f.keywords),
            modseq: highest as u64,
        }));
    resp.updated.sort_by_key(|u| u.uid);
    resp.highestmodseq = highest as u64;
    Ok(Response::new(resp))
}
