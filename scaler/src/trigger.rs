//! A trigger: one ScaledObject trigger's metadata, parsed into what to read and how to answer.

use std::collections::HashMap;

use crate::access::Access;
use crate::metadata::{Key, MetadataError, Problem, Reader, declared, normalize_metric_name};
use crate::planner::{self, PlannedConfig};
use crate::sources::kafka::Persistent;
use crate::sources::{Depth, Query, SourceConfig, SourceKind};

/// The keys of every trigger, whatever its source.
pub const KEYS: &[Key] = &[
    Key::required(
        "source",
        "`celery`, `redis-list`, `aws-sqs-queue` or `kafka`",
    ),
    Key::optional(
        "metric",
        "`depth`",
        "`depth`: the KEDA-compatible value and target. `replicas`: [planned mode](planned-mode.md)",
    ),
];

/// What the trigger's metric means.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricMode {
    /// `metric: depth` (default): the KEDA-compatible value and target of the source.
    Depth,
    /// `metric: replicas` (planned mode): value = the replicas the queue-aware policy wants now
    /// and within `leadTimeSeconds` (forecast, schedule), target 1.
    Replicas(Box<PlannedConfig>),
}

/// A parsed trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// `source` (required): `celery`, `redis-list`, `aws-sqs-queue` or `kafka`.
    pub source: SourceConfig,
    /// `metric` (default `depth`).
    pub metric: MetricMode,
    /// The normalised metric name, computed once.
    pub metric_name: String,
}

/// What KEDA receives for a trigger at one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub value: f64,
    pub active: bool,
}

impl Trigger {
    /// Parses a trigger's metadata, reporting every problem at once. `<name>/<key>` Secret
    /// references need the ScaledObject's namespace: see [`Trigger::parse_in`].
    pub fn parse(metadata: &HashMap<String, String>) -> Result<Self, MetadataError> {
        Self::parse_in(metadata, "")
    }

    /// Parses the metadata of a trigger of a ScaledObject in `namespace` (where `...Secret`
    /// references without a namespace point).
    pub fn parse_in(
        metadata: &HashMap<String, String>,
        namespace: &str,
    ) -> Result<Self, MetadataError> {
        Self::parse_with(metadata, namespace, &crate::access::DEFAULT)
    }

    /// Parses the metadata of a trigger of a ScaledObject in `namespace` under the operator's
    /// `access` rules: a `...Secret` key outside the namespaces they allow, or a backend outside
    /// their allow-list, is refused here, before anything is read or sent.
    pub fn parse_with(
        metadata: &HashMap<String, String>,
        namespace: &str,
        access: &Access,
    ) -> Result<Self, MetadataError> {
        let mut r = Reader::new(metadata)
            .in_namespace(namespace)
            .with_access(access);
        if r.has_problems() {
            // Over an input bound: nothing else is judged.
            return Err(r.into_error());
        }
        let kind = match r.string("source") {
            None => {
                r.problem(Problem::Missing {
                    key: "source".into(),
                });
                None
            }
            Some(name) => match SourceKind::from_name(&name) {
                Some(kind) => Some(kind),
                None => {
                    let known: Vec<&str> = SourceKind::ALL.iter().map(|k| k.name()).collect();
                    r.problem(Problem::Invalid {
                        key: "source".into(),
                        value: Some(name),
                        expected: format!("one of {}", known.join(", ")),
                    });
                    None
                }
            },
        };
        let planned = match r.string("metric").as_deref() {
            None | Some("depth") => false,
            Some("replicas") => true,
            Some(other) => {
                r.problem(Problem::Invalid {
                    key: "metric".into(),
                    value: Some(other.into()),
                    expected: "`depth` or `replicas`".into(),
                });
                false
            }
        };
        let Some(kind) = kind else {
            // Without a source the other keys cannot be judged.
            return Err(r.into_error());
        };
        let source = SourceConfig::parse(kind, &mut r);
        if let Some(source) = &source {
            for endpoint in source.endpoints(metadata) {
                if let Some(reason) = access.check_backend(&endpoint) {
                    r.problem(Problem::NotAllowed {
                        key: endpoint.key.to_string(),
                        reason,
                    });
                }
            }
        }
        // The source owns the per-replica target (tasksPerReplica, listLength, ...): planned
        // mode uses it as its fallback when no service time is known.
        let metric = match (&source, planned) {
            (Some(source), true) => planner::parse(&mut r, Some(source.target()))
                .map(|c| MetricMode::Replicas(Box::new(c))),
            _ => Some(MetricMode::Depth),
        };
        let hint = |key: &str| -> Option<String> {
            if !planned && declared(&[planner::KEYS], key) {
                return Some("read only with `metric: replicas`".into());
            }
            let users: Vec<&str> = SourceKind::ALL
                .iter()
                .filter(|k| **k != kind && declared(k.keys(), key))
                .map(|k| k.name())
                .collect();
            (!users.is_empty()).then(|| {
                format!(
                    "read by source {}, not by `{}`",
                    users.join(", "),
                    kind.name()
                )
            })
        };
        // The key tables are the reference (and the docs): a parser reading a key they do
        // not declare is a bug, caught by every parsing test.
        debug_assert!(
            r.read_keys().iter().all(|k| {
                let mut tables = vec![KEYS];
                tables.extend_from_slice(kind.keys());
                if planned {
                    tables.push(planner::KEYS);
                }
                declared(&tables, k)
            }),
            "a parser read an undeclared key: {:?}",
            r.read_keys()
        );
        r.finish(&hint)?;
        let (Some(source), Some(metric)) = (source, metric) else {
            // Every parser records a problem before returning None.
            return Err(MetadataError::one(Problem::Missing {
                key: "source".into(),
            }));
        };
        let metric_name = normalize_metric_name(&source.metric_name());
        Ok(Self {
            source,
            metric,
            metric_name,
        })
    }

    pub fn kind(&self) -> SourceKind {
        self.source.kind()
    }

    /// The target KEDA puts in the HPA (AverageValue per replica).
    pub fn target(&self) -> f64 {
        match self.metric {
            MetricMode::Depth => self.source.target(),
            // The value is already a replica count.
            MetricMode::Replicas(_) => 1.0,
        }
    }

    /// Planned mode's configuration, when the trigger is in planned mode.
    pub fn planned(&self) -> Option<&PlannedConfig> {
        match &self.metric {
            MetricMode::Depth => None,
            MetricMode::Replicas(c) => Some(c),
        }
    }

    pub fn query(&self) -> Query {
        self.source.query()
    }

    /// The KEDA-compatible answer for a reading (`metric: depth`; planned mode is answered by
    /// [`crate::planned::Plans`], which keeps each queue's history). `persistent` only matters
    /// for Kafka's `excludePersistentLag` (see [`crate::sources::kafka::Persistent`]);
    /// activation never depends on it.
    pub fn answer(&self, depth: &Depth, persistent: &Persistent) -> Answer {
        let (value, active) = self.source.evaluate(depth, persistent);
        Answer { value, active }
    }

    /// The answer when no persistent-lag state applies (and for activation, which ignores it).
    pub fn answer_now(&self, depth: &Depth) -> Answer {
        self.answer(depth, &Persistent::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metadata::md;

    #[test]
    fn redis_list_matches_keda_defaults_and_name() {
        let t = Trigger::parse(&md(&[
            ("scalerAddress", "headroom:9090"),
            ("source", "redis-list"),
            ("address", "redis:6379"),
            ("listName", "My.Jobs"),
        ]))
        .unwrap();
        assert_eq!(t.metric_name, "redis-my-jobs");
        assert_eq!(t.target(), 5.0);
        let a = t.answer_now(&Depth::simple(0, 0));
        assert_eq!((a.value, a.active), (0.0, false));
        let a = t.answer_now(&Depth::simple(1, 0));
        assert!(a.active);
    }

    #[test]
    fn activation_is_strictly_above_the_threshold() {
        let t = Trigger::parse(&md(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("activationTasks", "3"),
        ]))
        .unwrap();
        let at = |waiting, in_flight| t.answer_now(&Depth::simple(waiting, in_flight)).active;
        assert!(!at(3, 0));
        assert!(at(3, 1));
        assert!(at(4, 0));
    }

    #[test]
    fn source_problems_are_invalid_argument_material() {
        let err = Trigger::parse(&md(&[("source", "rabbitmq")])).unwrap_err();
        assert_eq!(err.keys(), ["source"]);
        assert!(
            err.to_string().contains("one of celery, redis-list"),
            "{err}"
        );
        let err = Trigger::parse(&md(&[("address", "r:1")])).unwrap_err();
        assert_eq!(err.keys(), ["source"]);
    }

    #[test]
    fn keys_of_another_source_get_a_hint() {
        let err = Trigger::parse(&md(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("listName", "x"),
        ]))
        .unwrap_err();
        assert_eq!(err.keys(), ["listName"]);
        assert!(
            err.to_string().contains("read by source redis-list"),
            "{err}"
        );
    }

    #[test]
    fn planned_mode_targets_one_replica_and_reads_its_keys() {
        let t = Trigger::parse(&md(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("metric", "replicas"),
            ("tasksPerReplica", "4"),
            ("serviceTimeSeconds", "20"),
            ("schedule", "0 8 * * 1-5 for 10h = 20"),
            ("timezone", "Europe/Berlin"),
            ("leadTimeSeconds", "180"),
        ]))
        .unwrap();
        assert_eq!(t.target(), 1.0);
        let c = t.planned().unwrap();
        assert_eq!(c.policy.tasks_per_replica, 4.0, "the source's own target");
        assert_eq!(c.policy.service_time, Some(20.0));
        assert_eq!(c.lead_time_seconds, 180.0);
        assert_eq!(t.metric_name, "celery-celery", "same name as in depth mode");
    }

    #[test]
    fn every_declared_key_is_read_by_its_parser() {
        // The other direction (no key is read that is not declared) is the debug assertion in
        // `parse_with`, which every parsing test exercises.
        let unread = |m: &HashMap<String, String>| -> Vec<Problem> {
            match Trigger::parse(m) {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .problems
                    .into_iter()
                    .filter(|p| matches!(p, Problem::Unknown { .. } | Problem::TooLarge { .. }))
                    .collect(),
            }
        };
        // Every key of a source at once (values need not be valid: sources read every key
        // before judging them).
        for kind in SourceKind::ALL {
            let mut m: HashMap<String, String> = kind
                .keys()
                .iter()
                .flat_map(|t| t.iter())
                .map(|k| (k.name.to_string(), "1".to_string()))
                .collect();
            m.insert("source".into(), kind.name().into());
            m.insert("metric".into(), "depth".into());
            let unread = unread(&m);
            assert!(
                unread.is_empty(),
                "{}: declared keys not read: {unread:?}",
                kind.name()
            );
        }
        // Planned mode's keys, on a valid trigger of each source (planned mode is parsed only
        // once the source is).
        let base: [&[(&str, &str)]; 4] = [
            &[("source", "celery"), ("address", "r:1")],
            &[
                ("source", "redis-list"),
                ("address", "r:1"),
                ("listName", "j"),
            ],
            &[
                ("source", "aws-sqs-queue"),
                ("queueURL", "https://sqs.eu-west-1.amazonaws.com/1/q"),
                ("awsRegion", "eu-west-1"),
            ],
            &[
                ("source", "kafka"),
                ("bootstrapServers", "k:9092"),
                ("consumerGroup", "g"),
                ("topic", "t"),
            ],
        ];
        for pairs in base {
            let mut m = md(pairs);
            m.insert("metric".into(), "replicas".into());
            for k in planner::KEYS {
                let value = match k.name {
                    "schedule" => "0 8 * * * for 1h = 2",
                    "timezone" => "UTC",
                    "forecast" => "seasonal",
                    "maxReplicas" => "10",
                    _ => "1",
                };
                m.insert(k.name.into(), value.into());
            }
            let unread = unread(&m);
            assert!(
                unread.is_empty(),
                "{pairs:?}: planned keys not read: {unread:?}"
            );
        }
    }

    #[test]
    fn planned_keys_without_planned_mode_are_named() {
        let err = Trigger::parse(&md(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("schedule", "0 8 * * * for 1h = 2"),
        ]))
        .unwrap_err();
        assert_eq!(err.keys(), ["schedule"]);
        assert!(err.to_string().contains("metric: replicas"), "{err}");
        let err = Trigger::parse(&md(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("metric", "replica"),
        ]))
        .unwrap_err();
        assert_eq!(err.keys(), ["metric"]);
    }

    #[test]
    fn bad_planned_keys_are_invalid_argument_material() {
        let err = Trigger::parse(&md(&[
            ("source", "redis-list"),
            ("address", "r:1"),
            ("listName", "jobs"),
            ("metric", "replicas"),
            ("concurrency", "0"),
            ("schedule", "61 8 * * * for 1h = 2"),
        ]))
        .unwrap_err();
        assert_eq!(err.keys(), ["concurrency", "schedule"]);
    }
}

/// The parser is KEDA's first contact with whatever a user wrote: it must never panic, and what
/// it accepts must be usable (a normalised name, a positive target).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        let mut known: Vec<String> = SourceKind::ALL
            .iter()
            .flat_map(|k| k.keys().iter().flat_map(|t| t.iter()))
            .map(|k| k.name.to_string())
            .collect();
        known.extend(KEYS.iter().map(|k| k.name.to_string()));
        known.push("scalerAddress".into());
        known.extend(planner::KEYS.iter().map(|k| k.name.to_string()));
        let with_env: Vec<String> = known.iter().map(|k| format!("{k}FromEnv")).collect();
        known.extend(with_env);
        prop_oneof![
            4 => proptest::sample::select(known),
            1 => "\\PC{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "celery",
                "redis-list",
                "aws-sqs-queue",
                "kafka",
                "depth",
                "replicas",
                "true",
                "false",
                "0",
                "1",
                "-1",
                "5",
                "5.0",
                "",
                " ",
                "127.0.0.1:6379",
                "[::1]:6379",
                "h:0",
                "h:65536",
                "redis://h:1/2",
                "rediss://u:p@h/0#insecure",
                "a,b",
                ",",
                "0,3,6,9",
                "\\x06\\x16",
                "\\x",
                "99999999999999999999",
                "seasonal",
                "0 8 * * 1-5 for 10h = 20",
                "Europe/Berlin",
                "*/5 * * * * for 1m = 3; 0 12 * * * for 90m = 40",
                "https://sqs.eu-west-1.amazonaws.com/123/q",
                "https://h/a",
                "h:9092,k:9093",
                "1-4,8,10-12",
                "5-3",
                "latest",
                "earliest",
                "enable",
                "scram_sha512",
                "eu-west-1",
                "arn:aws:iam::1:role/r",
            ])
            .prop_map(String::from),
            "\\PC{0,24}",
            any::<i64>().prop_map(|n| n.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn any_metadata_parses_or_names_a_key(md in proptest::collection::hash_map(key(), value(), 0..12)) {
            match Trigger::parse(&md) {
                Ok(t) => {
                    prop_assert!(t.target() > 0.0 && t.target().is_finite());
                    prop_assert!(t.metric_name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
                    let _ = t.query();
                }
                Err(e) => {
                    prop_assert!(!e.problems.is_empty());
                    prop_assert!(!e.keys().is_empty());
                    prop_assert!(e.to_string().starts_with("invalid trigger metadata: "));
                }
            }
        }

        #[test]
        fn well_formed_celery_metadata_round_trips(
            queues in proptest::collection::btree_set("[a-z][a-z0-9_.-]{0,15}", 1..5),
            per_replica in 1i64..1000,
            activation in 0i64..1000,
            db in 0i64..16,
            port in 1u16..,
        ) {
            let queues: Vec<String> = queues.into_iter().collect();
            let md: HashMap<String, String> = [
                ("source", "celery".to_string()),
                ("host", "redis.svc".to_string()),
                ("port", port.to_string()),
                ("databaseIndex", db.to_string()),
                ("queues", queues.join(",")),
                ("tasksPerReplica", per_replica.to_string()),
                ("activationTasks", activation.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let t = Trigger::parse(&md).unwrap();
            prop_assert_eq!(t.target(), per_replica as f64);
            let SourceConfig::Celery(c) = &t.source else { unreachable!() };
            prop_assert_eq!(&c.queues, &queues);
            prop_assert_eq!(c.endpoint.port, port);
            prop_assert_eq!(c.endpoint.db, db);
            let d = Depth::simple(activation as u64, 1);
            prop_assert!(t.answer_now(&d).active);
        }
    }
}

#[cfg(test)]
mod access {
    use super::*;
    use crate::metadata::md;

    fn refused_keys(e: &MetadataError) -> Vec<&str> {
        e.problems
            .iter()
            .filter_map(|p| match p {
                Problem::NotAllowed { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_secret_in_another_namespace_is_refused_before_anything_is_read() {
        let m = md(&[
            ("source", "celery"),
            ("address", "evil.example:6379"),
            ("passwordSecret", "kube-system/x/token"),
        ]);
        let e = Trigger::parse_in(&m, "apps").unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert_eq!(refused_keys(&e), ["passwordSecret"], "{e}");
        let status = tonic::Status::from(crate::error::Error::Metadata(e));
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("kube-system"),
            "{}",
            status.message()
        );
        // In the ScaledObject's own namespace, or a shared one, it parses.
        let own = md(&[
            ("source", "celery"),
            ("address", "r:6379"),
            ("passwordSecret", "apps/x/token"),
        ]);
        assert!(Trigger::parse_in(&own, "apps").is_ok());
        let shared = Access::new(Some("kube-system"), None).unwrap();
        assert!(Trigger::parse_with(&m, "apps", &shared).is_ok());
        // With no namespace known, only shared namespaces may be named.
        assert!(Trigger::parse_in(&own, "").unwrap_err().is_refusal());
    }

    #[test]
    fn backends_outside_the_allow_list_are_refused_naming_their_key() {
        let access = Access::new(
            None,
            Some("redis.queues.svc, *.kafka.svc, https://sqs.eu-west-1.amazonaws.com/1/"),
        )
        .unwrap();
        // (metadata, the keys refused)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[("source", "celery"), ("address", "redis.queues.svc:6379")],
                &[],
            ),
            (
                &[("source", "celery"), ("address", "evil.example:6379")],
                &["address"],
            ),
            (
                &[
                    ("source", "redis-list"),
                    ("listName", "q"),
                    ("host", "10.0.0.1"),
                    ("port", "6379"),
                ],
                &["host"],
            ),
            (
                &[
                    ("source", "celery"),
                    ("url", "redis://:pw@evil.example:6379/0"),
                ],
                &["url"],
            ),
            (
                &[
                    ("source", "kafka"),
                    ("bootstrapServers", "b-1.kafka.svc:9092,evil:9092"),
                    ("consumerGroup", "g"),
                    ("topic", "t"),
                ],
                &["bootstrapServers"],
            ),
            (
                &[
                    ("source", "aws-sqs-queue"),
                    ("queueURL", "https://sqs.eu-west-1.amazonaws.com/1/jobs"),
                    ("awsRegion", "eu-west-1"),
                ],
                &[],
            ),
            (
                &[
                    ("source", "aws-sqs-queue"),
                    ("queueURL", "https://sqs.eu-west-1.amazonaws.com/2/jobs"),
                    ("awsRegion", "eu-west-1"),
                ],
                &["queueURL"],
            ),
            (
                &[
                    ("source", "aws-sqs-queue"),
                    ("queueURL", "jobs"),
                    ("awsRegion", "us-east-1"),
                ],
                &["awsRegion"],
            ),
            (
                &[
                    ("source", "aws-sqs-queue"),
                    ("queueURL", "https://sqs.eu-west-1.amazonaws.com/1/jobs"),
                    ("awsRegion", "eu-west-1"),
                    ("awsEndpoint", "http://evil.example:4566"),
                ],
                &["awsEndpoint"],
            ),
        ];
        for (pairs, refused) in cases {
            let m = md(pairs);
            match Trigger::parse_with(&m, "apps", &access) {
                Ok(_) => assert!(refused.is_empty(), "{pairs:?} was accepted"),
                Err(e) => {
                    assert!(e.is_refusal(), "{pairs:?}: {e}");
                    assert_eq!(refused_keys(&e), *refused, "{pairs:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn an_sqs_region_cannot_steer_the_endpoint_host() {
        let m = md(&[
            ("source", "aws-sqs-queue"),
            ("queueURL", "jobs"),
            ("awsRegion", "x.evil.example#"),
        ]);
        let e = Trigger::parse(&m).unwrap_err();
        assert_eq!(e.keys(), ["awsRegion"], "{e}");
    }

    #[test]
    fn metadata_over_the_bounds_is_refused_without_being_parsed() {
        let mut m = md(&[("source", "kafka"), ("bootstrapServers", "k:9092")]);
        m.insert(
            "partitionLimitation".into(),
            "0-100000,".repeat(crate::bounds::MAX_METADATA_BYTES / 9),
        );
        let e = Trigger::parse(&m).unwrap_err();
        assert!(
            e.problems
                .iter()
                .all(|p| matches!(p, Problem::TooLarge { .. })),
            "{e}"
        );
        assert!(e.to_string().len() < 1_000, "{}", e.to_string().len());
    }

    #[test]
    fn amplifying_values_within_the_size_bound_are_refused_cheaply() {
        // 9 bytes per 100 001 partitions: refused at the total, not expanded.
        let m = md(&[
            ("source", "kafka"),
            ("bootstrapServers", "k:9092"),
            ("consumerGroup", "g"),
            ("topic", "t"),
            ("partitionLimitation", &"0-100000,".repeat(100)),
        ]);
        let started = std::time::Instant::now();
        let e = Trigger::parse(&m).unwrap_err();
        assert_eq!(e.keys(), ["partitionLimitation"], "{e}");
        assert!(e.to_string().contains("10000 partitions"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));

        let queues: Vec<String> = (0..100).map(|i| format!("q{i}")).collect();
        let m = md(&[
            ("source", "celery"),
            ("address", "r:6379"),
            ("queues", &queues.join(",")),
        ]);
        let e = Trigger::parse(&m).unwrap_err();
        assert_eq!(e.keys(), ["queues"], "{e}");
        assert!(e.to_string().contains("400 lists"), "{e}");

        let windows = vec!["0 9 * * * for 1h = 2"; 33].join("; ");
        let m = md(&[
            ("source", "celery"),
            ("address", "r:6379"),
            ("metric", "replicas"),
            ("schedule", &windows),
        ]);
        let e = Trigger::parse(&m).unwrap_err();
        assert_eq!(e.keys(), ["schedule"], "{e}");
    }
}
