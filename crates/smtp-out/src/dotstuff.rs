//! DATA encoding (RFC 5321 §4.5.2 transparency, §2.3.8 line endings): the
//! encoder lives in `mail-wire`; re-exported here for the client and DKIM.

pub use mail_wire::dotstuff::{DotStuffer, encode_all, has_eight_bit, normalise_crlf};
