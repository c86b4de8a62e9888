//! Delivery status notifications (RFC 3464 multipart/report, RFC 3462) and
//! the rules for when not to send one (RFC 3461 NOTIFY, RFC 3834 auto
//! responses, never to the null sender).

use std::fmt::Write as _;

use mailstore_api::pb;

use crate::filter::Headers;

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

/// Builds the DSN message (CRLF line endings, 7-bit headers).
#[must_use]
pub fn build(r: &Report<'_>) -> Vec<u8> {
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
         Subject: Undelivered Mail Returned to Sender\r\n\
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
         Your message could not be delivered to one or more recipients.\r\n\
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
            "Action: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {date}\r\n",
            clean(&f.status),
            clean(&f.diagnostic)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    // The original header block, with every line ending made CRLF.
    let mut prev = 0u8;
    for &b in r.original_headers {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The enhanced status code at the start of a reason ("5.1.1 …"), or a default.
#[must_use]
pub fn status_of(reason: &str, default: &str) -> String {
    let first = reason.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        first.to_string()
    } else {
        default.to_string()
    }
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
    }
}
