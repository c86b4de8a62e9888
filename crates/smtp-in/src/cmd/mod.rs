//! Command handlers, one module per command family, and the one place
//! that decides whether a command is allowed in the current state
//! (RFC 5321 §4.1.4, RFC 3030 §3, RFC 3207 §4, RFC 4954 §4).

pub(crate) mod auth;
pub(crate) mod basic;
pub(crate) mod data;
pub(crate) mod hello;
pub(crate) mod hourly;
pub(crate) mod mail;
pub(crate) mod rcpt;
pub(crate) mod screen;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{Conn, ConnError};
use crate::proto::command::Command;
use crate::proto::{Reply, codes};
use crate::session::{Flow, ListenerKind, Session, State};

impl Session {
    /// The one place that says whether a command is allowed now
    /// (RFC 5321 §4.1.4, RFC 3030 §3, RFC 3207 §4, RFC 4954 §4).
    pub(crate) fn allowed(&self, cmd: &Command) -> Result<(), Reply> {
        let chunking = matches!(self.state, State::Chunking(_));
        let greeted = self.helo.is_some();
        match cmd {
            Command::Rset | Command::Noop | Command::Quit => Ok(()),
            Command::Data if chunking => Err(codes::data_after_bdat()),
            Command::Bdat { .. } if chunking => Ok(()),
            _ if chunking => Err(codes::bad_sequence()),
            Command::Ehlo(_) | Command::Helo(_) | Command::Vrfy | Command::Expn | Command::Help => {
                Ok(())
            }
            Command::StartTls => {
                if !self.tls_offered() {
                    Err(codes::tls_not_available())
                } else if self.in_transaction() {
                    Err(codes::bad_sequence())
                } else {
                    Ok(())
                }
            }
            Command::Auth { .. } => {
                if self.kind == ListenerKind::Mx {
                    Err(codes::not_implemented())
                } else if !self.auth_offered() {
                    Err(codes::tls_required())
                } else if !greeted {
                    Err(codes::need_helo())
                } else if self.auth.is_some() {
                    Err(codes::already_authenticated())
                } else if self.in_transaction() {
                    Err(codes::bad_sequence())
                } else {
                    Ok(())
                }
            }
            Command::Mail { .. } => {
                if !greeted {
                    Err(codes::need_helo())
                } else if self.in_transaction() {
                    Err(codes::nested_mail())
                } else if self.kind != ListenerKind::Mx && self.auth.is_none() {
                    // RFC 6409 §4.3: submission requires authentication.
                    Err(codes::auth_required())
                } else {
                    Ok(())
                }
            }
            Command::Rcpt { .. } => match self.state {
                State::Mail(_) | State::Rcpt(_) => Ok(()),
                _ if !greeted => Err(codes::need_helo()),
                _ => Err(codes::need_mail()),
            },
            Command::Data | Command::Bdat { .. } => match self.state {
                State::Rcpt(_) => Ok(()),
                State::Mail(_) => Err(codes::need_rcpt()),
                _ if !greeted => Err(codes::need_helo()),
                _ => Err(codes::need_mail()),
            },
        }
    }

    /// Checks [`Session::allowed`], then runs the command's handler.
    pub(crate) async fn dispatch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        cmd: Command,
    ) -> Result<Flow, ConnError> {
        if let Err(reply) = self.allowed(&cmd) {
            if let Command::Bdat { size, .. } = cmd {
                // RFC 3030 §2: the chunk follows the command whatever the
                // answer; read past it before answering, on the data
                // phase's clock.
                self.begin_data_phase(conn);
                data::skip(conn, size, self.shared.limits.data_timeout).await?;
            }
            return self.reply(conn, reply).await;
        }
        match cmd {
            Command::Ehlo(domain) => self.ehlo(conn, domain).await,
            Command::Helo(domain) => self.helo(conn, domain).await,
            Command::Mail { from, params } => {
                let reply = self.mail(from, params).await;
                self.reply(conn, reply).await
            }
            Command::Rcpt { path, params } => {
                let reply = self.rcpt(&path, params).await;
                self.reply(conn, reply).await
            }
            Command::Data => self.data(conn).await,
            Command::Bdat { size, last } => self.bdat(conn, size, last).await,
            Command::Rset => self.rset(conn).await,
            Command::Noop => self.reply(conn, codes::ok()).await,
            Command::Vrfy => self.reply(conn, codes::vrfy()).await,
            Command::Expn => self.reply(conn, codes::not_implemented()).await,
            Command::Help => self.reply(conn, codes::help()).await,
            Command::Quit => self.quit(conn).await,
            Command::StartTls => self.starttls(conn).await,
            Command::Auth { mechanism, initial } => {
                let reply = self.auth(conn, &mechanism, initial).await?;
                self.reply(conn, reply).await
            }
        }
    }
}
