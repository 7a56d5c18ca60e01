//! Small state the scaler keeps between calls, in memory or — when `HEADROOM_HISTORY_URL` names
//! a Redis — in Redis, so that every scaler replica (KEDA spreads calls for one trigger across
//! them) and a restarted scaler see the same state.
//!
//! Values are opaque bytes under string keys, each with a time to live, so that state of
//! triggers nobody asks about any more goes away by itself; the memory store is also bounded in
//! entries. Kafka's `excludePersistentLag` keeps its previous offsets here; per-queue history
//! for the forecaster can use the same store under its own key prefix.
//!
//! A store that cannot be read is an error for the caller, never an empty state: an empty state
//! would silently change an answer (for `excludePersistentLag`, count a stuck partition again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::sources::redis_conn::PooledConnection;

/// Prefix of every key this module writes to Redis.
pub const KEY_PREFIX: &str = "headroom:";

/// Entries kept by the memory store at most; the oldest expiries go first.
pub const MEMORY_MAX_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("history store {endpoint} cannot be used: {source}")]
    Redis {
        endpoint: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("history store {endpoint} did not answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    #[error("--history-url: {0}")]
    Config(String),
}

/// Where shared state lives.
#[derive(Debug)]
pub enum SharedState {
    Memory(MemoryStore),
    Redis(Box<RedisStore>),
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState::Memory(MemoryStore::default())
    }
}

impl SharedState {
    /// A Redis store for `url` (`redis://` or `rediss://`), or the memory store for `None`.
    /// Connecting is lazy: a Redis that is down at start is an error on first use, not at start.
    pub fn open(url: Option<&str>, timeout: Duration) -> Result<Self, StateError> {
        match url {
            None => Ok(Self::default()),
            Some(url) => RedisStore::open(url, timeout).map(|r| SharedState::Redis(Box::new(r))),
        }
    }

    /// Where the state lives, for messages (no credentials).
    pub fn label(&self) -> String {
        match self {
            SharedState::Memory(_) => "memory".into(),
            SharedState::Redis(r) => r.endpoint.clone(),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            SharedState::Memory(m) => Ok(m.get(key)),
            SharedState::Redis(r) => r.get(key).await,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StateError> {
        match self {
            SharedState::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            SharedState::Redis(r) => r.set(key, value, ttl).await,
        }
    }
}

/// The in-process store: bounded, with expiry.
#[derive(Debug)]
pub struct MemoryStore {
    max_entries: usize,
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(MEMORY_MAX_ENTRIES)
    }
}

impl MemoryStore {
    pub fn with_capacity(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((v, expires)) if *expires > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.max_entries && !entries.contains_key(key) {
            entries.retain(|_, (_, expires)| *expires > now);
            while entries.len() >= self.max_entries {
                // Full of live entries: drop the one closest to expiry.
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(key.to_string(), (value, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// State in Redis, shared by every replica.
pub struct RedisStore {
    endpoint: String,
    timeout: Duration,
    client: redis::Client,
    /// Made on first use, and again after a command on it timed out (see
    /// [`PooledConnection`]: the client library would keep a silent connection).
    conn: std::sync::Mutex<Option<PooledConnection>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn open(url: &str, timeout: Duration) -> Result<Self, StateError> {
        crate::install_crypto_provider();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(StateError::Config(
                "not a redis:// or rediss:// URL".to_string(),
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Config(format!("cannot be parsed ({:?})", e.kind())))?;
        let info = client.get_connection_info();
        let endpoint = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
            other => format!("{other}"),
        };
        Ok(Self {
            endpoint,
            timeout,
            client,
            conn: std::sync::Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<PooledConnection, StateError> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = conn.as_ref()
            && !c.is_suspect()
        {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|source| StateError::Redis {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let c = PooledConnection::new(manager);
        *conn = Some(c.clone());
        Ok(c)
    }

    fn bounded<T>(
        &self,
        r: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StateError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(StateError::Redis {
                endpoint: self.endpoint.clone(),
                source,
            }),
            Err(_) => Err(StateError::Timeout {
                endpoint: self.endpoint.clone(),
                after: self.timeout,
            }),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut conn = self.connection().await?;
        let key = format!("{KEY_PREFIX}{key}");
        let r = tokio::time::timeout(self.timeout, conn.get::<_, Option<Vec<u8>>>(key)).await;
        self.bounded(r)
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StateError> {
        let mut conn = self.connection().await?;
        let key = format!("{KEY_PREFIX}{key}");
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let r = tokio::time::timeout(
            self.timeout,
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn),
        )
        .await;
        self.bounded(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_entries_expire_and_stay_bounded() {
        let m = MemoryStore::with_capacity(3);
        m.set("a", b"1".to_vec(), Duration::from_secs(60));
        m.set("gone", b"x".to_vec(), Duration::ZERO);
        assert_eq!(m.get("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(m.get("gone"), None, "expired");
        for k in ["b", "c", "d", "e"] {
            m.set(k, b"v".to_vec(), Duration::from_secs(60));
        }
        assert!(m.len() <= 3, "{}", m.len());
        assert_eq!(m.get("e").as_deref(), Some(&b"v"[..]), "the newest stays");
    }

    #[test]
    fn history_urls_are_checked_without_showing_passwords() {
        let err = SharedState::open(Some("http://h"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with("--history-url"), "{err}");
        let s =
            SharedState::open(Some("redis://:pw-secret@h:1/0"), Duration::from_secs(1)).unwrap();
        assert_eq!(s.label(), "redis://h:1");
        assert!(!format!("{s:?}").contains("pw-secret"));
    }
}
