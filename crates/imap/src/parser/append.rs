//! APPEND (RFC 9051 §6.3.12) with MULTIAPPEND (RFC 3502) and literal8
//! (RFC 3516).

use crate::command::{AppendMessage, CommandKind};

use super::MAX_APPEND_MESSAGES;
use super::lexer::{P, R};

/// `date-time` of APPEND (RFC 9051 §9): `"dd-Mon-yyyy hh:mm:ss +zzzz"`.
fn date_time(p: &mut P<'_>) -> R<i64> {
    let q = p.quoted()?;
    let s = std::str::from_utf8(&q).map_err(|_| "bad date-time")?;
    let s = s.trim_start();
    let dt =
        chrono::DateTime::parse_from_str(s, "%d-%b-%Y %H:%M:%S %z").map_err(|_| "bad date-time")?;
    Ok(dt.timestamp())
}

pub(super) fn append_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    let mailbox = p.astring()?;
    let mut messages = Vec::new();
    // RFC 3502 MULTIAPPEND: more messages follow, each with its own
    // optional flags and date.
    while p.eat(b' ') {
        if messages.len() >= MAX_APPEND_MESSAGES {
            return Err("too many messages in one APPEND");
        }
        let mut flags = Vec::new();
        let mut date = None;
        if p.peek() == Some(b'(') {
            flags = p.flag_list()?;
            p.sp()?;
        }
        if p.peek() == Some(b'"') {
            date = Some(date_time(p)?);
            p.sp()?;
        }
        let data = p.literal(true)?;
        messages.push(AppendMessage { flags, date, data });
    }
    if messages.is_empty() {
        return Err("APPEND needs a message");
    }
    Ok(CommandKind::Append { mailbox, messages })
}
