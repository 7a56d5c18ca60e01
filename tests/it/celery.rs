//! `source: celery` against real Redis and real Celery producers and workers, over gRPC on TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use headroom_integration::*;
use headroom_scaler::server::ServeConfig;

fn config() -> ServeConfig {
    // A short TTL so a test sees its own writes quickly; caching is tested on its own.
    ServeConfig {
        observation_ttl: Duration::from_millis(1),
        ..ServeConfig::local()
    }
}

#[tokio::test]
async fn empty_queue_reports_zero_and_inactive() {
    let redis = RedisServer::start(&[]).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("scalerAddress", "x:1"),
        ("source", "celery"),
        ("address", &redis.address()),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!(p.metric_name, "celery-celery");
    assert_eq!((p.target, p.target_int), (5.0, 5));
    assert_eq!((p.value, p.value_int, p.active), (0.0, 0, false));
}

#[tokio::test]
async fn priorities_land_in_sub_queues_and_all_count() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis);
    celery.enqueue("celery", 2, None).unwrap();
    for p in 0..=9u8 {
        celery.enqueue("celery", 1, Some(p)).unwrap();
    }
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("tasksPerReplica", "4"),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!((p.value, p.value_int, p.active), (12.0, 12, true));
    assert_eq!(p.target, 4.0);

    // KEDA's own `redis` scaler reads only the bare list: 2 + priorities 0, 1, 2.
    let keda = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "celery"),
    ]);
    assert_eq!(poll(&mut c, &keda).await.unwrap().value, 5.0);
}

#[tokio::test]
async fn named_queues_are_summed() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis);
    celery.enqueue("gpu-a10g", 3, None).unwrap();
    celery.enqueue("gpu-t4", 4, Some(9)).unwrap();
    celery.enqueue("cpu", 5, None).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("url", &redis.url()),
        ("queues", "gpu-a10g, gpu-t4"),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!(p.metric_name, "celery-gpu-a10g-gpu-t4");
    assert_eq!(p.value, 7.0);
}

#[tokio::test]
async fn custom_steps_and_separator_need_matching_metadata() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis).sep(":").steps("0,1,2,3,4,5,6,7,8,9");
    for p in 0..=9u8 {
        celery.enqueue("jobs", 1, Some(p)).unwrap();
    }
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let addr = redis.address();
    let matching = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "jobs"),
        ("prioritySeparator", ":"),
        ("prioritySteps", "0,1,2,3,4,5,6,7,8,9"),
    ]);
    assert_eq!(poll(&mut c, &matching).await.unwrap().value, 10.0);
    // With kombu's defaults only `jobs`, `jobs:3`... would be read, and `:` is not the default.
    let defaults = md(&[("source", "celery"), ("address", &addr), ("queues", "jobs")]);
    assert_eq!(poll(&mut c, &defaults).await.unwrap().value, 1.0);
}

#[tokio::test]
async fn key_prefix_applies_to_lists_and_unacked() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis).prefix("pfx_");
    celery.enqueue("celery", 3, None).unwrap();
    celery.enqueue("celery", 2, Some(5)).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let addr = redis.address();
    let prefixed = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("keyPrefix", "pfx_"),
    ]);
    assert_eq!(poll(&mut c, &prefixed).await.unwrap().value, 5.0);
    let bare = md(&[("source", "celery"), ("address", &addr)]);
    assert_eq!(poll(&mut c, &bare).await.unwrap().value, 0.0);

    let _worker = celery.worker("celery", 1, 2, true).unwrap();
    // acks_late, concurrency 1, prefetch 2: two tasks leave the lists for `pfx_unacked`.
    let p = eventually(Duration::from_secs(20), "worker prefetch", || {
        let mut c = c.clone();
        let m = md(&[
            ("source", "celery"),
            ("address", &addr),
            ("keyPrefix", "pfx_"),
            ("includeUnacked", "false"),
        ]);
        async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 3.0) }
    })
    .await
    .unwrap();
    assert_eq!(p.value, 3.0);
    assert_eq!(
        poll(&mut c, &prefixed).await.unwrap().value,
        5.0,
        "in flight counted"
    );
}

#[tokio::test]
async fn prefetched_tasks_held_by_a_worker_keep_the_queue_busy() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis);
    celery.enqueue("work", 10, None).unwrap();
    celery.enqueue("other", 2, None).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let addr = redis.address();
    let waiting_only = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "work"),
        ("includeUnacked", "false"),
    ]);
    let with_unacked = md(&[("source", "celery"), ("address", &addr), ("queues", "work")]);

    // Concurrency 1, prefetch 4, acks_late: 4 tasks move from the list into `unacked`.
    let mut worker = celery.worker("work", 1, 4, true).unwrap();
    eventually(Duration::from_secs(20), "worker prefetch", || {
        let mut c = c.clone();
        let m = waiting_only.clone();
        async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 6.0) }
    })
    .await
    .unwrap();
    let p = poll(&mut c, &with_unacked).await.unwrap();
    assert_eq!(p.value, 10.0, "waiting 6 + prefetched 4");
    // The `unacked` hash is shared by all queues: `other` has none in flight.
    let other = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "other"),
    ]);
    assert_eq!(poll(&mut c, &other).await.unwrap().value, 2.0);

    // A killed worker leaves its entries; they stop counting once older than the bound.
    worker.kill();
    assert_eq!(poll(&mut c, &with_unacked).await.unwrap().value, 10.0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let bounded = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "work"),
        ("unackedMaxAgeSeconds", "2"),
    ]);
    assert_eq!(poll(&mut c, &bounded).await.unwrap().value, 6.0);
}

#[tokio::test]
async fn activation_threshold_is_strict() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis);
    celery.enqueue("celery", 3, None).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let at = |n: &str| {
        md(&[
            ("source", "celery"),
            ("address", &redis.address()),
            ("activationTasks", n),
        ])
        .clone()
    };
    assert!(!poll(&mut c, &at("3")).await.unwrap().active);
    assert!(poll(&mut c, &at("2")).await.unwrap().active);
}

#[tokio::test]
async fn database_index_and_odd_queue_names_are_honoured() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let odd = "q \u{1}é:%/(x)";
    let _: () = redis::cmd("SELECT").arg(3).query(&mut conn).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(odd)
        .arg("a")
        .arg("b")
        .query(&mut conn)
        .unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("databaseIndex", "3"),
        ("queues", odd),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!(p.value, 2.0);
    assert_eq!(p.metric_name, "celery-q-------x-");
    assert!(
        p.metric_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    );
}

#[tokio::test]
async fn one_unacked_count_per_database_serves_every_queue_set_and_push_poll() {
    let redis = RedisServer::start(&[]).unwrap();
    let celery = Celery::new(&redis);
    celery.enqueue("work", 6, None).unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let addr = redis.address();
    // Concurrency 1, prefetch 4, acks_late: 4 tasks move from the list into `unacked`.
    let _worker = celery.worker("work", 1, 4, true).unwrap();
    let waiting_only = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "work"),
        ("includeUnacked", "false"),
    ]);
    eventually(Duration::from_secs(20), "worker prefetch", || {
        let mut c = c.clone();
        let m = waiting_only.clone();
        async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 2.0) }
    })
    .await
    .unwrap();
    // The prefetch changed the unacked index's size: the next count is fresh.
    let work = md(&[("source", "celery"), ("address", &addr), ("queues", "work")]);
    eventually(
        Duration::from_secs(20),
        "the prefetched tasks counted",
        || {
            let mut c = c.clone();
            let m = work.clone();
            async move { poll(&mut c, &m).await.ok().filter(|p| p.value == 6.0) }
        },
    )
    .await
    .unwrap();
    let scans = redis.command_calls("zcount");
    // Twenty queue sets of the same database, polled again and again within the count's TTL:
    // their waiting lists are read every time, the unacked index once at most.
    for round in 0..3 {
        for i in 0..20 {
            let m = md(&[
                ("source", "celery"),
                ("address", &addr),
                ("queues", &format!("work,other-{i}")),
            ]);
            let p = poll(&mut c, &m).await.unwrap();
            assert_eq!(
                p.value, 6.0,
                "round {round}, set {i}: waiting 2 + in flight 4"
            );
        }
    }
    let extra = redis.command_calls("zcount") - scans;
    assert!(
        extra <= 1,
        "{extra} unacked scans for 60 polls of 20 queue sets"
    );
}
