//! Incremental framing of client input into complete commands (RFC 9051
//! §2.2, §4.3 literals; RFC 7888 LITERAL+ / LITERAL-). Pure: bytes in,
//! a decision out, no I/O.
//!
//! A command is a line that may end with a literal announcement `{n}` /
//! `{n+}`, followed by `n` octets and the rest of the command, and so on.
//! Every limit is checked here, *before* the server would send a `+`
//! continuation: the line length, each literal's size, the number of
//! literals and the total size of the command.

/// Default [`Limits::preauth_max`]: the longest legitimate line before
/// login is an ID command (RFC 2971 §3.3: up to 30 pairs of a 30-octet
/// field and a 1,024-octet value, about 32 KiB); LOGIN and AUTHENTICATE
/// need a few hundred bytes.
pub const PREAUTH_MAX: usize = 40 * 1024;
/// Largest literal before login, whatever [`Limits::preauth_max`] says:
/// credentials never need more (threat model T27).
pub const PREAUTH_LITERAL_MAX: u64 = 8 * 1024;

/// Limits applied while framing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line (the part of a command between literals), CRLF included.
    pub max_line: usize,
    /// Largest literal outside APPEND.
    pub max_literal: u64,
    /// Largest literal of an APPEND message (the message size limit).
    pub max_append_literal: u64,
    /// Largest whole command (lines and literals).
    pub max_command: usize,
    /// Most literals in one command.
    pub max_literals: usize,
    /// Before authentication, the longest line and the largest literal
    /// (threat model T44: pre-authentication input is small).
    pub preauth_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            max_literal: 64 * 1024,
            max_append_literal: 50 * 1024 * 1024,
            max_command: 50 * 1024 * 1024 + 128 * 1024,
            max_literals: 64,
            preauth_max: PREAUTH_MAX,
        }
    }
}

/// What to do with the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Read more bytes.
    Incomplete,
    /// A synchronizing literal is announced and accepted: send `+ ...` and
    /// read more. Returned once per literal.
    Continue,
    /// The first `len` bytes of the buffer are one complete command.
    Complete(usize),
    /// A literal is refused before `+` (RFC 7888 §4, RFC 9051 §7.1 TOOBIG):
    /// the first `consume` bytes (the line up to the announcement) are to be
    /// dropped and `tag` answered with `reply`. With a non-synchronizing
    /// literal the client sends the data anyway: `close` is then true.
    Reject {
        consume: usize,
        tag: Option<String>,
        too_big: bool,
        close: bool,
    },
    /// Fatal: a line or command that exceeds the limits; answer BAD and close.
    TooLong,
    /// Before authentication, a line longer than [`Limits::preauth_max`]:
    /// answer `BAD` (tagged when the tag could be read). The framer then
    /// skips the rest of the line with [`Frame::Discard`].
    PreauthTooLong { tag: Option<String> },
    /// Drop the first `n` bytes of the buffer: nothing to answer.
    Discard(usize),
}

/// Framing state carried between reads of one command.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    /// Bytes of the current command already scanned.
    pos: usize,
    /// Literals seen so far in the current command.
    literals: usize,
    /// End of the literal currently being waited for, if any.
    literal_end: Option<usize>,
    /// Skipping the rest of an over-long pre-authentication line.
    skipping: bool,
}

impl Framer {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the current command (after it was consumed or rejected).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Examines `buf` (which starts at the current command) and decides.
    /// `authenticated` selects the literal limit (no large literals before
    /// login: threat model T27).
    pub fn advance(&mut self, buf: &[u8], limits: &Limits, authenticated: bool) -> Frame {
        if self.skipping {
            return self.skip(buf);
        }
        loop {
            if let Some(end) = self.literal_end {
                if buf.len() < end {
                    return Frame::Incomplete;
                }
                self.pos = end;
                self.literal_end = None;
            }
            let rest = &buf[self.pos..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if let Some(frame) = self.over_limit(rest.len(), buf, limits, authenticated) {
                    return frame;
                }
                return Frame::Incomplete;
            };
            if let Some(frame) = self.over_limit(lf + 1, buf, limits, authenticated) {
                return frame;
            }
            let line_end = self.pos + lf + 1;
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some((size, sync)) = literal_announcement(line) else {
                let len = line_end;
                self.reset();
                return Frame::Complete(len);
            };
            let limit = if !authenticated {
                limits
                    .max_literal
                    .min(limits.preauth_max as u64)
                    .min(PREAUTH_LITERAL_MAX)
            } else if is_append(buf) {
                limits.max_append_literal
            } else {
                limits.max_literal
            };
            self.literals += 1;
            let too_many = self.literals > limits.max_literals;
            let total = (line_end as u64).saturating_add(size.unwrap_or(u64::MAX));
            let fits =
                size.is_some_and(|s| s <= limit) && total <= limits.max_command as u64 && !too_many;
            if !fits {
                let tag = first_word(buf);
                let close = !sync;
                self.reset();
                return Frame::Reject {
                    consume: line_end,
                    tag,
                    too_big: !too_many,
                    close,
                };
            }
            // `fits` implies the size is known and below usize limits.
            let size = usize::try_from(size.unwrap_or(0)).unwrap_or(usize::MAX);
            let end = line_end + size;
            self.pos = line_end;
            self.literal_end = Some(end);
            if sync && buf.len() < end {
                return Frame::Continue;
            }
        }
    }
}

impl Framer {
    /// The line at `self.pos` is `len` bytes so far (or in all, LF
    /// included): is a limit exceeded? The answer must not depend on how
    /// the input was split into reads, so when a line exceeds several
    /// limits at once, the one with the lowest threshold wins: that is the
    /// one a client sending byte by byte would reach first (a tie goes to
    /// the fatal [`Frame::TooLong`], checked first at equal length).
    fn over_limit(
        &mut self,
        len: usize,
        buf: &[u8],
        limits: &Limits,
        authenticated: bool,
    ) -> Option<Frame> {
        let fatal = limits
            .max_line
            .min(limits.max_command.saturating_sub(self.pos));
        let preauth = if authenticated {
            usize::MAX
        } else {
            limits.preauth_max
        };
        if len > fatal && fatal <= preauth {
            Some(Frame::TooLong)
        } else if len > preauth {
            Some(self.preauth_too_long(buf))
        } else {
            None
        }
    }

    /// A pre-authentication line over [`Limits::preauth_max`] (but within
    /// the hard [`Limits::max_line`]): a `BAD`, and the line is skipped.
    fn preauth_too_long(&mut self, buf: &[u8]) -> Frame {
        self.skipping = true;
        self.literal_end = None;
        Frame::PreauthTooLong {
            tag: first_word(buf),
        }
    }

    /// Drops input up to the end of the over-long line, never holding more
    /// than one read of it.
    fn skip(&mut self, buf: &[u8]) -> Frame {
        let from = self.pos.min(buf.len());
        match buf[from..].iter().position(|&b| b == b'\n') {
            Some(lf) => {
                self.reset();
                Frame::Discard(from + lf + 1)
            }
            None if buf.is_empty() => Frame::Incomplete,
            None => {
                self.pos = 0;
                Frame::Discard(buf.len())
            }
        }
    }
}

/// Parses a literal announcement at the end of a line: `{123}`, `{123+}`,
/// `~{123}` (literal8). Returns the size (`None` when it overflows) and
/// whether the literal is synchronizing.
fn literal_announcement(line: &[u8]) -> Option<(Option<u64>, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = if let Some(d) = digits
        .strip_suffix(b"+")
        .or_else(|| digits.strip_suffix(b"-"))
    {
        digits = d;
        false
    } else {
        true
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 20 {
        return Some((None, sync));
    }
    let mut n: Option<u64> = Some(0);
    for d in digits {
        n = n
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(d - b'0')));
    }
    Some((n, sync))
}

fn first_word(buf: &[u8]) -> Option<String> {
    let end = buf
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    let w = &buf[..end];
    (!w.is_empty()
        && w.len() <= 64
        && w.iter()
            .all(|&b| b.is_ascii_graphic() && b != b'+' && b != b'{'))
    .then(|| String::from_utf8_lossy(w).into_owned())
}

/// True when the command is `tag APPEND ...` (or `tag UID APPEND`, which
/// does not exist, but costs nothing).
fn is_append(buf: &[u8]) -> bool {
    // Only the command's own first line: a pipelined `APPEND` after a
    // space-less line must not lend its limit (found by fuzz/imap_command).
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.splitn(3, |&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], auth: bool) -> Vec<Frame> {
        let limits = Limits::default();
        let mut f = Framer::new();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        // Feed one byte at a time: every split point is exercised.
        for &b in input {
            buf.push(b);
            loop {
                let r = f.advance(&buf, &limits, auth);
                match r {
                    Frame::Incomplete => break,
                    Frame::Complete(n) => {
                        buf.drain(..n);
                        out.push(Frame::Complete(n));
                    }
                    Frame::Continue => {
                        out.push(Frame::Continue);
                        break;
                    }
                    other => {
                        out.push(other);
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn simple_lines_and_pipelining() {
        assert_eq!(
            run(b"a NOOP\r\nb NOOP\r\n", false),
            vec![Frame::Complete(8), Frame::Complete(8)]
        );
    }

    #[test]
    fn literal_needs_continuation_once() {
        let r = run(b"a LOGIN {3}\r\nbob {2}\r\npw\r\n", false);
        assert_eq!(
            r,
            vec![Frame::Continue, Frame::Continue, Frame::Complete(26)]
        );
    }

    #[test]
    fn non_sync_literal_needs_no_continuation() {
        let r = run(b"a LOGIN {3+}\r\nbob pw\r\n", false);
        assert_eq!(r, vec![Frame::Complete(22)]);
    }

    #[test]
    fn literal_containing_crlf_and_braces() {
        let r = run(b"a APPEND x {9}\r\n{1}\r\n\r\nab\r\n", true);
        assert_eq!(r, vec![Frame::Continue, Frame::Complete(27)]);
    }

    #[test]
    fn huge_literal_refused_before_continuation() {
        let r = run(b"a LOGIN {4294967295}\r\n", false);
        assert_eq!(
            r,
            vec![Frame::Reject {
                consume: 22,
                tag: Some("a".into()),
                too_big: true,
                close: false
            }]
        );
        let r = run(b"a APPEND INBOX {5000000000+}\r\n", true);
        assert!(matches!(r[0], Frame::Reject { close: true, .. }));
        let r = run(b"a APPEND INBOX {99999999999999999999999}\r\n", true);
        assert!(matches!(r[0], Frame::Reject { too_big: true, .. }));
    }

    /// Fuzzer find (fuzz/imap_command): the APPEND limit depended on how
    /// the input was split, because a later pipelined APPEND was read as
    /// this command's name when its first line had no space.
    #[test]
    fn pipelined_append_does_not_lend_its_limit() {
        let input = b"a{100000}\r\nb APPEND INBOX {1}\r\nx\r\n";
        let mut f = Framer::new();
        assert!(matches!(
            f.advance(input, &Limits::default(), true),
            Frame::Reject { too_big: true, .. }
        ));
        assert!(matches!(run(input, true)[0], Frame::Reject { .. }));
    }

    #[test]
    fn pre_auth_literals_are_small() {
        let r = run(b"a LOGIN {9000}\r\n", false);
        assert!(matches!(r[0], Frame::Reject { .. }));
        let r = run(b"a LOGIN {9000}\r\n", true);
        assert_eq!(r, vec![Frame::Continue]);
    }

    #[test]
    fn long_line_is_fatal() {
        let limits = Limits {
            max_line: 100,
            ..Limits::default()
        };
        let mut f = Framer::new();
        let buf = vec![b'('; 200];
        assert_eq!(f.advance(&buf, &limits, false), Frame::TooLong);
    }

    /// Fuzzer find (fuzz/imap_command, seed 1): before login, a line over
    /// both `preauth_max` and `max_line` was fatal when it arrived whole but
    /// answered and skipped when it arrived in pieces (the pre-login limit
    /// was reached first). The lower limit now wins either way.
    #[test]
    fn preauth_limit_wins_over_line_limit_however_split() {
        let limits = Limits {
            max_line: 64,
            preauth_max: 16,
            ..Limits::default()
        };
        let mut line = vec![b'a', b' '];
        line.extend(std::iter::repeat_n(b'x', 100));
        line.extend_from_slice(b"\r\nb NOOP\r\n");
        let expected = vec![
            Frame::PreauthTooLong {
                tag: Some("a".into()),
            },
            Frame::Discard(104),
            Frame::Complete(8),
        ];
        let mut f = Framer::new();
        let mut whole = Vec::new();
        let mut at = 0;
        while at < line.len() {
            let frame = f.advance(&line[at..], &limits, false);
            match frame {
                Frame::Discard(n) | Frame::Complete(n) => at += n,
                Frame::PreauthTooLong { .. } => {}
                _ => panic!("unexpected {frame:?}"),
            }
            whole.push(frame);
        }
        assert_eq!(whole, expected);
        // In pieces the same answer, then everything up to the LF dropped.
        let mut f = Framer::new();
        assert!(matches!(
            f.advance(&line[..30], &limits, false),
            Frame::PreauthTooLong { .. }
        ));
        // After login the line limit is the only one, and it is fatal.
        assert_eq!(Framer::new().advance(&line, &limits, true), Frame::TooLong);
    }

    /// Before login a line over `preauth_max` is answered and skipped,
    /// whole or arriving in pieces; after login the same line is fine.
    #[test]
    fn preauth_long_line_is_skipped() {
        let limits = Limits {
            preauth_max: 16,
            ..Limits::default()
        };
        let long = b"a LOGIN aaaaaaaaaaaaaaaaaaaa b\r\nb NOOP\r\n";
        let mut f = Framer::new();
        assert_eq!(
            f.advance(long, &limits, false),
            Frame::PreauthTooLong {
                tag: Some("a".into())
            }
        );
        assert_eq!(f.advance(long, &limits, false), Frame::Discard(32));
        assert_eq!(f.advance(&long[32..], &limits, false), Frame::Complete(8));
        // In pieces: what arrived is dropped, then the rest up to the LF.
        let mut f = Framer::new();
        let head = &long[..20];
        assert!(matches!(
            f.advance(head, &limits, false),
            Frame::PreauthTooLong { .. }
        ));
        assert_eq!(f.advance(head, &limits, false), Frame::Discard(20));
        assert_eq!(f.advance(b"", &limits, false), Frame::Incomplete);
        assert_eq!(f.advance(&long[20..], &limits, false), Frame::Discard(12));
        assert_eq!(f.advance(&long[32..], &limits, false), Frame::Complete(8));
        let mut f = Framer::new();
        assert_eq!(f.advance(long, &limits, true), Frame::Complete(32));
        // Literals before login are capped by the same limit.
        let mut f = Framer::new();
        assert!(matches!(
            f.advance(b"a LOGIN {17}\r\n", &limits, false),
            Frame::Reject { too_big: true, .. }
        ));
    }

    #[test]
    fn too_many_literals() {
        let limits = Limits {
            max_literals: 2,
            ..Limits::default()
        };
        let mut f = Framer::new();
        let buf = b"a X {1+}\r\na {1+}\r\nb {1+}\r\nc\r\n";
        assert!(matches!(
            f.advance(buf, &limits, true),
            Frame::Reject { too_big: false, .. }
        ));
    }
}
