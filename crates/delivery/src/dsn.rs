//! Delivery status notifications (RFC 3464): moved to the shared `mail-dsn`
//! crate so smtp-out writes the same reports; re-exported here.

pub use mail_dsn::*;
