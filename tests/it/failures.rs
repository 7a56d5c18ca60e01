//! Bad input and bad backends: a clear error or the right value, never a panic, never a hang
//! past the caller's deadline, never a false 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use headroom_integration::*;
use headroom_proto::externalscaler::GetMetricsRequest;
use headroom_scaler::server::ServeConfig;
use tonic::Code;

fn config() -> ServeConfig {
    ServeConfig {
        observation_ttl: Duration::from_millis(1),
        backend_timeout: Duration::from_millis(800),
        ..ServeConfig::local()
    }
}

#[tokio::test]
async fn bad_metadata_is_invalid_argument_naming_the_key_on_every_rpc() {
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[("source", "rabbitmq")], &["`source`"]),
        (&[("address", "r:1")], &["`source`"]),
        (
            &[("source", "redis-list"), ("address", "r:1")],
            &["`listName`"],
        ),
        (
            &[
                ("source", "redis-list"),
                ("address", "r:1"),
                ("host", "r"),
                ("listName", "q"),
            ],
            &["`address`", "`host`"],
        ),
        (
            &[
                ("source", "redis-list"),
                ("address", "r:1"),
                ("listName", "q"),
                ("listLength", "5.0"),
            ],
            &["`listLength`"],
        ),
        (
            &[
                ("source", "celery"),
                ("address", "r:1"),
                ("listLenght", "5"),
            ],
            &["`listLenght`"],
        ),
        (
            &[
                ("source", "celery"),
                ("address", "r:1"),
                ("enableTLS", "yes"),
            ],
            &["`enableTLS`"],
        ),
        (&[("source", "celery"), ("host", "r")], &["`port`"]),
        (
            &[("source", "celery"), ("address", "r:1"), ("queues", ",")],
            &["`queues`"],
        ),
    ];
    for (pairs, keys) in cases {
        let r = so_ref(md(pairs));
        let errs = [
            c.get_metric_spec(r.clone()).await.unwrap_err(),
            c.is_active(r.clone()).await.unwrap_err(),
            c.get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(r),
                metric_name: "x".into(),
            })
            .await
            .unwrap_err(),
        ];
        for e in errs {
            assert_eq!(e.code(), Code::InvalidArgument, "{pairs:?}: {e:?}");
            for k in *keys {
                assert!(e.message().contains(k), "{pairs:?}: {}", e.message());
            }
        }
    }
    // No ScaledObjectRef at all.
    let e = c
        .get_metrics(GetMetricsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_redis_that_goes_away_is_unavailable_then_recovers_without_restart() {
    let mut redis = RedisServer::start(&[]).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "q"),
    ]);
    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("q")
        .arg("t")
        .query(&mut conn)
        .unwrap();
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 1.0);

    redis.stop();
    let r = so_ref(m.clone());
    // The spec needs no backend, so KEDA's fallback can engage.
    assert!(c.get_metric_spec(r.clone()).await.is_ok());
    for _ in 0..3 {
        let e = c
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(r.clone()),
                metric_name: "celery-q".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains(&redis.address()), "{}", e.message());
        assert_eq!(
            c.is_active(r.clone()).await.unwrap_err().code(),
            Code::Unavailable
        );
    }

    redis.restart().unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("q")
        .arg(&["a", "b"])
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    let p = eventually(Duration::from_secs(5), "recovery", || {
        let mut c = c.clone();
        let m = m.clone();
        async move { poll(&mut c, &m).await.ok() }
    })
    .await
    .unwrap();
    assert_eq!(p.value, 2.0);
    eprintln!("recovered {:?} after restart", started.elapsed());
}

#[tokio::test]
async fn wrong_password_is_permission_denied_and_never_echoed() {
    let redis = RedisServer::start(&["--requirepass", "right-horse"]).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "q"),
        ("passwordFromEnv", "wrong-battery"),
    ]);
    let e = poll(&mut c, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(!e.message().contains("wrong-battery"), "{}", e.message());
    let m = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "q"),
        ("password", "right-horse"),
    ]);
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 0.0);
    let m = md(&[
        ("source", "redis-list"),
        (
            "url",
            &format!("redis://:right-horse@{}/0", redis.address()),
        ),
        ("listName", "q"),
    ]);
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 0.0);
}

#[tokio::test]
async fn tls_against_a_plain_server_fails_clearly_within_the_deadline() {
    let redis = RedisServer::start(&[]).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("enableTLS", "true"),
    ]);
    let started = Instant::now();
    let e = poll(&mut c, &m).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn a_backend_that_accepts_but_never_answers_times_out_as_unavailable() {
    // Accepts connections and reads nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for s in listener.incoming().flatten() {
            conns.push(s);
        }
    });
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[("source", "celery"), ("address", &addr.to_string())]);
    let started = Instant::now();
    let e = poll(&mut c, &m).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");

    // A caller's own deadline shorter than the backend timeout is honoured: with a 10 s backend
    // timeout, a 200 ms deadline must end the call long before the read would.
    let (_s, mut c) = start_scaler(ServeConfig {
        backend_timeout: Duration::from_secs(10),
        ..config()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(so_ref(m));
    req.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let e = c.is_active(req).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e.code(),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn concurrent_calls_for_one_queue_cost_one_read() {
    let redis = RedisServer::start(&[]).unwrap();
    let (_s, c) = start_scaler(ServeConfig {
        observation_ttl: Duration::from_secs(5),
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("q")
        .arg(&["a", "b", "c"])
        .query(&mut conn)
        .unwrap();
    // Load the script once (the first call of a script costs a NOSCRIPT round trip).
    let mut warm = c.clone();
    poll(
        &mut warm,
        &md(&[
            ("source", "celery"),
            ("address", &redis.address()),
            ("queues", "warm"),
        ]),
    )
    .await
    .unwrap();
    redis.reset_stats();
    // 300 triggers (different thresholds and ScaledObjects) on the same queue, all at once.
    let calls = (0..300).map(|i| {
        let mut c = c.clone();
        let m = md(&[
            ("source", "celery"),
            ("address", &redis.address()),
            ("queues", "q"),
            ("activationTasks", &(i % 7).to_string()),
        ]);
        async move { poll(&mut c, &m).await }
    });
    let polls = futures::future::join_all(calls).await;
    for (i, p) in polls.into_iter().enumerate() {
        let p = p.unwrap();
        assert_eq!(p.value, 3.0);
        assert_eq!(p.active, 3 > i % 7);
    }
    let scripts = redis.command_calls("evalsha") + redis.command_calls("eval");
    assert_eq!(scripts, 1, "900 RPCs within the TTL must cost one read");
}

#[tokio::test]
async fn ten_thousand_distinct_triggers_at_once_get_their_own_values() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let mut pipe = redis::pipe();
    for i in 0..10_000u32 {
        if i % 4 != 0 {
            pipe.cmd("RPUSH")
                .arg(format!("list-{i}"))
                .arg(vec!["x"; (i % 4) as usize])
                .ignore();
        }
    }
    let _: () = pipe.query(&mut conn).unwrap();
    // A backend timeout long enough that every read gets its turn even on a loaded machine: this
    // test is about every trigger getting its own value, not about speed (the benchmark is).
    let config = ServeConfig {
        backend_timeout: Duration::from_secs(30),
        ..ServeConfig::local()
    };
    let (s, c) = start_scaler(config).await.unwrap();
    let started = Instant::now();
    let calls = (0..10_000u32).map(|i| {
        let mut c = c.clone();
        let r = so_ref(md(&[
            ("source", "redis-list"),
            ("address", &redis.address()),
            ("listName", &format!("list-{i}")),
        ]));
        async move {
            let v = c
                .get_metrics(GetMetricsRequest {
                    scaled_object_ref: Some(r),
                    metric_name: format!("redis-list-{i}"),
                })
                .await?
                .into_inner();
            Ok::<_, tonic::Status>((i, v.metric_values[0].metric_value_float))
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("no hang: every call answered");
    for r in results {
        let (i, v) = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(v, (i % 4) as f64, "list-{i}");
    }
    eprintln!(
        "10 000 distinct triggers at once: all answered with their own values in {:?}",
        started.elapsed()
    );
    assert!(s.scaler.observations().len() >= 10_000);
}

#[tokio::test]
async fn redis_over_tls_is_read_with_unsafe_ssl_and_refused_when_unverifiable() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("headroom-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let redis = RedisServer::start_tls(&cert_path, &key_path, &ca_path).unwrap();

    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let addr = redis.address();
    let unsafe_tls = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("enableTLS", "true"),
        ("unsafeSsl", "true"),
    ]);
    assert_eq!(poll(&mut c, &unsafe_tls).await.unwrap().value, 0.0);
    let url = md(&[
        ("source", "celery"),
        ("url", &format!("rediss://{addr}/0#insecure")),
    ]);
    assert_eq!(poll(&mut c, &url).await.unwrap().value, 0.0);

    // Our CA is in no trust store: verification fails, clearly, within the deadline.
    let verified = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("enableTLS", "true"),
        ("queues", "v"),
    ]);
    let started = Instant::now();
    let e = poll(&mut c, &verified).await.unwrap_err();
    eprintln!("unverifiable: {}", e.message());
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Plaintext against a TLS-only server.
    let plain = md(&[("source", "celery"), ("address", &addr), ("queues", "p")]);
    let started = Instant::now();
    let e = poll(&mut c, &plain).await.unwrap_err();
    eprintln!("plaintext to TLS: {}", e.message());
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(dir);
}
