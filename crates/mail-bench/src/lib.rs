//! `mail-bench`'s phases as a library: the binary (`main.rs`) prints their
//! figures as JSON for scripts/bench-compare, and the workspace's smoke
//! test (`tests/bench_smoke_e2e.rs`) runs each against Epistole.

pub mod conn;
pub mod idle;
pub mod imap;
pub mod latency;
pub mod pop3;
pub mod procs;
pub mod sample;
pub mod smtp;

use std::time::Duration;

/// The `q` quantile (0..=1) of `v` in milliseconds (0 when empty); sorts `v`.
pub fn quantile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1000.0
}
