//! The `Received:` trace header (RFC 5321 §4.4) smtp-in prepends to every
//! accepted message, with the protocol keyword of RFC 3848 / RFC 6531 §3.7.3
//! (ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP…), the TLS version and cipher
//! as a comment, and the session id as the `id` clause so a message can be
//! traced back to its session's log lines. `Return-Path` is added at
//! delivery, not here (RFC 5321 §4.4).

use std::net::IpAddr;

/// Everything the header says.
#[derive(Debug, Clone)]
pub struct Stamp<'a> {
    /// HELO/EHLO argument, as the client gave it (sanitised here).
    pub helo: &'a str,
    /// Client IP.
    pub ip: IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// EHLO (rather than HELO) was used.
    pub esmtp: bool,
    /// SMTPUTF8 transaction.
    pub utf8: bool,
    /// `Some((version, cipher))` when TLS was in use.
    pub tls: Option<(&'a str, &'a str)>,
    /// The client authenticated.
    pub authenticated: bool,
    /// Session id and transaction number.
    pub id: &'a str,
    /// The recipient, only when there is exactly one (RFC 5321 §7.6: no
    /// list of recipients in trace headers).
    pub for_rcpt: Option<&'a str>,
    /// RFC 5322 date-time.
    pub date: &'a str,
}

/// RFC 3848 / RFC 6531 "with" keyword.
#[must_use]
pub fn protocol(esmtp: bool, utf8: bool, tls: bool, auth: bool) -> String {
    let base = if utf8 {
        "UTF8SMTP"
    } else if esmtp || tls || auth {
        "ESMTP"
    } else {
        return "SMTP".into();
    };
    format!(
        "{base}{}{}",
        if tls { "S" } else { "" },
        if auth { "A" } else { "" }
    )
}

/// Keeps the HELO argument to characters that cannot break the header's
/// structure (no CR/LF, parentheses, semicolons, backslashes).
fn sanitize(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | ';' | '\\' | '"' | ' '))
        .take(255)
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

fn ip_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        // RFC 5321 §4.1.3 IPv6-address-literal.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

impl Stamp<'_> {
    /// The header, folded, ending in CRLF.
    #[must_use]
    pub fn render(&self) -> String {
        let mut h = format!(
            "Received: from {} ({})\r\n\tby {} (Epistole smtp-in) with {}",
            sanitize(self.helo),
            ip_literal(self.ip),
            sanitize(self.by),
            protocol(
                self.esmtp,
                self.utf8,
                self.tls.is_some(),
                self.authenticated
            ),
        );
        if let Some((version, cipher)) = self.tls {
            h.push_str(&format!(
                "\r\n\t(version={} cipher={})",
                sanitize(version),
                sanitize(cipher)
            ));
        }
        h.push_str(&format!("\r\n\tid {}", sanitize(self.id)));
        if let Some(rcpt) = self.for_rcpt {
            h.push_str(&format!(
                "\r\n\tfor <{}>",
                rcpt.replace(['\r', '\n', '<', '>'], "")
            ));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", self.date));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(protocol(false, false, false, false), "SMTP");
        assert_eq!(protocol(true, false, false, false), "ESMTP");
        assert_eq!(protocol(true, false, true, false), "ESMTPS");
        assert_eq!(protocol(true, false, true, true), "ESMTPSA");
        assert_eq!(protocol(true, true, true, true), "UTF8SMTPSA");
    }

    #[test]
    fn render() {
        let s = Stamp {
            helo: "client.example\r\nX-Evil: 1",
            ip: "192.0.2.7".parse().expect("ip"),
            by: "mx.example.org",
            esmtp: true,
            utf8: false,
            tls: Some(("TLSv1_3", "TLS13_AES_128_GCM_SHA256")),
            authenticated: false,
            id: "abc.1",
            for_rcpt: Some("u@example.org"),
            date: "Thu, 26 Nov 2026 11:00:00 +0000",
        };
        assert_eq!(
            s.render(),
            "Received: from client.exampleX-Evil:1 ([192.0.2.7])\r\n\tby mx.example.org (Epistole smtp-in) with ESMTPS\r\n\t(version=TLSv1_3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tid abc.1\r\n\tfor <u@example.org>;\r\n\tThu, 26 Nov 2026 11:00:00 +0000\r\n"
        );
        let v6 = Stamp {
            ip: "2001:db8::1".parse().expect("ip"),
            tls: None,
            for_rcpt: None,
            ..s
        };
        assert!(v6.render().contains("([IPv6:2001:db8::1])"));
    }
}
