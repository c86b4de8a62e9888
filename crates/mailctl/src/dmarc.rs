//! `mailctl dmarc report [--domain D]`: the DMARC aggregate reports other
//! receivers sent about our domains (RFC 7489 §7.2), as delivery stored
//! them: per report, per source IP the message count, the disposition the
//! receiver applied and the DKIM/SPF results.

use clap::Subcommand;
use mailstore_api::{StoreClient, pb};

#[derive(Subcommand, Debug)]
pub enum DmarcCmd {
    /// Stored incoming aggregate reports, newest first.
    Report {
        /// Only reports about this domain.
        #[arg(long)]
        domain: Option<String>,
        /// At most this many reports.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || secs.to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Runs a `dmarc` command.
///
/// # Errors
/// A store error or a failed write.
pub async fn command(
    c: &StoreClient,
    cmd: DmarcCmd,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let DmarcCmd::Report { domain, limit } = cmd;
    let reports = c
        .dmarc_reports
        .clone()
        .list_aggregate_reports(pb::ListAggregateReportsRequest {
            domain: domain.unwrap_or_default(),
            limit,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner()
        .reports;
    if reports.is_empty() {
        writeln!(out, "no DMARC aggregate reports")?;
    }
    for r in reports {
        writeln!(
            out,
            "{} from {} <{}> report {} ({} to {} UTC)",
            r.domain,
            or_dash(&r.org_name),
            or_dash(&r.email),
            r.report_id,
            date(r.begin),
            date(r.end)
        )?;
        writeln!(
            out,
            "  {:<39} {:>7}  {:<10} {:<4} {:<4} auth results",
            "source ip", "count", "policy", "dkim", "spf"
        )?;
        for row in &r.rows {
            let auth: Vec<String> = row
                .dkim
                .iter()
                .map(|d| format!("dkim:{d}"))
                .chain(row.spf.iter().map(|s| format!("spf:{s}")))
                .collect();
            writeln!(
                out,
                "  {:<39} {:>7}  {:<10} {:<4} {:<4} {}",
                or_dash(&row.source_ip),
                row.count,
                or_dash(&row.disposition),
                or_dash(&row.dkim_aligned),
                or_dash(&row.spf_aligned),
                auth.join(" ")
            )?;
        }
        let total: u64 = r.rows.iter().map(|x| x.count).sum();
        let passed: u64 = r
            .rows
            .iter()
            .filter(|x| x.dkim_aligned == "pass" || x.spf_aligned == "pass")
            .map(|x| x.count)
            .sum();
        writeln!(out, "  {total} messages, {passed} passed DMARC")?;
    }
    Ok(())
}
