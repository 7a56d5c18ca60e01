//! Planned mode (`metric: replicas`) and the Demand service, over real gRPC against real Redis
//! and Celery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use headroom_integration::*;
use headroom_proto::headroom::v1::demand_client::DemandClient;
use headroom_proto::headroom::v1::{DemandRequest, TriggerMetadata};
use headroom_scaler::server::ServeConfig;
use tonic::Code;
use tonic::transport::Channel;

fn hour_now_utc() -> u64 {
    (unix_now() as u64 / 3600) % 24
}

async fn demand_client(s: &headroom_scaler::server::Running) -> DemandClient<Channel> {
    let ch = Channel::from_shared(format!("http://{}", s.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DemandClient::new(ch)
}

#[tokio::test]
async fn planned_mode_answers_replicas_with_target_one_from_real_celery_tasks() {
    let redis = RedisServer::start(&[]).unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "gpu"),
        ("metric", "replicas"),
        ("tasksPerReplica", "2"),
        ("maxReplicas", "3"),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!(p.metric_name, "celery-gpu");
    assert_eq!((p.target, p.target_int), (1.0, 1));
    assert_eq!((p.value, p.active), (0.0, false));

    Celery::new(&redis).enqueue("gpu", 5, None).unwrap();
    let p = eventually(Duration::from_secs(5), "the new reading", || {
        let (mut c, m) = (c.clone(), m.clone());
        async move { poll(&mut c, &m).await.ok().filter(|p| p.value > 0.0) }
    })
    .await
    .unwrap();
    // ceil(5 / 2) = 3, and maxReplicas caps a bigger backlog.
    assert_eq!((p.value, p.value_int, p.active), (3.0, 3, true));
    Celery::new(&redis).enqueue("gpu", 20, None).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 3.0);
}

#[tokio::test]
async fn an_open_schedule_window_activates_an_empty_queue_over_the_push_stream() {
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kl"]).unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let schedule = format!("0 {} * * * for 2h = 4", hour_now_utc());
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "batch"),
        ("metric", "replicas"),
        ("schedule", &schedule),
        ("timezone", "UTC"),
    ]);
    let mut stream = c
        .stream_is_active(so_ref(m.clone()))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.result,
        "the window is open: active with an empty queue"
    );
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!((p.value, p.active), (4.0, true));

    // Outside every window, the same empty queue is inactive.
    let closed = format!("0 {} * * * for 1h = 4", (hour_now_utc() + 12) % 24);
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "batch"),
        ("metric", "replicas"),
        ("schedule", &closed),
        ("leadTimeSeconds", "60"),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!((p.value, p.active), (0.0, false));
}

#[tokio::test]
async fn bad_planned_keys_are_invalid_argument_naming_them() {
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", "127.0.0.1:1"),
        ("metric", "replicas"),
        ("schedule", "0 25 * * * for 1h = 2"),
        ("timezone", "Europe/Berlin"),
        ("concurrency", "0"),
        ("drainSeconds", "-3"),
    ]);
    let e = poll(&mut c, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for key in ["schedule", "concurrency", "drainSeconds"] {
        assert!(
            e.message().contains(key),
            "{key} not named: {}",
            e.message()
        );
    }
    let m = md(&[
        ("source", "celery"),
        ("address", "127.0.0.1:1"),
        ("metric", "replicas"),
        ("schedule", "0 8 * * * for 1h = 2"),
        ("timezone", "Mars/Olympus"),
    ]);
    let e = c.get_metric_spec(so_ref(m)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("timezone"), "{}", e.message());
}

#[tokio::test]
async fn demand_answers_for_what_keda_asked_and_for_metadata_it_is_given() {
    let redis = RedisServer::start(&[]).unwrap();
    let (s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let mut d = demand_client(&s).await;
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "infer"),
        ("metric", "replicas"),
        ("tasksPerReplica", "3"),
        ("leadTimeSeconds", "120"),
    ]);
    let req = DemandRequest {
        namespace: "test".into(),
        name: "worker".into(),
        ..Default::default()
    };
    // Before KEDA has called about the ScaledObject: NOT_FOUND, not an empty demand.
    let e = d.get_demand(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    Celery::new(&redis).enqueue("infer", 7, None).unwrap();
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 3.0);
    let r = d.get_demand(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.desired_replicas, 3);
    assert_eq!(r.lead_time_ms, 120_000);
    assert_eq!(r.triggers.len(), 1);
    let t = &r.triggers[0];
    assert_eq!(
        (t.metric_name.as_str(), t.source.as_str()),
        ("celery-infer", "celery")
    );
    assert_eq!((t.waiting, t.in_flight), (7.0, 0.0));
    assert_eq!(t.forecast_state, "off");
    // Default horizon: the longer of twice the lead time and 10 minutes, every 30 s.
    assert_eq!(r.forecast.len(), 600 / 30 + 1);
    assert_eq!(r.forecast[0].replicas, 3);
    assert!(r.observed_at_unix_ms > 0);

    // A depth trigger given in the request: what the HPA would do with its value.
    let depth = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "infer"),
        ("tasksPerReplica", "2"),
    ]);
    let r = d
        .get_demand(DemandRequest {
            namespace: "test".into(),
            name: "other".into(),
            triggers: vec![TriggerMetadata { metadata: depth }],
            horizon_ms: 60_000,
            step_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.desired_replicas, 4, "ceil(7 / 2)");
    assert_eq!(r.forecast.len(), 7);

    // A backend that cannot be read is an error, never a demand of 0.
    let down = md(&[("source", "celery"), ("address", "127.0.0.1:1")]);
    let e = d
        .get_demand(DemandRequest {
            namespace: "test".into(),
            name: "down".into(),
            triggers: vec![TriggerMetadata { metadata: down }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // One readable trigger and one not: the answer is the readable one's, and the other's error
    // is in its own entry, so the provisioner can hold capacity instead of reading a low demand.
    let down = md(&[
        ("source", "celery"),
        ("address", "127.0.0.1:1"),
        ("queues", "gone"),
    ]);
    let r = d
        .get_demand(DemandRequest {
            namespace: "test".into(),
            name: "mixed".into(),
            triggers: vec![
                TriggerMetadata {
                    metadata: m.clone(),
                },
                TriggerMetadata { metadata: down },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.triggers.len(), 2);
    assert!(r.triggers[0].error.is_empty(), "{:?}", r.triggers[0]);
    assert!(
        r.triggers[1].error.contains("celery read failed"),
        "{:?}",
        r.triggers[1]
    );

    // Bounds: at most 16 triggers, at most 8 641 forecast points per trigger.
    let many = DemandRequest {
        namespace: "test".into(),
        name: "many".into(),
        triggers: vec![
            TriggerMetadata {
                metadata: m.clone()
            };
            17
        ],
        ..Default::default()
    };
    let e = d.get_demand(many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 16"), "{}", e.message());
    let fine_grained = DemandRequest {
        namespace: "test".into(),
        name: "worker".into(),
        triggers: vec![TriggerMetadata {
            metadata: m.clone(),
        }],
        horizon_ms: 86_400_000,
        step_ms: 1_000,
    };
    let e = d.get_demand(fine_grained).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("forecast points"), "{}", e.message());
}

#[tokio::test]
async fn watch_demand_sends_at_once_and_again_when_work_arrives() {
    let redis = RedisServer::start(&[]).unwrap();
    let (s, _c) = start_scaler(ServeConfig::local()).await.unwrap();
    let mut d = demand_client(&s).await;
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "watch"),
        ("metric", "replicas"),
        ("tasksPerReplica", "1"),
    ]);
    let mut stream = d
        .watch_demand(DemandRequest {
            namespace: "test".into(),
            name: "worker".into(),
            triggers: vec![TriggerMetadata { metadata: m }],
            horizon_ms: 60_000,
            step_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.desired_replicas, 0);
    Celery::new(&redis).enqueue("watch", 2, None).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a new answer well before the 60 s step")
        .unwrap()
        .unwrap();
    assert_eq!(next.desired_replicas, 2);
}

#[tokio::test]
async fn planner_history_is_shared_through_redis_and_a_dead_store_only_costs_history() {
    let queue = RedisServer::start(&[]).unwrap();
    let store = RedisServer::start(&[]).unwrap();
    let config = || ServeConfig {
        history_url: Some(store.url()),
        ..ServeConfig::local()
    };
    let m = md(&[
        ("source", "celery"),
        ("address", &queue.address()),
        ("queues", "hist"),
        ("metric", "replicas"),
        ("tasksPerReplica", "2"),
        ("forecast", "seasonal"),
    ]);
    Celery::new(&queue).enqueue("hist", 5, None).unwrap();
    let (first, mut c1) = start_scaler(config()).await.unwrap();
    assert_eq!(poll(&mut c1, &m).await.unwrap().value, 3.0);
    assert_eq!(first.scaler.save_history().await, 1);
    let saved = first.scaler.plans().snapshot();
    assert_eq!(saved.len(), 1);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("headroom:planner:*")
        .query(&mut store.connection())
        .unwrap();
    assert_eq!(keys.len(), 1, "one history per queue and configuration");

    // Another replica (or this one restarted) continues from the saved history.
    let (second, _c2) = start_scaler(config()).await.unwrap();
    let trigger = headroom_scaler::trigger::Trigger::parse(&m).unwrap();
    second.scaler.restore_history(&trigger).await;
    // What was stored, as it reads back (JSON may move a float by one ulp).
    let stored: Vec<(String, headroom_scaler::planner::PlannerState)> =
        serde_json::from_slice(&serde_json::to_vec(&saved).unwrap()).unwrap();
    assert_eq!(second.scaler.plans().snapshot(), stored);

    // A store that is gone costs the history, not the answer.
    let (_third, mut c3) = start_scaler(ServeConfig {
        history_url: Some("redis://127.0.0.1:1/0".into()),
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let p = poll(&mut c3, &m).await.unwrap();
    assert_eq!((p.value, p.active), (3.0, true));
}
