//! What the daily report senders share (TLS-RPT, RFC 8460; DMARC
//! aggregate reports, RFC 7489 §7.2): enqueueing one report message as our
//! own mail, and running once a day on exactly one replica.

use std::future::Future;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use mailstore_api::{StoreClient, pb};

/// Queues `raw` from `from` to `to` on the outbound queue, marked for our
/// DKIM signature (our own report). `key` makes it idempotent: the same
/// report is queued once, even if two replicas race.
pub(crate) async fn enqueue(
    store: &StoreClient,
    from: &str,
    to: &str,
    key: String,
    raw: Vec<u8>,
) -> Result<u64, tonic::Status> {
    let header = pb::EnqueueHeader {
        kind: pb::QueueKind::Outbound as i32,
        idempotency_key: key,
        mail_from: from.to_string(),
        recipients: vec![pb::Recipient {
            address: to.to_string(),
            ..Default::default()
        }],
        size: raw.len() as u64,
        sign: true,
        ..Default::default()
    };
    let msgs = vec![
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Header(header)),
        },
        pb::EnqueueRequest {
            part: Some(pb::enqueue_request::Part::Data(raw)),
        },
    ];
    Ok(store
        .queue
        .clone()
        .enqueue(futures::stream::iter(msgs))
        .await?
        .into_inner()
        .job_id)
}

/// Runs `send(yesterday)` at start and then `minute` minutes after each UTC
/// midnight, on the one replica that claims the day (Guard counter
/// `scope`, one unit per day): a process that was down at that time still
/// sends yesterday's reports, and no day is sent twice.
pub(crate) async fn every_day<F, Fut>(
    store: &StoreClient,
    scope: &str,
    minute: u32,
    shutdown: &service_kit::Shutdown,
    mut send: F,
) where
    F: FnMut(NaiveDate) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut first = true;
    loop {
        if !first {
            let now = Utc::now();
            let next = (now.date_naive() + chrono::Days::new(1))
                .and_hms_opt(0, minute, 0)
                .map_or(now, |t| t.and_utc());
            let wait = (next - now).to_std().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
        first = false;
        let day = Utc::now().date_naive() - chrono::Days::new(1);
        let claim = store
            .guard
            .clone()
            .hit(pb::HitRequest {
                scope: scope.into(),
                key: day.to_string(),
                cost: 1,
                limit: 1,
                window_secs: 2 * 86_400,
            })
            .await;
        match claim {
            Ok(r) if r.get_ref().allowed => send(day).await,
            Ok(_) => {} // another replica sends them
            Err(e) => {
                tracing::warn!(%day, %scope, error = %e.message(), "cannot claim the day's reports")
            }
        }
    }
}
