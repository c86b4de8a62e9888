//! DmarcReports service (`proto/mailstore/v1/dmarc.proto`): the results of
//! inbound DMARC checks per UTC day and policy domain, from which the daily
//! aggregate report (RFC 7489 §7.2) is built, and the aggregate reports
//! other receivers send about our domains.
//!
//! - A record is one `INSERT … ON CONFLICT DO UPDATE SET count = count + n`
//!   keyed by (day, policy domain, md5 of the fields that tell outcomes
//!   apart): every smtp-in replica counts into the same rows.
//! - The day is the database's `current_date` in UTC.
//! - Sizes are bounded (names 255 bytes, other strings 1 KiB, at most 16
//!   rua URIs, 16 DKIM results, 10,000 rows per incoming report).

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::db::Store;
use crate::error::{Result, StoreError};

/// Longest domain name (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Longest other string.
pub const MAX_TEXT: usize = 1024;
/// Most rua URIs or DKIM results per result, auth results per row.
pub const MAX_LIST: usize = 16;
/// Most rows stored of one incoming report.
pub const MAX_ROWS: usize = 10_000;

const DISPOSITIONS: [&str; 3] = ["none", "quarantine", "reject"];
const ALIGNED: [&str; 2] = ["pass", "fail"];

pub struct DmarcReportsSvc {
    store: Arc<Store>,
}

impl DmarcReportsSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.contains('\0')
}

fn check(r: &pb::DmarcResult) -> Result<()> {
    let name_ok =
        |s: &str| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control);
    if !name_ok(&r.policy_domain) || !name_ok(&r.header_from) {
        return Err(StoreError::invalid(
            "policy_domain and header_from must be 1 to 255 bytes",
        ));
    }
    if !DISPOSITIONS.contains(&r.disposition.as_str())
        || !DISPOSITIONS.contains(&r.p.as_str())
        || !(r.sp.is_empty() || DISPOSITIONS.contains(&r.sp.as_str()))
    {
        return Err(StoreError::invalid(
            "disposition, p and sp must be none, quarantine or reject",
        ));
    }
    if !ALIGNED.contains(&r.dkim_aligned.as_str()) || !ALIGNED.contains(&r.spf_aligned.as_str()) {
        return Err(StoreError::invalid("aligned results must be pass or fail"));
    }
    if r.rua.len() > MAX_LIST || r.dkim.len() > MAX_LIST {
        return Err(StoreError::invalid("at most 16 rua URIs and DKIM results"));
    }
    let mut strings: Vec<&str> = vec![
        &r.envelope_from,
        &r.source_ip,
        &r.spf_domain,
        &r.spf_result,
        &r.adkim,
        &r.aspf,
        &r.fo,
    ];
    strings.extend(r.rua.iter().map(String::as_str));
    for d in &r.dkim {
        strings.extend([d.domain.as_str(), &d.selector, &d.result]);
    }
    if !strings.iter().all(|s| text_ok(s, MAX_TEXT)) {
        return Err(StoreError::invalid(
            "strings must be at most 1024 bytes, without NUL",
        ));
    }
    if r.pct > 100 {
        return Err(StoreError::invalid("pct must be 0 to 100"));
    }
    Ok(())
}

async fn record(pool: &PgPool, r: pb::DmarcResult) -> Result<()> {
    check(&r)?;
    let lower = |s: &str| s.trim_end_matches('.').to_lowercase();
    let domain = lower(&r.policy_domain);
    let header_from = lower(&r.header_from);
    let envelope_from = lower(&r.envelope_from);
    let spf_domain = lower(&r.spf_domain);
    let dkim_domains: Vec<String> = r.dkim.iter().map(|d| lower(&d.domain)).collect();
    let dkim_selectors: Vec<String> = r.dkim.iter().map(|d| d.selector.clone()).collect();
    let dkim_results: Vec<String> = r.dkim.iter().map(|d| d.result.clone()).collect();
    let sp = if r.sp.is_empty() { r.p.clone() } else { r.sp };
    let count = i64::try_from(r.count.max(1)).unwrap_or(1);
    let fingerprint_source = [
        header_from.as_str(),
        &envelope_from,
        &r.source_ip,
        &r.disposition,
        &r.dkim_aligned,
        &r.spf_aligned,
        &dkim_domains.join(","),
        &dkim_selectors.join(","),
        &dkim_results.join(","),
        &spf_domain,
        &r.spf_result,
        &r.p,
        &sp,
        &r.adkim,
        &r.aspf,
        &r.pct.to_string(),
        &r.fo,
        &r.rua.join(","),
    ]
    // U+001F (unit separator) between fields; NUL is refused by check().
    .join("\u{1f}");
    let pct = i32::try_from(r.pct).unwrap_or(100);
    sqlx::query!(
        "INSERT INTO dmarc_results AS t (day, policy_domain, fingerprint, header_from, \
             envelope_from, source_ip, disposition, dkim_aligned, spf_aligned, dkim_domains, \
             dkim_selectors, dkim_results, spf_domain, spf_result, p, sp, adkim, aspf, pct, fo, \
             rua, count) \
         VALUES ((now() AT TIME ZONE 'UTC')::date, $1, md5($2), $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
         ON CONFLICT (day, policy_domain, fingerprint) DO UPDATE SET count = t.count + $21",
        domain,
        fingerprint_source,
        header_from,
        envelope_from,
        r.source_ip,
        r.disposition,
        r.dkim_aligned,
        r.spf_aligned,
        &dkim_domains,
        &dkim_selectors,
        &dkim_results,
        spf_domain,
        r.spf_result,
        r.p,
        sp,
        r.adkim,
        r.aspf,
        pct,
        r.fo,
        &r.rua,
        count,
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn list(
    pool: &PgPool,
    req: pb::ListDmarcResultsRequest,
) -> Result<pb::ListDmarcResultsResponse> {
    let day = chrono::NaiveDate::parse_from_str(&req.day, "%Y-%m-%d")
        .map_err(|_| StoreError::invalid("day must be YYYY-MM-DD"))?;
    let domain = req.policy_domain.trim_end_matches('.').to_lowercase();
    let rows = sqlx::query!(
        "SELECT policy_domain, header_from, envelope_from, source_ip, disposition, \
                dkim_aligned, spf_aligned, dkim_domains, dkim_selectors, dkim_results, \
                spf_domain, spf_result, p, sp, adkim, aspf, pct, fo, rua, count \
         FROM dmarc_results WHERE day = $1 AND ($2 = '' OR policy_domain = $2) \
         ORDER BY policy_domain, source_ip, fingerprint",
        day,
        domain
    )
    .fetch_all(pool)
    .await?;
    Ok(pb::ListDmarcResultsResponse {
        results: rows
            .into_iter()
            .map(|r| pb::DmarcResult {
                policy_domain: r.policy_domain,
                header_from: r.header_from,
                envelope_from: r.envelope_from,
                source_ip: r.source_ip,
                disposition: r.disposition,
                dkim_aligned: r.dkim_aligned,
                spf_aligned: r.spf_aligned,
                dkim: r
                    .dkim_domains
                    .into_iter()
                    .zip(r.dkim_selectors)
                    .zip(r.dkim_results)
                    .map(|((domain, selector), result)| pb::DmarcDkimAuth {
                        domain,
                        selector,
                        result,
                    })
                    .collect(),
                spf_domain: r.spf_domain,
                spf_result: r.spf_result,
                p: r.p,
                sp: r.sp,
                adkim: r.adkim,
                aspf: r.aspf,
                pct: u32::try_from(r.pct).unwrap_or(100),
                fo: r.fo,
                rua: r.rua,
                count: u64::try_from(r.count).unwrap_or(0),
                day: day.to_string(),
            })
            .collect(),
    })
}

fn check_report(r: &pb::AggregateReport) -> Result<()> {
    if r.domain.is_empty() || r.domain.len() > MAX_NAME || r.report_id.is_empty() {
        return Err(StoreError::invalid("domain and report_id are required"));
    }
    if r.rows.len() > MAX_ROWS {
        return Err(StoreError::invalid("at most 10000 rows per report"));
    }
    let mut strings: Vec<&str> = vec![&r.org_name, &r.email, &r.report_id, &r.domain];
    for row in &r.rows {
        if row.dkim.len() > MAX_LIST || row.spf.len() > MAX_LIST {
            return Err(StoreError::invalid("at most 16 auth results per row"));
        }
        strings.extend([
            row.source_ip.as_str(),
            &row.disposition,
            &row.dkim_aligned,
            &row.spf_aligned,
            &row.header_from,
        ]);
        strings.extend(row.dkim.iter().chain(&row.spf).map(String::as_str));
    }
    if !strings.iter().all(|s| text_ok(s, MAX_TEXT)) {
        return Err(StoreError::invalid(
            "strings must be at most 1024 bytes, without NUL",
        ));
    }
    Ok(())
}

async fn store_report(pool: &PgPool, r: pb::AggregateReport) -> Result<bool> {
    check_report(&r)?;
    let domain = r.domain.trim_end_matches('.').to_lowercase();
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO dmarc_reports (org_name, email, report_id, domain, begin_at, end_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (org_name, report_id, domain) DO NOTHING RETURNING id",
        r.org_name,
        r.email,
        r.report_id,
        domain,
        i64::try_from(r.begin).unwrap_or(i64::MAX),
        i64::try_from(r.end).unwrap_or(i64::MAX),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Ok(true);
    };
    for (n, row) in r.rows.iter().enumerate() {
        sqlx::query!(
            "INSERT INTO dmarc_report_rows (report, n, source_ip, count, disposition, \
                 dkim_aligned, spf_aligned, header_from, dkim, spf) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            id,
            i32::try_from(n).unwrap_or(i32::MAX),
            row.source_ip,
            i64::try_from(row.count).unwrap_or(i64::MAX),
            row.disposition,
            row.dkim_aligned,
            row.spf_aligned,
            row.header_from,
            &row.dkim,
            &row.spf,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(false)
}

async fn list_reports(
    pool: &PgPool,
    req: pb::ListAggregateReportsRequest,
) -> Result<pb::ListAggregateReportsResponse> {
    let domain = req.domain.trim_end_matches('.').to_lowercase();
    let limit = i64::from(if req.limit == 0 {
        100
    } else {
        req.limit.min(1000)
    });
    let reports = sqlx::query!(
        "SELECT id, org_name, email, report_id, domain, begin_at, end_at, \
                extract(epoch FROM received_at)::bigint AS \"received!\" \
         FROM dmarc_reports WHERE ($1 = '' OR domain = $1) \
         ORDER BY received_at DESC, id DESC LIMIT $2",
        domain,
        limit
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = reports.iter().map(|r| r.id).collect();
    let rows = sqlx::query!(
        "SELECT report, source_ip, count, disposition, dkim_aligned, spf_aligned, header_from, \
                dkim, spf \
         FROM dmarc_report_rows WHERE report = ANY($1) ORDER BY report, n",
        &ids
    )
    .fetch_all(pool)
    .await?;
    Ok(pb::ListAggregateReportsResponse {
        reports: reports
            .into_iter()
            .map(|r| pb::AggregateReport {
                rows: rows
                    .iter()
                    .filter(|row| row.report == r.id)
                    .map(|row| pb::AggregateReportRow {
                        source_ip: row.source_ip.clone(),
                        count: u64::try_from(row.count).unwrap_or(0),
                        disposition: row.disposition.clone(),
                        dkim_aligned: row.dkim_aligned.clone(),
                        spf_aligned: row.spf_aligned.clone(),
                        header_from: row.header_from.clone(),
                        dkim: row.dkim.clone(),
                        spf: row.spf.clone(),
                    })
                    .collect(),
                org_name: r.org_name,
                email: r.email,
                report_id: r.report_id,
                domain: r.domain,
                begin: u64::try_from(r.begin_at).unwrap_or(0),
                end: u64::try_from(r.end_at).unwrap_or(0),
                received_at: r.received,
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl pb::dmarc_reports_server::DmarcReports for DmarcReportsSvc {
    async fn record_dmarc_result(
        &self,
        req: Request<pb::RecordDmarcResultRequest>,
    ) -> Result<Response<pb::RecordDmarcResultResponse>, Status> {
        let r = req
            .into_inner()
            .result
            .ok_or_else(|| StoreError::invalid("result missing"))?;
        record(self.pool(), r).await?;
        Ok(Response::new(pb::RecordDmarcResultResponse {}))
    }

    async fn list_dmarc_results(
        &self,
        req: Request<pb::ListDmarcResultsRequest>,
    ) -> Result<Response<pb::ListDmarcResultsResponse>, Status> {
        Ok(Response::new(list(self.pool(), req.into_inner()).await?))
    }

    async fn store_aggregate_report(
        &self,
        req: Request<pb::StoreAggregateReportRequest>,
    ) -> Result<Response<pb::StoreAggregateReportResponse>, Status> {
        let r = req
            .into_inner()
            .report
            .ok_or_else(|| StoreError::invalid("report missing"))?;
        let duplicate = store_report(self.pool(), r).await?;
        Ok(Response::new(pb::StoreAggregateReportResponse {
            duplicate,
        }))
    }

    async fn list_aggregate_reports(
        &self,
        req: Request<pb::ListAggregateReportsRequest>,
    ) -> Result<Response<pb::ListAggregateReportsResponse>, Status> {
        Ok(Response::new(
            list_reports(self.pool(), req.into_inner()).await?,
        ))
    }
}
