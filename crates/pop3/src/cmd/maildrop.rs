//! TRANSACTION-state commands on the maildrop listing (RFC 1939 §5):
//! STAT, LIST, UIDL, DELE, RSET, with CRLF sizes computed on demand.

use futures::StreamExt as _;
use mailstore_api::pb;

use crate::body::BodyEncoder;
use crate::proto::Reply;
use crate::session::{Flow, Maildrop, Session, State};

/// Concurrent body fetches when computing CRLF sizes.
const SIZE_CONCURRENCY: usize = 4;

impl Session {
    /// The maildrop, in TRANSACTION state.
    pub(crate) fn maildrop(&self) -> Option<&Maildrop> {
        match &self.state {
            State::Transaction(d) => Some(d),
            _ => None,
        }
    }

    /// A request for the whole body of message `uid` (streamed, so no
    /// deadline: a large message may take long).
    pub(crate) fn body_request(
        &self,
        mailbox_id: u64,
        uid: u32,
    ) -> tonic::Request<pb::FetchBodyRequest> {
        self.req(
            pb::FetchBodyRequest {
                mailbox_id,
                uid,
                offset: 0,
                length: 0,
            },
            false,
        )
    }

    /// Index of message `n` if it exists and is not marked deleted.
    pub(crate) fn lookup(&self, n: u32) -> Result<usize, Reply> {
        let Some(drop) = self.maildrop() else {
            return Err(Reply::err("Command not valid in this state"));
        };
        let i = usize::try_from(n).unwrap_or(usize::MAX).wrapping_sub(1);
        match drop.msgs.get(i) {
            None => Err(Reply::err("No such message")),
            Some(m) if m.deleted => Err(Reply::err("Message already deleted")),
            Some(_) => Ok(i),
        }
    }

    /// Makes sure the CRLF sizes of the given messages are known.
    pub(crate) async fn ensure_sizes(&mut self, idx: &[usize]) -> Result<(), tonic::Status> {
        let (mailbox_id, todo) = {
            let Some(drop) = self.maildrop() else {
                return Ok(());
            };
            let todo: Vec<(usize, u32)> = idx
                .iter()
                .filter_map(|&i| {
                    drop.msgs
                        .get(i)
                        .filter(|m| m.size.is_none())
                        .map(|m| (i, m.uid))
                })
                .collect();
            (drop.mailbox_id, todo)
        };
        if todo.is_empty() {
            return Ok(());
        }
        let results: Vec<(usize, Result<Option<u64>, tonic::Status>)> = futures::stream::iter(todo)
            .map(|(i, uid)| {
                let req = self.body_request(mailbox_id, uid);
                let mut mailboxes = self.shared.store.mailboxes.clone();
                async move {
                    let r = async {
                        let mut stream = match mailboxes.fetch_body(req).await {
                            Ok(s) => s.into_inner(),
                            Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
                            Err(e) => return Err(e),
                        };
                        let mut enc = BodyEncoder::counter();
                        let mut sink = Vec::new();
                        while let Some(chunk) = stream.message().await? {
                            enc.feed(&chunk.data, &mut sink);
                        }
                        enc.finish(&mut sink);
                        Ok(Some(enc.octets()))
                    }
                    .await;
                    (i, r)
                }
            })
            .buffer_unordered(SIZE_CONCURRENCY)
            .collect()
            .await;
        let State::Transaction(drop) = &mut self.state else {
            return Ok(());
        };
        for (i, r) in results {
            let Some(m) = drop.msgs.get_mut(i) else {
                continue;
            };
            match r? {
                Some(size) => {
                    m.size = Some(size);
                    self.shared.sizes.put(m.blob, size);
                }
                // Expunged meanwhile by someone else (IMAP): RETR will say so;
                // the stored size stands in.
                None => m.size = Some(m.raw_size),
            }
        }
        Ok(())
    }

    pub(crate) fn live_indices(&self) -> Vec<usize> {
        self.maildrop()
            .map(|d| (0..d.msgs.len()).filter(|&i| !d.msgs[i].deleted).collect())
            .unwrap_or_default()
    }

    pub(crate) fn size_of(&self, i: usize) -> u64 {
        self.maildrop()
            .and_then(|d| d.msgs.get(i))
            .map_or(0, |m| m.size.unwrap_or(m.raw_size))
    }

    pub(crate) async fn stat(&mut self, out: &mut Vec<u8>) -> Flow {
        let live = self.live_indices();
        if let Err(e) = self.ensure_sizes(&live).await {
            tracing::warn!(error = %e, "computing sizes");
            return Self::ok(out, &self.sys_temp());
        }
        let total: u64 = live.iter().map(|&i| self.size_of(i)).sum();
        Self::ok(out, &Reply::ok(format!("{} {total}", live.len())))
    }

    pub(crate) async fn list(&mut self, n: Option<u32>, out: &mut Vec<u8>) -> Flow {
        let idx = match n {
            Some(n) => match self.lookup(n) {
                Ok(i) => vec![i],
                Err(r) => return self.reply(out, r),
            },
            None => self.live_indices(),
        };
        if let Err(e) = self.ensure_sizes(&idx).await {
            tracing::warn!(error = %e, "computing sizes");
            return Self::ok(out, &self.sys_temp());
        }
        if let Some(n) = n {
            return Self::ok(out, &Reply::ok(format!("{n} {}", self.size_of(idx[0]))));
        }
        let total: u64 = idx.iter().map(|&i| self.size_of(i)).sum();
        let lines = idx
            .iter()
            .map(|&i| format!("{} {}", i + 1, self.size_of(i)))
            .collect();
        Self::ok(
            out,
            &Reply::multi(format!("{} messages ({total} octets)", idx.len()), lines),
        )
    }

    /// RFC 1939 §7: unique-id = `<uidvalidity>.<uid>`, stable across
    /// sessions for as long as the mailbox keeps its UIDVALIDITY.
    pub(crate) fn uidl(&mut self, n: Option<u32>, out: &mut Vec<u8>) -> Flow {
        let Some(drop) = self.maildrop() else {
            return self.reply(out, Reply::err("Command not valid in this state"));
        };
        let v = drop.uidvalidity;
        match n {
            Some(n) => match self.lookup(n) {
                Ok(i) => {
                    let uid = self.maildrop().map_or(0, |d| d.msgs[i].uid);
                    Self::ok(out, &Reply::ok(format!("{n} {v}.{uid}")))
                }
                Err(r) => self.reply(out, r),
            },
            None => {
                let lines = drop
                    .msgs
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !m.deleted)
                    .map(|(i, m)| format!("{} {v}.{}", i + 1, m.uid))
                    .collect();
                Self::ok(out, &Reply::multi("Unique-ID listing follows", lines))
            }
        }
    }

    pub(crate) fn dele(&mut self, n: u32, out: &mut Vec<u8>) -> Flow {
        let i = match self.lookup(n) {
            Ok(i) => i,
            Err(r) => return self.reply(out, r),
        };
        if let State::Transaction(drop) = &mut self.state {
            drop.msgs[i].deleted = true;
        }
        Self::ok(out, &Reply::ok(format!("Message {n} deleted")))
    }

    pub(crate) fn rset(&mut self, out: &mut Vec<u8>) -> Flow {
        let n = match &mut self.state {
            State::Transaction(drop) => {
                for m in &mut drop.msgs {
                    m.deleted = false;
                }
                drop.msgs.len()
            }
            _ => 0,
        };
        Self::ok(out, &Reply::ok(format!("Maildrop has {n} messages")))
    }
}
