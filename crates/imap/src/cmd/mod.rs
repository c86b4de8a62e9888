//! Command handlers, one module per command family, and the dispatcher.
//!
//! [`allowed`] is the per-state command table (RFC 9051 §6): it is asked
//! once, before dispatch, so handlers can rely on the state they run in.
//! Handlers return a typed [`Status`] for the tagged reply and write
//! untagged data through [`Io`] with the serialisers of
//! [`crate::response`].

mod append;
mod auth;
mod copy_move;
mod expunge;
mod fetch;
mod idle;
mod list;
mod mailbox;
mod metadata;
mod misc;
mod notify;
mod qresync;
mod quota;
mod search;
mod select;
mod sort;
mod store;
mod sync;

use std::sync::atomic::Ordering;

use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{Command, CommandKind, ListReturn, ListSelect};
use crate::io::Io;
use crate::response::{Code, Kind, Status};
use crate::session::{Exit, Session, State};

/// Which commands are allowed in which state (RFC 9051 §6).
fn allowed(kind: &CommandKind, state: &State) -> bool {
    use CommandKind as C;
    match kind {
        C::Capability | C::Noop | C::Logout | C::Id => true,
        C::StartTls | C::Login { .. } | C::Authenticate { .. } => {
            matches!(state, State::NotAuthenticated)
        }
        C::Enable(_)
        | C::Select { .. }
        | C::Create(_)
        | C::Delete(_)
        | C::Rename { .. }
        | C::Subscribe(_)
        | C::Unsubscribe(_)
        | C::List { .. }
        | C::Lsub { .. }
        | C::Namespace
        | C::Compress(_)
        | C::Status { .. }
        | C::Append { .. }
        | C::GetQuota(_)
        | C::GetQuotaRoot(_)
        | C::SetQuota { .. }
        | C::GetMetadata { .. }
        | C::SetMetadata { .. }
        | C::Notify(_)
        | C::Idle => matches!(state, State::Authenticated { .. } | State::Selected { .. }),
        C::Check
        | C::Close
        | C::Unselect
        | C::Expunge { .. }
        | C::Search { .. }
        | C::Sort { .. }
        | C::Thread { .. }
        | C::Fetch { .. }
        | C::Store { .. }
        | C::Copy { .. } => matches!(state, State::Selected { .. }),
    }
}

fn status_label(k: Kind) -> &'static str {
    match k {
        Kind::Ok => "ok",
        Kind::No => "no",
        Kind::Bad => "bad",
        Kind::Bye => "bye",
    }
}

/// What a handler asks of the dispatcher besides its tagged reply.
enum Outcome {
    /// Send this tagged status (after a resync if one is due).
    Reply(Status),
    /// Send this tagged status without the post-command resync (the
    /// handler just synchronised, or the mailbox changed).
    ReplyNoSync(Status),
    /// The handler wrote its own tagged reply; the session goes on or ends.
    Done(Option<Exit>),
}

impl Session {
    /// Runs one parsed command: the state check, the handler, the
    /// untagged updates due after it, and the tagged reply.
    pub(crate) async fn dispatch<S>(
        &mut self,
        io: &mut Io<S>,
        cmd: Command,
        shutdown: &Shutdown,
    ) -> std::io::Result<Option<Exit>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Command { tag, kind } = cmd;
        if !allowed(&kind, &self.state) {
            let st = if matches!(kind, CommandKind::StartTls) && self.tls {
                Status::bad("Already in TLS")
            } else {
                Status::bad(format!("{} not allowed now", kind.name()))
            };
            io.write(&st.encode(Some(&tag)));
            return Ok(self.count_error().then_some(Exit::Closed));
        }
        let name = kind.name();
        tracing::debug!(command = name, "command");
        // Untagged updates may not be sent during FETCH, STORE and SEARCH
        // (RFC 9051 §7.5.1 EXPUNGE rule); UID variants are fine.
        let may_sync = !matches!(
            kind,
            CommandKind::Fetch { uid: false, .. }
                | CommandKind::Store { uid: false, .. }
                | CommandKind::Search { uid: false, .. }
                | CommandKind::Sort { uid: false, .. }
                | CommandKind::Thread { uid: false, .. }
        );
        let withholds_expunges = !may_sync;
        let outcome = self.run(io, &tag, kind, shutdown).await?;
        let (status, may_sync) = match outcome {
            Outcome::Reply(st) => (st, may_sync),
            Outcome::ReplyNoSync(st) => (st, false),
            Outcome::Done(exit) => return Ok(exit),
        };
        if may_sync && status.kind != Kind::Bad {
            let dirty = self
                .selected()
                .and_then(|m| m.watch.as_ref())
                .is_some_and(|w| w.dirty.load(Ordering::Acquire));
            if dirty {
                Box::pin(self.sync(io, true)).await;
            }
        }
        if withholds_expunges && self.enabled.qresync && status.kind != Kind::Bad {
            Box::pin(self.report_withheld_expunges(io)).await;
        }
        // NOTIFY (RFC 5465): other mailboxes' changes, at the end of every
        // command too, so a busy client is not kept waiting for them
        // (STATUS responses may follow any command, §5).
        if status.kind != Kind::Bad {
            Box::pin(self.notify_drain(io)).await;
        }
        // Server-side failures carry the session id, so a user's report
        // can be found in the logs.
        let mut status = status;
        if matches!(status.code, Some(Code::ServerBug | Code::Unavailable)) {
            status.text = format!("{} (session {})", status.text, self.sid);
        }
        if self.auth_exhausted() && status.kind != Kind::Ok {
            io.write(&status.encode(Some(&tag)));
            io.write(&Status::bye("Too many authentication failures").encode(None));
            io.flush().await?;
            return Ok(Some(Exit::Closed));
        }
        metrics::counter!("imap_commands_total", "command" => name, "status" => status_label(status.kind)).increment(1);
        if status.kind == Kind::Bad && self.count_error() {
            io.write(&status.encode(Some(&tag)));
            return self.too_many_errors(io).await.map(Some);
        }
        io.write(&status.encode(Some(&tag)));
        Ok(None)
    }

    /// The handler of each command.
    async fn run<S>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        kind: CommandKind,
        shutdown: &Shutdown,
    ) -> std::io::Result<Outcome>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        use Outcome::{Done, Reply, ReplyNoSync};
        Ok(match kind {
            CommandKind::Capability => Reply(self.capability(io)),
            CommandKind::Noop | CommandKind::Check => ReplyNoSync(Box::pin(self.noop(io)).await),
            CommandKind::Logout => Done(Box::pin(self.logout(io, tag)).await?),
            CommandKind::StartTls => match Box::pin(self.starttls(io, tag)).await? {
                Ok(exit) => Done(Some(exit)),
                Err(st) => Reply(st),
            },
            CommandKind::Id => Reply(Self::id(io)),
            CommandKind::Enable(caps) => Reply(self.enable(io, &caps)),
            CommandKind::Login { user, pass } => Reply(Box::pin(self.login(&user, &pass)).await),
            CommandKind::Authenticate { mechanism, initial } => {
                Box::pin(self.authenticate(io, &mechanism, initial, shutdown)).await?
            }
            CommandKind::Select {
                mailbox,
                condstore,
                read_only,
                qresync,
            } => ReplyNoSync(
                Box::pin(self.select(io, &mailbox, condstore, read_only, qresync.as_ref())).await,
            ),
            CommandKind::Create(name) => Reply(Box::pin(self.create(&name)).await),
            CommandKind::Delete(name) => Reply(Box::pin(self.delete(&name)).await),
            CommandKind::Rename { from, to } => Reply(Box::pin(self.rename(&from, &to)).await),
            CommandKind::Subscribe(name) => Reply(Box::pin(self.subscribe(&name, true)).await),
            CommandKind::Unsubscribe(name) => Reply(Box::pin(self.subscribe(&name, false)).await),
            CommandKind::List {
                reference,
                patterns,
                select,
                ret,
                extended,
            } => Reply(
                Box::pin(self.list(io, &reference, &patterns, &select, &ret, extended, false))
                    .await,
            ),
            CommandKind::Lsub { reference, pattern } => {
                let select = ListSelect {
                    subscribed: true,
                    ..Default::default()
                };
                Reply(
                    Box::pin(self.list(
                        io,
                        &reference,
                        &[pattern],
                        &select,
                        &ListReturn::default(),
                        false,
                        true,
                    ))
                    .await,
                )
            }
            CommandKind::Namespace => Reply(Self::namespace(io)),
            CommandKind::Compress(mechanism) => {
                Done(Box::pin(self.compress(io, tag, &mechanism)).await?)
            }
            CommandKind::Status { mailbox, items } => {
                Reply(Box::pin(self.status(io, &mailbox, &items)).await)
            }
            CommandKind::Append { mailbox, messages } => {
                Reply(Box::pin(self.append(io, &mailbox, messages)).await)
            }
            CommandKind::Idle => Done(Box::pin(self.idle(io, tag, shutdown)).await?),
            CommandKind::Close => ReplyNoSync(Box::pin(self.close(true)).await),
            CommandKind::Unselect => ReplyNoSync(Box::pin(self.close(false)).await),
            CommandKind::Expunge { uids } => Reply(Box::pin(self.expunge(io, uids.as_ref())).await),
            CommandKind::Search { uid, ret, key } => {
                Reply(Box::pin(self.search(io, tag, uid, ret, &key)).await)
            }
            CommandKind::Sort {
                uid,
                ret,
                criteria,
                key,
            } => Reply(Box::pin(self.sort(io, tag, uid, ret, &criteria, &key)).await),
            CommandKind::Thread {
                uid,
                algorithm,
                key,
            } => Reply(Box::pin(self.thread(io, uid, algorithm, &key)).await),
            CommandKind::Fetch {
                uid,
                set,
                atts,
                changed_since,
                vanished,
            } => Reply(Box::pin(self.fetch(io, uid, &set, &atts, changed_since, vanished)).await?),
            CommandKind::Store {
                uid,
                set,
                op,
                silent,
                flags,
                unchanged_since,
            } => Reply(
                Box::pin(self.store_flags(io, uid, &set, op, silent, &flags, unchanged_since))
                    .await,
            ),
            CommandKind::Copy {
                uid,
                set,
                mailbox,
                is_move,
            } => Reply(Box::pin(self.copy(io, uid, &set, &mailbox, is_move)).await),
            CommandKind::GetQuota(root) => Reply(Box::pin(self.getquota(io, &root)).await),
            CommandKind::GetQuotaRoot(mailbox) => {
                Reply(Box::pin(self.getquotaroot(io, &mailbox)).await)
            }
            CommandKind::SetQuota { root, limits } => {
                Reply(Box::pin(self.setquota(io, &root, &limits)).await)
            }
            CommandKind::GetMetadata {
                mailbox,
                maxsize,
                depth,
                entries,
            } => Reply(Box::pin(self.getmetadata(io, &mailbox, maxsize, depth, entries)).await),
            CommandKind::SetMetadata { mailbox, values } => {
                Reply(Box::pin(self.setmetadata(&mailbox, values)).await)
            }
            CommandKind::Notify(spec) => Reply(Box::pin(self.notify(io, spec)).await),
        })
    }
}

#[cfg(test)]
mod future_size {
    use std::sync::Arc;

    use super::*;
    use crate::session::{SessionConfig, Shared};

    /// An async fn's state machine is as large as its largest state, and a
    /// connection's task holds it for as long as the connection lives: an
    /// idle session paid for the largest command (FETCH, SEARCH…) until
    /// every handler and every resynchronisation was boxed (10,000 idle
    /// sessions, docs/benchmarks.md "Idle connections"). What a session in
    /// IDLE holds is serve + dispatch + run + idle.
    #[tokio::test]
    async fn a_waiting_session_holds_small_state_machines() {
        let Ok(store) = mailstore_api::connect("http://127.0.0.1:9", "token") else {
            panic!("store client");
        };
        let shared = Arc::new(Shared::new(SessionConfig::default(), store));
        let mut s = Session::new(shared, "t".into(), [127, 0, 0, 1].into(), true);
        let (a, _b) = tokio::io::duplex(64);
        let mut io = Io::new(a);
        let shutdown = Shutdown::new();
        let serve = std::mem::size_of_val(&s.serve(&mut io, false, &shutdown));
        let noop = Command {
            tag: "a".into(),
            kind: CommandKind::Noop,
        };
        let dispatch = std::mem::size_of_val(&s.dispatch(&mut io, noop, &shutdown));
        let run = std::mem::size_of_val(&s.run(&mut io, "a", CommandKind::Noop, &shutdown));
        let idle = std::mem::size_of_val(&s.idle(&mut io, "a", &shutdown));
        let total = serve + dispatch + run + idle;
        // Before the boxing (debug build): serve 8,504 bytes, idle 5,216.
        assert!(
            total <= 4096,
            "serve {serve} + dispatch {dispatch} + run {run} + idle {idle} = {total} bytes"
        );
    }
}
