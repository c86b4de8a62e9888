//! Per-destination back-off: a remote that says "too many connections" or
//! "rate limited" (`421`, RFC 5321 §3.8 and §4.2.3; or a `4.7.x` enhanced
//! status, RFC 3463 §3.8, with such words) gets fewer parallel connections
//! and a pause, so that a burst to one provider is not taken for abuse.
//!
//! AIMD, in memory per worker: each throttling reply halves the allowed
//! connections to the destination (at least 1) and stops new attempts for
//! `base × 2^(strikes-1)` (capped at one hour); each delivery raises the
//! allowance by one again, up to `--per-destination`, and clears the strikes
//! once the allowance is back to full. Jobs met during the pause are handed
//! back to the queue for the pause's end rather than held, unless the lane
//! holds a reusable connection (to another MX host that did not object).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// Destinations remembered (idle ones are forgotten beyond this).
const MAX_DESTINATIONS: usize = 10_000;

#[derive(Debug)]
struct State {
    /// Connections allowed now.
    limit: usize,
    /// Lanes working the destination now.
    active: usize,
    strikes: u32,
    until: Option<Instant>,
}

/// The back-off state of every destination this worker talks to.
#[derive(Debug)]
pub struct Throttle {
    max: usize,
    base: Duration,
    states: Mutex<HashMap<String, State>>,
    changed: Notify,
}

/// A lane's place in its destination's allowance; released on drop.
pub struct Slot<'a> {
    throttle: &'a Throttle,
    dest: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.throttle.with(&self.dest, |s| {
            s.active = s.active.saturating_sub(1);
        });
        self.throttle.changed.notify_waiters();
    }
}

/// Is this reply a request to slow down?
#[must_use]
pub fn is_throttle(reply: &str) -> bool {
    let r = reply.trim_start();
    if r.starts_with("421") {
        return true;
    }
    let lower = r.to_ascii_lowercase();
    let enhanced_47 = r.starts_with('4')
        && r.get(4..)
            .is_some_and(|rest| rest.trim_start().starts_with("4.7."));
    enhanced_47
        && ["too many", "rate", "throttl", "slow down", "connections"]
            .iter()
            .any(|w| lower.contains(w))
}

impl Throttle {
    #[must_use]
    pub fn new(max: usize, base: Duration) -> Self {
        Self {
            max: max.max(1),
            base,
            states: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    fn with<R>(&self, dest: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut m = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > MAX_DESTINATIONS {
            let now = Instant::now();
            m.retain(|_, s| s.active > 0 || s.until.is_some_and(|u| u > now));
        }
        let s = m.entry(dest.to_string()).or_insert(State {
            limit: self.max,
            active: 0,
            strikes: 0,
            until: None,
        });
        f(s)
    }

    /// The end of the destination's pause, if it is paused now.
    #[must_use]
    pub fn paused_until(&self, dest: &str) -> Option<Instant> {
        let now = Instant::now();
        self.with(dest, |s| s.until.filter(|u| *u > now))
    }

    /// Waits for a place within the destination's allowance; `Err` with
    /// the end of the pause when the destination is paused.
    ///
    /// # Errors
    /// The instant the pause ends.
    pub async fn enter(&self, dest: &str) -> Result<Slot<'_>, Instant> {
        loop {
            let notified = self.changed.notified();
            let now = Instant::now();
            let got = self.with(dest, |s| {
                if let Some(u) = s.until.filter(|u| *u > now) {
                    return Err(u);
                }
                if s.active < s.limit {
                    s.active += 1;
                    Ok(true)
                } else {
                    Ok(false)
                }
            })?;
            if got {
                return Ok(Slot {
                    throttle: self,
                    dest: dest.to_string(),
                });
            }
            // Re-check now and then in case a pause started meanwhile.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// The remote asked us to slow down: halve the allowance and pause.
    /// Returns the pause.
    pub fn slow_down(&self, dest: &str) -> Duration {
        let base = self.base;
        let pause = self.with(dest, |s| {
            s.limit = (s.limit / 2).max(1);
            s.strikes = s.strikes.saturating_add(1);
            let pause = base
                .saturating_mul(1u32 << (s.strikes - 1).min(16))
                .min(MAX_PAUSE);
            s.until = Some(Instant::now() + pause);
            pause
        });
        tracing::warn!(destination = %dest, ?pause, "remote asks us to slow down; backing off");
        metrics::counter!("smtp_out_throttled_total").increment(1);
        self.changed.notify_waiters();
        pause
    }

    /// A delivery went through: one more connection allowed.
    pub fn delivered(&self, dest: &str) {
        let max = self.max;
        self.with(dest, |s| {
            if s.limit < max {
                s.limit += 1;
            }
            if s.limit == max {
                s.strikes = 0;
            }
        });
        self.changed.notify_waiters();
    }

    /// Connections allowed to `dest` now.
    #[must_use]
    pub fn limit(&self, dest: &str) -> usize {
        self.with(dest, |s| s.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_replies() {
        for r in [
            "421 4.7.0 Too many connections",
            "421 mx.example Service not available",
            "451 4.7.1 Rate limited, try later",
            "450 4.7.28 throttled: slow down",
        ] {
            assert!(is_throttle(r), "{r}");
        }
        for r in [
            "451 4.3.0 local error",
            "450 4.2.1 mailbox busy",
            "451 4.7.1 greylisted",
            "550 5.7.1 rate limited",
        ] {
            assert!(!is_throttle(r), "{r}");
        }
    }

    #[tokio::test]
    async fn slow_down_halves_pauses_and_recovers() {
        let ms = Duration::from_millis;
        let t = Throttle::new(4, ms(100));
        let a = t.enter("b.test").await.expect("slot");
        assert_eq!(t.slow_down("b.test"), ms(100));
        assert_eq!(t.limit("b.test"), 2);
        assert!(t.enter("b.test").await.is_err(), "paused");
        assert!(t.enter("c.test").await.is_ok(), "others are not paused");
        tokio::time::sleep(ms(120)).await;
        let b = t.enter("b.test").await.expect("after the pause");
        // Two allowed, two active: a third waits.
        let third = tokio::time::timeout(ms(200), t.enter("b.test")).await;
        assert!(third.is_err(), "over the allowance");
        drop(a);
        let c = t.enter("b.test").await.expect("a place came free");
        assert_eq!(t.slow_down("b.test"), ms(200), "doubles");
        assert_eq!(t.limit("b.test"), 1);
        drop((b, c));
        for _ in 0..3 {
            t.delivered("b.test");
        }
        assert_eq!(t.limit("b.test"), 4, "back to full");
        assert_eq!(t.slow_down("b.test"), ms(100), "strikes forgotten at full");
    }
}
