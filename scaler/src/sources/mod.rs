//! Queue sources: one file per kind of queue. A source parses its own metadata keys, reads its
//! queue, and knows nothing of gRPC, KEDA or policy.
//!
//! The set of sources is closed: [`SourceConfig`] and [`Query`] are enums, so adding a source
//! makes the compiler point at every place that must learn about it.

pub mod aws_sqs_queue;
pub mod celery;
pub mod kafka;
pub mod redis_conn;
pub mod redis_list;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metadata::{Key, Reader};
use crate::secrets::{SecretError, Secrets};

/// How much work a queue holds, as read at one instant.
///
/// `waiting` and `in_flight` mean the same for every source, so that a queue-aware policy can
/// use `waiting + in_flight` as the backlog whatever the broker: Celery's list lengths and
/// prefetched tasks, SQS's visible and not-visible messages, Kafka's consumer lag (Kafka has no
/// in-flight count). What a source knows beyond that travels in the optional fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depth {
    /// Messages waiting to be taken.
    pub waiting: u64,
    /// Messages taken by a worker and not yet acknowledged (Celery's prefetched tasks, SQS's
    /// not-visible messages).
    pub in_flight: u64,
    /// Messages accepted but not yet deliverable (SQS delay queues and timers); 0 elsewhere.
    pub delayed: u64,
    /// Messages ever produced, where the broker counts them exactly (Kafka: sum of the latest
    /// offsets): its rate of change is the arrival rate.
    pub produced_total: Option<u64>,
    /// Messages ever consumed, where the broker counts them exactly (Kafka: sum of the
    /// committed offsets, when every partition has one).
    pub consumed_total: Option<u64>,
    /// Kafka's per-partition offsets: a Kafka trigger's value depends on its own options
    /// (offset reset policy, idle consumers, persistent lag...), so it is computed per trigger
    /// from these rather than by the read.
    pub kafka: Option<Arc<kafka::KafkaOffsets>>,
}

impl Depth {
    /// A reading of a queue that only knows waiting and in-flight messages.
    pub fn simple(waiting: u64, in_flight: u64) -> Self {
        Self {
            waiting,
            in_flight,
            ..Self::default()
        }
    }
}

/// The value of the `source` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Celery,
    RedisList,
    AwsSqsQueue,
    Kafka,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Celery,
        SourceKind::RedisList,
        SourceKind::AwsSqsQueue,
        SourceKind::Kafka,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Celery => "celery",
            SourceKind::RedisList => "redis-list",
            SourceKind::AwsSqsQueue => "aws-sqs-queue",
            SourceKind::Kafka => "kafka",
        }
    }

    /// The metric label for this source (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Celery => "celery",
            SourceKind::RedisList => "redis_list",
            SourceKind::AwsSqsQueue => "aws_sqs_queue",
            SourceKind::Kafka => "kafka",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The tables of every metadata key this source reads (without `FromEnv` or `Secret`
    /// forms): its own, and the connection keys it shares with the other Redis source.
    pub fn keys(self) -> &'static [&'static [Key]] {
        match self {
            SourceKind::Celery => &[celery::KEYS, redis_conn::CONNECTION_KEYS],
            SourceKind::RedisList => &[redis_list::KEYS, redis_conn::CONNECTION_KEYS],
            SourceKind::AwsSqsQueue => &[aws_sqs_queue::KEYS],
            SourceKind::Kafka => &[kafka::KEYS],
        }
    }
}

/// A parsed source: what to read and the KEDA-compatible target and activation.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Celery(celery::CeleryMetadata),
    RedisList(redis_list::RedisListMetadata),
    AwsSqsQueue(aws_sqs_queue::SqsMetadata),
    Kafka(kafka::KafkaMetadata),
}

impl SourceConfig {
    pub fn parse(kind: SourceKind, r: &mut Reader<'_>) -> Option<Self> {
        match kind {
            SourceKind::Celery => celery::CeleryMetadata::parse(r).map(SourceConfig::Celery),
            SourceKind::RedisList => {
                redis_list::RedisListMetadata::parse(r).map(SourceConfig::RedisList)
            }
            SourceKind::AwsSqsQueue => {
                aws_sqs_queue::SqsMetadata::parse(r).map(SourceConfig::AwsSqsQueue)
            }
            SourceKind::Kafka => kafka::KafkaMetadata::parse(r).map(SourceConfig::Kafka),
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Celery(_) => SourceKind::Celery,
            SourceConfig::RedisList(_) => SourceKind::RedisList,
            SourceConfig::AwsSqsQueue(_) => SourceKind::AwsSqsQueue,
            SourceConfig::Kafka(_) => SourceKind::Kafka,
        }
    }

    /// The metric name before normalisation.
    pub fn metric_name(&self) -> String {
        match self {
            SourceConfig::Celery(m) => m.metric_name(),
            SourceConfig::RedisList(m) => m.metric_name(),
            SourceConfig::AwsSqsQueue(m) => m.metric_name(),
            SourceConfig::Kafka(m) => m.metric_name(),
        }
    }

    /// Per-replica target of the depth metric.
    pub fn target(&self) -> f64 {
        match self {
            SourceConfig::Celery(m) => m.tasks_per_replica as f64,
            SourceConfig::RedisList(m) => m.list_length as f64,
            SourceConfig::AwsSqsQueue(m) => m.queue_length as f64,
            SourceConfig::Kafka(m) => m.lag_threshold as f64,
        }
    }

    /// The metric value and activation for a depth reading, by KEDA's rules (activation is
    /// strictly above the activation threshold). `persistent` lists the Kafka partitions whose
    /// committed offset has not moved since the previous read (only for `excludePersistentLag`).
    pub fn evaluate(&self, depth: &Depth, persistent: &kafka::Persistent) -> (f64, bool) {
        match self {
            SourceConfig::Celery(m) => {
                let v = m.value(depth);
                (v as f64, v as i128 > m.activation_tasks as i128)
            }
            SourceConfig::RedisList(m) => (
                depth.waiting as f64,
                depth.waiting as i128 > m.activation_list_length as i128,
            ),
            SourceConfig::AwsSqsQueue(m) => {
                let v = m.value(depth);
                (v as f64, v as i128 > m.activation_queue_length as i128)
            }
            SourceConfig::Kafka(m) => {
                let lag = m.lag(depth, persistent);
                // KEDA turns a negative value (committed beyond latest) into 0.
                (
                    lag.value.max(0) as f64,
                    lag.with_persistent > m.activation_lag_threshold,
                )
            }
        }
    }

    /// The backends this source connects to, each with the metadata key that names it, for the
    /// operator's allow-list ([`crate::access`]). `metadata` tells which key a Redis endpoint
    /// came from.
    pub fn endpoints(
        &self,
        metadata: &std::collections::HashMap<String, String>,
    ) -> Vec<crate::access::Endpoint> {
        use crate::access::{Endpoint, server_host, url_host};
        let redis = |ep: &redis_conn::RedisEndpoint| {
            let given =
                |k: &str| metadata.contains_key(k) || metadata.contains_key(&format!("{k}FromEnv"));
            let key = ["url", "address", "host"]
                .into_iter()
                .find(|k| given(k))
                .unwrap_or("address");
            vec![Endpoint {
                key,
                host: ep.host.clone(),
                // Without credentials: RedisEndpoint's Display hides them.
                url: Some(ep.to_string()),
            }]
        };
        match self {
            SourceConfig::Celery(m) => redis(&m.endpoint),
            SourceConfig::RedisList(m) => redis(&m.endpoint),
            SourceConfig::AwsSqsQueue(m) => {
                let mut out = Vec::new();
                if m.queue_url.contains("://") {
                    out.push(Endpoint {
                        key: "queueURL",
                        host: url_host(&m.queue_url).unwrap_or_default(),
                        url: Some(m.queue_url.clone()),
                    });
                }
                match &m.endpoint {
                    Some(e) => out.push(Endpoint {
                        key: "awsEndpoint",
                        host: url_host(e).unwrap_or_default(),
                        url: Some(e.clone()),
                    }),
                    // Where the SDK sends requests without an endpoint.
                    None => out.push(Endpoint {
                        key: "awsRegion",
                        host: format!("sqs.{}.amazonaws.com", m.region),
                        url: None,
                    }),
                }
                out
            }
            SourceConfig::Kafka(m) => m
                .bootstrap_servers
                .iter()
                .map(|s| Endpoint {
                    key: "bootstrapServers",
                    host: server_host(s),
                    url: None,
                })
                .collect(),
        }
    }

    /// What to read, without the thresholds: triggers with equal queries share one read.
    pub fn query(&self) -> Query {
        match self {
            SourceConfig::Celery(m) => Query::Celery(Arc::new(m.query())),
            SourceConfig::RedisList(m) => Query::RedisList(Arc::new(m.query())),
            SourceConfig::AwsSqsQueue(m) => Query::AwsSqsQueue(Arc::new(m.query())),
            SourceConfig::Kafka(m) => Query::Kafka(Arc::new(m.query())),
        }
    }
}

/// The identity of one backend read: endpoint, identity, queue set and read options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    Celery(Arc<celery::CeleryQuery>),
    RedisList(Arc<redis_list::RedisListQuery>),
    AwsSqsQueue(Arc<aws_sqs_queue::SqsQuery>),
    Kafka(Arc<kafka::KafkaQuery>),
}

impl Query {
    pub fn kind(&self) -> SourceKind {
        match self {
            Query::Celery(_) => SourceKind::Celery,
            Query::RedisList(_) => SourceKind::RedisList,
            Query::AwsSqsQueue(_) => SourceKind::AwsSqsQueue,
            Query::Kafka(_) => SourceKind::Kafka,
        }
    }

    /// Reads the queue once; `deadline` is when the caller stops waiting.
    pub async fn read(&self, backends: &Backends, deadline: Instant) -> Result<Depth, SourceError> {
        match self {
            Query::Celery(q) => q.read(&backends.redis, &backends.celery_unacked).await,
            Query::RedisList(q) => q.read(&backends.redis).await,
            Query::AwsSqsQueue(q) => q.read(&backends.sqs).await,
            Query::Kafka(q) => q.read(&backends.kafka, deadline).await,
        }
    }

    /// What identifies this queue for persisted state ([`crate::keys`]): endpoint and queue,
    /// never credentials.
    pub fn identity(&self) -> crate::keys::QueueIdentity {
        use crate::keys::QueueIdentity;
        let redis = |id: QueueIdentity, ep: &redis_conn::RedisEndpoint| {
            id.with("host", &ep.host)
                .with("port", ep.port.to_string())
                .with("db", ep.db.to_string())
        };
        match self {
            Query::Celery(q) => {
                let mut id = redis(QueueIdentity::new("celery"), &q.endpoint);
                for queue in &q.queues {
                    id = id.with("queue", &queue.name);
                    for list in &queue.lists {
                        id = id.with("list", list);
                    }
                }
                id
            }
            Query::RedisList(q) => {
                redis(QueueIdentity::new("redis-list"), &q.endpoint).with("key", &q.key)
            }
            Query::AwsSqsQueue(q) => QueueIdentity::new("aws-sqs-queue")
                .with("region", &q.client.region)
                .with("endpoint", q.client.endpoint.as_deref().unwrap_or_default())
                .with("queue", &q.queue),
            Query::Kafka(q) => q.identity(),
        }
    }

    /// The endpoint read, for messages and per-endpoint limits (never with credentials).
    pub fn endpoint_label(&self) -> String {
        match self {
            Query::Celery(q) => q.endpoint.to_string(),
            Query::RedisList(q) => q.endpoint.to_string(),
            Query::AwsSqsQueue(q) => q.endpoint_label(),
            Query::Kafka(q) => q.endpoint_label(),
        }
    }

    /// What push activation watches for this query.
    pub fn watch(&self) -> WatchSpec {
        match self {
            Query::Celery(q) => q.watch(),
            Query::RedisList(q) => q.watch(),
            // Neither SQS nor Kafka can notify a non-consumer of new messages: a shared watcher
            // polls while streams are open.
            Query::AwsSqsQueue(_) | Query::Kafka(_) => WatchSpec::Poll,
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
    /// No notification exists: read at the broker poll interval while any stream is open.
    Poll,
}

/// Clients shared by all sources, one set per backend kind, and the Secrets that `...Secret`
/// keys name (shared by the three).
#[derive(Debug)]
pub struct Backends {
    pub redis: redis_conn::RedisPool,
    /// Celery's in-flight counts, one scan per database shared by every queue set.
    pub celery_unacked: celery::UnackedCounts,
    pub sqs: aws_sqs_queue::SqsClients,
    pub kafka: kafka::KafkaClients,
    pub secrets: Arc<Secrets>,
}

impl Default for Backends {
    fn default() -> Self {
        Self::new(Duration::from_secs(2), None)
    }
}

impl Backends {
    /// Clients bounded by `timeout` (connecting, and each call); `kubeconfig` is where
    /// `...Secret` keys are read (`None`: in-cluster, or the standard kubeconfig inference).
    pub fn new(timeout: Duration, kubeconfig: Option<std::path::PathBuf>) -> Self {
        let secrets = Arc::new(Secrets::new(kubeconfig, timeout));
        Self {
            redis: redis_conn::RedisPool::new(redis_conn::RedisSettings {
                connect_timeout: timeout,
                response_timeout: timeout,
            })
            .with_secrets(secrets.clone()),
            celery_unacked: celery::UnackedCounts::default(),
            sqs: aws_sqs_queue::SqsClients::new(timeout).with_secrets(secrets.clone()),
            kafka: kafka::KafkaClients::new(timeout).with_secrets(secrets.clone()),
            secrets,
        }
    }
}

/// The cause of a source error: any error, shared so that one failed read can answer many
/// callers. Its text never holds a secret (sources build it from broker error codes and
/// messages, not from configuration).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A cause made from a message, for errors that have no error value of their own.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Message(pub String);

/// Builds a [`Cause`] from a message.
pub fn cause(message: impl Into<String>) -> Cause {
    Arc::new(Message(message.into()))
}

/// Why a queue could not be read. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {endpoint}: {source}")]
    Unavailable {
        endpoint: String,
        #[source]
        source: Cause,
    },
    #[error("timed out after {after:?} reading {endpoint}")]
    Timeout { endpoint: String, after: Duration },
    #[error("{endpoint} refused the credentials: {source}")]
    Auth {
        endpoint: String,
        #[source]
        source: Cause,
    },
    /// The queue, topic or consumer group named by the trigger does not exist.
    #[error("{what} not found on {endpoint}")]
    NotFound { endpoint: String, what: String },
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
        source: Cause,
    },
    #[error("{endpoint} answered something unexpected: {detail}")]
    Protocol { endpoint: String, detail: String },
    /// A `...Secret` key could not be resolved (names the key and the Secret, never a value).
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl SourceError {
    /// A bounded, snake_case label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Unavailable { .. } => "unavailable",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Auth { .. } => "auth",
            SourceError::NotFound { .. } => "not_found",
            SourceError::WrongType { .. } => "wrong_type",
            SourceError::Backend { .. } => "backend",
            SourceError::Protocol { .. } => "protocol",
            SourceError::Secret(_) => "secret",
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
