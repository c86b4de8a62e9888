//! DMARC aggregate reports (RFC 7489 §7.2) from the store to the queue: a
//! day's inbound results (pass and fail, IPv4 and IPv6, recorded through
//! the store's RecordDmarcResult as smtp-in does) become one report per
//! policy domain; it validates against RFC 7489 Appendix C's XML schema
//! (`tests/data/dmarc-rfc7489.xsd`, with xmllint), is gzip-attached under
//! the §7.2.1.1 name, queued signed from our report address to each usable
//! `rua` — an external rua only with its `_report._dmarc` authorization
//! (§7.1), never past a `!size` limit.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use common::*;
use mail_parser::MimeHeaders as _;
use mailstore_api::pb;
use test_dns::TestDns;

fn xsd() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/dmarc-rfc7489.xsd")
}

/// Validates `xml` against RFC 7489 Appendix C with xmllint.
fn validate(xml: &str) {
    let dir = tempfile_dir();
    let file = dir.join("report.xml");
    std::fs::write(&file, xml).unwrap();
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd())
        .arg(&file)
        .output()
        .expect("xmllint (Debian package libxml2-utils; scripts/test installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "report does not validate against RFC 7489 Appendix C:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "epistole-dmarc-{}-{:08x}",
        std::process::id(),
        rand_u32()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    u32::try_from(h.finish() & 0xffff_ffff).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn result(
    domain: &str,
    ip: &str,
    disposition: &str,
    dkim: &str,
    spf: &str,
    p: &str,
    rua: &[&str],
) -> pb::DmarcResult {
    pb::DmarcResult {
        policy_domain: domain.into(),
        header_from: domain.into(),
        envelope_from: format!("bounce.{domain}"),
        source_ip: ip.into(),
        disposition: disposition.into(),
        dkim_aligned: dkim.into(),
        spf_aligned: spf.into(),
        dkim: vec![pb::DmarcDkimAuth {
            domain: domain.into(),
            selector: "s1".into(),
            result: if dkim == "pass" { "pass" } else { "fail" }.into(),
        }],
        spf_domain: format!("bounce.{domain}"),
        spf_result: if spf == "pass" { "pass" } else { "softfail" }.into(),
        p: p.into(),
        sp: String::new(),
        adkim: "r".into(),
        aspf: "r".into(),
        pct: 100,
        fo: "0".into(),
        rua: rua.iter().map(|s| (*s).to_string()).collect(),
        count: 0,
        day: String::new(),
    }
}

async fn body(client: &mailstore_api::StoreClient, job_id: u64) -> Vec<u8> {
    test_kit::collect_body(
        client
            .queue
            .clone()
            .read_message(pb::ReadMessageRequest {
                job_id,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_days_results_become_schema_valid_reports_sent_to_authorized_rua() {
    let store = test_kit::TestStore::start().await;
    let client = store.client();
    let dns = TestDns::start().await;
    // ext.test authorizes reports about b.test only.
    dns.txt("b.test._report._dmarc.ext.test", "v=DMARC1");
    let rec = |r: pb::DmarcResult| {
        let mut c = client.dmarc_reports.clone();
        async move {
            c.record_dmarc_result(pb::RecordDmarcResultRequest { result: Some(r) })
                .await
                .unwrap();
        }
    };
    let rua_b = [
        "mailto:dmarc@b.test",
        "mailto:agg@ext.test",
        "mailto:tiny@b.test!100",
    ];
    // A day's traffic for b.test: three passing messages from one IP, two
    // failing (quarantined) from another, one rejected from IPv6.
    for _ in 0..3 {
        rec(result(
            "b.test",
            "192.0.2.10",
            "none",
            "pass",
            "pass",
            "quarantine",
            &rua_b,
        ))
        .await;
    }
    for _ in 0..2 {
        rec(result(
            "b.test",
            "198.51.100.7",
            "quarantine",
            "fail",
            "fail",
            "quarantine",
            &rua_b,
        ))
        .await;
    }
    rec(result(
        "b.test",
        "2001:db8::5",
        "reject",
        "fail",
        "fail",
        "quarantine",
        &rua_b,
    ))
    .await;
    // c.test asks for reports at ext.test, which does not authorize it.
    rec(result(
        "c.test",
        "192.0.2.10",
        "none",
        "pass",
        "pass",
        "none",
        &["mailto:agg@ext.test"],
    ))
    .await;
    // d.test publishes no rua: nothing is sent for it.
    rec(result(
        "d.test",
        "192.0.2.10",
        "none",
        "pass",
        "pass",
        "reject",
        &[],
    ))
    .await;
    // A bad record is refused, not stored.
    let mut bad = result("b.test", "192.0.2.10", "none", "maybe", "pass", "none", &[]);
    bad.policy_domain = String::new();
    assert_eq!(
        client
            .dmarc_reports
            .clone()
            .record_dmarc_result(pb::RecordDmarcResultRequest { result: Some(bad) })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );

    let today = chrono::Utc::now().date_naive();
    let rows = client
        .dmarc_reports
        .clone()
        .list_dmarc_results(pb::ListDmarcResultsRequest {
            day: today.to_string(),
            policy_domain: "b.test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(rows.len(), 3, "one row per distinct outcome: {rows:#?}");
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 6);

    let reporter = smtp_out::dmarc::Reporter {
        organization: "out.a.test".into(),
        from: "postmaster@a.test".into(),
        receiver: "out.a.test".into(),
    };
    let router = smtp_out::route::Router::new(
        Some(dns.addr),
        Duration::from_millis(500),
        25,
        HashMap::new(),
        smtp_out::destination::Policy::new(&["127.0.0.0/8".to_string()]).unwrap(),
    )
    .unwrap();
    let jobs = smtp_out::dmarc::send(&client, &router, &reporter, today)
        .await
        .unwrap();
    // b.test: its own address and the authorized external one; not the
    // address whose !100 limit the report exceeds. c.test: unauthorized.
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let mut to = Vec::new();
    for id in &jobs {
        let detail = job(&client, *id).await;
        let j = detail.job.unwrap();
        assert_eq!(j.mail_from, "postmaster@a.test");
        assert!(j.sign, "our own report is DKIM-signed");
        to.push(j.recipients[0].recipient.as_ref().unwrap().address.clone());
    }
    to.sort();
    assert_eq!(to, ["agg@ext.test", "dmarc@b.test"]);

    let raw = body(&client, jobs[0]).await;
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert!(
        msg.subject()
            .unwrap()
            .starts_with("Report Domain: b.test Submitter: out.a.test Report-ID: <"),
        "{:?}",
        msg.subject()
    );
    let part = msg.attachment(0).expect("the gzip attachment");
    let begin = today.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
    assert_eq!(
        part.attachment_name().unwrap(),
        format!("out.a.test!b.test!{begin}!{}.xml.gz", begin + 86_399)
    );
    let mut xml = String::new();
    flate2::read::GzDecoder::new(part.contents())
        .read_to_string(&mut xml)
        .unwrap();
    validate(&xml);

    // One record per source and outcome, with the day's counts.
    for (ip, count, disposition) in [
        ("192.0.2.10", 3, "none"),
        ("198.51.100.7", 2, "quarantine"),
        ("2001:db8:0:0:0:0:0:5", 1, "reject"),
    ] {
        let row = format!(
            "<source_ip>{ip}</source_ip>\n      <count>{count}</count>\n      \
             <policy_evaluated>\n        <disposition>{disposition}</disposition>"
        );
        assert!(xml.contains(&row), "{row} missing in\n{xml}");
    }
    assert_eq!(xml.matches("<record>").count(), 3, "{xml}");
    assert!(
        xml.contains("<p>quarantine</p>\n    <sp>quarantine</sp>"),
        "{xml}"
    );
    assert!(xml.contains(&format!("<begin>{begin}</begin>")), "{xml}");
}

#[test]
fn hostile_strings_stay_valid_xml() {
    let reporter = smtp_out::dmarc::Reporter {
        organization: "A & <B>".into(),
        from: "postmaster@a.test".into(),
        receiver: "out.a.test".into(),
    };
    let mut r = result("b.test", "not an ip", "bogus", "x", "y", "none", &[]);
    r.header_from = "</header_from><evil>\u{1}".into();
    r.dkim[0].selector = "\"]]>".into();
    let xml = smtp_out::dmarc::build_xml(&reporter, "b.test", 0, 86_399, "id<1>", &[r]);
    validate(&xml);
    assert!(
        xml.contains("<org_name>A &amp; &lt;B&gt;</org_name>"),
        "{xml}"
    );
    assert!(
        xml.contains("<header_from>&lt;/header_from&gt;&lt;evil&gt;</header_from>"),
        "{xml}"
    );
    assert!(xml.contains("<source_ip>0.0.0.0</source_ip>"), "{xml}");
}
