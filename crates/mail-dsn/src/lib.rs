//! # mail-dsn
//!
//! Delivery status notifications (RFC 3464 `multipart/report`, RFC 3462) and
//! the rules for when not to send one (RFC 3461 NOTIFY, RFC 3834 automatic
//! responses, never to the null sender). Shared by `delivery` (local
//! failures) and `smtp-out` (remote failures and delays), so both write the
//! same report.
//!
//! Status codes are read with `mail-wire`'s RFC 3463 grammar, and the
//! original header block gets its line ends made CRLF by `mail-wire` too.

use std::fmt::Write as _;

use mailstore_api::pb;

/// The header fields of a message as (lower-cased name, unfolded value).
#[derive(Debug, Default, Clone)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Parses the header block at the start of a raw message.
    #[must_use]
    pub fn parse(raw: &[u8]) -> Self {
        let Some(msg) = mail_parser::MessageParser::default().parse_headers(raw) else {
            return Self::default();
        };
        let Some(root) = msg.parts.first() else {
            return Self::default();
        };
        let mut out = Vec::new();
        for h in &root.headers {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .replace(['\r', '\n'], "")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            out.push((h.name.as_str().to_ascii_lowercase(), value));
        }
        Self(out)
    }

    /// Values of a field (case-insensitive name).
    pub fn get<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A recipient that failed permanently.
#[derive(Debug, Clone)]
pub struct Failure {
    pub recipient: pb::Recipient,
    /// Enhanced status code (RFC 3463), e.g. "5.1.1".
    pub status: String,
    /// Human-readable diagnostic.
    pub diagnostic: String,
}

/// Is this message itself a bounce or an automatic reply? (Then it never
/// gets a DSN: RFC 3834 §2, RFC 3464 §2, and mail loops.)
#[must_use]
pub fn is_automatic(mail_from: &str, headers: &Headers) -> bool {
    if mail_from.is_empty() {
        return true;
    }
    if headers
        .get("auto-submitted")
        .any(|v| !v.trim().eq_ignore_ascii_case("no"))
    {
        return true;
    }
    headers.get("content-type").any(|v| {
        let v = v.to_ascii_lowercase();
        v.contains("multipart/report") && v.contains("delivery-status")
    })
}

/// RFC 3461 §4.1: NOTIFY=NEVER, or a list without FAILURE, suppresses the
/// failure DSN; no NOTIFY means FAILURE,DELAY.
#[must_use]
pub fn wants_failure_notice(r: &pb::Recipient) -> bool {
    let n = r.notify;
    if n == 0 {
        return true;
    }
    n & (pb::Notify::Never as u32) == 0 && n & (pb::Notify::Failure as u32) != 0
}

/// RFC 3461 §4.1: does this recipient want a "delayed" notice? (No NOTIFY
/// means FAILURE,DELAY in this server, see `Recipient.notify`.)
#[must_use]
pub fn wants_delay_notice(r: &pb::Recipient) -> bool {
    let n = r.notify;
    if n == 0 {
        return true;
    }
    n & (pb::Notify::Never as u32) == 0 && n & (pb::Notify::Delay as u32) != 0
}

/// RFC 3461 §4.1: NOTIFY=SUCCESS asked for a success notice.
#[must_use]
pub fn wants_success_notice(r: &pb::Recipient) -> bool {
    let n = r.notify;
    n & (pb::Notify::Never as u32) == 0 && n & (pb::Notify::Success as u32) != 0
}

/// The DSN `Action` field (RFC 3464 §2.3.3) for every recipient of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Permanent failure: the message was returned.
    Failed,
    /// Still trying: a warning, the message stays queued.
    Delayed,
    /// Handed to a server that does not send DSNs itself (RFC 3461 §6.2.3.1:
    /// NOTIFY=SUCCESS then gets a "relayed" notice from us).
    Relayed,
}

/// Everything needed to write a DSN.
pub struct Report<'a> {
    pub hostname: &'a str,
    pub job: &'a pb::Job,
    pub failures: &'a [Failure],
    /// The original message's header block (RET=HDRS, the default).
    pub original_headers: &'a [u8],
    pub now: chrono::DateTime<chrono::Utc>,
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Builds a "failed" DSN message (CRLF line endings, 7-bit headers).
#[must_use]
pub fn build(r: &Report<'_>) -> Vec<u8> {
    build_with(r, Action::Failed)
}

/// Builds a DSN with the given action for every listed recipient (for
/// [`Action::Delayed`], `Failure::status` is a 4.x.x code and the message
/// stays queued).
#[must_use]
pub fn build_with(r: &Report<'_>, action: Action) -> Vec<u8> {
    let (subject, intro, action_field) = match action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.",
            "failed",
        ),
        Action::Relayed => (
            "Delivery Status Notification (relayed)",
            "Your message was relayed to a server that does not send delivery\r\n\
             notifications; no further notice will follow.",
            "relayed",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to one or more recipients.\r\n\
             It is still queued and will be retried; you need not resend it.",
            "delayed",
        ),
    };
    let host = clean(r.hostname);
    let sender = clean(&r.job.mail_from);
    let boundary = format!("dsn-{}-{:08x}", r.job.id, rand::random::<u32>());
    let date = r.now.to_rfc2822();
    let arrival = r
        .job
        .created_at
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .unwrap_or(r.now)
        .to_rfc2822();
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn.{}.{:08x}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at {host}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        r.job.id,
        rand::random::<u32>()
    );
    for f in r.failures {
        let _ = write!(
            m,
            "<{}>: {}\r\n",
            clean(&f.recipient.address),
            clean(&f.diagnostic)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {host}\r\n"
    );
    if !r.job.envid.is_empty() {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", clean(&r.job.envid));
    }
    let _ = write!(m, "Arrival-Date: {arrival}\r\n");
    for f in r.failures {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\n",
            clean(&f.recipient.address)
        );
        if !f.recipient.orcpt.is_empty() {
            let _ = write!(m, "Original-Recipient: {}\r\n", clean(&f.recipient.orcpt));
        }
        let _ = write!(
            m,
            "Action: {action_field}\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {date}\r\n",
            clean(&f.status),
            clean(&f.diagnostic)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    // The original header block, with every bare LF made CRLF.
    out.extend_from_slice(&mail_wire::crlf::bare_lf_to_crlf(r.original_headers));
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The enhanced status code (RFC 3463 §2) at the start of a reason
/// ("5.1.1 …"), or a default.
#[must_use]
pub fn status_of(reason: &str, default: &str) -> String {
    let first = reason.split_whitespace().next().unwrap_or("");
    mail_wire::EnhancedStatus::parse(first)
        .filter(|s| s.to_string() == first)
        .map_or_else(|| default.to_string(), |s| s.to_string())
}

/// The idempotency key of a DSN: one per job, kind and recipient set, so a
/// re-leased job (or a second delay notice) finds the first one.
#[must_use]
pub fn idempotency_key(tag: &str, job_id: u64, failures: &[Failure]) -> String {
    let rcpts: Vec<&str> = failures
        .iter()
        .map(|f| f.recipient.address.as_str())
        .collect();
    format!("{tag}:{job_id}:{}", rcpts.join(","))
        .chars()
        .take(250)
        .collect()
}

/// The Enqueue stream for a DSN: an inbound job from the null sender `<>`
/// (RFC 5321 §4.5.5) to the original envelope sender, asking for no DSN
/// about itself.
#[must_use]
pub fn enqueue_requests(job: &pb::Job, key: String, raw: Vec<u8>) -> Vec<pb::EnqueueRequest> {
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Inbound as i32,
        idempotency_key: key,
        mail_from: String::new(),
        recipients: vec![pb::Recipient {
            address: job.mail_from.clone(),
            orcpt: String::new(),
            notify: pb::Notify::Never as u32,
        }],
        body_type: "8BITMIME".into(),
        session_id: job.session_id.clone(),
        size: raw.len() as u64,
        // The DSN is ours as a whole (the quoted headers are inside our
        // message/rfc822-headers part): it may carry our DKIM signature.
        sign: true,
        // mailctl trace shows the report with the message it is about.
        about_job_id: job.id,
        ..Default::default()
    };
    vec![
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Header(header)),
        },
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Data(raw)),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders as _};

    #[test]
    fn dsn_is_a_well_formed_multipart_report() {
        let job = pb::Job {
            id: 7,
            mail_from: "sender@remote.test".into(),
            envid: "ENV1".into(),
            ..Default::default()
        };
        let failures = vec![Failure {
            recipient: pb::Recipient {
                address: "nobody@example.org".into(),
                orcpt: "rfc822;nobody@example.org".into(),
                notify: 0,
            },
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <nobody@example.org>: unknown user".into(),
        }];
        let raw = build(&Report {
            hostname: "mx.example.org",
            job: &job,
            failures: &failures,
            original_headers: b"From: sender@remote.test\nSubject: hi\n",
            now: chrono::Utc::now(),
        });
        let msg = MessageParser::default().parse(&raw).expect("parses");
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.parts.len(), 4);
        let status = String::from_utf8_lossy(
            &raw[msg.parts[2].offset_body as usize..msg.parts[2].offset_end as usize],
        )
        .into_owned();
        assert!(status.contains("Final-Recipient: rfc822; nobody@example.org"));
        assert!(status.contains("Status: 5.1.1"));
        assert!(status.contains("Original-Envelope-Id: ENV1"));
        assert!(
            !raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "CRLF only"
        );
    }

    #[test]
    fn delayed_notice() {
        let job = pb::Job {
            id: 9,
            mail_from: "sender@a.test".into(),
            ..Default::default()
        };
        let waiting = vec![Failure {
            recipient: pb::Recipient {
                address: "slow@b.test".into(),
                ..Default::default()
            },
            status: "4.4.1".into(),
            diagnostic: "451 4.4.1 no answer from host".into(),
        }];
        let raw = build_with(
            &Report {
                hostname: "mx.a.test",
                job: &job,
                failures: &waiting,
                original_headers: b"Subject: s\r\n",
                now: chrono::Utc::now(),
            },
            Action::Delayed,
        );
        let text = String::from_utf8(raw).expect("utf8");
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Subject: Delayed Mail"));
        assert!(!text.contains("Action: failed"));
        let r = |n: u32| pb::Recipient {
            notify: n,
            ..Default::default()
        };
        assert!(wants_delay_notice(&r(0)));
        assert!(wants_delay_notice(&r(pb::Notify::Delay as u32)));
        assert!(!wants_delay_notice(&r(pb::Notify::Failure as u32)));
        assert!(!wants_delay_notice(&r(pb::Notify::Never as u32)));
    }

    #[test]
    fn when_not_to_bounce() {
        let h = Headers::parse(b"Auto-Submitted: auto-replied\r\n\r\n");
        assert!(is_automatic("a@b", &h));
        assert!(is_automatic("", &Headers::default()));
        let report = Headers::parse(
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n",
        );
        assert!(is_automatic("a@b", &report));
        assert!(!is_automatic(
            "a@b",
            &Headers::parse(b"Auto-Submitted: no\r\n\r\n")
        ));
        let r = |n: u32| pb::Recipient {
            notify: n,
            ..Default::default()
        };
        assert!(wants_failure_notice(&r(0)));
        assert!(!wants_failure_notice(&r(pb::Notify::Never as u32)));
        assert!(!wants_failure_notice(&r(pb::Notify::Success as u32)));
        assert!(wants_failure_notice(&r(
            pb::Notify::Failure as u32 | pb::Notify::Delay as u32
        )));
        assert_eq!(status_of("5.2.2 mailbox full", "5.0.0"), "5.2.2");
        assert_eq!(status_of("no code", "5.0.0"), "5.0.0");
        // RFC 3463 §2: class 2, 4 or 5; subject and detail 1–3 digits.
        assert_eq!(status_of("9.1.1 odd", "5.0.0"), "5.0.0");
        assert_eq!(status_of("5.1.1234 odd", "5.0.0"), "5.0.0");
    }
}
