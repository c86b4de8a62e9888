//! RETR and TOP (RFC 1939 §5, §7): the message body streamed from the store
//! through the CRLF/dot-stuffing encoder.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::BodyEncoder;
use crate::proto::Reply;
use crate::session::{FLUSH_AT, Flow, Session, SessionError, State};

impl Session {
    /// RETR (`top` = None) and TOP: streams the body from the store.
    /// Errors before the first byte are `-ERR`; a failure after `+OK` closes
    /// the connection, so a truncated message never looks complete.
    pub(crate) async fn send_body<S>(
        &mut self,
        n: u32,
        top: Option<u32>,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Flow, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let i = match self.lookup(n) {
            Ok(i) => i,
            Err(r) => return Ok(self.reply(out, r)),
        };
        let (mailbox_id, uid, known) = match self.maildrop() {
            Some(d) => (d.mailbox_id, d.msgs[i].uid, d.msgs[i].size),
            None => return Ok(Flow::Continue),
        };
        let req = self.body_request(mailbox_id, uid);
        let mut mailboxes = self.shared.store.mailboxes.clone();
        let first = match mailboxes.fetch_body(req).await {
            Ok(s) => {
                let mut s = s.into_inner();
                s.message().await.map(|c| (s, c))
            }
            Err(e) => Err(e),
        };
        let (mut stream, first) = match first {
            Ok(x) => x,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(self.reply(out, Reply::err("Message no longer available")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch body");
                return Ok(Self::ok(out, &self.sys_temp()));
            }
        };
        let mut enc = match top {
            None => BodyEncoder::retr(),
            Some(lines) => BodyEncoder::top(lines),
        };
        match (top, known) {
            (None, Some(size)) => Reply::ok(format!("{size} octets")).encode(out),
            _ => Reply::ok("Message follows").encode(out),
        }
        let mut chunk = first;
        while let Some(c) = chunk {
            enc.feed(&c.data, out);
            if out.len() >= FLUSH_AT {
                self.flush(io, out).await?;
            }
            if enc.is_done() {
                break; // TOP has what it needs; dropping the stream cancels the RPC.
            }
            chunk = stream.message().await?;
        }
        enc.finish(out);
        self.flush(io, out).await?;
        metrics::counter!("pop3_sent_octets_total").increment(enc.octets());
        if top.is_none() {
            let size = enc.octets();
            if known.is_some_and(|k| k != size) {
                tracing::warn!(uid, "message changed size while being sent");
            }
            if let State::Transaction(drop) = &mut self.state
                && let Some(m) = drop.msgs.get_mut(i)
            {
                m.size = Some(size);
                self.shared.sizes.put(m.blob, size);
            }
        }
        Ok(Flow::Continue)
    }
}
