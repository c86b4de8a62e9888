//! # test-dns
//!
//! A minimal authoritative DNS responder (RFC 1035 wire format, UDP and TCP)
//! for tests, on 127.0.0.1 and an ephemeral port. It serves MX, A, AAAA,
//! TXT, TLSA and SRV records set by the test; a name with no records is NXDOMAIN,
//! a name with records of other types is NODATA (NOERROR, empty answer).
//! Names can also be made to answer SERVFAIL or to stay silent (a timeout).
//!
//! DNSSEC is not signed here: a name marked [`TestDns::secure`] answers
//! with the AD bit set (RFC 4035 §3.2.3), as a validating resolver does for
//! data it validated; SERVFAIL is what such a resolver answers for bogus
//! data. That is all a client that trusts its resolver's AD bit
//! (RFC 6698 §4.1, RFC 7672 §2.1.1) can see.
//!
//! ```no_run
//! # async fn f() {
//! let dns = test_dns::TestDns::start().await;
//! dns.mx("b.test", 10, "mx.b.test");
//! dns.a("mx.b.test", [127, 0, 0, 3].into());
//! dns.null_mx("nomail.test");
//! // resolver → dns.addr
//! # }
//! ```
//!
//! Written by hand rather than with hickory-server to keep the test kit
//! small and its behaviour (SERVFAIL, silence) fully under the test's control.
#![allow(clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

const TYPE_A: u16 = 1;
const TYPE_MX: u16 = 15;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_TLSA: u16 = 52;
const TYPE_SRV: u16 = 33;

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Mx {
        preference: u16,
        exchange: String,
    },
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
    /// RFC 6698 §2.1: usage, selector, matching type, association data.
    Tlsa {
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    },
    /// RFC 2782: priority, weight, port, target.
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl Record {
    fn rtype(&self) -> u16 {
        match self {
            Record::Mx { .. } => TYPE_MX,
            Record::A(_) => TYPE_A,
            Record::Aaaa(_) => TYPE_AAAA,
            Record::Txt(_) => TYPE_TXT,
            Record::Tlsa { .. } => TYPE_TLSA,
            Record::Srv { .. } => TYPE_SRV,
        }
    }

    fn rdata(&self) -> Vec<u8> {
        match self {
            Record::Mx {
                preference,
                exchange,
            } => {
                let mut v = preference.to_be_bytes().to_vec();
                encode_name(exchange, &mut v);
                v
            }
            Record::A(ip) => ip.octets().to_vec(),
            Record::Aaaa(ip) => ip.octets().to_vec(),
            // RFC 1035 §3.3.14: character-strings of at most 255 octets.
            Record::Txt(text) => {
                let mut v = Vec::new();
                let bytes = text.as_bytes();
                if bytes.is_empty() {
                    v.push(0);
                }
                for chunk in bytes.chunks(255) {
                    v.push(u8::try_from(chunk.len()).unwrap_or(255));
                    v.extend_from_slice(chunk);
                }
                v
            }
            Record::Tlsa {
                usage,
                selector,
                matching,
                data,
            } => {
                let mut v = vec![*usage, *selector, *matching];
                v.extend_from_slice(data);
                v
            }
            // RFC 2782: the target is not compressed.
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                let mut v = priority.to_be_bytes().to_vec();
                v.extend_from_slice(&weight.to_be_bytes());
                v.extend_from_slice(&port.to_be_bytes());
                encode_name(target, &mut v);
                v
            }
        }
    }
}

/// How a name answers besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    ServFail,
    Silent,
}

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<Record>>,
    special: HashMap<String, Behaviour>,
    /// Names whose answers carry the AD bit.
    secure: std::collections::HashSet<String>,
    queries: u64,
}

/// The running server. Dropping it stops it.
pub struct TestDns {
    /// UDP and TCP address (same port).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Starts on 127.0.0.1 with an ephemeral port (UDP and TCP).
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on the given address (port 0 = any free port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        // Find a port free for both UDP and TCP.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(addr).await.expect("bind test DNS (udp)");
            let local = udp.local_addr().expect("udp addr");
            match TcpListener::bind(local).await {
                Ok(tcp) => break (udp, tcp),
                Err(_) if addr.port() == 0 => {}
                Err(e) => panic!("bind test DNS (tcp): {e}"),
            }
        };
        let addr = udp.local_addr().expect("udp addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(mut resp) = answer(&z, &buf[..n]) {
                    // RFC 1035 §4.2.1: truncate to 512 octets over UDP.
                    if resp.len() > 512 {
                        resp.truncate(12);
                        resp[2] |= 0x02; // TC
                        resp[4..12].fill(0);
                    }
                    let _ = udp.send_to(&resp, peer).await;
                }
            }
        });
        let z = zone.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let z = z.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some(resp) = answer(&z, &q) else { return };
                        let Ok(l) = u16::try_from(resp.len()) else {
                            return;
                        };
                        if s.write_all(&l.to_be_bytes()).await.is_err()
                            || s.write_all(&resp).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            zone,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> R {
        let mut z = self.zone.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut z)
    }

    /// Adds a record.
    pub fn add(&self, name: &str, record: Record) {
        self.with(|z| z.records.entry(key(name)).or_default().push(record));
    }

    /// Adds an MX record.
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) {
        self.add(
            domain,
            Record::Mx {
                preference,
                exchange: exchange.to_string(),
            },
        );
    }

    /// RFC 7505 Null MX: `0 .`.
    pub fn null_mx(&self, domain: &str) {
        self.mx(domain, 0, ".");
    }

    /// Adds an A record.
    pub fn a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, Record::A(ip));
    }

    /// Adds an AAAA record.
    pub fn aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.add(name, Record::Aaaa(ip));
    }

    /// Adds a TXT record (split into 255-octet strings).
    pub fn txt(&self, name: &str, text: &str) {
        self.add(name, Record::Txt(text.to_string()));
    }

    /// Adds a TLSA record (RFC 6698 §2.1), e.g. at `_25._tcp.mx.b.test`.
    pub fn tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) {
        self.add(
            name,
            Record::Tlsa {
                usage,
                selector,
                matching,
                data: data.to_vec(),
            },
        );
    }

    /// Answers for the name (records, NODATA or NXDOMAIN) carry the AD
    /// bit: a validating resolver found them DNSSEC-secure.
    pub fn secure(&self, name: &str) {
        self.with(|z| z.secure.insert(key(name)));
    }

    /// Removes every record of a name (it becomes NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.with(|z| {
            z.records.remove(&key(name));
            z.special.remove(&key(name));
            z.secure.remove(&key(name));
        });
    }

    /// The name exists (NOERROR) but has no records: NODATA for every type.
    pub fn empty(&self, name: &str) {
        self.with(|z| z.records.entry(key(name)).or_default().clear());
    }

    /// Every query for the name answers SERVFAIL.
    pub fn servfail(&self, name: &str) {
        self.with(|z| z.special.insert(key(name), Behaviour::ServFail));
    }

    /// Queries for the name get no answer (the resolver times out).
    pub fn silent(&self, name: &str) {
        self.with(|z| z.special.insert(key(name), Behaviour::Silent));
    }

    /// Queries answered so far.
    #[must_use]
    pub fn queries(&self) -> u64 {
        self.with(|z| z.queries)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() {
            continue;
        }
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(u8::try_from(l.len()).unwrap_or(63));
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// Reads the (uncompressed) question name at `pos`; returns it and the
/// position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut total = 0usize;
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None; // no compression in questions
        }
        let label = msg.get(pos..pos + len)?;
        total += len + 1;
        if total > 255 {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    Some((labels.join("."), pos))
}

/// Builds the response to one query, or `None` to stay silent.
fn answer(zone: &Mutex<Zone>, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let id = [q[0], q[1]];
    let flags = q[2];
    if flags & 0x80 != 0 {
        return None; // a response, not a query
    }
    let opcode = (flags >> 3) & 0x0F;
    let rd = flags & 0x01;
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    let header = |rcode: u8, an: u16| {
        let mut h = Vec::with_capacity(512);
        h.extend_from_slice(&id);
        h.push(0x80 | (opcode << 3) | 0x04 | rd); // QR, AA
        h.push(0x80 | rcode); // RA (AD is set below for secure names)
        h.extend_from_slice(&1u16.to_be_bytes());
        h.extend_from_slice(&an.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h
    };
    if opcode != 0 || qdcount != 1 {
        let mut r = header(
            if opcode != 0 {
                RCODE_NOTIMP
            } else {
                RCODE_FORMERR
            },
            0,
        );
        r[4..6].copy_from_slice(&0u16.to_be_bytes());
        return Some(r);
    }
    let Some((name, end)) = read_name(q, 12) else {
        let mut r = header(RCODE_FORMERR, 0);
        r[4..6].copy_from_slice(&0u16.to_be_bytes());
        return Some(r);
    };
    let question = q.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([q[end], q[end + 1]]);
    let mut z = zone.lock().unwrap_or_else(|e| e.into_inner());
    z.queries += 1;
    match z.special.get(&name) {
        Some(Behaviour::Silent) => return None,
        Some(Behaviour::ServFail) => {
            let mut r = header(RCODE_SERVFAIL, 0);
            r.extend_from_slice(question);
            return Some(r);
        }
        None => {}
    }
    // RFC 4035 §3.2.3 / RFC 6840 §5.8: AD only for validated (secure) data.
    let ad = if z.secure.contains(&name) { 0x20 } else { 0 };
    let Some(records) = z.records.get(&name) else {
        let mut r = header(RCODE_NXDOMAIN, 0);
        r[3] |= ad;
        r.extend_from_slice(question);
        return Some(r);
    };
    let matching: Vec<&Record> = records.iter().filter(|r| r.rtype() == qtype).collect();
    let mut r = header(
        RCODE_NOERROR,
        u16::try_from(matching.len()).unwrap_or(u16::MAX),
    );
    r[3] |= ad;
    r.extend_from_slice(question);
    for rec in matching {
        r.extend_from_slice(&[0xC0, 0x0C]); // pointer to the question name
        r.extend_from_slice(&rec.rtype().to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s: tests change records
        let data = rec.rdata();
        r.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::rr::RData;

    fn resolver(addr: SocketAddr) -> TokioResolver {
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in &mut ns.connections {
            c.port = addr.port();
        }
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        b.options_mut().timeout = std::time::Duration::from_millis(300);
        b.options_mut().attempts = 1;
        b.build().expect("resolver")
    }

    #[tokio::test]
    async fn serves_records_to_hickory() {
        let dns = TestDns::start().await;
        dns.mx("b.test", 10, "mx.b.test");
        dns.mx("b.test", 20, "mx2.b.test");
        dns.a("mx.b.test", Ipv4Addr::new(127, 0, 0, 3));
        dns.aaaa("mx.b.test", Ipv6Addr::LOCALHOST);
        dns.txt("sel._domainkey.b.test", &"v=DKIM1; p=".repeat(40));
        dns.null_mx("nomail.test");
        dns.empty("nodata.test");
        dns.servfail("broken.test");
        dns.silent("slow.test");
        let r = resolver(dns.addr);
        let mx = r.mx_lookup("b.test.").await.expect("mx");
        let mut got: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|a| match &a.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(10, "mx.b.test.".into()), (20, "mx2.b.test.".into())]
        );
        let ips: Vec<_> = r
            .lookup_ip("mx.b.test.")
            .await
            .expect("ip")
            .iter()
            .collect();
        assert!(ips.contains(&"127.0.0.3".parse().expect("ip")));
        let txt = r.txt_lookup("sel._domainkey.b.test.").await.expect("txt");
        let joined: String = txt
            .answers()
            .iter()
            .filter_map(|a| match &a.data {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        assert!(joined.starts_with("v=DKIM1; p="), "{joined}");
        let null = r.mx_lookup("nomail.test.").await.expect("null mx");
        assert!(matches!(&null.answers()[0].data, RData::MX(m) if m.exchange.is_root()));
        let e = r.mx_lookup("nowhere.test.").await.expect_err("nx");
        assert!(e.is_nx_domain(), "{e:?}");
        let e = r.mx_lookup("nodata.test.").await.expect_err("nodata");
        assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
        let e = r.mx_lookup("broken.test.").await.expect_err("servfail");
        assert!(!e.is_no_records_found(), "{e:?}");
        let e = r.mx_lookup("slow.test.").await.expect_err("timeout");
        assert!(!e.is_no_records_found(), "{e:?}");
        assert!(dns.queries() >= 6);
    }

    #[tokio::test]
    async fn serves_tlsa_and_sets_ad_only_for_secure_names() {
        use hickory_resolver::proto::op::{Message, Query};
        use hickory_resolver::proto::rr::{Name, RecordType};
        let dns = TestDns::start().await;
        dns.tlsa("_25._tcp.mx.b.test", 3, 1, 1, &[0xAB; 32]);
        dns.secure("_25._tcp.mx.b.test");
        dns.a("mx.b.test", Ipv4Addr::new(127, 0, 0, 3));
        let ask = |name: &str, rtype: RecordType| {
            let mut m = Message::query();
            m.metadata.id = 7;
            m.metadata.recursion_desired = true;
            m.metadata.authentic_data = true;
            m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
            m.to_vec().expect("encode")
        };
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.send_to(&ask("_25._tcp.mx.b.test.", RecordType::TLSA), dns.addr)
            .await
            .expect("send");
        let mut buf = vec![0u8; 1500];
        let n = sock.recv(&mut buf).await.expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("decode");
        assert!(m.metadata.authentic_data, "secure name: AD");
        let RData::TLSA(t) = &m.answers[0].data else {
            panic!("not TLSA: {:?}", m.answers);
        };
        assert_eq!(u8::from(t.cert_usage), 3);
        assert_eq!(u8::from(t.selector), 1);
        assert_eq!(u8::from(t.matching), 1);
        assert_eq!(t.cert_data, vec![0xAB; 32]);
        sock.send_to(&ask("mx.b.test.", RecordType::A), dns.addr)
            .await
            .expect("send");
        let n = sock.recv(&mut buf).await.expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("decode");
        assert!(!m.metadata.authentic_data, "insecure name: no AD");
        assert_eq!(m.answers.len(), 1);
    }
}
