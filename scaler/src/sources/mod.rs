//! Queue sources: one file per kind of queue. A source parses its own metadata keys, reads its
//! queue, and knows nothing of gRPC, KEDA or policy.
//!
//! The set of sources is closed: [`SourceConfig`] and [`Query`] are enums, so adding a source
//! makes the compiler point at every place that must learn about it.

pub mod celery;
pub mod redis_conn;
pub mod redis_list;

use std::sync::Arc;
use std::time::Duration;

use crate::metadata::Reader;

/// How much work a queue holds, as read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Messages waiting to be taken.
    pub waiting: u64,
    /// Messages taken by a worker and not yet acknowledged (Celery's prefetched tasks).
    pub in_flight: u64,
}

/// The value of the `source` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Celery,
    RedisList,
}

impl SourceKind {
    pub const ALL: [SourceKind; 2] = [SourceKind::Celery, SourceKind::RedisList];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Celery => "celery",
            SourceKind::RedisList => "redis-list",
        }
    }

    /// The metric label for this source (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Celery => "celery",
            SourceKind::RedisList => "redis_list",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Every metadata key this source reads (without `FromEnv` forms).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            SourceKind::Celery => celery::KEYS,
            SourceKind::RedisList => redis_list::KEYS,
        }
    }
}

/// A parsed source: what to read and the KEDA-compatible target and activation.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Celery(celery::CeleryMetadata),
    RedisList(redis_list::RedisListMetadata),
}

impl SourceConfig {
    pub fn parse(kind: SourceKind, r: &mut Reader<'_>) -> Option<Self> {
        match kind {
            SourceKind::Celery => celery::CeleryMetadata::parse(r).map(SourceConfig::Celery),
            SourceKind::RedisList => {
                redis_list::RedisListMetadata::parse(r).map(SourceConfig::RedisList)
            }
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Celery(_) => SourceKind::Celery,
            SourceConfig::RedisList(_) => SourceKind::RedisList,
        }
    }

    /// The metric name before normalisation.
    pub fn metric_name(&self) -> String {
        match self {
            SourceConfig::Celery(m) => m.metric_name(),
            SourceConfig::RedisList(m) => m.metric_name(),
        }
    }

    /// Per-replica target of the depth metric.
    pub fn target(&self) -> f64 {
        match self {
            SourceConfig::Celery(m) => m.tasks_per_replica as f64,
            SourceConfig::RedisList(m) => m.list_length as f64,
        }
    }

    /// The metric value for a depth reading.
    pub fn value(&self, depth: &Depth) -> f64 {
        match self {
            SourceConfig::Celery(m) => m.value(depth) as f64,
            SourceConfig::RedisList(_) => depth.waiting as f64,
        }
    }

    /// KEDA's activation rule: strictly above the activation threshold.
    pub fn is_active(&self, depth: &Depth) -> bool {
        match self {
            SourceConfig::Celery(m) => m.value(depth) as i128 > m.activation_tasks as i128,
            SourceConfig::RedisList(m) => depth.waiting as i128 > m.activation_list_length as i128,
        }
    }

    /// What to read, without the thresholds: triggers with equal queries share one read.
    pub fn query(&self) -> Query {
        match self {
            SourceConfig::Celery(m) => Query::Celery(Arc::new(m.query())),
            SourceConfig::RedisList(m) => Query::RedisList(Arc::new(m.query())),
        }
    }
}

/// The identity of one backend read: endpoint, queue set and read options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    Celery(Arc<celery::CeleryQuery>),
    RedisList(Arc<redis_list::RedisListQuery>),
}

impl Query {
    pub fn kind(&self) -> SourceKind {
        match self {
            Query::Celery(_) => SourceKind::Celery,
            Query::RedisList(_) => SourceKind::RedisList,
        }
    }

    /// Reads the queue once.
    pub async fn read(&self, backends: &Backends) -> Result<Depth, SourceError> {
        match self {
            Query::Celery(q) => q.read(&backends.redis).await,
            Query::RedisList(q) => q.read(&backends.redis).await,
        }
    }

    /// The endpoint read, for messages (never with credentials).
    pub fn endpoint_label(&self) -> String {
        match self {
            Query::Celery(q) => q.endpoint.to_string(),
            Query::RedisList(q) => q.endpoint.to_string(),
        }
    }

    /// What push activation watches for this query.
    pub fn watch(&self) -> WatchSpec {
        match self {
            Query::Celery(q) => q.watch(),
            Query::RedisList(q) => q.watch(),
        }
    }
}

/// How to learn, without polling, that work may have landed.
#[derive(Debug, Clone)]
pub enum WatchSpec {
    /// Redis keyspace notifications on these keys of this endpoint; `events` are the
    /// `notify-keyspace-events` type letters that cover them (e.g. `l` for lists).
    RedisKeys {
        endpoint: redis_conn::RedisEndpoint,
        keys: Vec<Vec<u8>>,
        events: &'static str,
    },
}

/// Clients shared by all sources, one per backend kind.
#[derive(Debug, Default)]
pub struct Backends {
    pub redis: redis_conn::RedisPool,
}

/// Why a queue could not be read. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {endpoint}: {source}")]
    Unavailable {
        endpoint: String,
        #[source]
        source: Arc<redis::RedisError>,
    },
    #[error("timed out after {after:?} reading {endpoint}")]
    Timeout { endpoint: String, after: Duration },
    #[error("{endpoint} refused the credentials: {source}")]
    Auth {
        endpoint: String,
        #[source]
        source: Arc<redis::RedisError>,
    },
    #[error("key {key} on {endpoint} holds a {found}, not {expected}")]
    WrongType {
        endpoint: String,
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("{endpoint} answered with an error: {source}")]
    Backend {
        endpoint: String,
        #[source]
        source: Arc<redis::RedisError>,
    },
    #[error("{endpoint} answered something unexpected: {detail}")]
    Protocol { endpoint: String, detail: String },
}

impl SourceError {
    /// A bounded, snake_case label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Unavailable { .. } => "unavailable",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Auth { .. } => "auth",
            SourceError::WrongType { .. } => "wrong_type",
            SourceError::Backend { .. } => "backend",
            SourceError::Protocol { .. } => "protocol",
        }
    }
}

/// Renders a Redis key for messages: printable ASCII as is, other bytes as `\xNN`.
pub fn show_key(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len() + 2);
    s.push('"');
    for &b in key {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('"');
    s
}
