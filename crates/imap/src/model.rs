//! The IMAP server's own view of what the store holds: mailboxes, message
//! metadata, envelopes and body structures, and the search program the
//! store evaluates. [`crate::store`] converts the store's protobuf messages
//! into these; handlers and [`crate::response`] only ever see these types.

/// A mailbox with its counters (RFC 9051 §6.3.11 STATUS items, the SELECT
/// data of §6.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxInfo {
    pub id: u64,
    /// Store name: UTF-8, `/`-separated (see [`crate::mailbox_name`]).
    pub name: String,
    /// SPECIAL-USE attribute without the backslash (RFC 6154), or empty.
    pub special_use: String,
    pub subscribed: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub messages: u32,
    pub unseen: u32,
    pub recent: u32,
    /// UIDs at or above this are \Recent for the session that claimed them.
    pub recent_floor: u32,
    /// Sum of the message sizes (RFC 8438 STATUS=SIZE).
    pub size: u64,
    /// Messages with \Deleted (RFC 9051 §6.3.11 DELETED).
    pub deleted: u32,
    /// Bytes of the messages with \Deleted (RFC 9208 DELETED-STORAGE).
    pub deleted_size: u64,
}

/// A user's quota root (RFC 9208): usage and effective limits (`None` =
/// unlimited); STORAGE is counted in bytes here, in KiB on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaInfo {
    pub user_id: u64,
    pub address: String,
    pub used_bytes: u64,
    pub used_messages: u64,
    pub limit_bytes: Option<u64>,
    pub limit_messages: Option<u64>,
}

/// One message's metadata, as FETCH and the session's sync need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub flags: Vec<String>,
    /// INTERNALDATE, seconds since the epoch.
    pub internal_date: Option<i64>,
    /// RFC822.SIZE.
    pub size: u64,
    pub modseq: u64,
    /// Hex SHA-256 of the raw message (the store's blob identity).
    pub blob_id: String,
    /// Present when asked for (ENVELOPE, BODY, BODYSTRUCTURE, sections).
    pub structure: Option<Structure>,
}

/// The precomputed structure of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    pub envelope: Option<Envelope>,
    /// Flat pre-order list of MIME parts; `parts[0]` is the message itself.
    pub parts: Vec<BodyPart>,
}

/// One address of an ENVELOPE (RFC 9051 §7.5.2 `address`): raw header
/// octets, exactly what goes on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub name: Option<Vec<u8>>,
    pub adl: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
}

/// The ENVELOPE of a message (RFC 9051 §7.5.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub date: Option<Vec<u8>>,
    pub subject: Option<Vec<u8>>,
    pub from: Vec<Address>,
    pub sender: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub in_reply_to: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    /// The References field, for THREAD=REFERENCES only (not rendered in
    /// ENVELOPE).
    pub references: Option<Vec<u8>>,
}

/// A MIME parameter (`charset=us-ascii`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Param {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Content-Disposition (RFC 2183) with its parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disposition {
    pub kind: Vec<u8>,
    pub params: Vec<Param>,
}

/// One MIME part of a [`Structure`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyPart {
    /// Index of the enclosing part; `None` for `parts[0]`.
    pub parent: Option<u32>,
    /// IMAP section number ("1.2.3"); empty for the top-level message.
    pub section: String,
    /// Lower-cased media type and subtype ("text", "plain").
    pub media_type: String,
    pub media_subtype: String,
    pub params: Vec<Param>,
    pub content_id: Option<Vec<u8>>,
    pub description: Option<Vec<u8>>,
    /// Content-Transfer-Encoding as written.
    pub encoding: Option<Vec<u8>>,
    /// Byte offsets into the raw message: header start, body start, body end.
    pub header_offset: u64,
    pub body_offset: u64,
    pub end_offset: u64,
    /// Body lines, for text/* and message/rfc822 parts.
    pub lines: u64,
    pub md5: Option<Vec<u8>>,
    pub disposition: Option<Disposition>,
    pub language: Vec<Vec<u8>>,
    pub location: Option<Vec<u8>>,
    /// For message/rfc822 parts: the encapsulated message's envelope; its
    /// root part is this part's only child.
    pub envelope: Option<Envelope>,
    pub multipart: bool,
}

/// How STORE changes flags (RFC 9051 §6.4.6).
pub use crate::command::StoreOp as FlagOp;

/// New flags of one message after STORE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagUpdate {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
}

/// Outcome of STORE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    pub updated: Vec<FlagUpdate>,
    /// UIDs not changed because of UNCHANGEDSINCE (RFC 7162 §3.1.3).
    pub modified: Vec<u32>,
}

/// Outcome of COPY / MOVE (RFC 4315 COPYUID data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOutcome {
    pub uidvalidity: u32,
    pub source_uids: Vec<u32>,
    pub destination_uids: Vec<u32>,
    pub destination_mailbox_id: u64,
}

/// One appended message (RFC 4315 APPENDUID data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub mailbox_id: u64,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// Outcome of SEARCH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchOutcome {
    pub uids: Vec<u32>,
    /// Highest MODSEQ among the matches (RFC 7162 §3.1.5).
    pub highest_modseq: u64,
}

/// Result of checking a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok {
        user_id: u64,
        address: String,
    },
    /// Too many failures for this user or address: try later.
    Throttled,
    /// The store cannot check passwords now (its hashing queue is full).
    Unavailable,
    Failed,
}

/// A search program as the store evaluates it: session notions (sequence
/// numbers, \Recent, NEW, OLD) are already UID sets (RFC 9051 §6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    All,
    AllOf(Vec<Query>),
    AnyOf(Vec<Query>),
    Not(Box<Query>),
    /// These UIDs; an empty list matches nothing.
    Uids(Vec<u32>),
    HasFlag(String),
    LacksFlag(String),
    /// `[since, before)` in days since 1970-01-01.
    InternalDate {
        since: Option<i64>,
        before: Option<i64>,
    },
    SentDate {
        since: Option<i64>,
        before: Option<i64>,
    },
    Larger(u64),
    Smaller(u64),
    Header {
        field: String,
        value: String,
    },
    Body(String),
    Text(String),
    ModSeqMin(u64),
}

/// What the user-wide change stream says (NOTIFY, RFC 5465).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// Messages or flags of this mailbox changed.
    Mailbox(u64),
    /// Any mailbox may have changed (list changes, missed events).
    All,
    /// METADATA entries of this mailbox changed; 0 = server entries.
    Metadata(u64),
}
