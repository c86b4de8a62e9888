//! The envelope of one message and its RFC 3461 DSN parameters, as they go
//! into MAIL FROM and RCPT TO.

/// One message's envelope for [`crate::client::Connection::send`].
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Reverse path without brackets; empty for `<>`.
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Send `SMTPUTF8` with MAIL (only when the server offers it).
    pub smtputf8: bool,
    /// RFC 3461 parameters, passed on when the server offers DSN.
    pub dsn: Option<DsnParams>,
    /// RFC 8689 §4.1: send `REQUIRETLS` with MAIL (the caller has checked
    /// that the session is verified TLS and the server offers it).
    pub requiretls: bool,
}

/// RFC 3461 DSN parameters of one message.
#[derive(Debug, Clone, Default)]
pub struct DsnParams {
    /// ENVID (plain text; xtext-encoded here).
    pub envid: String,
    /// RET: "FULL" or "HDRS" (anything else is not sent).
    pub ret: String,
    /// Per recipient, in envelope order: NOTIFY bit set (mailstore
    /// `Notify`; 0 = not given) and ORCPT (`type;address`, as received).
    pub recipients: Vec<(u32, String)>,
}

/// RFC 3461 §4: xtext — `+XX` for `+`, `=` and anything outside 33..=126.
#[must_use]
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Is `s` already valid xtext (so an ORCPT as received passes unchanged)?
pub(super) fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(i + 2 < b.len() && hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            c if (33..=126).contains(&c) && c != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// `NOTIFY=` value from the mailstore bit set (RFC 3461 §4.1).
pub(super) fn notify_param(bits: u32) -> Option<String> {
    use mailstore_api::pb::Notify;
    if bits == 0 {
        return None;
    }
    if bits & Notify::Never as u32 != 0 {
        return Some("NEVER".into());
    }
    let words: Vec<&str> = [
        (Notify::Success, "SUCCESS"),
        (Notify::Failure, "FAILURE"),
        (Notify::Delay, "DELAY"),
    ]
    .iter()
    .filter(|(n, _)| bits & *n as u32 != 0)
    .map(|(_, w)| *w)
    .collect();
    (!words.is_empty()).then(|| words.join(","))
}

/// `ORCPT=` value: `addr-type;xtext` (RFC 3461 §4.2).
pub(super) fn orcpt_param(orcpt: &str) -> Option<String> {
    let orcpt = orcpt.trim();
    if orcpt.is_empty() {
        return None;
    }
    let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
    let kind = kind.trim();
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let addr = addr.trim();
    let value = if is_xtext(addr) {
        addr.to_string()
    } else {
        xtext(addr)
    };
    Some(format!("{kind};{value}"))
}
