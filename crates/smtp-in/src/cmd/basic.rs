//! The commands without a transaction of their own: RSET (RFC 5321
//! §4.1.1.5), QUIT (§4.1.1.10) and STARTTLS (RFC 3207 §4). NOOP, VRFY,
//! EXPN and HELP are one fixed reply each, answered in the dispatcher.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{Conn, ConnError};
use crate::proto::codes;
use crate::session::{Exit, Flow, Session, State};

impl Session {
    /// RSET: drops the transaction, keeps the greeting.
    pub(crate) async fn rset<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        if self.helo.is_some() {
            self.state = State::Greeted;
        }
        self.reply(conn, codes::reset_ok()).await
    }

    /// QUIT: 221 and close.
    pub(crate) async fn quit<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        conn.send(&codes::bye());
        conn.close().await;
        Ok(Flow::Exit(Exit::Quit))
    }

    /// STARTTLS: 220, then the caller starts TLS on the raw stream.
    pub(crate) async fn starttls<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        conn.send(&codes::ready_tls());
        conn.flush().await?;
        Ok(Flow::Exit(Exit::StartTls))
    }
}
