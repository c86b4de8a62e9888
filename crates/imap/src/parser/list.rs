//! LIST with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and
//! SPECIAL-USE (RFC 6154); STATUS items (RFC 9051 §6.3.11, RFC 8438).

use crate::command::{CommandKind, ListReturn, ListSelect, StatusItem};

use super::MAX_ITEMS;
use super::lexer::{P, R};

pub(super) fn status_items(p: &mut P<'_>) -> R<Vec<StatusItem>> {
    let words = p.word_list()?;
    if words.is_empty() {
        return Err("empty status item list");
    }
    words
        .iter()
        .map(|w| {
            Ok(match w.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "HIGHESTMODSEQ" => StatusItem::HighestModseq,
                "MAILBOXID" => StatusItem::MailboxId,
                "DELETED-STORAGE" => StatusItem::DeletedStorage,
                _ => return Err("unknown status item"),
            })
        })
        .collect()
}

pub(super) fn list_command(p: &mut P<'_>) -> R<CommandKind> {
    let mut select = ListSelect::default();
    let mut ret = ListReturn::default();
    let mut extended = false;
    p.sp()?;
    if p.peek() == Some(b'(') {
        // RFC 5258 §3.1 selection options.
        extended = true;
        for w in p.word_list()? {
            match w.as_str() {
                "SUBSCRIBED" => select.subscribed = true,
                "RECURSIVEMATCH" => select.recursive_match = true,
                "SPECIAL-USE" => select.special_use = true,
                "REMOTE" => {}
                _ => return Err("unknown LIST selection option"),
            }
        }
        if select.recursive_match && !select.subscribed && !select.special_use {
            return Err("RECURSIVEMATCH needs another selection option");
        }
        p.sp()?;
    }
    let reference = p.astring()?;
    p.sp()?;
    let mut patterns = Vec::new();
    if p.eat(b'(') {
        extended = true;
        loop {
            if patterns.len() >= MAX_ITEMS {
                return Err("too many patterns");
            }
            patterns.push(p.list_mailbox()?);
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else {
        patterns.push(p.list_mailbox()?);
    }
    if !p.at_end() {
        p.sp()?;
        if p.word()? != "RETURN" {
            return Err("expected RETURN");
        }
        extended = true;
        p.sp()?;
        p.expect(b'(', "expected return options")?;
        if !p.eat(b')') {
            loop {
                match p.word()?.as_str() {
                    "SUBSCRIBED" => ret.subscribed = true,
                    "CHILDREN" => ret.children = true,
                    "SPECIAL-USE" => ret.special_use = true,
                    "STATUS" => {
                        p.sp()?;
                        ret.status = status_items(p)?;
                    }
                    _ => return Err("unknown LIST return option"),
                }
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
        }
    }
    Ok(CommandKind::List {
        reference,
        patterns,
        select,
        ret,
        extended,
    })
}
