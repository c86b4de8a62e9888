//! End-of-data checks, after the content is complete and before the store
//! sees it: mail loops (RFC 5321 §6.3), the `From:` of a submission
//! (RFC 6409 §8: the MSA may refuse what the user may not send), the
//! inbound authentication of MX mail ([`crate::inbound`]), and the header
//! fields no client may set ([`crate::headers`]).

use mail_auth::AuthenticatedMessage;
use mail_wire::path::ReversePath;
use mail_wire::reply::EnhancedStatus;

use crate::headers::{self, QUARANTINE_HEADER};
use crate::inbound::Decision;
use crate::proto::{Reply, codes};
use crate::session::{AuthUser, ListenerKind, Session, Transaction};

/// Distinct `From:` addresses checked on submission; more are refused.
const MAX_FROM_ADDRESSES: usize = 20;

impl Session {
    /// Checks the message; on success returns the header fields to add
    /// below our `Received:` (an `Authentication-Results`, perhaps a
    /// quarantine mark), having removed from `msg` the fields only we may
    /// set. On refusal returns the reply.
    pub(crate) async fn screen(
        &self,
        txn: &Transaction,
        msg: &mut Vec<u8>,
    ) -> Result<String, Reply> {
        // RFC 5321 §6.3: "a simple counting of the number of Received:
        // header fields" detects loops.
        let received = headers::count(msg, "Received");
        if received > self.shared.limits.max_received {
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => "loop").increment(1);
            tracing::info!(received, "mail loop: too many Received headers");
            return Err(codes::mail_loop());
        }
        let mut added = String::new();
        if let Some(user) = &self.auth {
            self.check_from(user, msg).await?;
        } else if self.kind == ListenerKind::Mx
            && let Some(checker) = &self.shared.inbound
        {
            let (helo, _) = self.helo.clone().unwrap_or_default();
            let mail_from = match &txn.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.address(),
            };
            let verdict = checker
                .check(
                    &self.shared.hostname,
                    self.peer.ip(),
                    &helo,
                    &mail_from,
                    msg,
                    txn.dmarc_reject,
                )
                .await;
            added = verdict.header;
            self.record_dmarc(verdict.dmarc);
            match verdict.decision {
                Decision::Accept => {}
                Decision::Quarantine(why) => {
                    metrics::counter!("smtp_in_messages_quarantined_total").increment(1);
                    let why: String = why.chars().filter(|c| !c.is_control()).collect();
                    added.push_str(&format!("{QUARANTINE_HEADER}: {why}\r\n"));
                }
                Decision::Reject(why) => {
                    metrics::counter!("smtp_in_messages_rejected_total", "reason" => "authentication")
                        .increment(1);
                    return Err(Reply::new(
                        550,
                        Some(EnhancedStatus::new(5, 7, 1)),
                        format!("Message rejected: {why}"),
                    ));
                }
            }
        }
        // RFC 8601 §5: after the checks (a signature may cover them).
        let removed = headers::strip_forged(msg, &self.shared.hostname);
        if removed > 0 {
            tracing::info!(removed, "removed header fields claiming to be ours");
        }
        Ok(added)
    }

    /// Counts the DMARC outcomes for the aggregate reports (RFC 7489 §7.2)
    /// in the background: a report row is never worth delaying or failing
    /// the message; a store error is logged.
    fn record_dmarc(&self, rows: Vec<mailstore_api::pb::DmarcResult>) {
        if rows.is_empty() {
            return;
        }
        let client = self.shared.backend.client();
        tokio::spawn(async move {
            for row in rows {
                let mut c = client.dmarc_reports.clone();
                let req = mailstore_api::pb::RecordDmarcResultRequest { result: Some(row) };
                let call = c.record_dmarc_result(req);
                match tokio::time::timeout(std::time::Duration::from_secs(30), call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e.message(), "DMARC result not recorded");
                    }
                    Err(_) => tracing::warn!("DMARC result not recorded: time-out"),
                }
            }
        });
    }

    /// Submission: every `From:` address must be the user's own (address,
    /// plus-address, or an alias delivering to them), as for MAIL FROM.
    /// A message without `From:` passes (RFC 6409 §8.1 lets an MSA add
    /// one); a `From:` field with no readable address does not.
    async fn check_from(&self, user: &AuthUser, msg: &[u8]) -> Result<(), Reply> {
        if headers::count(msg, "From") == 0 {
            return Ok(());
        }
        let mut from = AuthenticatedMessage::parse(msg)
            .map(|m| m.from)
            .unwrap_or_default();
        from.sort_unstable();
        from.dedup();
        if from.is_empty() || from.len() > MAX_FROM_ADDRESSES {
            tracing::info!(user = %user.address, "From: header unreadable or too long");
            return Err(codes::from_not_owned());
        }
        for address in &from {
            match self
                .shared
                .backend
                .check_sender(user.id, address, &self.sid)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(user = %user.address, from = %address, "From: not owned");
                    return Err(codes::from_not_owned());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CheckSender failed");
                    return Err(codes::store_unavailable());
                }
            }
        }
        Ok(())
    }
}
