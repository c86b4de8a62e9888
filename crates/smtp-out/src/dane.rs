//! DANE for SMTP (RFC 7672, with RFC 6698 and RFC 7671): TLSA records at
//! `_<port>._tcp.<mx-host>` that make TLS mandatory and authenticate the
//! server's certificate, so that a man in the middle can neither strip
//! STARTTLS nor present a certificate of his own.
//!
//! Trust model (docs/design.md, "DANE"): smtp-out does not validate DNSSEC
//! itself. It asks the configured resolver (`--dns-server`, which must be
//! a local validating resolver such as unbound) with the AD and DO bits set
//! (RFC 6840 §5.7, RFC 3225) and believes the AD bit of its answers
//! (RFC 6698 §4.1: "secure" is what a trusted validating resolver says).
//! An answer without AD is "insecure": DANE does not apply. SERVFAIL is what
//! a validating resolver answers for bogus data.
//!
//! Per destination ([`Dane::policies`]):
//! - the MX RRset must be secure (RFC 7672 §2.2.1), or for a domain without
//!   MX (implicit MX) its own address records;
//! - per MX host, only when its address records are secure is TLSA looked up
//!   (RFC 7672 §2.2.2);
//! - a secure TLSA RRset with usable records (DANE-TA(2) and DANE-EE(3),
//!   selector 0/1, matching 0/1/2; RFC 7672 §3.1) makes authenticated TLS
//!   mandatory for that host; a secure RRset with only unusable records
//!   makes TLS mandatory without authentication (RFC 7672 §2.2);
//! - NXDOMAIN, NODATA or an insecure answer: no DANE for the host;
//! - any other failure of the TLSA lookup for a host whose addresses are
//!   secure (SERVFAIL: bogus; timeout) makes the host unusable for now
//!   (RFC 7672 §2.2.2): the mail waits rather than going in the clear.
//!
//! Certificate checks ([`verify`]): DANE-EE matches the server's own
//! certificate and ignores its names and validity dates (RFC 7672 §3.1.1);
//! DANE-TA needs a certificate in the presented chain to match, which then
//! serves as the trust anchor of a normal chain check whose names are the
//! MX host's (RFC 7672 §3.1.2, §3.2.2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::route::Host;

/// Most TLSA records considered per host.
const MAX_TLSA: usize = 16;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// RFC 7672 §3.1: DANE-TA(2) and DANE-EE(3) with a known selector and
    /// matching type (and a digest of the right length) are usable; PKIX-TA(0)
    /// and PKIX-EE(1) are not used for SMTP (RFC 7672 §3.1.3).
    #[must_use]
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Does `cert` (DER) match this record's selector and matching type?
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        // Public data, no secret: plain comparison is fine.
        association(cert, self.selector, self.matching).is_some_and(|d| d == self.data)
    }
}

/// The certificate association data of `cert` for a TLSA record with this
/// selector (0 full certificate, 1 SubjectPublicKeyInfo) and matching type
/// (0 exact, 1 SHA-256, 2 SHA-512), RFC 6698 §2.1.2–2.1.3; `None` for an
/// unknown selector or matching type or an unparsable certificate. Also
/// what an operator publishes: `3 1 1 <hex of association(cert, 1, 1)>`.
#[must_use]
pub fn association(cert: &CertificateDer<'_>, selector: u8, matching: u8) -> Option<Vec<u8>> {
    let selected: Vec<u8> = match selector {
        0 => cert.as_ref().to_vec(),
        1 => webpki::EndEntityCert::try_from(cert)
            .ok()?
            .subject_public_key_info()
            .as_ref()
            .to_vec(),
        _ => return None,
    };
    match matching {
        0 => Some(selected),
        1 => Some(
            ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
        ),
        2 => Some(
            ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
        ),
        _ => None,
    }
}

/// What DANE demands of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// No secure TLSA records: opportunistic TLS as usual.
    None,
    /// Secure, usable TLSA records: TLS authenticated by them, or nothing.
    Authenticated(Arc<Vec<Tlsa>>),
    /// A secure TLSA RRset without usable records: TLS without
    /// authentication, but never plaintext (RFC 7672 §2.2).
    Encrypted,
    /// The TLSA lookup failed (bogus or unanswered) although the host's
    /// addresses are secure: not used now (RFC 7672 §2.2.2).
    Failed(String),
}

/// One DNS answer as the validating resolver gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// The AD bit: the resolver validated the answer (RFC 4035 §3.2.3).
    pub secure: bool,
    pub records: Vec<RData>,
}

/// Queries the validating resolver directly (hickory's resolver API does
/// not hand out the AD bit), one question per message, UDP with TCP when
/// truncated (RFC 1035 §4.2.1, RFC 7766).
#[derive(Debug, Clone)]
pub struct SecureDns {
    server: SocketAddr,
    timeout: Duration,
}

impl SecureDns {
    #[must_use]
    pub fn new(server: SocketAddr, timeout: Duration) -> Self {
        Self { server, timeout }
    }

    fn request(name: &Name, rtype: RecordType) -> (u16, Vec<u8>) {
        let id: u16 = rand::random();
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = true;
        // RFC 6840 §5.7: AD in the query asks for AD in the answer; DO
        // (RFC 3225) for resolvers that only set AD when asked with DO.
        m.metadata.authentic_data = true;
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        m.set_edns(edns);
        m.add_query(Query::query(name.clone(), rtype));
        // Encoding a well-formed query cannot fail.
        (id, m.to_vec().unwrap_or_default())
    }

    /// Asks once over UDP (twice on timeout), then over TCP when truncated.
    ///
    /// # Errors
    /// A description: timeout, I/O error, or an undecodable answer.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let qname = Name::from_ascii(&fqdn).map_err(|e| format!("{fqdn}: {e}"))?;
        let mut last = String::new();
        for _ in 0..2 {
            match self.udp(&qname, rtype).await {
                Ok(m) if m.metadata.truncation => {
                    return self.tcp(&qname, rtype).await.map(Self::answer);
                }
                Ok(m) => return Ok(Self::answer(m)),
                Err(e) => last = e,
            }
        }
        Err(format!("{fqdn} {rtype}: {last}"))
    }

    fn answer(m: Message) -> Answer {
        Answer {
            rcode: m.metadata.response_code,
            secure: m.metadata.authentic_data,
            records: m.answers.into_iter().map(|r| r.data).collect(),
        }
    }

    async fn udp(&self, qname: &Name, rtype: RecordType) -> Result<Message, String> {
        let (id, wire) = Self::request(qname, rtype);
        let bind: SocketAddr = if self.server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| e.to_string())?;
        sock.connect(self.server).await.map_err(|e| e.to_string())?;
        sock.send(&wire).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            // A datagram that is not the answer to this question is ignored
            // (RFC 5452 §9.1: id and question must match).
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == id
                && m.queries.first().is_some_and(|q| q.name() == qname)
            {
                return Ok(m);
            }
        }
    }

    async fn tcp(&self, qname: &Name, rtype: RecordType) -> Result<Message, String> {
        let (id, wire) = Self::request(qname, rtype);
        let work = async {
            let mut s = tokio::net::TcpStream::connect(self.server)
                .await
                .map_err(|e| e.to_string())?;
            let len = u16::try_from(wire.len()).map_err(|e| e.to_string())?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&wire);
            s.write_all(&framed).await.map_err(|e| e.to_string())?;
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
            if m.metadata.id != id {
                return Err("answer id mismatch".to_string());
            }
            Ok(m)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timeout (tcp)".to_string())?
    }
}

/// DANE lookups for the MX hosts of a destination.
#[derive(Debug, Clone)]
pub struct Dane {
    dns: SecureDns,
    /// The SMTP port: TLSA records live at `_<port>._tcp.<host>` (25).
    port: u16,
}

impl Dane {
    #[must_use]
    pub fn new(dns: SecureDns, port: u16) -> Self {
        Self { dns, port }
    }

    /// What DANE demands of each host of `domain`'s route (hosts missing
    /// from the map: no DANE).
    pub async fn policies(&self, domain: &str, hosts: &[Host]) -> HashMap<String, HostPolicy> {
        let mut out = HashMap::new();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.starts_with('[') {
            return out; // address literal: no DNS, no DANE
        }
        let implicit = hosts.len() == 1 && hosts[0].name == domain;
        if !implicit {
            // RFC 7672 §2.2.1: DANE only for MX records that are secure.
            match self.dns.query(&domain, RecordType::MX).await {
                Ok(a) if a.secure && a.rcode == ResponseCode::NoError => {}
                Ok(_) | Err(_) => return out,
            }
        }
        for h in hosts {
            let p = self.host(h).await;
            if p != HostPolicy::None {
                tracing::debug!(host = %h.name, policy = ?p, "DANE");
            }
            out.insert(h.name.clone(), p);
        }
        out
    }

    /// Are the address records of `h` that we use secure?
    async fn addresses_secure(&self, h: &Host) -> bool {
        let mut types = Vec::new();
        if h.addrs.iter().any(SocketAddr::is_ipv4) {
            types.push(RecordType::A);
        }
        if h.addrs.iter().any(SocketAddr::is_ipv6) {
            types.push(RecordType::AAAA);
        }
        for t in types {
            match self.dns.query(&h.name, t).await {
                Ok(a) if a.secure && a.rcode == ResponseCode::NoError => {}
                _ => return false,
            }
        }
        true
    }

    async fn host(&self, h: &Host) -> HostPolicy {
        if h.name.parse::<std::net::IpAddr>().is_ok() || !self.addresses_secure(h).await {
            return HostPolicy::None;
        }
        let name = format!("_{}._tcp.{}", self.port, h.name);
        let a = match self.dns.query(&name, RecordType::TLSA).await {
            Ok(a) => a,
            Err(e) => return HostPolicy::Failed(format!("TLSA lookup {e}")),
        };
        match a.rcode {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return HostPolicy::None,
            other => {
                return HostPolicy::Failed(format!(
                    "TLSA lookup {name}: {other} (DNSSEC-bogus or unresolvable)"
                ));
            }
        }
        let records: Vec<Tlsa> = a
            .records
            .iter()
            .filter_map(|r| match r {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .take(MAX_TLSA)
            .collect();
        if records.is_empty() || !a.secure {
            return HostPolicy::None;
        }
        let usable: Vec<Tlsa> = records.into_iter().filter(Tlsa::usable).collect();
        if usable.is_empty() {
            HostPolicy::Encrypted
        } else {
            HostPolicy::Authenticated(Arc::new(usable))
        }
    }
}

/// Does the chain the server presented (end entity first) satisfy one of
/// `records` for `host`?
///
/// # Errors
/// Why not, for the event log and the deferral reason.
pub fn verify(
    records: &[Tlsa],
    chain: &[CertificateDer<'_>],
    host: &ServerName<'_>,
) -> Result<(), String> {
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("DANE: no certificate presented".into());
    };
    // RFC 7672 §3.1.1: DANE-EE binds the key or certificate; names and
    // dates do not matter.
    if records.iter().any(|r| r.usage == 3 && r.matches(leaf)) {
        return Ok(());
    }
    let mut ta_error = None;
    for r in records.iter().filter(|r| r.usage == 2) {
        // RFC 7671 §5.2.2: the TA is expected in the chain the server sends.
        for ta in rest.iter().filter(|c| r.matches(c)) {
            match chain_to(ta, leaf, rest, host) {
                Ok(()) => return Ok(()),
                Err(e) => ta_error = Some(e),
            }
        }
    }
    Err(match ta_error {
        Some(e) => format!("DANE-TA: {e}"),
        None => "DANE: no TLSA record matches the certificate chain".into(),
    })
}

/// RFC 7672 §3.1.2: a chain check with `ta` as the only trust anchor and
/// the MX host name as reference identifier (§3.2.2).
fn chain_to(
    ta: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &ServerName<'_>,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ta.clone().into_owned())
        .map_err(|e| format!("unusable trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    v.verify_server_cert(leaf, intermediates, host, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("certificate not valid for {}: {e}", host.to_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec![name.to_string()])
            .expect("cert")
            .cert
            .der()
            .clone()
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_string()).expect("name")
    }

    #[test]
    fn dane_ee_matches_the_leaf_whatever_its_names() {
        let cert = self_signed("other.name.test");
        let spki = webpki::EndEntityCert::try_from(&cert)
            .expect("parse")
            .subject_public_key_info()
            .as_ref()
            .to_vec();
        let full = Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data: sha256(cert.as_ref()),
        };
        let key = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha256(&spki),
        };
        let exact = Tlsa {
            usage: 3,
            selector: 1,
            matching: 0,
            data: spki.clone(),
        };
        let sha512 = Tlsa {
            usage: 3,
            selector: 1,
            matching: 2,
            data: ring::digest::digest(&ring::digest::SHA512, &spki)
                .as_ref()
                .to_vec(),
        };
        for r in [full, key, exact, sha512] {
            assert!(r.usable(), "{r:?}");
            verify(
                std::slice::from_ref(&r),
                std::slice::from_ref(&cert),
                &name("mx.dane.test"),
            )
            .unwrap_or_else(|e| panic!("{r:?}: {e}"));
        }
        let wrong = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha256(b"another key"),
        };
        let e = verify(&[wrong], &[cert], &name("mx.dane.test")).expect_err("mismatch");
        assert!(e.contains("no TLSA record matches"), "{e}");
    }

    #[test]
    fn unusable_records_are_recognised() {
        let r = |usage, selector, matching, len| Tlsa {
            usage,
            selector,
            matching,
            data: vec![1; len],
        };
        assert!(!r(1, 1, 1, 32).usable(), "PKIX-EE is not for SMTP");
        assert!(!r(0, 0, 1, 32).usable(), "PKIX-TA is not for SMTP");
        assert!(!r(3, 2, 1, 32).usable(), "unknown selector");
        assert!(!r(3, 1, 3, 32).usable(), "unknown matching type");
        assert!(!r(3, 1, 1, 31).usable(), "short SHA-256");
        assert!(!r(3, 1, 2, 32).usable(), "short SHA-512");
        assert!(r(2, 0, 2, 64).usable());
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_and_the_mx_name() {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "DANE TA");
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["mx.ta.test".to_string()]).expect("p");
        leaf.extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
        let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let ta = Tlsa {
            usage: 2,
            selector: 0,
            matching: 1,
            data: sha256(ca_cert.der()),
        };
        verify(std::slice::from_ref(&ta), &chain, &name("mx.ta.test")).expect("valid");
        let e = verify(std::slice::from_ref(&ta), &chain, &name("mx.other.test"))
            .expect_err("wrong name");
        assert!(
            e.starts_with("DANE-TA: certificate not valid for mx.other.test"),
            "{e}"
        );
        let e = verify(&[ta], &chain[..1], &name("mx.ta.test")).expect_err("no TA sent");
        assert!(e.contains("no TLSA record matches"), "{e}");
    }
}
