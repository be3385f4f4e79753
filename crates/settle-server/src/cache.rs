//! A small in-process cache whose entries are trusted for a fixed time.
//!
//! Used where a value read from the database may be a little stale across processes but must
//! be fresh within one (the process that changes the value forgets its entry at once): verified
//! API keys, and a merchant's connector accounts and routing rules.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most entries kept; a full cache starts over (a burst of new keys costs reads, never memory).
pub const ENTRIES_MAX: usize = 10_000;

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// The value stored under `key` less than `ttl` ago.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q, ttl: Duration) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let entries = self.entries.lock().ok()?;
        let (value, at) = entries.get(key)?;
        (at.elapsed() < ttl).then(|| value.clone())
    }

    pub fn put(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(key, (value, Instant::now()));
        }
    }

    pub fn forget<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let cache = TtlCache::default();
        cache.put("a", 1);
        assert_eq!(cache.get(&"a", Duration::from_secs(60)), Some(1));
        assert_eq!(cache.get(&"a", Duration::ZERO), None);
        cache.forget(&"a");
        assert_eq!(cache.get(&"a", Duration::from_secs(60)), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = TtlCache::default();
        for i in 0..ENTRIES_MAX {
            cache.put(i, i);
        }
        cache.put(ENTRIES_MAX, 0);
        assert_eq!(cache.get(&0, Duration::from_secs(60)), None);
        assert_eq!(cache.get(&ENTRIES_MAX, Duration::from_secs(60)), Some(0));
    }
}
