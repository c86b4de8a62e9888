//! Not Authenticated state commands: STARTTLS (RFC 9051 §6.2.1), LOGIN
//! (§6.2.3) and AUTHENTICATE PLAIN (§6.2.2, RFC 4616) with SASL-IR
//! (RFC 4959).

use mail_wire::sasl::{SaslError, plain};
use service_kit::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Outcome;
use crate::io::Io;
use crate::model::AuthOutcome;
use crate::response::{Code, Status};
use crate::session::{Exit, Input, Session, State, User};

impl Session {
    /// STARTTLS (RFC 9051 §6.2.1): `Ok(exit)` once the tagged OK is out,
    /// `Err(status)` when TLS is not on offer.
    pub(super) async fn starttls<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
    ) -> std::io::Result<Result<Exit, Status>> {
        if self.tls || !self.cfg().tls_available {
            return Ok(Err(Status::bad("STARTTLS not available")));
        }
        io.write(&Status::ok("Begin TLS negotiation now").encode(Some(tag)));
        io.flush().await?;
        // RFC 9051 §6.2.1: discard anything pipelined after STARTTLS.
        io.discard_input();
        Ok(Ok(Exit::StartTls))
    }

    async fn check_password(&mut self, username: &[u8], password: &[u8]) -> Status {
        if self.login_disabled() {
            return Status::no("Plaintext authentication disallowed without TLS")
                .with(Code::PrivacyRequired);
        }
        let (Ok(username), Ok(password)) =
            (std::str::from_utf8(username), std::str::from_utf8(password))
        else {
            return self.auth_failed().await;
        };
        let outcome = self
            .store()
            .authenticate(username, password, self.peer, &self.sid)
            .await;
        match outcome {
            Ok(r) => match r {
                AuthOutcome::Ok { user_id, address } => {
                    let Some(slot) = self
                        .shared
                        .users
                        .admit(user_id, self.cfg().max_sessions_per_user)
                    else {
                        return Status::no("Too many sessions for this user").with(Code::Limit);
                    };
                    self.user_slot = Some(slot);
                    tracing::info!(user = %address, "authenticated");
                    metrics::counter!("imap_logins_total", "result" => "ok").increment(1);
                    self.state = State::Authenticated {
                        user: User {
                            id: user_id,
                            address,
                        },
                    };
                    Status::ok("Logged in").with(Code::Capability(self.capabilities()))
                }
                // RFC 5530 §3 UNAVAILABLE for both store refusals. The
                // delay is this connection's; the limit that holds across
                // parallel connections and replicas is the store's, which
                // sees every attempt with the client's address.
                AuthOutcome::Throttled => {
                    // Counted: a throttled client is disconnected after
                    // max_auth_failures like a guessing one.
                    self.auth_failures += 1;
                    metrics::counter!("imap_logins_total", "result" => "throttled").increment(1);
                    tokio::time::sleep(self.cfg().auth_failure_delay).await;
                    Status::no("Too many failed logins, try again later").with(Code::Unavailable)
                }
                AuthOutcome::Unavailable => {
                    metrics::counter!("imap_logins_total", "result" => "unavailable").increment(1);
                    tokio::time::sleep(self.cfg().auth_failure_delay).await;
                    Status::no("Server busy, try again later").with(Code::Unavailable)
                }
                AuthOutcome::Failed => self.auth_failed().await,
            },
            Err(e) => {
                tracing::warn!(error = %e, "authenticate call failed");
                Status::no("Temporary failure, try again").with(Code::Unavailable)
            }
        }
    }

    /// Wrong password and unknown user answer identically after the same
    /// delay (threat model T16).
    async fn auth_failed(&mut self) -> Status {
        self.auth_failures += 1;
        metrics::counter!("imap_logins_total", "result" => "failed").increment(1);
        tokio::time::sleep(self.cfg().auth_failure_delay).await;
        Status::no("Authentication failed").with(Code::AuthenticationFailed)
    }

    /// LOGIN (RFC 9051 §6.2.3).
    pub(super) async fn login(&mut self, user: &[u8], pass: &[u8]) -> Status {
        self.check_password(user, pass).await
    }

    /// AUTHENTICATE PLAIN (RFC 4616), with SASL-IR (RFC 4959). The
    /// continuation line is awaited under the pre-authentication time-out
    /// and byte budget; running out of either ends the session.
    pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        mechanism: &str,
        initial: Option<Vec<u8>>,
        shutdown: &Shutdown,
    ) -> std::io::Result<Outcome> {
        if mechanism != "PLAIN" {
            return Ok(Outcome::Reply(
                Status::no("Unsupported mechanism").with(Code::Cannot),
            ));
        }
        if self.login_disabled() {
            return Ok(Outcome::Reply(
                Status::no("Plaintext authentication disallowed without TLS")
                    .with(Code::PrivacyRequired),
            ));
        }
        let response = match initial {
            Some(ir) => ir,
            None => {
                io.write(b"+ \r\n");
                io.flush().await?;
                match self.read_sasl_line(io, shutdown).await? {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        return Ok(Outcome::Reply(Status::bad("Response line too long")));
                    }
                    Err(why) => return Ok(Outcome::Done(Some(self.farewell(io, &why).await?))),
                }
            }
        };
        let plain = match plain::decode(&response) {
            Ok(p) => p,
            Err(e) => return Ok(Outcome::Reply(sasl_refusal(e))),
        };
        // RFC 4616 §2: acting as another user is not offered; answered as
        // a failed login.
        if plain.check_authzid().is_err() {
            return Ok(Outcome::Reply(self.auth_failed().await));
        }
        let st = self
            .check_password(plain.authcid.as_bytes(), plain.password.as_bytes())
            .await;
        Ok(Outcome::Reply(st))
    }

    /// Reads one SASL response line (RFC 9051 §6.2.2) of at most
    /// [`MAX_SASL_LINE`] bytes: `Ok(None)` when it was longer (the line is
    /// skipped), `Err` when the wait ended the session.
    async fn read_sasl_line<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        shutdown: &Shutdown,
    ) -> std::io::Result<Result<Option<Vec<u8>>, Input>> {
        let mut too_long = false;
        loop {
            if let Some(lf) = io.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = io.rbuf.drain(..=lf).collect();
                return Ok(Ok((!too_long && lf <= MAX_SASL_LINE).then_some(line)));
            }
            if io.rbuf.len() > MAX_SASL_LINE {
                io.rbuf.clear();
                too_long = true;
            }
            match self.read_input(io, shutdown).await? {
                Input::Data => {}
                other => return Ok(Err(other)),
            }
        }
    }
}

/// Longest SASL response line read after `+`.
const MAX_SASL_LINE: usize = 8192;

/// The tagged reply to a PLAIN response that cannot be used.
fn sasl_refusal(e: SaslError) -> Status {
    match e {
        SaslError::Cancelled => Status::bad("Authentication cancelled"),
        SaslError::Decode => Status::bad("Invalid base64"),
        SaslError::Malformed | SaslError::AuthzMismatch => Status::bad("Malformed PLAIN response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from the parser's `sasl_response` test with the decoding it
    /// covered (now `mail_wire::sasl`).
    #[test]
    fn sasl_response() {
        assert_eq!(plain::decode(b"*\r\n"), Err(SaslError::Cancelled));
        let p = plain::decode(b"AGJvYgBwdw==\r\n").expect("valid");
        assert_eq!((p.authcid.as_str(), p.password.as_str()), ("bob", "pw"));
        assert_eq!(plain::decode(b"!!\r\n"), Err(SaslError::Decode));
        let bad = |e| String::from_utf8_lossy(&sasl_refusal(e).encode(Some("a"))).into_owned();
        assert_eq!(
            bad(SaslError::Cancelled),
            "a BAD Authentication cancelled\r\n"
        );
        assert_eq!(bad(SaslError::Decode), "a BAD Invalid base64\r\n");
        assert_eq!(
            bad(SaslError::Malformed),
            "a BAD Malformed PLAIN response\r\n"
        );
    }
}
