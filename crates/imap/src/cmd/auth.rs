//! Not Authenticated state commands: STARTTLS (RFC 9051 §6.2.1), LOGIN
//! (§6.2.3) and AUTHENTICATE PLAIN (§6.2.2, RFC 4616) with SASL-IR
//! (RFC 4959).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::model::AuthOutcome;
use crate::parser;
use crate::response::{Code, Status};
use crate::session::{Exit, Session, State, User};

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
                AuthOutcome::Throttled => {
                    tokio::time::sleep(self.cfg().auth_failure_delay).await;
                    Status::no("Too many failed logins, try again later").with(Code::Unavailable)
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
    /// delay (ATTACKS.md #16).
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

    /// AUTHENTICATE PLAIN (RFC 4616), with SASL-IR (RFC 4959).
    pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> std::io::Result<Status> {
        use base64::Engine as _;
        if mechanism != "PLAIN" {
            return Ok(Status::no("Unsupported mechanism").with(Code::Cannot));
        }
        if self.login_disabled() {
            return Ok(
                Status::no("Plaintext authentication disallowed without TLS")
                    .with(Code::PrivacyRequired),
            );
        }
        let response = if let Some(ir) = initial {
            if ir == b"=" {
                Vec::new()
            } else {
                match base64::engine::general_purpose::STANDARD.decode(&ir) {
                    Ok(v) => v,
                    Err(_) => return Ok(Status::bad("Invalid base64")),
                }
            }
        } else {
            io.write(b"+ \r\n");
            io.flush().await?;
            let Some(line) = read_line(io, 8192).await? else {
                return Ok(Status::bad("Response line too long"));
            };
            match parser::parse_sasl_response(&line) {
                Ok(Some(v)) => v,
                Ok(None) => return Ok(Status::bad("Authentication cancelled")),
                Err(_) => return Ok(Status::bad("Invalid base64")),
            }
        };
        let mut parts = response.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Status::bad("Malformed PLAIN response"));
        };
        if !authz.is_empty() && authz != authc {
            return Ok(self.auth_failed().await);
        }
        let st = self.check_password(authc, pass).await;
        Ok(st)
    }
}

/// Reads one line (for SASL responses) of at most `max` bytes.
async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(lf) = io.rbuf.iter().position(|&b| b == b'\n') {
            if lf > max {
                io.rbuf.drain(..=lf);
                return Ok(None);
            }
            return Ok(Some(io.rbuf.drain(..=lf).collect()));
        }
        if io.rbuf.len() > max {
            return Ok(None);
        }
        if io.fill().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
