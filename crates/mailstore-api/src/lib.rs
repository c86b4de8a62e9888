//! The mailbox-store API: generated gRPC types for package `mailstore.v1`
//! (`proto/mailstore/v1`), the shared-secret interceptor every RPC carries,
//! and the classification of gRPC status codes into transient and permanent.
//!
//! Every service talks to the store only through this crate.

pub mod client;

/// Generated code for `mailstore.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("mailstore.v1");
}

pub use client::{
    AuthInterceptor, ClientTls, PROBE_EVERY, RESOLVE_EVERY, StoreClient, StoreClientError,
    TRACE_CONTEXT, TRACEPARENT, connect, connect_tls,
};

/// gRPC metadata key carrying the session id, so logs join up across services.
pub const SESSION_ID_HEADER: &str = "x-epistole-session";

/// The message header field smtp-in adds to a message it accepted but
/// judged junk (a DMARC or SPF failure under a `quarantine` policy), and
/// delivery honours by filing the message in `Junk` with the `$Junk`
/// keyword. smtp-in removes it from everything a client sends, so its
/// presence in a queued message always comes from smtp-in.
pub const QUARANTINE_HEADER: &str = "X-Epistole-Quarantine";

/// gRPC metadata key on a `RESOURCE_EXHAUSTED` quota refusal whose request
/// alone is larger than the user's limit: it can never fit, so delivery
/// fails it at once (5.2.2) instead of retrying (RFC 3463 §3.3).
pub const QUOTA_EXCEEDS_LIMIT: &str = "x-epistole-quota-exceeds-limit";

/// True for a quota refusal that no expunge can cure (see
/// [`QUOTA_EXCEEDS_LIMIT`]).
#[must_use]
pub fn quota_exceeds_limit(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::ResourceExhausted
        && status.metadata().contains_key(QUOTA_EXCEEDS_LIMIT)
}

/// IMAP METADATA (RFC 5464) limits, shared by the store (which enforces
/// them) and imap (which announces them: `[METADATA MAXSIZE n]`,
/// `[METADATA TOOMANY]`). Largest value of one entry, in octets.
pub const METADATA_MAX_VALUE: usize = 16 * 1024;
/// Most entries of one user, server and mailbox entries together.
pub const METADATA_MAX_ENTRIES: i64 = 256;
/// Longest entry name, in octets.
pub const METADATA_MAX_NAME: usize = 256;
/// Most entries named in one GETMETADATA or SETMETADATA.
pub const METADATA_MAX_PER_COMMAND: usize = 64;

/// The closed set of outcomes a caller distinguishes after a failed store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try again later: store unreachable, overloaded, deadline exceeded
    /// (outcome unknown: retry with the same idempotency key), aborted.
    Transient,
    /// The request itself is wrong or refers to something that does not exist.
    Permanent,
}

/// Maps a gRPC status to transient vs permanent. Anything not clearly the
/// caller's fault is transient: a mail server must answer 4xx, not 5xx, when
/// it does not know.
#[must_use]
pub fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// The size of a message as POP3 transmits it (RFC 1939 §11): one
/// definition, in `mail-wire`, used by the store (`MessageMeta.crlf_size`)
/// and POP3 alike.
pub use mail_wire::crlf::crlf_size;

#[cfg(test)]
mod tests {
    #[test]
    fn crlf_size_counts_the_wire_form() {
        assert_eq!(super::crlf_size(b""), 0);
        assert_eq!(super::crlf_size(b"a\r\n"), 3);
        assert_eq!(super::crlf_size(b"a\n"), 3);
        assert_eq!(super::crlf_size(b"a\r"), 3);
        assert_eq!(super::crlf_size(b"a"), 3);
        assert_eq!(super::crlf_size(b"a\n\rb"), 8);
        assert_eq!(super::crlf_size(b"\r\r\n"), 4);
    }
}
