//! The receiver's SMTP grammar, pure: bytes in, commands / replies out. No
//! tokio, no tonic here, so all of it is tested with plain unit tests. The
//! vocabulary shared with the other services (paths, parameters, replies,
//! SASL, the DATA decoder) is `mail-wire`; this module holds what only a
//! receiver needs: command lines, line framing and its table of replies.

pub mod codes;
pub mod command;
pub mod line;

pub use codes::Reply;

/// Randomised tests (a cheap stand-in for fuzzing, seeded so failures
/// reproduce): no input makes a parser panic, and every body survives a
/// dot-stuffing round trip through the DATA decoder.
#[cfg(test)]
mod random_tests {
    use super::{command, line};
    use mail_wire::body::{BodyDecoder, Mode};
    use mail_wire::{path, sasl};

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }
        fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
            items[self.below(items.len())]
        }
    }

    const PIECES: &[&[u8]] = &[
        b"MAIL FROM:",
        b"RCPT TO:",
        b"<",
        b">",
        b"@",
        b"%",
        b"!",
        b"\"",
        b"\\",
        b" ",
        b"=",
        b"SIZE=",
        b"NOTIFY=",
        b"ORCPT=rfc822;",
        b"BDAT ",
        b"AUTH ",
        b"EHLO",
        b"a",
        b"ours.example",
        b".",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b"\xc3\xa9",
        b"\xff",
        b"99999999999999999999999",
        b"+2B",
    ];

    #[test]
    fn parsers_never_panic() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(12) {
                input.extend_from_slice(rng.pick(PIECES));
            }
            let _ = command::parse_command(&input);
            let _ = line::frame(&input, 64);
            if let Ok(s) = std::str::from_utf8(&input) {
                let _ = path::parse_forward_path(s, rng.below(2) == 0);
                let _ = path::parse_reverse_path(s, rng.below(2) == 0);
                let _ = sasl::plain::decode_credentials(s);
            }
            let mut d = BodyDecoder::new(Mode::Data, 1 << 20);
            let mut out = Vec::new();
            let _ = d.feed(&input, &mut out);
        }
    }

    /// RFC 5321 §4.5.2: for any CRLF-only body, stuffing then decoding
    /// gives the body back, and the end is exactly after ".\r\n".
    #[test]
    fn dot_stuffing_round_trip() {
        let mut rng = Rng(0xD07_5EED);
        let atoms: &[&[u8]] = &[b".", b"..", b"a", b" ", b"\x00", b"\xe2\x82\xac", b"x.y"];
        for _ in 0..5_000 {
            let mut body = Vec::new();
            for _ in 0..rng.below(8) {
                for _ in 0..rng.below(4) {
                    body.extend_from_slice(rng.pick(atoms));
                }
                body.extend_from_slice(b"\r\n");
            }
            let mut wire = Vec::new();
            for l in body.split_inclusive(|&b| b == b'\n') {
                if l.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(l);
            }
            wire.extend_from_slice(b".\r\nQUIT\r\n");
            let mut d = BodyDecoder::new(Mode::Data, 1 << 20);
            let mut out = Vec::new();
            let (n, end) = d.feed(&wire, &mut out);
            assert!(end);
            assert_eq!(n, wire.len() - b"QUIT\r\n".len());
            assert_eq!(out, body, "{wire:?}");
            assert_eq!(d.defect(), None);
        }
    }
}
