//! Password hashing on a bounded pool, and the authentication cache.
//!
//! argon2id with the crate defaults (m = 19 MiB, t = 2, p = 1, the OWASP
//! minimum; ~19 ms per hash on one core). Each hash needs its 19 MiB of
//! working memory, so running one per arriving login (as `spawn_blocking`
//! did) grew the store to 6–10 GB under a login flood and glibc kept most of
//! it afterwards (per-thread arenas, and a dynamic mmap threshold raised by
//! the first freed 19 MiB block). Now:
//!
//! - a fixed pool of `--hash-threads` dedicated threads (default 2) computes
//!   every hash; each thread owns one working buffer, reused for every hash
//!   (so the pool holds `threads × 19 MiB`, allocated once, and nothing is
//!   freed and re-allocated per login);
//! - the queue in front of it is bounded (`--hash-queue`, default 64): when
//!   it is full the caller gets [`Busy`] at once and Authenticate answers
//!   `AUTH_STATUS_UNAVAILABLE` (a temporary failure, not a pile-up).
//!
//! The **authentication cache** (like Dovecot's `auth_cache`) remembers a
//! successful check for `--auth-cache-ttl-secs` (default 60, 0 = off). Its
//! key is HMAC-SHA-256, under a random per-process secret, of the user's
//! address, the password *and the stored hash*: so nothing in memory reveals
//! a password, and a password changed or a user deleted on another replica
//! misses the cache at once (the stored hash is read on every login, and a
//! disabled or deleted user is refused before the cache is asked). SetPassword
//! and DeleteUser on this replica also drop the user's entries.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};

/// The hashing queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

enum Job {
    Hash(String, oneshot::Sender<Result<String>>),
    Verify(String, String, oneshot::Sender<bool>),
}

/// The bounded pool of hashing threads.
pub struct HashPool {
    tx: SyncSender<Job>,
}

impl HashPool {
    /// Starts `threads` hashing threads behind a queue of `queue` jobs.
    /// The threads end when the pool is dropped.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(threads: u16, queue: u32) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(usize::try_from(queue).unwrap_or(usize::MAX));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Self { tx })
    }

    fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!("store_hash_queue_full_total").increment(1);
                Err(Busy)
            }
        }
    }

    /// Whether `password` matches the PHC string `phc`.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, Busy> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Verify(password, phc, tx))?;
        Ok(rx.await.unwrap_or(false))
    }

    /// A new argon2id PHC string for `password`.
    ///
    /// # Errors
    /// Unavailable when the queue is full; Internal on an argon2 error.
    pub async fn hash(&self, password: String) -> Result<String> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Hash(password, tx))
            .map_err(|Busy| StoreError::Unavailable("password hashing queue full".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("hashing thread ended".into()))?
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    // The one working buffer of this thread, grown to the largest parameter
    // set seen (the store only writes the defaults) and reused.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        match job {
            Job::Verify(password, phc, reply) => {
                let _ = reply.send(verify_with(&mut memory, password.as_bytes(), &phc));
            }
            Job::Hash(password, reply) => {
                let _ = reply.send(hash_with(&mut memory, password.as_bytes()));
            }
        }
    }
}

/// A new argon2id PHC string with the crate's default parameters (what
/// `PasswordHasher::hash_password` makes), computed in the thread's buffer:
/// the crate's own call allocates its 19 MiB per hash, and glibc kept
/// those blocks in the thread's arena afterwards.
fn hash_with(memory: &mut Vec<Block>, password: &[u8]) -> Result<String> {
    use argon2::password_hash::phc::{Output, ParamsString, Salt};
    fn err(e: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(format!("argon2: {e}"))
    }
    let params = Params::default();
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let salt = argon2::password_hash::try_generate_salt().map_err(err)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, &mut memory[..blocks])
        .map_err(err)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(err)?,
        salt: Some(Salt::new(&salt).map_err(err)?),
        hash: Some(Output::new(&out).map_err(err)?),
    };
    Ok(phc.to_string())
}

/// Verifies a PHC string with the thread's buffer (what
/// `PasswordVerifier::verify_password` does, minus its per-call allocation).
fn verify_with(memory: &mut Vec<Block>, password: &[u8], phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    let ok = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .is_ok();
    ok && out.len() == expected.len()
        && out
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Most entries the cache holds; beyond, new successes are not remembered
/// until expired ones are swept.
const CACHE_CAP: usize = 100_000;

/// Recently verified (address, password, stored hash) triples.
pub struct AuthCache {
    ttl: Duration,
    secret: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], (i64, Instant)>>,
}

impl AuthCache {
    #[must_use]
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            secret: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// HMAC-SHA-256 (RFC 2104) of the length-prefixed parts.
    fn key(&self, address: &str, password: &str, stored_hash: &str) -> [u8; 32] {
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(&self.secret);
        let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
        inner.update(k.map(|b| b ^ 0x36));
        outer.update(k.map(|b| b ^ 0x5c));
        for part in [address, password, stored_hash] {
            inner.update((part.len() as u64).to_be_bytes());
            inner.update(part.as_bytes());
        }
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// Whether this exact check succeeded for `user_id` within the TTL.
    pub fn hit(&self, user_id: i64, address: &str, password: &str, stored_hash: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let key = self.key(address, password, stored_hash);
        let Ok(map) = self.entries.lock() else {
            return false;
        };
        map.get(&key)
            .is_some_and(|(id, at)| *id == user_id && at.elapsed() < self.ttl)
    }

    /// Remembers a successful check.
    pub fn insert(&self, user_id: i64, address: &str, password: &str, stored_hash: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let key = self.key(address, password, stored_hash);
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= CACHE_CAP {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= CACHE_CAP {
                return;
            }
        }
        map.insert(key, (user_id, Instant::now()));
    }

    /// Forgets every entry of a user (password changed, user deleted).
    pub fn forget_user(&self, user_id: i64) {
        if let Ok(mut map) = self.entries.lock() {
            map.retain(|_, (id, _)| *id != user_id);
        }
    }

    /// Drops expired entries (called by the janitor).
    pub fn sweep(&self) {
        let ttl = self.ttl;
        if let Ok(mut map) = self.entries.lock() {
            map.retain(|_, (_, at)| at.elapsed() < ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_hashes_and_verifies_with_a_reused_buffer() {
        let pool = HashPool::start(1, 4).expect("pool");
        let h = pool.hash("correct horse".into()).await.expect("hash");
        // The crate's defaults, as `PasswordHasher::hash_password` writes them.
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            pool.verify("correct horse".into(), h.clone()).await,
            Ok(true)
        );
        assert_eq!(pool.verify("wrong".into(), h.clone()).await, Ok(false));
        assert_eq!(pool.verify("x".into(), "not a phc".into()).await, Ok(false));
        // Same answer as the crate's own verifier.
        use argon2::PasswordVerifier as _;
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", h.as_str())
                .is_ok()
        );
    }

    #[test]
    fn cache_keys_depend_on_every_part_and_expire() {
        let c = AuthCache::new(Duration::from_secs(60));
        c.insert(1, "a@x", "pw", "$h1");
        assert!(c.hit(1, "a@x", "pw", "$h1"));
        assert!(!c.hit(1, "a@x", "pw2", "$h1"));
        assert!(!c.hit(1, "a@x", "pw", "$h2"), "password changed elsewhere");
        assert!(!c.hit(2, "a@x", "pw", "$h1"), "user re-created");
        // Length prefixes: moving bytes between parts is another key.
        assert!(!c.hit(1, "a@xp", "w", "$h1"));
        c.forget_user(1);
        assert!(!c.hit(1, "a@x", "pw", "$h1"));
        let off = AuthCache::new(Duration::ZERO);
        off.insert(1, "a@x", "pw", "$h1");
        assert!(!off.hit(1, "a@x", "pw", "$h1"));
    }
}
