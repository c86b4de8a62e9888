//! Folder management: LIST, CREATE, DELETE, RENAME, SUBSCRIBE (RFC 9051 §6.3).
//!
//! Limits (threat model: resource exhaustion by an authenticated user):
//! - at most `--max-mailboxes-per-user` (1000) mailboxes: CREATE (and the
//!   RENAME of INBOX, which creates one) beyond answers RESOURCE_EXHAUSTED
//!   ("mailbox limit reached"); IMAP answers `NO [LIMIT]` (RFC 5530);
//! - a name that is another spelling of a special folder — the canonical
//!   names in [`names::SPECIAL_FOLDERS`] or any of the user's mailboxes with
//!   a SPECIAL-USE attribute (e.g. "spam" beside "Spam" \Junk) — is refused
//!   (INVALID_ARGUMENT);
//! - ListMailboxes returns at most the per-user limit (plus the default
//!   folders) in one call; the store does no pattern matching, so nested
//!   wildcards cost the IMAP service a bounded list.

use std::collections::HashSet;

use mailstore_api::pb;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};

use crate::blobs::collect_garbage;
use crate::db::{FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::messages::{lock_mailbox, mailbox_id_by_name, notify};
use crate::names;
use crate::notify::MailboxChange;
use crate::quota;
use crate::wire::id;

use super::MailboxesSvc;
use super::copy_move::copy_in_tx;
use super::select::{MailboxRow, counts, mailbox_row, subscribed};

fn user_change(user_id: i64) -> MailboxChange {
    MailboxChange {
        user_id: user_id as u64,
        mailbox_id: 0,
        kind: pb::MailboxEventKind::Mailboxes as i32,
        modseq: 0,
        uidnext: 0,
    }
}

pub(super) async fn list_mailboxes(
    svc: &MailboxesSvc,
    req: Request<pb::ListMailboxesRequest>,
) -> Result<Response<pb::ListMailboxesResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let cap = list_cap(svc.store.config.max_mailboxes_per_user);
    let rows = sqlx::query_as!(
        MailboxRow,
        "SELECT id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, recent_floor \
         FROM mailboxes WHERE user_id = $1 ORDER BY name LIMIT $2",
        uid,
        cap
    )
    .fetch_all(svc.pool())
    .await
    .map_err(StoreError::from)?;
    let subs = subscribed(svc.pool(), uid).await?;
    // Every proper ancestor of every name: has_children in O(n · depth).
    let parents: HashSet<&str> = rows
        .iter()
        .flat_map(|r| {
            r.name
                .match_indices(names::DELIMITER)
                .map(|(i, _)| &r.name[..i])
        })
        .collect();
    let has_children: Vec<bool> = rows
        .iter()
        .map(|r| parents.contains(r.name.as_str()))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for (r, has_children) in rows.into_iter().zip(has_children) {
        let subscribed = subs.binary_search(&r.name).is_ok();
        let mut mb = mailbox_row(r, subscribed);
        mb.has_children = has_children;
        if req.with_counts {
            counts(svc.pool(), &mut mb).await?;
        }
        out.push(mb);
    }
    Ok(Response::new(pb::ListMailboxesResponse { mailboxes: out }))
}

/// Rows one ListMailboxes returns: the per-user limit plus the default folders.
fn list_cap(max: u32) -> i64 {
    i64::from(max) + names::SPECIAL_FOLDERS.len() as i64 + 1
}

/// Checks a name about to be created for user `uid` inside `tx`: not a
/// special folder's look-alike, and (when `adds` a mailbox) the user below
/// the mailbox limit. Locks the user row, so concurrent CREATEs of one user
/// are counted exactly.
async fn admit(conn: &mut PgConnection, uid: i64, name: &str, adds: bool, max: u32) -> Result<()> {
    if names::special_lookalike(name) {
        return Err(StoreError::invalid("reserved mailbox name"));
    }
    let lookalike = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM mailboxes WHERE user_id = $1 AND special_use <> ''
                           AND lower(name) = lower($2) AND name <> $2) AS "x!""#,
        uid,
        name
    )
    .fetch_one(&mut *conn)
    .await?;
    if lookalike {
        return Err(StoreError::invalid("reserved mailbox name"));
    }
    if adds {
        sqlx::query_scalar!("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE", uid)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        let n = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM mailboxes WHERE user_id = $1"#,
            uid
        )
        .fetch_one(&mut *conn)
        .await?;
        if n >= i64::from(max) {
            return Err(StoreError::LimitReached("mailbox limit reached"));
        }
    }
    Ok(())
}

pub(super) async fn create_mailbox(
    svc: &MailboxesSvc,
    req: Request<pb::CreateMailboxRequest>,
) -> Result<Response<pb::Mailbox>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let name = names::mailbox(&req.name)?;
    let special = req.special_use.trim_start_matches('\\').to_string();
    if !matches!(
        special.as_str(),
        "" | "All" | "Archive" | "Drafts" | "Flagged" | "Junk" | "Sent" | "Trash"
    ) {
        return Err(StoreError::invalid("unknown special-use attribute").into());
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    admit(
        &mut tx,
        uid,
        &name,
        true,
        svc.store.config.max_mailboxes_per_user,
    )
    .await?;
    let res = sqlx::query_as!(
        MailboxRow,
        "INSERT INTO mailboxes (user_id, name, special_use) VALUES ($1, $2, $3) \
         RETURNING id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, recent_floor",
        uid,
        &name,
        &special
    )
    .fetch_one(&mut *tx)
    .await;
    let row = match res {
        Ok(r) => r,
        Err(e) if is_sqlstate(&e, UNIQUE_VIOLATION) => {
            return Err(StoreError::AlreadyExists("mailbox").into());
        }
        Err(e) if is_sqlstate(&e, FOREIGN_KEY_VIOLATION) => {
            return Err(StoreError::NotFound("user").into());
        }
        Err(e) => return Err(StoreError::from(e).into()),
    };
    notify(&mut tx, user_change(uid)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(mailbox_row(row, false)))
}

pub(super) async fn delete_mailbox(
    svc: &MailboxesSvc,
    req: Request<pb::DeleteMailboxRequest>,
) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let name = names::mailbox(&req.name)?;
    if name == "INBOX" {
        return Err(StoreError::precondition("INBOX cannot be deleted").into());
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let mid = mailbox_id_by_name(&mut tx, uid, &name)
        .await?
        .ok_or(StoreError::NotFound("mailbox"))?;
    lock_mailbox(&mut tx, mid).await?;
    let rows = sqlx::query!(
        "DELETE FROM messages WHERE mailbox_id = $1 RETURNING size, blob_hash",
        mid
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let size: i64 = rows.iter().map(|r| r.size).sum();
    let rows_n = rows.len() as i64;
    let hashes: Vec<Vec<u8>> = rows.into_iter().map(|r| r.blob_hash).collect();
    sqlx::query!("DELETE FROM mailboxes WHERE id = $1", mid)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    quota::release(&mut tx, uid, size, rows_n).await?;
    notify(&mut tx, user_change(uid)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    collect_garbage(svc.pool(), hashes).await;
    Ok(Response::new(pb::DeleteMailboxResponse {}))
}

pub(super) async fn rename_mailbox(
    svc: &MailboxesSvc,
    req: Request<pb::RenameMailboxRequest>,
) -> Result<Response<pb::RenameMailboxResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let from = names::mailbox(&req.from)?;
    let to = names::mailbox(&req.to)?;
    if to == "INBOX" || to.starts_with(&format!("{from}/")) {
        return Err(StoreError::invalid("invalid rename target").into());
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    let src = mailbox_id_by_name(&mut tx, uid, &from)
        .await?
        .ok_or(StoreError::NotFound("mailbox"))?;
    if mailbox_id_by_name(&mut tx, uid, &to).await?.is_some() {
        return Err(StoreError::AlreadyExists("mailbox").into());
    }
    let max = svc.store.config.max_mailboxes_per_user;
    admit(&mut tx, uid, &to, from == "INBOX", max).await?;
    if from == "INBOX" {
        // RFC 9051 §6.3.6: renaming INBOX moves its messages to the new
        // name and leaves INBOX in place, empty. Children stay.
        let dst: i64 = sqlx::query_scalar!(
            "INSERT INTO mailboxes (user_id, name) VALUES ($1, $2) RETURNING id",
            uid,
            &to
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        copy_in_tx(&mut tx, src, None, dst, true).await?;
    } else {
        let res = sqlx::query!(
            "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1) \
             WHERE user_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
            uid,
            &from,
            &to
        )
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            return Err(if is_sqlstate(&e, UNIQUE_VIOLATION) {
                StoreError::AlreadyExists("mailbox")
            } else {
                e.into()
            }
            .into());
        }
        sqlx::query!(
            "UPDATE subscriptions SET name = $3 || substr(name, length($2) + 1) \
             WHERE user_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
            uid,
            &from,
            &to
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    }
    notify(&mut tx, user_change(uid)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(pb::RenameMailboxResponse {}))
}

pub(super) async fn set_subscription(
    svc: &MailboxesSvc,
    req: Request<pb::SetSubscriptionRequest>,
) -> Result<Response<pb::SetSubscriptionResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    let name = names::mailbox(&req.name)?;
    let res = if req.subscribed {
        sqlx::query!(
            "INSERT INTO subscriptions (user_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            uid,
            &name
        )
        .execute(svc.pool())
        .await
    } else {
        sqlx::query!(
            "DELETE FROM subscriptions WHERE user_id = $1 AND name = $2",
            uid,
            &name
        )
        .execute(svc.pool())
        .await
    };
    let done = res.map_err(|e| {
        if is_sqlstate(&e, FOREIGN_KEY_VIOLATION) {
            StoreError::NotFound("user")
        } else {
            e.into()
        }
    })?;
    // Watchers of the user's mailbox list (IMAP NOTIFY SubscriptionChange,
    // RFC 5465 §5.5) hear of real changes only.
    if done.rows_affected() > 0 {
        let mut conn = svc.pool().acquire().await.map_err(StoreError::from)?;
        notify(&mut conn, user_change(uid)).await?;
    }
    Ok(Response::new(pb::SetSubscriptionResponse {}))
}

pub(super) async fn list_subscriptions(
    svc: &MailboxesSvc,
    req: Request<pb::ListSubscriptionsRequest>,
) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
    let uid = id(req.get_ref().user_id, "user")?;
    Ok(Response::new(pb::ListSubscriptionsResponse {
        names: subscribed(svc.pool(), uid).await?,
    }))
}
