//! Property tests for the SMTP wire vocabulary (issue #18): what we render
//! parses back, what we encode decodes back, and no input makes a parser
//! panic. The coverage-guided fuzzers in `fuzz/` push the same parsers much
//! further; these run in the normal test suite in a few seconds.

use std::borrow::Cow;

use mail_wire::body::{BodyDecoder, Mode};
use mail_wire::sasl::{self, login, plain, scram};
use mail_wire::{Address, Domain, EnhancedStatus, Reply, crlf, dotstuff, params, path, reply};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Bytes rich in the characters that matter to line handling.
fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"\r\n.\r\n.ab".to_vec()),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// Reply text as a server could mean it: no control characters but tab,
/// CR and LF (which rendering turns into spaces).
fn reply_text() -> impl Strategy<Value = String> {
    "[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]{0,60}"
}

fn status_for(code: u16) -> impl Strategy<Value = Option<EnhancedStatus>> {
    let class = u8::try_from(code / 100).unwrap_or(5);
    prop_oneof![
        Just(None),
        (0u16..1000, 0u16..1000).prop_map(move |(s, d)| {
            matches!(class, 2 | 4 | 5).then(|| EnhancedStatus::new(class, s, d))
        }),
    ]
}

/// A reply in canonical form: lines start with a letter (so none looks
/// like a status code) and carry no line breaks.
fn canonical_reply() -> impl Strategy<Value = Reply> {
    (200u16..600).prop_flat_map(|code| {
        (
            Just(code),
            status_for(code),
            prop::collection::vec("([a-zA-Z\u{e9}][ -~\u{e9}\u{4e2d}]{0,40})?", 1..6),
        )
            .prop_map(|(code, status, lines)| {
                Reply::multi(code, status, lines.into_iter().map(Cow::Owned).collect())
            })
    })
}

/// Any reply a handler could build.
fn any_reply() -> impl Strategy<Value = Reply> {
    (
        any::<u16>(),
        prop::option::of((
            prop::sample::select(vec![2u8, 4, 5]),
            0u16..1000,
            0u16..1000,
        )),
        prop::collection::vec(reply_text(), 0..6),
    )
        .prop_map(|(code, status, lines)| {
            Reply::multi(
                code,
                status.map(|(c, s, d)| EnhancedStatus::new(c, s, d)),
                lines.into_iter().map(Cow::Owned).collect(),
            )
        })
}

/// Decodes DATA fed in the given pieces: (end offset, content, defect).
fn decode_data(parts: &[&[u8]]) -> (Option<usize>, Vec<u8>, Option<mail_wire::body::Defect>) {
    let mut d = BodyDecoder::new(Mode::Data, u64::MAX);
    let mut out = Vec::new();
    let mut offset = 0;
    for part in parts {
        let (n, end) = d.feed(part, &mut out);
        offset += n;
        if end {
            return (Some(offset), out, d.defect());
        }
    }
    (None, out, d.defect())
}

proptest! {
    #![proptest_config(config())]

    /// Every canonical reply renders and parses back equal, consuming
    /// exactly what was written.
    #[test]
    fn reply_render_parse_round_trip(r in canonical_reply()) {
        let wire = r.to_wire();
        let (back, n) = reply::parse(wire.as_bytes()).expect("valid").expect("complete");
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(&back, &r);
    }

    /// Any reply renders to bytes that parse, and rendering is stable:
    /// render(parse(render(r))) == render(r). No text forges a reply line.
    #[test]
    fn any_reply_renders_parseable(r in any_reply()) {
        let wire = r.to_wire();
        let (back, n) = reply::parse(wire.as_bytes()).expect("valid").expect("complete");
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(back.to_wire(), wire);
        prop_assert_eq!(back.lines.len(), r.lines.len().max(1));
    }

    /// Dot-stuffing a message then decoding it as DATA gives the message
    /// with every line end made CRLF, ending exactly at the final ".CRLF",
    /// however both sides are chunked.
    #[test]
    fn dotstuff_then_decode(raw in wire_bytes(400), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
        // Encode in chunks.
        let mut enc = dotstuff::DotStuffer::new();
        let mut wire = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(raw.len() + 1)).collect();
        points.sort_unstable();
        let mut prev = 0;
        for &p in &points {
            enc.encode(&raw[prev..p], &mut wire);
            prev = p;
        }
        enc.encode(&raw[prev..], &mut wire);
        enc.finish(&mut wire);
        prop_assert_eq!(&wire, &dotstuff::encode_all(&raw));
        let sent = wire.len();
        wire.extend_from_slice(b"MAIL FROM:<x@y>\r\n");

        let mut want = crlf::normalise_crlf(&raw);
        if !want.is_empty() && !want.ends_with(b"\r\n") {
            want.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(want.len() as u64, crlf::crlf_size(&raw));
        // Decode whole and in pieces.
        let whole = decode_data(&[&wire]);
        prop_assert_eq!(&whole, &(Some(sent), want, None));
        let cut = cuts.first().map_or(0, |c| c.index(wire.len() + 1));
        let (a, b) = wire.split_at(cut);
        prop_assert_eq!(decode_data(&[a, b]), whole);
    }

    /// xtext (RFC 3461 §4) round-trips for any bytes, and valid xtext
    /// decodes to bytes that encode to valid xtext.
    #[test]
    fn xtext_round_trip(raw in any::<Vec<u8>>(), s in "[!-~]{0,40}") {
        let enc = params::xtext_encode(&raw);
        prop_assert!(params::is_xtext(&enc));
        prop_assert_eq!(params::xtext_decode(&enc), Some(raw));
        if let Some(dec) = params::xtext_decode(&s) {
            let again = params::xtext_encode(&dec);
            prop_assert_eq!(params::xtext_decode(&again), Some(dec));
        }
    }

    /// SASL PLAIN: what a client encodes, the server decodes to the same
    /// identities and password.
    #[test]
    fn sasl_plain_round_trip(
        authzid in prop::option::of("[^\\x00]{1,20}"),
        authcid in "[^\\x00]{1,30}",
        password in "[^\\x00]{0,30}",
    ) {
        let mut raw = authzid.clone().unwrap_or_default().into_bytes();
        raw.push(0);
        raw.extend_from_slice(authcid.as_bytes());
        raw.push(0);
        raw.extend_from_slice(password.as_bytes());
        let line = sasl::encode(&raw);
        let p = plain::decode(line.as_bytes()).expect("decodes");
        prop_assert_eq!(&p.authzid, &authzid);
        prop_assert_eq!(&p.authcid, &authcid);
        prop_assert_eq!(&p.password, &password);
        let creds = plain::decode_credentials(&line);
        if password.is_empty() || authzid.as_ref().is_some_and(|z| *z != authcid) {
            prop_assert!(creds.is_err());
        } else {
            prop_assert_eq!(creds.expect("credentials").username, authcid);
        }
    }

    /// Any bytes to any parser: a value or an error, never a panic.
    #[test]
    fn parsers_never_panic(data in prop_oneof![wire_bytes(300), any::<Vec<u8>>()]) {
        let _ = reply::parse(&data);
        let text = String::from_utf8_lossy(&data);
        let _ = Domain::parse(&text);
        let _ = Address::parse(&text);
        if let Ok((inner, tail)) = path::split_path(&text) {
            for utf8 in [false, true] {
                let _ = path::parse_reverse_path(inner, utf8);
                let _ = path::parse_forward_path(inner, utf8);
            }
            let _ = params::parse_mail(tail);
            let _ = params::parse_rcpt(tail);
        }
        let _ = params::split_params(&text);
        let _ = params::parse_notify(&text);
        let _ = params::parse_decimal(&text);
        let _ = params::xtext_decode(&text);
        let _ = sasl::decode_base64(&data);
        let _ = plain::parse(&data);
        let _ = plain::decode(&data);
        let _ = login::decode_username(&text);
        let _ = scram::parse_client_first(&data);
        let _ = scram::parse_client_final(&data);
        for mode in [Mode::Data, Mode::Bdat] {
            let mut d = BodyDecoder::new(mode, 100);
            let mut out = Vec::new();
            let (n, _) = d.feed(&data, &mut out);
            prop_assert!(n <= data.len());
            prop_assert!(out.len() <= 100);
            d.finish();
        }
    }
}
