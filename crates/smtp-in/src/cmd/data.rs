//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): message content through
//! the `mail-wire` decoder into a memory spool, then one `Queue.Enqueue`.

use std::sync::Arc;
use std::time::Duration;

use mail_wire::body::{BodyDecoder, Defect, Mode};
use mail_wire::path::ReversePath;
use mail_wire::reply::EnhancedStatus;
use mailstore_api::pb;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::io::{Conn, ConnError};
use crate::proto::command::MailParams;
use crate::proto::{Reply, codes};
use crate::received::Stamp;
use crate::session::{Exit, Flow, Limits, Session, State, Transaction};

/// Message bytes held in memory, counted against the server-wide budget.
pub(crate) struct Spool {
    buf: Vec<u8>,
    budget: Arc<Semaphore>,
    permits: Vec<OwnedSemaphorePermit>,
    held_kib: usize,
}

impl Spool {
    fn new(budget: Arc<Semaphore>) -> Self {
        Self {
            buf: Vec::new(),
            budget,
            permits: Vec::new(),
            held_kib: 0,
        }
    }

    /// Takes permits for the buffer's size; false when the budget is spent.
    fn account(&mut self) -> bool {
        let need = self.buf.len().div_ceil(1024);
        if need <= self.held_kib {
            return true;
        }
        // Take at least 64 KiB at a time to keep the permit list short.
        let want = (need - self.held_kib).max(64);
        let Ok(n) = u32::try_from(want) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                self.permits.push(p);
                self.held_kib += want;
                true
            }
            Err(_) => false,
        }
    }

    fn clear(&mut self) {
        self.buf = Vec::new();
        self.permits.clear();
        self.held_kib = 0;
    }
}

/// A BDAT transfer between chunks.
pub(crate) struct Chunking {
    pub(crate) txn: Transaction,
    pub(crate) decoder: BodyDecoder,
    pub(crate) spool: Spool,
}

impl Session {
    /// RFC 5321 §4.1.1.4 DATA: 354, then content up to `<CRLF>.<CRLF>`.
    pub(crate) async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, ConnError> {
        let State::Rcpt(txn) = std::mem::replace(&mut self.state, State::Greeted) else {
            return self.reply(conn, codes::need_rcpt()).await;
        };
        conn.send(&codes::start_data());
        let mut decoder =
            BodyDecoder::new(Mode::Data, message_limit(&self.shared.limits, &txn.params));
        let mut spool = Spool::new(self.shared.spool.clone());
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
            let (n, end) = decoder.feed(buf, &mut spool.buf);
            conn.consume(n);
            account(&mut decoder, &mut spool);
            if end {
                break;
            }
        }
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
        let mut chunking = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Chunking(c) => c,
            State::Rcpt(txn) => Box::new(Chunking {
                decoder: BodyDecoder::new(
                    Mode::Bdat,
                    message_limit(&self.shared.limits, &txn.params),
                ),
                txn,
                spool: Spool::new(self.shared.spool.clone()),
            }),
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
        while remaining > 0 {
            let buf = conn.peek_some(timeout).await?;
            let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            if decoder.defect().is_none() {
                decoder.feed(&buf[..take], &mut spool.buf);
            }
            conn.consume(take);
            remaining -= take as u64;
            account(decoder, spool);
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
        spool: Spool,
        how: &'static str,
    ) -> Reply {
        if let Some(defect) = decoder.defect() {
            let reason = defect_reason(defect);
            metrics::counter!("smtp_in_messages_rejected_total", "reason" => reason).increment(1);
            tracing::info!(reason, size = decoder.size(), how, "message refused");
            return defect_reply(defect);
        }
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
        let size = (received.len() + spool.buf.len()) as u64;
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
            ..Default::default()
        };
        match self
            .shared
            .backend
            .enqueue(header, &[received.as_bytes(), &spool.buf], &self.sid)
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

/// Charges the spool against the budget; drops collected bytes once the
/// message is known to be refused.
fn account(decoder: &mut BodyDecoder, spool: &mut Spool) {
    if decoder.defect().is_none() && !spool.account() {
        decoder.fail(Defect::Storage);
    }
    if decoder.defect().is_some() && !spool.buf.is_empty() {
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
