//! Where mail for a domain goes (RFC 5321 §5.1): the MX records by
//! preference (random order among equal preferences), the domain's own
//! A/AAAA records when it has no MX (implicit MX), Null MX (RFC 7505) as a
//! permanent failure, or a configured smarthost.
//!
//! DNS answers map to outcomes this way:
//! - NXDOMAIN → permanent (the domain does not exist);
//! - Null MX (`0 .`) → permanent;
//! - no MX and no A/AAAA (NODATA) → temporary: it is retried, and bounces when
//!   the message expires;
//! - SERVFAIL, timeout, refused → temporary;
//! - every address refused by the [`crate::destination`]
//!   policy (loopback, private, link-local, …) → permanent `5.4.4`, and
//!   no connection is attempted; refused addresses among usable ones are
//!   dropped. A smarthost on such an address needs `--allow-destination`
//!   (until then its mail is deferred, not bounced: it is a configuration
//!   error of ours, not the sender's).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom as _;

use crate::destination;

/// Most MX hosts tried per destination.
pub const MAX_MX: usize = 10;
/// Most addresses tried per host.
pub const MAX_ADDRS_PER_HOST: usize = 4;

/// One host to try, with its addresses in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// MX exchange, the domain itself (implicit MX) or the smarthost name.
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// RFC 7505 §3: the domain accepts no mail.
    #[error("5.1.10 {0}: domain does not accept mail (null MX)")]
    NullMx(String),
    /// NXDOMAIN.
    #[error("5.1.2 {0}: domain does not exist")]
    NoSuchDomain(String),
    /// Every address of the destination is refused by the destination
    /// policy (RFC 3463 X.4.4: no usable next hop).
    #[error("5.4.4 {0}")]
    Forbidden(String),
    /// Try again later.
    #[error("4.4.3 {0}")]
    Temporary(String),
}

impl RouteError {
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Temporary(_))
    }
}

/// The MX set after RFC 7505 and RFC 5321 §5.1 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxSet {
    /// A single `0 .` record (or only `.` targets).
    Null,
    /// Exchanges in the order to try them.
    Hosts(Vec<(u16, String)>),
}

/// Orders MX records: ascending preference, shuffled among equals; drops
/// `.` targets (a Null MX mixed with real MX records is a misconfiguration;
/// the real ones are used) and duplicates; caps at [`MAX_MX`].
pub fn order_mx(mut records: Vec<(u16, String)>, rng: &mut impl rand::Rng) -> MxSet {
    for r in &mut records {
        r.1 = r.1.trim_end_matches('.').to_ascii_lowercase();
    }
    if !records.is_empty() && records.iter().all(|(_, h)| h.is_empty()) {
        return MxSet::Null;
    }
    records.retain(|(_, h)| !h.is_empty());
    records.shuffle(rng);
    // Stable sort keeps the shuffled order within one preference.
    records.sort_by_key(|(p, _)| *p);
    let mut seen = std::collections::HashSet::new();
    records.retain(|(_, h)| seen.insert(h.clone()));
    records.truncate(MAX_MX);
    MxSet::Hosts(records)
}

/// A configured route that bypasses MX lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    pub host: String,
    pub port: u16,
}

/// Parses `domain=host[:port]` (domain `*` = every domain).
///
/// # Errors
/// A description of what is wrong.
pub fn parse_relay(spec: &str, default_port: u16) -> Result<(String, Smarthost), String> {
    let (domain, target) = spec
        .split_once('=')
        .ok_or_else(|| format!("relay {spec:?}: expected DOMAIN=HOST[:PORT]"))?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let target = target.trim();
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        // [ip]:port or [ip]
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("relay {spec:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("relay {spec:?}: bad port"))?,
            None => default_port,
        };
        (ip.to_string(), port)
    } else if let Some((h, p)) = target.rsplit_once(':')
        && !h.contains(':')
    {
        (
            h.to_string(),
            p.parse().map_err(|_| format!("relay {spec:?}: bad port"))?,
        )
    } else {
        (target.to_string(), default_port)
    };
    if domain.is_empty() || host.is_empty() {
        return Err(format!("relay {spec:?}: empty domain or host"));
    }
    Ok((domain, Smarthost { host, port }))
}

/// Resolves destinations to hosts.
pub struct Router {
    resolver: TokioResolver,
    port: u16,
    relays: HashMap<String, Smarthost>,
    policy: destination::Policy,
}

fn temporary(what: &str, e: &NetError) -> RouteError {
    RouteError::Temporary(format!("{what}: DNS error: {e}"))
}

/// NXDOMAIN vs NODATA vs anything else.
enum Lookup<T> {
    Found(T),
    NoData,
    NxDomain,
}

fn classify<T>(r: Result<T, NetError>, what: &str) -> Result<Lookup<T>, RouteError> {
    match r {
        Ok(v) => Ok(Lookup::Found(v)),
        Err(e) if e.is_nx_domain() => Ok(Lookup::NxDomain),
        Err(e) if e.is_no_records_found() => Ok(Lookup::NoData),
        Err(e) => Err(temporary(what, &e)),
    }
}

impl Router {
    /// A router using `dns` (or the system resolver configuration when
    /// `None`), connecting to `port` on MX hosts (25 in production).
    ///
    /// # Errors
    /// When the system resolver configuration cannot be read.
    pub fn new(
        dns: Option<SocketAddr>,
        timeout: Duration,
        port: u16,
        relays: HashMap<String, Smarthost>,
        policy: destination::Policy,
    ) -> Result<Self, NetError> {
        let mut builder = service_kit::dns::resolver_builder(dns, timeout)?;
        let opts = builder.options_mut();
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        // A small cache: queue runs re-resolve the same domains; tests
        // change records between runs, so keep it short.
        opts.positive_max_ttl = Some(Duration::from_secs(300));
        opts.negative_max_ttl = Some(Duration::from_secs(30));
        Ok(Self {
            resolver: builder.build()?,
            port,
            relays,
            policy,
        })
    }

    /// Does mail for `domain` go to a configured smarthost?
    #[must_use]
    pub fn is_smarthost(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.relays.contains_key(&domain) || self.relays.contains_key("*")
    }

    /// The destination policy (also checked at connect time).
    #[must_use]
    pub fn policy(&self) -> &destination::Policy {
        &self.policy
    }

    /// The resolver, for the TXT lookups of MTA-STS.
    #[must_use]
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The hosts to try for `domain`, in order, with only the addresses
    /// the destination policy allows.
    ///
    /// # Errors
    /// [`RouteError`]: permanent or temporary.
    pub async fn route(&self, domain: &str) -> Result<Vec<Host>, RouteError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let smarthost = self.relays.get(&domain).or_else(|| self.relays.get("*"));
        let (hosts, dns_errors) = match smarthost {
            Some(s) => (self.smarthost(s).await?, Vec::new()),
            None => self.lookup(&domain).await?,
        };
        let (hosts, refused) = self.allowed(hosts);
        if hosts.is_empty() {
            let why = format!(
                "{domain}: every address is refused by policy: {}",
                refused.join("; ")
            );
            return Err(if smarthost.is_some() {
                RouteError::Temporary(format!("{why} (add the smarthost to --allow-destination)"))
            } else if !dns_errors.is_empty() {
                // Other MX hosts could not be resolved now: they may be fine.
                RouteError::Temporary(format!("{why}; {}", dns_errors.join("; ")))
            } else {
                RouteError::Forbidden(format!("{why}; not relaying there"))
            });
        }
        Ok(hosts)
    }

    /// Drops the addresses the policy refuses (and hosts left with none);
    /// the refusals, for the error message.
    fn allowed(&self, hosts: Vec<Host>) -> (Vec<Host>, Vec<String>) {
        let mut refused = Vec::new();
        let mut out = Vec::new();
        for mut h in hosts {
            h.addrs.retain(|a| match self.policy.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(host = %h.name, ip = %a.ip(), %why, "destination refused");
                    refused.push(format!("{}[{}] is {why}", h.name, a.ip()));
                    false
                }
            });
            if !h.addrs.is_empty() {
                out.push(h);
            }
        }
        (out, refused)
    }

    /// The addresses of `name` on `port` that the policy allows (for the
    /// MTA-STS policy host).
    ///
    /// # Errors
    /// A description: DNS failure, no address, or only refused ones.
    pub async fn allowed_addrs(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let ips = self
            .resolver
            .lookup_ip(format!("{}.", name.trim_end_matches('.')).as_str())
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let mut refused = Vec::new();
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .filter(|ip| match self.policy.check(*ip) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(format!("{ip} is {why}"));
                    false
                }
            })
            .map(|ip| SocketAddr::new(ip, port))
            .take(MAX_ADDRS_PER_HOST)
            .collect();
        if addrs.is_empty() {
            return Err(format!(
                "{name}: no allowed address ({})",
                refused.join("; ")
            ));
        }
        Ok(addrs)
    }

    /// MX, implicit MX or address literal, before the policy; with the
    /// DNS errors of MX hosts that could not be resolved.
    async fn lookup(&self, domain: &str) -> Result<(Vec<Host>, Vec<String>), RouteError> {
        let domain = domain.to_string();
        // RFC 5321 §4.1.3: address literal, no DNS.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = lit.strip_prefix("ipv6:").unwrap_or(lit);
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| RouteError::NoSuchDomain(domain.clone()))?;
            return Ok((
                vec![Host {
                    name: domain.clone(),
                    preference: 0,
                    addrs: vec![SocketAddr::new(ip, self.port)],
                }],
                Vec::new(),
            ));
        }
        let fqdn = format!("{domain}.");
        let mx = classify(self.resolver.mx_lookup(fqdn.as_str()).await, &domain)?;
        let records = match mx {
            Lookup::NxDomain => return Err(RouteError::NoSuchDomain(domain)),
            Lookup::NoData => Vec::new(),
            Lookup::Found(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
        };
        if records.is_empty() {
            // RFC 5321 §5.1: implicit MX.
            return match classify(self.resolver.lookup_ip(fqdn.as_str()).await, &domain)? {
                Lookup::NxDomain => Err(RouteError::NoSuchDomain(domain)),
                Lookup::NoData => Err(RouteError::Temporary(format!(
                    "{domain}: no MX and no address records"
                ))),
                Lookup::Found(ips) => {
                    let addrs = self.addrs(ips.iter());
                    if addrs.is_empty() {
                        return Err(RouteError::Temporary(format!(
                            "{domain}: no MX and no address records"
                        )));
                    }
                    Ok((
                        vec![Host {
                            name: domain,
                            preference: 0,
                            addrs,
                        }],
                        Vec::new(),
                    ))
                }
            };
        }
        let ordered = match order_mx(records, &mut rand::thread_rng()) {
            MxSet::Null => return Err(RouteError::NullMx(domain)),
            MxSet::Hosts(h) => h,
        };
        let mut hosts = Vec::new();
        let mut errors = Vec::new();
        for (preference, name) in ordered {
            match self.host_addrs(&name).await {
                Ok(addrs) if !addrs.is_empty() => hosts.push(Host {
                    name,
                    preference,
                    addrs,
                }),
                Ok(_) => errors.push(format!("{name}: no address records")),
                Err(e) => errors.push(e),
            }
        }
        if hosts.is_empty() {
            return Err(RouteError::Temporary(format!(
                "{domain}: no MX host has an address ({})",
                errors.join("; ")
            )));
        }
        Ok((hosts, errors))
    }

    async fn host_addrs(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        match self.resolver.lookup_ip(format!("{name}.").as_str()).await {
            Ok(ips) => Ok(self.addrs(ips.iter())),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }

    fn addrs(&self, ips: impl Iterator<Item = IpAddr>) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = ips.map(|ip| SocketAddr::new(ip, self.port)).collect();
        v.dedup();
        v.truncate(MAX_ADDRS_PER_HOST);
        v
    }

    async fn smarthost(&self, s: &Smarthost) -> Result<Vec<Host>, RouteError> {
        let addrs: Vec<SocketAddr> = if let Ok(ip) = s.host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, s.port)]
        } else {
            match self
                .resolver
                .lookup_ip(format!("{}.", s.host).as_str())
                .await
            {
                Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, s.port)).collect(),
                Err(e) => return Err(temporary(&format!("smarthost {}", s.host), &e)),
            }
        };
        if addrs.is_empty() {
            return Err(RouteError::Temporary(format!(
                "smarthost {}: no address",
                s.host
            )));
        }
        Ok(vec![Host {
            name: s.host.clone(),
            preference: 0,
            addrs,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn mx_order_and_null_mx() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(order_mx(vec![(0, ".".into())], &mut rng), MxSet::Null);
        assert_eq!(order_mx(vec![(0, String::new())], &mut rng), MxSet::Null);
        let MxSet::Hosts(h) = order_mx(
            vec![
                (20, "b.test.".into()),
                (10, "A.test.".into()),
                (20, "c.test".into()),
                (0, ".".into()),
            ],
            &mut rng,
        ) else {
            panic!("hosts expected");
        };
        assert_eq!(h[0], (10, "a.test".into()));
        assert_eq!(h.len(), 3);
        // Equal preferences come out in both orders over many shuffles.
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            if let MxSet::Hosts(h) =
                order_mx(vec![(5, "x.test".into()), (5, "y.test".into())], &mut rng)
            {
                firsts.insert(h[0].1.clone());
            }
        }
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn relay_specs() {
        assert_eq!(
            parse_relay("Example.ORG=smtp.isp.test:587", 25).expect("ok"),
            (
                "example.org".into(),
                Smarthost {
                    host: "smtp.isp.test".into(),
                    port: 587
                }
            )
        );
        assert_eq!(
            parse_relay("*=[::1]:2525", 25).expect("ok").1,
            Smarthost {
                host: "::1".into(),
                port: 2525
            }
        );
        assert_eq!(parse_relay("x=relay.test", 25).expect("ok").1.port, 25);
        assert!(parse_relay("nothing", 25).is_err());
        assert!(parse_relay("x=h:notaport", 25).is_err());
    }
}
