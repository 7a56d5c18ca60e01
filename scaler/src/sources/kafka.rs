//! `source: kafka` — parity with KEDA's built-in `kafka` scaler: the consumer group's lag on
//! one topic (or on every topic it has committed offsets for), with KEDA's rules for missing
//! offsets, persistent lag, idle consumers and the partition-count cap.
//!
//! A read fetches the group's committed offsets (one OffsetFetch) and the latest offsets of the
//! same partitions (ListOffsets, one request per leader), and keeps them per partition in
//! [`KafkaOffsets`]; the trigger's options turn them into KEDA's value, so triggers that differ
//! only in options share one read. librdkafka calls block: they run on the blocking pool, each
//! with the time left before the caller's deadline.
//!
//! One librdkafka handle per (bootstrap servers, security, consumer group): librdkafka reads
//! committed offsets only for its handle's own `group.id` (the crate exposes no
//! ListConsumerGroupOffsets, and this workspace forbids the unsafe FFI it would take). The
//! handle never subscribes, so it never joins the group or disturbs its consumers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use serde::{Deserialize, Serialize};

use super::{Depth, SourceError, cause};
use crate::metadata::{Key, Plain, Problem, Reader};
use crate::secrets::{Credential, Secrets};
use crate::shared_state::{SharedState, StateError};

/// Keys of this source (each also in its `FromEnv` form; the secrets only in that form or in
/// their `Secret` form, which `ca`, `cert` and `username` also accept).
pub const KEYS: &[Key] = &[
    Key::required("bootstrapServers", "comma-separated `host:port`"),
    Key::required("consumerGroup", "the group whose lag is measured"),
    Key::optional(
        "topic",
        "all",
        "without it: every topic the group has committed offsets for (metric `kafka-<group>-topics`)",
    ),
    Key::optional(
        "partitionLimitation",
        "all",
        "partitions counted: `1,2`, ranges `1-4,8,10-12`; ignored without `topic`",
    ),
    Key::optional("lagThreshold", "10", "target lag per replica (> 0)"),
    Key::optional(
        "activationLagThreshold",
        "0",
        "active when the lag (persistent lag included) is above this (≥ 0)",
    ),
    Key::optional(
        "offsetResetPolicy",
        "`latest`",
        "a partition with no committed offset counts 1 (`latest`) or its latest offset (`earliest`)",
    ),
    Key::optional("scaleToZeroOnInvalidOffset", "false", "…or 0"),
    Key::optional(
        "allowIdleConsumers",
        "false",
        "let the value exceed partitions × threshold",
    ),
    Key::optional(
        "limitToPartitionsWithLag",
        "false",
        "cap at partitions *with lag* × threshold (needs `topic`; not with `allowIdleConsumers` or `ensureEvenDistributionOfPartitions`)",
    ),
    Key::optional(
        "ensureEvenDistributionOfPartitions",
        "false",
        "round the value up to (smallest factor of the partition count covering the lag) × threshold (needs `topic`)",
    ),
    Key::optional(
        "excludePersistentLag",
        "false",
        "a partition whose committed offset has not moved since the previous read counts 0 toward the value (still toward activation)",
    ),
    Key::optional(
        "version",
        "—",
        "accepted and checked (`x.y.z`, `0.x.y.z`) for compatibility; librdkafka negotiates versions itself",
    ),
    Key::optional(
        "tls",
        "`disable`",
        "`enable`: TLS, verified against `ca` or the system roots",
    ),
    Key::optional(
        "ca",
        "system roots",
        "PEM text of the CA to verify the brokers against (`ca`, `caFromEnv` or `caSecret`)",
    ),
    Key::optional(
        "cert",
        "none",
        "PEM client certificate, with `key` (also `certFromEnv`, `certSecret`)",
    ),
    Key::optional(
        "key",
        "none",
        "PEM private key of `cert`, accepted only as `keyFromEnv` or `keySecret`",
    ),
    Key::optional(
        "keyPassword",
        "none",
        "password of an encrypted `key`, accepted only as `keyPasswordFromEnv` or `keyPasswordSecret`",
    ),
    Key::optional(
        "unsafeSsl",
        "false",
        "`true` skips certificate verification",
    ),
    Key::optional(
        "sasl",
        "`none`",
        "`plaintext` (PLAIN; `plain` also accepted), `scram_sha256`, `scram_sha512` (`oauthbearer` and `gssapi` are refused by name: not supported yet)",
    ),
    Key::optional(
        "username",
        "none",
        "SASL user (`username`, `usernameFromEnv` or `usernameSecret`)",
    ),
    Key::optional(
        "password",
        "none",
        "SASL password, accepted only as `passwordFromEnv` or `passwordSecret`",
    ),
];

/// `offsetResetPolicy`: what a partition with no committed offset counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetResetPolicy {
    /// Lag 1 (the group's consumers would start at the end): enough to activate them.
    Latest,
    /// The partition's latest offset (they would start at the beginning).
    Earliest,
}

/// `sasl`: how the handle authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sasl {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Sasl {
    fn mechanism(self) -> &'static str {
        match self {
            Sasl::Plain => "PLAIN",
            Sasl::ScramSha256 => "SCRAM-SHA-256",
            Sasl::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How to reach the brokers and as whom. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Security {
    /// `tls: enable` (default `disable`).
    pub tls: bool,
    /// `unsafeSsl` (default false): skip certificate and host name verification.
    pub unsafe_ssl: bool,
    /// `ca` / `caFromEnv` / `caSecret`: PEM CA bundle to verify the brokers with (default:
    /// system roots).
    pub ca: Option<Credential>,
    /// `cert` / `certFromEnv` / `certSecret`: PEM client certificate, with `keyFromEnv` or
    /// `keySecret` (PEM private key) and optionally `keyPasswordFromEnv` or `keyPasswordSecret`.
    pub cert: Option<Credential>,
    pub key: Option<Credential>,
    pub key_password: Option<Credential>,
    /// `sasl`: `none` (default), `plaintext` (PLAIN; `plain` also accepted), `scram_sha256`,
    /// `scram_sha512`, with `username` / `usernameFromEnv` / `usernameSecret` and
    /// `passwordFromEnv` / `passwordSecret`.
    pub sasl: Option<(Sasl, Credential, Credential)>,
}

/// [`Security`]'s credentials as resolved for one handle. `Debug` hides them.
#[derive(Clone, PartialEq, Eq, Default)]
struct Resolved {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    key_password: Option<String>,
    sasl: Option<(String, String)>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolved(<hidden>)")
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls)
            .field("unsafe_ssl", &self.unsafe_ssl)
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.cert.is_some())
            .field("sasl", &self.sasl.as_ref().map(|(m, u, _)| (m, u)))
            .finish()
    }
}

/// Metadata of a `kafka` trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaMetadata {
    /// `bootstrapServers` (required): comma-separated `host:port` list.
    pub bootstrap_servers: Vec<String>,
    /// `consumerGroup` (required).
    pub consumer_group: String,
    /// `topic`: without it, every topic the group has committed offsets for.
    pub topic: Option<String>,
    /// `partitionLimitation`: partitions counted, e.g. `1,2` or `1-4,8,10-12`; ignored
    /// without a topic.
    pub partition_limitation: Option<Vec<i32>>,
    /// `lagThreshold` (default 10, > 0): target lag per replica.
    pub lag_threshold: i64,
    /// `activationLagThreshold` (default 0, ≥ 0): active when the lag is above this.
    pub activation_lag_threshold: i64,
    /// `offsetResetPolicy` (default `latest`).
    pub offset_reset_policy: OffsetResetPolicy,
    /// `allowIdleConsumers` (default false): let replicas exceed the partition count.
    pub allow_idle_consumers: bool,
    /// `excludePersistentLag` (default false): a partition whose committed offset has not moved
    /// since the previous read counts 0 toward the value (but still toward activation).
    pub exclude_persistent_lag: bool,
    /// `scaleToZeroOnInvalidOffset` (default false): a partition without a committed offset
    /// counts 0.
    pub scale_to_zero_on_invalid_offset: bool,
    /// `limitToPartitionsWithLag` (default false): cap replicas at the partitions with lag.
    pub limit_to_partitions_with_lag: bool,
    /// `ensureEvenDistributionOfPartitions` (default false): round replicas up to a factor of
    /// the partition count.
    pub ensure_even_distribution_of_partitions: bool,
    pub security: Security,
}

/// KEDA's lag for one reading: the value, and the lag including persistent lag (activation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub value: i64,
    pub with_persistent: i64,
}

/// Partitions (topic, partition) whose committed offset has not moved since the previous read,
/// for `excludePersistentLag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persistent(pub BTreeSet<(String, i32)>);

impl KafkaMetadata {
    pub fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let servers = r.required_string("bootstrapServers").map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        });
        if let Some(list) = &servers
            && let Some(bad) = list.iter().find(|s| !valid_server(s))
        {
            r.problem(Problem::Invalid {
                key: "bootstrapServers".into(),
                value: Some(bad.clone()),
                expected: "a comma-separated list of host:port".into(),
            });
        }
        let consumer_group = r.required_string("consumerGroup");
        let topic = r.string("topic");
        let limitation =
            r.string("partitionLimitation")
                .and_then(|s| match parse_partition_limitation(&s) {
                    Ok(v) => Some(v),
                    Err(why) => {
                        r.problem(Problem::Invalid {
                            key: "partitionLimitation".into(),
                            value: Some(s),
                            expected: format!("a list like `1,2` or `1-4,8,10-12` ({why})"),
                        });
                        None
                    }
                });
        let lag_threshold = r.int("lagThreshold", 10i64);
        if lag_threshold <= 0 {
            r.problem(Problem::Invalid {
                key: "lagThreshold".into(),
                value: Some(lag_threshold.to_string()),
                expected: "a positive number".into(),
            });
        }
        let activation_lag_threshold = r.int("activationLagThreshold", 0i64);
        if activation_lag_threshold < 0 {
            r.problem(Problem::Invalid {
                key: "activationLagThreshold".into(),
                value: Some(activation_lag_threshold.to_string()),
                expected: "a non-negative number".into(),
            });
        }
        let offset_reset_policy = match r.string("offsetResetPolicy").as_deref() {
            None | Some("latest") => OffsetResetPolicy::Latest,
            Some("earliest") => OffsetResetPolicy::Earliest,
            Some(other) => {
                r.problem(Problem::Invalid {
                    key: "offsetResetPolicy".into(),
                    value: Some(other.into()),
                    expected: "`latest` or `earliest`".into(),
                });
                OffsetResetPolicy::Latest
            }
        };
        let allow_idle_consumers = r.bool("allowIdleConsumers", false);
        let exclude_persistent_lag = r.bool("excludePersistentLag", false);
        let scale_to_zero_on_invalid_offset = r.bool("scaleToZeroOnInvalidOffset", false);
        let limit_to_partitions_with_lag = r.bool("limitToPartitionsWithLag", false);
        let ensure_even = r.bool("ensureEvenDistributionOfPartitions", false);
        if let Some(v) = r.string("version")
            && !valid_sarama_version(&v)
        {
            r.problem(Problem::Invalid {
                key: "version".into(),
                value: Some(v),
                expected: "a Kafka version like 2.8.1 or 0.10.2.0".into(),
            });
        }
        // KEDA's invalid combinations, in KEDA's order.
        let conflict = |r: &mut Reader<'_>, keys: &[&str], reason: &str| {
            r.problem(Problem::Conflict {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                reason: reason.into(),
            })
        };
        if allow_idle_consumers && limit_to_partitions_with_lag {
            conflict(
                r,
                &["allowIdleConsumers", "limitToPartitionsWithLag"],
                "cannot be set simultaneously",
            );
        }
        if topic.is_none() && limit_to_partitions_with_lag {
            conflict(
                r,
                &["topic", "limitToPartitionsWithLag"],
                "topic must be specified when using limitToPartitionsWithLag",
            );
        }
        if limit_to_partitions_with_lag && ensure_even {
            conflict(
                r,
                &[
                    "limitToPartitionsWithLag",
                    "ensureEvenDistributionOfPartitions",
                ],
                "cannot be set simultaneously",
            );
        }
        if topic.is_none() && ensure_even {
            conflict(
                r,
                &["topic", "ensureEvenDistributionOfPartitions"],
                "topic must be specified when using ensureEvenDistributionOfPartitions",
            );
        }
        let security = parse_security(r);
        Some(Self {
            bootstrap_servers: servers?,
            consumer_group: consumer_group?,
            // KEDA ignores partitionLimitation without a topic.
            partition_limitation: if topic.is_some() { limitation } else { None },
            topic,
            lag_threshold,
            activation_lag_threshold,
            offset_reset_policy,
            allow_idle_consumers,
            exclude_persistent_lag,
            scale_to_zero_on_invalid_offset,
            limit_to_partitions_with_lag,
            ensure_even_distribution_of_partitions: ensure_even,
            security: security?,
        })
    }

    /// KEDA's `kafka-<topic>` or `kafka-<consumerGroup>-topics`.
    pub fn metric_name(&self) -> String {
        match &self.topic {
            Some(t) => format!("kafka-{t}"),
            None => format!("kafka-{}-topics", self.consumer_group),
        }
    }

    pub fn query(&self) -> KafkaQuery {
        let mut servers = self.bootstrap_servers.clone();
        servers.sort();
        servers.dedup();
        KafkaQuery {
            cluster: Cluster {
                servers,
                security: self.security.clone(),
            },
            group: self.consumer_group.clone(),
            topic: self.topic.clone(),
            partitions: self.partition_limitation.clone(),
        }
    }

    /// KEDA's `getTotalLag` for a reading (0 when the reading has no offsets).
    pub fn lag(&self, depth: &Depth, persistent: &Persistent) -> Lag {
        let Some(offsets) = &depth.kafka else {
            return Lag {
                value: 0,
                with_persistent: 0,
            };
        };
        let mut total = 0i64;
        let mut total_with_persistent = 0i64;
        let mut partitions = 0i64;
        let mut with_lag = 0i64;
        for p in &offsets.partitions {
            let (lag, lag_p) = self.partition_lag(p, persistent);
            total = total.saturating_add(lag);
            total_with_persistent = total_with_persistent.saturating_add(lag_p);
            if lag > 0 {
                with_lag += 1;
            }
            partitions += 1;
        }
        let threshold = self.lag_threshold.max(1);
        if !self.allow_idle_consumers
            || self.limit_to_partitions_with_lag
            || self.ensure_even_distribution_of_partitions
        {
            let mut upper = partitions;
            if self.ensure_even_distribution_of_partitions {
                total = next_balancing_factor(total, partitions, threshold) * threshold;
            }
            if self.limit_to_partitions_with_lag {
                upper = with_lag;
            }
            if total / threshold > upper {
                total = upper * threshold;
            }
        }
        Lag {
            value: total,
            with_persistent: total_with_persistent,
        }
    }

    /// KEDA's `getLagForPartition`: (lag, lag including persistent lag).
    fn partition_lag(&self, p: &PartitionOffsets, persistent: &Persistent) -> (i64, i64) {
        let Some(committed) = p.committed else {
            let v = match (
                self.offset_reset_policy,
                self.scale_to_zero_on_invalid_offset,
            ) {
                (_, true) => 0,
                (OffsetResetPolicy::Latest, false) => 1,
                (OffsetResetPolicy::Earliest, false) => p.latest,
            };
            return (v, v);
        };
        let lag = p.latest - committed;
        if self.exclude_persistent_lag && persistent.0.contains(&(p.topic.clone(), p.partition)) {
            return (0, lag);
        }
        (lag, lag)
    }
}

/// The smallest factor f of `partitions` with f × threshold ≥ lag (KEDA's
/// `getNextFactorThatBalancesConsumersToTopicPartitions`).
pub fn next_balancing_factor(lag: i64, partitions: i64, threshold: i64) -> i64 {
    factors(partitions)
        .into_iter()
        .find(|f| f.saturating_mul(threshold) >= lag)
        .unwrap_or(partitions)
}

/// Every factor of `n`, ascending (empty for n < 1).
pub fn factors(n: i64) -> Vec<i64> {
    if n < 1 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i * i <= n {
        if n % i == 0 {
            out.push(i);
            if i != n / i {
                out.push(n / i);
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out
}

fn too_many_partitions() -> String {
    format!(
        "more than {} partitions in all (the scaler's bound)",
        crate::bounds::MAX_KAFKA_PARTITIONS
    )
}

/// KEDA's `parsePartitionLimitation`: comma-separated ids and `a-b` ranges (32-bit), at most
/// [`crate::bounds::MAX_KAFKA_PARTITIONS`] partitions in all.
pub fn parse_partition_limitation(s: &str) -> Result<Vec<i32>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.contains('-') {
            let bounds: Vec<&str> = part.split('-').collect();
            if bounds.len() != 2 {
                return Err(format!("invalid range {part:?}"));
            }
            let start = crate::metadata::parse_int::<i32>(bounds[0].trim())
                .ok_or_else(|| format!("invalid partition {part:?}"))?;
            let end = crate::metadata::parse_int::<i32>(bounds[1].trim())
                .ok_or_else(|| format!("invalid partition {part:?}"))?;
            // KEDA's loop runs from start to end: a reversed range lists nothing.
            let len = usize::try_from(i64::from(end) - i64::from(start) + 1).unwrap_or(0);
            if out.len().saturating_add(len) > crate::bounds::MAX_KAFKA_PARTITIONS {
                return Err(too_many_partitions());
            }
            out.extend(start..=end);
        } else {
            let v = crate::metadata::parse_int::<i32>(part)
                .ok_or_else(|| format!("invalid partition {part:?}"))?;
            if out.len() >= crate::bounds::MAX_KAFKA_PARTITIONS {
                return Err(too_many_partitions());
            }
            out.push(v);
        }
    }
    Ok(out)
}

/// sarama's `ParseKafkaVersion` syntax: `x.y.z`, or `0.x.y.z`.
fn valid_sarama_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    s.len() >= 5
        && parts.iter().all(digits)
        && if s.starts_with('0') {
            parts.len() == 4 && parts[0] == "0"
        } else {
            parts.len() == 3
        }
}

fn valid_server(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && crate::metadata::parse_int::<u16>(port).is_some_and(|p| p > 0)
        }
        None => false,
    }
}

fn parse_security(r: &mut Reader<'_>) -> Option<Security> {
    let tls = match r.string("tls").as_deref() {
        None | Some("disable") => false,
        Some("enable") => true,
        Some(other) => {
            r.problem(Problem::Invalid {
                key: "tls".into(),
                value: Some(other.into()),
                expected: "`enable` or `disable`".into(),
            });
            false
        }
    };
    let unsafe_ssl = r.bool("unsafeSsl", false);
    let ca = r.credential("ca", Plain::Allowed);
    let cert = r.credential("cert", Plain::Allowed);
    let key = r.credential("key", Plain::Forbidden);
    let key_password = r.credential("keyPassword", Plain::Forbidden);
    let mut ok = true;
    if tls {
        if cert.is_some() && key.is_none() {
            r.problem(Problem::Missing {
                key: "keyFromEnv".into(),
            });
            ok = false;
        }
        if key.is_some() && cert.is_none() {
            r.problem(Problem::Missing { key: "cert".into() });
            ok = false;
        }
    }
    // KEDA ignores TLS material unless `tls: enable`; so does Headroom (the keys stay read).
    let mechanism = match r.string("sasl").as_deref() {
        None | Some("none") => None,
        Some("plaintext" | "plain") => Some(Sasl::Plain),
        Some("scram_sha256") => Some(Sasl::ScramSha256),
        Some("scram_sha512") => Some(Sasl::ScramSha512),
        Some(other @ ("oauthbearer" | "gssapi")) => {
            r.problem(Problem::Invalid {
                key: "sasl".into(),
                value: Some(other.into()),
                expected: "supported by Headroom yet (none, plaintext, scram_sha256, scram_sha512)"
                    .into(),
            });
            ok = false;
            None
        }
        Some(other) => {
            r.problem(Problem::Invalid {
                key: "sasl".into(),
                value: Some(other.into()),
                expected: "one of none, plaintext, scram_sha256, scram_sha512".into(),
            });
            ok = false;
            None
        }
    };
    let username = r.credential("username", Plain::Allowed);
    let password = r.credential("password", Plain::Forbidden);
    let sasl = match mechanism {
        None => {
            if username.is_some() || password.is_some() {
                r.problem(Problem::Conflict {
                    keys: vec!["sasl".into(), "username".into(), "passwordFromEnv".into()],
                    reason: "credentials are given but `sasl` is not set".into(),
                });
                ok = false;
            }
            None
        }
        Some(m) => match (username, password) {
            (Some(u), Some(p)) => Some((m, u, p)),
            (u, p) => {
                if u.is_none() {
                    r.problem(Problem::Missing {
                        key: "username".into(),
                    });
                }
                if p.is_none() {
                    r.problem(Problem::Missing {
                        key: "passwordFromEnv".into(),
                    });
                }
                ok = false;
                None
            }
        },
    };
    ok.then_some(Security {
        tls,
        unsafe_ssl,
        ca: ca.filter(|_| tls),
        cert: cert.filter(|_| tls),
        key: key.filter(|_| tls),
        key_password: key_password.filter(|_| tls),
        sasl,
    })
}

/// A cluster and the way to talk to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cluster {
    /// Bootstrap servers, sorted.
    pub servers: Vec<String>,
    pub security: Security,
}

/// One read: a group's committed and latest offsets on a topic (or on its topics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaQuery {
    pub cluster: Cluster,
    pub group: String,
    pub topic: Option<String>,
    pub partitions: Option<Vec<i32>>,
}

/// The offsets of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// The latest offset (high watermark).
    pub latest: i64,
    /// The group's committed offset, `None` when it has none.
    pub committed: Option<i64>,
}

/// What one read of a group found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOffsets {
    /// When the read started, in milliseconds since the Unix epoch (wall clock: scaler replicas
    /// compare readings through the shared state).
    pub read_at_ms: u64,
    pub partitions: Vec<PartitionOffsets>,
}

impl KafkaQuery {
    /// `kafka://<first server>,...` — no credentials.
    pub fn endpoint_label(&self) -> String {
        format!("kafka://{}", self.cluster.servers.join(","))
    }

    fn label(&self) -> String {
        format!("{} group {}", self.endpoint_label(), self.group)
    }

    /// The key under which `excludePersistentLag` state is kept for one trigger: the
    /// ScaledObject, and what is read (never credentials).
    pub fn state_key(&self, namespace: &str, name: &str, metric: &str) -> String {
        format!(
            "kafka-persistent-lag:v{}:{namespace}/{name}/{metric}/{:016x}",
            crate::keys::KEY_VERSION,
            self.identity().hash()
        )
    }

    /// What identifies the read for persisted state: servers, group, topic, partitions.
    pub fn identity(&self) -> crate::keys::QueueIdentity {
        let partitions = self.partitions.as_ref().map(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        crate::keys::QueueIdentity::new("kafka")
            .with("servers", self.cluster.servers.join(","))
            .with("group", &self.group)
            .with("topic", self.topic.as_deref().unwrap_or_default())
            .with("partitions", partitions.unwrap_or_else(|| "*".into()))
    }

    pub async fn read(
        &self,
        clients: &KafkaClients,
        deadline: Instant,
    ) -> Result<Depth, SourceError> {
        let handle = clients.handle(self).await?;
        let query = self.clone();
        let read_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let task = tokio::task::spawn_blocking(move || query.read_blocking(&handle, deadline));
        let partitions = match task.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(SourceError::Backend {
                    endpoint: self.label(),
                    source: cause(format!("read task failed: {e}")),
                });
            }
        };
        Ok(depth_of(KafkaOffsets {
            read_at_ms,
            partitions,
        }))
    }

    fn read_blocking(
        &self,
        handle: &Handle,
        deadline: Instant,
    ) -> Result<Vec<PartitionOffsets>, SourceError> {
        let left = || -> Result<Duration, SourceError> {
            let d = deadline.saturating_duration_since(Instant::now());
            if d < Duration::from_millis(5) {
                Err(SourceError::Timeout {
                    endpoint: self.label(),
                    after: handle.timeout,
                })
            } else {
                Ok(d)
            }
        };
        // Deliver client events (errors, logs) that librdkafka queued for this handle: an
        // authentication failure reaches the context this way.
        handle.drain_events();
        let err = |e: KafkaError| {
            handle.await_failure_reason(&e);
            handle.classify(self, e)
        };

        // 1. Which partitions. Asked in slices: a refused login is not an answer to the call but
        // a log line, after which librdkafka reconnects and the call waits out its whole
        // timeout; between slices a login refused meanwhile ends the read as an auth error
        // (seen in CI: a wrong SCRAM password answered UNAVAILABLE after the 15 s deadline).
        let metadata = loop {
            let slice = left()?.min(METADATA_SLICE);
            match handle.consumer.fetch_metadata(self.topic.as_deref(), slice) {
                Ok(m) => break m,
                Err(e) if is_timeout(&e) => {
                    handle.drain_events();
                    if let Some(reason) = handle.recent_auth_failure() {
                        return Err(SourceError::Auth {
                            endpoint: self.label(),
                            source: cause(reason),
                        });
                    }
                }
                Err(e) => return Err(err(e)),
            }
        };
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            if let Some(topic) = &self.topic {
                if t.name() != topic {
                    continue;
                }
                if let Some(code) = t.error() {
                    return Err(topic_error(self, topic, code));
                }
                for p in t.partitions() {
                    let counted = self
                        .partitions
                        .as_ref()
                        .is_none_or(|only| only.contains(&p.id()));
                    if counted {
                        tpl.add_partition(topic, p.id());
                    }
                }
                if tpl.count() == 0 {
                    return Err(SourceError::NotFound {
                        endpoint: self.endpoint_label(),
                        what: format!(
                            "partition of topic {topic} matching partitionLimitation (expected at least one active partition)"
                        ),
                    });
                }
            } else if t.error().is_none() && !t.name().starts_with("__") {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
        }
        if let Some(topic) = &self.topic
            && tpl.count() == 0
        {
            return Err(SourceError::NotFound {
                endpoint: self.endpoint_label(),
                what: format!("topic {topic}"),
            });
        }

        // 2. The group's committed offsets (one OffsetFetch).
        let committed = if tpl.count() == 0 {
            TopicPartitionList::new()
        } else {
            loop {
                match handle.consumer.committed_offsets(tpl.clone(), left()?) {
                    Ok(c) => break c,
                    // The group's coordinator is moving or loading (a broker restart, the
                    // first use of the offsets topic): librdkafka finds the new one on retry.
                    Err(e) if coordinator_moving(&e) && left()? > Duration::from_millis(100) => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        };
        let mut committed_by: HashMap<(String, i32), Option<i64>> = HashMap::new();
        for e in committed.elements() {
            if let Err(error) = e.error() {
                return Err(handle.classify(self, error));
            }
            let offset = match e.offset() {
                Offset::Offset(n) if n >= 0 => Some(n),
                _ => None,
            };
            committed_by.insert((e.topic().to_string(), e.partition()), offset);
        }
        if self.topic.is_none() {
            // Every topic the group has committed offsets for, as KEDA lists them.
            let topics: BTreeSet<&str> = committed_by
                .iter()
                .filter(|(_, o)| o.is_some())
                .map(|((t, _), _)| t.as_str())
                .collect();
            if topics.is_empty() {
                return Err(SourceError::NotFound {
                    endpoint: self.endpoint_label(),
                    what: format!(
                        "committed offset of consumer group {} (it has none on any topic: set `topic`)",
                        self.group
                    ),
                });
            }
            let mut only = TopicPartitionList::new();
            for e in tpl.elements() {
                if topics.contains(e.topic()) {
                    only.add_partition(e.topic(), e.partition());
                }
            }
            tpl = only;
        }

        // 3. The latest offsets (ListOffsets for LATEST, one request per leader).
        let mut latest_req = tpl.clone();
        latest_req
            .set_all_offsets(Offset::End)
            .map_err(|e| handle.classify(self, e))?;
        let latest = handle
            .consumer
            .offsets_for_times(latest_req, left()?)
            .map_err(err)?;
        let mut out = Vec::with_capacity(latest.count());
        for e in latest.elements() {
            if let Err(error) = e.error() {
                return Err(handle.classify(self, error));
            }
            let Offset::Offset(n) = e.offset() else {
                return Err(SourceError::Protocol {
                    endpoint: self.label(),
                    detail: format!(
                        "no latest offset for {}/{} ({:?})",
                        e.topic(),
                        e.partition(),
                        e.offset()
                    ),
                });
            };
            let key = (e.topic().to_string(), e.partition());
            out.push(PartitionOffsets {
                committed: committed_by.get(&key).copied().flatten(),
                topic: key.0,
                partition: key.1,
                latest: n,
            });
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }
}

fn coordinator_moving(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

/// The depth a Kafka reading stands for: waiting = the lag of partitions with a committed
/// offset (the others have no lag to speak of until the group starts), produced and consumed
/// totals from the offsets.
pub fn depth_of(offsets: KafkaOffsets) -> Depth {
    let mut waiting = 0u64;
    let mut produced = 0u64;
    let mut consumed = Some(0u64);
    for p in &offsets.partitions {
        produced = produced.saturating_add(p.latest.max(0) as u64);
        match p.committed {
            Some(c) => {
                waiting = waiting.saturating_add((p.latest - c).max(0) as u64);
                consumed = consumed.map(|t| t.saturating_add(c.max(0) as u64));
            }
            None => consumed = None,
        }
    }
    Depth {
        waiting,
        produced_total: Some(produced),
        consumed_total: consumed,
        kafka: Some(Arc::new(offsets)),
        ..Depth::default()
    }
}

fn topic_error(q: &KafkaQuery, topic: &str, code: RDKafkaRespErr) -> SourceError {
    let code: RDKafkaErrorCode = code.into();
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            SourceError::NotFound {
                endpoint: q.endpoint_label(),
                what: format!("topic {topic}"),
            }
        }
        RDKafkaErrorCode::TopicAuthorizationFailed => SourceError::Auth {
            endpoint: q.label(),
            source: cause(format!("not authorised to describe topic {topic}")),
        },
        other => SourceError::Backend {
            endpoint: q.label(),
            source: cause(format!("topic {topic}: {other}")),
        },
    }
}

/// How long `excludePersistentLag` state outlives the last read of its trigger.
pub const PERSISTENT_STATE_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Generations {
    last_ms: u64,
    last: Vec<(String, i32, i64)>,
    previous: Option<Vec<(String, i32, i64)>>,
}

/// KEDA's `excludePersistentLag` bookkeeping, kept per trigger in `store` so that every scaler
/// replica sees it: the partitions whose committed offset equals the one seen at the previous
/// read of this trigger.
///
/// KEDA compares with the previous *call*; here a "previous read" is a reading at least
/// `min_interval` older, so that the GetMetrics and IsActive of one poll (which share a
/// reading) and several replicas reading a moment apart do not take a partition that is
/// being consumed for a stuck one.
pub async fn persistent_partitions(
    store: &SharedState,
    key: &str,
    offsets: &KafkaOffsets,
    min_interval: Duration,
) -> Result<Persistent, StateError> {
    let current: Vec<(String, i32, i64)> = offsets
        .partitions
        .iter()
        .filter_map(|p| p.committed.map(|c| (p.topic.clone(), p.partition, c)))
        .collect();
    let state: Option<Generations> = store
        .get(key)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let now = offsets.read_at_ms;
    let min = min_interval.as_millis() as u64;
    let (state, save) = match state {
        None => (
            Generations {
                last_ms: now,
                last: current.clone(),
                previous: None,
            },
            true,
        ),
        Some(s) if now >= s.last_ms.saturating_add(min) => (
            Generations {
                last_ms: now,
                previous: Some(s.last),
                last: current.clone(),
            },
            true,
        ),
        Some(s) => (s, false),
    };
    let persistent = match &state.previous {
        None => Persistent::default(),
        Some(prev) => {
            let prev: BTreeMap<(&str, i32), i64> = prev
                .iter()
                .map(|(t, p, o)| ((t.as_str(), *p), *o))
                .collect();
            Persistent(
                current
                    .iter()
                    .filter(|(t, p, o)| prev.get(&(t.as_str(), *p)) == Some(o))
                    .map(|(t, p, _)| (t.clone(), *p))
                    .collect(),
            )
        }
    };
    if save {
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        store.set(key, bytes, PERSISTENT_STATE_TTL).await?;
    }
    Ok(persistent)
}

/// How long one metadata request may wait before the read checks for a refused login.
const METADATA_SLICE: Duration = Duration::from_millis(200);

fn is_timeout(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut)
    )
}

/// librdkafka context: keeps the last authentication failure the client reported, so that a
/// call that then times out can say why.
#[derive(Debug, Default)]
pub struct Context {
    auth_failure: Mutex<Option<(Instant, String)>>,
    /// The last connection failure librdkafka logged (TLS handshake, resolution...): calls
    /// fail with a bare "transport failure", this says why.
    broker_failure: Mutex<Option<(Instant, String)>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // librdkafka reports a refused SASL login as a log line and a broker failure; the call
        // in progress then fails with a transport error, so remember why.
        if message.contains("SASL authentication error")
            || message.contains("Authentication failed")
        {
            self.remember_auth_failure(message);
        } else if fac == "FAIL" || message.contains("handshake failed") {
            *self
                .broker_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((Instant::now(), message.to_string()));
        }
        if matches!(
            level,
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical
        ) {
            tracing::warn!(facility = fac, message, "librdkafka");
        } else {
            tracing::trace!(facility = fac, message, "librdkafka");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let auth = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            )
        );
        if auth {
            self.remember_auth_failure(reason);
        }
        tracing::debug!(%error, reason, "librdkafka error");
    }
}

impl Context {
    fn remember_auth_failure(&self, reason: &str) {
        *self
            .auth_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), reason.to_string()));
    }
}

impl ConsumerContext for Context {}

/// One librdkafka handle.
pub struct Handle {
    consumer: BaseConsumer<Context>,
    /// The credentials it was made with: other ones (a rotated Secret) need a new handle.
    made_with: Resolved,
    timeout: Duration,
    /// When a read last used it, for [`KafkaClients::sweep`].
    last_used: Mutex<Instant>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Serves queued client events, so that the context hears about errors (the handle never
    /// subscribes, so polling consumes no message).
    fn drain_events(&self) {
        for _ in 0..64 {
            if self.consumer.poll(Duration::ZERO).is_none() {
                break;
            }
        }
    }

    /// Delivers queued client events before `e` is classified. A refused login fails the call
    /// as a bare transport failure and librdkafka may log why a moment later, so after a
    /// transport failure with no known reason this waits up to 200 ms for one.
    fn await_failure_reason(&self, e: &KafkaError) {
        let transport = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        );
        for attempt in 0..10 {
            self.drain_events();
            if !transport || self.recent_auth_failure().is_some() {
                return;
            }
            if attempt < 9 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Why librdkafka refused this handle's login, when it did in the last 30 s.
    fn recent_auth_failure(&self) -> Option<String> {
        self.consumer
            .context()
            .auth_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(30))
            .map(|(_, reason)| reason)
    }

    /// Turns a librdkafka error into the source error that says what the operator must fix.
    fn classify(&self, q: &KafkaQuery, e: KafkaError) -> SourceError {
        let code = e.rdkafka_error_code();
        let recent_auth = self.recent_auth_failure();
        match code {
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed,
            ) => SourceError::Auth {
                endpoint: q.label(),
                source: cause(recent_auth.unwrap_or_else(|| e.to_string())),
            },
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                SourceError::NotFound {
                    endpoint: q.endpoint_label(),
                    what: q
                        .topic
                        .as_ref()
                        .map_or_else(|| "topic".to_string(), |t| format!("topic {t}")),
                }
            }
            _ if recent_auth.is_some() => SourceError::Auth {
                endpoint: q.label(),
                source: cause(recent_auth.unwrap_or_default()),
            },
            Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
                SourceError::Unavailable {
                    endpoint: q.label(),
                    source: cause(format!("no answer within the deadline ({e})")),
                }
            }
            _ => {
                let why = self
                    .consumer
                    .context()
                    .broker_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .filter(|(at, _)| at.elapsed() < Duration::from_secs(30))
                    .map(|(_, reason)| format!(" (last broker error: {reason})"))
                    .unwrap_or_default();
                SourceError::Unavailable {
                    endpoint: q.label(),
                    source: cause(format!("{e}{why}")),
                }
            }
        }
    }
}

/// Most librdkafka handles kept at once: each holds threads (one per broker, plus its own) and
/// broker connections, and their keys come from callers' metadata.
pub const MAX_HANDLES: usize = 128;

/// librdkafka handles, one per (cluster, group), at most [`MAX_HANDLES`].
#[derive(Debug)]
pub struct KafkaClients {
    timeout: Duration,
    secrets: Arc<Secrets>,
    handles: Mutex<HashMap<(Cluster, String), Arc<Handle>>>,
}

impl Default for KafkaClients {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl KafkaClients {
    /// `timeout` is the socket timeout of the handles (a call's own bound is its deadline).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            secrets: Arc::default(),
            handles: Mutex::default(),
        }
    }

    /// Resolves `...Secret` keys through `secrets` (shared with the other sources).
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Number of handles made so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes handles no read has used for `idle` (each holds librdkafka threads and broker
    /// connections), so groups nobody asks about any more cost nothing. Returns how many.
    pub fn sweep(&self, idle: Duration) -> usize {
        let mut handles = self.lock();
        let before = handles.len();
        handles.retain(|_, h| {
            Arc::strong_count(h) > 1
                || h.last_used
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .elapsed()
                    < idle
        });
        crate::metrics::cache_entries("kafka_clients", handles.len());
        before - handles.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Cluster, String), Arc<Handle>>> {
        self.handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn resolve(&self, s: &Security) -> Result<Resolved, SourceError> {
        let secrets = &self.secrets;
        let sasl = match &s.sasl {
            None => None,
            Some((_, user, password)) => Some((
                secrets.resolve(user).await?,
                secrets.resolve(password).await?,
            )),
        };
        Ok(Resolved {
            ca: secrets.resolve_opt(s.ca.as_ref()).await?,
            cert: secrets.resolve_opt(s.cert.as_ref()).await?,
            key: secrets.resolve_opt(s.key.as_ref()).await?,
            key_password: secrets.resolve_opt(s.key_password.as_ref()).await?,
            sasl,
        })
    }

    async fn handle(&self, q: &KafkaQuery) -> Result<Arc<Handle>, SourceError> {
        let resolved = self.resolve(&q.cluster.security).await?;
        let key = (q.cluster.clone(), q.group.clone());
        let mut handles = self.lock();
        if let Some(h) = handles.get(&key)
            && h.made_with == resolved
        {
            *h.last_used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            return Ok(h.clone());
        }
        if !handles.contains_key(&key) && handles.len() >= MAX_HANDLES {
            // Room is made by closing the least recently used handle no read holds; a handle
            // in use stays (closing it would not free its threads).
            let oldest = handles
                .iter()
                .filter(|(_, h)| Arc::strong_count(h) == 1)
                .min_by_key(|(_, h)| {
                    *h.last_used
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    handles.remove(&k);
                    crate::metrics::cache_evicted("kafka_clients", 1);
                }
                None => {
                    return Err(SourceError::Backend {
                        endpoint: q.label(),
                        source: cause(format!(
                            "{MAX_HANDLES} Kafka clients (cluster and consumer group pairs) are in use at once; try again"
                        )),
                    });
                }
            }
        }
        let consumer: BaseConsumer<Context> = self
            .config(q, &resolved)
            .create_with_context(Context::default())
            .map_err(|e| SourceError::Backend {
                endpoint: q.label(),
                // librdkafka's configuration errors name the property, not its value.
                source: cause(format!("cannot create the Kafka client: {e}")),
            })?;
        let h = Arc::new(Handle {
            consumer,
            made_with: resolved,
            timeout: self.timeout,
            last_used: Mutex::new(Instant::now()),
        });
        if handles.insert(key, h.clone()).is_some() {
            tracing::info!(
                endpoint = q.label(),
                "kafka credentials changed; new client"
            );
        }
        crate::metrics::cache_entries("kafka_clients", handles.len());
        Ok(h)
    }

    fn config(&self, q: &KafkaQuery, resolved: &Resolved) -> ClientConfig {
        let ms = |d: Duration| d.as_millis().max(1).to_string();
        let s = &q.cluster.security;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", q.cluster.servers.join(","))
            .set("group.id", &q.group)
            .set("client.id", "headroom-scaler")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Latest offsets as KEDA reads them: the high watermark, not the last stable offset.
            .set("isolation.level", "read_uncommitted")
            .set("allow.auto.create.topics", "false")
            .set(
                "socket.timeout.ms",
                ms(self.timeout.max(Duration::from_millis(10))),
            )
            .set(
                "socket.connection.setup.timeout.ms",
                ms(self.timeout.max(Duration::from_secs(1))),
            )
            // Come back quickly after a broker restart.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set_log_level(RDKafkaLogLevel::Warning);
        let protocol = match (s.tls, s.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let (Some((mechanism, _, _)), Some((user, password))) = (&s.sasl, &resolved.sasl) {
            c.set("sasl.mechanism", mechanism.mechanism())
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        if s.tls {
            if let Some(ca) = &resolved.ca {
                c.set("ssl.ca.pem", ca);
            }
            if let Some(cert) = &resolved.cert {
                c.set("ssl.certificate.pem", cert);
            }
            if let Some(key) = &resolved.key {
                c.set("ssl.key.pem", key);
            }
            if let Some(pw) = &resolved.key_password {
                c.set("ssl.key.password", pw);
            }
            if s.unsafe_ssl {
                c.set("enable.ssl.certificate.verification", "false")
                    .set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs = Vec<(&'static str, &'static str)>;

    use crate::metadata::md;

    fn parse(pairs: &[(&str, &str)]) -> Result<KafkaMetadata, Vec<String>> {
        let m = md(pairs);
        let mut r = Reader::new(&m).in_namespace("kafka");
        let meta = KafkaMetadata::parse(&mut r);
        match r.finish(&|_| None) {
            Ok(()) => meta.ok_or_else(Vec::new),
            Err(e) => Err(e.keys().into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn every_kafka_credential_may_name_a_secret() {
        let m = parse(&base(&[
            ("sasl", "scram_sha512"),
            ("usernameSecret", "kafka/creds/user"),
            ("passwordSecret", "kafka/creds/password"),
            ("tls", "enable"),
            ("caSecret", "kafka/tls/ca.crt"),
            ("certSecret", "kafka/tls/tls.crt"),
            ("keySecret", "kafka/tls/tls.key"),
            ("keyPasswordSecret", "kafka/tls/pass"),
        ]))
        .unwrap();
        let s = &m.query().cluster.security;
        let (_, user, password) = s.sasl.as_ref().unwrap();
        let named = |c: &Credential| c.secret_key().unwrap().reference.to_string();
        assert_eq!(named(user), "kafka/creds/user");
        assert_eq!(named(password), "kafka/creds/password");
        for (c, r) in [
            (&s.ca, "kafka/tls/ca.crt"),
            (&s.cert, "kafka/tls/tls.crt"),
            (&s.key, "kafka/tls/tls.key"),
            (&s.key_password, "kafka/tls/pass"),
        ] {
            assert_eq!(named(c.as_ref().unwrap()), r);
        }
        // The secret and its Secret form together are a conflict naming both.
        assert_eq!(
            parse(&base(&[
                ("sasl", "plaintext"),
                ("username", "u"),
                ("passwordFromEnv", "p"),
                ("passwordSecret", "a/b/c"),
            ]))
            .unwrap_err(),
            ["passwordFromEnv", "passwordSecret", "passwordFromEnv"]
        );
    }

    fn base(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![
            ("bootstrapServers", "foobar:9092"),
            ("consumerGroup", "my-group"),
            ("topic", "my-topic"),
        ];
        v.extend_from_slice(extra);
        v
    }

    /// KEDA's `parseKafkaMetadataTestDataset` (kafka_scaler_test.go), row by row: whether the
    /// metadata parses, and the partition limitation it gives.
    #[test]
    fn keda_metadata_table_parses_the_same() {
        let t = "my-topic";
        let rows: Vec<(Pairs, bool, Option<Vec<i32>>)> = vec![
            (vec![], true, None),
            (vec![("bootstrapServers", "foobar:9092")], true, None),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                ],
                false,
                None,
            ),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                    ("partitionLimitation", "1,2,3,4,5,6"),
                ],
                false,
                None,
            ),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                    ("partitionLimitation", "           "),
                ],
                false,
                None,
            ),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                    ("partitionLimitation", ""),
                ],
                false,
                None,
            ),
            (base(&[("version", "1.2.3.4")]), true, None),
            (base(&[("lagThreshold", "-1")]), true, None),
            (base(&[("lagThreshold", "0")]), true, None),
            (
                base(&[("lagThreshold", "1000000"), ("activationLagThreshold", "0")]),
                false,
                None,
            ),
            (
                base(&[("lagThreshold", "10"), ("activationLagThreshold", "AA")]),
                true,
                None,
            ),
            (
                base(&[("lagThreshold", "10"), ("activationLagThreshold", "0")]),
                false,
                None,
            ),
            (base(&[]), false, None),
            (
                base(&[("partitionLimitation", "1,2,3,4")]),
                false,
                Some(vec![1, 2, 3, 4]),
            ),
            (
                base(&[("partitionLimitation", "1-4")]),
                false,
                Some(vec![1, 2, 3, 4]),
            ),
            (
                base(&[("partitionLimitation", "1-4,8,10-12")]),
                false,
                Some(vec![1, 2, 3, 4, 8, 10, 11, 12]),
            ),
            (base(&[("partitionLimitation", "a,b,c,d")]), true, None),
            (
                vec![
                    ("bootstrapServers", "foo:9092,bar:9092"),
                    ("consumerGroup", "my-group"),
                    ("topic", t),
                ],
                false,
                None,
            ),
            (base(&[("offsetResetPolicy", "latest")]), false, None),
            (base(&[("offsetResetPolicy", "foo")]), true, None),
            (base(&[("offsetResetPolicy", "earliest")]), false, None),
            (base(&[("allowIdleConsumers", "notvalid")]), true, None),
            (base(&[("allowIdleConsumers", "true")]), false, None),
            (base(&[("excludePersistentLag", "notvalid")]), true, None),
            (base(&[("excludePersistentLag", "true")]), false, None),
            (
                base(&[("allowIdleConsumers", "true"), ("version", "1.0.0")]),
                false,
                None,
            ),
            (base(&[("limitToPartitionsWithLag", "true")]), false, None),
            (
                base(&[("limitToPartitionsWithLag", "notvalid")]),
                true,
                None,
            ),
            (
                base(&[
                    ("allowIdleConsumers", "true"),
                    ("limitToPartitionsWithLag", "true"),
                ]),
                true,
                None,
            ),
            (
                base(&[
                    ("allowIdleConsumers", "true"),
                    ("limitToPartitionsWithLag", "false"),
                ]),
                false,
                None,
            ),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                    ("limitToPartitionsWithLag", "true"),
                ],
                true,
                None,
            ),
            // Beyond KEDA's table: the other invalid combinations of the reference.
            (
                base(&[
                    ("limitToPartitionsWithLag", "true"),
                    ("ensureEvenDistributionOfPartitions", "true"),
                ]),
                true,
                None,
            ),
            (
                vec![
                    ("bootstrapServers", "foobar:9092"),
                    ("consumerGroup", "my-group"),
                    ("ensureEvenDistributionOfPartitions", "true"),
                ],
                true,
                None,
            ),
            (
                base(&[("ensureEvenDistributionOfPartitions", "true")]),
                false,
                None,
            ),
            (base(&[("partitionLimitation", "1-2-3")]), true, None),
            (
                vec![
                    ("bootstrapServersFromEnv", "h:1"),
                    ("consumerGroupFromEnv", "g"),
                ],
                false,
                None,
            ),
        ];
        for (pairs, is_error, limitation) in rows {
            let got = parse(&pairs);
            assert_eq!(got.is_err(), is_error, "{pairs:?}: {got:?}");
            if let Ok(m) = got {
                assert_eq!(m.partition_limitation, limitation, "{pairs:?}");
            }
        }
    }

    /// KEDA's `parseKafkaAuthParamsTestDataset`, with the authentication parameters as an
    /// external trigger receives them: `username`, and the secrets resolved from the workload's
    /// environment (`passwordFromEnv`, `keyFromEnv`, `keyPasswordFromEnv`). OAUTHBEARER and
    /// GSSAPI, which KEDA accepts, are refused by name (Headroom does not support them yet).
    #[test]
    fn keda_auth_table_parses_the_same() {
        let rows: Vec<(Pairs, bool, bool)> = vec![
            (
                vec![
                    ("sasl", "plaintext"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                false,
                false,
            ),
            (
                vec![
                    ("sasl", "scram_sha256"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                false,
                false,
            ),
            (
                vec![
                    ("sasl", "scram_sha512"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                false,
                false,
            ),
            (
                vec![
                    ("tls", "enable"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                false,
                true,
            ),
            (
                vec![("tls", "enable"), ("cert", "ceert"), ("keyFromEnv", "keey")],
                false,
                true,
            ),
            (
                vec![
                    ("tls", "enable"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                    ("keyPasswordFromEnv", "keeyPassword"),
                ],
                false,
                true,
            ),
            (vec![("tls", "enable"), ("ca", "caaa")], false, true),
            (
                vec![
                    ("sasl", "plaintext"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                    ("tls", "enable"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                false,
                true,
            ),
            (
                vec![
                    ("sasl", "plaintext"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                    ("tls", "disable"),
                ],
                false,
                false,
            ),
            (
                vec![
                    ("sasl", "oauthbearer"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                true,
                false,
            ),
            (
                vec![
                    ("sasl", "gssapi"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                true,
                false,
            ),
            (
                vec![
                    ("sasl", "foo"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                ],
                true,
                false,
            ),
            (
                vec![("sasl", "plaintext"), ("passwordFromEnv", "admin")],
                true,
                false,
            ),
            (
                vec![("sasl", "plaintext"), ("username", "admin")],
                true,
                false,
            ),
            (
                vec![("tls", "enable"), ("ca", "caaa"), ("keyFromEnv", "keey")],
                true,
                false,
            ),
            (
                vec![("tls", "enable"), ("ca", "caaa"), ("cert", "ceert")],
                true,
                false,
            ),
            (
                vec![
                    ("tls", "yes"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                true,
                false,
            ),
            (
                vec![
                    ("sasl", "foo"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                    ("tls", "enable"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                true,
                false,
            ),
            (
                vec![
                    ("sasl", "plaintext"),
                    ("passwordFromEnv", "admin"),
                    ("tls", "enable"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                true,
                false,
            ),
            (
                vec![
                    ("sasl", "plaintext"),
                    ("username", "admin"),
                    ("passwordFromEnv", "admin"),
                    ("tls", "enable"),
                    ("ca", "caaa"),
                    ("keyFromEnv", "keey"),
                ],
                true,
                false,
            ),
            (vec![("sasl", "none")], false, false),
            // KEDA ignores TLS material when TLS is off; so does Headroom.
            (
                vec![
                    ("tls", "disable"),
                    ("ca", "caaa"),
                    ("cert", "ceert"),
                    ("keyFromEnv", "keey"),
                ],
                false,
                false,
            ),
            // A secret in plain metadata is refused (KEDA never sees one there).
            (
                vec![
                    ("sasl", "plaintext"),
                    ("username", "admin"),
                    ("password", "admin"),
                ],
                true,
                false,
            ),
            (
                vec![("tls", "enable"), ("cert", "ceert"), ("key", "keey")],
                true,
                false,
            ),
        ];
        for (auth, is_error, tls) in rows {
            let got = parse(&base(&auth));
            assert_eq!(got.is_err(), is_error, "{auth:?}: {got:?}");
            if let Ok(m) = got {
                assert_eq!(m.security.tls, tls, "{auth:?}");
            }
        }
    }

    #[test]
    fn invalid_combinations_name_both_keys() {
        let err = parse(&base(&[
            ("allowIdleConsumers", "true"),
            ("limitToPartitionsWithLag", "true"),
        ]))
        .unwrap_err();
        assert_eq!(err, ["allowIdleConsumers", "limitToPartitionsWithLag"]);
        let err = parse(&[
            ("bootstrapServers", "h:1"),
            ("consumerGroup", "g"),
            ("ensureEvenDistributionOfPartitions", "true"),
        ])
        .unwrap_err();
        assert_eq!(err, ["topic", "ensureEvenDistributionOfPartitions"]);
    }

    #[test]
    fn metric_names_and_partition_limitation_match_keda() {
        let m = parse(&base(&[("partitionLimitation", "1-4,8, 10-12")])).unwrap();
        assert_eq!(m.metric_name(), "kafka-my-topic");
        assert_eq!(
            m.partition_limitation,
            Some(vec![1, 2, 3, 4, 8, 10, 11, 12])
        );
        let m = parse(&[
            ("bootstrapServers", "h:1"),
            ("consumerGroup", "my-group"),
            ("partitionLimitation", "1,2"),
        ])
        .unwrap();
        assert_eq!(m.metric_name(), "kafka-my-group-topics");
        assert_eq!(m.partition_limitation, None, "ignored without a topic");
    }

    fn reading(parts: &[(Option<i64>, i64)]) -> Depth {
        depth_of(KafkaOffsets {
            read_at_ms: 0,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, (committed, latest))| PartitionOffsets {
                    topic: "t".into(),
                    partition: i as i32,
                    latest: *latest,
                    committed: *committed,
                })
                .collect(),
        })
    }

    fn lag(extra: &[(&'static str, &'static str)], d: &Depth) -> (i64, i64) {
        let m = parse(&base(extra)).unwrap();
        let l = m.lag(d, &Persistent::default());
        (l.value, l.with_persistent)
    }

    #[test]
    fn missing_offsets_follow_the_reset_policy() {
        let d = reading(&[(None, 7), (Some(2), 5)]);
        assert_eq!(lag(&[], &d), (4, 4), "latest: 1 + 3");
        assert_eq!(lag(&[("offsetResetPolicy", "earliest")], &d), (10, 10));
        assert_eq!(lag(&[("scaleToZeroOnInvalidOffset", "true")], &d), (3, 3));
        assert_eq!(
            lag(
                &[
                    ("offsetResetPolicy", "earliest"),
                    ("scaleToZeroOnInvalidOffset", "true")
                ],
                &d
            ),
            (3, 3)
        );
    }

    #[test]
    fn value_is_capped_at_the_partition_count_with_integer_division() {
        // 3 partitions, threshold 10: replicas never exceed 3.
        let d = reading(&[(Some(0), 100), (Some(0), 100), (Some(0), 100)]);
        assert_eq!(lag(&[], &d).0, 30);
        assert_eq!(lag(&[], &d).1, 300, "activation sees all of it");
        assert_eq!(lag(&[("allowIdleConsumers", "true")], &d).0, 300);
        // 39 / 10 = 3, not above 3: not capped.
        let d = reading(&[(Some(0), 13), (Some(0), 13), (Some(0), 13)]);
        assert_eq!(lag(&[], &d).0, 39);
        // 40 / 10 = 4 > 3: capped at 30.
        let d = reading(&[(Some(0), 14), (Some(0), 13), (Some(0), 13)]);
        assert_eq!(lag(&[], &d).0, 30);
    }

    #[test]
    fn limit_to_partitions_with_lag_caps_at_those_partitions() {
        let d = reading(&[(Some(0), 100), (Some(5), 5), (Some(9), 9)]);
        assert_eq!(lag(&[("limitToPartitionsWithLag", "true")], &d).0, 10);
        assert_eq!(lag(&[], &d).0, 30);
    }

    #[test]
    fn even_distribution_rounds_up_to_a_factor_of_the_partitions() {
        // Cases worked out by KEDA's rule (the smallest factor covering the lag, else all).
        for (lag, partitions, threshold, want) in [
            (0, 0, 1, 0),
            (1, 10, 1, 1),
            (2, 10, 1, 2),
            (3, 10, 1, 5),
            (6, 10, 1, 10),
            (10, 10, 1, 10),
            (11, 10, 1, 10),
            (100, 10, 10, 10),
            (50, 10, 10, 5),
            (60, 10, 10, 10),
            (25, 10, 10, 5),
            (19, 10, 10, 2),
            (31, 10, 10, 5),
            (7, 6, 2, 6),
            (13, 7, 5, 7),
        ] {
            assert_eq!(
                next_balancing_factor(lag, partitions, threshold),
                want,
                "lag {lag} partitions {partitions} threshold {threshold}"
            );
        }
        assert_eq!(factors(12), [1, 2, 3, 4, 6, 12]);
        assert_eq!(factors(16), [1, 2, 4, 8, 16]);
        // 10 partitions, lag 31, threshold 10: 5 replicas' worth.
        let mut parts = vec![(Some(0), 31)];
        parts.extend(std::iter::repeat_n((Some(0), 0), 9));
        let d = reading(&parts);
        assert_eq!(
            lag(&[("ensureEvenDistributionOfPartitions", "true")], &d).0,
            50
        );
    }

    #[test]
    fn persistent_lag_counts_for_activation_only() {
        let d = reading(&[(Some(5), 10), (Some(0), 3)]);
        let m = parse(&base(&[("excludePersistentLag", "true")])).unwrap();
        let p = Persistent([("t".to_string(), 0)].into_iter().collect());
        let l = m.lag(&d, &p);
        assert_eq!((l.value, l.with_persistent), (3, 8));
        let m = parse(&base(&[])).unwrap();
        assert_eq!(
            m.lag(&d, &p).value,
            8,
            "ignored unless excludePersistentLag"
        );
    }

    #[tokio::test]
    async fn persistent_state_compares_with_an_older_read() {
        let store = SharedState::default();
        let at = |ms: u64, committed: i64| KafkaOffsets {
            read_at_ms: ms,
            partitions: vec![PartitionOffsets {
                topic: "t".into(),
                partition: 0,
                latest: 100,
                committed: Some(committed),
            }],
        };
        let gap = Duration::from_secs(1);
        let p = |set: &Persistent| !set.0.is_empty();
        // First read: nothing to compare with (KEDA: not found, store).
        assert!(!p(&persistent_partitions(&store, "k", &at(0, 5), gap)
            .await
            .unwrap()));
        // Same offset a moment later (same poll): still compared with nothing.
        assert!(!p(&persistent_partitions(&store, "k", &at(100, 5), gap)
            .await
            .unwrap()));
        // Same offset a poll later: persistent.
        assert!(p(&persistent_partitions(&store, "k", &at(5_000, 5), gap)
            .await
            .unwrap()));
        // Moved: not persistent.
        assert!(!p(&persistent_partitions(&store, "k", &at(10_000, 6), gap)
            .await
            .unwrap()));
        // Another trigger has its own state.
        assert!(!p(&persistent_partitions(
            &store,
            "k2",
            &at(10_000, 6),
            gap
        )
        .await
        .unwrap()));
    }

    #[test]
    fn security_is_never_shown() {
        let m = parse(&base(&[
            ("sasl", "scram_sha256"),
            ("username", "alice"),
            ("passwordFromEnv", "pa55word-secret"),
            ("tls", "enable"),
            ("cert", "CERT"),
            ("keyFromEnv", "PRIVATE-KEY-secret"),
        ]))
        .unwrap();
        let shown = format!("{m:?} {:?} {}", m.query(), m.query().endpoint_label());
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(!shown.contains("PRIVATE-KEY"), "{shown}");
        let key = m.query().state_key("ns", "so", "kafka-my-topic");
        assert!(key.starts_with("kafka-persistent-lag:v1:ns/so/"), "{key}");
        assert!(!key.contains("pa55word"), "{key}");
    }

    #[test]
    fn the_persistent_lag_key_is_pinned_and_ignores_credentials() {
        let plain = parse(&base(&[])).unwrap();
        let with_sasl = parse(&base(&[
            ("sasl", "plaintext"),
            ("username", "alice"),
            ("passwordFromEnv", "pw"),
        ]))
        .unwrap();
        let key = plain.query().state_key("ns", "so", "m");
        assert_eq!(key, with_sasl.query().state_key("ns", "so", "m"));
        // A pinned value: a change here orphans stored state (bump keys::KEY_VERSION).
        assert_eq!(key, "kafka-persistent-lag:v1:ns/so/m/99f6d8dc91ea3364");
    }
}
