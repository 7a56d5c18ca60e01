//! Push activation (`StreamIsActive`, trigger type `external-push`) against real Redis and Celery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use headroom_integration::*;
use headroom_scaler::server::ServeConfig;

// Push latency is asserted loosely here (well under KEDA's 30 s polling interval, so it can only
// be the push); the figures in docs/benchmarks.md come from `cargo bench --bench push`, which repeats
// the measurement and reports percentiles.

#[tokio::test]
async fn push_with_keyspace_notifications_arrives_without_waiting_for_a_poll() {
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kl"]).unwrap();
    let latency = time_to_push(&redis).await;
    eprintln!("keyspace notifications: apply_async -> true in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");
}

#[tokio::test]
async fn push_without_notifications_polls_fast_for_open_streams() {
    let redis = RedisServer::start(&[]).unwrap();
    let latency = time_to_push(&redis).await;
    eprintln!("fast poll: apply_async -> true in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");
}

#[tokio::test]
async fn streams_on_one_queue_share_one_watcher_and_end_with_their_clients() {
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kl"]).unwrap();
    let (s, c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "shared"),
    ]);
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut c = c.clone();
        let mut st = c
            .stream_is_active(so_ref(m.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(!st.next().await.unwrap().unwrap().result);
        streams.push(st);
    }
    assert_eq!(s.scaler.push_watchers(), 1);

    // With notifications, an idle queue costs a safety read every 2 s, whatever the stream count.
    redis.reset_stats();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = redis.command_calls("evalsha") + redis.command_calls("eval");
    assert!(reads <= 3, "{reads} reads in 3 s for 20 streams");

    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("shared")
        .arg("task")
        .query(&mut conn)
        .unwrap();
    for st in &mut streams {
        let msg = tokio::time::timeout(Duration::from_secs(1), st.next())
            .await
            .unwrap();
        assert!(msg.unwrap().unwrap().result);
    }

    drop(streams);
    eventually(Duration::from_secs(5), "watcher to stop", || {
        let n = s.scaler.push_watchers();
        async move { (n == 0).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stream_is_active_rejects_bad_metadata_at_once() {
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let e = c
        .stream_is_active(so_ref(md(&[("source", "celery")])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("`address`"), "{}", e.message());
}

#[tokio::test]
async fn stream_stays_open_through_a_backend_outage_and_pushes_after_it() {
    let mut redis = RedisServer::start(&[]).unwrap();
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "jobs"),
    ]);
    let mut st = c.stream_is_active(so_ref(m)).await.unwrap().into_inner();
    assert!(!st.next().await.unwrap().unwrap().result);
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("jobs")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(5), st.next())
        .await
        .unwrap();
    assert!(msg.unwrap().unwrap().result);
    eprintln!("pushed {:?} after the restart", started.elapsed());
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly() {
    let redis = RedisServer::start(&[]).unwrap();
    let (s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[("source", "celery"), ("address", &redis.address())]);
    let mut st = c.stream_is_active(so_ref(m)).await.unwrap().into_inner();
    assert!(!st.next().await.unwrap().unwrap().result);
    s.shutdown();
    let end = tokio::time::timeout(Duration::from_secs(3), st.next())
        .await
        .unwrap();
    assert!(
        end.is_none() || end.is_some_and(|r| r.is_err()),
        "stream ended"
    );
    tokio::time::timeout(Duration::from_secs(5), s.wait())
        .await
        .unwrap()
        .unwrap();
}
