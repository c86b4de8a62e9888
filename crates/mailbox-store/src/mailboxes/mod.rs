//! Mailboxes service: folders, messages, flags, copy/move, expunge, search,
//! watch, metadata (RFC 5464) and locks.
//!
//! Concurrency: every transaction that changes a mailbox first locks the
//! mailbox row (`FOR UPDATE`), so UID and MODSEQ allocation is serial per
//! mailbox and lock order is always mailbox → messages (no deadlocks).
//! Transactions touching two mailboxes lock them in id order.

mod append;
mod copy_move;
mod expunge;
mod fetch;
mod folders;
mod locks;
mod metadata;
mod select;
mod store_flags;
mod watch;

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status, Streaming};

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::wire::{BoxStream, id};

/// Most UID ranges accepted in one set.
const MAX_RANGES: usize = 10_000;

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

/// A UID set as two arrays for `unnest`, validated and bounded.
///
/// Queries filter on it with this fragment, written out in each of them so
/// that sqlx checks it at compile time (`$2`/`$3` bound to the two arrays,
/// both NULL for "all messages"):
/// `($2::bigint[] IS NULL OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b) WHERE m.uid BETWEEN r.a AND r.b))`
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

#[tonic::async_trait]
impl pb::mailboxes_server::Mailboxes for MailboxesSvc {
    async fn list_mailboxes(
        &self,
        req: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        folders::list_mailboxes(self, req).await
    }

    async fn create_mailbox(
        &self,
        req: Request<pb::CreateMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        folders::create_mailbox(self, req).await
    }

    async fn delete_mailbox(
        &self,
        req: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        folders::delete_mailbox(self, req).await
    }

    async fn rename_mailbox(
        &self,
        req: Request<pb::RenameMailboxRequest>,
    ) -> Result<Response<pb::RenameMailboxResponse>, Status> {
        folders::rename_mailbox(self, req).await
    }

    async fn set_subscription(
        &self,
        req: Request<pb::SetSubscriptionRequest>,
    ) -> Result<Response<pb::SetSubscriptionResponse>, Status> {
        folders::set_subscription(self, req).await
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        folders::list_subscriptions(self, req).await
    }

    async fn get_mailbox(
        &self,
        req: Request<pb::GetMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        select::get_mailbox(self, req).await
    }

    async fn append(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        append::append(self, req).await
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
        fetch::fetch_meta(self, req).await
    }

    type FetchBodyStream = BoxStream<pb::BodyChunk>;

    async fn fetch_body(
        &self,
        req: Request<pb::FetchBodyRequest>,
    ) -> Result<Response<Self::FetchBodyStream>, Status> {
        fetch::fetch_body(self, req).await
    }

    async fn store_flags(
        &self,
        req: Request<pb::StoreFlagsRequest>,
    ) -> Result<Response<pb::StoreFlagsResponse>, Status> {
        store_flags::store_flags(self, req).await
    }

    async fn copy_messages(
        &self,
        req: Request<pb::CopyMessagesRequest>,
    ) -> Result<Response<pb::CopyMessagesResponse>, Status> {
        copy_move::copy_messages(self, req).await
    }

    async fn expunge(
        &self,
        req: Request<pb::ExpungeRequest>,
    ) -> Result<Response<pb::ExpungeResponse>, Status> {
        expunge::expunge(self, req).await
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

    async fn backfill_search_text(
        &self,
        req: Request<pb::BackfillSearchTextRequest>,
    ) -> Result<Response<pb::BackfillSearchTextResponse>, Status> {
        crate::auth::require_admin(&req)?;
        Ok(Response::new(
            crate::search::backfill(self.pool(), req.get_ref()).await?,
        ))
    }

    async fn list_expunged(
        &self,
        req: Request<pb::ListExpungedRequest>,
    ) -> Result<Response<pb::ListExpungedResponse>, Status> {
        expunge::list_expunged(self, req).await
    }

    type WatchStream = BoxStream<pb::MailboxEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        watch::watch(self, req).await
    }

    async fn get_metadata(
        &self,
        req: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        metadata::get_metadata(self, req).await
    }

    async fn set_metadata(
        &self,
        req: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        metadata::set_metadata(self, req).await
    }

    async fn acquire_lock(
        &self,
        req: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        locks::acquire_lock(self, req).await
    }

    async fn release_lock(
        &self,
        req: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        locks::release_lock(self, req).await
    }
}
