//! STORE and UID STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE and the
//! MODIFIED response code (RFC 7162 §3.1.3).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{SeqSet, StoreOp};
use crate::io::Io;
use crate::response::{self, Code, Status};
use crate::session::Session;
use crate::store::store_error;

impl Session {
    /// STORE (RFC 9051 §6.4.6; RFC 7162 §3.1.3 UNCHANGEDSINCE).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store_flags<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        uid: bool,
        set: &SeqSet,
        op: StoreOp,
        silent: bool,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Status {
        let rev2 = self.enabled.rev2;
        if unchanged_since.is_some() {
            self.enable_condstore(io);
        }
        let condstore = self.enabled.condstore;
        // RFC 7162 §3.2.4: with QRESYNC every FETCH response has the UID.
        let qresync = self.enabled.qresync;
        let store = self.store();
        let Some(mb) = self.selected() else {
            return Status::bad("No mailbox selected");
        };
        if mb.read_only {
            return Status::no("Mailbox is read-only").with(Code::ReadOnly);
        }
        let uids = mb.resolve(set, uid);
        if uids.is_empty() {
            return Status::ok("STORE completed");
        }
        let flags: Vec<String> = flags.iter().filter(|f| *f != "\\Recent").cloned().collect();
        let flags_sent = flags.clone();
        let r = match store
            .store_flags(mb.id, &uids, op, flags, unchanged_since.unwrap_or(0))
            .await
        {
            Ok(r) => r,
            Err(e) => return store_error(&e),
        };
        // New keywords are announced before any FETCH shows them (and
        // even when the client asked for silence: FLAGS changed).
        if op != StoreOp::Remove {
            let ann = mb.announce(&flags_sent);
            io.write(&ann);
        }
        for u in r.updated {
            let Ok(i) = mb.uids.binary_search(&u.uid) else {
                continue;
            };
            // Keywords other sessions set on these messages, too.
            let ann = mb.announce(&u.flags);
            io.write(&ann);
            mb.flags.set(i, u.flags);
            if silent && unchanged_since.is_none() {
                continue;
            }
            io.write(&response::flags_fetch(
                i + 1,
                (uid || qresync).then_some(u.uid),
                &mb.flags[i],
                !rev2 && mb.is_recent(u.uid),
                condstore.then_some(u.modseq),
            ));
        }
        if r.modified.is_empty() {
            Status::ok("STORE completed")
        } else {
            let mut m: Vec<u32> = if uid {
                r.modified
            } else {
                r.modified.iter().filter_map(|&u| mb.seq_of(u)).collect()
            };
            m.sort_unstable();
            Status::ok("Conditional STORE failed")
                .with(Code::Modified(response::seq_set_string(&m)))
        }
    }
}
