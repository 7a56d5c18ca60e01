//! `...Secret` keys against the real control plane: the scaler (in this process) reads a Redis
//! password from a Kubernetes Secret through kube-apiserver, follows the Secret's changes, and
//! names the key and the Secret when it cannot read it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use headroom_integration::kube::{KubeCluster, create_namespace};
use headroom_integration::{RedisServer, md, start_scaler};
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use headroom_scaler::server::ServeConfig;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use tonic::Code;
use tonic::transport::Channel;

fn config(cluster: &KubeCluster) -> ServeConfig {
    let mut c = ServeConfig::local();
    c.kubeconfig = Some(cluster.kubeconfig.clone());
    // Every call reads Redis: "the next GetMetrics" means the next read.
    c.observation_ttl = Duration::ZERO;
    c
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

async fn get_metrics(
    c: &mut ExternalScalerClient<Channel>,
    namespace: &str,
    metadata: &HashMap<String, String>,
) -> Result<f64, tonic::Status> {
    let r = ScaledObjectRef {
        name: "worker".into(),
        namespace: namespace.into(),
        scaler_metadata: metadata.clone(),
    };
    let out = c
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r),
            metric_name: String::new(),
        })
        .await?
        .into_inner();
    Ok(out.metric_values[0].metric_value_float)
}

fn redis_as(redis: &RedisServer, password: &str) -> redis::Connection {
    redis::Client::open(format!("redis://:{password}@{}/0", redis.address()))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_takes_effect_without_restarting_the_scaler() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "secrets").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &secret("redis-auth", &[("password", "first-horse")]),
        )
        .await
        .unwrap();
    let redis = RedisServer::start(&["--requirepass", "first-horse"]).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs")
        .arg(&["a", "b", "c"])
        .query(&mut redis_as(&redis, "first-horse"))
        .unwrap();

    let (running, mut c) = start_scaler(config(cluster)).await.unwrap();
    let backends = running.scaler.observations().backends().clone();
    let m = md(&[
        ("source", "redis-list"),
        ("address", &redis.address()),
        ("listName", "jobs"),
        // `<name>/<key>`: in the ScaledObject's namespace.
        ("passwordSecret", "redis-auth/password"),
    ]);
    assert!(
        !backends.secrets.has_client().await,
        "no Kubernetes client before a ...Secret key is used"
    );
    assert_eq!(get_metrics(&mut c, &ns, &m).await.unwrap(), 3.0);
    assert!(backends.secrets.has_client().await);
    assert_eq!(backends.secrets.watched(), 1);

    // The password changes on the server, and every connection made with the old one is
    // dropped: the scaler's pooled connection can only come back with the new password.
    let mut admin = redis_as(&redis, "first-horse");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("second-battery")
        .query(&mut admin)
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .unwrap();
    let stale = get_metrics(&mut c, &ns, &m).await.unwrap_err();
    assert!(
        matches!(stale.code(), Code::PermissionDenied | Code::Unavailable),
        "{stale:?}"
    );
    assert!(
        !stale.message().contains("first-horse"),
        "{}",
        stale.message()
    );

    // The Secret is rotated: the next reads use it, with the same scaler.
    let rotated = Instant::now();
    secrets
        .replace("redis-auth", &PostParams::default(), &{
            let mut s = secrets.get("redis-auth").await.unwrap();
            s.data = secret("redis-auth", &[("password", "second-battery")]).data;
            s
        })
        .await
        .unwrap();
    let mut attempts = 0;
    let value = loop {
        attempts += 1;
        match get_metrics(&mut c, &ns, &m).await {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    !e.message().contains("second-battery") && !e.message().contains("first-horse"),
                    "{}",
                    e.message()
                );
                assert!(
                    rotated.elapsed() < Duration::from_secs(10),
                    "the rotated Secret was not used within 10 s: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(value, 3.0);
    eprintln!(
        "rotated password used {:?} after the Secret changed ({attempts} GetMetrics calls)",
        rotated.elapsed()
    );
    // And it goes on working: a fresh connection is made with the new password too.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut redis_as(&redis, "second-battery"))
        .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if get_metrics(&mut c, &ns, &m).await.ok() == Some(3.0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "reads recover after a reconnect with the rotated password"
    );
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_or_key_is_named_in_the_error() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "secrets").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &secret("redis-auth", &[("password", "pw-value")]),
        )
        .await
        .unwrap();
    let redis = RedisServer::start(&["--requirepass", "pw-value"]).unwrap();
    let (running, mut c) = start_scaler(config(cluster)).await.unwrap();

    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("passwordSecret", &format!("{ns}/absent/password")),
    ]);
    let e = get_metrics(&mut c, &ns, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("`passwordSecret`"), "{}", e.message());
    assert!(
        e.message().contains(&format!(
            "key `password` of Secret {ns}/absent cannot be read"
        )),
        "{}",
        e.message()
    );
    let absent = e.message().to_string();

    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("passwordSecret", "redis-auth/pasword"),
    ]);
    let e = get_metrics(&mut c, &ns, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "key `pasword` of Secret {ns}/redis-auth cannot be read"
        )),
        "{}",
        e.message()
    );
    // A missing key reads exactly like a missing Secret: a caller cannot tell which exists.
    assert_eq!(
        e.message()
            .replace("pasword", "password")
            .replace("redis-auth", "absent"),
        absent
    );
    assert!(!e.message().contains("pw-value"), "{}", e.message());

    // A Secret created after the first failure is picked up by its watch.
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("passwordSecret", "late/password"),
    ]);
    assert_eq!(
        get_metrics(&mut c, &ns, &m).await.unwrap_err().code(),
        Code::NotFound
    );
    secrets
        .create(
            &PostParams::default(),
            &secret("late", &[("password", "pw-value")]),
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        match get_metrics(&mut c, &ns, &m).await {
            Ok(v) => {
                assert_eq!(v, 0.0);
                break;
            }
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A malformed reference is bad metadata, named.
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("passwordSecret", "no-key-given"),
    ]);
    let e = get_metrics(&mut c, &ns, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("`passwordSecret`"), "{}", e.message());
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_of_another_namespace_is_refused_unless_the_operator_shares_that_namespace() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let tenant = create_namespace(&client, "tenant").await.unwrap();
    let shared = create_namespace(&client, "shared").await.unwrap();
    Api::<Secret>::namespaced(client.clone(), &shared)
        .create(
            &PostParams::default(),
            &secret("redis-auth", &[("password", "pw-value")]),
        )
        .await
        .unwrap();
    let redis = RedisServer::start(&["--requirepass", "pw-value"]).unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("passwordSecret", &format!("{shared}/redis-auth/password")),
    ]);

    // The Secret exists and the scaler's credentials could read it: refused all the same, and
    // before the API server is asked.
    let (running, mut c) = start_scaler(config(cluster)).await.unwrap();
    let e = get_metrics(&mut c, &tenant, &m).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`passwordSecret`"), "{}", e.message());
    assert!(
        e.message().contains("--shared-secret-namespaces"),
        "{}",
        e.message()
    );
    assert!(
        !running
            .scaler
            .observations()
            .backends()
            .secrets
            .has_client()
            .await
    );
    // From its own namespace the same reference reads.
    assert_eq!(get_metrics(&mut c, &shared, &m).await.unwrap(), 0.0);
    running.shutdown();

    // Shared by the operator: readable from any namespace.
    let mut config = config(cluster);
    config.access = headroom_scaler::access::Access::new(Some(shared.as_str()), None).unwrap();
    let (running, mut c) = start_scaler(config).await.unwrap();
    assert_eq!(get_metrics(&mut c, &tenant, &m).await.unwrap(), 0.0);
    running.shutdown();
}
