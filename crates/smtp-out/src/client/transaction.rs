//! One mail transaction on an open connection (RFC 5321 §3.3): MAIL, RCPT,
//! DATA or BDAT, pipelined when the server offers PIPELINING (RFC 2920).

use super::envelope::{notify_param, orcpt_param, xtext};
use super::{ClientError, Connection, Envelope, RcptOutcome};
use mail_wire::dotstuff;

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Connection<S> {
    /// One mail transaction: MAIL, RCPT for each recipient, then DATA
    /// (dot-stuffed) or, when the server offers CHUNKING, one `BDAT n LAST`
    /// (RFC 3030: no dot-stuffing, the exact octets). The result has one
    /// outcome per recipient, in order. `message` is the stored message
    /// (any line endings); every line ending goes out as CRLF.
    ///
    /// Permanent refusals that are about this message and not the
    /// connection (SIZE, 8BITMIME, SMTPUTF8 missing) are returned as
    /// failures without talking to the server.
    ///
    /// # Errors
    /// An I/O, timeout or protocol error: the connection is unusable and
    /// every recipient's outcome is unknown (deferred).
    pub async fn send(
        &mut self,
        env: &Envelope,
        message: &[u8],
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let n = env.recipients.len();
        let all = |o: RcptOutcome| vec![o; n];
        let bdat = self.caps.chunking;
        // RFC 5321 §4.5.2: dot-stuffing, CRLF everywhere (DATA); CRLF only
        // (BDAT). The size declared and checked is the size on the wire.
        let payload = if bdat {
            dotstuff::normalise_crlf(message)
        } else {
            dotstuff::encode_all(message)
        };
        let size = if bdat {
            payload.len() as u64
        } else {
            payload.len().saturating_sub(3) as u64
        };
        // RFC 1870 §6: do not send what the server has said it will refuse.
        if let Some(limit) = self.caps.size
            && limit > 0
            && size > limit
        {
            return Ok(all(RcptOutcome::Failed(format!(
                "552 5.3.4 message size {size} exceeds the remote limit {limit}"
            ))));
        }
        let eight_bit = dotstuff::has_eight_bit(message);
        // RFC 6152 §3: no 8-bit data to a server without 8BITMIME; we do not
        // convert, so the message is returned.
        if eight_bit && !self.caps.eight_bit_mime {
            return Ok(all(RcptOutcome::Failed(
                "554 5.6.3 message has 8-bit content and the remote server lacks 8BITMIME".into(),
            )));
        }
        let non_ascii_envelope =
            !env.mail_from.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
        // RFC 6531 §3.2: an internationalised envelope needs SMTPUTF8.
        if non_ascii_envelope && !self.caps.smtputf8 {
            return Ok(all(RcptOutcome::Failed(
                "553 5.6.7 the envelope has an internationalised (UTF-8) address and the remote server does not offer SMTPUTF8 (RFC 6531 §3.2)".into(),
            )));
        }
        if self.dirty {
            self.write(b"RSET\r\n", "RSET").await?;
            let r = self.read_reply("RSET", self.timeouts.command).await?;
            if !r.is_positive() {
                return Err(ClientError::Refused {
                    stage: "RSET",
                    reply: r,
                });
            }
            self.dirty = false;
        }
        let mut mail = format!("MAIL FROM:<{}>", clean(&env.mail_from));
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if (env.smtputf8 || non_ascii_envelope) && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        // RFC 8689 §4.1 (never to a server that did not offer it).
        if env.requiretls && self.caps.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        // RFC 3461: the remote takes over DSN duties when it offers DSN.
        let dsn = env.dsn.as_ref().filter(|_| self.caps.dsn);
        if let Some(d) = dsn {
            let ret = d.ret.to_ascii_uppercase();
            if ret == "FULL" || ret == "HDRS" {
                mail.push_str(&format!(" RET={ret}"));
            }
            if !d.envid.is_empty() && d.envid.len() <= 100 {
                mail.push_str(&format!(" ENVID={}", xtext(&d.envid)));
            }
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut cmd = format!("RCPT TO:<{}>", clean(r));
                if let Some((notify, orcpt)) = dsn.and_then(|d| d.recipients.get(i)) {
                    if let Some(n) = notify_param(*notify) {
                        cmd.push_str(&format!(" NOTIFY={n}"));
                    }
                    if let Some(o) = orcpt_param(orcpt) {
                        cmd.push_str(&format!(" ORCPT={o}"));
                    }
                }
                cmd.push_str("\r\n");
                cmd
            })
            .collect();
        self.dirty = true;
        let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; n];
        let mut accepted = 0usize;
        // The reply to DATA when it was pipelined with MAIL and RCPT.
        let mut data_reply = None;
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL, the RCPTs and DATA in one group (BDAT
            // waits for the RCPT replies: no data for nobody).
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            if !bdat {
                batch.extend_from_slice(b"DATA\r\n");
            }
            self.write(&batch, "MAIL").await?;
            let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
            for o in &mut outcomes {
                let r = self.read_reply("RCPT", self.timeouts.command).await?;
                if r.is_positive() {
                    accepted += 1;
                } else {
                    *o = Some(RcptOutcome::from_reply(&r));
                }
            }
            if !bdat {
                let r = self.read_reply("DATA", self.timeouts.data_init).await?;
                // RFC 2920 §3.1: 354 although nothing was accepted: end
                // the empty data at once.
                if (!mail_reply.is_positive() || accepted == 0) && r.code == 354 {
                    self.write(b".\r\n", "data").await?;
                    let _ = self
                        .read_reply("end of data", self.timeouts.data_end)
                        .await?;
                }
                data_reply = Some(r);
            }
            if !mail_reply.is_positive() {
                return Ok(all(RcptOutcome::from_reply(&mail_reply)));
            }
        } else {
            self.write(mail.as_bytes(), "MAIL").await?;
            let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
            if !mail_reply.is_positive() {
                return Ok(all(RcptOutcome::from_reply(&mail_reply)));
            }
            for (o, cmd) in outcomes.iter_mut().zip(&rcpts) {
                self.write(cmd.as_bytes(), "RCPT").await?;
                let r = self.read_reply("RCPT", self.timeouts.command).await?;
                if r.is_positive() {
                    accepted += 1;
                } else {
                    *o = Some(RcptOutcome::from_reply(&r));
                }
            }
        }
        if accepted == 0 {
            return Ok(outcomes.into_iter().map(finalise).collect());
        }
        let end = if bdat {
            // RFC 3030 §2: BDAT <size> LAST, then exactly that many octets.
            self.write(
                format!("BDAT {} LAST\r\n", payload.len()).as_bytes(),
                "data",
            )
            .await?;
            for chunk in payload.chunks(64 * 1024) {
                self.write(chunk, "data").await?;
            }
            self.read_reply("end of data", self.timeouts.data_end)
                .await?
        } else {
            let r = match data_reply {
                Some(r) => r,
                None => {
                    self.write(b"DATA\r\n", "DATA").await?;
                    self.read_reply("DATA", self.timeouts.data_init).await?
                }
            };
            if r.code != 354 {
                // A 2xx to DATA is not a delivery: nothing was sent.
                let o = match r.class() {
                    5 => RcptOutcome::Failed(r.summary()),
                    _ => RcptOutcome::Deferred(r.summary()),
                };
                return Ok(outcomes
                    .into_iter()
                    .map(|x| x.unwrap_or_else(|| o.clone()))
                    .collect());
            }
            for chunk in payload.chunks(64 * 1024) {
                self.write(chunk, "data").await?;
            }
            self.read_reply("end of data", self.timeouts.data_end)
                .await?
        };
        self.dirty = false;
        self.transactions += 1;
        let o = RcptOutcome::from_reply(&end);
        Ok(outcomes
            .into_iter()
            .map(|x| x.unwrap_or_else(|| o.clone()))
            .collect())
    }
}

fn finalise(o: Option<RcptOutcome>) -> RcptOutcome {
    o.unwrap_or_else(|| RcptOutcome::Deferred("no reply".into()))
}

/// Addresses go into a command line: no CR, LF, `<`, `>` or controls.
fn clean(addr: &str) -> String {
    addr.chars()
        .filter(|c| !c.is_control() && *c != '<' && *c != '>')
        .collect()
}
