//! Process-wide interning of flag sets and keyword names: every session
//! with a mailbox selected points into one shared copy instead of holding
//! its own strings. Ten thousand sessions on mailboxes whose messages carry
//! many keywords (imaptest's random ones) held about 10 KiB each of copies
//! (docs/benchmarks.md, "Idle connections").
//!
//! A table keeps a value for as long as some session uses it: entries only
//! the table still holds are dropped when it has doubled since the last
//! sweep, so a sweep costs O(1) amortised per insertion.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

/// Entries a table may hold before its first sweep.
const FIRST_SWEEP: usize = 1024;

struct Table<T: ?Sized> {
    set: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Hash + Eq> Table<T> {
    fn new() -> Self {
        Self {
            set: HashSet::new(),
            sweep_at: FIRST_SWEEP,
        }
    }

    fn find(&self, probe: &T) -> Option<Arc<T>> {
        self.set.get(probe).cloned()
    }

    /// Adds `a` (not in the table yet), sweeping first when due.
    fn insert(&mut self, a: Arc<T>) -> Arc<T> {
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(FIRST_SWEEP);
        }
        self.set.insert(a.clone());
        a
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

static SETS: LazyLock<Mutex<Table<Vec<String>>>> = LazyLock::new(|| Mutex::new(Table::new()));
static NAMES: LazyLock<Mutex<Table<str>>> = LazyLock::new(|| Mutex::new(Table::new()));

/// The shared copy of a flag set (`flags` itself becomes it when new).
pub fn flag_set(flags: Vec<String>) -> Arc<Vec<String>> {
    match SETS.lock() {
        Ok(mut t) => match t.find(&flags) {
            Some(a) => a,
            None => t.insert(Arc::new(flags)),
        },
        // A poisoned table (a panic while holding it): a private copy.
        Err(_) => Arc::new(flags),
    }
}

/// The shared copy of a keyword name.
pub fn name(s: &str) -> Arc<str> {
    match NAMES.lock() {
        Ok(mut t) => t.find(s).unwrap_or_else(|| t.insert(Arc::from(s))),
        Err(_) => Arc::from(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_are_swept() {
        let a = flag_set(vec!["\\Seen".into(), "$Intern-Test".into()]);
        let b = flag_set(vec!["\\Seen".into(), "$Intern-Test".into()]);
        assert!(Arc::ptr_eq(&a, &b));
        let n = name("$Intern-Name");
        assert!(Arc::ptr_eq(&n, &name("$Intern-Name")));
        // Sets nobody holds any more do not pile up.
        let mut t: Table<Vec<String>> = Table::new();
        for i in 0..100_000 {
            drop(t.insert(Arc::new(vec![format!("k{i}")])));
        }
        assert!(t.len() <= 2 * FIRST_SWEEP, "{}", t.len());
        // Held ones survive a sweep.
        let kept = t.insert(Arc::new(vec!["kept".to_string()]));
        for i in 0..10_000 {
            drop(t.insert(Arc::new(vec![format!("j{i}")])));
        }
        let again = t.find(&vec!["kept".to_string()]);
        assert!(again.is_some_and(|a| Arc::ptr_eq(&kept, &a)));
    }
}
