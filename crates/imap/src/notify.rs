//! NOTIFY (RFC 5465) state of a session: what the client asked for, and
//! the queue between the store's change stream and the session.
//!
//! A task follows the store's `Watch` for all of the user's mailboxes and
//! records which mailboxes changed in a [`NotifyQueue`]: a set of mailbox
//! ids (one entry per mailbox however many events it had) or "all". The
//! session drains it between commands, when no command is being received,
//! and reports each change once as a STATUS response (RFC 5465 §5.2–5.4).
//! If more than the configured number of events arrives before the session
//! drains the queue (a client that does not read, or a long command during
//! an event flood), the session sends `* OK [NOTIFICATIONOVERFLOW]` and
//! stops notifying, as if the client had sent NOTIFY NONE (§5.8).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::command::{FetchAtt, StatusItem};
use crate::model::{MailboxInfo, WatchEvent};

/// What one event group asks for (RFC 5465 §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub new: bool,
    /// FETCH items for each new message of the selected mailbox.
    pub fetch: Vec<FetchAtt>,
    pub expunge: bool,
    pub flags: bool,
    /// MailboxName (§5.4): LIST for mailboxes created, deleted, renamed.
    pub names: bool,
    /// SubscriptionChange (§5.5): LIST when a mailbox is (un)subscribed.
    pub subs: bool,
    /// MailboxMetadataChange (§5.6): METADATA naming the changed entries.
    pub mailbox_meta: bool,
    /// ServerMetadataChange (§5.7): the same for the server entries;
    /// not about mailboxes, so any group may carry it.
    pub server_meta: bool,
}

impl Events {
    #[must_use]
    pub fn is_none(&self) -> bool {
        !self.new
            && !self.expunge
            && !self.flags
            && !self.names
            && !self.subs
            && !self.mailbox_meta
            && !self.server_meta
    }

    /// The STATUS items reported for a non-selected mailbox: MESSAGES
    /// UIDNEXT UIDVALIDITY for MessageNew (§5.2), MESSAGES for
    /// MessageExpunge (§5.3), UIDVALIDITY HIGHESTMODSEQ for FlagChange
    /// (§5.4, CONDSTORE).
    #[must_use]
    pub fn status_items(&self) -> Vec<StatusItem> {
        let mut v = Vec::new();
        if self.new || self.expunge {
            v.push(StatusItem::Messages);
        }
        if self.new {
            v.push(StatusItem::UidNext);
        }
        if self.new || self.flags {
            v.push(StatusItem::UidValidity);
        }
        if self.flags {
            v.push(StatusItem::HighestModseq);
        }
        v
    }
}

/// Which non-selected mailboxes a group covers, names in store form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// INBOXES: for us, INBOX (the only mailbox mail is delivered to).
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

impl Filter {
    #[must_use]
    pub fn matches(&self, mb: &MailboxInfo) -> bool {
        match self {
            Self::Inboxes => mb.name == "INBOX",
            Self::Personal => true,
            Self::Subscribed => mb.subscribed,
            Self::Mailboxes(names) => names.contains(&mb.name),
            Self::Subtree(names) => names.iter().any(|n| {
                mb.name == *n
                    || mb
                        .name
                        .strip_prefix(n.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }),
        }
    }
}

/// Mailboxes changed since the session last looked.
#[derive(Debug, Default)]
pub struct Pending {
    pub ids: HashSet<u64>,
    /// Mailboxes whose METADATA changed (0: the server entries).
    pub metadata: HashSet<u64>,
    /// Any mailbox may have changed.
    pub all: bool,
    pub events: usize,
    pub overflow: bool,
}

/// Filled by the watch task, drained by the session.
#[derive(Debug)]
pub struct NotifyQueue {
    pending: Mutex<Pending>,
    pub wake: Notify,
    cap: usize,
}

impl NotifyQueue {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            cap,
        }
    }

    /// One event from the store.
    pub fn push(&self, event: WatchEvent) {
        if let Ok(mut p) = self.pending.lock() {
            p.events += 1;
            if p.events > self.cap {
                p.overflow = true;
            }
            match event {
                WatchEvent::Mailbox(id) => {
                    p.ids.insert(id);
                }
                WatchEvent::Metadata(id) => {
                    p.metadata.insert(id);
                }
                WatchEvent::All => p.all = true,
            }
        }
        self.wake.notify_one();
    }

    /// Everything pending, leaving the queue empty.
    pub fn take(&self) -> Pending {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// A session's NOTIFY SET (RFC 5465 §3).
pub struct NotifyState {
    /// Events for the selected mailbox; `delayed` = SELECTED-DELAYED
    /// (expunges wait for a command that allows them, §6).
    pub selected: Option<(Events, bool)>,
    /// Groups for the other mailboxes, in the client's order: the first
    /// that matches a mailbox decides its events.
    pub others: Vec<(Filter, Events)>,
    pub queue: std::sync::Arc<NotifyQueue>,
    /// Last reported (MESSAGES, UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ) of
    /// each mailbox, so an event that changes nothing reported sends
    /// nothing (bounded by the user's mailbox count).
    pub last: HashMap<u64, [u64; 4]>,
    /// The user's mailboxes (id → name, subscribed) when a group asks for
    /// MailboxName or SubscriptionChange: the next list is compared with it.
    pub names: Option<HashMap<u64, (String, bool)>>,
    /// Entries (name → hash of the value) of each mailbox whose metadata
    /// changes are asked for (0: the server), to name what changed.
    pub meta: HashMap<u64, HashMap<String, u64>>,
    pub task: JoinHandle<()>,
}

impl Drop for NotifyState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NotifyState {
    /// The events the first matching group asks for.
    #[must_use]
    pub fn events_for(&self, mb: &MailboxInfo) -> Option<&Events> {
        self.others
            .iter()
            .find(|(f, _)| f.matches(mb))
            .map(|(_, e)| e)
            .filter(|e| !e.is_none())
    }
}

/// A value's fingerprint, to tell changed METADATA entries apart.
#[must_use]
pub fn fingerprint(v: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The names of the entries added, changed or removed between two
/// snapshots, sorted.
#[must_use]
pub fn changed_entries(old: &HashMap<String, u64>, new: &HashMap<String, u64>) -> Vec<String> {
    let mut v: Vec<String> = new
        .iter()
        .filter(|(k, h)| old.get(*k) != Some(*h))
        .map(|(k, _)| k.clone())
        .chain(old.keys().filter(|k| !new.contains_key(*k)).cloned())
        .collect();
    v.sort();
    v
}

/// The values a STATUS notification reports.
#[must_use]
pub fn snapshot(mb: &MailboxInfo) -> [u64; 4] {
    [
        u64::from(mb.messages),
        u64::from(mb.uidnext),
        u64::from(mb.uidvalidity),
        mb.highestmodseq,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(name: &str, subscribed: bool) -> MailboxInfo {
        MailboxInfo {
            name: name.into(),
            subscribed,
            ..MailboxInfo::default()
        }
    }

    #[test]
    fn filters_match_names() {
        assert!(Filter::Inboxes.matches(&mb("INBOX", false)));
        assert!(!Filter::Inboxes.matches(&mb("Sent", false)));
        assert!(Filter::Subscribed.matches(&mb("Sent", true)));
        let sub = Filter::Subtree(vec!["Lists".into()]);
        assert!(sub.matches(&mb("Lists", false)));
        assert!(sub.matches(&mb("Lists/rust", false)));
        assert!(!sub.matches(&mb("Listsx", false)));
        let list = Filter::Mailboxes(vec!["Lists".into()]);
        assert!(!list.matches(&mb("Lists/rust", false)));
    }

    #[test]
    fn queue_collapses_events_and_overflows() {
        let q = NotifyQueue::new(3);
        q.push(WatchEvent::Mailbox(1));
        q.push(WatchEvent::Mailbox(1));
        q.push(WatchEvent::Mailbox(2));
        let p = q.take();
        assert_eq!(p.ids.len(), 2);
        assert!(!p.overflow && !p.all);
        for _ in 0..4 {
            q.push(WatchEvent::All);
        }
        let p = q.take();
        assert!(p.overflow && p.all);
        assert!(!q.take().overflow);
    }

    #[test]
    fn changed_entries_are_added_changed_and_removed() {
        let snap = |v: &[(&str, &[u8])]| -> HashMap<String, u64> {
            v.iter()
                .map(|(k, x)| (k.to_string(), fingerprint(x)))
                .collect()
        };
        let old = snap(&[
            ("/private/a", b"1"),
            ("/private/b", b"2"),
            ("/shared/c", b"3"),
        ]);
        let new = snap(&[
            ("/private/a", b"1"),
            ("/private/b", b"x"),
            ("/shared/d", b"4"),
        ]);
        assert_eq!(
            changed_entries(&old, &new),
            ["/private/b", "/shared/c", "/shared/d"]
        );
        assert!(changed_entries(&new, &new).is_empty());
    }

    #[test]
    fn status_items_follow_events() {
        let e = |new, expunge, flags| Events {
            new,
            expunge,
            flags,
            ..Events::default()
        };
        assert_eq!(e(false, true, false).status_items(), [StatusItem::Messages]);
        assert_eq!(
            e(true, true, false).status_items(),
            [
                StatusItem::Messages,
                StatusItem::UidNext,
                StatusItem::UidValidity
            ]
        );
        assert_eq!(
            e(false, false, true).status_items(),
            [StatusItem::UidValidity, StatusItem::HighestModseq]
        );
    }
}
