//! The IMAP command grammar (RFC 9051 §9, RFC 3501 §9 and the extensions'
//! ABNF): one complete command (as framed by [`crate::framing`]) in, a
//! typed [`Command`] or an error out. Pure, no I/O, no allocation beyond
//! the command's own size; recursion (search keys, lists) is bounded.
//!
//! Layout: `lexer` (cursor, strings, literals, sequence sets, flags) and
//! one module per grammar area; this module holds the command table.

mod append;
mod fetch;
mod lexer;
mod list;
mod metadata;
mod notify;
mod qresync;
mod quota;
mod search;
mod sort;
mod store;

use crate::command::{Command, CommandKind};

use append::append_command;
use fetch::fetch_command;
use lexer::{P, R, is_astring_char};
use list::{list_command, status_items};
pub use metadata::DEPTH_INFINITY;
use metadata::{getmetadata_command, setmetadata_command};
use notify::notify_command;
use qresync::select_params;
use quota::setquota_command;
use search::search_command;
use sort::{sort_command, thread_command};
use store::store_command;

/// Deepest nesting of parenthesised search keys / `NOT` / `OR` (threat model T30).
pub const MAX_DEPTH: usize = 32;
/// Most ranges in one sequence set (threat model T33).
pub const MAX_SEQ_RANGES: usize = 100_000;
/// Most FETCH items, search keys, flags or patterns in one list.
pub const MAX_ITEMS: usize = 1_000;
/// Most ranges in a QRESYNC known-uids or seq-match set (threat model T122).
pub const MAX_QRESYNC_RANGES: usize = 10_000;
/// Most messages in one MULTIAPPEND.
pub const MAX_APPEND_MESSAGES: usize = 50;
/// Deepest part path in `BODY[1.2.3...]`.
pub const MAX_PART_DEPTH: usize = 64;

/// A command that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The tag, when it could be read (else the reply is untagged `* BAD`).
    pub tag: Option<String>,
    pub msg: &'static str,
    /// `SEARCH CHARSET` with a charset we do not know: `NO [BADCHARSET]`.
    pub bad_charset: bool,
}

fn body(p: &mut P<'_>, name: &str) -> Result<CommandKind, (&'static str, bool)> {
    let e = |m| (m, false);
    let mailbox_arg = |p: &mut P<'_>| -> R<Vec<u8>> {
        p.sp()?;
        p.astring()
    };
    Ok(match name {
        "CAPABILITY" => CommandKind::Capability,
        "NOOP" => CommandKind::Noop,
        "LOGOUT" => CommandKind::Logout,
        "STARTTLS" => CommandKind::StartTls,
        "NAMESPACE" => CommandKind::Namespace,
        "COMPRESS" => {
            p.sp().map_err(e)?;
            CommandKind::Compress(
                String::from_utf8_lossy(p.atom().map_err(e)?).to_ascii_uppercase(),
            )
        }
        "IDLE" => CommandKind::Idle,
        "CHECK" => CommandKind::Check,
        "CLOSE" => CommandKind::Close,
        "UNSELECT" => CommandKind::Unselect,
        "EXPUNGE" => CommandKind::Expunge { uids: None },
        "ID" => {
            // RFC 2971: parameters are accepted and ignored.
            p.sp().map_err(e)?;
            if p.peek() == Some(b'(') {
                p.skip_list(0).map_err(e)?;
            } else if p.word().map_err(e)? != "NIL" {
                return Err(e("expected NIL or a list"));
            }
            CommandKind::Id
        }
        "ENABLE" => {
            let mut v = Vec::new();
            while p.eat(b' ') {
                if v.len() >= MAX_ITEMS {
                    return Err(e("too many capabilities"));
                }
                v.push(String::from_utf8_lossy(p.atom().map_err(e)?).to_ascii_uppercase());
            }
            if v.is_empty() {
                return Err(e("ENABLE needs a capability"));
            }
            CommandKind::Enable(v)
        }
        "LOGIN" => {
            let user = mailbox_arg(p).map_err(e)?;
            let pass = mailbox_arg(p).map_err(e)?;
            CommandKind::Login { user, pass }
        }
        "AUTHENTICATE" => {
            p.sp().map_err(e)?;
            let mechanism = p.word().map_err(e)?;
            let initial = if p.eat(b' ') {
                let a = p.take_while(|b| {
                    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
                });
                if a.is_empty() {
                    return Err(e("bad initial response"));
                }
                Some(a.to_vec())
            } else {
                None
            };
            CommandKind::Authenticate { mechanism, initial }
        }
        "SELECT" | "EXAMINE" => {
            let mailbox = mailbox_arg(p).map_err(e)?;
            let (condstore, qresync) = if p.eat(b' ') {
                select_params(p).map_err(e)?
            } else {
                (false, None)
            };
            CommandKind::Select {
                mailbox,
                condstore,
                read_only: name == "EXAMINE",
                qresync,
            }
        }
        "CREATE" => {
            let m = mailbox_arg(p).map_err(e)?;
            CommandKind::Create(m)
        }
        "DELETE" => CommandKind::Delete(mailbox_arg(p).map_err(e)?),
        "SUBSCRIBE" => CommandKind::Subscribe(mailbox_arg(p).map_err(e)?),
        "UNSUBSCRIBE" => CommandKind::Unsubscribe(mailbox_arg(p).map_err(e)?),
        "RENAME" => {
            let from = mailbox_arg(p).map_err(e)?;
            let to = mailbox_arg(p).map_err(e)?;
            CommandKind::Rename { from, to }
        }
        "LIST" => list_command(p).map_err(e)?,
        "LSUB" => {
            let reference = mailbox_arg(p).map_err(e)?;
            p.sp().map_err(e)?;
            let pattern = p.list_mailbox().map_err(e)?;
            CommandKind::Lsub { reference, pattern }
        }
        "STATUS" => {
            let mailbox = mailbox_arg(p).map_err(e)?;
            p.sp().map_err(e)?;
            let items = status_items(p).map_err(e)?;
            CommandKind::Status { mailbox, items }
        }
        "APPEND" => append_command(p).map_err(e)?,
        "GETQUOTA" => CommandKind::GetQuota(mailbox_arg(p).map_err(e)?),
        "GETQUOTAROOT" => CommandKind::GetQuotaRoot(mailbox_arg(p).map_err(e)?),
        "SETQUOTA" => setquota_command(p).map_err(e)?,
        "GETMETADATA" => getmetadata_command(p).map_err(e)?,
        "SETMETADATA" => setmetadata_command(p).map_err(e)?,
        "NOTIFY" => notify_command(p).map_err(e)?,
        "SEARCH" => search_command(p, false)?,
        "SORT" => sort_command(p, false)?,
        "THREAD" => thread_command(p, false)?,
        "FETCH" => fetch_command(p, false).map_err(e)?,
        "STORE" => store_command(p, false).map_err(e)?,
        "COPY" | "MOVE" => {
            p.sp().map_err(e)?;
            let set = p.seq_set().map_err(e)?;
            let mailbox = mailbox_arg(p).map_err(e)?;
            CommandKind::Copy {
                uid: false,
                set,
                mailbox,
                is_move: name == "MOVE",
            }
        }
        "UID" => {
            p.sp().map_err(e)?;
            let sub = p.word().map_err(e)?;
            match sub.as_str() {
                "SEARCH" => search_command(p, true)?,
                "SORT" => sort_command(p, true)?,
                "THREAD" => thread_command(p, true)?,
                "FETCH" => fetch_command(p, true).map_err(e)?,
                "STORE" => store_command(p, true).map_err(e)?,
                "COPY" | "MOVE" => {
                    p.sp().map_err(e)?;
                    let set = p.seq_set().map_err(e)?;
                    let mailbox = mailbox_arg(p).map_err(e)?;
                    CommandKind::Copy {
                        uid: true,
                        set,
                        mailbox,
                        is_move: sub == "MOVE",
                    }
                }
                "EXPUNGE" => {
                    p.sp().map_err(e)?;
                    CommandKind::Expunge {
                        uids: Some(p.seq_set().map_err(e)?),
                    }
                }
                _ => return Err(e("unknown UID command")),
            }
        }
        _ => return Err(e("unknown command")),
    })
}

/// Parses one complete command (including its final CRLF).
///
/// # Errors
/// A [`ParseError`] carrying the tag when it could be read.
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let mut p = P { s: input, i: 0 };
    let tag = p.take_while(|b| is_astring_char(b) && b != b'+');
    if tag.is_empty() || tag.len() > 64 || p.peek() != Some(b' ') {
        return Err(ParseError {
            tag: None,
            msg: "missing or invalid tag",
            bad_charset: false,
        });
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let fail = |msg, bad_charset| ParseError {
        tag: Some(tag.clone()),
        msg,
        bad_charset,
    };
    p.i += 1;
    let name = p.word().map_err(|m| fail(m, false))?;
    let kind = body(&mut p, &name).map_err(|(m, c)| fail(m, c))?;
    p.end().map_err(|m| fail(m, false))?;
    Ok(Command { tag, kind })
}

#[cfg(test)]
mod tests;
