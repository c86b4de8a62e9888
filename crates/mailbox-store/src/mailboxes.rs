//! Mailboxes service: folders, messages, flags, copy/move, expunge, search,
//! watch and locks.
//!
//! Concurrency: every transaction that changes a mailbox first locks the
//! mailbox row (`FOR UPDATE`), so UID and MODSEQ allocation is serial per
//! mailbox and lock order is always mailbox → messages (no deadlocks).
//! Transactions touching two mailboxes lock them in id order.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mailstore_api::pb;
use prost::Message as _;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::accounts::timestamp;
use crate::error::{Result, StoreError, sqlstate};
use crate::notify::{HubEvent, MAILBOX_CHANNEL, MailboxChange};
use crate::{Store, flags, names, structure};

/// Rows per FetchMeta batch, and bytes per body chunk.
const META_BATCH: usize = 256;
pub const BODY_CHUNK: i64 = 256 * 1024;
/// Most UID ranges accepted in one set.
const MAX_RANGES: usize = 10_000;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct MailboxesSvc {
    store: Arc<Store>,
}

impl MailboxesSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

pub(crate) fn id(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::NotFound(what))
}

/// A UID set as two arrays for `unnest`, validated and bounded.
pub(crate) fn ranges(set: Option<&pb::UidSet>) -> Result<Option<(Vec<i64>, Vec<i64>)>> {
    let Some(set) = set else { return Ok(None) };
    if set.ranges.is_empty() {
        return Ok(None);
    }
    if set.ranges.len() > MAX_RANGES {
        return Err(StoreError::invalid("too many UID ranges"));
    }
    let mut lo = Vec::with_capacity(set.ranges.len());
    let mut hi = Vec::with_capacity(set.ranges.len());
    for r in &set.ranges {
        let (a, b) = if r.first <= r.last {
            (r.first, r.last)
        } else {
            (r.last, r.first)
        };
        lo.push(i64::from(a));
        hi.push(i64::from(b));
    }
    Ok(Some((lo, hi)))
}

/// SQL fragment: `uid` within the ranges bound as $lo and $hi (or all when NULL).
pub(crate) fn uid_filter(lo: usize, hi: usize) -> String {
    format!(
        "(${lo}::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest(${lo}::bigint[], ${hi}::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b))"
    )
}

pub(crate) async fn notify(conn: &mut PgConnection, c: MailboxChange) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(MAILBOX_CHANNEL)
        .bind(c.payload())
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks a mailbox row and returns (user_id, uidvalidity, uidnext, highestmodseq).
pub(crate) async fn lock_mailbox(
    conn: &mut PgConnection,
    mailbox_id: i64,
) -> Result<(i64, i64, i64, i64)> {
    let row = sqlx::query(
        "SELECT user_id, uidvalidity, uidnext, highestmodseq FROM mailboxes WHERE id = $1 FOR UPDATE",
    )
    .bind(mailbox_id)
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound("mailbox"))?;
    Ok((
        row.try_get("user_id")?,
        row.try_get("uidvalidity")?,
        row.try_get("uidnext")?,
        row.try_get("highestmodseq")?,
    ))
}

pub(crate) async fn mailbox_id_by_name(
    conn: &mut PgConnection,
    user_id: i64,
    name: &str,
) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM mailboxes WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

/// Ensures a blob exists (stored once per content).
pub(crate) async fn put_blob(conn: &mut PgConnection, hash: &[u8], data: &[u8]) -> Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = $1)")
        .bind(hash)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        sqlx::query("INSERT INTO blobs (hash, size, data) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING")
            .bind(hash)
            .bind(data.len() as i64)
            .bind(data)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Everything needed to insert one message row.
pub(crate) struct NewMessage<'a> {
    pub hash: &'a [u8],
    pub size: i64,
    pub internal_date: chrono::DateTime<chrono::Utc>,
    pub sent_date: Option<chrono::DateTime<chrono::Utc>>,
    pub flags: flags::FlagSet,
    pub structure: Vec<u8>,
    pub crlf_size: i64,
}

/// Appends into a locked transaction: allocates the UID and MODSEQ, inserts,
/// updates the quota counter, notifies. Returns the AppendResponse.
pub(crate) async fn insert_message(
    conn: &mut PgConnection,
    mailbox_id: i64,
    m: &NewMessage<'_>,
) -> Result<pb::AppendResponse> {
    let (user_id, uidvalidity, _, _) = lock_mailbox(conn, mailbox_id).await?;
    let row = sqlx::query(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 \
         WHERE id = $1 RETURNING uidnext - 1 AS uid, highestmodseq, uidnext",
    )
    .bind(mailbox_id)
    .fetch_one(&mut *conn)
    .await?;
    let uid: i64 = row.try_get("uid")?;
    let modseq: i64 = row.try_get("highestmodseq")?;
    let uidnext: i64 = row.try_get("uidnext")?;
    if uid > i64::from(u32::MAX) {
        return Err(StoreError::precondition("mailbox UID space exhausted"));
    }
    sqlx::query(
        "INSERT INTO messages (mailbox_id, uid, blob_hash, size, internal_date, sent_date, flags, keywords, modseq, structure, crlf_size) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(mailbox_id)
    .bind(uid)
    .bind(m.hash)
    .bind(m.size)
    .bind(m.internal_date)
    .bind(m.sent_date)
    .bind(m.flags.bits)
    .bind(&m.flags.keywords)
    .bind(modseq)
    .bind(&m.structure)
    .bind(m.crlf_size)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE users SET used_bytes = used_bytes + $2 WHERE id = $1")
        .bind(user_id)
        .bind(m.size)
        .execute(&mut *conn)
        .await?;
    notify(
        conn,
        MailboxChange {
            user_id: user_id as u64,
            mailbox_id: mailbox_id as u64,
            kind: pb::MailboxEventKind::Appended as i32,
            modseq: modseq as u64,
            uidnext: uidnext as u32,
        },
    )
    .await?;
    Ok(pb::AppendResponse {
        mailbox_id: mailbox_id as u64,
        uidvalidity: uidvalidity as u32,
        uid: uid as u32,
        modseq: modseq as u64,
        duplicate: false,
        size: m.size as u64,
    })
}

/// Receives a client stream of header + data chunks, bounded by `max`.
pub(crate) async fn collect_body<T, H>(
    mut stream: Streaming<T>,
    max: u64,
    split: impl Fn(T) -> Option<std::result::Result<H, Vec<u8>>>,
    declared: impl Fn(&H) -> u64,
) -> Result<(H, Vec<u8>)> {
    let first = stream
        .message()
        .await
        .map_err(|e| StoreError::invalid(format!("stream: {}", e.message())))?
        .ok_or_else(|| StoreError::invalid("empty stream"))?;
    let Some(Ok(header)) = split(first) else {
        return Err(StoreError::invalid("the first message must be the header"));
    };
    let size = declared(&header);
    if size > max {
        return Err(StoreError::TooLarge(max));
    }
    let mut data = Vec::with_capacity(usize::try_from(size.min(max)).unwrap_or(0));
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|e| StoreError::invalid(format!("stream: {}", e.message())))?
    {
        match split(msg) {
            Some(Err(chunk)) => {
                if (data.len() + chunk.len()) as u64 > max {
                    return Err(StoreError::TooLarge(max));
                }
                data.extend_from_slice(&chunk);
            }
            _ => return Err(StoreError::invalid("header after data")),
        }
    }
    Ok((header, data))
}

/// What the store computes once when a message arrives.
pub(crate) struct Analysed {
    pub hash: Vec<u8>,
    pub structure: Vec<u8>,
    pub sent_date: Option<chrono::DateTime<chrono::Utc>>,
    pub crlf_size: i64,
    pub data: Vec<u8>,
}

/// Hash, structure and CRLF size of a raw message, computed off the async runtime.
pub(crate) async fn analyse(data: Vec<u8>) -> Result<Analysed> {
    tokio::task::spawn_blocking(move || {
        let parsed = structure::parse(&data);
        Analysed {
            hash: Sha256::digest(&data).to_vec(),
            structure: parsed.structure.encode_to_vec(),
            sent_date: parsed.sent_date,
            crlf_size: i64::try_from(mailstore_api::crlf_size(&data)).unwrap_or(0),
            data,
        }
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))
}

fn mailbox_row(r: &sqlx::postgres::PgRow, subscribed: bool) -> Result<pb::Mailbox> {
    Ok(pb::Mailbox {
        id: r.try_get::<i64, _>("id")? as u64,
        user_id: r.try_get::<i64, _>("user_id")? as u64,
        name: r.try_get("name")?,
        special_use: r.try_get("special_use")?,
        subscribed,
        uidvalidity: r.try_get::<i64, _>("uidvalidity")? as u32,
        uidnext: r.try_get::<i64, _>("uidnext")? as u32,
        highestmodseq: r.try_get::<i64, _>("highestmodseq")? as u64,
        recent_floor: r.try_get::<i64, _>("recent_floor")? as u32,
        ..Default::default()
    })
}

/// Fills message counts of a mailbox.
async fn counts(pool: &PgPool, mb: &mut pb::Mailbox) -> Result<()> {
    let r = sqlx::query(
        "SELECT count(*) AS n, \
                count(*) FILTER (WHERE flags & 1 = 0) AS unseen, \
                count(*) FILTER (WHERE flags & 8 <> 0) AS deleted, \
                count(*) FILTER (WHERE uid >= $2) AS recent, \
                COALESCE(sum(size), 0)::bigint AS size, \
                COALESCE(min(uid) FILTER (WHERE flags & 1 = 0), 0) AS first_unseen \
         FROM messages WHERE mailbox_id = $1",
    )
    .bind(mb.id as i64)
    .bind(i64::from(mb.recent_floor))
    .fetch_one(pool)
    .await?;
    mb.messages = r.try_get::<i64, _>("n")? as u32;
    mb.unseen = r.try_get::<i64, _>("unseen")? as u32;
    mb.deleted = r.try_get::<i64, _>("deleted")? as u32;
    mb.recent = r.try_get::<i64, _>("recent")? as u32;
    mb.size = r.try_get::<i64, _>("size")? as u64;
    mb.first_unseen_uid = r.try_get::<i64, _>("first_unseen")? as u32;
    Ok(())
}

const MAILBOX_COLS: &str =
    "id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, recent_floor";

async fn subscribed(pool: &PgPool, user_id: i64) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT name FROM subscriptions WHERE user_id = $1 ORDER BY name")
            .bind(user_id)
            .fetch_all(pool)
            .await?,
    )
}

fn user_change(user_id: i64) -> MailboxChange {
    MailboxChange {
        user_id: user_id as u64,
        mailbox_id: 0,
        kind: pb::MailboxEventKind::Mailboxes as i32,
        modseq: 0,
        uidnext: 0,
    }
}

/// Copies (and with `move_` removes) messages between mailboxes in one
/// transaction; returns (uidvalidity, source uids, destination uids).
pub(crate) async fn copy_in_tx(
    conn: &mut PgConnection,
    src: i64,
    set: Option<(Vec<i64>, Vec<i64>)>,
    dst: i64,
    move_: bool,
) -> Result<pb::CopyMessagesResponse> {
    if src == dst && move_ {
        return Err(StoreError::invalid("cannot move a mailbox into itself"));
    }
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
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT m.uid, m.size FROM messages m WHERE m.mailbox_id = $1 AND {} ORDER BY m.uid",
        uid_filter(2, 3)
    )))
    .bind(src)
    .bind(&lo)
    .bind(&hi)
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
    let src_uids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get("uid"))
        .collect::<Result<_, _>>()?;
    let total: i64 = rows
        .iter()
        .map(|r| r.try_get::<i64, _>("size").unwrap_or(0))
        .sum();
    let r = sqlx::query(
        "UPDATE mailboxes SET uidnext = uidnext + $2, highestmodseq = highestmodseq + 1 WHERE id = $1 \
         RETURNING uidnext - $2 AS first_uid, highestmodseq, uidnext",
    )
    .bind(dst)
    .bind(n)
    .fetch_one(&mut *conn)
    .await?;
    let first_uid: i64 = r.try_get("first_uid")?;
    let modseq: i64 = r.try_get("highestmodseq")?;
    let uidnext: i64 = r.try_get("uidnext")?;
    if uidnext - 1 > i64::from(u32::MAX) {
        return Err(StoreError::precondition("mailbox UID space exhausted"));
    }
    sqlx::query(
        "INSERT INTO messages (mailbox_id, uid, blob_hash, size, internal_date, sent_date, flags, keywords, modseq, structure, crlf_size) \
         SELECT $1, $3 + o.ord - 1, m.blob_hash, m.size, m.internal_date, m.sent_date, m.flags, m.keywords, $4, m.structure, m.crlf_size \
         FROM unnest($5::bigint[]) WITH ORDINALITY AS o(uid, ord) JOIN messages m ON m.mailbox_id = $2 AND m.uid = o.uid",
    )
    .bind(dst)
    .bind(src)
    .bind(first_uid)
    .bind(modseq)
    .bind(&src_uids)
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
        remove_messages(conn, src, user_id, &src_uids).await?;
    } else {
        sqlx::query("UPDATE users SET used_bytes = used_bytes + $2 WHERE id = $1")
            .bind(user_id)
            .bind(total)
            .execute(&mut *conn)
            .await?;
    }
    resp.source_uids = src_uids.iter().map(|u| *u as u32).collect();
    resp.destination_uids = (0..n).map(|i| (first_uid + i) as u32).collect();
    Ok(resp)
}

/// Deletes messages of a locked mailbox, records them as expunged with a
/// new MODSEQ, and notifies. Returns (expunged uids, modseq, blob hashes).
pub(crate) async fn remove_messages(
    conn: &mut PgConnection,
    mailbox_id: i64,
    user_id: i64,
    uids: &[i64],
) -> Result<(Vec<i64>, i64, Vec<Vec<u8>>)> {
    if uids.is_empty() {
        let ms: i64 = sqlx::query_scalar("SELECT highestmodseq FROM mailboxes WHERE id = $1")
            .bind(mailbox_id)
            .fetch_one(&mut *conn)
            .await?;
        return Ok((Vec::new(), ms, Vec::new()));
    }
    let modseq: i64 = sqlx::query_scalar(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 RETURNING highestmodseq",
    )
    .bind(mailbox_id)
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING uid, size, blob_hash",
    )
    .bind(mailbox_id)
    .bind(uids)
    .fetch_all(&mut *conn)
    .await?;
    let mut gone = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut size = 0i64;
    for r in &rows {
        gone.push(r.try_get::<i64, _>("uid")?);
        size += r.try_get::<i64, _>("size")?;
        hashes.push(r.try_get::<Vec<u8>, _>("blob_hash")?);
    }
    gone.sort_unstable();
    sqlx::query(
        "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u \
         ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
    )
    .bind(mailbox_id)
    .bind(&gone)
    .bind(modseq)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE users SET used_bytes = GREATEST(0, used_bytes - $2) WHERE id = $1")
        .bind(user_id)
        .bind(size)
        .execute(&mut *conn)
        .await?;
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

/// Deletes blobs no message and no queued job refers to any more. Best
/// effort after commit: the foreign keys make it safe against a concurrent
/// append that starts referring to the blob again (that delete then fails).
pub(crate) async fn collect_garbage(pool: &PgPool, hashes: Vec<Vec<u8>>) {
    if hashes.is_empty() {
        return;
    }
    let res = sqlx::query(
        "DELETE FROM blobs b WHERE b.hash = ANY($1) \
         AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_hash = b.hash) \
         AND NOT EXISTS (SELECT 1 FROM queue_jobs q WHERE q.blob_hash = b.hash)",
    )
    .bind(&hashes)
    .execute(pool)
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "blob garbage collection skipped");
    }
}

#[tonic::async_trait]
impl pb::mailboxes_server::Mailboxes for MailboxesSvc {
    async fn list_mailboxes(
        &self,
        req: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        let req = req.into_inner();
        let uid = id(req.user_id, "user")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 ORDER BY name"
        )))
        .bind(uid)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        let subs = subscribed(self.pool(), uid).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.try_get("name").map_err(StoreError::from)?;
            let mut mb = mailbox_row(r, subs.binary_search(&name).is_ok())?;
            let prefix = format!("{name}/");
            mb.has_children = rows.iter().any(|o| {
                o.try_get::<String, _>("name")
                    .is_ok_and(|n| n.starts_with(&prefix))
            });
            if req.with_counts {
                counts(self.pool(), &mut mb).await?;
            }
            out.push(mb);
        }
        Ok(Response::new(pb::ListMailboxesResponse { mailboxes: out }))
    }

    async fn create_mailbox(
        &self,
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
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let res = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO mailboxes (user_id, name, special_use) VALUES ($1, $2, $3) RETURNING {MAILBOX_COLS}"
        )))
        .bind(uid)
        .bind(&name)
        .bind(&special)
        .fetch_one(&mut *tx)
        .await;
        let row = match res {
            Ok(r) => r,
            Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
                return Err(StoreError::AlreadyExists("mailbox").into());
            }
            Err(e) if sqlstate(&e).as_deref() == Some("23503") => {
                return Err(StoreError::NotFound("user").into());
            }
            Err(e) => return Err(StoreError::from(e).into()),
        };
        notify(&mut tx, user_change(uid)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(mailbox_row(&row, false)?))
    }

    async fn delete_mailbox(
        &self,
        req: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        let req = req.into_inner();
        let uid = id(req.user_id, "user")?;
        let name = names::mailbox(&req.name)?;
        if name == "INBOX" {
            return Err(StoreError::precondition("INBOX cannot be deleted").into());
        }
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let mid = mailbox_id_by_name(&mut tx, uid, &name)
            .await?
            .ok_or(StoreError::NotFound("mailbox"))?;
        lock_mailbox(&mut tx, mid).await?;
        let rows =
            sqlx::query("DELETE FROM messages WHERE mailbox_id = $1 RETURNING size, blob_hash")
                .bind(mid)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        let size: i64 = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("size").unwrap_or(0))
            .sum();
        let hashes: Vec<Vec<u8>> = rows
            .iter()
            .filter_map(|r| r.try_get("blob_hash").ok())
            .collect();
        sqlx::query("DELETE FROM mailboxes WHERE id = $1")
            .bind(mid)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        sqlx::query("UPDATE users SET used_bytes = GREATEST(0, used_bytes - $2) WHERE id = $1")
            .bind(uid)
            .bind(size)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        notify(&mut tx, user_change(uid)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        collect_garbage(self.pool(), hashes).await;
        Ok(Response::new(pb::DeleteMailboxResponse {}))
    }

    async fn rename_mailbox(
        &self,
        req: Request<pb::RenameMailboxRequest>,
    ) -> Result<Response<pb::RenameMailboxResponse>, Status> {
        let req = req.into_inner();
        let uid = id(req.user_id, "user")?;
        let from = names::mailbox(&req.from)?;
        let to = names::mailbox(&req.to)?;
        if to == "INBOX" || to.starts_with(&format!("{from}/")) {
            return Err(StoreError::invalid("invalid rename target").into());
        }
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let src = mailbox_id_by_name(&mut tx, uid, &from)
            .await?
            .ok_or(StoreError::NotFound("mailbox"))?;
        if mailbox_id_by_name(&mut tx, uid, &to).await?.is_some() {
            return Err(StoreError::AlreadyExists("mailbox").into());
        }
        if from == "INBOX" {
            // RFC 9051 §6.3.6: renaming INBOX moves its messages to the new
            // name and leaves INBOX in place, empty. Children stay.
            let dst: i64 = sqlx::query_scalar(
                "INSERT INTO mailboxes (user_id, name) VALUES ($1, $2) RETURNING id",
            )
            .bind(uid)
            .bind(&to)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            copy_in_tx(&mut tx, src, None, dst, true).await?;
        } else {
            let res = sqlx::query(
                "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1) \
                 WHERE user_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
            )
            .bind(uid)
            .bind(&from)
            .bind(&to)
            .execute(&mut *tx)
            .await;
            if let Err(e) = res {
                return Err(if sqlstate(&e).as_deref() == Some("23505") {
                    StoreError::AlreadyExists("mailbox")
                } else {
                    e.into()
                }
                .into());
            }
            sqlx::query(
                "UPDATE subscriptions SET name = $3 || substr(name, length($2) + 1) \
                 WHERE user_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
            )
            .bind(uid)
            .bind(&from)
            .bind(&to)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        notify(&mut tx, user_change(uid)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(pb::RenameMailboxResponse {}))
    }

    async fn set_subscription(
        &self,
        req: Request<pb::SetSubscriptionRequest>,
    ) -> Result<Response<pb::SetSubscriptionResponse>, Status> {
        let req = req.into_inner();
        let uid = id(req.user_id, "user")?;
        let name = names::mailbox(&req.name)?;
        let q = if req.subscribed {
            "INSERT INTO subscriptions (user_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM subscriptions WHERE user_id = $1 AND name = $2"
        };
        sqlx::query(q)
            .bind(uid)
            .bind(&name)
            .execute(self.pool())
            .await
            .map_err(|e| {
                if sqlstate(&e).as_deref() == Some("23503") {
                    StoreError::NotFound("user")
                } else {
                    e.into()
                }
            })?;
        Ok(Response::new(pb::SetSubscriptionResponse {}))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let uid = id(req.get_ref().user_id, "user")?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            names: subscribed(self.pool(), uid).await?,
        }))
    }

    async fn get_mailbox(
        &self,
        req: Request<pb::GetMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let req = req.into_inner();
        let uid = id(req.user_id, "user")?;
        let name = names::mailbox(&req.name)?;
        let row = if req.claim_recent {
            // The claiming session sees [old floor, uidnext) as \Recent.
            sqlx::query(
                "UPDATE mailboxes m SET recent_floor = m.uidnext FROM (SELECT id, recent_floor AS old FROM mailboxes \
                 WHERE user_id = $1 AND name = $2 FOR UPDATE) o WHERE m.id = o.id \
                 RETURNING m.id, m.user_id, m.name, m.special_use, m.uidvalidity, m.uidnext, m.highestmodseq, o.old AS recent_floor",
            )
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 AND name = $2"
            )))
        }
        .bind(uid)
        .bind(&name)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or(StoreError::NotFound("mailbox"))?;
        let subs = subscribed(self.pool(), uid).await?;
        let mut mb = mailbox_row(&row, subs.contains(&name))?;
        counts(self.pool(), &mut mb).await?;
        Ok(Response::new(mb))
    }

    async fn append(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let max = self.store.config.max_message_size;
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
            data,
        } = analyse(data).await?;
        let started = std::time::Instant::now();
        // One retry: a concurrent garbage collection may remove the blob
        // between our existence check and the message insert (FK violation).
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
            let mailbox_id = mailbox_id_by_name(&mut tx, user_id, &name)
                .await?
                .ok_or(StoreError::NotFound("mailbox"))?;
            put_blob(&mut tx, &hash, &data).await?;
            let msg = NewMessage {
                hash: &hash,
                size,
                internal_date,
                sent_date,
                flags: fl.clone(),
                structure: structure.clone(),
                crlf_size,
            };
            match insert_message(&mut tx, mailbox_id, &msg).await {
                Ok(r) => {
                    tx.commit().await.map_err(StoreError::from)?;
                    break r;
                }
                Err(StoreError::Internal(e)) if attempt < 3 && e.contains("23503") => continue,
                Err(e) => return Err(e.into()),
            }
        };
        metrics::counter!("store_appends_total").increment(1);
        metrics::histogram!("store_append_seconds").record(started.elapsed().as_secs_f64());
        Ok(Response::new(resp))
    }

    async fn deliver_from_queue(
        &self,
        req: Request<pb::DeliverFromQueueRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        Ok(Response::new(
            crate::queue::deliver(&self.store, req.into_inner()).await?,
        ))
    }

    type FetchMetaStream = BoxStream<pb::FetchMetaResponse>;

    async fn fetch_meta(
        &self,
        req: Request<pb::FetchMetaRequest>,
    ) -> Result<Response<Self::FetchMetaStream>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let set = ranges(req.uids.as_ref())?;
        let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
        let pool = self.pool().clone();
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

    type FetchBodyStream = BoxStream<pb::BodyChunk>;

    async fn fetch_body(
        &self,
        req: Request<pb::FetchBodyRequest>,
    ) -> Result<Response<Self::FetchBodyStream>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let hash: Vec<u8> =
            sqlx::query_scalar("SELECT blob_hash FROM messages WHERE mailbox_id = $1 AND uid = $2")
                .bind(mailbox_id)
                .bind(i64::from(req.uid))
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::from)?
                .ok_or(StoreError::NotFound("message"))?;
        Ok(Response::new(stream_blob(
            self.pool().clone(),
            hash,
            req.offset,
            req.length,
        )))
    }

    async fn store_flags(
        &self,
        req: Request<pb::StoreFlagsRequest>,
    ) -> Result<Response<pb::StoreFlagsResponse>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let change = flags::parse(&req.flags).map_err(StoreError::invalid)?;
        let set = ranges(req.uids.as_ref())?;
        let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
        let unchanged_since = i64::try_from(req.unchanged_since).unwrap_or(i64::MAX);
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let (user_id, _, _, mut highest) = lock_mailbox(&mut tx, mailbox_id).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT m.uid, m.flags, m.keywords, m.modseq FROM messages m WHERE m.mailbox_id = $1 AND {} ORDER BY m.uid",
            uid_filter(2, 3)
        )))
        .bind(mailbox_id)
        .bind(&lo)
        .bind(&hi)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let mut resp = pb::StoreFlagsResponse::default();
        let mut to_change: Vec<(i64, flags::FlagSet)> = Vec::new();
        let mut unchanged: Vec<pb::FlagUpdate> = Vec::new();
        for r in &rows {
            let uid: i64 = r.try_get("uid").map_err(StoreError::from)?;
            let cur = flags::FlagSet {
                bits: r.try_get("flags").map_err(StoreError::from)?,
                keywords: r.try_get("keywords").map_err(StoreError::from)?,
            };
            let modseq: i64 = r.try_get("modseq").map_err(StoreError::from)?;
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
            highest = sqlx::query_scalar("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 RETURNING highestmodseq")
                .bind(mailbox_id)
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
            sqlx::query(
                "UPDATE messages m SET flags = c.flags, keywords = COALESCE(string_to_array(NULLIF(c.kw, ''), ' ')::text[], '{}'), modseq = $5 \
                 FROM unnest($2::bigint[], $3::int[], $4::text[]) AS c(uid, flags, kw) \
                 WHERE m.mailbox_id = $1 AND m.uid = c.uid",
            )
            .bind(mailbox_id)
            .bind(&uids)
            .bind(&bits)
            .bind(&kws)
            .bind(highest)
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

    async fn copy_messages(
        &self,
        req: Request<pb::CopyMessagesRequest>,
    ) -> Result<Response<pb::CopyMessagesResponse>, Status> {
        let req = req.into_inner();
        let src = id(req.mailbox_id, "mailbox")?;
        let user_id = id(req.user_id, "user")?;
        let dest = names::mailbox(&req.destination)?;
        let set = ranges(req.uids.as_ref())?;
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let dst = mailbox_id_by_name(&mut tx, user_id, &dest)
            .await?
            .ok_or(StoreError::NotFound("mailbox"))?;
        let resp = copy_in_tx(&mut tx, src, set, dst, req.r#move).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Response::new(resp))
    }

    async fn expunge(
        &self,
        req: Request<pb::ExpungeRequest>,
    ) -> Result<Response<pb::ExpungeResponse>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let set = ranges(req.uids.as_ref())?;
        let (lo, hi) = set.map_or((None, None), |(l, h)| (Some(l), Some(h)));
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let (user_id, ..) = lock_mailbox(&mut tx, mailbox_id).await?;
        let uids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT m.uid FROM messages m WHERE m.mailbox_id = $1 AND m.flags & 8 <> 0 AND {} ORDER BY m.uid",
            uid_filter(2, 3)
        )))
        .bind(mailbox_id)
        .bind(&lo)
        .bind(&hi)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let (gone, modseq, hashes) = remove_messages(&mut tx, mailbox_id, user_id, &uids).await?;
        tx.commit().await.map_err(StoreError::from)?;
        collect_garbage(self.pool(), hashes).await;
        Ok(Response::new(pb::ExpungeResponse {
            expunged: gone.iter().map(|u| *u as u32).collect(),
            highestmodseq: modseq as u64,
        }))
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let key = req.key.unwrap_or(pb::SearchKey {
            key: Some(pb::search_key::Key::All(true)),
        });
        Ok(Response::new(
            crate::search::search(self.pool(), mailbox_id, &key).await?,
        ))
    }

    async fn list_expunged(
        &self,
        req: Request<pb::ListExpungedRequest>,
    ) -> Result<Response<pb::ListExpungedResponse>, Status> {
        let req = req.into_inner();
        let mailbox_id = id(req.mailbox_id, "mailbox")?;
        let uids: Vec<i64> = sqlx::query_scalar(
            "SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
        )
        .bind(mailbox_id)
        .bind(i64::try_from(req.since_modseq).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(Response::new(pb::ListExpungedResponse {
            uids: uids.iter().map(|u| *u as u32).collect(),
        }))
    }

    type WatchStream = BoxStream<pb::MailboxEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let mut rx = self.store.hub.subscribe_mailboxes();
        let (tx, out) = mpsc::channel(64);
        let (user_id, mailbox_id) = (req.user_id, req.mailbox_id);
        tokio::spawn(async move {
            let ready = pb::MailboxEvent {
                kind: pb::MailboxEventKind::Ready as i32,
                user_id,
                mailbox_id,
                ..Default::default()
            };
            if tx.send(Ok(ready)).await.is_err() {
                return;
            }
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    () = tx.closed() => return,
                };
                let event = match ev {
                    Ok(HubEvent::Change(c)) => {
                        if c.user_id != user_id
                            || (mailbox_id != 0 && c.mailbox_id != mailbox_id && c.mailbox_id != 0)
                        {
                            continue;
                        }
                        pb::MailboxEvent {
                            kind: c.kind,
                            user_id: c.user_id,
                            mailbox_id: c.mailbox_id,
                            modseq: c.modseq,
                            uidnext: c.uidnext,
                        }
                    }
                    // Missed events: tell the watcher to resynchronise.
                    Ok(HubEvent::Resync)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        pb::MailboxEvent {
                            kind: pb::MailboxEventKind::Mailboxes as i32,
                            user_id,
                            mailbox_id,
                            ..Default::default()
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn acquire_lock(
        &self,
        req: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty()
            || req.owner.is_empty()
            || req.name.len() > 256
            || req.owner.len() > 256
        {
            return Err(StoreError::invalid("lock name and owner required").into());
        }
        let ttl = i64::try_from(req.ttl_ms.clamp(1_000, 3_600_000)).unwrap_or(60_000);
        let got: Option<String> = sqlx::query_scalar(
            "INSERT INTO locks (name, owner, expires_at) VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
             WHERE locks.owner = EXCLUDED.owner OR locks.expires_at < now() RETURNING owner",
        )
        .bind(&req.name)
        .bind(&req.owner)
        .bind(ttl)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(Response::new(pb::AcquireLockResponse {
            acquired: got.is_some(),
        }))
    }

    async fn release_lock(
        &self,
        req: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let req = req.into_inner();
        sqlx::query("DELETE FROM locks WHERE name = $1 AND owner = $2")
            .bind(&req.name)
            .bind(&req.owner)
            .execute(self.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(Response::new(pb::ReleaseLockResponse {}))
    }
}

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

/// Streams a blob (or a byte range of it) in chunks, reading each chunk with
/// `substring` so memory stays at one chunk however large the message.
pub(crate) fn stream_blob(
    pool: PgPool,
    hash: Vec<u8>,
    offset: u64,
    length: u64,
) -> BoxStream<pb::BodyChunk> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let total: Option<i64> = match sqlx::query_scalar("SELECT size FROM blobs WHERE hash = $1")
            .bind(&hash)
            .fetch_optional(&pool)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(Err(StoreError::from(e).into())).await;
                return;
            }
        };
        let Some(total) = total else {
            let _ = tx.send(Err(StoreError::NotFound("message").into())).await;
            return;
        };
        let start = i64::try_from(offset).unwrap_or(i64::MAX).min(total);
        let end = if length == 0 {
            total
        } else {
            start
                .saturating_add(i64::try_from(length).unwrap_or(i64::MAX))
                .min(total)
        };
        let mut pos = start;
        let mut first = true;
        loop {
            let n = (end - pos).min(BODY_CHUNK);
            let data: Vec<u8> = if n > 0 {
                match sqlx::query_scalar(
                    "SELECT substring(data FROM $2::int FOR $3::int) FROM blobs WHERE hash = $1",
                )
                .bind(&hash)
                .bind(pos + 1)
                .bind(n)
                .fetch_one(&pool)
                .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::from(e).into())).await;
                        return;
                    }
                }
            } else {
                Vec::new()
            };
            pos += data.len() as i64;
            let chunk = pb::BodyChunk {
                data,
                total_size: if first { total as u64 } else { 0 },
            };
            first = false;
            if tx.send(Ok(chunk)).await.is_err() || pos >= end || n == 0 {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
