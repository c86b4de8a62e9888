//! The outcome of an attempt: record each recipient's result, queue the
//! DSNs (RFC 3464: failed, delayed, relayed), and finish the job or set its
//! retry on the back-off schedule until `--give-up-after`.

use std::collections::HashMap;
use std::net::SocketAddr;

use mailstore_api::pb;

use crate::client::{self, RcptOutcome};
use crate::worker::Worker;

/// The enhanced status code of an outcome text ("550 5.1.1 …" → "5.1.1").
fn status_of(text: &str, default: &str) -> String {
    let rest = text
        .split_once(' ')
        .filter(|(code, _)| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text, |(_, r)| r);
    mail_dsn::status_of(rest, default)
}

/// The TLS policies behind one attempt, for its event (and TLS-RPT).
#[derive(Debug, Default)]
pub(crate) struct Note {
    /// MTA-STS mode applied, and (testing mode) what it would have refused.
    pub(crate) sts: Option<(crate::mta_sts::Mode, Option<String>)>,
    /// DANE for this host: `authenticated`, `encrypt` or `failed`.
    pub(crate) dane: Option<&'static str>,
    /// The TLS outcome to count for TLS-RPT (RFC 8460); `None` when the
    /// attempt never reached the TLS stage (or reused a counted session).
    pub(crate) report: Option<TlsReport>,
}

impl Note {
    pub(crate) fn dane(label: &'static str) -> Self {
        Self {
            dane: Some(label),
            ..Self::default()
        }
    }
}

/// One TLS outcome for `TlsReports.RecordTlsResult`.
#[derive(Debug)]
pub(crate) struct TlsReport {
    pub(crate) domain: String,
    /// `sts`, `tlsa` or `no-policy-found`.
    pub(crate) policy_type: &'static str,
    pub(crate) policy_strings: Vec<String>,
    /// Empty for success, else an RFC 8460 §4.3 result type.
    pub(crate) result_type: &'static str,
    pub(crate) reason: String,
}

impl Worker {
    pub(crate) async fn conclude(
        &self,
        job: &pb::Job,
        pending: &[(usize, pb::Recipient)],
        results: Vec<(usize, RcptOutcome, bool)>,
        message: &[u8],
    ) -> Result<(), tonic::Status> {
        let now = chrono::Utc::now();
        let created = job
            .created_at
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .unwrap_or(now);
        let age = (now - created).to_std().unwrap_or_default();
        let expired = age >= self.config.give_up_after;
        let rcpt = |i: usize| pending.iter().find(|(j, _)| *j == i).map(|(_, r)| r);
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        let mut relayed = Vec::new();
        for (i, outcome, remote_dsn) in results {
            let Some(r) = rcpt(i) else { continue };
            let index = job.recipients.get(i).map_or(0, |x| x.index);
            let (state, text) = match outcome {
                RcptOutcome::Delivered(t) => (pb::RecipientState::Delivered, t),
                RcptOutcome::Failed(t) => (pb::RecipientState::Failed, t),
                RcptOutcome::Deferred(t) if expired => (
                    pb::RecipientState::Failed,
                    format!(
                        "5.4.7 delivery time expired after {}h; last error: {t}",
                        age.as_secs() / 3600
                    ),
                ),
                RcptOutcome::Deferred(t) => (pb::RecipientState::Deferred, t),
            };
            self.jobs
                .set_result(job.id, index, state, text.clone())
                .await?;
            match state {
                pb::RecipientState::Delivered => {
                    metrics::counter!("smtp_out_delivered_total").increment(1);
                    if !remote_dsn && mail_dsn::wants_success_notice(r) {
                        relayed.push(mail_dsn::Failure {
                            recipient: r.clone(),
                            status: status_of(&text, "2.0.0"),
                            diagnostic: text,
                        });
                    }
                }
                pb::RecipientState::Failed => {
                    metrics::counter!("smtp_out_failed_total").increment(1);
                    failed.push(mail_dsn::Failure {
                        recipient: r.clone(),
                        status: status_of(&text, "5.0.0"),
                        diagnostic: text,
                    });
                }
                _ => {
                    metrics::counter!("smtp_out_deferred_total").increment(1);
                    deferred.push(mail_dsn::Failure {
                        recipient: r.clone(),
                        status: status_of(&text, "4.0.0"),
                        diagnostic: text,
                    });
                }
            }
        }
        let headers_end = header_block_end(message);
        let header_block = &message[..headers_end];
        if !failed.is_empty() {
            self.notify(job, header_block, &failed, mail_dsn::Action::Failed)
                .await?;
        }
        if !relayed.is_empty() {
            self.notify(job, header_block, &relayed, mail_dsn::Action::Relayed)
                .await?;
        }
        if deferred.is_empty() {
            return self.finish(job, pb::FinishOutcome::Done, None, "").await;
        }
        if age >= self.config.delay_notice_after {
            self.notify(job, header_block, &deferred, mail_dsn::Action::Delayed)
                .await?;
        }
        let step = self.config.retry_schedule
            [(job.attempts.saturating_sub(1) as usize).min(self.config.retry_schedule.len() - 1)];
        let mut at = now + chrono::Duration::from_std(step).unwrap_or(chrono::Duration::hours(1));
        // The last try happens at expiry, so the bounce is on time.
        let expiry = created
            + chrono::Duration::from_std(self.config.give_up_after)
                .unwrap_or(chrono::Duration::days(5));
        if at > expiry {
            at = expiry.max(now + chrono::Duration::seconds(1));
        }
        let reason: String = deferred
            .iter()
            .map(|d| d.diagnostic.as_str())
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .take(1500)
            .collect();
        self.finish(job, pb::FinishOutcome::Retry, Some(at), &reason)
            .await
    }

    /// Queues one DSN (failed or delayed) for the listed recipients, unless
    /// the sender is `<>`, the message is automatic, or NOTIFY says no.
    async fn notify(
        &self,
        job: &pb::Job,
        header_block: &[u8],
        list: &[mail_dsn::Failure],
        action: mail_dsn::Action,
    ) -> Result<(), tonic::Status> {
        let headers = mail_dsn::Headers::parse(header_block);
        if mail_dsn::is_automatic(&job.mail_from, &headers) {
            return Ok(());
        }
        let wanted: Vec<mail_dsn::Failure> = list
            .iter()
            .filter(|f| match action {
                mail_dsn::Action::Failed => mail_dsn::wants_failure_notice(&f.recipient),
                mail_dsn::Action::Delayed => mail_dsn::wants_delay_notice(&f.recipient),
                mail_dsn::Action::Relayed => mail_dsn::wants_success_notice(&f.recipient),
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let raw = mail_dsn::build_with(
            &mail_dsn::Report {
                hostname: &self.config.hostname,
                job,
                failures: &wanted,
                original_headers: header_block,
                now: chrono::Utc::now(),
            },
            action,
        );
        let tag = match action {
            mail_dsn::Action::Failed => "dsn",
            mail_dsn::Action::Delayed => "dsn-delay",
            mail_dsn::Action::Relayed => "dsn-relayed",
        };
        // One DSN per job and recipient set: a re-leased job or a second
        // delay notice finds the first (same idempotency key).
        let key = mail_dsn::idempotency_key(&format!("{tag}:out"), job.id, &wanted);
        let msgs = mail_dsn::enqueue_requests(job, key, raw);
        let r = self
            .store
            .queue
            .clone()
            .enqueue(futures::stream::iter(msgs))
            .await?
            .into_inner();
        if !r.duplicate {
            metrics::counter!("smtp_out_dsn_total", "action" => tag).increment(1);
            let kind = match action {
                mail_dsn::Action::Failed => pb::EventKind::Bounced,
                mail_dsn::Action::Delayed => pb::EventKind::Deferred,
                mail_dsn::Action::Relayed => pb::EventKind::Relayed,
            };
            self.event(
                job,
                kind,
                &job.mail_from,
                &format!("{tag} queued as job {}", r.job_id),
                HashMap::new(),
            )
            .await?;
        }
        Ok(())
    }

    /// Ends the lease: done, or retry at `retry_at`.
    pub(crate) async fn finish(
        &self,
        job: &pb::Job,
        outcome: pb::FinishOutcome,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
        reason: &str,
    ) -> Result<(), tonic::Status> {
        self.jobs
            .finish(job.id, outcome, retry_at, reason.to_string())
            .await
    }

    /// One `Attempt` event: where the message went and what came back.
    pub(crate) async fn attempt_event(
        &self,
        job: &pb::Job,
        host: &str,
        addr: SocketAddr,
        tls: Option<&client::TlsInfo>,
        note: Note,
        reply: &str,
    ) -> Result<(), tonic::Status> {
        let Note { sts, dane, report } = note;
        if let Some(r) = report
            && !self.config.no_tlsrpt
        {
            self.record_tls(r, host, addr).await;
        }
        let mut attrs = HashMap::from([
            ("mx".to_string(), host.to_string()),
            ("ip".to_string(), addr.ip().to_string()),
            ("port".to_string(), addr.port().to_string()),
            ("reply".to_string(), reply.chars().take(500).collect()),
        ]);
        if let Some(t) = tls {
            attrs.insert("tls_version".into(), t.version.clone());
            attrs.insert("tls_cipher".into(), t.cipher.clone());
            attrs.insert("tls_verified".into(), t.verified.to_string());
            if !t.verified {
                attrs.insert("tls_verify_error".into(), t.verify_error.clone());
            }
        } else {
            attrs.insert("tls_version".into(), "none".into());
        }
        // RFC 8461: the policy applied, and (testing mode) what it would
        // have refused; TLS-RPT (RFC 8460) reports are built from these.
        if let Some((mode, problem)) = sts {
            attrs.insert("mta_sts".into(), mode.as_str().to_string());
            if let Some(p) = problem {
                attrs.insert("mta_sts_failure".into(), p);
            }
        }
        // RFC 7672: DANE applied to this host (authenticated, encrypt, failed).
        if let Some(d) = dane {
            attrs.insert("dane".into(), d.to_string());
        }
        self.event(job, pb::EventKind::Attempt, "", reply, attrs)
            .await
    }

    /// Counts one TLS outcome in the store (best effort: TLS-RPT is a
    /// report, not a reason to hold up mail).
    async fn record_tls(&self, r: TlsReport, host: &str, addr: SocketAddr) {
        let req = pb::RecordTlsResultRequest {
            result: Some(pb::TlsResult {
                policy_domain: r.domain,
                policy_type: r.policy_type.to_string(),
                policy_strings: r.policy_strings,
                mx_host: host.to_string(),
                result_type: r.result_type.to_string(),
                receiving_ip: addr.ip().to_string(),
                failure_reason: r.reason,
                ..Default::default()
            }),
        };
        if let Err(e) = self.store.tls_reports.clone().record_tls_result(req).await {
            tracing::warn!(%host, error = %e.message(), "TLS-RPT result not recorded");
        }
    }

    pub(crate) async fn event(
        &self,
        job: &pb::Job,
        kind: pb::EventKind,
        recipient: &str,
        detail: &str,
        attributes: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        self.jobs
            .event(
                job.id,
                kind,
                recipient,
                detail.chars().take(2000).collect(),
                attributes,
            )
            .await
    }
}

/// Length of the header block (through the empty line), or all of it.
fn header_block_end(raw: &[u8]) -> usize {
    let limit = raw.len().min(256 * 1024);
    let head = &raw[..limit];
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::domain_of;

    #[test]
    fn status_codes_from_outcome_text() {
        assert_eq!(status_of("550 5.1.1 no such user", "5.0.0"), "5.1.1");
        assert_eq!(status_of("550 no such user", "5.0.0"), "5.0.0");
        assert_eq!(status_of("5.4.7 expired", "5.0.0"), "5.4.7");
        assert_eq!(domain_of("u@Example.ORG."), "example.org");
        assert_eq!(header_block_end(b"A: b\r\n\r\nbody"), 6);
        assert_eq!(header_block_end(b"A: b\n\nbody"), 5);
        assert_eq!(header_block_end(b"A: b"), 4);
    }
}
