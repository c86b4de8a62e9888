//! The memory spool of a message being received: bytes counted against the
//! server-wide budget (`--spool-memory-mb`), released when dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity: the spool grows in steps of at least this much.
pub(crate) const GRAIN: usize = 64 * 1024;

/// Message bytes held in memory, counted against the server-wide budget.
/// What is counted is the buffer's *capacity*, reserved before any byte is
/// written, so the budget bounds the memory really held.
pub(crate) struct Spool {
    pub(crate) buf: Vec<u8>,
    budget: Arc<Semaphore>,
    permits: Vec<OwnedSemaphorePermit>,
    pub(crate) held_kib: usize,
    /// The most this message may need (its size limit): growth stops there.
    most: usize,
}

impl Spool {
    pub(crate) fn new(budget: Arc<Semaphore>, most: u64) -> Self {
        Self {
            buf: Vec::new(),
            budget,
            permits: Vec::new(),
            held_kib: 0,
            most: usize::try_from(most).unwrap_or(usize::MAX),
        }
    }

    /// Makes room for `extra` more bytes, taking permits first; false
    /// (nothing taken, nothing grown) when the budget cannot cover it.
    /// Growth doubles (amortised copying) but stops at the message limit,
    /// and falls back to the bare need when the budget is short.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let need = self.buf.len().saturating_add(extra);
        if need <= self.buf.capacity() {
            return true;
        }
        let round = |n: usize| n.div_ceil(GRAIN).saturating_mul(GRAIN);
        let doubled = self.buf.capacity().saturating_mul(2).min(self.most);
        let target = round(need.max(doubled));
        let cap = if self.charge(target) {
            target
        } else if self.charge(round(need)) {
            round(need)
        } else {
            return false;
        };
        self.buf.reserve_exact(cap - self.buf.len());
        true
    }

    /// Holds permits for `bytes` in total; false when the budget is spent.
    pub(crate) fn charge(&mut self, bytes: usize) -> bool {
        let kib = bytes.div_ceil(1024);
        if kib <= self.held_kib {
            return true;
        }
        let Ok(n) = u32::try_from(kib - self.held_kib) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                self.permits.push(p);
                self.held_kib = kib;
                true
            }
            Err(_) => false,
        }
    }

    /// Drops the content and gives its budget back.
    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
        self.permits.clear();
        self.held_kib = 0;
    }
}
