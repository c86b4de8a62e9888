//! Incoming DMARC aggregate reports (RFC 7489 §7.2): a message to the
//! configured report address (`--dmarc-report-address`) is parsed — gzip,
//! zip or plain XML attachment, by mail-auth — and stored in the store
//! (`DmarcReports.StoreAggregateReport`), where `mailctl dmarc report`
//! shows it. The message is delivered as usual too. Parsing never fails
//! delivery: a message that is no report is logged and left alone.

use mailstore_api::pb;

/// Largest message read for parsing (the store's message limit is higher;
/// real aggregate reports are far smaller).
pub const MAX_REPORT_MESSAGE: u64 = 10 * 1024 * 1024;
/// Largest uncompressed XML mail-auth inflates.
const MAX_XML: usize = 50 * 1024 * 1024;

fn dmarc_result(r: &mail_auth::report::DmarcResult) -> String {
    match r {
        mail_auth::report::DmarcResult::Pass => "pass",
        mail_auth::report::DmarcResult::Fail => "fail",
        mail_auth::report::DmarcResult::Unspecified => "",
    }
    .into()
}

/// The report in `raw` as the store keeps it, or why it is none.
///
/// # Errors
/// The message holds no aggregate report mail-auth can read.
pub fn parse(raw: &[u8]) -> Result<pb::AggregateReport, String> {
    let report = mail_auth::report::Report::parse_rfc5322(raw, MAX_XML)
        .map_err(|e| format!("not a DMARC aggregate report: {e:?}"))?;
    let text = |s: &str| -> String { s.chars().filter(|c| *c != '\0').take(1024).collect() };
    let rows = report
        .records()
        .iter()
        .take(MAX_ROWS)
        .map(|r| pb::AggregateReportRow {
            source_ip: r.source_ip().map(|ip| ip.to_string()).unwrap_or_default(),
            count: u64::from(r.count()),
            disposition: r.action_disposition().to_string(),
            dkim_aligned: dmarc_result(&r.dmarc_dkim_result()),
            spf_aligned: dmarc_result(&r.dmarc_spf_result()),
            header_from: text(r.header_from()),
            dkim: r
                .dkim_auth_result()
                .iter()
                .take(16)
                .map(|d| text(&format!("{}={}", d.domain(), d.result())))
                .collect(),
            spf: r
                .spf_auth_result()
                .iter()
                .take(16)
                .map(|s| text(&format!("{}={}", s.domain(), s.result())))
                .collect(),
        })
        .collect();
    Ok(pb::AggregateReport {
        org_name: text(report.org_name()),
        email: text(report.email()),
        report_id: text(report.report_id()),
        domain: text(report.domain()),
        begin: report.date_range_begin(),
        end: report.date_range_end(),
        rows,
        received_at: 0,
    })
}

/// Most rows stored of one report (the store's limit).
pub const MAX_ROWS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_report() {
        assert!(parse(b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n").is_err());
    }
}
