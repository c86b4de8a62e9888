//! TLS-RPT (RFC 8460) end to end: smtp-out delivers to a DANE domain whose
//! TLSA record first does not match (a failure) and then does (a success),
//! and to a domain without policy whose server lacks STARTTLS; the counts
//! land in the store, and the day's report for the DANE domain is built,
//! checked against the RFC 8460 §4.4 schema, gzip-compressed, queued to the
//! `mailto:` and POSTed to the `https:` rua of its `_smtp._tls` record.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use mail_parser::MimeHeaders as _;
use mailstore_api::pb;
use serde_json::Value;
use test_dns::TestDns;

const MSG: &[u8] = b"From: alice@a.test\r\nTo: bob@rpt.test\r\nSubject: hello\r\n\r\nHi.\r\n";

fn at(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), port))
}

/// RFC 8460 §4.3 result types.
const RESULT_TYPES: [&str; 13] = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
    "unknown",
    "other",
];

fn string(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} must be a string: {v}"))
        .to_string()
}

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} must be a non-negative integer: {v}"))
}

/// The required members and types of RFC 8460 §4.4 (its JSON schema,
/// Appendix: organization-name, date-range, contact-info, report-id,
/// policies with policy and summary; failure-details members).
fn check_schema(r: &Value) {
    string(r, "organization-name");
    string(r, "contact-info");
    string(r, "report-id");
    for k in ["start-datetime", "end-datetime"] {
        let t = string(&r["date-range"], k);
        chrono::DateTime::parse_from_rfc3339(&t).unwrap_or_else(|e| panic!("{k} {t}: {e}"));
    }
    let policies = r["policies"].as_array().expect("policies array");
    assert!(!policies.is_empty());
    for p in policies {
        let policy = &p["policy"];
        let t = string(policy, "policy-type");
        assert!(
            ["tlsa", "sts", "no-policy-found"].contains(&t.as_str()),
            "{t}"
        );
        string(policy, "policy-domain");
        if let Some(s) = policy.get("policy-string") {
            assert!(s.as_array().unwrap().iter().all(Value::is_string), "{s}");
        }
        if let Some(m) = policy.get("mx-host") {
            assert!(m.as_array().unwrap().iter().all(Value::is_string), "{m}");
        }
        count(&p["summary"], "total-successful-session-count");
        count(&p["summary"], "total-failure-session-count");
        if let Some(d) = p.get("failure-details") {
            for f in d.as_array().expect("failure-details array") {
                let rt = string(f, "result-type");
                assert!(RESULT_TYPES.contains(&rt.as_str()), "{rt}");
                count(f, "failed-session-count");
                for k in [
                    "sending-mta-ip",
                    "receiving-mx-hostname",
                    "receiving-mx-helo",
                    "receiving-ip",
                    "additional-information",
                    "failure-reason-code",
                ] {
                    if let Some(x) = f.get(k) {
                        assert!(x.is_string(), "{k}: {x}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn daily_report_counts_successes_and_failures_and_goes_to_every_rua() {
    let store = test_kit::TestStore::start().await;
    let dns = TestDns::start().await;
    let port = free_port().await;
    // rpt.test: DANE, its TLSA record first wrong, then right.
    dns.mx("rpt.test", 10, "mx.rpt.test");
    dns.a("mx.rpt.test", Ipv4Addr::new(127, 0, 0, 71));
    for n in ["rpt.test", "mx.rpt.test"] {
        dns.secure(n);
    }
    let tlsa = format!("_{port}._tcp.mx.rpt.test");
    dns.secure(&tlsa);
    dns.tlsa(&tlsa, 3, 1, 1, &[0x42; 32]);
    // Reports by mail and by HTTPS POST to a collector on loopback.
    let ca = TestCa::new();
    let https_port = free_port().await;
    dns.a("rua.reports.test", Ipv4Addr::new(127, 0, 0, 73));
    let collector = https(
        at(73, https_port),
        &ca.leaf(&["rua.reports.test"]),
        "thanks",
    )
    .await;
    dns.txt(
        "_smtp._tls.rpt.test",
        &format!(
            "v=TLSRPTv1; rua=mailto:tls-reports@reports.test,https://rua.reports.test:{https_port}/v1/tlsrpt"
        ),
    );
    let cert = TestCert::self_signed(&["mx.rpt.test"]);
    let c2 = cert.clone();
    let rpt_mx = mx(at(71, port), move |_| Script {
        starttls: Some(""),
        cert: Some(c2.clone()),
        ..Script::default()
    })
    .await;
    // plain.test: no policy, no STARTTLS.
    dns.mx("plain.test", 10, "mx.plain.test");
    dns.a("mx.plain.test", Ipv4Addr::new(127, 0, 0, 72));
    let _plain_mx = mx(at(72, port), |_| Script::default()).await;

    let client = store.client();
    let a = enqueue_outbound(&client, "alice@a.test", &["bob@rpt.test"], MSG).await;
    let b = enqueue_outbound(&client, "alice@a.test", &["carol@plain.test"], MSG).await;
    let mut cfg = config(&store, dns.addr, port);
    cfg.no_mta_sts = true;
    let run = start(cfg);
    let deferred = |d: &pb::JobDetail| rcpt_state(d, 0) == pb::RecipientState::Deferred;
    wait_job(&client, a, 20, deferred).await;
    wait_job(&client, b, 20, is_done).await;
    // The domain fixes its TLSA record; the retry succeeds.
    dns.remove(&tlsa);
    dns.secure(&tlsa);
    let good = smtp_out::dane::association(&cert.chain[0], 1, 1).unwrap();
    dns.tlsa(&tlsa, 3, 1, 1, &good);
    let d = wait_job(&client, a, 20, is_done).await;
    run.stop().await;
    assert_eq!(rcpt_state(&d, 0), pb::RecipientState::Delivered);
    assert_eq!(rpt_mx.messages().len(), 1);

    // The counts in the store.
    let today = chrono::Utc::now().date_naive();
    let rows = client
        .tls_reports
        .clone()
        .list_tls_results(pb::ListTlsResultsRequest {
            day: today.to_string(),
            policy_domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let plain: Vec<_> = rows
        .iter()
        .filter(|r| r.policy_domain == "plain.test")
        .collect();
    assert_eq!(plain.len(), 1, "{rows:#?}");
    assert_eq!(plain[0].policy_type, "no-policy-found");
    assert_eq!(plain[0].result_type, "starttls-not-supported");
    let dane: Vec<_> = rows
        .iter()
        .filter(|r| r.policy_domain == "rpt.test")
        .collect();
    assert!(
        dane.iter()
            .any(|r| r.result_type == "tlsa-invalid" && r.count >= 1),
        "{dane:#?}"
    );
    assert!(
        dane.iter()
            .any(|r| r.result_type.is_empty() && r.count == 1),
        "{dane:#?}"
    );

    // The report, built and sent as the daily task does.
    let reporter = smtp_out::tlsrpt::Reporter {
        organization: "Epistole Test".into(),
        contact: "postmaster@a.test".into(),
        from: "noreply-tlsrpt@a.test".into(),
        submitter: "out.a.test".into(),
    };
    let router = smtp_out::route::Router::new(
        Some(dns.addr),
        Duration::from_millis(500),
        port,
        HashMap::new(),
        smtp_out::destination::Policy::new(&["127.0.0.0/8".to_string()]).unwrap(),
    )
    .unwrap();
    let verifier = smtp_out::client::Verifier::new(Some(&ca.pem_path)).unwrap();
    let (jobs, posted) = smtp_out::tlsrpt::send(&client, &router, &verifier, &reporter, today)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "plain.test publishes no TLSRPT record");
    assert_eq!(posted.len(), 1, "and one POST");
    let requests = collector.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (head, gz) = &requests[0];
    assert!(head.starts_with("POST /v1/tlsrpt HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/tlsrpt+gzip"),
        "{head}"
    );
    let mut posted_json = String::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_string(&mut posted_json)
        .unwrap();
    let posted_report: Value = serde_json::from_str(&posted_json).unwrap();
    check_schema(&posted_report);
    let job = job(&client, jobs[0]).await.job.unwrap();
    assert_eq!(job.mail_from, "noreply-tlsrpt@a.test");
    assert_eq!(
        job.recipients[0].recipient.as_ref().unwrap().address,
        "tls-reports@reports.test"
    );
    let raw = test_kit::collect_body(
        client
            .queue
            .clone()
            .read_message(pb::ReadMessageRequest {
                job_id: jobs[0],
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert!(
        msg.subject()
            .unwrap()
            .starts_with("Report Domain: rpt.test Submitter: out.a.test"),
        "{:?}",
        msg.subject()
    );
    let ct = msg.content_type().unwrap();
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    let part = msg.attachment(0).expect("the gzip attachment");
    let pct = part.content_type().unwrap();
    assert_eq!(
        (pct.ctype(), pct.subtype()),
        ("application", Some("tlsrpt+gzip"))
    );
    assert!(part.attachment_name().unwrap().ends_with(".json.gz"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(part.contents())
        .read_to_string(&mut json)
        .unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    check_schema(&report);
    assert_eq!(report["organization-name"], "Epistole Test");
    assert_eq!(
        report["date-range"]["start-datetime"],
        format!("{today}T00:00:00Z")
    );
    let policies = report["policies"].as_array().unwrap();
    assert!(
        policies
            .iter()
            .all(|p| p["policy"]["policy-domain"] == "rpt.test")
    );
    assert!(
        policies
            .iter()
            .all(|p| p["policy"]["policy-type"] == "tlsa")
    );
    let ok: u64 = policies
        .iter()
        .map(|p| {
            p["summary"]["total-successful-session-count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let failed: u64 = policies
        .iter()
        .map(|p| {
            p["summary"]["total-failure-session-count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(ok, 1);
    assert!(failed >= 1);
    let good_hex: String = good.iter().map(|b| format!("{b:02x}")).collect();
    let with_good = policies
        .iter()
        .find(|p| p["policy"]["policy-string"][0] == format!("3 1 1 {good_hex}"))
        .expect("the matching TLSA record as policy string");
    assert_eq!(with_good["summary"]["total-successful-session-count"], 1);
    let detail = policies
        .iter()
        .flat_map(|p| p["failure-details"].as_array().cloned().unwrap_or_default())
        .find(|f| f["result-type"] == "tlsa-invalid")
        .expect("the TLSA failure");
    assert_eq!(detail["receiving-mx-hostname"], "mx.rpt.test");
    assert_eq!(detail["receiving-ip"], "127.0.0.71");
    assert_eq!(posted_report, report, "the same report by both methods");
}
