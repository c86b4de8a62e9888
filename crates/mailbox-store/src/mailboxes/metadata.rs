//! IMAP METADATA storage (RFC 5464): server and mailbox entries of one user.
//!
//! The IMAP service validates entry names (syntax, `/private` or `/shared`,
//! lower case); the store checks them again cheaply and enforces the limits
//! of [`mailstore_api`]: [`METADATA_MAX_VALUE`] octets per value,
//! [`METADATA_MAX_ENTRIES`] entries per user (server and mailbox entries
//! together), [`METADATA_MAX_PER_COMMAND`] entries per request. A
//! SETMETADATA is one transaction (RFC 5464 §4.3: all or nothing) that
//! locks the user row first, so concurrent writers are counted exactly.

use mailstore_api::{
    METADATA_MAX_ENTRIES, METADATA_MAX_NAME, METADATA_MAX_PER_COMMAND, METADATA_MAX_VALUE, pb,
};
use sqlx::PgConnection;
use tonic::{Request, Response, Status};

use crate::db::{FOREIGN_KEY_VIOLATION, is_sqlstate};
use crate::error::{Result, StoreError};
use crate::messages::{mailbox_id_by_name, notify};
use crate::names;
use crate::notify::MailboxChange;
use crate::wire::id;

use super::MailboxesSvc;

/// A name the IMAP service would have produced: `/private/...` or
/// `/shared/...`, lower-case printable ASCII, no wildcards, no empty
/// component (RFC 5464 §3.2).
fn valid_name(n: &str) -> bool {
    n.len() <= METADATA_MAX_NAME
        && (n.starts_with("/private/") || n.starts_with("/shared/"))
        && !n.ends_with('/')
        && !n.contains("//")
        && n.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b.is_ascii_uppercase() && b != b'*' && b != b'%')
}

/// The mailbox the request names: None for the server entries ("").
async fn target(conn: &mut PgConnection, user_id: i64, mailbox: &str) -> Result<Option<i64>> {
    if mailbox.is_empty() {
        return Ok(None);
    }
    let name = names::mailbox(mailbox)?;
    mailbox_id_by_name(conn, user_id, &name)
        .await?
        .map(Some)
        .ok_or(StoreError::NotFound("mailbox"))
}

pub(super) async fn get_metadata(
    svc: &MailboxesSvc,
    req: Request<pb::GetMetadataRequest>,
) -> Result<Response<pb::GetMetadataResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    if req.entries.len() > METADATA_MAX_PER_COMMAND {
        return Err(StoreError::invalid("too many metadata entries in one request").into());
    }
    // `/private` and `/shared` themselves name everything below (depth).
    if !req
        .entries
        .iter()
        .all(|e| valid_name(e) || e == "/private" || e == "/shared")
    {
        return Err(StoreError::invalid("invalid metadata entry name").into());
    }
    let mut conn = svc.pool().acquire().await.map_err(StoreError::from)?;
    let mid = target(&mut conn, uid, &req.mailbox).await?;
    // depth: 0 = exact names; 1 = also direct children (no further "/"
    // after the prefix); 2+ = every descendant (RFC 5464 §4.2.2).
    let depth = i32::try_from(req.depth.min(2)).unwrap_or(2);
    let rows = sqlx::query!(
        "SELECT entry, value FROM metadata \
         WHERE user_id = $1 AND COALESCE(mailbox_id, 0) = COALESCE($2::bigint, 0) \
         AND EXISTS (SELECT 1 FROM unnest($3::text[]) AS n(p) WHERE entry = n.p \
             OR ($4 > 0 AND starts_with(entry, n.p || '/') \
                 AND ($4 > 1 OR strpos(substr(entry, length(n.p) + 2), '/') = 0))) \
         ORDER BY entry",
        uid,
        mid,
        &req.entries,
        depth
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    Ok(Response::new(pb::GetMetadataResponse {
        entries: rows
            .into_iter()
            .map(|r| pb::MetadataEntry {
                name: r.entry,
                value: Some(r.value),
            })
            .collect(),
    }))
}

pub(super) async fn set_metadata(
    svc: &MailboxesSvc,
    req: Request<pb::SetMetadataRequest>,
) -> Result<Response<pb::SetMetadataResponse>, Status> {
    let req = req.into_inner();
    let uid = id(req.user_id, "user")?;
    if req.entries.len() > METADATA_MAX_PER_COMMAND {
        return Err(StoreError::invalid("too many metadata entries in one request").into());
    }
    for e in &req.entries {
        if !valid_name(&e.name) {
            return Err(StoreError::invalid("invalid metadata entry name").into());
        }
        if e.value
            .as_ref()
            .is_some_and(|v| v.len() > METADATA_MAX_VALUE)
        {
            return Err(StoreError::invalid("metadata value too large").into());
        }
    }
    let mut tx = svc.pool().begin().await.map_err(StoreError::from)?;
    sqlx::query_scalar!("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE", uid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::NotFound("user"))?;
    let mid = target(&mut tx, uid, &req.mailbox).await?;
    let mut added = false;
    for e in &req.entries {
        match &e.value {
            None => {
                sqlx::query!(
                    "DELETE FROM metadata WHERE user_id = $1 \
                     AND COALESCE(mailbox_id, 0) = COALESCE($2::bigint, 0) AND entry = $3",
                    uid,
                    mid,
                    &e.name
                )
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            Some(v) => {
                sqlx::query!(
                    "INSERT INTO metadata (user_id, mailbox_id, entry, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, (COALESCE(mailbox_id, 0)), entry) \
                     DO UPDATE SET value = EXCLUDED.value",
                    uid,
                    mid,
                    &e.name,
                    v
                )
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    // The mailbox was deleted meanwhile (its row is not
                    // locked here: metadata never blocks mail).
                    if is_sqlstate(&e, FOREIGN_KEY_VIOLATION) {
                        StoreError::NotFound("mailbox")
                    } else {
                        StoreError::from(e)
                    }
                })?;
                added = true;
            }
        }
    }
    if added {
        let n = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM metadata WHERE user_id = $1"#,
            uid
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if n > METADATA_MAX_ENTRIES {
            // Dropping `tx` rolls the whole command back.
            return Err(StoreError::LimitReached("too many metadata entries").into());
        }
    }
    // Watchers (IMAP NOTIFY MailboxMetadataChange/ServerMetadataChange,
    // RFC 5465 §5.6) hear of it when, and only if, it commits.
    let change = MailboxChange {
        user_id: req.user_id,
        mailbox_id: mid.map_or(0, |m| m as u64),
        kind: pb::MailboxEventKind::Metadata as i32,
        modseq: 0,
        uidnext: 0,
    };
    notify(&mut tx, change).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Response::new(pb::SetMetadataResponse {}))
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("/private/comment"));
        assert!(valid_name("/shared/vendor/x/y"));
        for bad in [
            "/private",
            "/private/",
            "/Private/comment",
            "/other/x",
            "/private//x",
            "/private/x/",
            "/private/a*",
            "/private/a%",
            "/private/a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&format!("/private/{}", "a".repeat(300))));
    }
}
