//! MAIL FROM (RFC 5321 §4.1.1.2): opens a transaction; on submission the
//! sender must belong to the authenticated user.

use mail_wire::path::ReversePath;

use crate::cmd::hourly::Unit;
use crate::guard::{self, ip_key};
use crate::proto::command::MailParams;
use crate::proto::{Reply, codes};
use crate::session::{GreetPass, Session, State, Transaction};

impl Session {
    pub(crate) async fn mail(&mut self, from: ReversePath, params: MailParams) -> Reply {
        if params
            .size
            .is_some_and(|s| s > self.shared.limits.max_message_size)
        {
            // RFC 1870 §6.1.
            return codes::too_big();
        }
        // RFC 8689 §4.1: REQUIRETLS only over TLS (not offered otherwise).
        if params.requiretls && self.tls.is_none() {
            return codes::requiretls_needs_tls();
        }
        if let Some(user) = &self.auth {
            // Submission: the envelope sender must be one of the user's
            // addresses (CheckSender knows aliases).
            let ReversePath::Mailbox(m) = &from else {
                return codes::sender_not_owned();
            };
            match self
                .shared
                .backend
                .check_sender(user.id, &m.address(), &self.sid)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(user = %user.address, sender = %m.address(), "sender not owned");
                    return codes::sender_not_owned();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CheckSender failed");
                    return codes::store_unavailable();
                }
            }
        }
        if let Err(reply) = self.spend(Unit::Message).await {
            return reply;
        }
        if self.greet_pass == GreetPass::Due {
            self.mark_greet_pass();
        }
        self.transactions += 1;
        let key = format!(
            "smtp-in:{}:{}:{:016x}",
            self.sid,
            self.transactions,
            rand::random::<u64>()
        );
        tracing::info!(from = %display_reverse(&from), "MAIL");
        self.state = State::Mail(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            key,
            number: self.transactions,
            dmarc_reject: None,
        });
        codes::sender_ok()
    }
}

impl Session {
    /// The client waited for the greeting and then sent a good MAIL:
    /// every replica greets it at once for `--greet-pass-ttl-secs`. In the
    /// background, so MAIL's reply never waits for it.
    fn mark_greet_pass(&mut self) {
        self.greet_pass = GreetPass::Nothing;
        let shared = self.shared.clone();
        let key = ip_key(self.peer.ip());
        let sid = self.sid.clone();
        tokio::spawn(async move {
            let ttl = shared.limits.greet_pass_ttl;
            shared
                .guard
                .set_mark(guard::GREET_PASS, &key, ttl, &sid)
                .await;
        });
    }
}

fn display_reverse(p: &ReversePath) -> String {
    match p {
        ReversePath::Null => "<>".into(),
        ReversePath::Mailbox(m) => m.address(),
    }
}
