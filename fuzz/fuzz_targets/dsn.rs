//! What `mail-dsn` reads from strangers: the header block of a queued
//! message (`Headers::parse`, `is_automatic`), the status code at the start
//! of a remote server's reply text (`status_of`), and both written into a
//! DSN (`build`).
//!
//! Invariants: `status_of` gives a canonical RFC 3463 code or the default;
//! the DSN's own header block (up to the first blank line) has only CRLF
//! line ends and 7-bit text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailstore_api::pb;

fuzz_target!(|data: &[u8]| {
    let headers = mail_dsn::Headers::parse(data);
    for (name, value) in &headers.0 {
        assert_eq!(name, &name.to_ascii_lowercase());
        assert!(!value.contains(['\r', '\n']));
    }
    let _ = mail_dsn::is_automatic("sender@example.org", &headers);

    let text = String::from_utf8_lossy(data);
    let status = mail_dsn::status_of(&text, "5.0.0");
    assert!(status == "5.0.0" || mail_wire::EnhancedStatus::parse(&status).is_some());

    let job = pb::Job::default();
    let failures = [mail_dsn::Failure {
        recipient: pb::Recipient {
            address: text.chars().take(100).collect(),
            orcpt: String::new(),
            notify: 0,
        },
        status,
        diagnostic: text.to_string(),
    }];
    let report = mail_dsn::Report {
        hostname: "mx.example.org",
        job: &job,
        failures: &failures,
        original_headers: data,
        now: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"),
    };
    let dsn = mail_dsn::build(&report);
    let head_end = dsn
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("DSN has a header block");
    let head = &dsn[..head_end + 2];
    for (i, &b) in head.iter().enumerate() {
        assert!(b.is_ascii(), "8-bit DSN header at {i}");
        if b == b'\n' {
            assert!(
                i > 0 && head[i - 1] == b'\r',
                "bare LF in DSN header at {i}"
            );
        }
        if b == b'\r' {
            assert_eq!(
                head.get(i + 1),
                Some(&b'\n'),
                "bare CR in DSN header at {i}"
            );
        }
    }
});
