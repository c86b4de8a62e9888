//! Safe destinations: where smtp-out may open a connection (SSRF defence).
//!
//! An MX record, an address literal (`user@[127.0.0.1]`, RFC 5321 §4.1.3)
//! or the host of an MTA-STS policy is chosen by whoever controls a DNS
//! zone or writes a recipient address, not by the operator. Without this
//! check the relay would connect to the operator's own network: loopback
//! services, RFC 1918 hosts, the cloud metadata endpoint 169.254.169.254.
//!
//! By default every special-purpose address of the IANA registries (RFC
//! 6890 and its updates) is refused, IPv4 and IPv6 alike, and an
//! IPv4-mapped or IPv4-embedding IPv6 address (`::ffff:127.0.0.1`, NAT64,
//! 6to4) is judged by the IPv4 address inside it. `--allow-destination
//! CIDR,…` opens ranges again for a smarthost on the local network or for
//! tests. The check runs on every address before a connection is made
//! ([`crate::route`]) and again at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Which addresses smtp-out may connect to.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<IpNet>,
}

/// Why an address is refused, with the RFC that sets the range apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden(pub &'static str);

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Policy {
    /// A policy that also allows `allow` (CIDR ranges or single addresses).
    ///
    /// # Errors
    /// A message naming the entry that is neither.
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for a in allow.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let net = match a.parse::<IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => a
                    .parse::<IpAddr>()
                    .map(|ip| IpNet::from(canonical(ip)))
                    .map_err(|_| {
                        format!("allow-destination {a:?}: expected CIDR (10.0.0.0/8) or address")
                    })?,
            };
            nets.push(net);
        }
        Ok(Self { allow: nets })
    }

    /// `Ok` when a connection to `ip` is allowed, else why not.
    ///
    /// # Errors
    /// [`Forbidden`] with the kind of address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Forbidden> {
        let ip = canonical(ip);
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match special(ip) {
            Some(why) => Err(Forbidden(why)),
            None => Ok(()),
        }
    }
}

/// `::ffff:a.b.c.d` is a.b.c.d (RFC 4291 §2.5.5.2).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The special-purpose range `ip` is in, if any.
#[must_use]
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// IANA IPv4 Special-Purpose Address Registry (RFC 6890 §2.2.2 and later).
const V4: &[(u32, u8, &str)] = &[
    (
        0x0000_0000,
        8,
        "a \"this network\" address (RFC 1122 §3.2.1.3)",
    ),
    (0x0a00_0000, 8, "a private address (RFC 1918)"),
    (0x6440_0000, 10, "a shared CGNAT address (RFC 6598)"),
    (0x7f00_0000, 8, "a loopback address (RFC 1122 §3.2.1.3)"),
    (
        0xa9fe_0000,
        16,
        "a link-local address (RFC 3927; cloud metadata services live here)",
    ),
    (0xac10_0000, 12, "a private address (RFC 1918)"),
    (0xc000_0000, 24, "an IETF protocol assignment (RFC 6890)"),
    (0xc000_0200, 24, "a documentation address (RFC 5737)"),
    (0xc058_6300, 24, "a 6to4 relay anycast address (RFC 7526)"),
    (0xc0a8_0000, 16, "a private address (RFC 1918)"),
    (0xc612_0000, 15, "a benchmarking address (RFC 2544)"),
    (0xc633_6400, 24, "a documentation address (RFC 5737)"),
    (0xcb00_7100, 24, "a documentation address (RFC 5737)"),
    (0xe000_0000, 4, "a multicast address (RFC 5771)"),
    (
        0xf000_0000,
        4,
        "a reserved or broadcast address (RFC 1112 §4, RFC 919)",
    ),
];

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let a = u32::from(ip);
    V4.iter()
        .find(|(net, len, _)| a >> (32 - u32::from(*len)) == net >> (32 - u32::from(*len)))
        .map(|(_, _, why)| *why)
}

/// IANA IPv6 Special-Purpose Address Registry (RFC 6890 §2.2.3 and later).
const V6: &[(u128, u8, &str)] = &[
    (
        0,
        96,
        "an unspecified, loopback or IPv4-compatible address (RFC 4291 §2.5)",
    ),
    (
        0x0064_ff9b_0001 << 80,
        48,
        "a local-use NAT64 address (RFC 8215)",
    ),
    (0x0100 << 112, 64, "a discard-only address (RFC 6666)"),
    (0x2001 << 112, 23, "an IETF protocol assignment (RFC 2928)"),
    (0x2001_0db8 << 96, 32, "a documentation address (RFC 3849)"),
    (0x3fff << 112, 20, "a documentation address (RFC 9637)"),
    (0x5f00 << 112, 16, "a segment routing address (RFC 9602)"),
    (0xfc00 << 112, 7, "a unique-local address (RFC 4193)"),
    (0xfe80 << 112, 10, "a link-local address (RFC 4291 §2.5.6)"),
    (0xfec0 << 112, 10, "a site-local address (RFC 3879)"),
    (0xff00 << 112, 8, "a multicast address (RFC 4291 §2.7)"),
];

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let a = u128::from(ip);
    if let Some((_, _, why)) = V6
        .iter()
        .find(|(net, len, _)| a >> (128 - u32::from(*len)) == net >> (128 - u32::from(*len)))
    {
        return Some(why);
    }
    // Addresses that carry an IPv4 address: judged by it.
    let embedded = if a >> 32 == 0x0064_ff9b << 64 {
        // RFC 6052 §2.1: the NAT64 well-known prefix 64:ff9b::/96.
        Some(Ipv4Addr::from((a & 0xffff_ffff) as u32))
    } else if a >> 112 == 0x2002 {
        // RFC 3056 §2: 6to4, 2002:V4ADDR::/48.
        Some(Ipv4Addr::from(((a >> 80) & 0xffff_ffff) as u32))
    } else {
        None
    };
    embedded.and_then(special_v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_refused_by_default() {
        let p = Policy::default();
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let addr: IpAddr = ip.parse().expect(ip);
            assert!(p.check(addr).is_err(), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let p = Policy::default();
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "198.17.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2a00:1450:4001::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let addr: IpAddr = ip.parse().expect(ip);
            assert_eq!(p.check(addr), Ok(()), "{ip} must pass");
        }
    }

    #[test]
    fn allow_list_opens_ranges_and_mapped_forms() {
        let p = Policy::new(&["127.0.0.0/8".into(), "fd00::1".into(), " ".into()]).expect("ok");
        assert_eq!(p.check("127.0.0.17".parse().expect("ip")), Ok(()));
        assert_eq!(p.check("::ffff:127.0.0.1".parse().expect("ip")), Ok(()));
        assert_eq!(p.check("fd00::1".parse().expect("ip")), Ok(()));
        assert!(p.check("fd00::2".parse().expect("ip")).is_err());
        assert!(p.check("10.0.0.1".parse().expect("ip")).is_err());
        let Err(e) = p.check("169.254.169.254".parse().expect("ip")) else {
            panic!("metadata address allowed");
        };
        assert!(e.0.contains("metadata"), "{e}");
        assert!(Policy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(Policy::new(&["example.org".into()]).is_err());
        // A host-bits-set CIDR means its network.
        let p = Policy::new(&["10.1.2.3/8".into()]).expect("ok");
        assert_eq!(p.check("10.9.9.9".parse().expect("ip")), Ok(()));
    }
}
