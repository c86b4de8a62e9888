//! SMTP TLS reporting (RFC 8460).
//!
//! - Every delivery attempt that reached the TLS stage is counted in the
//!   store (`TlsReports.RecordTlsResult`) under its policy domain, policy
//!   (`sts`, `tlsa` or `no-policy-found`, with the policy text) and result:
//!   success, or an RFC 8460 §4.3 result type ([`classify`]).
//! - Once a day after 00:05 UTC, and at start ([`daily`]), the previous
//!   UTC day's counts become one report per policy domain that publishes `_smtp._tls.<domain>` TXT
//!   `v=TLSRPTv1; rua=…` (RFC 8460 §3): the JSON of §4.4 ([`build_report`]),
//!   gzip-compressed (`application/tlsrpt+gzip`, §5.3), mailed to each
//!   `mailto:` address through the store's outbound queue, and POSTed to
//!   each `https:` address (§3; the host's addresses pass the destination
//!   policy, the certificate is verified, no redirects) ([`send`]).
//! - One replica sends: the day is claimed with the store's Guard counter
//!   (`tlsrpt-sent`, one hit per day).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use mailstore_api::{StoreClient, pb};
use serde_json::{Value, json};

use rustls_pki_types::ServerName;

use crate::client::Verifier;
use crate::route::Router;

/// The RFC 8460 §4.3 result type for a failed TLS stage, from what the
/// client saw: `demand` is `sts`, `tlsa` or `no-policy-found`; `problem` the
/// error or verification text.
#[must_use]
pub fn classify(policy_type: &str, problem: &str) -> &'static str {
    let p = problem.to_ascii_lowercase();
    if p.contains("did not offer starttls") || p == "no tls" {
        "starttls-not-supported"
    } else if p.contains("tlsa lookup") {
        // RFC 8460 §4.3.2.1: no valid records from the resolver (bogus).
        "dnssec-invalid"
    } else if policy_type == "tlsa" && p.contains("no tlsa record matches") {
        "tlsa-invalid"
    } else if p.contains("notvalidforname") || p.contains("does not match the policy") {
        "certificate-host-mismatch"
    } else if p.contains("expired") {
        "certificate-expired"
    } else if p.contains("unknownissuer") || p.contains("not trusted") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// Who we are in reports (RFC 8460 §4.4 organization-name, contact-info).
#[derive(Debug, Clone)]
pub struct Reporter {
    pub organization: String,
    pub contact: String,
    /// Envelope and `From:` address of report messages.
    pub from: String,
    /// Our host name (the report's submitter, §5.3).
    pub submitter: String,
}

/// The RFC 8460 §4.4 report of `domain` for `day` from its counts.
#[must_use]
pub fn build_report(
    reporter: &Reporter,
    domain: &str,
    day: NaiveDate,
    report_id: &str,
    results: &[pb::TlsResult],
) -> Value {
    // One policy object per distinct (type, text) of the domain.
    let mut policies: BTreeMap<(String, Vec<String>), Vec<&pb::TlsResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.policy_domain == domain) {
        policies
            .entry((r.policy_type.clone(), r.policy_strings.clone()))
            .or_default()
            .push(r);
    }
    let policies: Vec<Value> = policies
        .into_iter()
        .map(|((policy_type, strings), rows)| {
            let ok: u64 = rows
                .iter()
                .filter(|r| r.result_type.is_empty())
                .map(|r| r.count)
                .sum();
            let failed: u64 = rows
                .iter()
                .filter(|r| !r.result_type.is_empty())
                .map(|r| r.count)
                .sum();
            let mut mx: Vec<&str> = rows
                .iter()
                .map(|r| r.mx_host.as_str())
                .filter(|m| !m.is_empty())
                .collect();
            mx.sort_unstable();
            mx.dedup();
            let details: Vec<Value> = rows
                .iter()
                .filter(|r| !r.result_type.is_empty())
                .map(|r| {
                    let mut d = json!({
                        "result-type": r.result_type,
                        "failed-session-count": r.count,
                    });
                    let mut put = |k: &str, v: &str| {
                        if !v.is_empty() {
                            d[k] = json!(v);
                        }
                    };
                    put("sending-mta-ip", &r.sending_ip);
                    put("receiving-mx-hostname", &r.mx_host);
                    put("receiving-mx-helo", &r.receiving_mx_helo);
                    put("receiving-ip", &r.receiving_ip);
                    put("failure-reason-code", &r.failure_reason);
                    d
                })
                .collect();
            let mut policy = json!({
                "policy-type": policy_type,
                "policy-domain": domain,
            });
            if !strings.is_empty() {
                policy["policy-string"] = json!(strings);
            }
            if !mx.is_empty() {
                policy["mx-host"] = json!(mx);
            }
            let mut p = json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": ok,
                    "total-failure-session-count": failed,
                },
            });
            if !details.is_empty() {
                p["failure-details"] = json!(details);
            }
            p
        })
        .collect();
    json!({
        "organization-name": reporter.organization,
        "date-range": {
            "start-datetime": format!("{day}T00:00:00Z"),
            "end-datetime": format!("{day}T23:59:59Z"),
        },
        "contact-info": reporter.contact,
        "report-id": report_id,
        "policies": policies,
    })
}

/// gzip of the JSON (RFC 8460 §5.3: `application/tlsrpt+gzip`).
#[must_use]
pub fn gzip(report: &Value) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(report.to_string().as_bytes());
    enc.finish().unwrap_or_default()
}

/// The `rua` URIs of a `_smtp._tls` TXT record (RFC 8460 §3), or `None`
/// when it is not a `v=TLSRPTv1` record.
#[must_use]
pub fn parse_record(txt: &str) -> Option<Vec<String>> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=TLSRPTv1" {
        return None;
    }
    let mut rua = Vec::new();
    for f in fields {
        if let Some((k, v)) = f.split_once('=')
            && k.trim() == "rua"
        {
            rua.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from),
            );
        }
    }
    (!rua.is_empty()).then_some(rua)
}

/// The report message (RFC 8460 §5.3): multipart/report with a short text
/// and the gzip attachment named `submitter!domain!begin!end!id.json.gz`.
#[must_use]
pub fn message(
    reporter: &Reporter,
    to: &str,
    domain: &str,
    day: NaiveDate,
    report_id: &str,
    gz: &[u8],
) -> Vec<u8> {
    use base64::Engine as _;
    let begin = day
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp());
    let end = begin + 86_399;
    let boundary = format!("tlsrpt-{report_id}");
    let filename = format!(
        "{}!{domain}!{begin}!{end}!{report_id}.json.gz",
        reporter.submitter
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut body = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        body.push_str(&String::from_utf8_lossy(chunk));
        body.push_str("\r\n");
    }
    format!(
        "From: {from}\r\nTo: {to}\r\nDate: {date}\r\n\
         Subject: Report Domain: {domain} Submitter: {sub} Report-ID: <{report_id}@{sub}>\r\n\
         Message-ID: <{report_id}@{sub}>\r\n\
         TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {sub}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an aggregate TLS report from {sub} for {domain} on {day} (RFC 8460).\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{body}\r\n\
         --{boundary}--\r\n",
        from = reporter.from,
        date = Utc::now().to_rfc2822(),
        sub = reporter.submitter,
    )
    .into_bytes()
}

/// Builds and sends the reports of `day`: one per policy domain with
/// counts and a TLSRPT record; returns the outbound job ids queued (mailto)
/// and the URIs posted to (https).
///
/// # Errors
/// A store error (nothing is half-sent: each report is one enqueue). A
/// failed POST is logged, not an error.
pub async fn send(
    store: &StoreClient,
    router: &Router,
    verifier: &Verifier,
    reporter: &Reporter,
    day: NaiveDate,
) -> Result<(Vec<u64>, Vec<String>), tonic::Status> {
    let results = store
        .tls_reports
        .clone()
        .list_tls_results(pb::ListTlsResultsRequest {
            day: day.to_string(),
            policy_domain: String::new(),
        })
        .await?
        .into_inner()
        .results;
    let mut domains: Vec<&str> = results.iter().map(|r| r.policy_domain.as_str()).collect();
    domains.dedup();
    let mut jobs = Vec::new();
    let mut posted = Vec::new();
    for domain in domains {
        let txt = router
            .resolver()
            .txt_lookup(format!("_smtp._tls.{domain}.").as_str())
            .await;
        let Ok(txt) = txt else { continue };
        let rua: Vec<String> = txt
            .answers()
            .iter()
            .filter_map(|a| match &a.data {
                hickory_resolver::proto::rr::RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .filter_map(|t| parse_record(&t))
            .flatten()
            .collect();
        if rua.is_empty() {
            continue;
        }
        let report_id = format!("{day}-{domain}-{:08x}", rand::random::<u32>());
        let report = build_report(reporter, domain, day, &report_id, &results);
        let gz = gzip(&report);
        for uri in rua {
            if uri.starts_with("https:") {
                match post(router, verifier, &uri, &gz).await {
                    Ok(()) => posted.push(uri),
                    Err(e) => {
                        tracing::warn!(%domain, %uri, error = %e, "TLS-RPT report not posted")
                    }
                }
                continue;
            }
            let Some(to) = uri.strip_prefix("mailto:") else {
                tracing::info!(%domain, %uri, "TLS-RPT: unknown rua scheme");
                continue;
            };
            // RFC 8460 §3: a mailto: URI may carry ?headers; only the address is used.
            let to = to.split('?').next().unwrap_or_default();
            let raw = message(reporter, to, domain, day, &report_id, &gz);
            jobs.push(
                crate::reports::enqueue(
                    store,
                    &reporter.from,
                    to,
                    format!("tlsrpt:{report_id}:{}", to.to_ascii_lowercase()),
                    raw,
                )
                .await?,
            );
        }
    }
    Ok((jobs, posted))
}

/// Longest time one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(60);

/// RFC 8460 §3 (https method): POST the gzip report with
/// `Content-Type: application/tlsrpt+gzip`; any 2xx is success.
async fn post(router: &Router, verifier: &Verifier, uri: &str, gz: &[u8]) -> Result<(), String> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    if parsed.scheme_str() != Some("https") {
        return Err("not an https URI".into());
    }
    let host = parsed.host().ok_or("no host")?.to_string();
    let port = parsed.port_u16().unwrap_or(443);
    let path = parsed
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str)
        .to_string();
    // The report host is reached like an MX: no SSRF through rua=.
    let addrs = router.allowed_addrs(&host, port).await?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let mut errors = Vec::new();
    for addr in addrs {
        let once = post_to(verifier, addr, &host, name.clone(), &path, gz);
        match tokio::time::timeout(POST_TIMEOUT, once).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: timeout")),
        }
    }
    Err(errors.join("; "))
}

async fn post_to(
    verifier: &Verifier,
    addr: std::net::SocketAddr,
    host: &str,
    name: ServerName<'static>,
    path: &str,
    gz: &[u8],
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let config = std::sync::Arc::new(verifier.client_config(&[b"http/1.1"]));
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "epistole-smtp-out")
        .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(gz)))
        .map_err(|e| format!("request: {e}"))?;
    let result = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
        .and_then(|r| {
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP status {}", r.status()))
            }
        });
    driver.abort();
    result
}

/// Sends yesterday's reports shortly after each UTC midnight; one replica
/// per day (Guard counter `tlsrpt-sent`).
pub(crate) async fn daily(
    store: StoreClient,
    worker: std::sync::Arc<crate::worker::Worker>,
    reporter: Reporter,
    shutdown: service_kit::Shutdown,
) {
    let (store, worker, reporter) = (&store, &*worker, &reporter);
    crate::reports::every_day(store, "tlsrpt-sent", 5, &shutdown, |day| async move {
        match send(store, &worker.router, &worker.verifier, reporter, day).await {
            Ok((jobs, posted)) => {
                tracing::info!(%day, mailed = jobs.len(), posted = posted.len(), "TLS-RPT reports sent")
            }
            Err(e) => tracing::warn!(%day, error = %e.message(), "TLS-RPT reports not sent"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_results() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:tls@b.test, https://r.b.test/x"),
            Some(vec![
                "mailto:tls@b.test".into(),
                "https://r.b.test/x".into()
            ])
        );
        assert_eq!(parse_record("v=STSv1; id=1"), None);
        assert_eq!(parse_record("v=TLSRPTv1;"), None);
        assert_eq!(
            classify("sts", "the server did not offer STARTTLS"),
            "starttls-not-supported"
        );
        assert_eq!(
            classify("tlsa", "DANE: no TLSA record matches the certificate chain"),
            "tlsa-invalid"
        );
        assert_eq!(
            classify("tlsa", "TLSA lookup _25._tcp.mx: SERVFAIL"),
            "dnssec-invalid"
        );
        assert_eq!(
            classify(
                "sts",
                "certificate not verified for mx: invalid peer certificate: NotValidForName"
            ),
            "certificate-host-mismatch"
        );
        assert_eq!(
            classify("sts", "invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
        assert_eq!(classify("sts", "no TLS"), "starttls-not-supported");
        assert_eq!(
            classify("sts", "TLS handshake: reset"),
            "validation-failure"
        );
    }
}
