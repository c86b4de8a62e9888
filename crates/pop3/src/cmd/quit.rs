//! QUIT (RFC 1939 §4, §6): from TRANSACTION it enters the UPDATE state,
//! which deletes exactly the messages marked with DELE, and only while the
//! maildrop lock is still ours.

use mailstore_api::pb;

use crate::lock::acquire_lock;
use crate::proto::{Reply, RespCode};
use crate::session::{Flow, Maildrop, Session, State};

impl Session {
    pub(crate) async fn quit(&mut self, out: &mut Vec<u8>) -> Flow {
        let drop = match std::mem::replace(&mut self.state, State::Update) {
            State::Transaction(drop) => drop,
            _ => {
                // RFC 1939 §4: QUIT in AUTHORIZATION ends without UPDATE.
                Reply::ok("Epistole POP3 server signing off").encode(out);
                return Flow::Close;
            }
        };
        // RFC 1939 §6: UPDATE state.
        let reply = self.update(drop).await;
        reply.encode(out);
        Flow::Close
    }

    pub(crate) async fn update(&self, drop: Box<Maildrop>) -> Reply {
        let uids: Vec<u32> = drop
            .msgs
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid)
            .collect();
        if uids.is_empty() {
            drop.lock.release().await;
            return Reply::ok("Epistole POP3 server signing off");
        }
        // Only the lock holder may delete: confirm we still hold it.
        let still_ours = !drop.lock.is_lost()
            && acquire_lock(
                &self.shared.store,
                &drop.lock.name,
                &drop.lock.owner,
                self.cfg().lock_ttl,
            )
            .await
            .unwrap_or(false);
        if !still_ours {
            drop.lock.release().await;
            return Reply::err_code(RespCode::SysTemp, "Maildrop lock lost, no messages deleted");
        }
        let set = uid_set(&uids);
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let flagged = mailboxes
            .store_flags(self.req(
                pb::StoreFlagsRequest {
                    mailbox_id: drop.mailbox_id,
                    uids: Some(set.clone()),
                    op: pb::FlagOp::Add as i32,
                    flags: vec!["\\Deleted".into()],
                    unchanged_since: 0,
                },
                true,
            ))
            .await;
        let result = match flagged {
            Ok(_) => {
                mailboxes
                    .expunge(self.req(
                        pb::ExpungeRequest {
                            mailbox_id: drop.mailbox_id,
                            // Restricted: \Deleted set by IMAP on other messages stays.
                            uids: Some(set),
                        },
                        true,
                    ))
                    .await
            }
            Err(e) => Err(e),
        };
        drop.lock.release().await;
        match result {
            Ok(r) => {
                let n = r.into_inner().expunged.len();
                metrics::counter!("pop3_deleted_total").increment(n as u64);
                Reply::ok(format!(
                    "Epistole POP3 server signing off ({n} messages deleted)"
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "update: deleting messages failed");
                // RFC 1939 §6 wording.
                Reply::err_code(RespCode::SysTemp, "Some deleted messages not removed")
            }
        }
    }
}

/// Sorted UIDs → inclusive ranges.
fn uid_set(uids: &[u32]) -> pb::UidSet {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<pb::UidRange> = Vec::new();
    for uid in sorted {
        match ranges.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(uid) => r.last = uid,
            _ => ranges.push(pb::UidRange {
                first: uid,
                last: uid,
            }),
        }
    }
    pb::UidSet { ranges }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_merge_runs() {
        let s = uid_set(&[5, 1, 2, 3, 7, 8, 10]);
        let r: Vec<(u32, u32)> = s.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(r, vec![(1, 3), (5, 5), (7, 8), (10, 10)]);
        assert!(uid_set(&[]).ranges.is_empty());
        let r: Vec<(u32, u32)> = uid_set(&[u32::MAX, u32::MAX - 1])
            .ranges
            .iter()
            .map(|r| (r.first, r.last))
            .collect();
        assert_eq!(r, vec![(u32::MAX - 1, u32::MAX)]);
    }
}
