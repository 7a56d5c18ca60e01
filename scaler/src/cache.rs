//! One bounded, idle-evicting map for per-target state (connections, semaphores, watches).
//!
//! Every key of such a map comes from a caller's metadata (an endpoint, a credential, a
//! Secret), so without a bound a flood of made-up triggers grows it without end. The map keeps
//! at most `capacity` entries; an entry unused for `idle` is dropped by [`BoundedMap::sweep`];
//! at capacity, an insert first drops idle entries, then the least recently used one. Dropping
//! an entry drops its value (a Redis connection closes, a watch task is aborted).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

// tokio's clock: the system's monotonic clock, or a test's paused one.
use tokio::time::Instant;

use crate::metrics;

#[derive(Debug)]
pub struct BoundedMap<K, V> {
    /// The `cache` label of its metrics.
    name: &'static str,
    capacity: usize,
    idle: Duration,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(name: &'static str, capacity: usize, idle: Duration) -> Self {
        Self {
            name,
            capacity: capacity.max(1),
            idle,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, marked as used now.
    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(v, used)| {
            *used = Instant::now();
            v
        })
    }

    /// Inserts (or replaces) `key`, making room first; returns the replaced value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let now = Instant::now();
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.sweep();
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
                metrics::cache_evicted(self.name, 1);
            }
        }
        let old = self.entries.insert(key, (value, now)).map(|(v, _)| v);
        metrics::cache_entries(self.name, self.entries.len());
        old
    }

    /// The value of `key`, inserting `make()` when absent.
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(key) {
            self.insert(key.clone(), make());
        }
        let (v, used) = self
            .entries
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"));
        *used = Instant::now();
        v
    }

    /// Drops entries unused for the idle time; returns how many.
    pub fn sweep(&mut self) -> usize {
        let before = self.entries.len();
        let idle = self.idle;
        self.entries.retain(|_, (_, used)| used.elapsed() < idle);
        let evicted = before - self.entries.len();
        if evicted > 0 {
            metrics::cache_evicted(self.name, evicted);
        }
        metrics::cache_entries(self.name, self.entries.len());
        evicted
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let v = self.entries.remove(key).map(|(v, _)| v);
        metrics::cache_entries(self.name, self.entries.len());
        v
    }

    /// Drops entries for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain(|k, (v, _)| keep(k, v));
        metrics::cache_entries(self.name, self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_never_holds_more_than_its_capacity_and_drops_the_least_recently_used() {
        let mut m = BoundedMap::new("test", 3, Duration::from_secs(60));
        for i in 0..3 {
            m.insert(i, i);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(m.get(&0).is_some(), "0 is now the most recent");
        m.insert(3, 3);
        assert_eq!(m.len(), 3);
        assert!(m.get(&1).is_none(), "1 was the least recently used");
        for i in 4..1000 {
            m.insert(i, i);
        }
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn idle_entries_are_swept_and_dropping_drops_the_value() {
        let mut m = BoundedMap::new("test", 10, Duration::from_millis(20));
        let value = std::sync::Arc::new(());
        m.insert("a", value.clone());
        assert_eq!(std::sync::Arc::strong_count(&value), 2);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.sweep(), 1);
        assert_eq!(
            std::sync::Arc::strong_count(&value),
            1,
            "the value was dropped"
        );
    }
}
