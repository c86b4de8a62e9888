//! AUTH (RFC 4954): PLAIN and LOGIN, messages decoded by `mail-wire`, the
//! credentials checked by the store.

use mail_wire::sasl::{self, SaslError};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{Conn, ConnError, Line};
use crate::proto::command::MAX_AUTH_LINE;
use crate::proto::{Reply, codes};
use crate::session::{AuthUser, Session};
use crate::store::AuthOutcome;

impl Session {
    /// RFC 4954 AUTH PLAIN / LOGIN; the store checks the credentials.
    pub(crate) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: &str,
        initial: Option<String>,
    ) -> Result<Reply, ConnError> {
        let creds = match mechanism {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => match self.challenge(conn, "").await? {
                        Ok(r) => r,
                        Err(reply) => return Ok(reply),
                    },
                };
                sasl::plain::decode_credentials(&response)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => Ok(r),
                    None => {
                        self.challenge(conn, sasl::login::USERNAME_CHALLENGE)
                            .await?
                    }
                };
                let user = match user {
                    Ok(u) => u,
                    Err(reply) => return Ok(reply),
                };
                match sasl::login::decode_username(&user) {
                    Err(e) => Err(e),
                    Ok(username) => match self
                        .challenge(conn, sasl::login::PASSWORD_CHALLENGE)
                        .await?
                    {
                        Err(reply) => return Ok(reply),
                        Ok(p) => sasl::login::decode_password(username, &p),
                    },
                }
            }
            _ => return Ok(codes::unknown_mechanism()),
        };
        let creds = match creds {
            Ok(c) => c,
            Err(SaslError::Cancelled) => return Ok(codes::auth_cancelled()),
            Err(SaslError::AuthzMismatch) => {
                metrics::counter!("smtp_in_auth_total", "result" => "authz_mismatch").increment(1);
                return Ok(codes::auth_failed());
            }
            Err(SaslError::Decode | SaslError::Malformed) => return Ok(codes::bad_base64()),
        };
        let ip = self.peer.ip().to_string();
        match self
            .shared
            .backend
            .authenticate(&creds.username, &creds.password, &ip, &self.sid)
            .await
        {
            Ok(AuthOutcome::Ok { user_id, address }) => {
                metrics::counter!("smtp_in_auth_total", "result" => "ok").increment(1);
                tracing::info!(user = %address, "authenticated");
                self.auth = Some(AuthUser {
                    id: user_id,
                    address,
                });
                Ok(codes::auth_ok())
            }
            Ok(AuthOutcome::Failed) => {
                metrics::counter!("smtp_in_auth_total", "result" => "failed").increment(1);
                tracing::info!(user = %creds.username, "authentication failed");
                Ok(codes::auth_failed())
            }
            Ok(AuthOutcome::Throttled) => {
                metrics::counter!("smtp_in_auth_total", "result" => "throttled").increment(1);
                Ok(codes::auth_throttled())
            }
            Err(e) => {
                tracing::warn!(error = %e, "Authenticate failed");
                Ok(codes::auth_temp_fail())
            }
        }
    }

    /// Sends a 334 challenge and reads the response line (RFC 4954 §4).
    pub(crate) async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        text: &'static str,
    ) -> Result<Result<String, Reply>, ConnError> {
        conn.send(&Reply::new(334, None, text));
        match conn
            .read_line(MAX_AUTH_LINE, self.shared.limits.command_timeout)
            .await?
        {
            Line::Ok(bytes) => Ok(String::from_utf8(bytes).map_err(|_| codes::bad_base64())),
            // threat model T18: an endless response is discarded (bounded) and
            // answered like any undecodable one.
            Line::TooLong | Line::BareLf => Ok(Err(codes::bad_base64())),
        }
    }
}
