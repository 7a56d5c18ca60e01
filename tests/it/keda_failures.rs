//! What KEDA shows when Headroom's scaler says no, with the real KEDA operator (built from its Go
//! module) against the real control plane: bad metadata, a credential the scaler cannot read, and
//! a scaler that goes away, which KEDA's `fallback` covers.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::Result;
use headroom_integration::kube::{KubeCluster, condition, create_namespace, wait_until};
use headroom_integration::{RedisServer, start_scaler};
use headroom_scaler::server::ServeConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

const WAIT: Duration = Duration::from_secs(90);

fn scaled_objects(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn create_worker(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                // No node carries this label: the pods stay Pending, which the HPA does not
                // need (an external AverageValue metric sizes from the value alone).
                "spec": {
                    "nodeSelector": {"headroom.dev/test": "nowhere"},
                    "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> Result<i32> {
    Ok(deployments
        .get(name)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_shows_the_scalers_message_for_bad_metadata_and_unreadable_credentials() {
    let cluster = KubeCluster::shared_with_keda().unwrap();
    let client = cluster.client().await.unwrap();
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _) = start_scaler(ServeConfig {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let ns = create_namespace(&client, "keda-bad").await.unwrap();
    create_worker(&client, &ns, "typo", 0).await;
    create_worker(&client, &ns, "locked", 0).await;
    cluster
        .apply(&format!(
            r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: typo
  namespace: {ns}
spec:
  scaleTargetRef:
    name: typo
  pollingInterval: 1
  minReplicaCount: 0
  triggers:
    - type: external
      metadata:
        scalerAddress: "{scaler_addr}"
        source: redis-list
        address: "{redis_addr}"
        listName: jobs
        listLenght: "2"
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: locked
  namespace: {ns}
spec:
  scaleTargetRef:
    name: locked
  pollingInterval: 1
  minReplicaCount: 0
  triggers:
    - type: external
      metadata:
        scalerAddress: "{scaler_addr}"
        source: redis-list
        address: "{redis_addr}"
        listName: jobs
        passwordSecret: absent/password
"#,
            scaler_addr = scaler.grpc_addr,
            redis_addr = redis.address(),
        ))
        .unwrap();
    let sos = scaled_objects(&client, &ns);

    // Bad metadata: GetMetricSpec answers INVALID_ARGUMENT naming the key. KEDA's external
    // scaler logs that answer and reports "no metric specs" on the Ready condition (it drops the
    // gRPC message there), so the key reaches the user through the operator's log.
    let (_, reason, message) = wait_until(WAIT, "typo: Ready=False", || {
        let sos = sos.clone();
        async move {
            let so = sos.get("typo").await?;
            Ok(condition(&so, "Ready").filter(|(s, _, _)| s == "False"))
        }
    })
    .await
    .unwrap();
    assert_eq!(reason, "ScaledObjectCheckFailed", "{message}");
    eprintln!("typo: Ready=False {reason}: {message}");
    wait_until(WAIT, "the scaler's message in KEDA's log", || async {
        let log = cluster.log_tail("keda-operator", 20_000);
        Ok(log
            .lines()
            .any(|l| l.contains("unknown key `listLenght`") && l.contains("InvalidArgument"))
            .then_some(()))
    })
    .await
    .unwrap();

    // A credential the scaler cannot read: the spec comes from metadata alone (so KEDA makes
    // the HPA), and every read answers NOT_FOUND naming the key and the Secret, which KEDA puts
    // on the ScaledObject as a KEDAScalerFailed event.
    let expected = format!("`passwordSecret`: key `password` of Secret {ns}/absent cannot be read");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = wait_until(WAIT, "locked: a KEDAScalerFailed event", || {
        let events = events.clone();
        let expected = expected.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some("locked")
                    && e.reason.as_deref() == Some("KEDAScalerFailed")
                    && e.message.as_deref().is_some_and(|m| m.contains(&expected))
            }))
        }
    })
    .await
    .unwrap();
    eprintln!("locked: event {:?}", event.message.unwrap_or_default());
    scaler.shutdown();
}

/// KEDA's fallback engages when the scaler answers GetMetricSpec (from metadata alone, as
/// Headroom's always does) and then fails GetMetrics: here the backend goes away and the scaler
/// answers UNAVAILABLE. (When the scaler process itself is unreachable, KEDA 2.20's external
/// scaler gets no metric spec at all, and its fallback code never runs for that trigger: the
/// workload keeps its replicas. Run two scaler replicas.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_lets_kedas_fallback_take_over() {
    let cluster = KubeCluster::shared_with_keda().unwrap();
    let client = cluster.client().await.unwrap();
    let mut redis = RedisServer::start(&[]).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs")
        .arg(&["a", "b"])
        .query(&mut redis.connection())
        .unwrap();
    let (scaler, _) = start_scaler(ServeConfig {
        observation_ttl: Duration::from_millis(100),
        ..ServeConfig::local()
    })
    .await
    .unwrap();
    let ns = create_namespace(&client, "keda-fallback").await.unwrap();
    create_worker(&client, &ns, "worker", 1).await;
    cluster
        .apply(&format!(
            r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
  namespace: {ns}
spec:
  scaleTargetRef:
    name: worker
  pollingInterval: 1
  minReplicaCount: 1
  maxReplicaCount: 5
  fallback:
    failureThreshold: 2
    replicas: 3
  triggers:
    - type: external
      metadata:
        scalerAddress: "{scaler_addr}"
        source: redis-list
        address: "{redis_addr}"
        listName: jobs
        listLength: "2"
"#,
            scaler_addr = scaler.grpc_addr,
            redis_addr = redis.address(),
        ))
        .unwrap();
    let sos = scaled_objects(&client, &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Healthy: 2 jobs at 2 per replica is one replica, and no fallback.
    let health = |so: &DynamicObject| {
        so.data["status"]["health"]["s0-redis-jobs"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until(WAIT, "Ready=True and the trigger healthy", || {
        let sos = sos.clone();
        async move {
            let so = sos.get("worker").await?;
            let ready = condition(&so, "Ready").is_some_and(|(s, _, _)| s == "True");
            Ok((ready && health(&so) == "Happy").then_some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!(replicas(&deployments, "worker").await.unwrap(), 1);

    // Redis goes away: the scaler answers UNAVAILABLE (never a 0), KEDA counts the failures
    // and, past the threshold, gives the HPA the fallback's 3 replicas.
    redis.stop();
    let gone = Instant::now();
    wait_until(WAIT, "fallback: the Deployment at 3 replicas", || {
        let d = deployments.clone();
        async move { Ok((replicas(&d, "worker").await? == 3).then_some(())) }
    })
    .await
    .unwrap();
    eprintln!(
        "fallback to 3 replicas {:.1} s after Redis went away",
        gone.elapsed().as_secs_f64()
    );
    let so = sos.get("worker").await.unwrap();
    let (status, reason, _) = condition(&so, "Fallback").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "FallbackExists")
    );
    assert_eq!(health(&so), "Failing");

    // Redis is back: the trigger turns healthy again and the fallback ends.
    redis.restart().unwrap();
    wait_until(WAIT, "the trigger healthy again, fallback over", || {
        let sos = sos.clone();
        async move {
            let so = sos.get("worker").await?;
            let over = condition(&so, "Fallback").is_some_and(|(s, _, _)| s == "False");
            Ok((over && health(&so) == "Happy").then_some(()))
        }
    })
    .await
    .unwrap();
    scaler.shutdown();
}
