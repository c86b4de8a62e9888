//! Message insertion, owned here and called by both the mailbox service
//! (APPEND, COPY) and the queue service (local delivery).

use mailstore_api::pb;
use prost::Message as _;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tonic::Streaming;

use crate::error::{Result, StoreError};
use crate::notify::{MAILBOX_CHANNEL, MailboxChange};
use crate::text::{self, SearchText};
use crate::{flags, quota, structure};

pub(crate) async fn notify(conn: &mut PgConnection, c: MailboxChange) -> Result<()> {
    sqlx::query!("SELECT pg_notify($1, $2)", MAILBOX_CHANNEL, c.payload())
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks a mailbox row and returns (user_id, uidvalidity, uidnext, highestmodseq).
pub(crate) async fn lock_mailbox(
    conn: &mut PgConnection,
    mailbox_id: i64,
) -> Result<(i64, i64, i64, i64)> {
    let row = sqlx::query!(
        "SELECT user_id, uidvalidity, uidnext, highestmodseq FROM mailboxes WHERE id = $1 FOR UPDATE",
        mailbox_id
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound("mailbox"))?;
    Ok((row.user_id, row.uidvalidity, row.uidnext, row.highestmodseq))
}

pub(crate) async fn mailbox_id_by_name(
    conn: &mut PgConnection,
    user_id: i64,
    name: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM mailboxes WHERE user_id = $1 AND name = $2",
        user_id,
        name
    )
    .fetch_optional(conn)
    .await?)
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
    /// Refuse when the user's quota would be exceeded (APPEND, delivery).
    pub enforce_quota: bool,
}

/// Appends into a locked transaction: allocates the UID and MODSEQ, inserts,
/// updates the quota counter, notifies. Returns the AppendResponse.
pub(crate) async fn insert_message(
    conn: &mut PgConnection,
    mailbox_id: i64,
    m: &NewMessage<'_>,
) -> Result<pb::AppendResponse> {
    let (user_id, uidvalidity, _, _) = lock_mailbox(conn, mailbox_id).await?;
    let row = sqlx::query!(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 \
         WHERE id = $1 RETURNING uidnext - 1 AS \"uid!\", highestmodseq, uidnext",
        mailbox_id
    )
    .fetch_one(&mut *conn)
    .await?;
    let uid: i64 = row.uid;
    let modseq: i64 = row.highestmodseq;
    let uidnext: i64 = row.uidnext;
    if uid > i64::from(u32::MAX) {
        return Err(StoreError::precondition("mailbox UID space exhausted"));
    }
    sqlx::query!(
        "INSERT INTO messages (mailbox_id, uid, blob_hash, size, internal_date, sent_date, flags, keywords, modseq, structure, crlf_size) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        mailbox_id,
        uid,
        m.hash,
        m.size,
        m.internal_date,
        m.sent_date,
        m.flags.bits,
        &m.flags.keywords,
        modseq,
        &m.structure,
        m.crlf_size
    )
    .execute(&mut *conn)
    .await?;
    quota::charge(conn, user_id, m.size, 1, m.enforce_quota).await?;
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
        job_finished: false,
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
    /// The Message-ID, as [`message_id`] keeps it.
    pub message_id: String,
    /// The searchable text (see [`crate::text`]).
    pub text: SearchText,
    pub data: Vec<u8>,
}

/// A Message-ID as the queue keeps it for `mailctl trace`: the text
/// between the first `<` and the following `>` (RFC 5322 §3.6.4 msg-id), or
/// the trimmed field when it has no brackets; at most 250 characters, no
/// control characters.
#[must_use]
pub fn message_id(raw: &str) -> String {
    let t = raw.trim();
    let inner = t
        .find('<')
        .and_then(|a| t[a + 1..].find('>').map(|b| &t[a + 1..a + 1 + b]))
        .unwrap_or(t);
    inner
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(250)
        .collect()
}

/// Hash, structure, CRLF size and searchable text of a raw message,
/// computed off the async runtime.
pub(crate) async fn analyse(data: Vec<u8>) -> Result<Analysed> {
    tokio::task::spawn_blocking(move || {
        let parsed = structure::parse(&data);
        let id = parsed
            .structure
            .envelope
            .as_ref()
            .and_then(|e| e.message_id.as_deref())
            .map(|m| message_id(&String::from_utf8_lossy(m)))
            .unwrap_or_default();
        Analysed {
            message_id: id,
            hash: Sha256::digest(&data).to_vec(),
            structure: parsed.structure.encode_to_vec(),
            sent_date: parsed.sent_date,
            crlf_size: i64::try_from(mailstore_api::crlf_size(&data)).unwrap_or(0),
            text: text::extract(&data),
            data,
        }
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_ids_are_kept_without_brackets() {
        assert_eq!(message_id(" <a.b@example.org> "), "a.b@example.org");
        assert_eq!(message_id("a.b@example.org"), "a.b@example.org");
        assert_eq!(message_id("<a@x> (comment) <b@y>"), "a@x");
        assert_eq!(message_id("<a\u{1b}b@x>"), "ab@x");
        assert_eq!(message_id(&"x".repeat(1000)).len(), 250);
        assert_eq!(message_id("<>"), "");
    }
}
