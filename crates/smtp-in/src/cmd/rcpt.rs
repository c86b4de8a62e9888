//! RCPT TO (RFC 5321 §4.1.1.3): local recipients on MX, anything for an
//! authenticated user; relay tricks refused.

use mail_wire::path::{ForwardPath, PathError};
use mailstore_api::pb;

use crate::cmd::hourly::Unit;
use crate::proto::command::{self, RcptParams};
use crate::proto::{Reply, codes};
use crate::session::{Session, State};
use crate::store::Recipient;

impl Session {
    pub(crate) async fn rcpt(&mut self, path: &str, params: RcptParams) -> Reply {
        let (State::Mail(txn) | State::Rcpt(txn)) = &self.state else {
            return codes::need_mail();
        };
        let address = match command::parse_rcpt_path(path, txn.params.smtputf8) {
            Ok(ForwardPath::Postmaster) => {
                format!("postmaster@{}", self.shared.hostname.to_lowercase())
            }
            Ok(ForwardPath::Mailbox(m)) if m.is_literal() => {
                return reject_rcpt("literal", codes::relay_denied());
            }
            Ok(ForwardPath::Mailbox(m)) => m.address(),
            Err(PathError::RelayTrick) => return reject_rcpt("relay_trick", codes::relay_denied()),
            Err(PathError::NeedsUtf8) => {
                return reject_rcpt("needs_smtputf8", codes::need_smtputf8());
            }
            Err(PathError::Syntax | PathError::TooLong) => {
                return reject_rcpt("syntax", codes::bad_address());
            }
        };
        if txn.rcpts.len() >= self.shared.limits.max_recipients {
            return reject_rcpt("too_many", codes::too_many_recipients());
        }
        // SRS: a bounce to a sender we rewrote when forwarding goes back to
        // the original sender — only with our hash and within the age limit
        // (else anyone could relay through the SRS domain).
        let mut params = params;
        let mut srs_reversed = false;
        let address = match self
            .shared
            .srs
            .as_ref()
            .map(|s| s.reverse(&address, chrono::Utc::now().timestamp()))
        {
            None | Some(Ok(None)) => address,
            Some(Ok(Some(original))) => {
                if params.orcpt.is_none() {
                    params.orcpt = Some(format!("rfc822;{address}"));
                }
                srs_reversed = true;
                original
            }
            Some(Err(e)) => {
                tracing::info!(rcpt = %address, error = %e, "SRS address refused");
                return reject_rcpt("srs", codes::unknown_user());
            }
        };
        let (status, dmarc_choice) = match self.shared.backend.recipient(&address, &self.sid).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "LookupRecipient failed");
                return reject_rcpt("store", codes::store_unavailable());
            }
        };
        match status {
            Recipient::Local => {}
            Recipient::NotLocal if self.auth.is_some() || srs_reversed => {}
            Recipient::NotLocal => {
                tracing::info!(rcpt = %address, "relay denied");
                return reject_rcpt("relay", codes::relay_denied());
            }
            Recipient::Unknown => return reject_rcpt("unknown_user", codes::unknown_user()),
            // Known full now: refused at RCPT, so nothing is queued that
            // delivery could only defer (a message larger than the space
            // left is still accepted here and handled by delivery).
            Recipient::Full => return reject_rcpt("mailbox_full", codes::mailbox_full()),
        }
        let repeated = matches!(&self.state, State::Mail(t) | State::Rcpt(t)
            if t.rcpts.iter().any(|r| r.address == address));
        if !repeated && let Err(reply) = self.spend(Unit::Recipient).await {
            return reject_rcpt("hourly_limit", reply);
        }
        let state = std::mem::replace(&mut self.state, State::Greeted);
        let (State::Mail(mut txn) | State::Rcpt(mut txn)) = state else {
            return codes::need_mail();
        };
        // The strictest DMARC choice among the recipients' domains decides
        // for the message (one reply at the end of DATA answers them all).
        if status == Recipient::Local
            && let Some(checker) = &self.shared.inbound
        {
            let action = checker.dmarc_reject_action(&dmarc_choice);
            txn.dmarc_reject = Some(txn.dmarc_reject.map_or(action, |a| a.strictest(action)));
        }
        // A repeated recipient is accepted once (one delivery).
        if !repeated {
            txn.rcpts.push(pb::Recipient {
                address,
                orcpt: params.orcpt.unwrap_or_default(),
                notify: params.notify,
            });
        }
        self.state = State::Rcpt(txn);
        codes::recipient_ok()
    }
}

fn reject_rcpt(reason: &'static str, reply: Reply) -> Reply {
    metrics::counter!("smtp_in_recipients_rejected_total", "reason" => reason).increment(1);
    reply
}
