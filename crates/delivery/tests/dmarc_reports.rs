//! Incoming DMARC aggregate reports (RFC 7489 §7.2): a report another
//! receiver mails about one of our domains — gzip XML attachment — is
//! parsed and stored in a real store, once however often it arrives.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use base64::Engine as _;
use mailstore_api::pb;

const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<feedback>
  <report_metadata>
    <org_name>receiver.example</org_name>
    <email>noreply-dmarc@receiver.example</email>
    <report_id>r-42</report_id>
    <date_range><begin>1700000000</begin><end>1700086399</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>ours.example</domain><adkim>r</adkim><aspf>r</aspf>
    <p>reject</p><sp>reject</sp><pct>100</pct><fo>0</fo>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip><count>12</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated>
    </row>
    <identifiers><header_from>ours.example</header_from></identifiers>
    <auth_results>
      <dkim><domain>ours.example</domain><selector>s1</selector><result>pass</result></dkim>
      <spf><domain>ours.example</domain><scope>mfrom</scope><result>pass</result></spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>203.0.113.9</source_ip><count>3</count>
      <policy_evaluated><disposition>reject</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated>
    </row>
    <identifiers><header_from>ours.example</header_from></identifiers>
    <auth_results>
      <spf><domain>spoof.example</domain><scope>mfrom</scope><result>fail</result></spf>
    </auth_results>
  </record>
</feedback>
"#;

fn report_message() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(XML.as_bytes()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let mut body = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        body.push_str(std::str::from_utf8(chunk).unwrap());
        body.push_str("\r\n");
    }
    format!(
        "From: noreply-dmarc@receiver.example\r\nTo: dmarc@ours.example\r\n\
         Subject: Report Domain: ours.example Submitter: receiver.example Report-ID: <r-42>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nreport\r\n\
         --b\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"receiver.example!ours.example!1700000000!1700086399.xml.gz\"\r\n\r\n\
         {body}--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn an_incoming_gzip_report_is_parsed_and_stored_once() {
    let report = delivery::dmarc::parse(&report_message()).unwrap();
    assert_eq!(report.org_name, "receiver.example");
    assert_eq!(report.domain, "ours.example");
    assert_eq!(report.report_id, "r-42");
    assert_eq!((report.begin, report.end), (1_700_000_000, 1_700_086_399));
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.rows[0].source_ip, "192.0.2.10");
    assert_eq!(report.rows[0].count, 12);
    assert_eq!(report.rows[0].dkim, ["ours.example=pass"]);
    assert_eq!(report.rows[1].disposition, "reject");
    assert_eq!(report.rows[1].spf, ["spoof.example=fail"]);

    let store = test_kit::TestStore::start().await;
    let client = store.client();
    for expect_duplicate in [false, true] {
        let r = client
            .dmarc_reports
            .clone()
            .store_aggregate_report(pb::StoreAggregateReportRequest {
                report: Some(report.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.duplicate, expect_duplicate);
    }
    let listed = client
        .dmarc_reports
        .clone()
        .list_aggregate_reports(pb::ListAggregateReportsRequest {
            domain: "ours.example".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .reports;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].rows, report.rows);
    assert!(listed[0].received_at > 0);
}
