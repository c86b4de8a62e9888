//! TlsReports service (`proto/mailstore/v1/tlsrpt.proto`): counts of
//! outbound TLS outcomes per UTC day and policy domain, from which the
//! daily TLS-RPT report (RFC 8460 §4.4) is built.
//!
//! - A record is one `INSERT … ON CONFLICT DO UPDATE SET count = count + 1`
//!   keyed by (day, policy domain, md5 of the fields that tell outcomes
//!   apart): replicas of smtp-out count into the same rows.
//! - The day is the database's `current_date` in UTC, so every replica
//!   agrees on it.
//! - Sizes are bounded (a policy text is 64 lines of at most 1 KiB).

use std::sync::Arc;

use mailstore_api::pb;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::db::Store;
use crate::error::{Result, StoreError};

/// Longest domain or host name (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Longest other string.
pub const MAX_TEXT: usize = 1024;
/// Most policy strings per result.
pub const MAX_POLICY_STRINGS: usize = 64;

const POLICY_TYPES: [&str; 3] = ["sts", "tlsa", "no-policy-found"];

pub struct TlsReportsSvc {
    store: Arc<Store>,
}

impl TlsReportsSvc {
    #[must_use]
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

fn check(r: &pb::TlsResult) -> Result<()> {
    let name_ok =
        |s: &str| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control);
    if !name_ok(&r.policy_domain) {
        return Err(StoreError::invalid("policy_domain must be 1 to 255 bytes"));
    }
    if !POLICY_TYPES.contains(&r.policy_type.as_str()) {
        return Err(StoreError::invalid(
            "policy_type must be sts, tlsa or no-policy-found",
        ));
    }
    if r.mx_host.len() > MAX_NAME {
        return Err(StoreError::invalid("mx_host must be at most 255 bytes"));
    }
    if r.policy_strings.len() > MAX_POLICY_STRINGS
        || r.policy_strings.iter().any(|s| s.len() > MAX_TEXT)
    {
        return Err(StoreError::invalid(
            "at most 64 policy strings of at most 1024 bytes",
        ));
    }
    let strings = r.policy_strings.iter().chain([
        &r.policy_domain,
        &r.mx_host,
        &r.result_type,
        &r.sending_ip,
        &r.receiving_ip,
        &r.receiving_mx_helo,
        &r.failure_reason,
    ]);
    if strings.clone().any(|s| s.contains('\0')) {
        // PostgreSQL text cannot hold NUL.
        return Err(StoreError::invalid("strings must not contain NUL"));
    }
    for s in [
        &r.result_type,
        &r.sending_ip,
        &r.receiving_ip,
        &r.receiving_mx_helo,
        &r.failure_reason,
    ] {
        if s.len() > MAX_TEXT {
            return Err(StoreError::invalid("strings must be at most 1024 bytes"));
        }
    }
    Ok(())
}

async fn record(pool: &PgPool, r: pb::TlsResult) -> Result<()> {
    check(&r)?;
    let domain = r.policy_domain.trim_end_matches('.').to_lowercase();
    let mx = r.mx_host.trim_end_matches('.').to_lowercase();
    let fingerprint_source = [
        r.policy_type.as_str(),
        &r.policy_strings.join("\n"),
        &mx,
        &r.result_type,
        &r.sending_ip,
        &r.receiving_ip,
        &r.receiving_mx_helo,
        &r.failure_reason,
    ]
    // U+001F (unit separator) between fields; NUL is refused by check().
    .join("\u{1f}");
    sqlx::query!(
        "INSERT INTO tls_results AS t (day, policy_domain, fingerprint, policy_type, \
             policy_strings, mx_host, result_type, sending_ip, receiving_ip, \
             receiving_mx_helo, failure_reason, count) \
         VALUES ((now() AT TIME ZONE 'UTC')::date, $1, md5($2), $3, $4, $5, $6, $7, $8, $9, $10, 1) \
         ON CONFLICT (day, policy_domain, fingerprint) DO UPDATE SET count = t.count + 1",
        domain,
        fingerprint_source,
        r.policy_type,
        &r.policy_strings,
        mx,
        r.result_type,
        r.sending_ip,
        r.receiving_ip,
        r.receiving_mx_helo,
        r.failure_reason,
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn list(pool: &PgPool, req: pb::ListTlsResultsRequest) -> Result<pb::ListTlsResultsResponse> {
    let day = chrono::NaiveDate::parse_from_str(&req.day, "%Y-%m-%d")
        .map_err(|_| StoreError::invalid("day must be YYYY-MM-DD"))?;
    let domain = req.policy_domain.trim_end_matches('.').to_lowercase();
    let rows = sqlx::query!(
        "SELECT policy_domain, policy_type, policy_strings, mx_host, result_type, sending_ip, \
                receiving_ip, receiving_mx_helo, failure_reason, count \
         FROM tls_results WHERE day = $1 AND ($2 = '' OR policy_domain = $2) \
         ORDER BY policy_domain, policy_type, mx_host, result_type, fingerprint",
        day,
        domain
    )
    .fetch_all(pool)
    .await?;
    Ok(pb::ListTlsResultsResponse {
        results: rows
            .into_iter()
            .map(|r| pb::TlsResult {
                policy_domain: r.policy_domain,
                policy_type: r.policy_type,
                policy_strings: r.policy_strings,
                mx_host: r.mx_host,
                result_type: r.result_type,
                sending_ip: r.sending_ip,
                receiving_ip: r.receiving_ip,
                receiving_mx_helo: r.receiving_mx_helo,
                failure_reason: r.failure_reason,
                count: u64::try_from(r.count).unwrap_or(0),
                day: day.to_string(),
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl pb::tls_reports_server::TlsReports for TlsReportsSvc {
    async fn record_tls_result(
        &self,
        req: Request<pb::RecordTlsResultRequest>,
    ) -> Result<Response<pb::RecordTlsResultResponse>, Status> {
        let r = req
            .into_inner()
            .result
            .ok_or_else(|| StoreError::invalid("result missing"))?;
        record(self.pool(), r).await?;
        Ok(Response::new(pb::RecordTlsResultResponse {}))
    }

    async fn list_tls_results(
        &self,
        req: Request<pb::ListTlsResultsRequest>,
    ) -> Result<Response<pb::ListTlsResultsResponse>, Status> {
        Ok(Response::new(list(self.pool(), req.into_inner()).await?))
    }
}
