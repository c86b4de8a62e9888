//! The test message both servers receive.

/// The message body: headers and `kib` KiB of text lines, dot-safe, CRLF.
#[must_use]
pub fn message(from: &str, to: &str, kib: usize, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench message {n}\r\n\
         Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench.{n}.{}@bench.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, benchmark text 0123456789.\r\n";
    while m.len() < kib * 1024 {
        m.extend_from_slice(line);
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_is_crlf_dot_safe_and_sized() {
        let m = super::message("a@x.test", "b@y.test", 5, 1);
        assert!(m.len() >= 5 * 1024 && m.len() < 6 * 1024);
        assert!(m.ends_with(b"\r\n"));
        let text = String::from_utf8(m).unwrap_or_default();
        assert!(
            text.split("\r\n")
                .all(|l| !l.starts_with('.') && !l.contains('\n'))
        );
    }
}
