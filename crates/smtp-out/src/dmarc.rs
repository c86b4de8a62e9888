//! DMARC aggregate reports (RFC 7489 §7.2), sent like TLS-RPT reports.
//!
//! - smtp-in counts each inbound message's DMARC outcome in the store
//!   (`DmarcReports.RecordDmarcResult`) under its policy domain, with the
//!   domain's `rua` URIs as published.
//! - Once a day after 00:10 UTC, and at start ([`daily`]), the previous
//!   UTC day's rows become one report per policy domain that asked: the
//!   XML of RFC 7489 Appendix C ([`build_xml`]), gzip-compressed, attached
//!   as `receiver!policy-domain!begin!end.xml.gz` (§7.2.1.1), mailed from
//!   `--dmarc-report-from` to each `mailto:` rua through the store's
//!   outbound queue, DKIM-signed as our own mail (`sign`).
//! - A report larger than a URI's `!size` limit is not sent there (§6.2).
//! - A rua outside the policy domain is used only when
//!   `<policy-domain>._report._dmarc.<rua-domain>` TXT starts with
//!   `v=DMARC1` (§7.1, external destinations).
//! - One replica sends: the day is claimed with the store's Guard counter
//!   (`dmarc-sent`, one hit per day).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

use chrono::{NaiveDate, Utc};
use mailstore_api::{StoreClient, pb};

use crate::route::Router;

/// Who we are in reports (RFC 7489 Appendix C report_metadata).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// org_name (our host name unless configured).
    pub organization: String,
    /// Envelope and `From:` address of reports, and the report's email.
    pub from: String,
    /// Our host name: the receiver in file names and Message-IDs.
    pub receiver: String,
}

/// The namespace of RFC 7489 Appendix C.
pub const NAMESPACE: &str = "http://dmarc.org/dmarc-xml/0.1";

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 (§2.2): dropped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// `source_ip` in the form the schema's IPAddress pattern accepts: dotted
/// quad, or eight full IPv6 groups (the pattern has no `::`).
#[must_use]
pub fn schema_ip(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6
                .segments()
                .iter()
                .map(|s| format!("{s:x}"))
                .collect::<Vec<_>>()
                .join(":"),
        },
        Err(_) => "0.0.0.0".into(),
    }
}

fn one_of<'a>(v: &'a str, allowed: &[&'a str], default: &'a str) -> &'a str {
    if allowed.contains(&v) { v } else { default }
}

/// The RFC 7489 Appendix C report of `domain` for `[begin, end]` (seconds
/// since the epoch) from the day's rows of that domain.
#[must_use]
pub fn build_xml(
    reporter: &Reporter,
    domain: &str,
    begin: i64,
    end: i64,
    report_id: &str,
    results: &[pb::DmarcResult],
) -> String {
    let rows: Vec<&pb::DmarcResult> = results
        .iter()
        .filter(|r| r.policy_domain == domain)
        .collect();
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, "<feedback xmlns=\"{NAMESPACE}\">");
    // RFC 7489 Appendix C: `version` comes first in `feedback`.
    x.push_str("  <version>1.0</version>\n");
    let _ = writeln!(
        x,
        "  <report_metadata>\n    <org_name>{}</org_name>\n    <email>{}</email>\n    \
         <report_id>{}</report_id>\n    <date_range>\n      <begin>{begin}</begin>\n      \
         <end>{end}</end>\n    </date_range>\n  </report_metadata>",
        esc(&reporter.organization),
        esc(&reporter.from),
        esc(report_id),
    );
    // The policy as last seen that day (rows are per outcome; the policy
    // rarely changes within a day).
    let dispositions = ["none", "quarantine", "reject"];
    if let Some(p) = rows.last() {
        let _ = writeln!(
            x,
            "  <policy_published>\n    <domain>{}</domain>\n    <adkim>{}</adkim>\n    \
             <aspf>{}</aspf>\n    <p>{}</p>\n    <sp>{}</sp>\n    <pct>{}</pct>\n    \
             <fo>{}</fo>\n  </policy_published>",
            esc(domain),
            one_of(&p.adkim, &["r", "s"], "r"),
            one_of(&p.aspf, &["r", "s"], "r"),
            one_of(&p.p, &dispositions, "none"),
            one_of(&p.sp, &dispositions, one_of(&p.p, &dispositions, "none")),
            p.pct.min(100),
            esc(if p.fo.is_empty() { "0" } else { &p.fo }),
        );
    }
    // Rows that differ only in the rua or policy text are one record.
    let mut records: BTreeMap<String, (u64, &pb::DmarcResult)> = BTreeMap::new();
    for r in &rows {
        let key = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{:?}\u{1f}{}\u{1f}{}",
            r.source_ip,
            r.disposition,
            r.dkim_aligned,
            r.spf_aligned,
            r.header_from,
            r.envelope_from,
            r.dkim
                .iter()
                .map(|d| (&d.domain, &d.selector, &d.result))
                .collect::<Vec<_>>(),
            r.spf_domain,
            r.spf_result
        );
        records.entry(key).or_insert((0, r)).0 += r.count;
    }
    let dkim_results = [
        "none",
        "pass",
        "fail",
        "policy",
        "neutral",
        "temperror",
        "permerror",
    ];
    let spf_results = [
        "none",
        "neutral",
        "pass",
        "fail",
        "softfail",
        "temperror",
        "permerror",
    ];
    for (count, r) in records.values() {
        let _ = writeln!(
            x,
            "  <record>\n    <row>\n      <source_ip>{}</source_ip>\n      <count>{count}</count>\n      \
             <policy_evaluated>\n        <disposition>{}</disposition>\n        <dkim>{}</dkim>\n        \
             <spf>{}</spf>\n      </policy_evaluated>\n    </row>\n    <identifiers>\n      \
             <envelope_from>{}</envelope_from>\n      <header_from>{}</header_from>\n    \
             </identifiers>\n    <auth_results>",
            schema_ip(&r.source_ip),
            one_of(&r.disposition, &dispositions, "none"),
            one_of(&r.dkim_aligned, &["pass", "fail"], "fail"),
            one_of(&r.spf_aligned, &["pass", "fail"], "fail"),
            // RFC 7489 Appendix C IdentifierType: envelope_from is required.
            esc(&r.envelope_from),
            esc(&r.header_from),
        );
        for d in &r.dkim {
            let _ = write!(
                x,
                "      <dkim>\n        <domain>{}</domain>\n",
                esc(&d.domain)
            );
            if !d.selector.is_empty() {
                let _ = writeln!(x, "        <selector>{}</selector>", esc(&d.selector));
            }
            let _ = writeln!(
                x,
                "        <result>{}</result>\n      </dkim>",
                one_of(&d.result, &dkim_results, "permerror")
            );
        }
        // The schema wants at least one SPF result: the MAIL FROM domain
        // (the HELO domain for the null sender), "none" when unchecked.
        let spf_domain = if r.spf_domain.is_empty() {
            &r.envelope_from
        } else {
            &r.spf_domain
        };
        let _ = writeln!(
            x,
            "      <spf>\n        <domain>{}</domain>\n        <scope>mfrom</scope>\n        \
             <result>{}</result>\n      </spf>\n    </auth_results>\n  </record>",
            esc(spf_domain),
            one_of(&r.spf_result, &spf_results, "none"),
        );
    }
    x.push_str("</feedback>\n");
    x
}

/// gzip of the XML (RFC 7489 §7.2.1.1: gzip is the compression to use).
#[must_use]
pub fn gzip(xml: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(xml.as_bytes());
    enc.finish().unwrap_or_default()
}

/// The attachment name (RFC 7489 §7.2.1.1):
/// `receiver "!" policy-domain "!" begin "!" end ".xml.gz"`.
#[must_use]
pub fn file_name(receiver: &str, domain: &str, begin: i64, end: i64) -> String {
    format!("{receiver}!{domain}!{begin}!{end}.xml.gz")
}

/// A `mailto:` rua URI (RFC 7489 §6.2 dmarc-uri: `URI [ "!" size ]`, size
/// with an optional k/m/g/t unit): the address and the size limit in
/// bytes. `None` for other schemes or no address.
#[must_use]
pub fn parse_rua(uri: &str) -> Option<(String, Option<u64>)> {
    let uri = uri.trim();
    let (uri, size) = match uri.rsplit_once('!') {
        Some((u, s)) => (u, parse_size(s)),
        None => (uri, None),
    };
    let rest = uri
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("mailto:"))
        .map(|_| &uri[7..])?;
    // Only the address: ?headers are ignored.
    let addr = rest.split('?').next().unwrap_or_default();
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || addr.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    Some((addr.to_string(), size))
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Is `rua_domain` outside the policy domain (RFC 7489 §7.1)? The same
/// domain, or a subdomain of it, needs no verification.
#[must_use]
pub fn is_external(policy_domain: &str, rua_domain: &str) -> bool {
    let p = policy_domain.trim_end_matches('.').to_ascii_lowercase();
    let r = rua_domain.trim_end_matches('.').to_ascii_lowercase();
    !(r == p || r.ends_with(&format!(".{p}")))
}

/// Does a `<policy-domain>._report._dmarc.<rua-domain>` TXT record accept
/// reports (RFC 7489 §7.1: it must begin with `v=DMARC1`)?
#[must_use]
pub fn accepts_external(txt: &str) -> bool {
    let t = txt.trim_start();
    let Some(rest) = t
        .get(..8)
        .filter(|v| v.eq_ignore_ascii_case("v=DMARC1"))
        .map(|_| t[8..].trim_start())
    else {
        return false;
    };
    rest.is_empty() || rest.starts_with(';')
}

/// The report message (RFC 7489 §7.2.1.1): `Subject: Report Domain: …
/// Submitter: … Report-ID: <…>`, a short text and the gzip attachment.
#[must_use]
pub fn message(
    reporter: &Reporter,
    to: &str,
    domain: &str,
    report_id: &str,
    filename: &str,
    gz: &[u8],
) -> Vec<u8> {
    use base64::Engine as _;
    let boundary = format!("dmarc-{report_id}");
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
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is a DMARC aggregate report from {sub} for {domain} (RFC 7489).\r\n\r\n\
         --{boundary}\r\nContent-Type: application/gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{body}\r\n\
         --{boundary}--\r\n",
        from = reporter.from,
        date = Utc::now().to_rfc2822(),
        sub = reporter.receiver,
    )
    .into_bytes()
}

async fn txt(router: &Router, name: &str) -> Vec<String> {
    match router.resolver().txt_lookup(name).await {
        Ok(t) => t
            .answers()
            .iter()
            .filter_map(|a| match &a.data {
                hickory_resolver::proto::rr::RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Builds and sends the reports of `day`: one per policy domain with rows
/// and a usable `rua`; returns the outbound job ids queued.
///
/// # Errors
/// A store error (each report is one enqueue: nothing is half-sent).
pub async fn send(
    store: &StoreClient,
    router: &Router,
    reporter: &Reporter,
    day: NaiveDate,
) -> Result<Vec<u64>, tonic::Status> {
    let results = store
        .dmarc_reports
        .clone()
        .list_dmarc_results(pb::ListDmarcResultsRequest {
            day: day.to_string(),
            policy_domain: String::new(),
        })
        .await?
        .into_inner()
        .results;
    let mut domains: Vec<&str> = results.iter().map(|r| r.policy_domain.as_str()).collect();
    domains.dedup();
    let begin = day
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp());
    let end = begin + 86_399;
    let mut jobs = Vec::new();
    for domain in domains {
        let mut rua: Vec<&str> = results
            .iter()
            .filter(|r| r.policy_domain == domain)
            .flat_map(|r| r.rua.iter().map(String::as_str))
            .collect();
        rua.sort_unstable();
        rua.dedup();
        if rua.is_empty() {
            continue;
        }
        let report_id = format!("{day}.{domain}.{:08x}", rand::random::<u32>());
        let xml = build_xml(reporter, domain, begin, end, &report_id, &results);
        let gz = gzip(&xml);
        let filename = file_name(&reporter.receiver, domain, begin, end);
        for uri in rua {
            let Some((to, limit)) = parse_rua(uri) else {
                tracing::info!(%domain, %uri, "DMARC: rua not usable (mailto: only)");
                continue;
            };
            let raw = message(reporter, &to, domain, &report_id, &filename, &gz);
            if limit.is_some_and(|l| (raw.len() as u64) > l) {
                tracing::info!(%domain, %uri, size = raw.len(), "DMARC report over the rua size limit");
                continue;
            }
            let rua_domain = to.rsplit_once('@').map_or("", |(_, d)| d);
            if is_external(domain, rua_domain) {
                let name = format!("{domain}._report._dmarc.{rua_domain}.");
                if !txt(router, &name).await.iter().any(|t| accepts_external(t)) {
                    tracing::info!(%domain, %uri, "DMARC: external rua not authorized (RFC 7489 §7.1)");
                    continue;
                }
            }
            jobs.push(
                crate::reports::enqueue(
                    store,
                    &reporter.from,
                    &to,
                    format!("dmarc:{report_id}:{}", to.to_ascii_lowercase()),
                    raw,
                )
                .await?,
            );
        }
    }
    Ok(jobs)
}

/// Sends yesterday's reports shortly after each UTC midnight; one replica
/// per day (Guard counter `dmarc-sent`).
pub(crate) async fn daily(
    store: StoreClient,
    worker: std::sync::Arc<crate::worker::Worker>,
    reporter: Reporter,
    shutdown: service_kit::Shutdown,
) {
    let (store, router, reporter) = (&store, &worker.router, &reporter);
    crate::reports::every_day(store, "dmarc-sent", 10, &shutdown, |day| async move {
        match send(store, router, reporter, day).await {
            Ok(jobs) => tracing::info!(%day, mailed = jobs.len(), "DMARC reports sent"),
            Err(e) => tracing::warn!(%day, error = %e.message(), "DMARC reports not sent"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_sizes_and_external_destinations() {
        assert_eq!(
            parse_rua("mailto:dmarc@b.test!10m"),
            Some(("dmarc@b.test".into(), Some(10 << 20)))
        );
        assert_eq!(
            parse_rua("MAILTO:d@b.test"),
            Some(("d@b.test".into(), None))
        );
        assert_eq!(
            parse_rua("mailto:d@b.test!50"),
            Some(("d@b.test".into(), Some(50)))
        );
        assert_eq!(parse_rua("https://b.test/r"), None);
        assert_eq!(parse_rua("mailto:nobody"), None);
        assert!(!is_external("b.test", "b.test"));
        assert!(!is_external("b.test", "reports.b.test"));
        assert!(is_external("b.test", "c.test"));
        assert!(is_external("b.test", "xb.test"));
        assert!(accepts_external("v=DMARC1"));
        assert!(accepts_external("v=DMARC1; rua=mailto:x@c.test"));
        assert!(!accepts_external("v=DMARC10"));
        assert!(!accepts_external("v=spf1 -all"));
        assert_eq!(
            file_name("mx.a.test", "b.test", 86_400, 172_799),
            "mx.a.test!b.test!86400!172799.xml.gz"
        );
        assert_eq!(schema_ip("::1"), "0:0:0:0:0:0:0:1");
        assert_eq!(schema_ip("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(esc("a<&>\"'\u{1}b"), "a&lt;&amp;&gt;&quot;&apos;b");
    }
}
