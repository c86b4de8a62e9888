//! The process-wide cache of CRLF sizes (RFC 1939 §11: sizes are of the
//! message as sent, with CRLF line ends), keyed by the message's blob id.

use std::collections::HashMap;
use std::sync::Mutex;

/// Upper bound of the process-wide size cache (entries).
const SIZE_CACHE_MAX: usize = 200_000;

/// A blob id (hex SHA-256 of the raw message) in 32 bytes; `None` when the
/// store gave none or something unexpected (then nothing is cached).
pub(crate) type BlobKey = Option<[u8; 32]>;

pub(crate) fn blob_key(hex_id: &str) -> BlobKey {
    if hex_id.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in hex_id.as_bytes().chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// Process-wide CRLF-size cache keyed by blob id (content hash, so an
/// entry can never be stale). Bounded.
#[derive(Debug, Default)]
pub struct SizeCache {
    map: Mutex<HashMap<[u8; 32], u64>>,
}

impl SizeCache {
    pub(crate) fn get(&self, blob: BlobKey) -> Option<u64> {
        self.map.lock().ok()?.get(&blob?).copied()
    }

    pub(crate) fn put(&self, blob: BlobKey, size: u64) {
        let Some(blob) = blob else { return };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= SIZE_CACHE_MAX {
                // Crude but bounded: start over rather than track recency.
                map.clear();
            }
            map.insert(blob, size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys() {
        let hex = "00ff".repeat(16);
        let key = blob_key(&hex).expect("valid");
        assert_eq!(key[0], 0);
        assert_eq!(key[1], 0xff);
        assert_eq!(blob_key(""), None);
        assert_eq!(blob_key(&"zz".repeat(32)), None);
        assert_eq!(blob_key("abc"), None);
        let cache = SizeCache::default();
        cache.put(Some(key), 42);
        cache.put(None, 7);
        assert_eq!(cache.get(Some(key)), Some(42));
        assert_eq!(cache.get(None), None);
    }
}
