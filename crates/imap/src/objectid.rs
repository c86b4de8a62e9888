//! OBJECTID (RFC 8474): the identifiers of mailboxes and messages.
//!
//! - MAILBOXID (§4) is derived from the store's mailbox id, which a
//!   RENAME keeps and a DELETE + CREATE of the same name does not.
//! - EMAILID (§5.1) is derived from the SHA-256 of the raw message the
//!   store keeps as its blob identity: a COPY or MOVE keeps it, two
//!   different messages never share it (identical bytes do, which §5.1
//!   allows: they are the same immutable message).
//! - THREADID (§5.2) is NIL: threads are not stored, and the RFC allows
//!   NIL when the server does not support them.
//!
//! Every id is an `objectid` (§7): 1 to 255 characters of
//! `ALPHA / DIGIT / "_" / "-"`.

/// The MAILBOXID of store mailbox `id`.
#[must_use]
pub fn mailbox_id(id: u64) -> String {
    format!("F{id:016x}")
}

/// The EMAILID of a message whose blob hash (hex SHA-256) is `blob_id`:
/// `M` and its first 32 hex digits (128 bits). A hash that is not hex (it
/// never happens with the store) is cut to the characters allowed.
#[must_use]
pub fn email_id(blob_id: &str) -> String {
    let mut s = String::from("M");
    s.extend(
        blob_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_objectids() {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        assert_eq!(mailbox_id(42), "F000000000000002a");
        let h = "ab".repeat(32);
        assert_eq!(email_id(&h), format!("M{}", &h[..32]));
        assert!(ok(&mailbox_id(u64::MAX)) && ok(&email_id(&h)) && ok(&email_id("x y\"")));
        assert_ne!(email_id(&h), email_id(&"cd".repeat(32)));
    }
}
