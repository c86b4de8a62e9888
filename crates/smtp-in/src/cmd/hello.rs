//! EHLO and HELO (RFC 5321 §4.1.1.1): start (or restart) the session and
//! list our extensions.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{Conn, ConnError};
use crate::proto::Reply;
use crate::session::{Flow, Session, State};

impl Session {
    /// EHLO: the extension list; resets any transaction.
    pub(crate) async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        domain: String,
    ) -> Result<Flow, ConnError> {
        self.state = State::Greeted;
        let reply = self.ehlo_reply(&domain);
        self.helo = Some((domain, true));
        self.reply(conn, reply).await
    }

    /// HELO: plain SMTP, one line.
    pub(crate) async fn helo<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        domain: String,
    ) -> Result<Flow, ConnError> {
        self.state = State::Greeted;
        self.helo = Some((domain, false));
        let hostname = self.shared.hostname.clone();
        self.reply(conn, Reply::new(250, None, hostname)).await
    }

    /// RFC 5321 §4.1.1.1 EHLO response with our extensions.
    pub(crate) fn ehlo_reply(&self, domain: &str) -> Reply {
        let limits = &self.shared.limits;
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            format!(
                "{} Hello {} [{}]",
                self.shared.hostname,
                domain,
                self.peer.ip()
            )
            .into(),
            "PIPELINING".into(),
            format!("SIZE {}", limits.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        if self.tls_offered() {
            lines.push("STARTTLS".into());
        }
        // RFC 8689 §4: REQUIRETLS only on a TLS session.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        // RFC 4954 §4 / threat model T11–T12: never advertised before TLS
        // (unless explicitly allowed for testing), never on MX.
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::multi(250, None, lines)
    }
}
