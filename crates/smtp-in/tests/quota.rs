//! RCPT to a mailbox that has reached its quota (issue #16, RFC 3463
//! X.2.2): 452 4.2.2 at RCPT while the
//! other recipients of the transaction are accepted; a mailbox with room
//! is accepted even when the message may turn out too large (delivery
//! decides, see delivery's quota tests).

#![allow(clippy::unwrap_used)]

mod common;

use common::{ALICE, Harness};
use mailstore_api::pb;
use smtp_in::session::ListenerKind;

async fn set_messages_limit(h: &Harness, address: &str, n: u64) {
    h.store
        .client()
        .accounts
        .set_quota(pb::SetQuotaRequest {
            key: Some(pb::set_quota_request::Key::Address(address.into())),
            limit_bytes: None,
            limit_messages: Some(n),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_is_refused_at_rcpt_with_452_4_2_2() {
    let h = Harness::new().await;
    h.store.add_user("bob@ours.example", "bob-pw").await;
    set_messages_limit(&h, ALICE, 1).await;
    // Room for one: accepted.
    let mut c = h.connect(ListenerKind::Mx);
    c.expect_reply("220 ").await;
    c.expect("EHLO client.example", "250 ").await;
    c.expect("MAIL FROM:<s@remote.example>", "250 2.1.0").await;
    c.expect(&format!("RCPT TO:<{ALICE}>"), "250 2.1.5").await;
    c.expect("RSET", "250").await;
    h.store
        .append(h.alice_id, "INBOX", b"Subject: x\r\n\r\nfills it\r\n")
        .await;
    // Full: 452 4.2.2 at RCPT (plus-address too); bob still accepted.
    c.expect("MAIL FROM:<s@remote.example>", "250 2.1.0").await;
    let r = c.expect(&format!("RCPT TO:<{ALICE}>"), "452 4.2.2").await;
    assert!(r.text().contains("Mailbox full"), "{:?}", r.text());
    c.expect("RCPT TO:<alice+tag@ours.example>", "452 4.2.2")
        .await;
    c.expect("RCPT TO:<bob@ours.example>", "250 2.1.5").await;
    c.expect("DATA", "354").await;
    c.write(b"Subject: hi\r\n\r\nbody\r\n.\r\n").await;
    c.expect_reply("250 ").await;
    let jobs = h.jobs().await;
    assert_eq!(jobs.len(), 1);
    // Raising the limit opens the mailbox again at once.
    set_messages_limit(&h, ALICE, 10).await;
    c.expect("MAIL FROM:<s@remote.example>", "250 2.1.0").await;
    c.expect(&format!("RCPT TO:<{ALICE}>"), "250 2.1.5").await;
}
