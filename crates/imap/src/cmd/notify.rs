//! NOTIFY (RFC 5465): NOTIFY SET / NOTIFY NONE, and the reports sent
//! between commands (see [`crate::notify`] for the queue and its bound).
//!
//! Supported: the filters SELECTED, SELECTED-DELAYED, INBOXES (INBOX, the
//! only mailbox mail is delivered to), PERSONAL, SUBSCRIBED, SUBTREE and
//! MAILBOXES (§6); the events MessageNew (with FETCH items for the
//! selected mailbox), MessageExpunge, FlagChange (§5.2–5.4),
//! MailboxName and SubscriptionChange (§5.4, §5.5: LIST for mailboxes
//! created, renamed, deleted, (un)subscribed), MailboxMetadataChange and
//! ServerMetadataChange (§5.6, §5.7: unsolicited METADATA naming the
//! changed entries, found by comparing with a snapshot of entry names and
//! value fingerprints). AnnotationChange (no ANNOTATE here) is refused
//! with `NO [BADEVENT (...)]` (§5, §3).
//!
//! - The selected mailbox, under SELECTED: EXISTS, EXPUNGE and FETCH
//!   FLAGS are sent as soon as they happen, between commands (§5.2, §5.3);
//!   under SELECTED-DELAYED expunges still wait for a command that allows
//!   them (§6). Without either, the selected mailbox is reported at the end
//!   of commands as without NOTIFY.
//! - Other mailboxes: a STATUS response when an event changes what the
//!   group's events report (MessageNew: MESSAGES UIDNEXT UIDVALIDITY;
//!   MessageExpunge: MESSAGES; FlagChange: UIDVALIDITY HIGHESTMODSEQ);
//!   with `NOTIFY SET STATUS`, one STATUS for each of them at once (§3).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{FetchAtt, NotifyEvent, NotifyFilter, NotifyGroup, SeqRange, SeqSet};
use crate::io::Io;
use crate::model::MailboxInfo;
use crate::notify::{
    Events, Filter, NotifyQueue, NotifyState, changed_entries, fingerprint, snapshot,
};
use crate::parser::DEPTH_INFINITY;
use crate::response::{Code, Status};
use crate::session::Session;
use crate::store::store_error;

fn events(list: &[NotifyEvent]) -> Result<Events, Status> {
    let mut e = Events::default();
    for ev in list {
        match ev {
            NotifyEvent::MessageNew(atts) => {
                e.new = true;
                e.fetch.clone_from(atts);
            }
            NotifyEvent::MessageExpunge => e.expunge = true,
            NotifyEvent::FlagChange => e.flags = true,
            NotifyEvent::Other(name) if name == "MAILBOXNAME" => e.names = true,
            NotifyEvent::Other(name) if name == "SUBSCRIPTIONCHANGE" => e.subs = true,
            NotifyEvent::Other(name) if name == "MAILBOXMETADATACHANGE" => e.mailbox_meta = true,
            NotifyEvent::Other(name) if name == "SERVERMETADATACHANGE" => e.server_meta = true,
            NotifyEvent::Other(name) => {
                return Err(Status::no(format!("Unsupported event {name}")).with(Code::BadEvent));
            }
        }
    }
    Ok(e)
}

impl Session {
    fn names_in(&self, raw: &[Vec<u8>]) -> Result<Vec<String>, Status> {
        raw.iter().map(|r| self.mailbox_in(r)).collect()
    }

    /// NOTIFY (RFC 5465 §3).
    pub(super) async fn notify<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        spec: Option<(bool, Vec<NotifyGroup>)>,
    ) -> Status {
        let Some(user_id) = self.user_id() else {
            return Status::bad("Not authenticated");
        };
        // Any earlier NOTIFY SET ends here (§3: a new one replaces it).
        self.notify = None;
        let Some((status, groups)) = spec else {
            return Status::ok("NOTIFY completed");
        };
        let mut selected = None;
        let mut others = Vec::new();
        for g in &groups {
            let ev = match events(&g.events) {
                Ok(e) => e,
                Err(st) => return st,
            };
            let filter = match &g.filter {
                NotifyFilter::Selected | NotifyFilter::SelectedDelayed => {
                    if selected.is_some() {
                        return Status::bad("SELECTED given twice");
                    }
                    selected = Some((ev, g.filter == NotifyFilter::SelectedDelayed));
                    continue;
                }
                NotifyFilter::Inboxes => Filter::Inboxes,
                NotifyFilter::Personal => Filter::Personal,
                NotifyFilter::Subscribed => Filter::Subscribed,
                NotifyFilter::Subtree(raw) => match self.names_in(raw) {
                    Ok(n) => Filter::Subtree(n),
                    Err(st) => return st,
                },
                NotifyFilter::Mailboxes(raw) => match self.names_in(raw) {
                    Ok(n) => Filter::Mailboxes(n),
                    Err(st) => return st,
                },
            };
            // §5.2: FETCH items only for the selected mailbox.
            if !ev.fetch.is_empty() {
                return Status::bad("MessageNew FETCH items are for SELECTED only");
            }
            others.push((filter, ev));
        }
        let queue = Arc::new(NotifyQueue::new(self.cfg().notify_max_pending));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let q = queue.clone();
        let task = tokio::spawn(self.store().watch_user_loop(
            user_id,
            move |ev| q.push(ev),
            ready_tx,
        ));
        if tokio::time::timeout(Duration::from_secs(3), ready_rx)
            .await
            .is_err()
        {
            tracing::warn!("store watch not ready for NOTIFY");
        }
        let wants_names = others.iter().any(|(_, e)| e.names || e.subs);
        let mut state = NotifyState {
            selected,
            others,
            queue,
            last: HashMap::new(),
            names: None,
            meta: HashMap::new(),
            task,
        };
        // Remember what each covered mailbox looks like now, so later
        // events report changes only; with STATUS, report it too (§3).
        // Counts are asked for the covered mailboxes only (a narrow filter
        // on a large account costs one mailbox's counts, not all of them).
        let store = self.store();
        let list = match store.list_mailboxes(user_id, false).await {
            Ok(l) => l,
            Err(e) => return store_error(&e),
        };
        if wants_names {
            state.names = Some(
                list.iter()
                    .map(|m| (m.id, (m.name.clone(), m.subscribed)))
                    .collect(),
            );
        }
        // What the metadata events will be compared with (§5.6, §5.7).
        let current = self.selected().map(|m| m.id);
        if state.others.iter().any(|(_, e)| e.server_meta)
            || state.selected.as_ref().is_some_and(|(e, _)| e.server_meta)
        {
            let snap = self.meta_snapshot(user_id, "").await;
            state.meta.insert(0, snap);
        }
        for mb in &list {
            let wants = if Some(mb.id) == current {
                state.selected.as_ref().is_some_and(|(e, _)| e.mailbox_meta)
            } else {
                state.events_for(mb).is_some_and(|e| e.mailbox_meta)
            };
            if wants {
                let snap = self.meta_snapshot(user_id, &mb.name).await;
                state.meta.insert(mb.id, snap);
            }
        }
        for mb in list.iter().filter(|m| Some(m.id) != current) {
            let Some(items) = state.events_for(mb).map(Events::status_items) else {
                continue;
            };
            if items.is_empty() {
                continue;
            }
            let Ok(mb) = store.get_mailbox(user_id, &mb.name, false).await else {
                continue;
            };
            if status {
                io.write(&self.status_line(&mb, &items));
            }
            state.last.insert(mb.id, snapshot(&mb));
        }
        self.notify = Some(Box::new(state));
        Status::ok("NOTIFY completed")
    }

    /// Reports what the queue holds (and, under SELECTED, the selected
    /// mailbox's changes); called between commands.
    pub(crate) async fn notify_push<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) {
        let Some(sel) = self.notify.as_ref().map(|n| n.selected.clone()) else {
            return;
        };
        if let Some((ev, delayed)) = sel
            && !ev.is_none()
            && self.selected().is_some()
        {
            let before = self.selected().map_or(0, |m| m.uids.len());
            self.sync(io, !delayed && ev.expunge).await;
            self.fetch_new(io, before, &ev.fetch).await;
        }
        self.notify_drain(io).await;
    }

    /// MessageNew with FETCH items (§5.2): the items of each message
    /// past the first `before` of the selected mailbox.
    async fn fetch_new<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        before: usize,
        atts: &[FetchAtt],
    ) {
        if atts.is_empty() {
            return;
        }
        let Some(mb) = self.selected() else { return };
        let (Some(&first), Some(&last)) = (mb.uids.get(before), mb.uids.last()) else {
            return;
        };
        let set = SeqSet(vec![SeqRange {
            first: Some(first),
            last: Some(last),
        }]);
        if let Err(e) = self.fetch(io, true, &set, atts, None, false).await {
            tracing::debug!(error = %e, "NOTIFY fetch failed");
        }
    }

    /// STATUS for each changed mailbox the NOTIFY SET covers (§5), or
    /// `[NOTIFICATIONOVERFLOW]` and NOTIFY NONE after too many events.
    pub(crate) async fn notify_drain<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) {
        let Some(user_id) = self.user_id() else {
            return;
        };
        let Some(n) = self.notify.as_ref() else {
            return;
        };
        let pending = n.queue.take();
        if pending.overflow {
            self.notify = None;
            io.write(
                &Status::ok("Too many events; NOTIFY is off")
                    .with(Code::NotificationOverflow)
                    .encode(None),
            );
            return;
        }
        let current = self.selected().map(|m| m.id);
        // Changes to the selected mailbox alone are the selected path's.
        if !pending.all
            && pending.metadata.is_empty()
            && pending.ids.iter().all(|id| Some(*id) == current)
        {
            return;
        }
        let store = self.store();
        let list = match store.list_mailboxes(user_id, false).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY: listing mailboxes failed");
                return;
            }
        };
        let mut out = Vec::new();
        if pending.all {
            self.mailbox_names(&mut out, &list);
        }
        for id in &pending.metadata {
            self.metadata_changes(&mut out, user_id, *id, &list).await;
        }
        for mb in list {
            if Some(mb.id) == current || !(pending.all || pending.ids.contains(&mb.id)) {
                continue;
            }
            let Some(n) = self.notify.as_ref() else {
                return;
            };
            let Some(items) = n.events_for(&mb).map(Events::status_items) else {
                continue;
            };
            if items.is_empty() {
                continue;
            }
            let Ok(mb) = store.get_mailbox(user_id, &mb.name, false).await else {
                continue;
            };
            let snap = snapshot(&mb);
            let Some(n) = self.notify.as_mut() else {
                return;
            };
            let changed = n.last.insert(mb.id, snap).is_none_or(|old| {
                // Only what the group reports counts as a change.
                items.iter().any(|it| {
                    use crate::command::StatusItem as I;
                    let i = match it {
                        I::Messages => 0,
                        I::UidNext => 1,
                        I::UidValidity => 2,
                        _ => 3,
                    };
                    old[i] != snap[i]
                })
            });
            if changed {
                out.extend_from_slice(&self.status_line(&mb, &items));
            }
        }
        io.write(&out);
    }
}

impl Session {
    /// MailboxName and SubscriptionChange (RFC 5465 §5.4, §5.5): compares
    /// the user's mailboxes with the last list and writes a LIST for each
    /// one created, renamed (with `OLDNAME`, RFC 5258 extended data) or
    /// deleted (`\NonExistent`), and for each one (un)subscribed
    /// (`\Subscribed` or not), when the first group matching it asks for
    /// that event.
    fn mailbox_names(&mut self, out: &mut Vec<u8>, list: &[MailboxInfo]) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        let Some(old) = n.names.take() else {
            return;
        };
        let new: HashMap<u64, (String, bool)> = list
            .iter()
            .map(|m| (m.id, (m.name.clone(), m.subscribed)))
            .collect();
        // (names, subs) the first group covering `name` asks for.
        let wants = |n: &NotifyState, name: &str, subscribed: bool| {
            let mb = MailboxInfo {
                name: name.to_string(),
                subscribed,
                ..MailboxInfo::default()
            };
            n.events_for(&mb)
                .map_or((false, false), |e| (e.names, e.subs))
        };
        let sub = |s: bool| if s { "\\Subscribed" } else { "" };
        let mut lines: Vec<(&str, &str, Option<&str>)> = Vec::new();
        for m in list {
            // A mailbox just unsubscribed still counts as SUBSCRIBED here.
            let before = old.get(&m.id).is_some_and(|(_, s)| *s);
            let (names, subs) = wants(n, &m.name, m.subscribed || before);
            match old.get(&m.id) {
                None if names => lines.push((sub(m.subscribed), &m.name, None)),
                Some((was, s)) if *was != m.name && (names || wants(n, was, *s).0) => {
                    lines.push((sub(m.subscribed), &m.name, Some(was)));
                }
                Some((was, s)) if *was == m.name && *s != m.subscribed && subs => {
                    lines.push((sub(m.subscribed), &m.name, None));
                }
                _ => {}
            }
        }
        for (id, (was, s)) in &old {
            if !new.contains_key(id) && wants(n, was, *s).0 {
                lines.push(("\\NonExistent", was, None));
            }
        }
        let mut buf = Vec::new();
        for (attrs, name, oldname) in lines {
            buf.extend_from_slice(format!("* LIST ({attrs}) \"/\" ").as_bytes());
            self.mailbox_out(&mut buf, name);
            if let Some(was) = oldname {
                buf.extend_from_slice(b" (\"OLDNAME\" (");
                self.mailbox_out(&mut buf, was);
                buf.extend_from_slice(b"))");
            }
            buf.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&buf);
        if let Some(n) = self.notify.as_mut() {
            n.names = Some(new);
        }
    }
}

impl Session {
    /// A mailbox's (or, for "", the server's) METADATA entries, name →
    /// fingerprint of the value.
    async fn meta_snapshot(&self, user_id: u64, mailbox: &str) -> HashMap<String, u64> {
        let all = vec!["/private".to_string(), "/shared".to_string()];
        match self
            .store()
            .get_metadata(user_id, mailbox, all, DEPTH_INFINITY)
            .await
        {
            Ok(v) => v.into_iter().map(|(k, v)| (k, fingerprint(&v))).collect(),
            Err(_) => HashMap::new(),
        }
    }

    /// MailboxMetadataChange and ServerMetadataChange (RFC 5465 §5.6,
    /// §5.7): `* METADATA mailbox entry...` (RFC 5464 §4.4.2, the
    /// unsolicited form) naming the entries that changed since the last
    /// look, when the mailbox's group (the SELECTED one for the selected
    /// mailbox) asks for it; `id` 0 is the server.
    async fn metadata_changes(
        &mut self,
        out: &mut Vec<u8>,
        user_id: u64,
        id: u64,
        list: &[MailboxInfo],
    ) {
        let current = self.selected().map(|m| m.id);
        let Some(n) = self.notify.as_ref() else {
            return;
        };
        let name = if id == 0 {
            let wanted = n.others.iter().any(|(_, e)| e.server_meta)
                || n.selected.as_ref().is_some_and(|(e, _)| e.server_meta);
            if !wanted {
                return;
            }
            String::new()
        } else {
            let Some(mb) = list.iter().find(|m| m.id == id) else {
                return;
            };
            let wanted = if Some(id) == current {
                n.selected.as_ref().is_some_and(|(e, _)| e.mailbox_meta)
            } else {
                n.events_for(mb).is_some_and(|e| e.mailbox_meta)
            };
            if !wanted {
                return;
            }
            mb.name.clone()
        };
        let snap = self.meta_snapshot(user_id, &name).await;
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        let old = n.meta.insert(id, snap.clone()).unwrap_or_default();
        let changed = changed_entries(&old, &snap);
        if changed.is_empty() {
            return;
        }
        out.extend_from_slice(b"* METADATA ");
        if name.is_empty() {
            out.extend_from_slice(b"\"\"");
        } else {
            self.mailbox_out(out, &name);
        }
        for e in changed {
            out.push(b' ');
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}
