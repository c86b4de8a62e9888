//! DATA encoding (RFC 5321 §4.5.2 transparency, §2.3.8 line endings), pure
//! and incremental.
//!
//! Every line ending of the stored message — CRLF, bare LF, bare CR — goes
//! out as CRLF, and a line that starts with `.` gets one more. So a stored
//! `a\n.\r\nb` (the CVE-2023-51764 smuggling shape, threat model T4) is
//! sent as `a\r\n..\r\nb`: the receiver sees one unchanged message and never
//! an early end of data.
//!
//! The same rule as POP3's (RFC 1939 §3) and as [`crate::crlf`]'s size
//! accounting, so every copy of a message on the wire has the same lines.

pub use crate::crlf::{has_eight_bit, normalise_crlf};

/// Streaming encoder state.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The next byte starts a line.
    line_start: bool,
    /// A CR was seen; it ends a line whatever follows (CRLF or bare CR).
    pending_cr: bool,
    /// Octets of message content seen (before encoding).
    seen: u64,
    /// A byte ≥ 0x80 was seen (needs 8BITMIME, RFC 6152).
    eight_bit: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// An encoder at the start of a message.
    #[must_use]
    pub fn new() -> Self {
        Self {
            line_start: true,
            pending_cr: false,
            seen: 0,
            eight_bit: false,
        }
    }

    /// Encodes a chunk of the message, appending to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 4);
        self.seen += input.len() as u64;
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    if b >= 0x80 {
                        self.eight_bit = true;
                    }
                    out.push(b);
                    self.line_start = false;
                }
            }
        }
    }

    /// Ends the data: a final CRLF when the message did not end with a
    /// line end, then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.line_start = true;
    }

    /// Octets of message content given to [`DotStuffer::encode`] so far.
    #[must_use]
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Did the content so far contain 8-bit octets?
    #[must_use]
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }
}

/// Encodes a whole message in one go.
#[must_use]
pub fn encode_all(message: &[u8]) -> Vec<u8> {
    let mut d = DotStuffer::new();
    let mut out = Vec::with_capacity(message.len() + 64);
    d.encode(message, &mut out);
    d.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of the input into two chunks gives the same output.
    fn encode_split(input: &[u8]) -> Vec<u8> {
        let whole = encode_all(input);
        for cut in 0..=input.len() {
            let mut d = DotStuffer::new();
            let mut out = Vec::new();
            d.encode(&input[..cut], &mut out);
            d.encode(&input[cut..], &mut out);
            d.finish(&mut out);
            assert_eq!(out, whole, "split at {cut} of {input:?}");
        }
        // And byte by byte.
        let mut d = DotStuffer::new();
        let mut out = Vec::new();
        for b in input {
            d.encode(std::slice::from_ref(b), &mut out);
        }
        d.finish(&mut out);
        assert_eq!(out, whole, "byte by byte");
        whole
    }

    /// The encoded data never contains a bare CR or LF, and its only
    /// end-of-data is the final one.
    fn assert_clean(out: &[u8]) {
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} in {out:?}");
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i} in {out:?}");
            }
        }
        let eod = out.windows(5).filter(|w| w == b"\r\n.\r\n").count()
            + usize::from(out.starts_with(b".\r\n"));
        assert_eq!(eod, 1, "exactly one end of data in {out:?}");
        assert!(out.ends_with(b".\r\n"));
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            // threat model T4.
            (b"a\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n\x00.\r\nb", b"a\r\n\x00.\r\nb\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\n\nb\r", b"a\r\n\r\nb\r\n.\r\n"),
            (b"..x\r\n.y", b"...x\r\n..y\r\n.\r\n"),
            (b" .x", b" .x\r\n.\r\n"),
            (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        ];
        for (input, want) in cases {
            let got = encode_split(input);
            assert_eq!(
                got,
                want.to_vec(),
                "{:?} → {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&got)
            );
            assert_clean(&got);
        }
    }

    #[test]
    fn eight_bit_is_noticed() {
        let mut d = DotStuffer::new();
        let mut out = Vec::new();
        d.encode(b"plain\r\n", &mut out);
        assert!(!d.eight_bit());
        d.encode("caf\u{e9}".as_bytes(), &mut out);
        assert!(d.eight_bit());
        assert!(has_eight_bit("é".as_bytes()));
        assert!(!has_eight_bit(b"ascii"));
    }
}
