//! Periodic housekeeping of one store process.

use std::sync::Arc;
use std::time::Duration;

use crate::blobs::collect_garbage;
use crate::db::Store;
use crate::guard;

/// Every 15 s: per queue, the jobs waiting, how many of them were tried
/// already (deferred), and the age of the oldest — the gauges the alert
/// rules in `deploy/monitoring/` watch. One aggregate over the ready index.
pub async fn queue_gauges(store: Arc<Store>, shutdown: service_kit::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let rows = sqlx::query!(
            r#"SELECT k.kind AS "kind!",
                      count(j.id) AS "waiting!",
                      count(j.id) FILTER (WHERE j.attempts > 0) AS "deferred!",
                      COALESCE(extract(epoch FROM now() - min(j.created_at)), 0)::float8 AS "oldest!"
               FROM (VALUES (1::int2), (2::int2)) AS k(kind)
               LEFT JOIN queue_jobs j ON j.kind = k.kind AND j.state = 1
               GROUP BY k.kind"#
        )
        .fetch_all(&store.pool)
        .await;
        let Ok(rows) = rows else { continue };
        for r in rows {
            let kind = if r.kind == 1 { "inbound" } else { "outbound" };
            #[allow(clippy::cast_precision_loss)]
            {
                metrics::gauge!("store_queue_jobs", "queue" => kind).set(r.waiting as f64);
                metrics::gauge!("store_queue_deferred_jobs", "queue" => kind)
                    .set(r.deferred as f64);
            }
            metrics::gauge!("store_queue_oldest_seconds", "queue" => kind).set(r.oldest);
        }
    }
}

/// Periodic housekeeping: old auth failures and throttle rows, expired
/// Guard counters and marks, the auth cache, expired locks, finished jobs
/// past retention, and the blobs they leave behind.
pub async fn janitor(store: Arc<Store>, shutdown: service_kit::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let pool = &store.pool;
        // `auth_failures` is no longer written (0005); this empties it.
        let _ = sqlx::query!("DELETE FROM auth_failures WHERE at < now() - interval '1 hour'")
            .execute(pool)
            .await;
        // Throttle rows past their reset period carry nothing any more.
        let _ = sqlx::query!(
            "DELETE FROM auth_throttle WHERE GREATEST(last_failure, banned_until) < now() - make_interval(secs => $1)",
            f64::from(store.config.auth_ban_reset_secs)
        )
        .execute(pool)
        .await;
        guard::collect_expired(pool).await;
        store.auth_cache.sweep();
        let _ = sqlx::query!("DELETE FROM locks WHERE expires_at < now() - interval '1 hour'")
            .execute(pool)
            .await;
        let hashes: Vec<Vec<u8>> = sqlx::query_scalar!(
            "DELETE FROM queue_jobs WHERE state = 2 AND updated_at < now() - interval '7 days' RETURNING blob_hash"
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        collect_garbage(pool, hashes).await;
    }
}
