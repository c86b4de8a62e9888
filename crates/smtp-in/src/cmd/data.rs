//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): message content through
//! the `mail-wire` decoder into a memory spool, then one `Queue.Enqueue`.

use std::collections::HashMap;
use std::time::Duration;

use mail_wire::body::{BodyDecoder, Defect, Mode};
use mail_wire::path::ReversePath;
use mail_wire::reply::EnhancedStatus;
use mailstore_api::pb;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument as _;

use crate::io::{Conn, ConnError};
use crate::proto::command::MailParams;
use crate::proto::{Reply, codes};
use crate::received::Stamp;
use crate::session::{Chunking, Exit, Flow, Limits, Session, State, Transaction};
use crate::spool::{GRAIN, Spool};

/// Spool budget below which DATA is refused at once (`452 4.3.1`) instead
/// of reading a message that could not be held.
const MIN_FREE_KIB: usize = GRAIN / 1024;

impl Session {
    /// RFC 5321 §4.1.1.4 DATA: 354, then content up to `<CRLF>.<CRLF>`.
    pub(crate) async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        if self.shared.spool.available_permits() < MIN_FREE_KIB {
            // RFC 3463 X.3.1 "mail system full", before 354: the client
            // keeps its message and retries later (RFC 5321 §4.2.1, a 4yz
            // reply), the transaction stays open.
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => "spool_full")
                .increment(1);
            tracing::info!("spool budget exhausted at DATA");
            return self.reply(conn, codes::insufficient_storage()).await;
        }
        let State::Rcpt(txn) = std::mem::replace(&mut self.state, State::Greeted) else {
            return self.reply(conn, codes::need_rcpt()).await;
        };
        conn.send(&codes::start_data());
        self.begin_data_phase(conn);
        let limit = message_limit(&self.shared.limits, &txn.params);
        let mut decoder = BodyDecoder::new(Mode::Data, limit);
        let mut spool = Spool::new(self.shared.spool.clone(), limit);
        let timeout = self.shared.limits.data_timeout;
        let shutdown = self.shutdown.clone();
        loop {
            // A shutdown mid-DATA ends the transaction with 421 (RFC 5321
            // §3.8): nothing of the message is kept, the sender retries.
            let buf = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    conn.send(&self.decorate(codes::shutting_down()));
                    conn.close().await;
                    return Ok(Flow::Exit(Exit::Closed));
                }
                buf = conn.peek_some(timeout) => buf?,
            };
            // Decoding never yields more bytes than it reads.
            make_room(&mut decoder, &mut spool, buf.len());
            let (n, end) = decoder.feed(buf, &mut spool.buf);
            conn.consume(n);
            if end {
                break;
            }
        }
        conn.end_phase();
        let reply = self.finish(txn, &decoder, spool, "DATA").await;
        self.reply(conn, reply).await
    }

    /// RFC 3030 BDAT: exactly `size` octets follow the command line.
    pub(crate) async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        size: u64,
        last: bool,
    ) -> Result<Flow, ConnError> {
        self.begin_data_phase(conn);
        let mut chunking = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Chunking(c) => c,
            State::Rcpt(txn) => {
                let limit = message_limit(&self.shared.limits, &txn.params);
                Box::new(Chunking {
                    decoder: BodyDecoder::new(Mode::Bdat, limit),
                    txn,
                    spool: Spool::new(self.shared.spool.clone(), limit),
                })
            }
            other => {
                self.state = other;
                skip(conn, size, self.shared.limits.data_timeout).await?;
                return self.reply(conn, codes::need_rcpt()).await;
            }
        };
        if size > self.shared.limits.max_message_size {
            // A chunk larger than any message we accept: reading (and
            // discarding) it could take gigabytes, and without reading it the
            // stream cannot be resynchronised. Refuse and close.
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => "too_big")
                .increment(1);
            conn.send(&self.decorate(codes::too_big()));
            conn.close().await;
            return Ok(Flow::Exit(Exit::Closed));
        }
        let limit = message_limit(&self.shared.limits, &chunking.txn.params);
        let Chunking { decoder, spool, .. } = &mut *chunking;
        if decoder.size().saturating_add(size) > limit {
            decoder.fail(Defect::TooBig);
            spool.clear();
        }
        let timeout = self.shared.limits.data_timeout;
        let mut remaining = size;
        // A refused chunk (too big, over budget, bad line ending) is read
        // and dropped as it streams: nothing is kept once a defect is known.
        while remaining > 0 {
            let buf = conn.peek_some(timeout).await?;
            let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            make_room(decoder, spool, take);
            if decoder.defect().is_none() {
                decoder.feed(&buf[..take], &mut spool.buf);
            }
            conn.consume(take);
            remaining -= take as u64;
        }
        if let Some(defect) = decoder.defect() {
            // RFC 3030 §2: an error reply to a chunk fails the transaction.
            let reply = defect_reply(defect);
            return self.reply(conn, reply).await;
        }
        if !last {
            self.state = State::Chunking(chunking);
            return self
                .reply(
                    conn,
                    Reply::new(
                        250,
                        Some(EnhancedStatus::SUCCESS),
                        format!("{size} octets received"),
                    ),
                )
                .await;
        }
        let Chunking {
            txn,
            mut decoder,
            spool,
        } = *chunking;
        decoder.finish();
        conn.end_phase();
        let reply = self.finish(txn, &decoder, spool, "BDAT").await;
        self.reply(conn, reply).await
    }

    /// End of content: refuse by policy, or enqueue and answer only after
    /// the store has committed (RFC 5321 §6.1: once 250 is sent, the message
    /// is our responsibility).
    pub(crate) async fn finish(
        &mut self,
        txn: Transaction,
        decoder: &BodyDecoder,
        mut spool: Spool,
        how: &'static str,
    ) -> Reply {
        if let Some(defect) = decoder.defect() {
            let reason = defect_reason(defect);
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => reason).increment(1);
            tracing::info!(reason, size = decoder.size(), how, "message refused");
            return defect_reply(defect);
        }
        let added = match self.screen(&txn, &mut spool.buf).await {
            Ok(added) => added,
            Err(reply) => return reply,
        };
        let date = chrono::Utc::now().to_rfc2822();
        let id = format!("{}.{}", self.sid, txn.number);
        let single = (txn.rcpts.len() == 1).then(|| txn.rcpts[0].address.as_str());
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let stamp = Stamp {
            helo: &helo,
            ip: self.peer.ip(),
            by: &self.shared.hostname,
            esmtp,
            utf8: txn.params.smtputf8,
            tls: self
                .tls
                .as_ref()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            authenticated: self.auth.is_some(),
            id: &id,
            for_rcpt: single,
            date: &date,
        };
        let received = stamp.render();
        let size = (received.len() + added.len() + spool.buf.len()) as u64;
        let facts = self.received_facts(&helo, &id, size, &added);
        let header = pb::EnqueueHeader {
            kind: pb::QueueKind::Inbound.into(),
            idempotency_key: txn.key.clone(),
            mail_from: match &txn.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.address(),
            },
            recipients: txn.rcpts.clone(),
            envid: txn.params.envid.clone().unwrap_or_default(),
            ret: txn.params.ret.clone().unwrap_or_default(),
            body_type: txn
                .params
                .body
                .map(|b| b.as_str().to_string())
                .unwrap_or_default(),
            smtputf8: txn.params.smtputf8,
            client_ip: self.peer.ip().to_string(),
            helo,
            authenticated_user: self
                .auth
                .as_ref()
                .map(|a| a.address.clone())
                .unwrap_or_default(),
            session_id: self.sid.clone(),
            size,
            // Our DKIM signature only on an authenticated submission, which
            // passed the From: check in `screen` (else we are not here);
            // never on mail from the MX.
            sign: self.auth.is_some(),
            // RFC 8689 §4.1: smtp-out relays it only over verified TLS.
            requiretls: txn.params.requiretls,
            received: facts,
            ..Default::default()
        };
        // OpenTelemetry: each message its own trace (not the connection's),
        // carried to the store and, with the job, to the workers.
        let span = tracing::info_span!(parent: None, "message", id = %id, size);
        match self
            .shared
            .backend
            .enqueue(
                header,
                &[received.as_bytes(), added.as_bytes(), &spool.buf],
                &self.sid,
            )
            .instrument(span)
            .await
        {
            Ok(resp) => {
                metrics::counter!("smtp_in_messages_accepted_total", "listener" => self.kind.name()).increment(1);
                metrics::counter!("smtp_in_message_bytes_total").increment(size);
                tracing::info!(
                    job_id = resp.job_id,
                    size,
                    rcpts = txn.rcpts.len(),
                    duplicate = resp.duplicate,
                    how,
                    "queued"
                );
                Reply::new(
                    250,
                    Some(EnhancedStatus::SUCCESS),
                    format!("Ok: queued as {}", resp.job_id),
                )
            }
            Err(e) => {
                metrics::counter!("smtp_in_messages_rejected_total", "reason" => "store")
                    .increment(1);
                tracing::warn!(error = %e, "Enqueue failed");
                codes::store_unavailable()
            }
        }
    }
}

impl Session {
    /// What we knew of the message when we took it, for the job's RECEIVED
    /// event (`mailctl trace`).
    fn received_facts(
        &self,
        helo: &str,
        id: &str,
        size: u64,
        added: &str,
    ) -> HashMap<String, String> {
        let mut f = HashMap::from([
            ("service".to_string(), "smtp-in".to_string()),
            ("by".to_string(), self.shared.hostname.clone()),
            ("listener".to_string(), self.kind.name().to_string()),
            ("client_ip".to_string(), self.peer.ip().to_string()),
            ("helo".to_string(), helo.chars().take(255).collect()),
            ("id".to_string(), id.to_string()),
            ("size".to_string(), size.to_string()),
            (
                "tls".to_string(),
                self.tls.as_ref().map_or("none".to_string(), |t| {
                    format!("{} {}", t.version, t.cipher)
                }),
            ),
            (
                "auth".to_string(),
                self.auth
                    .as_ref()
                    .map_or("none".to_string(), |a| a.address.clone()),
            ),
        ]);
        if let Some(results) = auth_results(added) {
            f.insert("auth_results".to_string(), results);
        }
        f
    }
}

/// The `method=result` pairs of our `Authentication-Results:` field
/// (RFC 8601 §2.2), e.g. "dkim=pass spf=none spf=pass dmarc=pass"; None
/// when we added none (submission, or checks off).
fn auth_results(added: &str) -> Option<String> {
    let start = added.find("Authentication-Results:")?;
    let field = &added[start + "Authentication-Results:".len()..];
    // The field ends at the first line that does not begin with white space.
    let mut end = field.len();
    let bytes = field.as_bytes();
    for (i, w) in bytes.windows(3).enumerate() {
        if w[0] == b'\r' && w[1] == b'\n' && w[2] != b' ' && w[2] != b'\t' {
            end = i;
            break;
        }
    }
    let pairs: Vec<&str> = field[..end]
        .split(';')
        .skip(1) // the authserv-id
        .filter_map(|p| p.split_whitespace().next())
        .filter(|t| t.contains('='))
        .collect();
    let out = pairs.join(" ");
    (!out.is_empty()).then(|| out.chars().take(2000).collect())
}

// The size a message may reach: the server maximum, or less when the
/// client declared a SIZE (RFC 1870 §6: a server may refuse a message larger
/// than declared). The declaration is an estimate, so it gets 10% + 64 KiB
/// of slack.
fn message_limit(limits: &Limits, params: &MailParams) -> u64 {
    let max = limits.max_message_size;
    params.size.map_or(max, |declared| {
        declared
            .saturating_add(declared / 10)
            .saturating_add(64 * 1024)
            .min(max)
    })
}

/// Reads and drops `size` octets (a BDAT chunk we refuse).
pub(crate) async fn skip<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    size: u64,
    timeout: Duration,
) -> Result<(), ConnError> {
    let mut remaining = size;
    while remaining > 0 {
        let buf = conn.peek_some(timeout).await?;
        let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        conn.consume(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Reserves budget for `extra` more bytes before they are decoded (a
/// spent budget refuses the message, `452 4.3.1`); drops collected bytes,
/// and their budget, once the message is known to be refused.
fn make_room(decoder: &mut BodyDecoder, spool: &mut Spool, extra: usize) {
    if decoder.defect().is_none() && !spool.reserve(extra) {
        decoder.fail(Defect::Storage);
    }
    if decoder.defect().is_some() && spool.held_kib > 0 {
        spool.clear();
    }
}

fn defect_reason(defect: Defect) -> &'static str {
    match defect {
        Defect::BareLineEnding => "bare_line_ending",
        Defect::TooBig => "too_big",
        Defect::LineTooLong => "line_too_long",
        Defect::Storage => "spool_full",
    }
}

fn defect_reply(defect: Defect) -> Reply {
    match defect {
        Defect::BareLineEnding => codes::bare_line_ending(),
        Defect::TooBig => codes::too_big(),
        Defect::LineTooLong => codes::data_line_too_long(),
        Defect::Storage => codes::insufficient_storage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt as _;
    use tokio::sync::Semaphore;

    /// The budget covers the capacity really allocated, growth stops at the
    /// message limit, and a spent budget refuses without growing.
    #[test]
    fn spool_charges_capacity_and_stops_at_the_budget() {
        let budget = Arc::new(Semaphore::new(1024)); // 1 MiB
        let mut s = Spool::new(budget.clone(), 10 * 1024 * 1024);
        for _ in 0..12 {
            assert!(s.reserve(64 * 1024));
            s.buf.extend_from_slice(&[b'a'; 64 * 1024]);
            assert!(s.buf.capacity() <= s.held_kib * 1024, "uncounted memory");
        }
        assert!(!s.reserve(512 * 1024), "past the budget");
        assert!(s.held_kib <= 1024);
        s.clear();
        assert_eq!(budget.available_permits(), 1024, "budget given back");

        let mut small = Spool::new(budget.clone(), 100 * 1024);
        assert!(small.reserve(90 * 1024));
        small.buf.extend_from_slice(&[b'a'; 90 * 1024]);
        assert!(small.reserve(10 * 1024));
        assert!(
            small.buf.capacity() <= 128 * 1024,
            "growth capped by the message limit"
        );
    }

    /// threat model T47: a refused 50 MB BDAT chunk is read and dropped in
    /// buffer-sized steps; the read buffer never grows past a few reads.
    #[tokio::test]
    async fn refused_chunk_is_discarded_as_it_streams() {
        const SIZE: u64 = 50 * 1024 * 1024;
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let writer = tokio::spawn(async move {
            let block = vec![b'x'; 1024 * 1024];
            for _ in 0..SIZE / block.len() as u64 {
                client.write_all(&block).await.expect("write");
            }
            client.write_all(b"QUIT\r\n").await.expect("write");
            client
        });
        let mut conn = Conn::new(server);
        skip(&mut conn, SIZE, Duration::from_secs(30))
            .await
            .expect("skip");
        assert!(
            conn.read_capacity() <= 128 * 1024,
            "read buffer grew to {}",
            conn.read_capacity()
        );
        let line = conn
            .read_line(512, Duration::from_secs(5))
            .await
            .expect("next command");
        assert_eq!(line, crate::io::Line::Ok(b"QUIT".to_vec()));
        drop(writer.await);
    }

    /// The trace keeps the `method=result` pairs of our field, and stops
    /// at the next header field.
    #[test]
    fn auth_results_are_summarised() {
        let added = "Authentication-Results: mx.test;\r\n\tdkim=pass header.d=a.test;\r\n\tspf=none (mx.test: no SPF record) smtp.helo=x;\r\n\tdmarc=none\r\nX-Quarantine: spf=fail\r\n";
        assert_eq!(
            auth_results(added).as_deref(),
            Some("dkim=pass spf=none dmarc=none")
        );
        assert_eq!(auth_results(""), None);
        assert_eq!(
            auth_results("Authentication-Results: mx.test; none\r\n"),
            None
        );
    }
}
