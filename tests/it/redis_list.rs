//! `source: redis-list`: parity with KEDA's `redis` scaler against a real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use headroom_integration::*;
use headroom_scaler::server::ServeConfig;

fn config() -> ServeConfig {
    // No observation caching: each call reads Redis, so a poll right after a write sees it (with
    // a 1 ms TTL, GetMetrics could still answer the previous poll's reading on a fast machine
    // while IsActive read the new one: value 7 and active true in one poll).
    ServeConfig {
        observation_ttl: Duration::ZERO,
        ..ServeConfig::local()
    }
}

#[tokio::test]
async fn length_is_read_by_key_type_like_keda() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("RPUSH")
        .arg("l")
        .arg(&["a", "b", "c"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg("s")
        .arg(&["a", "b"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("z")
        .arg(&["1", "a", "2", "b", "3", "c", "4", "d"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg(&["f", "v"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("str")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    for (key, want) in [
        ("l", 3.0),
        ("s", 2.0),
        ("z", 4.0),
        ("h", 1.0),
        ("missing", 0.0),
    ] {
        let m = md(&[
            ("source", "redis-list"),
            ("host", "127.0.0.1"),
            ("port", &redis.port.to_string()),
            ("listName", key),
        ]);
        let p = poll(&mut c, &m).await.unwrap();
        assert_eq!(p.value, want, "{key}");
        assert_eq!(p.active, want > 0.0, "{key}");
        assert_eq!(p.metric_name, format!("redis-{key}"));
    }
    // Any other type is an error, never a 0.
    let m = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "str"),
    ]);
    let err = poll(&mut c, &m).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("\"str\"") && err.message().contains("string"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn targets_and_activation_follow_the_keda_keys() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs")
        .arg(&["1", "2", "3", "4", "5", "6", "7"])
        .query(&mut conn)
        .unwrap();
    let (_s, mut c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "redis-list"),
        ("addressFromEnv", &redis.address()),
        ("listName", "jobs"),
        ("listLength", "3"),
        ("activationListLength", "7"),
    ]);
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!((p.target, p.value, p.active), (3.0, 7.0, false));
    let _: () = redis::cmd("RPUSH")
        .arg("jobs")
        .arg("8")
        .query(&mut conn)
        .unwrap();
    let p = poll(&mut c, &m).await.unwrap();
    assert_eq!((p.value, p.active), (8.0, true));
}
