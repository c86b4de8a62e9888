//! NOTIFY (RFC 5465 §8 grammar): `NOTIFY NONE` and
//! `NOTIFY SET [STATUS] (filter events) ...`.

use crate::command::{CommandKind, NotifyEvent, NotifyFilter, NotifyGroup};

use super::fetch::fetch_atts;
use super::lexer::{P, R};

/// Most event groups, mailboxes per filter and events per group.
const MAX_GROUPS: usize = 16;
const MAX_MAILBOXES: usize = 100;
const MAX_EVENTS: usize = 16;

/// `one-or-more-mailbox = mailbox / "(" mailbox *(SP mailbox) ")"`.
fn mailboxes(p: &mut P<'_>) -> R<Vec<Vec<u8>>> {
    if !p.eat(b'(') {
        return Ok(vec![p.astring()?]);
    }
    let mut v = Vec::new();
    loop {
        if v.len() >= MAX_MAILBOXES {
            return Err("too many mailboxes");
        }
        v.push(p.astring()?);
        if p.eat(b')') {
            return Ok(v);
        }
        p.sp()?;
    }
}

fn filter(p: &mut P<'_>) -> R<NotifyFilter> {
    Ok(match p.word()?.as_str() {
        "SELECTED" => NotifyFilter::Selected,
        "SELECTED-DELAYED" => NotifyFilter::SelectedDelayed,
        "INBOXES" => NotifyFilter::Inboxes,
        "PERSONAL" => NotifyFilter::Personal,
        "SUBSCRIBED" => NotifyFilter::Subscribed,
        "SUBTREE" => {
            p.sp()?;
            NotifyFilter::Subtree(mailboxes(p)?)
        }
        "MAILBOXES" => {
            p.sp()?;
            NotifyFilter::Mailboxes(mailboxes(p)?)
        }
        _ => return Err("unknown NOTIFY filter"),
    })
}

/// `events = "(" event *(SP event) ")" / "NONE"`.
fn events(p: &mut P<'_>) -> R<Vec<NotifyEvent>> {
    if !p.eat(b'(') {
        return if p.word()? == "NONE" {
            Ok(Vec::new())
        } else {
            Err("expected an event list or NONE")
        };
    }
    let mut v = Vec::new();
    loop {
        if v.len() >= MAX_EVENTS {
            return Err("too many events");
        }
        let name = p.word()?;
        v.push(match name.as_str() {
            "MESSAGENEW" => {
                let save = p.i;
                if p.eat(b' ') && p.peek() == Some(b'(') {
                    NotifyEvent::MessageNew(fetch_atts(p)?)
                } else {
                    p.i = save;
                    NotifyEvent::MessageNew(Vec::new())
                }
            }
            "MESSAGEEXPUNGE" => NotifyEvent::MessageExpunge,
            "FLAGCHANGE" => NotifyEvent::FlagChange,
            _ => NotifyEvent::Other(name),
        });
        if p.eat(b')') {
            return Ok(v);
        }
        p.sp()?;
    }
}

pub(super) fn notify_command(p: &mut P<'_>) -> R<CommandKind> {
    p.sp()?;
    match p.word()?.as_str() {
        "NONE" => return Ok(CommandKind::Notify(None)),
        "SET" => {}
        _ => return Err("expected NOTIFY SET or NOTIFY NONE"),
    }
    p.sp()?;
    let mut status = false;
    if p.peek() != Some(b'(') {
        if p.word()? != "STATUS" {
            return Err("expected STATUS or an event group");
        }
        status = true;
        p.sp()?;
    }
    let mut groups = Vec::new();
    loop {
        if groups.len() >= MAX_GROUPS {
            return Err("too many event groups");
        }
        p.expect(b'(', "expected an event group")?;
        let filter = filter(p)?;
        p.sp()?;
        let events = events(p)?;
        p.expect(b')', "expected ) after the events")?;
        groups.push(NotifyGroup { filter, events });
        if !p.eat(b' ') {
            break;
        }
    }
    Ok(CommandKind::Notify(Some((status, groups))))
}

#[cfg(test)]
mod tests {
    use crate::command::{CommandKind, FetchAtt, NotifyEvent as E, NotifyFilter as F, NotifyGroup};
    use crate::parser::parse_command;

    fn kind(s: &str) -> Result<CommandKind, &'static str> {
        parse_command(s.as_bytes())
            .map(|c| c.kind)
            .map_err(|e| e.msg)
    }

    #[test]
    fn notify_commands_parse() {
        assert_eq!(kind("a NOTIFY NONE\r\n"), Ok(CommandKind::Notify(None)));
        assert_eq!(
            kind(
                "a NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) (INBOXES (MessageNew MessageExpunge))\r\n"
            ),
            Ok(CommandKind::Notify(Some((
                false,
                vec![
                    NotifyGroup {
                        filter: F::Selected,
                        events: vec![
                            E::MessageNew(vec![FetchAtt::Uid, FetchAtt::Flags]),
                            E::MessageExpunge,
                            E::FlagChange
                        ],
                    },
                    NotifyGroup {
                        filter: F::Inboxes,
                        events: vec![E::MessageNew(Vec::new()), E::MessageExpunge],
                    },
                ]
            ))))
        );
        assert_eq!(
            kind(
                "a NOTIFY SET STATUS (mailboxes (INBOX \"a b\") (MessageNew)) (subtree Lists NONE) (personal (MailboxName))\r\n"
            ),
            Ok(CommandKind::Notify(Some((
                true,
                vec![
                    NotifyGroup {
                        filter: F::Mailboxes(vec![b"INBOX".to_vec(), b"a b".to_vec()]),
                        events: vec![E::MessageNew(Vec::new())],
                    },
                    NotifyGroup {
                        filter: F::Subtree(vec![b"Lists".to_vec()]),
                        events: Vec::new(),
                    },
                    NotifyGroup {
                        filter: F::Personal,
                        events: vec![E::Other("MAILBOXNAME".into())],
                    },
                ]
            ))))
        );
    }

    #[test]
    fn malformed_notify_is_refused() {
        for bad in [
            "a NOTIFY\r\n",
            "a NOTIFY SET\r\n",
            "a NOTIFY SET STATUS\r\n",
            "a NOTIFY SET (SELECTED)\r\n",
            "a NOTIFY SET (BOGUS (MessageNew))\r\n",
            "a NOTIFY SET (SELECTED (MessageNew)\r\n",
            "a NOTIFY SET (MAILBOXES (MessageNew))\r\n",
            "a NOTIFY SET (SELECTED (MessageNew (BOGUS)))\r\n",
            "a NOTIFY SET (SELECTED ALL)\r\n",
        ] {
            assert!(kind(bad).is_err(), "{bad:?}");
        }
    }
}
