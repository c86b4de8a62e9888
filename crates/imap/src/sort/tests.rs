use super::*;
use crate::model::Structure;

fn base(s: &str) -> String {
    base_subject(s.as_bytes()).0
}

#[test]
fn base_subject_strips_reply_and_forward_markers() {
    // RFC 5256 §2.1 steps 2-6.
    assert_eq!(base("Hello"), "HELLO");
    assert_eq!(base("Re: Hello"), "HELLO");
    assert_eq!(base("RE: re: Fwd: Hello"), "HELLO");
    assert_eq!(base("Re[2]: Hello"), "HELLO");
    assert_eq!(base("[list] Re: Hello"), "HELLO");
    assert_eq!(base("Hello (fwd)"), "HELLO");
    assert_eq!(base("Hello (fwd) (FWD)  "), "HELLO");
    assert_eq!(base("[Fwd: Re: Hello]"), "HELLO");
    assert_eq!(base("  Hello   big\t world "), "HELLO BIG WORLD");
    // A blob that is all there is stays (step 4: non-empty remainder).
    assert_eq!(base("[only]"), "[ONLY]");
    // "Rewrite" is not "Re:".
    assert_eq!(base("Rewrite it"), "REWRITE IT");
    assert_eq!(base(""), "");
}

#[test]
fn base_subject_reports_replies_and_decodes_encoded_words() {
    assert!(base_subject(b"Re: x").1);
    assert!(base_subject(b"x (fwd)").1);
    assert!(!base_subject(b"x").1);
    assert_eq!(base("=?UTF-8?Q?Re:_caf=C3=A9?="), "CAFÉ");
    assert_eq!(base("Re: =?ISO-8859-1?Q?caf=E9?="), "CAFÉ");
}

fn addr(name: Option<&str>, mailbox: &str, host: &str) -> Address {
    Address {
        name: name.map(|n| n.as_bytes().to_vec()),
        adl: None,
        mailbox: Some(mailbox.as_bytes().to_vec()),
        host: Some(host.as_bytes().to_vec()),
    }
}

fn msg(uid: u32, subject: &str, date: &str, from: Address, size: u64) -> MessageMeta {
    MessageMeta {
        uid,
        internal_date: Some(i64::from(1000 - uid)),
        size,
        structure: Some(Structure {
            envelope: Some(Envelope {
                subject: Some(subject.as_bytes().to_vec()),
                date: (!date.is_empty()).then(|| date.as_bytes().to_vec()),
                from: vec![from.clone()],
                to: vec![from],
                ..Envelope::default()
            }),
            parts: Vec::new(),
        }),
        ..MessageMeta::default()
    }
}

fn crit(reverse: bool, key: SortKey) -> SortCriterion {
    SortCriterion { reverse, key }
}

fn sample() -> Vec<MessageMeta> {
    vec![
        msg(
            1,
            "Re: beta",
            "Mon, 1 Jan 2024 10:00:00 +0000",
            addr(Some("Zed"), "a", "x.test"),
            300,
        ),
        msg(
            2,
            "alpha",
            "Mon, 1 Jan 2024 12:00:00 +0200",
            addr(None, "c", "x.test"),
            100,
        ),
        msg(
            3,
            "Fwd: Alpha",
            "Tue, 2 Jan 2024 09:00:00 +0000",
            addr(Some("=?UTF-8?Q?Bob?="), "b", "x.test"),
            200,
        ),
        msg(4, "beta", "not a date", addr(Some(""), "d", "x.test"), 100),
    ]
}

#[test]
fn sort_by_each_criterion_with_mailbox_order_for_ties() {
    let m = sample();
    assert_eq!(sort(&m, &[crit(false, SortKey::Subject)]), [2, 3, 1, 4]);
    assert_eq!(sort(&m, &[crit(true, SortKey::Subject)]), [1, 4, 2, 3]);
    // Date in UTC: 2 is 10:00Z, the same instant as 1 (tie: mailbox
    // order); 4 has no valid date and uses its internal date (996 s).
    assert_eq!(sort(&m, &[crit(false, SortKey::Date)]), [4, 1, 2, 3]);
    assert_eq!(sort(&m, &[crit(false, SortKey::Arrival)]), [4, 3, 2, 1]);
    assert_eq!(
        sort(&m, &[crit(false, SortKey::Size), crit(true, SortKey::From)]),
        [4, 2, 3, 1]
    );
    assert_eq!(sort(&m, &[crit(false, SortKey::From)]), [1, 3, 2, 4]);
    assert_eq!(sort(&m, &[crit(false, SortKey::Cc)]), [1, 2, 3, 4]);
    // RFC 5957: display name, else the addr-spec (C@X.TEST, D@X.TEST).
    assert_eq!(sort(&m, &[crit(false, SortKey::DisplayFrom)]), [3, 2, 4, 1]);
    assert_eq!(sort(&m, &[crit(false, SortKey::DisplayTo)]), [3, 2, 4, 1]);
}

#[test]
fn ordered_subject_threads_by_base_subject_and_first_date() {
    let m = sample();
    let threads = ordered_subject(&m);
    let mut out = String::new();
    for t in &threads {
        write_thread(&mut out, t, &|u| u, true);
    }
    // Threads "BETA" (1 first at 10:00Z... 4 falls back to 996 s, so 4
    // leads) and "ALPHA" (2 then 3), ordered by their first's date.
    assert_eq!(out, "(4 1)(2 3)");
    let more = vec![
        msg(
            5,
            "x",
            "Mon, 1 Jan 2024 10:00:00 +0000",
            addr(None, "a", "h"),
            1,
        ),
        msg(
            6,
            "Re: x",
            "Mon, 1 Jan 2024 11:00:00 +0000",
            addr(None, "a", "h"),
            1,
        ),
        msg(
            7,
            "re: X",
            "Mon, 1 Jan 2024 12:00:00 +0000",
            addr(None, "a", "h"),
            1,
        ),
    ];
    let mut out = String::new();
    for t in &ordered_subject(&more) {
        write_thread(&mut out, t, &|u| u + 10, true);
    }
    assert_eq!(out, "(15 (16)(17))");
    assert!(ordered_subject(&[]).is_empty());
}

#[test]
fn ties_keep_mailbox_order_even_reversed() {
    // imaptest sort-arrival: REVERSE reverses the key, not the tie-break
    // (RFC 5256 §3: ties are in mailbox order).
    let m: Vec<MessageMeta> = [(1, 0), (2, 7200), (3, 3600), (4, 7200), (5, 7200)]
        .iter()
        .map(|&(uid, t)| MessageMeta {
            uid,
            internal_date: Some(t),
            size: u64::from(uid),
            ..MessageMeta::default()
        })
        .collect();
    assert_eq!(sort(&m, &[crit(false, SortKey::Arrival)]), [1, 3, 2, 4, 5]);
    assert_eq!(sort(&m, &[crit(true, SortKey::Arrival)]), [2, 4, 5, 3, 1]);
    assert_eq!(
        sort(
            &m,
            &[crit(false, SortKey::Arrival), crit(true, SortKey::Size)]
        ),
        [1, 3, 5, 4, 2]
    );
}

#[test]
fn ordered_sets_keep_order_and_compress_ascending_runs() {
    assert_eq!(ordered_set(&[1, 2, 3, 4, 5]), "1:5");
    assert_eq!(ordered_set(&[2, 3, 1, 4]), "2:3,1,4");
    assert_eq!(ordered_set(&[5, 4, 3]), "5,4,3");
    assert_eq!(ordered_set(&[u32::MAX, 1]), "4294967295,1");
    assert_eq!(ordered_set(&[]), "");
}

proptest::proptest! {
    /// Subjects are attacker-chosen: any bytes give a result, no panic
    /// (char boundaries, the loops of §2.1 always make progress).
    #[test]
    fn base_subject_of_any_bytes_terminates(
        raw in proptest::collection::vec(
            proptest::sample::select(b"[]:( )\tReFwdfwd\xc3\xa9=?x".to_vec()),
            0..64,
        )
    ) {
        let (s, _) = base_subject(&raw);
        proptest::prop_assert!(s.len() <= raw.len() * 4 + 4);
    }
}
