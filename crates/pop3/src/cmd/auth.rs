//! AUTHORIZATION-state commands: USER and PASS (RFC 1939 §7), AUTH with
//! SASL PLAIN (RFC 5034, RFC 4616) and STLS (RFC 2595 §4); a successful
//! login locks the maildrop and enters TRANSACTION (RFC 1939 §4, §8).

use std::time::Duration;

use mail_wire::sasl::{SaslError, plain};
use mailstore_api::pb;

use crate::lock::{LockGuard, acquire_lock};
use crate::proto::{Reply, RespCode};
use crate::session::{Flow, Maildrop, Msg, Session, State};
use crate::sizes::blob_key;

impl Session {
    pub(crate) fn plaintext_refused(&mut self, out: &mut Vec<u8>) -> Flow {
        // RFC 2595 §2.1 / threat model T11: no cleartext passwords before TLS.
        self.reply(
            out,
            Reply::err_code(
                RespCode::Auth,
                "Plaintext authentication disallowed on non-secure connections, use STLS",
            ),
        )
    }

    pub(crate) fn user(&mut self, name: String, out: &mut Vec<u8>) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        // Never reveals whether the user exists.
        self.state = State::Authorization { user: Some(name) };
        Self::ok(out, &Reply::ok("Send PASS"))
    }

    pub(crate) async fn pass(&mut self, password: String, out: &mut Vec<u8>) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            _ => None,
        };
        let Some(user) = user else {
            return self.reply(out, Reply::err("Send USER first"));
        };
        self.login(user, password, out).await
    }

    pub(crate) async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<String>,
        out: &mut Vec<u8>,
    ) -> Flow {
        if !self.auth_allowed() {
            return self.plaintext_refused(out);
        }
        self.state = State::Authorization { user: None };
        match mechanism.as_deref() {
            None => Self::ok(
                out,
                &Reply::multi("SASL mechanisms follow", vec!["PLAIN".into()]),
            ),
            Some("PLAIN") => match initial {
                Some(ir) => self.sasl_plain(ir.as_bytes(), out).await,
                None => {
                    Reply::Continue(String::new()).encode(out);
                    Flow::AwaitSasl
                }
            },
            Some(_) => self.reply(out, Reply::err("Unsupported SASL mechanism")),
        }
    }

    pub(crate) async fn sasl_response(&mut self, line: &[u8], out: &mut Vec<u8>) -> Flow {
        self.sasl_plain(line, out).await
    }

    /// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64 (RFC 5034 §4:
    /// "*" cancels, "=" is an empty initial response), decoded by
    /// `mail_wire::sasl`.
    pub(crate) async fn sasl_plain(&mut self, b64: &[u8], out: &mut Vec<u8>) -> Flow {
        let plain = match plain::decode(b64) {
            Ok(p) => p,
            Err(SaslError::Cancelled) => {
                return self.reply(out, Reply::err("Authentication cancelled"));
            }
            Err(SaslError::Decode) => return self.reply(out, Reply::err("Invalid base64")),
            Err(SaslError::Malformed | SaslError::AuthzMismatch) => {
                return self.reply(out, Reply::err("Invalid PLAIN response"));
            }
        };
        // Threat model T18: acting as someone else is not offered.
        if plain.check_authzid().is_err() {
            return self.reply(
                out,
                Reply::err_code(RespCode::Auth, "Authorization identity not permitted"),
            );
        }
        self.login(plain.authcid, plain.password, out).await
    }

    pub(crate) async fn login(
        &mut self,
        username: String,
        password: String,
        out: &mut Vec<u8>,
    ) -> Flow {
        let req = self.req(
            pb::AuthenticateRequest {
                username,
                password,
                protocol: pb::Protocol::Pop3 as i32,
                remote_ip: self.peer.to_string(),
                session_id: self.sid.clone(),
            },
            true,
        );
        let resp = match self.shared.store.accounts.clone().authenticate(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "authenticate: store unavailable");
                metrics::counter!("pop3_logins_total", "result" => "error").increment(1);
                return Self::ok(out, &self.sys_temp());
            }
        };
        match resp.status() {
            pb::AuthStatus::Ok => {
                metrics::counter!("pop3_logins_total", "result" => "ok").increment(1);
                tracing::info!(user_id = resp.user_id, "authenticated");
                self.open_maildrop(resp.user_id, out).await
            }
            // RFC 3206 §4 SYS/TEMP for both store refusals; the limit that
            // holds across connections and replicas is the store's.
            pb::AuthStatus::Throttled => {
                metrics::counter!("pop3_logins_total", "result" => "throttled").increment(1);
                tokio::time::sleep(self.cfg().auth_failure_delay).await;
                self.reply(
                    out,
                    Reply::err_code(RespCode::SysTemp, "Too many failed logins, try again later"),
                )
            }
            pb::AuthStatus::Unavailable => {
                metrics::counter!("pop3_logins_total", "result" => "unavailable").increment(1);
                tokio::time::sleep(self.cfg().auth_failure_delay).await;
                self.reply(
                    out,
                    Reply::err_code(RespCode::SysTemp, "Server busy, try again later"),
                )
            }
            pb::AuthStatus::Failed | pb::AuthStatus::Unspecified => {
                metrics::counter!("pop3_logins_total", "result" => "failed").increment(1);
                tracing::info!("authentication failed");
                // Same bytes, same delay, for a wrong password and an unknown user.
                tokio::time::sleep(self.cfg().auth_failure_delay).await;
                self.reply(
                    out,
                    Reply::err_code(RespCode::Auth, "Authentication failed"),
                )
            }
        }
    }

    /// Locks and lists the maildrop; enters TRANSACTION on success.
    pub(crate) async fn open_maildrop(&mut self, user_id: u64, out: &mut Vec<u8>) -> Flow {
        let store = self.shared.store.clone();
        let name = format!("pop3:{user_id}");
        let ttl = self.cfg().lock_ttl;
        let mut got = acquire_lock(&store, &name, &self.sid, ttl).await;
        if matches!(got, Ok(false))
            && let Some((wait, released)) = self.shared.locks.holder(&name)
        {
            // A session of this process holds it; when it is ending (its
            // client dropped the connection and came back at once), wait
            // for its release.
            let _ = tokio::time::timeout(wait, released.cancelled()).await;
            got = acquire_lock(&store, &name, &self.sid, ttl).await;
        }
        match got {
            Ok(true) => {}
            Ok(false) => {
                // RFC 2449 §8.1.2.
                return Self::ok(
                    out,
                    &Reply::err_code(RespCode::InUse, "Maildrop is locked by another session"),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "acquire maildrop lock");
                return Self::ok(out, &self.sys_temp());
            }
        }
        let lock = LockGuard::start(
            store.clone(),
            &self.shared.locks,
            name,
            self.sid.clone(),
            ttl,
        );
        if let Some(delay) = self.cfg().login_delay {
            // RFC 2449 §6.5: one login per user per LOGIN-DELAY seconds,
            // across every replica: a lock nobody releases, expiring after the delay.
            let key = format!("pop3-login-delay:{user_id}");
            match acquire_lock(
                &store,
                &key,
                &self.sid,
                Duration::from_secs(u64::from(delay)),
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lock.release().await;
                    return Self::ok(
                        out,
                        &Reply::err_code(
                            RespCode::LoginDelay,
                            "Minimum time between logins not reached",
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "login-delay lock");
                    lock.release().await;
                    return Self::ok(out, &self.sys_temp());
                }
            }
        }
        match self.list_inbox(user_id).await {
            Ok((mailbox_id, uidvalidity, msgs)) => {
                let n = msgs.len();
                self.state = State::Transaction(Box::new(Maildrop {
                    mailbox_id,
                    uidvalidity,
                    msgs,
                    lock,
                }));
                Self::ok(
                    out,
                    &Reply::ok(format!("Maildrop locked and ready, {n} messages")),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening maildrop");
                lock.release().await;
                let reply = if e.code() == tonic::Code::NotFound {
                    Reply::err_code(
                        RespCode::SysPerm,
                        format!("No maildrop (session {})", self.sid),
                    )
                } else {
                    self.sys_temp()
                };
                Self::ok(out, &reply)
            }
        }
    }

    pub(crate) async fn list_inbox(
        &self,
        user_id: u64,
    ) -> Result<(u64, u32, Vec<Msg>), tonic::Status> {
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let mailbox = mailboxes
            .get_mailbox(self.req(
                pb::GetMailboxRequest {
                    user_id,
                    name: "INBOX".into(),
                    claim_recent: false,
                },
                true,
            ))
            .await?
            .into_inner();
        let mut stream = mailboxes
            .fetch_meta(self.req(
                pb::FetchMetaRequest {
                    mailbox_id: mailbox.id,
                    uids: None,
                    changed_since: 0,
                    with_structure: false,
                },
                true,
            ))
            .await?
            .into_inner();
        let mut msgs = Vec::new();
        'outer: while let Some(batch) = stream.message().await? {
            for m in batch.messages {
                if msgs.len() >= self.cfg().max_messages {
                    break 'outer;
                }
                let blob = blob_key(&m.blob_id);
                // Precomputed by the store when the message arrived; older
                // rows (0) are counted once and cached.
                let size = if m.crlf_size > 0 {
                    Some(m.crlf_size)
                } else {
                    self.shared.sizes.get(blob)
                };
                msgs.push(Msg {
                    uid: m.uid,
                    raw_size: m.size,
                    blob,
                    size,
                    deleted: false,
                });
            }
        }
        // RFC 1939 §5: message numbers follow the maildrop's order; UIDs ascend.
        msgs.sort_by_key(|m| m.uid);
        Ok((mailbox.id, mailbox.uidvalidity, msgs))
    }

    pub(crate) fn stls(&mut self, out: &mut Vec<u8>) -> Flow {
        if self.tls {
            return self.reply(out, Reply::err("Already using TLS"));
        }
        if !self.cfg().stls_available {
            return self.reply(out, Reply::err("STLS not available"));
        }
        Self::ok(out, &Reply::ok("Begin TLS negotiation now"));
        Flow::StartTls
    }
}
