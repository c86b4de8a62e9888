//! Mailbox management: CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE
//! (RFC 9051 §6.3.4 – §6.3.8).

use crate::response::{Code, Status};
use crate::session::Session;
use crate::store::{create_error, store_error};

impl Session {
    /// CREATE (RFC 9051 §6.3.4).
    pub(super) async fn create(&mut self, raw: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        // RFC 9051 §6.3.4: a trailing delimiter only declares intent.
        let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
        let name = match self.mailbox_in(trimmed) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if name == "INBOX" {
            return Status::no("INBOX always exists").with(Code::AlreadyExists);
        }
        match self.store().create_mailbox(user_id, name).await {
            // RFC 8474 §4.1: the new mailbox's MAILBOXID.
            Ok(id) => Status::ok("CREATE completed")
                .with(Code::MailboxId(crate::objectid::mailbox_id(id))),
            Err(e) => create_error(&e),
        }
    }

    /// DELETE (RFC 9051 §6.3.5).
    pub(super) async fn delete(&mut self, raw: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        if name == "INBOX" {
            return Status::no("INBOX cannot be deleted").with(Code::Cannot);
        }
        match self.store().delete_mailbox(user_id, name).await {
            Ok(_) => Status::ok("DELETE completed"),
            Err(e) => store_error(&e),
        }
    }

    /// RENAME (RFC 9051 §6.3.6).
    pub(super) async fn rename(&mut self, from: &[u8], to: &[u8]) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let (from, to) = match (self.mailbox_in(from), self.mailbox_in(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(st), _) | (_, Err(st)) => return st,
        };
        if to == "INBOX" {
            return Status::no("Cannot rename to INBOX").with(Code::AlreadyExists);
        }
        match self.store().rename_mailbox(user_id, from, to).await {
            Ok(_) => Status::ok("RENAME completed"),
            Err(e) => store_error(&e),
        }
    }

    /// SUBSCRIBE and UNSUBSCRIBE (RFC 9051 §6.3.7, §6.3.8).
    pub(super) async fn subscribe(&mut self, raw: &[u8], subscribed: bool) -> Status {
        let Some(user_id) = self.user().map(|u| u.id) else {
            return Status::bad("Not authenticated");
        };
        let name = match self.mailbox_in(raw) {
            Ok(n) => n,
            Err(st) => return st,
        };
        match self
            .store()
            .set_subscription(user_id, name, subscribed)
            .await
        {
            Ok(_) => Status::ok(if subscribed {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }),
            Err(e) => store_error(&e),
        }
    }
}
