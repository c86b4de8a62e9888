//! The closed table of the replies this receiver sends (RFC 5321 §4.2,
//! enhanced codes RFC 3463 / RFC 2034). Replies with variable text
//! (greeting, EHLO, "queued as") are built by the session with
//! [`Reply::new`]. The type and its serialisation live in `mail-wire`.

use mail_wire::path::PathError;
use mail_wire::reply::EnhancedStatus as S;

use super::command::ParseError;

pub use mail_wire::reply::Reply;

macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $status:expr, $text:literal;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name() -> Reply {
                Reply::new($code, $status, $text)
            }
        )*
    };
}

replies! {
    /// RFC 5321 §4.1.1.1 / §4.1.1.5 etc.: generic success.
    ok = 250, Some(S::SUCCESS), "Ok";
    /// MAIL accepted (RFC 3463 X.1.0: other address status).
    sender_ok = 250, Some(S::SENDER_OK), "Sender ok";
    /// RCPT accepted (X.1.5: destination address valid).
    recipient_ok = 250, Some(S::DESTINATION_OK), "Recipient ok";
    /// RSET.
    reset_ok = 250, Some(S::SUCCESS), "Reset state";
    /// QUIT (RFC 5321 §4.1.1.10).
    bye = 221, Some(S::SUCCESS), "Bye";
    /// VRFY: RFC 5321 §3.5.3 allows 252 "cannot VRFY user"; we never
    /// enumerate accounts.
    vrfy = 252, Some(S::PROTOCOL_OK), "Cannot VRFY user, but will accept message and attempt delivery";
    /// HELP (RFC 5321 §4.1.1.8).
    help = 214, Some(S::SUCCESS), "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH";
    /// DATA go-ahead (RFC 5321 §4.1.1.4). No enhanced code on 354.
    start_data = 354, None, "End data with <CR><LF>.<CR><LF>";
    /// STARTTLS go-ahead (RFC 3207 §4).
    ready_tls = 220, Some(S::SUCCESS), "Ready to start TLS";
    /// AUTH success (RFC 4954 §6).
    auth_ok = 235, Some(S::SECURITY_OK), "Authentication successful";

    /// Shutdown in progress (RFC 5321 §3.8).
    shutting_down = 421, Some(S::NOT_ACCEPTING), "Service shutting down, closing connection";
    /// Too many errors in this session.
    too_many_errors = 421, Some(S::TEMP_SECURITY), "Too many errors, closing connection";
    /// Connection limits.
    too_many_connections = 421, Some(S::TEMP_SECURITY), "Too many connections, try again later";
    /// Command or data timeout (RFC 5321 §4.5.3.2).
    timeout = 421, Some(S::BAD_CONNECTION), "Timeout, closing connection";
    /// The whole session outlived `--session-timeout` (RFC 3463 X.4.2).
    session_too_long = 421, Some(S::BAD_CONNECTION), "Session time limit exceeded, closing connection";
    /// A DATA phase or BDAT transaction outlived `--data-phase-timeout`.
    data_too_long = 421, Some(S::BAD_CONNECTION), "Data time limit exceeded, closing connection";
    /// Message data slower than `--min-data-rate`.
    data_too_slow = 421, Some(S::BAD_CONNECTION), "Data rate too low, closing connection";
    /// Hourly message limit (per IP or account) reached, at MAIL: RFC 5321
    /// §3.8 421 closes, so the client defers its queue for us at once
    /// instead of trying message after message (RFC 3463 X.7.0).
    hourly_messages = 421, Some(S::TEMP_SECURITY), "Hourly message limit reached, try again later";
    /// Early talker: the client sent commands before the greeting.
    early_talker = 554, Some(S::INVALID_COMMAND), "Protocol error: command sent before greeting";
    /// Store unreachable or outcome unknown: the sender must retry.
    store_unavailable = 451, Some(S::TEMP_SYSTEM), "Temporary failure, please try again later";
    /// Spool memory budget exhausted (X.3.1: mail system full).
    insufficient_storage = 452, Some(S::SYSTEM_FULL), "Insufficient system storage, try again later";
    /// Hourly recipient limit reached, at RCPT (RFC 5321 §4.3.2 lists 450
    /// for RCPT; RFC 3463 X.7.1 delivery not authorized, here transient).
    /// The transaction goes on with the recipients already accepted.
    hourly_recipients = 450, Some(S::new(4, 7, 1)), "Hourly recipient limit reached, try again later";
    /// RCPT to a local mailbox that has reached its quota (RFC 3463 X.2.2
    /// mailbox full; RFC 5321 §4.2.2 452 at RCPT): the sender retries, as
    /// with Postfix and Dovecot's quota-status service.
    mailbox_full = 452, Some(S::new(4, 2, 2)), "Mailbox full, try again later";
    /// RFC 5321 §4.5.3.1.10: recipients past the limit get 452.
    too_many_recipients = 452, Some(S::TOO_MANY_RECIPIENTS), "Too many recipients";
    /// AUTH throttled by the store.
    auth_throttled = 454, Some(S::TEMP_SECURITY), "Too many failed authentications, try again later";
    /// AUTH could not be checked (store down).
    auth_temp_fail = 454, Some(S::TEMP_SECURITY), "Temporary authentication failure";

    /// RFC 5321 §4.2.4: unrecognised command.
    unknown_command = 500, Some(S::SYNTAX_ERROR), "Command not recognized";
    /// A command line ended by a bare LF (RFC 5321 §2.3.8).
    bare_lf_command = 500, Some(S::SYNTAX_ERROR), "Syntax error: lines must end with CRLF";
    /// Line longer than the limit (RFC 5321 §4.5.3.1.4).
    line_too_long = 500, Some(S::SYNTAX_ERROR), "Line too long";
    /// Malformed arguments (RFC 5321 §4.2.2, 501).
    syntax_error = 501, Some(S::INVALID_ARGUMENTS), "Syntax error in parameters or arguments";
    /// Malformed address path.
    bad_address = 501, Some(S::BAD_ADDRESS_SYNTAX), "Bad address syntax";
    /// Base64 that does not decode, or a malformed SASL message.
    bad_base64 = 501, Some(S::SYNTAX_ERROR), "Cannot decode response";
    /// The client cancelled AUTH with "*" (RFC 4954 §4).
    auth_cancelled = 501, Some(S::PERMANENT), "Authentication cancelled";
    /// Not implemented (EXPN, TURN, ...). RFC 5321 §3.5.3: EXPN may be disabled.
    not_implemented = 502, Some(S::INVALID_COMMAND), "Command not implemented";
    /// Wrong order of commands (RFC 5321 §4.1.4).
    bad_sequence = 503, Some(S::INVALID_COMMAND), "Bad sequence of commands";
    /// HELO/EHLO first.
    need_helo = 503, Some(S::INVALID_COMMAND), "Send EHLO/HELO first";
    /// MAIL first.
    need_mail = 503, Some(S::INVALID_COMMAND), "Need MAIL command";
    /// RCPT first.
    need_rcpt = 503, Some(S::INVALID_COMMAND), "Need RCPT command";
    /// Nested MAIL (RFC 5321 §4.1.1.2: MAIL during a transaction).
    nested_mail = 503, Some(S::INVALID_COMMAND), "Sender already specified";
    /// DATA while BDAT chunks are pending (RFC 3030 §3).
    data_after_bdat = 503, Some(S::INVALID_COMMAND), "DATA not allowed during BDAT transfer";
    /// Second AUTH (RFC 4954 §4).
    already_authenticated = 503, Some(S::INVALID_COMMAND), "Already authenticated";
    /// STARTTLS inside TLS, or TLS not configured.
    tls_not_available = 503, Some(S::INVALID_COMMAND), "STARTTLS not available";
    /// Unsupported parameter value (RFC 5321 §4.1.1.11 uses 555 / 504).
    bad_param_value = 501, Some(S::INVALID_ARGUMENTS), "Invalid parameter value";
    /// RFC 5321 §4.1.1.11: unrecognised MAIL/RCPT parameter.
    unknown_param = 555, Some(S::INVALID_ARGUMENTS), "Parameter not recognized or not implemented";
    /// AUTH mechanism not offered.
    unknown_mechanism = 504, Some(S::INVALID_ARGUMENTS), "Unrecognized authentication mechanism";
    /// RFC 4954 §6: AUTH required (submission without AUTH), or before TLS.
    auth_required = 530, Some(S::SECURITY), "Authentication required";
    /// RFC 3207 §4 / RFC 4954 §4: must issue STARTTLS first.
    tls_required = 530, Some(S::SECURITY), "Must issue a STARTTLS command first";
    /// RFC 4954 §6: wrong credentials. Identical for unknown user and wrong
    /// password.
    auth_failed = 535, Some(S::BAD_CREDENTIALS), "Authentication credentials invalid";
    /// Unknown local recipient (RFC 3463 X.1.1).
    unknown_user = 550, Some(S::USER_UNKNOWN), "Recipient address rejected: user unknown";
    /// Bare CR or LF inside the message: our one documented policy.
    bare_line_ending = 550, Some(S::SYNTAX_ERROR), "Message rejected: bare CR or LF not allowed, use CRLF";
    /// Message larger than allowed (RFC 1870 §6, X.3.4).
    too_big = 552, Some(S::TOO_BIG), "Message size exceeds fixed maximum message size";
    /// DATA text line over the limit (RFC 5321 §4.5.3.1.6).
    data_line_too_long = 552, Some(S::TOO_BIG), "Message rejected: text line too long";
    /// RFC 8689 §4.1 / §5: MAIL FROM with REQUIRETLS outside TLS.
    requiretls_needs_tls = 530, Some(S::new(5, 7, 10)), "REQUIRETLS needs a TLS session";
    /// Submission: the sender is not an address of the authenticated user.
    sender_not_owned = 553, Some(S::NOT_AUTHORIZED), "Sender address rejected: not owned by authenticated user";
    /// Submission: a `From:` header address is not the authenticated
    /// user's (RFC 3463 X.7.1), at the end of DATA.
    from_not_owned = 550, Some(S::new(5, 7, 1)), "From: header address not owned by authenticated user";
    /// RFC 5321 §6.3: too many Received headers, a mail loop (RFC 3463
    /// X.4.6 routing loop detected).
    mail_loop = 554, Some(S::new(5, 4, 6)), "Too many Received headers: mail loop detected";
    /// RFC 6531 §3.5: non-ASCII address without SMTPUTF8.
    need_smtputf8 = 553, Some(S::NEEDS_UTF8), "Non-ASCII address requires SMTPUTF8";
    /// Relay refused (RFC 3463 X.7.1: delivery not authorized).
    relay_denied = 554, Some(S::NOT_AUTHORIZED), "Relay access denied";
    /// BODY=BINARYMIME and other media the server does not offer.
    bad_body_type = 555, Some(S::INVALID_ARGUMENTS), "Unsupported BODY type";
}

/// The reply to a command line that does not parse.
pub fn parse_error_reply(e: ParseError) -> Reply {
    match e {
        ParseError::Unknown => unknown_command(),
        ParseError::Syntax => syntax_error(),
        ParseError::Path(PathError::NeedsUtf8) => need_smtputf8(),
        ParseError::Path(PathError::RelayTrick) => relay_denied(),
        ParseError::Path(PathError::Syntax | PathError::TooLong) => bad_address(),
        ParseError::UnknownParam => unknown_param(),
        ParseError::BadParamValue => bad_param_value(),
        ParseError::BodyType => bad_body_type(),
        ParseError::TooBig => too_big(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        assert_eq!(
            unknown_user().to_wire(),
            "550 5.1.1 Recipient address rejected: user unknown\r\n"
        );
        assert_eq!(
            start_data().to_wire(),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }

    #[test]
    fn multiline_and_injection() {
        let r = Reply::multi(250, None, vec!["a".into(), "b\r\n250 evil".into()]);
        assert_eq!(r.to_wire(), "250-a\r\n250 b  250 evil\r\n");
    }

    #[test]
    fn suffix() {
        let r = store_unavailable().with_suffix(" [sid abc]");
        assert!(r.to_wire().ends_with("later [sid abc]\r\n"));
        assert!(r.is_error());
    }
}
