//! Keys of state the scaler persists (planner histories, Kafka's persistent-lag offsets): an
//! explicit, versioned list of what identifies a queue, hashed with a stable hash.
//!
//! A persisted key must mean the same thing to another replica, after an upgrade, and under
//! another Rust release: never a `Debug` text (a new field would orphan every history) and
//! never `DefaultHasher` (its algorithm is not stable across releases). Credentials are never
//! part of a key. Changing what a key holds means bumping [`KEY_VERSION`], which starts every
//! queue's history afresh once.

/// The layout version of every persisted key.
pub const KEY_VERSION: u32 = 1;

/// 64-bit FNV-1a over the parts, each followed by a 0xff separator (a byte that UTF-8 text
/// never holds, so `("ab", "c")` and `("a", "bc")` differ).
pub fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for part in parts {
        for b in part {
            eat(*b);
        }
        eat(0xff);
    }
    h
}

/// What identifies one queue (or queue set) for persisted state: ordered (field, value) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueIdentity {
    pub fields: Vec<(&'static str, Vec<u8>)>,
}

impl QueueIdentity {
    pub fn new(source: &'static str) -> Self {
        Self {
            fields: vec![("source", source.as_bytes().to_vec())],
        }
    }

    pub fn with(mut self, field: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.fields.push((field, value.as_ref().to_vec()));
        self
    }

    /// The stable hash of the version and every field (names included).
    pub fn hash(&self) -> u64 {
        let version = KEY_VERSION.to_string();
        let parts = std::iter::once(version.as_bytes()).chain(
            self.fields
                .iter()
                .flat_map(|(k, v)| [k.as_bytes(), v.as_slice()]),
        );
        stable_hash(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // Changing these values orphans every stored history: bump KEY_VERSION instead.
        assert_eq!(stable_hash([b"".as_slice()]), 0xaf64_724c_8602_eb6e);
        assert_eq!(
            QueueIdentity::new("redis-list")
                .with("endpoint", "redis:6379/0")
                .with("key", "jobs")
                .hash(),
            0x7a0092a860a2e3db
        );
    }

    #[test]
    fn field_boundaries_and_names_matter() {
        let a = QueueIdentity::new("x").with("a", "bc").hash();
        let b = QueueIdentity::new("x").with("ab", "c").hash();
        let c = QueueIdentity::new("x").with("a", "b").with("c", "").hash();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
