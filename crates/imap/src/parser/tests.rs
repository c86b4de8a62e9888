//! Parser tests: every command form, limits, split at every byte
//! boundary, and random mutations of real commands.

use super::*;
use crate::command::{
    FetchAtt, SearchKey, Section, SectionText, SeqRange, SeqSet, StatusItem, StoreOp,
};

fn ok(s: &str) -> CommandKind {
    match parse_command(s.as_bytes()) {
        Ok(c) => c.kind,
        Err(e) => panic!("{s:?}: {e:?}"),
    }
}

fn bad(s: &[u8]) -> ParseError {
    match parse_command(s) {
        Ok(c) => panic!("{s:?} parsed as {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn simple_commands() {
    assert_eq!(ok("a NOOP\r\n"), CommandKind::Noop);
    assert_eq!(ok("a capability\r\n"), CommandKind::Capability);
    assert_eq!(
        ok("a1.x UID EXPUNGE 1:3\r\n"),
        CommandKind::Expunge {
            uids: Some(SeqSet(vec![SeqRange {
                first: Some(1),
                last: Some(3)
            }]))
        }
    );
    assert_eq!(
        ok("a ID (\"name\" \"x\" \"version\" NIL)\r\n"),
        CommandKind::Id
    );
    assert_eq!(
        ok("a ENABLE IMAP4rev2 condstore\r\n"),
        CommandKind::Enable(vec!["IMAP4REV2".into(), "CONDSTORE".into()])
    );
}

#[test]
fn login_forms() {
    let want = CommandKind::Login {
        user: b"bob".to_vec(),
        pass: b"p w\"".to_vec(),
    };
    assert_eq!(ok("a LOGIN bob \"p w\\\"\"\r\n"), want);
    assert_eq!(ok("a LOGIN {3}\r\nbob {4+}\r\np w\"\r\n"), want);
    let e = bad(b"a LOGIN \"us\x00er\" \"pw\"\r\n");
    assert_eq!(e.tag.as_deref(), Some("a"));
    bad(b"a LOGIN {3}\r\nb\x00b pw\r\n");
}

#[test]
fn fetch_items() {
    let k = ok(
        "a FETCH 1:*,3 (UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject From)]<0.100> BODY[1.2.MIME] BINARY[1] RFC822.SIZE) (CHANGEDSINCE 5)\r\n",
    );
    let CommandKind::Fetch {
        uid,
        set,
        atts,
        changed_since,
        ..
    } = k
    else {
        panic!()
    };
    assert!(!uid);
    assert_eq!(set.0.len(), 2);
    assert_eq!(changed_since, Some(5));
    assert_eq!(
        atts[2],
        FetchAtt::BodySection {
            peek: true,
            section: Section {
                part: vec![],
                text: SectionText::HeaderFields {
                    not: false,
                    fields: vec!["Subject".into(), "From".into()]
                }
            },
            partial: Some((0, 100)),
        }
    );
    assert_eq!(
        atts[3],
        FetchAtt::BodySection {
            peek: false,
            section: Section {
                part: vec![1, 2],
                text: SectionText::Mime
            },
            partial: None
        }
    );
    assert_eq!(ok("a UID FETCH 1 ALL\r\n").name(), "FETCH");
    assert_eq!(
        ok("a FETCH 1 BODY[]\r\n"),
        CommandKind::Fetch {
            uid: false,
            set: SeqSet(vec![SeqRange {
                first: Some(1),
                last: Some(1)
            }]),
            atts: vec![FetchAtt::BodySection {
                peek: false,
                section: Section {
                    part: vec![],
                    text: SectionText::None
                },
                partial: None
            }],
            changed_since: None,
            vanished: false,
        }
    );
    bad(b"a FETCH 0 FLAGS\r\n");
    bad(b"a FETCH 1 BODY[]<4294967296.1>\r\n");
    bad(b"a FETCH 1 BODY[MIME]\r\n");
}

#[test]
fn deep_section_is_bounded() {
    let mut s = b"a FETCH 1 BODY[".to_vec();
    for _ in 0..1000 {
        s.extend_from_slice(b"1.");
    }
    s.extend_from_slice(b"1]\r\n");
    bad(&s);
}

#[test]
fn search_programs() {
    let k = ok(
        "a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR SEEN NOT (FROM \"bob\" SINCE 1-Feb-2024) 1:5 UID 7:*\r\n",
    );
    let CommandKind::Search {
        uid: true,
        ret: Some(r),
        key: SearchKey::And(keys),
    } = k
    else {
        panic!("{k:?}")
    };
    assert!(r.min && r.count && !r.all);
    assert_eq!(keys.len(), 3);
    assert!(matches!(&keys[0], SearchKey::Or(..)));
    let e = bad(b"a SEARCH CHARSET KOI8-R ALL\r\n");
    assert!(e.bad_charset);
    assert_eq!(
        ok("a SEARCH ON 1-Jan-1970\r\n"),
        CommandKind::Search {
            uid: false,
            ret: None,
            key: SearchKey::Date {
                since: Some(0),
                before: Some(1)
            }
        }
    );
    // 4,000 nested parentheses: BAD, no stack overflow.
    let mut s = b"a SEARCH ".to_vec();
    s.extend(std::iter::repeat_n(b'(', 4000));
    s.extend_from_slice(b"ALL");
    s.extend(std::iter::repeat_n(b')', 4000));
    s.extend_from_slice(b"\r\n");
    bad(&s);
}

#[test]
fn store_and_copy() {
    assert_eq!(
        ok("a STORE 1 +FLAGS.SILENT (\\seen $Junk)\r\n"),
        CommandKind::Store {
            uid: false,
            set: SeqSet(vec![SeqRange {
                first: Some(1),
                last: Some(1)
            }]),
            op: StoreOp::Add,
            silent: true,
            flags: vec!["\\Seen".into(), "$Junk".into()],
            unchanged_since: None
        }
    );
    let k = ok("a UID STORE 1:* (UNCHANGEDSINCE 9) -FLAGS \\Deleted\r\n");
    assert!(matches!(
        k,
        CommandKind::Store {
            uid: true,
            op: StoreOp::Remove,
            unchanged_since: Some(9),
            ..
        }
    ));
    assert!(matches!(
        ok("a UID MOVE 1:2 Trash\r\n"),
        CommandKind::Copy {
            uid: true,
            is_move: true,
            ..
        }
    ));
    bad(b"a STORE 1 +FLAGS (\\Bogus)\r\n");
}

#[test]
fn list_forms() {
    let k = ok(
        "a LIST (SUBSCRIBED) \"\" (\"INBOX\" \"*\") RETURN (CHILDREN STATUS (MESSAGES SIZE) SPECIAL-USE)\r\n",
    );
    let CommandKind::List {
        patterns,
        select,
        ret,
        extended,
        ..
    } = k
    else {
        panic!()
    };
    assert!(extended && select.subscribed && ret.children && ret.special_use);
    assert_eq!(patterns.len(), 2);
    assert_eq!(ret.status, vec![StatusItem::Messages, StatusItem::Size]);
    assert!(matches!(
        ok("a LIST \"\" %\r\n"),
        CommandKind::List {
            extended: false,
            ..
        }
    ));
    assert!(matches!(ok("a LSUB \"\" *\r\n"), CommandKind::Lsub { .. }));
}

#[test]
fn append_forms() {
    let k = ok("a APPEND INBOX (\\Seen) \" 5-Mar-2024 10:00:00 +0100\" {5}\r\nhello\r\n");
    let CommandKind::Append {
        mailbox,
        mut messages,
    } = k
    else {
        panic!()
    };
    assert_eq!(mailbox, b"INBOX");
    assert_eq!(messages.len(), 1);
    let message = messages.remove(0);
    assert_eq!(message.flags, vec!["\\Seen".to_string()]);
    assert_eq!(message.date, Some(1_709_629_200));
    assert_eq!(message.data, b"hello");
    assert!(matches!(
        ok("a APPEND x ~{3+}\r\na\x00b\r\n"),
        CommandKind::Append { .. }
    ));
    // RFC 3502 MULTIAPPEND.
    let k =
        ok("a APPEND x {1+}\r\na (\\Seen) {1+}\r\nb \"01-Jan-2020 00:00:00 +0000\" {1+}\r\nc\r\n");
    let CommandKind::Append { messages, .. } = k else {
        panic!()
    };
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1].flags, vec!["\\Seen".to_string()]);
    assert_eq!(messages[2].data, b"c");
    bad(b"a APPEND x\r\n");
    bad(b"a APPEND x {1+}\r\na \r\n");
}

#[test]
fn garbage_is_bad_not_panic() {
    for s in [
        &b"\r\n"[..],
        b"a\r\n",
        b"a FOO\r\n",
        b"a FETCH\r\n",
        b"a FETCH 1:",
        b"a LOGIN {99}\r\nab\r\n",
        b"a SELECT INBOX (",
        b"a SEARCH OR\r\n",
        b"a STATUS x ()\r\n",
        b"+ NOOP\r\n",
    ] {
        let _ = bad(s);
    }
}

/// Every command of the table, framed and parsed after being split
/// at every byte boundary, parses exactly as the unsplit command.
#[test]
fn split_at_every_boundary() {
    use crate::framing::{Frame, Framer, Limits};
    let table: &[&[u8]] = &[
        b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n",
        b"a1 UID FETCH 1:*,7 (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.9>) (CHANGEDSINCE 4)\r\n",
        b"t APPEND INBOX (\\Seen) {11}\r\nSub: x\r\n\r\nb\r\n",
        b"x SEARCH RETURN (COUNT) OR (FROM {3}\r\nbob) UNSEEN\r\n",
        b"y LIST (SUBSCRIBED) \"\" (\"*\" %) RETURN (STATUS (MESSAGES))\r\n",
        b"z STORE 1:3 -FLAGS.SILENT (\\Deleted)\r\n",
    ];
    let limits = Limits::default();
    for cmd in table {
        let whole = parse_command(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e:?}"));
        for cut in 1..cmd.len() {
            let mut f = Framer::new();
            let mut buf = cmd[..cut].to_vec();
            let mut done = None;
            for chunk in [&cmd[cut..], &b""[..]] {
                let mut last_continue = false;
                while done.is_none() {
                    match f.advance(&buf, &limits, true) {
                        Frame::Complete(n) => done = Some(n),
                        Frame::Incomplete => break,
                        Frame::Continue => {
                            // Each literal is announced once; the next call
                            // with the same input must not announce again.
                            assert!(!last_continue, "{cmd:?} cut {cut}: Continue twice");
                            last_continue = true;
                        }
                        other => panic!("{cmd:?} cut {cut}: {other:?}"),
                    }
                }
                if done.is_some() {
                    break;
                }
                buf.extend_from_slice(chunk);
            }
            let n = done.unwrap_or_else(|| panic!("{cmd:?} cut {cut}: never complete"));
            assert_eq!(n, cmd.len());
            assert_eq!(
                parse_command(&buf[..n]).ok().as_ref(),
                Some(&whole),
                "{cmd:?} cut {cut}"
            );
        }
    }
}

/// A poor man's fuzzer (cargo-fuzz needs nightly): random mutations of
/// real commands through the framer and the parser never panic.
#[test]
fn random_mutations_never_panic() {
    use crate::framing::{Frame, Framer, Limits};
    let seeds: &[&[u8]] = &[
        b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n",
        b"a1 UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (From)]<0.9> BINARY[1]) (CHANGEDSINCE 4)\r\n",
        b"t APPEND INBOX (\\Seen) \" 1-Jan-2020 00:00:00 +0000\" ~{3}\r\na\x00b\r\n",
        b"x UID SEARCH RETURN (MIN) CHARSET UTF-8 OR (FROM x NOT SEEN) 1:3 HEADER a b SENTON 1-Feb-2000\r\n",
        b"y LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"*\" %) RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n",
        b"z UID STORE 1:3 (UNCHANGEDSINCE 5) -FLAGS.SILENT (\\Deleted $x)\r\n",
        b"s SELECT \"&AOk-t&AOk-\" (CONDSTORE)\r\n",
    ];
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let limits = Limits {
        max_line: 4096,
        max_literal: 4096,
        max_command: 16 * 1024,
        ..Limits::default()
    };
    for round in 0..20_000u32 {
        let seed = seeds[round as usize % seeds.len()];
        let mut v = seed.to_vec();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let i = usize::try_from(next() % (v.len() as u64 + 1)).unwrap_or(0);
            let b = u8::try_from(next() % 256).unwrap_or(0);
            match next() % 4 {
                0 if i < v.len() => v[i] = b,
                1 => {
                    let alphabet = b"(){}[]<>*%\\\" \r\n0123456789+-.:~";
                    let k = usize::try_from(next() % alphabet.len() as u64).unwrap_or(0);
                    v.insert(i, alphabet[k]);
                }
                2 if i < v.len() => {
                    v.remove(i);
                }
                _ => v.insert(i, b),
            }
        }
        let _ = parse_command(&v);
        let mut f = Framer::new();
        let mut off = 0;
        for _ in 0..8 {
            match f.advance(&v[off..], &limits, true) {
                Frame::Complete(n) => {
                    let _ = parse_command(&v[off..off + n]);
                    off += n;
                }
                Frame::Reject { consume, .. } => off += consume,
                _ => break,
            }
            if off >= v.len() {
                break;
            }
        }
    }
}

#[test]
fn sort_and_thread_commands() {
    use crate::command::{SortCriterion, SortKey, ThreadAlgorithm};
    let k = ok("a UID SORT (REVERSE DATE SUBJECT displayfrom) UTF-8 SEEN 1:3\r\n");
    let CommandKind::Sort {
        uid: true,
        ret: None,
        criteria,
        key: SearchKey::And(keys),
    } = k
    else {
        panic!("{k:?}")
    };
    assert_eq!(
        criteria,
        [
            SortCriterion {
                reverse: true,
                key: SortKey::Date
            },
            SortCriterion {
                reverse: false,
                key: SortKey::Subject
            },
            SortCriterion {
                reverse: false,
                key: SortKey::DisplayFrom
            },
        ]
    );
    assert_eq!(keys.len(), 2);
    // RFC 5267 §3: RETURN before the criteria; () means ALL.
    let k = ok("a SORT RETURN (MIN COUNT) (SIZE) US-ASCII ALL\r\n");
    assert!(
        matches!(k, CommandKind::Sort { ret: Some(ref r), .. } if r.min && r.count && !r.all),
        "{k:?}"
    );
    let k = ok("a SORT RETURN () (ARRIVAL) UTF-8 ALL\r\n");
    assert!(matches!(k, CommandKind::Sort { ret: Some(ref r), .. } if r.all));
    assert_eq!(
        ok("a THREAD ORDEREDSUBJECT UTF-8 ALL\r\n"),
        CommandKind::Thread {
            uid: false,
            algorithm: ThreadAlgorithm::OrderedSubject,
            key: SearchKey::All
        }
    );
    assert_eq!(
        ok("a UID THREAD references UTF-8 ALL\r\n"),
        CommandKind::Thread {
            uid: true,
            algorithm: ThreadAlgorithm::References,
            key: SearchKey::All
        }
    );
    // The charset is mandatory; REVERSE needs a key; no empty criteria;
    // unknown criteria and algorithms are BAD; unknown charsets NO.
    bad(b"a SORT (DATE) ALL\r\n");
    bad(b"a SORT (DATE REVERSE) UTF-8 ALL\r\n");
    bad(b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL\r\n");
    bad(b"a SORT () UTF-8 ALL\r\n");
    bad(b"a SORT (COLOUR) UTF-8 ALL\r\n");
    bad(b"a THREAD REFS UTF-8 ALL\r\n");
    bad(b"a THREAD ORDEREDSUBJECT\r\n");
    assert!(bad(b"a SORT (DATE) KOI8-R ALL\r\n").bad_charset);
    assert!(bad(b"a THREAD ORDEREDSUBJECT KOI8-R ALL\r\n").bad_charset);
}

#[test]
fn searchres_dollar_and_save() {
    // RFC 5182 §4: "$" is a whole sequence set; RETURN (SAVE).
    let k = ok("a UID SEARCH RETURN (SAVE) FLAGGED\r\n");
    assert!(
        matches!(k, CommandKind::Search { ret: Some(ref r), .. } if r.save && !r.all && !r.min),
        "{k:?}"
    );
    let k = ok("a SEARCH RETURN (SAVE MIN) $ SEEN\r\n");
    let CommandKind::Search {
        key: SearchKey::And(keys),
        ..
    } = k
    else {
        panic!("{k:?}")
    };
    assert!(matches!(&keys[0], SearchKey::SeqSet(s) if s.is_saved()));
    let CommandKind::Fetch { set, .. } = ok("a FETCH $ (FLAGS)\r\n") else {
        panic!()
    };
    assert!(set.is_saved());
    let CommandKind::Copy { set, uid: true, .. } = ok("a UID COPY $ Trash\r\n") else {
        panic!()
    };
    assert!(set.is_saved());
    let k = ok("a SEARCH UID $\r\n");
    assert!(matches!(k, CommandKind::Search { key: SearchKey::Uid(ref s), .. } if s.is_saved()));
    assert!(!ok_set("1").is_saved());
    bad(b"a FETCH $,1 (FLAGS)\r\n");
    bad(b"a FETCH 1,$ (FLAGS)\r\n");
    bad(b"a FETCH 0 (FLAGS)\r\n");
}

fn ok_set(s: &str) -> SeqSet {
    match ok(&format!("a FETCH {s} FLAGS\r\n")) {
        CommandKind::Fetch { set, .. } => set,
        k => panic!("{k:?}"),
    }
}

#[test]
fn qresync_select_and_fetch_modifiers() {
    let r = |a, b| SeqRange {
        first: Some(a),
        last: Some(b),
    };
    let CommandKind::Select {
        condstore, qresync, ..
    } = ok(
        "a SELECT INBOX (CONDSTORE QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1,3:5 41,43:45)))\r\n",
    )
    else {
        panic!()
    };
    assert!(condstore);
    let Some(q) = qresync else { panic!() };
    assert_eq!(
        (q.uidvalidity, q.modseq),
        (67_890_007, 20_050_715_194_045_000)
    );
    assert_eq!(
        q.known_uids,
        Some(SeqSet(vec![r(41, 41), r(43, 211), r(214, 541)]))
    );
    assert_eq!(
        q.seq_match,
        Some((
            SeqSet(vec![r(1, 1), r(3, 5)]),
            SeqSet(vec![r(41, 41), r(43, 45)])
        ))
    );
    // seq-match-data without known-uids (RFC 7162 §7: both optional).
    let CommandKind::Select { qresync, .. } = ok("a EXAMINE x (QRESYNC (1 2 (1 5)))\r\n") else {
        panic!()
    };
    let Some(q) = qresync else { panic!() };
    assert!(q.known_uids.is_none() && q.seq_match.is_some());
    for b in [
        "a SELECT x (QRESYNC (1 0))\r\n",
        "a SELECT x (QRESYNC (1 2 $))\r\n",
        "a SELECT x (QRESYNC (1 2 1:3 (1:2 1:3)))\r\n",
        "a SELECT x (QRESYNC (1 2) QRESYNC (1 2))\r\n",
        "a SELECT x (QRESYNC 1 2)\r\n",
        "a SELECT x (BOGUS)\r\n",
    ] {
        bad(b.as_bytes());
    }
    let many: Vec<String> = (0..=crate::parser::MAX_QRESYNC_RANGES)
        .map(|i| (2 * i + 1).to_string())
        .collect();
    bad(format!("a SELECT x (QRESYNC (1 2 {}))\r\n", many.join(",")).as_bytes());

    let CommandKind::Fetch { vanished, atts, .. } =
        ok("a UID FETCH 1:* (FLAGS EMAILID THREADID PREVIEW (LAZY)) (CHANGEDSINCE 3 VANISHED)\r\n")
    else {
        panic!()
    };
    assert!(vanished);
    assert_eq!(
        atts,
        vec![
            FetchAtt::Flags,
            FetchAtt::EmailId,
            FetchAtt::ThreadId,
            FetchAtt::Preview { lazy: true }
        ]
    );
    let CommandKind::Fetch { atts, .. } = ok("a FETCH 1 PREVIEW (CHANGEDSINCE 3)\r\n") else {
        panic!()
    };
    assert_eq!(atts, vec![FetchAtt::Preview { lazy: false }]);
    bad(b"a FETCH 1 (FLAGS) (CHANGEDSINCE 3 VANISHED)\r\n");
    bad(b"a UID FETCH 1 (FLAGS) (VANISHED)\r\n");
    bad(b"a UID FETCH 1 (PREVIEW (EAGER))\r\n");
    assert!(matches!(
        ok("a STATUS x (MAILBOXID)\r\n"),
        CommandKind::Status { items, .. } if items == vec![StatusItem::MailboxId]
    ));
}
