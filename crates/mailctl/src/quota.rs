//! `mailctl quota`: RFC 9208 quotas (STORAGE in bytes, MESSAGE as a
//! count) of a user, and the default of a domain's users. A user without
//! its own limit has the domain's; a domain without one is unlimited.

use clap::Subcommand;
use mailstore_api::{StoreClient, pb};

/// A limit on the command line: a number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    let (digits, unit) = match s.to_ascii_uppercase() {
        u if u.ends_with('K') => (s[..s.len() - 1].to_string(), 1u64 << 10),
        u if u.ends_with('M') => (s[..s.len() - 1].to_string(), 1 << 20),
        u if u.ends_with('G') => (s[..s.len() - 1].to_string(), 1 << 30),
        _ => (s.to_string(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| i64::try_from(*n).is_ok())
        .map(|n| Limit(Some(n)))
        .ok_or_else(|| format!("{s:?}: expected a number (K, M or G suffix allowed) or none"))
}

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// A user's limits (effective, and whether they are its own or its
    /// domain's default) and usage.
    Show { address: String },
    /// Set a user's own limits; `none` (the default) = its domain's default.
    Set {
        address: String,
        /// STORAGE limit in bytes (K, M, G suffixes: 1024-based), or none.
        #[arg(long, value_parser = parse_limit, default_value = "none")]
        storage: Limit,
        /// MESSAGE limit (number of messages), or none.
        #[arg(long, value_parser = parse_limit, default_value = "none")]
        messages: Limit,
    },
    /// Set the default limits of a domain's users; `none` = unlimited.
    Domain {
        domain: String,
        #[arg(long, value_parser = parse_limit, default_value = "none")]
        storage: Limit,
        #[arg(long, value_parser = parse_limit, default_value = "none")]
        messages: Limit,
    },
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |l| l.to_string())
}

fn source(own: Option<u64>) -> &'static str {
    if own.is_some() { "user" } else { "domain" }
}

fn write_quota(out: &mut impl std::io::Write, q: &pb::Quota) -> std::io::Result<()> {
    writeln!(
        out,
        "{}\tstorage={}/{} ({})\tmessages={}/{} ({})",
        q.address,
        q.used_bytes,
        shown(q.limit_bytes),
        source(q.user_bytes),
        q.used_messages,
        shown(q.limit_messages),
        source(q.user_messages),
    )
}

/// Runs one `mailctl quota` command.
///
/// # Errors
/// Store errors (unknown user or domain; the domain default needs the
/// admin token), I/O.
pub async fn run(
    c: &StoreClient,
    cmd: QuotaCmd,
    out: &mut impl std::io::Write,
    status: impl Fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Show { address } => {
            let q = c
                .accounts
                .clone()
                .get_quota(pb::GetQuotaRequest {
                    key: Some(pb::get_quota_request::Key::Address(address)),
                })
                .await
                .map_err(&status)?
                .into_inner();
            write_quota(out, &q)?;
        }
        QuotaCmd::Set {
            address,
            storage,
            messages,
        } => {
            let q = c
                .accounts
                .clone()
                .set_quota(pb::SetQuotaRequest {
                    key: Some(pb::set_quota_request::Key::Address(address)),
                    limit_bytes: storage.0,
                    limit_messages: messages.0,
                })
                .await
                .map_err(&status)?
                .into_inner();
            write_quota(out, &q)?;
        }
        QuotaCmd::Domain {
            domain,
            storage,
            messages,
        } => {
            let d = c
                .accounts
                .clone()
                .set_domain_quota(pb::SetDomainQuotaRequest {
                    domain,
                    limit_bytes: storage.0,
                    limit_messages: messages.0,
                })
                .await
                .map_err(&status)?
                .into_inner();
            writeln!(
                out,
                "domain {} default storage={} messages={}",
                d.domain,
                shown(d.limit_bytes),
                shown(d.limit_messages)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Limit, parse_limit};

    #[test]
    fn limits_parse_with_units_and_none() {
        assert_eq!(parse_limit("none"), Ok(Limit(None)));
        assert_eq!(parse_limit("0"), Ok(Limit(Some(0))));
        assert_eq!(parse_limit("10k"), Ok(Limit(Some(10 * 1024))));
        assert_eq!(parse_limit("2M"), Ok(Limit(Some(2 << 20))));
        assert_eq!(parse_limit("1G"), Ok(Limit(Some(1 << 30))));
        assert!(parse_limit("").is_err());
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("99999999999G").is_err());
        assert!(parse_limit("1T").is_err());
    }
}
