//! SMTP reply parser (RFC 5321 §4.2): the one reply type and its
//! hostile-proof parser live in `mail-wire`; re-exported here so the client
//! keeps calling `reply::parse`.

pub use mail_wire::reply::{MAX_LINE, MAX_LINES, Reply, ReplyError, parse};
