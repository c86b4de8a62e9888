//! Indexed SEARCH (issue #16) over gRPC against a real PostgreSQL with
//! pg_trgm: every answer is checked three times — from the index, from the
//! blobs (the rows turned back into the placeholders migration 0014 leaves
//! for old mail, so the store reads and parses each blob), and from the
//! index again after `BackfillSearchText` refilled it — and must be the
//! expected UIDs each time.
#![allow(clippy::unwrap_used)]

use mailbox_store::text;
use mailstore_api::pb;
use mailstore_api::pb::search_key::Key;
use sqlx::PgPool;
use test_kit::{TestStore, append, collect_body, deliver_request, enqueue, lease_inbound};

async fn setup() -> (TestStore, u64, PgPool) {
    let s = TestStore::start().await;
    s.add_domain("example.org").await;
    let user = s.add_user("alice@example.org", "correct horse").await;
    let pool = PgPool::connect(&s.database_url).await.unwrap();
    (s, user, pool)
}

async fn mailbox(s: &TestStore, user: u64, name: &str) -> u64 {
    s.client()
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest {
            user_id: user,
            name: name.into(),
            claim_recent: false,
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn search(s: &TestStore, mailbox_id: u64, key: Key) -> Vec<u32> {
    s.client()
        .mailboxes
        .search(pb::SearchRequest {
            mailbox_id,
            key: Some(pb::SearchKey { key: Some(key) }),
        })
        .await
        .unwrap()
        .into_inner()
        .uids
}

fn body(s: &str) -> Key {
    Key::Body(s.into())
}

fn text_key(s: &str) -> Key {
    Key::Text(s.into())
}

fn header(f: &str, v: &str) -> Key {
    Key::Header(pb::HeaderMatch {
        field: f.into(),
        value: v.into(),
    })
}

fn any_of(keys: Vec<Key>) -> Key {
    Key::AnyOf(pb::SearchKeys {
        keys: keys
            .into_iter()
            .map(|k| pb::SearchKey { key: Some(k) })
            .collect(),
    })
}

fn not(k: Key) -> Key {
    Key::Not(Box::new(pb::SearchKey { key: Some(k) }))
}

/// Turns every row into a placeholder: what a blob stored before the
/// migration has, so SEARCH must read the blobs.
async fn forget_index(pool: &PgPool) {
    sqlx::query("UPDATE blob_text SET headers = NULL, body = NULL, complete = false")
        .execute(pool)
        .await
        .unwrap();
}

/// Runs the backfill to the end in batches of `limit`, as `mailctl search
/// backfill` does; returns (calls, blobs indexed).
async fn backfill(s: &TestStore, limit: u32) -> (u32, u32) {
    let mut after = Vec::new();
    let (mut calls, mut total) = (0, 0);
    loop {
        let r = s
            .client()
            .mailboxes
            .backfill_search_text(pb::BackfillSearchTextRequest {
                after: after.clone(),
                limit,
            })
            .await
            .unwrap()
            .into_inner();
        calls += 1;
        total += r.indexed;
        if r.done {
            assert_eq!(r.remaining, 0);
            return (calls, total);
        }
        after = r.next_after;
    }
}

/// blob data, headers, body, complete.
type TextRow = (Vec<u8>, Option<String>, Option<String>, bool);

/// Every row holds what `text::extract` gives for its blob.
async fn rows_match_blobs(pool: &PgPool) {
    let rows: Vec<TextRow> = sqlx::query_as(
        "SELECT b.data, t.headers, t.body, t.complete FROM blob_text t JOIN blobs b USING (hash)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    for (data, h, b, complete) in rows {
        let t = text::extract(&data);
        assert_eq!(h.as_deref(), Some(t.headers.as_str()));
        assert_eq!(b.as_deref(), Some(t.body.as_str()));
        assert_eq!(complete, t.complete);
    }
}

async fn check_all(s: &TestStore, mb: u64, cases: &[(Key, Vec<u32>)], how: &str) {
    for (k, want) in cases {
        assert_eq!(&search(s, mb, k.clone()).await, want, "{how}: {k:?}");
    }
}

const QP: &[u8] = b"Subject: qp\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 au lait, soft=\r\nbreak here\r\n";
const B64: &[u8] =
    b"Subject: b64\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
aGVsbG8gYmFzZTY0IHdvcmxk\r\n";
const LATIN1: &[u8] = b"Subject: =?ISO-8859-1?Q?=C4rger_mit_Gr=FC=DFen?=\r\n\
Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
\xC4RGER \xFCber Stra\xDFe\r\n";
const NESTED: &[u8] = b"Subject: outer shell\r\nFrom: Outer <outer@example.net>\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n\
see attached\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: Inner Topic\r\n\
From: Inner <inner@example.net>\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n\
--YY\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
ZGVlcGx5IG5lc3RlZCBzZWNyZXQ=\r\n--YY\r\nContent-Type: text/html\r\n\r\n<p>html <b>bold</b> words</p>\r\n\
--YY--\r\n--XX\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"Quarterly_Report.PDF\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n";
const REPORT: &[u8] = b"Subject: Undelivered Mail\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=RR\r\n\r\n\
--RR\r\nContent-Type: text/plain\r\n\r\nyour mail bounced\r\n--RR\r\n\
Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--RR\r\n\
Content-Type: text/rfc822-headers\r\n\r\nSubject: =?UTF-8?Q?Urspr=C3=BCnglich?=\r\n\
X-Original-Tracker: zebra-42\r\n\r\n--RR--\r\n";
const META: &[u8] = b"Subject: sale\r\n\r\nnow 50% off_today, path a\\b\r\n";
const META2: &[u8] = b"Subject: sale too\r\n\r\nnow 500 offXtoday, path ab\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_answers_equal_blob_scan_answers() {
    let (s, user, pool) = setup().await;
    for m in [QP, B64, LATIN1, NESTED, REPORT, META, META2] {
        s.append(user, "INBOX", m).await;
    }
    let mb = mailbox(&s, user, "INBOX").await;
    let cases = vec![
        // quoted-printable with a soft line break (RFC 2045 §6.7)
        (body("café au"), vec![1]),
        (body("softbreak"), vec![1]),
        (body("CAFÉ"), vec![1]),
        // base64 (RFC 2045 §6.8)
        (body("base64 WORLD"), vec![2]),
        (body("aGVsbG8"), vec![]),
        // ISO-8859-1 body and RFC 2047 header; non-ASCII case folding
        (body("ärger über straße"), vec![3]),
        (body("ÄRGER"), vec![3]),
        (header("subject", "GRÜßEN"), vec![3]),
        (header("SUBJECT", "ärger mit"), vec![3]),
        // attached message/rfc822: its headers and text are body text
        (body("deeply nested SECRET"), vec![4]),
        (body("bold words"), vec![4]),
        (body("inner topic"), vec![4]),
        (header("subject", "inner"), vec![]),
        (text_key("inner@example.net"), vec![4]),
        (header("from", "outer@"), vec![4]),
        (body("quarterly_report.pdf"), vec![4]),
        // text/rfc822-headers, raw and decoded
        (body("zebra-42"), vec![5]),
        (body("ursprünglich"), vec![5]),
        // LIKE metacharacters are literal
        (body("50%"), vec![6]),
        (body("f_t"), vec![6]),
        (body("a\\b"), vec![6]),
        (body("%"), vec![6]),
        (body("_"), vec![4, 6]),
        // 1- and 2-character needles
        (body("é"), vec![1]),
        (body("ß"), vec![3]),
        (body("xt"), vec![7]),
        (body("zq"), vec![]),
        // header keys read headers only, BODY reads the body only
        (body("sale"), vec![]),
        (header("subject", "sale"), vec![6, 7]),
        (header("subject", ""), vec![1, 2, 3, 4, 5, 6, 7]),
        (header("cc", ""), vec![]),
        (text_key("SALE TOO"), vec![7]),
        (text_key("hello base64"), vec![2]),
        (body(""), vec![1, 2, 3, 4, 5, 6, 7]),
        // programs mixing keys
        (any_of(vec![body("zebra"), body("softbreak")]), vec![1, 5]),
        (
            Key::AllOf(pb::SearchKeys {
                keys: vec![
                    pb::SearchKey {
                        key: Some(header("subject", "sale")),
                    },
                    pb::SearchKey {
                        key: Some(not(body("50%"))),
                    },
                ],
            }),
            vec![7],
        ),
        (not(body("o")), vec![3]),
    ];
    check_all(&s, mb, &cases, "index").await;
    rows_match_blobs(&pool).await;
    forget_index(&pool).await;
    check_all(&s, mb, &cases, "blob scan").await;
    let (calls, n) = backfill(&s, 3).await;
    assert_eq!(n, 7);
    assert!(calls >= 3, "three blobs per call: {calls} calls");
    rows_match_blobs(&pool).await;
    check_all(&s, mb, &cases, "backfilled").await;
    // Idempotent: nothing left to do, nothing rewritten.
    assert_eq!(backfill(&s, 3).await, (1, 0));
}

/// A complete row answers without the blob: with the blob's bytes replaced
/// the index still finds the original text (and the scan would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_rows_answer_without_reading_blobs() {
    let (s, user, pool) = setup().await;
    s.append(user, "INBOX", B64).await;
    let mb = mailbox(&s, user, "INBOX").await;
    sqlx::query("UPDATE blobs SET data = 'Subject: x\r\n\r\nnothing'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(search(&s, mb, body("base64 world")).await, vec![1]);
    forget_index(&pool).await;
    assert_eq!(
        search(&s, mb, body("base64 world")).await,
        Vec::<u32>::new()
    );
}

/// Rows missing entirely (a blob written by an older store after the
/// migration) are made placeholders by the backfill and filled; texts over
/// the bound are answered from the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_covers_rowless_blobs_and_long_texts_fall_back() {
    let (s, user, pool) = setup().await;
    s.append(user, "INBOX", QP).await;
    let mut long = b"Subject: long\r\n\r\n".to_vec();
    for i in 0..40_000 {
        long.extend_from_slice(format!("line {i} of filler text\r\n").as_bytes());
    }
    long.extend_from_slice(b"needle at the very end\r\n");
    assert!(long.len() > text::MAX_BODY);
    s.append(user, "INBOX", &long).await;
    let mb = mailbox(&s, user, "INBOX").await;
    let complete: Vec<bool> =
        sqlx::query_scalar("SELECT complete FROM blob_text ORDER BY complete")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(complete, vec![false, true]);
    assert_eq!(search(&s, mb, body("NEEDLE at the very")).await, vec![2]);
    assert_eq!(search(&s, mb, body("line 39999 of")).await, vec![2]);
    assert_eq!(search(&s, mb, body("café")).await, vec![1]);
    sqlx::query("DELETE FROM blob_text")
        .execute(&pool)
        .await
        .unwrap();
    let (_, n) = backfill(&s, 0).await;
    assert_eq!(n, 2);
    rows_match_blobs(&pool).await;
    assert_eq!(search(&s, mb, body("needle at the very")).await, vec![2]);
    assert_eq!(search(&s, mb, body("café")).await, vec![1]);
    // Administrative: the service token may not run it.
    let denied = s
        .service_client()
        .mailboxes
        .backfill_search_text(pb::BackfillSearchTextRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

/// Local delivery (prefix + queued message, built inside PostgreSQL) and
/// COPY (the same blob) are searchable from the index at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_and_copied_messages_are_indexed() {
    let (s, user, pool) = setup().await;
    let c = s.client();
    let job = enqueue(&c, "k1", "x@example.net", &["alice@example.org"], NESTED)
        .await
        .unwrap()
        .job_id;
    // The queued message's text waits with its job, outside the trigram
    // indexes (migration 0017): nothing searches the queue.
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    lease_inbound(&c, "w", 1).await.unwrap();
    let d = c
        .mailboxes
        .clone()
        .deliver_from_queue(deliver_request(
            job,
            0,
            "w",
            user,
            b"Return-Path: <x@example.net>\r\nDelivered-To: Alice@Example.org\r\n",
        ))
        .await
        .unwrap()
        .into_inner();
    let mb = mailbox(&s, user, "INBOX").await;
    // The derived row is what parsing the whole delivered blob gives.
    let raw = collect_body(
        c.mailboxes
            .clone()
            .fetch_body(pb::FetchBodyRequest {
                mailbox_id: mb,
                uid: d.uid,
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert!(raw.starts_with(b"Return-Path:"));
    rows_match_blobs(&pool).await;
    let incomplete: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_text WHERE NOT complete")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(incomplete, 0);
    let cases = vec![
        (header("delivered-to", "alice@example"), vec![1]),
        (header("subject", "outer shell"), vec![1]),
        (body("deeply nested secret"), vec![1]),
        (text_key("return-path: <x@"), vec![1]),
    ];
    check_all(&s, mb, &cases, "delivered").await;
    // COPY: the destination's message shares the blob and its text.
    let archive = mailbox(&s, user, "Archive").await;
    append(&c, user, "Archive", META, &[]).await.unwrap();
    c.mailboxes
        .clone()
        .copy_messages(pb::CopyMessagesRequest {
            mailbox_id: mb,
            uids: Some(pb::UidSet {
                ranges: vec![pb::UidRange { first: 1, last: 1 }],
            }),
            user_id: user,
            destination: "Archive".into(),
            r#move: false,
        })
        .await
        .unwrap();
    assert_eq!(search(&s, archive, body("nested secret")).await, vec![2]);
    assert_eq!(search(&s, archive, body("50%")).await, vec![1]);
    assert_eq!(search(&s, mb, body("50%")).await, Vec::<u32>::new());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_text")
        .fetch_one(&pool)
        .await
        .unwrap();
    // delivered message and META: a copy adds no row, the queue none.
    assert_eq!(rows, 2);
}

/// A delivery without a prefix files the queued blob itself: its text row
/// is made from the job's at delivery (the queue keeps none in blob_text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_without_a_prefix_is_indexed() {
    let (s, user, pool) = setup().await;
    let c = s.client();
    let job = enqueue(&c, "k2", "x@example.net", &["alice@example.org"], NESTED)
        .await
        .unwrap()
        .job_id;
    lease_inbound(&c, "w", 1).await.unwrap();
    c.mailboxes
        .clone()
        .deliver_from_queue(pb::DeliverFromQueueRequest {
            finish_job: true,
            ..deliver_request(job, 0, "w", user, &[])
        })
        .await
        .unwrap();
    rows_match_blobs(&pool).await;
    let complete: Vec<bool> = sqlx::query_scalar("SELECT complete FROM blob_text")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(complete, vec![true]);
    let mb = mailbox(&s, user, "INBOX").await;
    let cases = vec![
        (header("subject", "outer shell"), vec![1]),
        (body("deeply nested secret"), vec![1]),
    ];
    check_all(&s, mb, &cases, "delivered without a prefix").await;
}

/// A job enqueued by a store older than migration 0017 has its text in
/// blob_text under the queued blob's hash, none with the job: delivery
/// derives the delivered copy's text from there (a rolling upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_before_0017_are_indexed_from_their_blob_text() {
    let (s, user, pool) = setup().await;
    let c = s.client();
    let job = enqueue(&c, "k3", "x@example.net", &["alice@example.org"], NESTED)
        .await
        .unwrap()
        .job_id;
    // What the older store left: the text under the blob's hash.
    sqlx::query(
        "INSERT INTO blob_text (hash, headers, body, complete) \
         SELECT blob_hash, text_headers, text_body, text_complete FROM queue_jobs WHERE id = $1",
    )
    .bind(job as i64)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE queue_jobs SET text_headers = NULL, text_body = NULL, text_complete = false",
    )
    .execute(&pool)
    .await
    .unwrap();
    lease_inbound(&c, "w", 1).await.unwrap();
    c.mailboxes
        .clone()
        .deliver_from_queue(pb::DeliverFromQueueRequest {
            finish_job: true,
            ..deliver_request(
                job,
                0,
                "w",
                user,
                b"Return-Path: <x@example.net>\r\nDelivered-To: alice@example.org\r\n",
            )
        })
        .await
        .unwrap();
    rows_match_blobs(&pool).await;
    let incomplete: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_text WHERE NOT complete")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(incomplete, 0, "derived from the old row, not a placeholder");
    let mb = mailbox(&s, user, "INBOX").await;
    let cases = vec![
        (header("delivered-to", "alice@example"), vec![1]),
        (body("deeply nested secret"), vec![1]),
    ];
    check_all(&s, mb, &cases, "queued before 0017").await;
}

/// Hostile needles: huge, wildcard-only, regex-looking; all answered, none
/// fails the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_needles_are_answered() {
    let (s, user, _pool) = setup().await;
    s.append(user, "INBOX", META).await;
    let mb = mailbox(&s, user, "INBOX").await;
    let huge = "a".repeat(2 * 1024 * 1024);
    assert_eq!(search(&s, mb, body(&huge)).await, Vec::<u32>::new());
    assert_eq!(
        search(&s, mb, header("subject", &huge)).await,
        Vec::<u32>::new()
    );
    let many = "%_".repeat(10_000);
    assert_eq!(search(&s, mb, body(&many)).await, Vec::<u32>::new());
    assert_eq!(search(&s, mb, body("(a|b)*.*\\")).await, Vec::<u32>::new());
    assert_eq!(search(&s, mb, header("sub%", "")).await, Vec::<u32>::new());
    assert_eq!(search(&s, mb, body("\0")).await, Vec::<u32>::new());
}
