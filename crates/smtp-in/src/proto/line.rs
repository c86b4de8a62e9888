//! Command-line framing (RFC 5321 §2.3.8: lines end with CRLF).
//!
//! A line is recognised only at CRLF. A bare LF ends the line too, but the
//! line is refused (RFC 5321 §2.3.8: "SHOULD NOT recognize" bare LF), so no
//! command can be smuggled with a different line ending than the one other
//! MTAs use.

/// The next line in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A line: content length (CRLF excluded) and bytes to consume.
    Line {
        /// Length of the content.
        len: usize,
        /// Length including CRLF.
        consumed: usize,
    },
    /// A line that ended in a bare LF or exceeded the limit; consume and refuse it.
    Bad {
        /// Bytes to consume.
        consumed: usize,
        /// It was over the length limit (otherwise: bare LF).
        too_long: bool,
    },
    /// The buffer already holds `max` bytes without a line end: the line is
    /// too long. Discard everything up to the next LF.
    Overflow,
    /// No complete line yet.
    NeedMore,
}

/// Finds the first line in `buf`; `max` counts the CRLF.
#[must_use]
pub fn frame(buf: &[u8], max: usize) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let consumed = lf + 1;
            if consumed > max {
                Frame::Bad {
                    consumed,
                    too_long: true,
                }
            } else if lf > 0 && buf[lf - 1] == b'\r' {
                Frame::Line {
                    len: lf - 1,
                    consumed,
                }
            } else {
                Frame::Bad {
                    consumed,
                    too_long: false,
                }
            }
        }
        None if buf.len() >= max => Frame::Overflow,
        None => Frame::NeedMore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            frame(b"NOOP\r\nQUIT\r\n", 10),
            Frame::Line {
                len: 4,
                consumed: 6
            }
        );
        assert_eq!(frame(b"NOOP\r", 10), Frame::NeedMore);
        assert_eq!(
            frame(b"NOOP\nQUIT\r\n", 10),
            Frame::Bad {
                consumed: 5,
                too_long: false
            }
        );
        assert_eq!(
            frame(b"\n", 10),
            Frame::Bad {
                consumed: 1,
                too_long: false
            }
        );
        assert_eq!(frame(b"0123456789", 10), Frame::Overflow);
        assert_eq!(
            frame(b"012345678\r\n", 10),
            Frame::Bad {
                consumed: 11,
                too_long: true
            }
        );
        assert_eq!(
            frame(b"01234567\r\n", 10),
            Frame::Line {
                len: 8,
                consumed: 10
            }
        );
    }
}
