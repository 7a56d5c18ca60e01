//! `source: kafka` over KEDA's gRPC protocol against Apache Kafka itself (single-node KRaft),
//! with real producers and committing consumer groups: caught-up, lagging, never-committed,
//! idle-consumer and persistent-lag cases, SASL and TLS, outages.
//!
//! One broker serves the tests of this binary (a JVM per test would not fit two cores); the
//! outage test starts its own. Every test uses its own topics and groups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use headroom_integration::kafka::{self as kb, KafkaBroker};
use headroom_integration::*;
use headroom_scaler::server::ServeConfig;

fn broker() -> &'static KafkaBroker {
    static BROKER: OnceLock<KafkaBroker> = OnceLock::new();
    BROKER.get_or_init(|| KafkaBroker::start().expect("start the Kafka broker"))
}

fn meta(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    pairs.into_iter().collect()
}

async fn value(
    c: &mut headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    group: &str,
    topic: Option<&str>,
    extra: &[(&str, &str)],
) -> Poll {
    poll(c, &meta(broker().trigger(group, topic, extra)))
        .await
        .unwrap_or_else(|e| panic!("{group} {topic:?} {extra:?}: {e:?}"))
}

/// A 3-partition topic with 10, 20 and 30 messages.
async fn topic_10_20_30(name: &str) {
    let b = broker();
    b.create_topic(name, 3).await.unwrap();
    for (p, n) in [(0, 10), (1, 20), (2, 30)] {
        b.produce(name, p, n).unwrap();
    }
}

fn no_cache() -> ServeConfig {
    ServeConfig {
        observation_ttl: Duration::ZERO,
        ..ServeConfig::local()
    }
}

#[tokio::test]
async fn lag_matches_keda_for_caught_up_lagging_and_never_committed_groups() {
    let b = broker();
    topic_10_20_30("orders").await;
    b.commit("caught-up", "orders", &[(0, 10), (1, 20), (2, 30)])
        .unwrap();
    b.commit("lagging", "orders", &[(0, 5), (1, 10), (2, 0)])
        .unwrap();
    let (_s, mut c) = start_scaler(no_cache()).await.unwrap();

    let p = value(&mut c, "caught-up", Some("orders"), &[]).await;
    assert_eq!(p.metric_name, "kafka-orders");
    assert_eq!((p.target, p.target_int), (10.0, 10));
    assert_eq!((p.value, p.active), (0.0, false));

    // Lag 5 + 10 + 30 = 45; 45 / 10 = 4 > 3 partitions: capped at 3 × 10.
    let p = value(&mut c, "lagging", Some("orders"), &[]).await;
    assert_eq!((p.value, p.active), (30.0, true));
    // Idle consumers allowed: the whole lag.
    assert_eq!(
        value(
            &mut c,
            "lagging",
            Some("orders"),
            &[("allowIdleConsumers", "true")]
        )
        .await
        .value,
        45.0
    );
    // Only partitions 0 and 1: 15.
    assert_eq!(
        value(
            &mut c,
            "lagging",
            Some("orders"),
            &[("partitionLimitation", "0-1")]
        )
        .await
        .value,
        15.0
    );
    // Activation is strict: 45 is not above 45.
    assert!(
        !value(
            &mut c,
            "lagging",
            Some("orders"),
            &[("activationLagThreshold", "45")]
        )
        .await
        .active
    );
    assert!(
        value(
            &mut c,
            "lagging",
            Some("orders"),
            &[("activationLagThreshold", "44")]
        )
        .await
        .active
    );

    // A group that never committed: `latest` counts 1 per partition, `earliest` the latest
    // offset (capped), and scaleToZeroOnInvalidOffset 0.
    let p = value(&mut c, "never", Some("orders"), &[]).await;
    assert_eq!((p.value, p.active), (3.0, true));
    let p = value(
        &mut c,
        "never",
        Some("orders"),
        &[("offsetResetPolicy", "earliest")],
    )
    .await;
    assert_eq!((p.value, p.active), (30.0, true));
    let p = value(
        &mut c,
        "never",
        Some("orders"),
        &[
            ("offsetResetPolicy", "earliest"),
            ("allowIdleConsumers", "true"),
        ],
    )
    .await;
    assert_eq!(p.value, 60.0);
    let p = value(
        &mut c,
        "never",
        Some("orders"),
        &[("scaleToZeroOnInvalidOffset", "true")],
    )
    .await;
    assert_eq!((p.value, p.active), (0.0, false));
}

#[tokio::test]
async fn limits_and_even_distribution_use_the_partition_counts() {
    let b = broker();
    b.create_topic("six", 6).await.unwrap();
    b.produce("six", 0, 31).unwrap();
    b.produce("six", 1, 1).unwrap();
    b.commit(
        "g6",
        "six",
        &[(0, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0)],
    )
    .unwrap();
    let (_s, mut c) = start_scaler(no_cache()).await.unwrap();
    // Lag 31 on one partition out of 6.
    assert_eq!(value(&mut c, "g6", Some("six"), &[]).await.value, 31.0);
    assert_eq!(
        value(
            &mut c,
            "g6",
            Some("six"),
            &[("limitToPartitionsWithLag", "true")]
        )
        .await
        .value,
        10.0,
        "one partition has lag: at most 1 replica's worth"
    );
    // Factors of 6: 1, 2, 3, 6; the smallest covering 31 at 10 each is 6.
    assert_eq!(
        value(
            &mut c,
            "g6",
            Some("six"),
            &[("ensureEvenDistributionOfPartitions", "true")]
        )
        .await
        .value,
        60.0
    );
    assert_eq!(
        value(
            &mut c,
            "g6",
            Some("six"),
            &[
                ("ensureEvenDistributionOfPartitions", "true"),
                ("lagThreshold", "15")
            ]
        )
        .await
        .value,
        45.0,
        "3 × 15 ≥ 31"
    );
}

#[tokio::test]
async fn without_a_topic_every_topic_the_group_committed_counts() {
    let b = broker();
    b.create_topic("multi-a", 2).await.unwrap();
    b.create_topic("multi-b", 1).await.unwrap();
    b.create_topic("multi-other", 1).await.unwrap();
    b.produce("multi-a", 0, 4).unwrap();
    b.produce("multi-a", 1, 4).unwrap();
    b.produce("multi-b", 0, 7).unwrap();
    b.produce("multi-other", 0, 100).unwrap();
    b.commit("multi", "multi-a", &[(0, 1)]).unwrap();
    b.commit("multi", "multi-b", &[(0, 2)]).unwrap();
    let (_s, mut c) = start_scaler(no_cache()).await.unwrap();
    let p = value(&mut c, "multi", None, &[("allowIdleConsumers", "true")]).await;
    assert_eq!(p.metric_name, "kafka-multi-topics");
    // multi-a: 3 + 1 (partition 1 never committed, `latest`); multi-b: 5; multi-other: not the
    // group's.
    assert_eq!(p.value, 9.0);
    // Capped at the 3 partitions of the group's topics.
    assert_eq!(
        value(&mut c, "multi", None, &[("lagThreshold", "2")])
            .await
            .value,
        6.0
    );
}

#[tokio::test]
async fn unknown_topics_and_groups_are_not_found_and_bad_metadata_names_keys() {
    let b = broker();
    b.create_topic("known", 1).await.unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    for (group, topic, extra) in [
        ("g", Some("no-such-topic"), vec![]),
        ("no-such-group", None, vec![]),
        ("g", Some("known"), vec![("partitionLimitation", "5-7")]),
    ] {
        let start = Instant::now();
        let err = poll(&mut c, &meta(b.trigger(group, topic, &extra)))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::NotFound,
            "{group} {topic:?}: {err:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        eprintln!("{}", err.message());
    }
    for (extra, keys) in [
        (
            vec![
                ("allowIdleConsumers", "true"),
                ("limitToPartitionsWithLag", "true"),
            ],
            vec!["allowIdleConsumers", "limitToPartitionsWithLag"],
        ),
        (
            vec![
                ("limitToPartitionsWithLag", "true"),
                ("ensureEvenDistributionOfPartitions", "true"),
            ],
            vec![
                "limitToPartitionsWithLag",
                "ensureEvenDistributionOfPartitions",
            ],
        ),
        (vec![("lagThreshold", "0")], vec!["lagThreshold"]),
        (
            vec![("offsetResetPolicy", "newest")],
            vec!["offsetResetPolicy"],
        ),
        (
            vec![("sasl", "plaintext"), ("username", "u")],
            vec!["passwordFromEnv"],
        ),
        (
            vec![
                ("sasl", "plaintext"),
                ("username", "u"),
                ("password", "hunter2"),
            ],
            vec!["password"],
        ),
    ] {
        let err = c
            .get_metric_spec(so_ref(meta(b.trigger("g", Some("known"), &extra))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{extra:?}");
        for k in keys {
            assert!(
                err.message().contains(&format!("`{k}`")),
                "{}",
                err.message()
            );
        }
        assert!(!err.message().contains("hunter2"));
    }
    // Without a topic: limitToPartitionsWithLag names both keys.
    let err = c
        .get_metric_spec(so_ref(meta(b.trigger(
            "g",
            None,
            &[("limitToPartitionsWithLag", "true")],
        ))))
        .await
        .unwrap_err();
    assert!(err.message().contains("`topic`"), "{}", err.message());
}

#[tokio::test]
async fn persistent_lag_counts_for_activation_but_not_the_value() {
    let b = broker();
    b.create_topic("stuck", 2).await.unwrap();
    b.produce("stuck", 0, 10).unwrap();
    b.produce("stuck", 1, 10).unwrap();
    b.commit("stuck-g", "stuck", &[(0, 4), (1, 4)]).unwrap();
    let config = ServeConfig {
        observation_ttl: Duration::ZERO,
        persistent_lag_interval: Duration::from_millis(300),
        ..ServeConfig::local()
    };
    let (_s, mut c) = start_scaler(config).await.unwrap();
    let opts = [
        ("excludePersistentLag", "true"),
        ("allowIdleConsumers", "true"),
    ];
    // First read: nothing to compare with.
    assert_eq!(
        value(&mut c, "stuck-g", Some("stuck"), &opts).await.value,
        12.0
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Nothing moved since: the lag is persistent, the trigger stays active.
    let p = value(&mut c, "stuck-g", Some("stuck"), &opts).await;
    assert_eq!((p.value, p.active), (0.0, true));
    // Partition 1 moves on: only its lag counts.
    b.commit("stuck-g", "stuck", &[(1, 7)]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        value(&mut c, "stuck-g", Some("stuck"), &opts).await.value,
        3.0
    );
}

#[tokio::test]
async fn persistent_lag_state_is_shared_through_redis_and_a_dead_store_is_an_error() {
    let b = broker();
    b.create_topic("shared-stuck", 1).await.unwrap();
    b.produce("shared-stuck", 0, 10).unwrap();
    b.commit("shared-g", "shared-stuck", &[(0, 2)]).unwrap();
    let mut redis = RedisServer::start(&[]).unwrap();
    let config = ServeConfig {
        observation_ttl: Duration::ZERO,
        persistent_lag_interval: Duration::from_millis(300),
        history_url: Some(redis.url()),
        ..ServeConfig::local()
    };
    // Two scaler replicas: KEDA's calls land on either.
    let (_a, mut ca) = start_scaler(config.clone()).await.unwrap();
    let (_b, mut cb) = start_scaler(config).await.unwrap();
    let opts = [("excludePersistentLag", "true")];
    assert_eq!(
        value(&mut ca, "shared-g", Some("shared-stuck"), &opts)
            .await
            .value,
        8.0
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p = value(&mut cb, "shared-g", Some("shared-stuck"), &opts).await;
    assert_eq!((p.value, p.active), (0.0, true), "replica B saw A's read");

    redis.stop();
    let err = poll(
        &mut ca,
        &meta(b.trigger("shared-g", Some("shared-stuck"), &opts)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // Triggers without excludePersistentLag do not need the store.
    assert_eq!(
        value(&mut ca, "shared-g", Some("shared-stuck"), &[])
            .await
            .value,
        8.0
    );
}

#[tokio::test]
async fn sasl_plain_and_scram_read_and_wrong_passwords_are_permission_denied() {
    let b = broker();
    b.create_topic("secured", 1).await.unwrap();
    b.produce("secured", 0, 5).unwrap();
    // A failed SCRAM exchange is answered by the broker at once, but on a loaded machine the
    // whole round (connect, handshake, authenticate) once took over the default 2 s, which
    // answers UNAVAILABLE (timeout) instead: give the reads room, and check the code.
    let (_s, mut c) = start_scaler(ServeConfig {
        backend_timeout: Duration::from_secs(15),
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let sasl_servers = format!("127.0.0.1:{}", b.sasl_port);
    for (mechanism, user, password) in [
        ("plaintext", kb::PLAIN_USER, kb::PLAIN_PASSWORD),
        ("scram_sha256", kb::SCRAM_USER, kb::SCRAM_PASSWORD),
        ("scram_sha512", kb::SCRAM_USER, kb::SCRAM_PASSWORD),
    ] {
        let m = meta(b.trigger(
            "sasl-g",
            Some("secured"),
            &[
                ("bootstrapServers", &sasl_servers),
                ("sasl", mechanism),
                ("username", user),
                ("passwordFromEnv", password),
            ],
        ));
        let p = poll(&mut c, &m)
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: {e:?}"));
        assert_eq!((p.value, p.active), (1.0, true), "{mechanism}");

        let mut wrong = m.clone();
        wrong.insert("passwordFromEnv".into(), "wrong-pa55word".into());
        let err = poll(&mut c, &wrong).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{mechanism}: {err:?}"
        );
        assert!(
            !err.message().contains("wrong-pa55word"),
            "{}",
            err.message()
        );
        assert!(!err.message().contains(password), "{}", err.message());
    }
}

#[tokio::test]
async fn tls_reads_with_the_ca_and_fails_without_it() {
    let b = broker();
    b.create_topic("tls-topic", 1).await.unwrap();
    b.produce("tls-topic", 0, 3).unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let servers = format!("127.0.0.1:{}", b.ssl_port);
    let with_ca = meta(b.trigger(
        "tls-g",
        Some("tls-topic"),
        &[
            ("bootstrapServers", &servers),
            ("tls", "enable"),
            ("ca", &b.tls.ca_pem),
        ],
    ));
    assert_eq!(poll(&mut c, &with_ca).await.unwrap().value, 1.0);
    let insecure = meta(b.trigger(
        "tls-g",
        Some("tls-topic"),
        &[
            ("bootstrapServers", &servers),
            ("tls", "enable"),
            ("unsafeSsl", "true"),
        ],
    ));
    assert_eq!(poll(&mut c, &insecure).await.unwrap().value, 1.0);
    let unverifiable = meta(b.trigger(
        "tls-g",
        Some("tls-topic"),
        &[("bootstrapServers", &servers), ("tls", "enable")],
    ));
    let start = Instant::now();
    let err = poll(&mut c, &unverifiable).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unavailable
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    eprintln!("unverifiable broker: {:?}: {}", err.code(), err.message());
}

#[tokio::test]
async fn a_listener_that_never_answers_is_unavailable_within_the_deadline() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let _held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "kafka"),
        ("bootstrapServers", &addr),
        ("consumerGroup", "g"),
        ("topic", "t"),
    ]);
    for _ in 0..2 {
        let start = Instant::now();
        let err = poll(&mut c, &m).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn push_activates_within_a_second_of_the_first_message() {
    let b = broker();
    b.create_topic("push-topic", 2).await.unwrap();
    b.produce("push-topic", 0, 3).unwrap();
    b.commit("push-g", "push-topic", &[(0, 3), (1, 0)]).unwrap();
    let (s, c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = meta(b.trigger("push-g", Some("push-topic"), &[]));
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut c = c.clone();
        let mut st = c
            .stream_is_active(so_ref(m.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !st.next().await.unwrap().unwrap().result,
            "caught up: false first"
        );
        streams.push(st);
    }
    assert_eq!(s.scaler.push_watchers(), 1);
    let before = s.scaler.observations().backend_reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = s.scaler.observations().backend_reads() - before;
    assert!(
        (4..=12).contains(&reads),
        "20 streams made {reads} reads in 2 s"
    );
    let sent = Instant::now();
    tokio::task::spawn_blocking(|| broker().produce("push-topic", 1, 1).unwrap())
        .await
        .unwrap();
    let produced = sent.elapsed();
    let msg = tokio::time::timeout(Duration::from_secs(5), streams[0].next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let latency = sent.elapsed();
    assert!(msg.result);
    eprintln!("produce took {produced:?}; true {latency:?} after it began");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

#[tokio::test]
async fn one_read_per_group_per_ttl_and_one_handle_per_group() {
    let b = broker();
    topic_10_20_30("fanout").await;
    b.commit("fan-g", "fanout", &[(0, 10), (1, 20), (2, 29)])
        .unwrap();
    let (s, c) = start_scaler(ServeConfig::local()).await.unwrap();
    let before = s.scaler.observations().backend_reads();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let mut c = c.clone();
        let threshold = (1 + i % 5).to_string();
        let m = meta(b.trigger("fan-g", Some("fanout"), &[("lagThreshold", &threshold)]));
        tasks.push(tokio::spawn(async move { poll(&mut c, &m).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().value, 1.0);
    }
    let reads = s.scaler.observations().backend_reads() - before;
    assert!(reads <= 3, "500 triggers made {reads} reads");
    let kafka = &s.scaler.observations().backends().kafka;
    assert_eq!(kafka.len(), 1);
    // An idle handle is closed by the sweeper, and made again by the next read.
    assert_eq!(kafka.sweep(Duration::from_secs(600)), 0, "just used");
    assert_eq!(kafka.sweep(Duration::ZERO), 1);
    assert!(kafka.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = c.clone();
    let m = meta(b.trigger("fan-g", Some("fanout"), &[]));
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 1.0);
    assert_eq!(kafka.len(), 1);
}

#[tokio::test]
async fn broker_outage_is_unavailable_and_recovers_without_restarting_the_scaler() {
    let mut own = KafkaBroker::start().unwrap();
    own.create_topic("outage", 1).await.unwrap();
    own.produce("outage", 0, 6).unwrap();
    own.commit("outage-g", "outage", &[(0, 2)]).unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = meta(own.trigger(
        "outage-g",
        Some("outage"),
        &[("allowIdleConsumers", "true")],
    ));
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 4.0);

    own.stop();
    let err = eventually(
        Duration::from_secs(15),
        "UNAVAILABLE while the broker is down",
        || {
            let mut c = c.clone();
            let m = m.clone();
            async move { poll(&mut c, &m).await.err() }
        },
    )
    .await
    .unwrap();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    own.restart().unwrap();
    let back = Instant::now();
    own.produce("outage", 0, 1).unwrap();
    eventually(Duration::from_secs(20), "values after the restart", || {
        let mut c = c.clone();
        let m = m.clone();
        async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 5.0) }
    })
    .await
    .unwrap();
    eprintln!(
        "right values {:?} after the broker was back",
        back.elapsed()
    );
}

/// `headroom-scaler check` on the Kafka example (`examples/kafka/scaledobject.yaml`;
/// SASL/SCRAM-SHA-512; TLS off here, as the test broker's SASL listener is plaintext), with the
/// worker's environment giving the credentials: what KEDA would receive.
#[tokio::test]
async fn the_example_scaled_object_checks_against_a_real_broker() {
    use headroom_scaler::check::{Target, triggers_from_yaml};
    let b = broker();
    b.create_topic("documents", 4).await.unwrap();
    b.produce("documents", 0, 120).unwrap();
    b.commit("embedder", "documents", &[(0, 20), (1, 0), (2, 0), (3, 0)])
        .unwrap();
    let yaml =
        std::fs::read_to_string(repo_root().join("examples/kafka/scaledobject.yaml")).unwrap();
    let env = |k: &str| match k {
        "KAFKA_USERNAME" => Some(kb::SCRAM_USER.to_string()),
        "KAFKA_PASSWORD" => Some(kb::SCRAM_PASSWORD.to_string()),
        _ => None,
    };
    let mut inputs = triggers_from_yaml(&yaml, &env).unwrap();
    let mut input = inputs.remove(0);
    assert!(
        !input.metadata.contains_key("caFromEnv"),
        "missing env drops the key"
    );
    input.metadata.insert(
        "bootstrapServers".into(),
        format!("127.0.0.1:{}", b.sasl_port),
    );
    input.metadata.insert("tls".into(), "disable".into());
    let report = Target::local(Duration::from_secs(2)).evaluate(input).await;
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(
        report.keda_metric_name.as_deref(),
        Some("s0-kafka-documents")
    );
    // Lag 100 on one of 4 partitions, 50 per replica: 100 (2 replicas, under the cap of 4).
    assert_eq!(
        (report.target, report.value, report.active),
        (Some(50.0), Some(100.0), Some(true))
    );
}
