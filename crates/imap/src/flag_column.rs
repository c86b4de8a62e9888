//! The flags of every message of the selected mailbox, as the session last
//! reported them, stored once per distinct set: each message holds a
//! 4-byte index into a table of the sets in use. Most messages of a mailbox
//! share a handful of sets (none, `\Seen`, `\Seen \Answered`…), so a
//! mailbox of N messages costs about 4·N bytes instead of 24·N plus the
//! strings (a session idle on a 600-message INBOX held 14 KiB of empty
//! vectors; docs/benchmarks.md, "Idle connections"). The sets themselves
//! are shared by every session of the process ([`crate::intern`]): a
//! session holds pointers, not strings.

use std::collections::HashMap;
use std::ops::Index;
use std::sync::Arc;

use crate::intern;

#[derive(Debug, Clone)]
pub struct FlagColumn {
    /// Per message (sequence number − 1): index into `sets`.
    ids: Vec<u32>,
    /// The distinct sets; index 0 is the empty set.
    sets: Vec<Arc<Vec<String>>>,
    index: HashMap<Arc<Vec<String>>, u32>,
}

impl FlagColumn {
    #[must_use]
    pub fn new() -> Self {
        let empty = intern::flag_set(Vec::new());
        Self {
            ids: Vec::new(),
            sets: vec![empty.clone()],
            index: HashMap::from([(empty, 0)]),
        }
    }

    fn intern(&mut self, flags: Vec<String>) -> u32 {
        if let Some(&id) = self.index.get(&flags) {
            return id;
        }
        // A session that sees a new set per message (unique keywords) must
        // not keep every set it ever saw: drop the unused ones first.
        if self.sets.len() > 2 * self.ids.len() + 64 {
            self.compact();
        }
        self.add(intern::flag_set(flags))
    }

    /// Adds a shared set this table does not hold yet.
    fn add(&mut self, shared: Arc<Vec<String>>) -> u32 {
        let id = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
        self.sets.push(shared.clone());
        self.index.insert(shared, id);
        id
    }

    /// Rebuilds the table with only the sets some message uses.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.sets);
        let ids = std::mem::take(&mut self.ids);
        *self = Self::new();
        let mut remap: HashMap<u32, u32> = HashMap::new();
        for id in ids {
            let new = match remap.get(&id) {
                Some(&n) => n,
                // Distinct ids are distinct sets: each is added once, by
                // pointer (the empty set, id 0, is there already).
                None => {
                    let n = match old.get(id as usize) {
                        Some(set) if id != 0 => self.add(set.clone()),
                        _ => 0,
                    };
                    remap.insert(id, n);
                    n
                }
            };
            self.ids.push(new);
        }
    }

    pub fn push(&mut self, flags: Vec<String>) {
        let id = self.intern(flags);
        self.ids.push(id);
    }

    /// Sets message `i`'s flags (0-based); out of range is ignored.
    pub fn set(&mut self, i: usize, flags: Vec<String>) {
        if i < self.ids.len() {
            let id = self.intern(flags);
            self.ids[i] = id;
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each message's flags, in sequence order.
    pub fn iter(&self) -> impl Iterator<Item = &Vec<String>> {
        self.ids.iter().map(|&id| self.set_at(id))
    }

    /// The distinct sets in the table (each once; the empty set and sets
    /// no message uses any more included).
    pub fn distinct_sets(&self) -> impl Iterator<Item = &Vec<String>> {
        self.sets.iter().map(|s| &**s)
    }

    /// Keeps the messages for which `keep(i)` is true (0-based, in order).
    pub fn retain_indices(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut i = 0;
        self.ids.retain(|_| {
            let k = keep(i);
            i += 1;
            k
        });
    }

    fn set_at(&self, id: u32) -> &Vec<String> {
        self.sets.get(id as usize).map_or(&EMPTY, |s| &**s)
    }
}

static EMPTY: Vec<String> = Vec::new();

impl Index<usize> for FlagColumn {
    type Output = Vec<String>;

    /// Message `i`'s flags (0-based); out of range reads as no flags.
    fn index(&self, i: usize) -> &Vec<String> {
        self.ids.get(i).map_or(&EMPTY, |&id| self.set_at(id))
    }
}

impl Default for FlagColumn {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<Vec<String>> for FlagColumn {
    fn from_iter<I: IntoIterator<Item = Vec<String>>>(it: I) -> Self {
        let mut c = Self::new();
        for f in it {
            c.push(f);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn sets_are_shared_and_messages_keep_their_own() {
        let mut c: FlagColumn = (0..1000)
            .map(|i| {
                if i % 2 == 0 {
                    f(&["\\Seen"])
                } else {
                    Vec::new()
                }
            })
            .collect();
        assert_eq!(c.len(), 1000);
        assert_eq!(c.distinct_sets().count(), 2);
        assert_eq!(c[0], f(&["\\Seen"]));
        assert!(c[1].is_empty());
        c.set(1, f(&["\\Seen", "\\Flagged"]));
        assert_eq!(c[1], f(&["\\Seen", "\\Flagged"]));
        assert_eq!(c[3], Vec::<String>::new());
        assert!(c[5000].is_empty(), "out of range reads as no flags");
        c.set(5000, f(&["x"]));
        assert_eq!(c.len(), 1000);
        c.retain_indices(|i| i >= 1);
        assert_eq!(c.len(), 999);
        assert_eq!(c[0], f(&["\\Seen", "\\Flagged"]));
        assert_eq!(c.iter().filter(|s| s.is_empty()).count(), 499);
    }

    #[test]
    fn unique_sets_do_not_pile_up() {
        let mut c: FlagColumn = (0..10).map(|_| Vec::new()).collect();
        for n in 0..10_000 {
            c.set(n % 10, f(&[&format!("k{n}")]));
        }
        assert!(c.distinct_sets().count() <= 2 * 10 + 64 + 1);
        for i in 0..10 {
            assert_eq!(c[i], f(&[&format!("k{}", 9_990 + i)]));
        }
    }
}
