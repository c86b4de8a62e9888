//! `mailctl dns <domain>`: the DNS records a hosted domain publishes, and
//! `mailctl dns check <domain>`: resolves them and says what is missing or
//! wrong.
//!
//! Records: MX (RFC 5321 §5.1), SPF (RFC 7208 §3), DKIM (RFC 6376 §3.6.2),
//! DMARC (RFC 7489 §6.1), MTA-STS (RFC 8461 §3.1 TXT, §3.2 policy file),
//! TLS-RPT (RFC 8460 §3), and client discovery SRV records (RFC 6186 §3:
//! `_submission`, `_imap`, `_pop3`; RFC 8314 §5.1: `_submissions`,
//! `_imaps`, `_pop3s`).

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use mailstore_api::{StoreClient, pb};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// What the published records describe.
#[derive(Debug, Clone)]
pub struct Site {
    /// The mail domain (`example.org`).
    pub domain: String,
    /// The mail server's host name (MX target, SRV target, MTA-STS `mx:`).
    pub host: String,
    /// The active DKIM key: selector and base64 public key (`p=`), with the
    /// full TXT text the store made for it.
    pub dkim: Option<(String, String, String)>,
    /// MTA-STS mode (RFC 8461 §3.2): `testing`, `enforce` or `none`.
    pub mta_sts_mode: String,
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub what: &'static str,
    pub name: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Mx { preference: u16, host: String },
    Txt(String),
    Srv { port: u16, host: String },
}

/// The client discovery services: (label, port), RFC 6186 §3 and RFC 8314 §5.1.
pub const SRV_SERVICES: [(&str, u16); 6] = [
    ("_submission._tcp", 587),
    ("_submissions._tcp", 465),
    ("_imap._tcp", 143),
    ("_imaps._tcp", 993),
    ("_pop3._tcp", 110),
    ("_pop3s._tcp", 995),
];

/// The MTA-STS policy file (RFC 8461 §3.2), served by the store's
/// autoconfig listener at `https://mta-sts.<domain>/.well-known/mta-sts.txt`:
/// one definition for the file and the TXT id derived from it.
pub use mailbox_store::autoconfig::mta_sts_policy;

/// The policy id (RFC 8461 §3.1: changes whenever the policy does): a hash
/// of the policy text, so the same policy always gets the same id.
#[must_use]
pub fn mta_sts_id(policy: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, policy.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every record the domain should publish.
#[must_use]
pub fn records(site: &Site) -> Vec<Rec> {
    let d = &site.domain;
    let h = &site.host;
    let mut v = vec![
        Rec {
            what: "MX",
            name: d.clone(),
            kind: Kind::Mx {
                preference: 10,
                host: h.clone(),
            },
        },
        Rec {
            what: "SPF",
            name: d.clone(),
            kind: Kind::Txt("v=spf1 mx -all".into()),
        },
    ];
    if let Some((selector, _, txt)) = &site.dkim {
        v.push(Rec {
            what: "DKIM",
            name: format!("{selector}._domainkey.{d}"),
            kind: Kind::Txt(txt.clone()),
        });
    }
    let policy = mta_sts_policy(h, &site.mta_sts_mode);
    v.extend([
        Rec {
            what: "DMARC",
            name: format!("_dmarc.{d}"),
            kind: Kind::Txt(format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}")),
        },
        Rec {
            what: "MTA-STS",
            name: format!("_mta-sts.{d}"),
            kind: Kind::Txt(format!("v=STSv1; id={}", mta_sts_id(&policy))),
        },
        Rec {
            what: "TLS-RPT",
            name: format!("_smtp._tls.{d}"),
            kind: Kind::Txt(format!("v=TLSRPTv1; rua=mailto:postmaster@{d}")),
        },
    ]);
    for (label, port) in SRV_SERVICES {
        v.push(Rec {
            what: "SRV",
            name: format!("{label}.{d}"),
            kind: Kind::Srv {
                port,
                host: h.clone(),
            },
        });
    }
    v
}

/// A zone-file line (TXT split in 255-octet strings).
#[must_use]
pub fn zone_line(r: &Rec) -> String {
    match &r.kind {
        Kind::Mx { preference, host } => format!("{}. 3600 IN MX {preference} {host}.", r.name),
        Kind::Txt(t) => {
            let parts: Vec<String> = t
                .as_bytes()
                .chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            format!("{}. 3600 IN TXT {}", r.name, parts.join(" "))
        }
        Kind::Srv { port, host } => format!("{}. 3600 IN SRV 0 1 {port} {host}.", r.name),
    }
}

/// The outcome for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Missing,
    Wrong(String),
}

/// A resolver: the system's, or one server (`--dns-server`, tests).
///
/// # Errors
/// When the system resolver configuration cannot be read.
pub fn resolver(server: Option<SocketAddr>) -> anyhow::Result<TokioResolver> {
    let mut builder = service_kit::dns::resolver_builder(server, Duration::from_secs(5))?;
    // `dns check` reports what is published now, not what was cached.
    builder.options_mut().cache_size = 0;
    Ok(builder.build()?)
}

/// The TXT records at `name`, each record's strings joined (RFC 7208 §3.3).
async fn txts(r: &TokioResolver, name: &str) -> Vec<String> {
    let Ok(l) = r.txt_lookup(format!("{name}.").as_str()).await else {
        return Vec::new();
    };
    l.answers()
        .iter()
        .filter_map(|a| match &a.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn host_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The value of tag `name` in a `k=v; k=v` record (DKIM, DMARC, MTA-STS).
fn tag<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Resolves one record and judges what is published.
pub async fn check(r: &TokioResolver, site: &Site, rec: &Rec) -> Verdict {
    match &rec.kind {
        Kind::Mx { host, .. } => {
            let Ok(l) = r.mx_lookup(format!("{}.", rec.name).as_str()).await else {
                return Verdict::Missing;
            };
            let found: Vec<String> = l
                .answers()
                .iter()
                .filter_map(|a| match &a.data {
                    RData::MX(mx) => Some(mx.exchange.to_ascii()),
                    _ => None,
                })
                .collect();
            if found.is_empty() {
                Verdict::Missing
            } else if found.iter().any(|f| host_eq(f, host)) {
                Verdict::Ok
            } else {
                Verdict::Wrong(format!("MX points to {} (not {host})", found.join(", ")))
            }
        }
        Kind::Srv { port, host } => {
            let Ok(l) = r.srv_lookup(format!("{}.", rec.name).as_str()).await else {
                return Verdict::Missing;
            };
            let found: Vec<(u16, String)> = l
                .answers()
                .iter()
                .filter_map(|a| match &a.data {
                    RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            if found.is_empty() {
                Verdict::Missing
            } else if found.iter().any(|(p, t)| p == port && host_eq(t, host)) {
                Verdict::Ok
            } else {
                let list: Vec<String> = found.iter().map(|(p, t)| format!("{t}:{p}")).collect();
                Verdict::Wrong(format!("points to {} (not {host}:{port})", list.join(", ")))
            }
        }
        Kind::Txt(want) => {
            let all = txts(r, &rec.name).await;
            let version = want.split(';').next().unwrap_or_default().trim();
            let version = version.split_whitespace().next().unwrap_or_default();
            let mine: Vec<&String> = all
                .iter()
                .filter(|t| {
                    t.split([';', ' '])
                        .next()
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case(version))
                })
                .collect();
            judge_txt(rec.what, site, want, &mine)
        }
    }
}

fn judge_txt(what: &str, site: &Site, want: &str, found: &[&String]) -> Verdict {
    let [one] = found else {
        return if found.is_empty() {
            Verdict::Missing
        } else {
            // RFC 7208 §4.5, RFC 7489 §6.6.3, RFC 8461 §3.1: more than one
            // record is an error (or makes the receiver ignore them all).
            Verdict::Wrong(format!("{} records, expected one", found.len()))
        };
    };
    match what {
        "SPF" => {
            let last = one.split_whitespace().last().unwrap_or_default();
            if matches!(last, "+all" | "all" | "?all") {
                Verdict::Wrong(format!("{one:?} lets anyone send as {}", site.domain))
            } else {
                Verdict::Ok
            }
        }
        "DKIM" => {
            let want_p = tag(want, "p").unwrap_or_default();
            let got_p: String = tag(one, "p")
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            if got_p == want_p {
                Verdict::Ok
            } else {
                Verdict::Wrong("p= is not the public key of the active signing key".into())
            }
        }
        "DMARC" => match tag(one, "p") {
            Some("none" | "quarantine" | "reject") => Verdict::Ok,
            _ => Verdict::Wrong(format!("{one:?} has no valid p= tag")),
        },
        "MTA-STS" => match tag(one, "id") {
            Some(id) if id == tag(want, "id").unwrap_or_default() => Verdict::Ok,
            Some(_) => Verdict::Wrong(format!(
                "id differs from the policy {} serves (expected {want:?}); fine if you serve another policy",
                site.host
            )),
            None => Verdict::Wrong(format!("{one:?} has no id= tag")),
        },
        "TLS-RPT" => {
            if tag(one, "rua").is_some() {
                Verdict::Ok
            } else {
                Verdict::Wrong(format!("{one:?} has no rua= tag"))
            }
        }
        _ => Verdict::Ok,
    }
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DnsArgs {
    #[command(subcommand)]
    pub check: Option<DnsCheck>,
    #[command(flatten)]
    pub site: DnsSite,
}

#[derive(clap::Subcommand, Debug)]
pub enum DnsCheck {
    /// Resolve every record and report what is missing or wrong (exit
    /// status 1 when something is).
    Check {
        #[command(flatten)]
        site: DnsSite,
        /// Ask this DNS server (ip:port) instead of the system resolver.
        #[arg(long, env = "EPISTOLE_DNS_SERVER")]
        dns_server: Option<std::net::SocketAddr>,
    },
}

#[derive(clap::Args, Debug)]
pub struct DnsSite {
    /// The mail domain.
    pub domain: Option<String>,
    /// The mail server's host name (default mail.<domain>).
    #[arg(long)]
    pub host: Option<String>,
    /// MTA-STS mode (RFC 8461 §3.2).
    #[arg(long, default_value = "testing", value_parser = ["testing", "enforce", "none"])]
    pub mta_sts_mode: String,
}

/// Runs `mailctl dns` / `mailctl dns check`.
///
/// # Errors
/// Store errors, a missing domain, and (check) any record missing or wrong.
pub async fn command(
    c: &StoreClient,
    args: DnsArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let (site, server, checking) = match args.check {
        Some(DnsCheck::Check { site, dns_server }) => (site, dns_server, true),
        None => (args.site, None, false),
    };
    let domain = site
        .domain
        .context("name the domain: mailctl dns [check] <domain>")?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host = site.host.unwrap_or_else(|| format!("mail.{domain}"));
    let key = c
        .accounts
        .clone()
        .list_dkim_keys(pb::ListDkimKeysRequest {
            domain: domain.clone(),
            include_private: false,
            active_only: true,
        })
        .await
        .map_err(crate::status)?
        .into_inner()
        .keys
        .into_iter()
        .find(|k| k.active);
    let s = Site {
        domain: domain.clone(),
        host: host.clone(),
        dkim: key.map(|k| (k.selector, k.public_key, k.dns_txt)),
        mta_sts_mode: site.mta_sts_mode,
    };
    let recs = records(&s);
    if !checking {
        writeln!(out, "; DNS records for {domain} (mail server {host})")?;
        for r in &recs {
            writeln!(out, "{}", zone_line(r))?;
        }
        if s.dkim.is_none() {
            writeln!(
                out,
                "; no DKIM key yet: mailctl dkim generate {domain}, then run this again"
            )?;
        }
        writeln!(
            out,
            "; MTA-STS policy, served at https://mta-sts.{domain}/.well-known/mta-sts.txt\n; (the store's --autoconfig-listen serves it; see docs/design.md):"
        )?;
        for l in mta_sts_policy(&host, &s.mta_sts_mode).lines() {
            writeln!(out, ";   {l}")?;
        }
        return Ok(());
    }
    let resolver = resolver(server)?;
    let mut problems = 0;
    if s.dkim.is_none() {
        problems += 1;
        writeln!(
            out,
            "MISSING DKIM    no active key in the store: mailctl dkim generate {domain}"
        )?;
    }
    for r in &recs {
        match check(&resolver, &s, r).await {
            Verdict::Ok => writeln!(out, "ok      {:<7} {}", r.what, r.name)?,
            Verdict::Missing => {
                problems += 1;
                writeln!(
                    out,
                    "MISSING {:<7} {}: publish {}",
                    r.what,
                    r.name,
                    zone_line(r)
                )?;
            }
            Verdict::Wrong(why) => {
                problems += 1;
                writeln!(
                    out,
                    "WRONG   {:<7} {}: {why}; expected {}",
                    r.what,
                    r.name,
                    zone_line(r)
                )?;
            }
        }
    }
    out.flush()?;
    if problems > 0 {
        bail!("{problems} DNS record(s) of {domain} missing or wrong");
    }
    writeln!(out, "all DNS records of {domain} are in place")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            domain: "example.org".into(),
            host: "mail.example.org".into(),
            dkim: Some((
                "s1".into(),
                "AAAA".into(),
                "v=DKIM1; k=ed25519; p=AAAA".into(),
            )),
            mta_sts_mode: "testing".into(),
        }
    }

    #[test]
    fn records_cover_every_kind() {
        let recs = records(&site());
        let lines: Vec<String> = recs.iter().map(zone_line).collect();
        let text = lines.join("\n");
        for want in [
            "example.org. 3600 IN MX 10 mail.example.org.",
            "example.org. 3600 IN TXT \"v=spf1 mx -all\"",
            "s1._domainkey.example.org. 3600 IN TXT \"v=DKIM1; k=ed25519; p=AAAA\"",
            "_dmarc.example.org. 3600 IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\"",
            "_mta-sts.example.org. 3600 IN TXT \"v=STSv1; id=",
            "_smtp._tls.example.org. 3600 IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@example.org\"",
            "_submission._tcp.example.org. 3600 IN SRV 0 1 587 mail.example.org.",
            "_submissions._tcp.example.org. 3600 IN SRV 0 1 465 mail.example.org.",
            "_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org.",
            "_pop3s._tcp.example.org. 3600 IN SRV 0 1 995 mail.example.org.",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }

    #[test]
    fn judging_txt_records() {
        let s = site();
        let spf = "v=spf1 +all".to_string();
        assert!(matches!(
            judge_txt("SPF", &s, "", &[&spf]),
            Verdict::Wrong(_)
        ));
        let spf = "v=spf1 mx -all".to_string();
        assert_eq!(
            judge_txt("SPF", &s, "", &[&spf, &spf]),
            Verdict::Wrong("2 records, expected one".into())
        );
        assert_eq!(judge_txt("SPF", &s, "", &[]), Verdict::Missing);
        let dkim = "v=DKIM1; k=ed25519; p=AA AA".to_string();
        assert_eq!(
            judge_txt("DKIM", &s, "v=DKIM1; p=AAAA", &[&dkim]),
            Verdict::Ok
        );
        let dkim = "v=DKIM1; k=ed25519; p=BBBB".to_string();
        assert!(matches!(
            judge_txt("DKIM", &s, "v=DKIM1; p=AAAA", &[&dkim]),
            Verdict::Wrong(_)
        ));
        assert_eq!(mta_sts_id("x"), mta_sts_id("x"));
        assert_ne!(mta_sts_id("x"), mta_sts_id("y"));
    }
}
