//! Addresses, domains (IDNA), MAIL/RCPT paths and ESMTP parameters, xtext
//! (`mail_wire::{address, path, params}`): everything in the envelope a
//! client writes.
//!
//! Invariants: a parsed domain's ASCII form is lower-case ASCII and parses
//! to itself; a parsed address printed and parsed again is the same
//! address; a mailbox printed and parsed again is the same mailbox; xtext
//! decode/encode round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mail_wire::path::{self, ForwardPath, ReversePath};
use mail_wire::{Address, Domain, params};

fn domain(s: &str) {
    let Ok(d) = Domain::parse(s) else { return };
    assert!(d.as_str().is_ascii());
    assert_eq!(d.as_str(), d.as_str().to_ascii_lowercase());
    let again = Domain::parse(d.as_str()).expect("A-label form parses");
    assert_eq!(again.as_str(), d.as_str());
}

fn address(s: &str) {
    let Ok(a) = Address::parse(s) else { return };
    let printed = a.to_string();
    let again = Address::parse(&printed).expect("printed address parses");
    assert_eq!(again.local, a.local, "{printed:?}");
    assert_eq!(again.domain.as_str(), a.domain.as_str(), "{printed:?}");
    let _ = Address::parse(&a.to_ascii_domain()).expect("ASCII-domain form parses");
}

fn paths(s: &str) {
    let Ok((inner, tail)) = path::split_path(s) else {
        return;
    };
    for utf8 in [false, true] {
        if let Ok(ReversePath::Mailbox(m)) = path::parse_reverse_path(inner, utf8) {
            assert!(utf8 || !m.is_utf8());
            let again = path::parse_reverse_path(&m.address(), utf8);
            assert_eq!(again, Ok(ReversePath::Mailbox(m.clone())), "{inner:?}");
        }
        if let Ok(ForwardPath::Mailbox(m)) = path::parse_forward_path(inner, utf8) {
            assert!(utf8 || !m.is_utf8());
            let again = path::parse_forward_path(&m.address(), utf8);
            assert_eq!(again, Ok(ForwardPath::Mailbox(m.clone())), "{inner:?}");
        }
    }
    let _ = params::parse_mail(tail);
    let _ = params::parse_rcpt(tail);
}

fuzz_target!(|data: &[u8]| {
    // xtext on raw bytes.
    let enc = params::xtext_encode(data);
    assert!(params::is_xtext(&enc));
    assert_eq!(params::xtext_decode(&enc).as_deref(), Some(data));

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    domain(s);
    address(s);
    paths(s);
    let _ = params::split_params(s);
    let _ = params::parse_mail(s);
    let _ = params::parse_rcpt(s);
    let _ = params::parse_notify(s);
    if let Ok(n) = params::parse_decimal(s) {
        assert!(s.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(s.parse::<u64>(), Ok(n));
    }
    if let Some(raw) = params::xtext_decode(s) {
        let back = params::xtext_encode(&raw);
        assert_eq!(params::xtext_decode(&back), Some(raw));
    }
});
