//! The store client of the IMAP server: every gRPC call a session makes to
//! the mailbox-store (`mailstore.v1`), with the protobuf messages converted
//! to and from the crate's own types in [`crate::model`]. This is the only
//! module that sees protobuf types.
//!
//! Errors stay [`tonic::Status`]: [`store_error`] turns them into the IMAP
//! reply, handlers look at the code where a status means something
//! particular (`NOT_FOUND` → `[TRYCREATE]`).

use std::net::IpAddr;
use std::time::Duration;

use mailstore_api::pb;
use mailstore_api::{Failure, StoreClient, classify};

use crate::command::AppendMessage;
use crate::model::{
    Address, Appended, AuthOutcome, BodyPart, CopyOutcome, Disposition, Envelope, FlagOp,
    FlagUpdate, MailboxInfo, MessageMeta, Param, Query, QuotaInfo, SearchOutcome, StoreOutcome,
    Structure, WatchEvent,
};
use crate::response::{Code, Status};

/// A failed store call.
pub type Error = tonic::Status;

type Result<T> = std::result::Result<T, Error>;

type MailboxesClient = pb::mailboxes_client::MailboxesClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        mailstore_api::AuthInterceptor,
    >,
>;

/// Maps a store failure to a client reply; details go to the log only.
pub fn store_error(e: &Error) -> Status {
    use tonic::Code as G;
    match e.code() {
        G::NotFound => Status::no("No such mailbox or message").with(Code::Nonexistent),
        G::AlreadyExists => Status::no("Mailbox already exists").with(Code::AlreadyExists),
        G::InvalidArgument => Status::no("Not possible").with(Code::Cannot),
        G::ResourceExhausted => Status::no("Quota or limit exceeded").with(Code::OverQuota),
        G::FailedPrecondition | G::PermissionDenied => {
            Status::no("Not possible").with(Code::Cannot)
        }
        _ => {
            tracing::warn!(code = ?e.code(), message = e.message(), "store call failed");
            if classify(e) == Failure::Transient {
                Status::no("Temporary failure, try again").with(Code::Unavailable)
            } else {
                Status::no("Server error").with(Code::ServerBug)
            }
        }
    }
}

/// A refused CREATE: the store answers RESOURCE_EXHAUSTED (or
/// FAILED_PRECONDITION) when the user has as many mailboxes as allowed;
/// that is RFC 5530 §3 LIMIT, not OVERQUOTA.
#[must_use]
pub fn create_error(e: &Error) -> Status {
    match e.code() {
        tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition => {
            Status::no("Too many mailboxes").with(Code::Limit)
        }
        _ => store_error(e),
    }
}

/// Converts a UID list into the store's range form. Never call the store
/// with an empty set: for the store that means "every message".
fn uid_set(uids: &[u32]) -> pb::UidSet {
    let mut ranges: Vec<pb::UidRange> = Vec::new();
    for &u in uids {
        match ranges.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(u) => r.last = u,
            _ => ranges.push(pb::UidRange { first: u, last: u }),
        }
    }
    pb::UidSet { ranges }
}

/// The store, as the IMAP sessions use it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: StoreClient,
}

impl Store {
    #[must_use]
    pub fn new(client: &StoreClient) -> Self {
        Self {
            client: client.clone(),
        }
    }

    fn mailboxes(&self) -> MailboxesClient {
        self.client.mailboxes.clone()
    }

    /// Checks a password (the store applies its own throttling).
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        remote_ip: IpAddr,
        session_id: &str,
    ) -> Result<AuthOutcome> {
        let req = pb::AuthenticateRequest {
            username: username.to_string(),
            password: password.to_string(),
            protocol: pb::Protocol::Imap as i32,
            remote_ip: remote_ip.to_string(),
            session_id: session_id.to_string(),
        };
        let r = self
            .client
            .accounts
            .clone()
            .authenticate(req)
            .await?
            .into_inner();
        Ok(match pb::AuthStatus::try_from(r.status) {
            Ok(pb::AuthStatus::Ok) => AuthOutcome::Ok {
                user_id: r.user_id,
                address: r.address,
            },
            Ok(pb::AuthStatus::Throttled) => AuthOutcome::Throttled,
            Ok(pb::AuthStatus::Unavailable) => AuthOutcome::Unavailable,
            _ => AuthOutcome::Failed,
        })
    }

    /// A user's quota root (RFC 9208 GETQUOTA), by id or by address.
    pub async fn get_quota(&self, user_id: u64, address: Option<&str>) -> Result<QuotaInfo> {
        use pb::get_quota_request::Key;
        let key = match address {
            Some(a) => Key::Address(a.to_string()),
            None => Key::UserId(user_id),
        };
        let q = self
            .client
            .accounts
            .clone()
            .get_quota(pb::GetQuotaRequest { key: Some(key) })
            .await?
            .into_inner();
        Ok(quota_info(q))
    }

    /// Replaces a user's own limits (RFC 9208 SETQUOTA; `None` = the
    /// domain default).
    pub async fn set_quota(
        &self,
        address: &str,
        limit_bytes: Option<u64>,
        limit_messages: Option<u64>,
    ) -> Result<QuotaInfo> {
        let q = self
            .client
            .accounts
            .clone()
            .set_quota(pb::SetQuotaRequest {
                key: Some(pb::set_quota_request::Key::Address(address.to_string())),
                limit_bytes,
                limit_messages,
            })
            .await?
            .into_inner();
        Ok(quota_info(q))
    }

    /// METADATA entries (RFC 5464 §4.2) of a mailbox, or of the server
    /// when `mailbox` is "": `(name, value)` of those that exist.
    pub async fn get_metadata(
        &self,
        user_id: u64,
        mailbox: &str,
        entries: Vec<String>,
        depth: u32,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let req = pb::GetMetadataRequest {
            user_id,
            mailbox: mailbox.to_string(),
            entries,
            depth,
        };
        let r = self.mailboxes().get_metadata(req).await?.into_inner();
        Ok(r.entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect())
    }

    /// SETMETADATA (RFC 5464 §4.3): all or nothing; `None` deletes.
    pub async fn set_metadata(
        &self,
        user_id: u64,
        mailbox: &str,
        entries: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let req = pb::SetMetadataRequest {
            user_id,
            mailbox: mailbox.to_string(),
            entries: entries
                .into_iter()
                .map(|(name, value)| pb::MetadataEntry { name, value })
                .collect(),
        };
        self.mailboxes().set_metadata(req).await?;
        Ok(())
    }

    /// One mailbox by name; `claim_recent` makes its new messages \Recent
    /// for this session (RFC 3501 §2.3.2).
    pub async fn get_mailbox(
        &self,
        user_id: u64,
        name: &str,
        claim_recent: bool,
    ) -> Result<MailboxInfo> {
        let req = pb::GetMailboxRequest {
            user_id,
            name: name.to_string(),
            claim_recent,
        };
        Ok(mailbox(
            self.mailboxes().get_mailbox(req).await?.into_inner(),
        ))
    }

    pub async fn list_mailboxes(
        &self,
        user_id: u64,
        with_counts: bool,
    ) -> Result<Vec<MailboxInfo>> {
        let req = pb::ListMailboxesRequest {
            user_id,
            with_counts,
        };
        let r = self.mailboxes().list_mailboxes(req).await?.into_inner();
        Ok(r.mailboxes.into_iter().map(mailbox).collect())
    }

    pub async fn list_subscriptions(&self, user_id: u64) -> Result<Vec<String>> {
        let req = pb::ListSubscriptionsRequest { user_id };
        Ok(self
            .mailboxes()
            .list_subscriptions(req)
            .await?
            .into_inner()
            .names)
    }

    /// Creates a mailbox; returns its id.
    pub async fn create_mailbox(&self, user_id: u64, name: String) -> Result<u64> {
        let req = pb::CreateMailboxRequest {
            user_id,
            name,
            special_use: String::new(),
        };
        self.mailboxes()
            .create_mailbox(req)
            .await
            .map(|r| r.into_inner().id)
    }

    pub async fn delete_mailbox(&self, user_id: u64, name: String) -> Result<()> {
        let req = pb::DeleteMailboxRequest { user_id, name };
        self.mailboxes().delete_mailbox(req).await.map(drop)
    }

    pub async fn rename_mailbox(&self, user_id: u64, from: String, to: String) -> Result<()> {
        let req = pb::RenameMailboxRequest { user_id, from, to };
        self.mailboxes().rename_mailbox(req).await.map(drop)
    }

    pub async fn set_subscription(
        &self,
        user_id: u64,
        name: String,
        subscribed: bool,
    ) -> Result<()> {
        let req = pb::SetSubscriptionRequest {
            user_id,
            name,
            subscribed,
        };
        self.mailboxes().set_subscription(req).await.map(drop)
    }

    /// Metadata of `uids` (`None`: every message), in batches.
    pub async fn fetch_meta(
        &self,
        mailbox_id: u64,
        uids: Option<&[u32]>,
        changed_since: u64,
        with_structure: bool,
    ) -> Result<MetaStream> {
        let req = pb::FetchMetaRequest {
            mailbox_id,
            uids: uids.map(uid_set),
            changed_since,
            with_structure,
        };
        Ok(MetaStream(
            self.mailboxes().fetch_meta(req).await?.into_inner(),
        ))
    }

    /// `length` bytes at `offset` of one raw message, in chunks.
    pub async fn fetch_body(
        &self,
        mailbox_id: u64,
        uid: u32,
        offset: u64,
        length: u64,
    ) -> Result<BodyStream> {
        let req = pb::FetchBodyRequest {
            mailbox_id,
            uid,
            offset,
            length,
        };
        Ok(BodyStream(
            self.mailboxes().fetch_body(req).await?.into_inner(),
        ))
    }

    /// Changes flags of `uids` (never empty); `unchanged_since` 0 = no
    /// condition (RFC 7162 §3.1.3).
    pub async fn store_flags(
        &self,
        mailbox_id: u64,
        uids: &[u32],
        op: FlagOp,
        flags: Vec<String>,
        unchanged_since: u64,
    ) -> Result<StoreOutcome> {
        let op = match op {
            FlagOp::Add => pb::FlagOp::Add,
            FlagOp::Remove => pb::FlagOp::Remove,
            FlagOp::Replace => pb::FlagOp::Replace,
        };
        let req = pb::StoreFlagsRequest {
            mailbox_id,
            uids: Some(uid_set(uids)),
            op: op as i32,
            flags,
            unchanged_since,
        };
        let r = self.mailboxes().store_flags(req).await?.into_inner();
        Ok(StoreOutcome {
            updated: r
                .updated
                .into_iter()
                .map(|u| FlagUpdate {
                    uid: u.uid,
                    flags: u.flags,
                    modseq: u.modseq,
                })
                .collect(),
            modified: r.modified,
        })
    }

    /// Copies (or moves) `uids` (never empty) to the mailbox `destination`.
    pub async fn copy_messages(
        &self,
        mailbox_id: u64,
        uids: &[u32],
        user_id: u64,
        destination: String,
        is_move: bool,
    ) -> Result<CopyOutcome> {
        let req = pb::CopyMessagesRequest {
            mailbox_id,
            uids: Some(uid_set(uids)),
            user_id,
            destination,
            r#move: is_move,
        };
        let r = self.mailboxes().copy_messages(req).await?.into_inner();
        Ok(CopyOutcome {
            uidvalidity: r.uidvalidity,
            source_uids: r.source_uids,
            destination_uids: r.destination_uids,
            destination_mailbox_id: r.destination_mailbox_id,
        })
    }

    /// Expunges the \Deleted messages among `uids` (`None`: all of them);
    /// returns the UIDs expunged.
    pub async fn expunge(&self, mailbox_id: u64, uids: Option<&[u32]>) -> Result<Vec<u32>> {
        let req = pb::ExpungeRequest {
            mailbox_id,
            uids: uids.map(uid_set),
        };
        Ok(self.mailboxes().expunge(req).await?.into_inner().expunged)
    }

    pub async fn search(&self, mailbox_id: u64, query: &Query) -> Result<SearchOutcome> {
        let req = pb::SearchRequest {
            mailbox_id,
            key: Some(search_key(query)),
        };
        let r = self.mailboxes().search(req).await?.into_inner();
        Ok(SearchOutcome {
            uids: r.uids,
            highest_modseq: r.highest_modseq,
        })
    }

    /// UIDs expunged since `since_modseq`.
    pub async fn list_expunged(&self, mailbox_id: u64, since_modseq: u64) -> Result<Vec<u32>> {
        let req = pb::ListExpungedRequest {
            mailbox_id,
            since_modseq,
        };
        Ok(self.mailboxes().list_expunged(req).await?.into_inner().uids)
    }

    /// Streams one message to the store's client-streaming `Append`.
    pub async fn append(
        &self,
        user_id: u64,
        mailbox: &str,
        message: AppendMessage,
    ) -> Result<Appended> {
        let flags: Vec<String> = message
            .flags
            .into_iter()
            .filter(|f| f != "\\Recent")
            .collect();
        let header = pb::AppendHeader {
            user_id,
            mailbox: mailbox.to_string(),
            flags,
            internal_date: message.date.map(|s| prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            }),
            size: message.data.len() as u64,
        };
        let mut reqs = vec![pb::AppendRequest {
            part: Some(pb::append_request::Part::Header(header)),
        }];
        for chunk in message.data.chunks(256 * 1024) {
            reqs.push(pb::AppendRequest {
                part: Some(pb::append_request::Part::Data(chunk.to_vec())),
            });
        }
        let r = self
            .mailboxes()
            .append(futures::stream::iter(reqs))
            .await?
            .into_inner();
        Ok(Appended {
            mailbox_id: r.mailbox_id,
            uidvalidity: r.uidvalidity,
            uid: r.uid,
        })
    }
}

impl Store {
    /// Follows `Watch` for every mailbox of a user (NOTIFY, RFC 5465):
    /// [`WatchEvent::All`] when any of them may have changed (mailboxes
    /// created, deleted or renamed, events missed, a reconnection).
    /// `ready` fires at the first READY.
    pub async fn watch_user_loop(
        self,
        user_id: u64,
        event: impl Fn(WatchEvent) + Send + 'static,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut client = self.mailboxes();
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(100);
        loop {
            let req = pb::WatchRequest {
                user_id,
                mailbox_id: 0,
            };
            match client.watch(req).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    while let Ok(Some(ev)) = s.message().await {
                        if ev.kind == pb::MailboxEventKind::Ready as i32 {
                            backoff = Duration::from_millis(100);
                            match ready.take() {
                                Some(tx) => {
                                    let _ = tx.send(());
                                }
                                None => event(WatchEvent::All),
                            }
                        } else if ev.kind == pb::MailboxEventKind::Metadata as i32 {
                            event(WatchEvent::Metadata(ev.mailbox_id));
                        } else if ev.kind == pb::MailboxEventKind::Mailboxes as i32
                            || ev.mailbox_id == 0
                        {
                            event(WatchEvent::All);
                        } else {
                            event(WatchEvent::Mailbox(ev.mailbox_id));
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watch failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// What the process-wide watch reports (`crate::watch_hub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubEvent {
    /// The stream is up: nothing is missed after this.
    Ready,
    /// Events were lost (the store's queue to us overflowed): anything
    /// may have changed.
    Everything,
    /// A mailbox of a user may have changed.
    Mailbox { user_id: u64, mailbox_id: u64 },
}

/// The store's Watch for every user (`user_id` 0).
pub struct HubStream(tonic::Streaming<pb::MailboxEvent>);

impl Store {
    /// Opens the store's Watch for every user's changes.
    pub async fn watch_everyone(&self) -> Result<HubStream> {
        let req = pb::WatchRequest {
            user_id: 0,
            mailbox_id: 0,
        };
        Ok(HubStream(self.mailboxes().watch(req).await?.into_inner()))
    }
}

impl HubStream {
    /// The next event; `None` when the stream ended or broke.
    pub async fn next(&mut self) -> Option<HubEvent> {
        let ev = self.0.message().await.ok()??;
        Some(if ev.kind == pb::MailboxEventKind::Ready as i32 {
            HubEvent::Ready
        } else if ev.kind == pb::MailboxEventKind::Mailboxes as i32 && ev.user_id == 0 {
            HubEvent::Everything
        } else {
            HubEvent::Mailbox {
                user_id: ev.user_id,
                mailbox_id: ev.mailbox_id,
            }
        })
    }
}

/// Batches of [`MessageMeta`] from `FetchMeta`.
pub struct MetaStream(tonic::Streaming<pb::FetchMetaResponse>);

impl MetaStream {
    /// The next batch; `Ok(None)` at the end.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<MessageMeta>>> {
        Ok(self
            .0
            .message()
            .await?
            .map(|b| b.messages.into_iter().map(message_meta).collect()))
    }
}

/// Chunks of a raw message from `FetchBody`.
pub struct BodyStream(tonic::Streaming<pb::BodyChunk>);

impl BodyStream {
    /// The next chunk; `Ok(None)` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.0.message().await?.map(|c| c.data))
    }
}

fn mailbox(m: pb::Mailbox) -> MailboxInfo {
    MailboxInfo {
        id: m.id,
        name: m.name,
        special_use: m.special_use,
        subscribed: m.subscribed,
        uidvalidity: m.uidvalidity,
        uidnext: m.uidnext,
        highestmodseq: m.highestmodseq,
        messages: m.messages,
        unseen: m.unseen,
        recent: m.recent,
        recent_floor: m.recent_floor,
        size: m.size,
        deleted: m.deleted,
        deleted_size: m.deleted_size,
    }
}

fn quota_info(q: pb::Quota) -> QuotaInfo {
    QuotaInfo {
        user_id: q.user_id,
        address: q.address,
        used_bytes: q.used_bytes,
        used_messages: q.used_messages,
        limit_bytes: q.limit_bytes,
        limit_messages: q.limit_messages,
    }
}

fn message_meta(m: pb::MessageMeta) -> MessageMeta {
    MessageMeta {
        uid: m.uid,
        flags: m.flags,
        internal_date: m.internal_date.map(|t| t.seconds),
        size: m.size,
        modseq: m.modseq,
        blob_id: m.blob_id,
        structure: m.structure.map(|s| Structure {
            envelope: s.envelope.map(envelope),
            parts: s.parts.into_iter().map(body_part).collect(),
        }),
    }
}

fn addresses(list: Vec<pb::ImapAddress>) -> Vec<Address> {
    list.into_iter()
        .map(|a| Address {
            name: a.name,
            adl: a.adl,
            mailbox: a.mailbox,
            host: a.host,
        })
        .collect()
}

fn envelope(e: pb::Envelope) -> Envelope {
    Envelope {
        date: e.date,
        subject: e.subject,
        from: addresses(e.from),
        sender: addresses(e.sender),
        reply_to: addresses(e.reply_to),
        to: addresses(e.to),
        cc: addresses(e.cc),
        bcc: addresses(e.bcc),
        in_reply_to: e.in_reply_to,
        message_id: e.message_id,
        references: e.references,
    }
}

fn params(ps: Vec<pb::Param>) -> Vec<Param> {
    ps.into_iter()
        .map(|p| Param {
            name: p.name,
            value: p.value,
        })
        .collect()
}

fn body_part(p: pb::BodyPart) -> BodyPart {
    BodyPart {
        parent: p.parent,
        section: p.section,
        media_type: p.media_type,
        media_subtype: p.media_subtype,
        params: params(p.params),
        content_id: p.content_id,
        description: p.description,
        encoding: p.encoding,
        header_offset: p.header_offset,
        body_offset: p.body_offset,
        end_offset: p.end_offset,
        lines: p.lines,
        md5: p.md5,
        disposition: p.disposition.map(|d| Disposition {
            kind: d.kind,
            params: params(d.params),
        }),
        language: p.language,
        location: p.location,
        envelope: p.envelope.map(envelope),
        multipart: p.multipart,
    }
}

fn key(k: pb::search_key::Key) -> pb::SearchKey {
    pb::SearchKey { key: Some(k) }
}

/// Converts a search program (bounded recursion: the parser limits
/// nesting depth).
fn search_key(q: &Query) -> pb::SearchKey {
    use pb::search_key::Key;
    let range = |since: &Option<i64>, before: &Option<i64>| pb::DateRange {
        since_day: *since,
        before_day: *before,
    };
    let all = |v: &[Query]| pb::SearchKeys {
        keys: v.iter().map(search_key).collect(),
    };
    match q {
        Query::All => key(Key::All(true)),
        Query::AllOf(v) => key(Key::AllOf(all(v))),
        Query::AnyOf(v) => key(Key::AnyOf(all(v))),
        Query::Not(a) => key(Key::Not(Box::new(search_key(a)))),
        // An empty UidSet means "all" to the store: say "none" instead.
        Query::Uids(u) if u.is_empty() => key(Key::Not(Box::new(key(Key::All(true))))),
        Query::Uids(u) => key(Key::Uids(uid_set(u))),
        Query::HasFlag(f) => key(Key::HasFlag(f.clone())),
        Query::LacksFlag(f) => key(Key::LacksFlag(f.clone())),
        Query::InternalDate { since, before } => key(Key::InternalDate(range(since, before))),
        Query::SentDate { since, before } => key(Key::SentDate(range(since, before))),
        Query::Larger(n) => key(Key::Larger(*n)),
        Query::Smaller(n) => key(Key::Smaller(*n)),
        Query::Header { field, value } => key(Key::Header(pb::HeaderMatch {
            field: field.clone(),
            value: value.clone(),
        })),
        Query::Body(s) => key(Key::Body(s.clone())),
        Query::Text(s) => key(Key::Text(s.clone())),
        Query::ModSeqMin(n) => key(Key::ModseqMin(*n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress() {
        let u = uid_set(&[1, 2, 3, 7]);
        assert_eq!(u.ranges.len(), 2);
        assert_eq!((u.ranges[0].first, u.ranges[0].last), (1, 3));
    }

    #[test]
    fn empty_uid_query_matches_nothing() {
        use pb::search_key::Key;
        let none = search_key(&Query::Uids(Vec::new()));
        assert_eq!(none, key(Key::Not(Box::new(key(Key::All(true))))));
    }

    /// The store's "mailbox cap reached" (either code) is `NO [LIMIT]`;
    /// other refusals keep their usual words.
    #[test]
    fn create_over_the_mailbox_cap_is_limit() {
        for st in [
            tonic::Status::resource_exhausted("too many mailboxes"),
            tonic::Status::failed_precondition("too many mailboxes"),
        ] {
            assert_eq!(
                create_error(&st).encode(Some("a")),
                b"a NO [LIMIT] Too many mailboxes\r\n"
            );
        }
        assert_eq!(
            create_error(&tonic::Status::already_exists("x")).encode(Some("a")),
            b"a NO [ALREADYEXISTS] Mailbox already exists\r\n"
        );
    }
}
