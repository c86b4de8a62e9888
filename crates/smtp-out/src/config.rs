//! smtp-out flags (each also an environment variable).

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::StoreArgs;

/// smtp-out configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub store: StoreArgs,
    /// This worker's name in leases and the event log (default: host-pid-random).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Our host name: EHLO argument, DSN Reporting-MTA and MAILER-DAEMON domain.
    #[arg(long, env = "EPISTOLE_HOSTNAME", default_value = "localhost")]
    pub hostname: String,
    /// Jobs leased per request.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_BATCH", default_value_t = 32)]
    pub batch: u32,
    /// Jobs in progress at once (across all destinations).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
    /// Connections at once to one destination domain (per worker).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_PER_DESTINATION", default_value_t = 2)]
    pub per_destination: usize,
    /// First pause after a destination answers `421` or `4.7.x` "too many
    /// connections/rate" (doubles per further refusal, at most 1 h); the
    /// destination's connections are halved at the same time.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_THROTTLE_BACKOFF", value_parser = parse_duration, default_value = "1m")]
    pub throttle_backoff: Duration,
    /// Messages sent over one connection before it is closed.
    #[arg(
        long,
        env = "EPISTOLE_SMTP_OUT_MESSAGES_PER_CONNECTION",
        default_value_t = 100
    )]
    pub messages_per_connection: u32,
    /// Lease duration (renewed while a job is worked on).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_LEASE_MS", default_value_t = 60_000)]
    pub lease_ms: u64,
    /// A job leased this many times without finishing is quarantined (poison).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_MAX_UNFINISHED", default_value_t = 5)]
    pub max_unfinished: u32,
    /// DNS server (IP:PORT) for MX and address lookups; default: /etc/resolv.conf.
    #[arg(long, env = "EPISTOLE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// DNS query timeout, milliseconds.
    #[arg(long, env = "EPISTOLE_DNS_TIMEOUT_MS", default_value_t = 5_000)]
    pub dns_timeout_ms: u64,
    /// TCP port of remote MX hosts (25; other values are for tests).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_PORT", default_value_t = 25)]
    pub smtp_port: u16,
    /// Smarthost for a domain, `DOMAIN=HOST[:PORT]`; `*=HOST[:PORT]` for all
    /// domains. Repeatable (comma-separated in the environment).
    #[arg(long = "relay", env = "EPISTOLE_SMTP_OUT_RELAY", value_delimiter = ',')]
    pub relays: Vec<String>,
    /// Credentials for a smarthost named in `--relay`: `HOST=USER:PASSWORD_FILE`
    /// (AUTH PLAIN, only ever sent inside TLS). Repeatable.
    #[arg(
        long = "relay-auth",
        env = "EPISTOLE_SMTP_OUT_RELAY_AUTH",
        value_delimiter = ','
    )]
    pub relay_auth: Vec<String>,
    /// Send smarthost AUTH over TLS whose certificate was not verified.
    /// Only for a trusted relay on a network you control: anyone in the
    /// path can otherwise collect the password with any certificate.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_RELAY_AUTH_UNVERIFIED_TLS")]
    pub relay_auth_unverified_tls: bool,
    /// Ranges smtp-out may connect to although they are special-purpose
    /// (loopback, RFC 1918, link-local, unique-local, …), as CIDR or single
    /// addresses: for a smarthost on the local network, or tests.
    /// Everything else special is refused (SSRF defence). Repeatable
    /// (comma-separated in the environment).
    #[arg(
        long = "allow-destination",
        env = "EPISTOLE_SMTP_OUT_ALLOW_DESTINATIONS",
        value_delimiter = ','
    )]
    pub allow_destinations: Vec<String>,
    /// Extra trust anchors (PEM) besides the Mozilla roots, for the
    /// certificates smtp-out verifies: smarthosts it authenticates to,
    /// MTA-STS policy hosts and MX hosts under an MTA-STS policy.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Do not look up MTA-STS policies (RFC 8461); TLS stays opportunistic.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_MTA_STS")]
    pub no_mta_sts: bool,
    /// Do not look up DANE TLSA records (RFC 7672). DANE needs
    /// `--dns-server` to name a local DNSSEC-validating resolver: its AD bit
    /// is trusted (docs/design.md, DANE); without `--dns-server` DANE is off.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_DANE")]
    pub no_dane: bool,
    /// Neither count TLS outcomes nor send daily TLS-RPT reports (RFC 8460).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_TLSRPT")]
    pub no_tlsrpt: bool,
    /// TLS-RPT organization-name (default: --hostname).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_TLSRPT_ORG")]
    pub tlsrpt_org: Option<String>,
    /// TLS-RPT contact-info (default: postmaster@<hostname>).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_TLSRPT_CONTACT")]
    pub tlsrpt_contact: Option<String>,
    /// Sender of TLS-RPT report messages (default: noreply-tlsrpt@<hostname>).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_TLSRPT_FROM")]
    pub tlsrpt_from: Option<String>,
    /// Do not send DMARC aggregate reports (RFC 7489 §7.2).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_DMARC_REPORTS")]
    pub no_dmarc_reports: bool,
    /// Do not add an ARC set (RFC 8617) to mail forwarded through an alias.
    /// By default a forwarded message is sealed with the DKIM key of the
    /// alias's domain (else of the SRS domain) when we hold one.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_ARC")]
    pub no_arc: bool,
    /// Sender of DMARC aggregate reports (default: postmaster@ the domain
    /// of --hostname).
    #[arg(long, env = "EPISTOLE_DMARC_REPORT_FROM")]
    pub dmarc_report_from: Option<String>,
    /// TCP port of MTA-STS policy hosts (443; other values are for tests).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_MTA_STS_PORT", default_value_t = 443)]
    pub mta_sts_port: u16,
    /// Retry delays after each failed attempt (`30s,5m,1h,…`); the last repeats.
    #[arg(
        long,
        env = "EPISTOLE_SMTP_OUT_RETRY_SCHEDULE",
        value_delimiter = ',',
        value_parser = parse_duration,
        default_value = "5m,10m,30m,1h,2h,4h"
    )]
    pub retry_schedule: Vec<Duration>,
    /// A message still undelivered this long after it was queued bounces.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_GIVE_UP_AFTER", value_parser = parse_duration, default_value = "5d")]
    pub give_up_after: Duration,
    /// A "delayed" DSN (RFC 3464, when NOTIFY allows) once a message is this old.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_DELAY_NOTICE_AFTER", value_parser = parse_duration, default_value = "4h")]
    pub delay_notice_after: Duration,
    /// TCP connect timeout.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub connect_timeout: Duration,
    /// Time limit for the greeting and each command reply (RFC 5321 §4.5.3.2: 5 min).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    pub command_timeout: Duration,
    /// Time limit for the reply to the final `.` (RFC 5321 §4.5.3.2: 10 min).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_DATA_TIMEOUT", value_parser = parse_duration, default_value = "10m")]
    pub data_timeout: Duration,
    /// Never use STARTTLS (for tests and broken peers; default is opportunistic TLS).
    #[arg(long, env = "EPISTOLE_SMTP_OUT_NO_STARTTLS")]
    pub no_starttls: bool,
    /// DKIM key for a domain, `DOMAIN=SELECTOR:PEM_PATH` (RSA or Ed25519,
    /// PKCS#8 or PKCS#1). Repeatable (comma-separated in the environment).
    /// A first step: keys move into the store with `mailctl dkim`.
    #[arg(
        long = "dkim-key",
        env = "EPISTOLE_SMTP_OUT_DKIM_KEYS",
        value_delimiter = ','
    )]
    pub dkim_keys: Vec<String>,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "EPISTOLE_SMTP_OUT_HTTP", default_value = "127.0.0.1:7031")]
    pub http_listen: SocketAddr,
}

/// Parses `90`, `90s`, `15m`, `4h`, `5d`, `250ms`.
///
/// # Errors
/// A message for clap.
impl Config {
    /// Who we are in DMARC aggregate reports (RFC 7489 §7.2.1.1).
    #[must_use]
    pub fn dmarc_reporter(&self) -> crate::dmarc::Reporter {
        let host = self.hostname.trim_end_matches('.');
        // The host name's domain: mx.example.org → example.org.
        let domain = match host.split_once('.') {
            Some((_, d)) if d.contains('.') => d,
            _ => host,
        };
        crate::dmarc::Reporter {
            organization: host.to_string(),
            from: self
                .dmarc_report_from
                .clone()
                .unwrap_or_else(|| format!("postmaster@{domain}")),
            receiver: host.to_string(),
        }
    }

    /// Who we are in TLS-RPT reports (RFC 8460 §4.4).
    #[must_use]
    pub fn reporter(&self) -> crate::tlsrpt::Reporter {
        let host = &self.hostname;
        crate::tlsrpt::Reporter {
            organization: self.tlsrpt_org.clone().unwrap_or_else(|| host.clone()),
            contact: self
                .tlsrpt_contact
                .clone()
                .unwrap_or_else(|| format!("postmaster@{host}")),
            from: self
                .tlsrpt_from
                .clone()
                .unwrap_or_else(|| format!("noreply-tlsrpt@{host}")),
            submitter: host.clone(),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
