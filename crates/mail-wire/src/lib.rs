//! # mail-wire
//!
//! The SMTP wire vocabulary shared by every Epistole service, pure: no I/O,
//! no tokio, no tonic, no sqlx. Bytes and strings in, typed values out, and
//! back.
//!
//! - [`address`]: [`Domain`] (IDNA, lower-cased A-label form validated once,
//!   the U-label form kept for SMTPUTF8), [`LocalPart`], [`Address`].
//! - [`path`]: `Reverse-path` / `Forward-path` of RFC 5321 §4.1.2 (with the
//!   RFC 6531 UTF-8 extension), strict about relay tricks.
//! - [`params`]: MAIL/RCPT ESMTP parameters (RFC 1870, RFC 6152, RFC 6531,
//!   RFC 3461, RFC 4954 §5) and xtext (RFC 3461 §4).
//! - [`reply`]: the one SMTP reply type (RFC 5321 §4.2) with enhanced status
//!   codes (RFC 3463, RFC 2034): rendered by the receiver, parsed by the
//!   client (hostile-proof), read by DSNs.
//! - [`sasl`]: PLAIN (RFC 4616), LOGIN, SCRAM (RFC 5802) messages.
//! - [`body`]: the inbound DATA/BDAT decoder (RFC 5321 §4.5.2, RFC 3030)
//!   with the smuggling-safe end-of-data rule and the bare CR/LF policy.
//! - [`srs`]: the Sender Rewriting Scheme (SRS0) for forwarded mail.
//! - [`dotstuff`] and [`crlf`]: the outbound encoder (dot-stuffing, every
//!   line end made CRLF) and the size of that CRLF form.
//!
//! ## What comes from elsewhere, and why the rest is ours
//! - `idna` (the `url` project's UTS #46 implementation) converts U-label
//!   domains to A-labels; IDNA is large and subtle, and that crate is the
//!   reference implementation in Rust.
//! - `base64` decodes SASL responses.
//! - `ring` (already the workspace's crypto) computes SRS's HMAC-SHA1.
//! - `smtp-proto` (Stalwart's SMTP grammar) was read, not used: its request
//!   parser has its own error mapping (our replies are fixed by tests), no
//!   relay-trick classification of paths, and its reply parser joins lines
//!   without our hostile-input limits.
//! - `email_address` validates RFC 5322 addresses (header syntax, comments,
//!   display names), not RFC 5321 envelope paths; it would accept forms we
//!   refuse on purpose (`%`-hacks, quoted `@`).
//! - `mail-parser` (already used for messages) parses messages, not the
//!   SMTP envelope.

pub mod address;
pub mod body;
pub mod crlf;
pub mod dotstuff;
pub mod params;
pub mod path;
pub mod reply;
pub mod sasl;
pub mod srs;

pub use address::{Address, AddressError, Domain, LocalPart};
pub use reply::{EnhancedStatus, Reply};
