//! CAPA (RFC 2449 §5), valid in both states. NOOP (RFC 1939 §5) and UTF8
//! (RFC 6856 §2) are one-line answers given by the dispatcher itself.

use crate::session::{Session, State};

impl Session {
    /// RFC 2449 §5 CAPA, reflecting the current state and transport.
    pub(crate) fn capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        let authorization = matches!(self.state, State::Authorization { .. });
        if authorization && self.auth_allowed() {
            caps.push("USER".into());
            caps.push("SASL PLAIN".into());
        }
        if authorization && !self.tls && self.cfg().stls_available {
            caps.push("STLS".into());
        }
        if let Some(expire) = &self.cfg().expire {
            caps.push(format!("EXPIRE {expire}"));
        }
        if let Some(delay) = self.cfg().login_delay {
            caps.push(format!("LOGIN-DELAY {delay}"));
        }
        if authorization {
            caps.push("UTF8".into());
        }
        caps.push("IMPLEMENTATION Epistole".into());
        caps
    }
}
