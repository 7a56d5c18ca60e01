//! headroom-provisioner on the real control plane (kube-apiserver, etcd, controller-manager,
//! scheduler, kwok), with Karpenter's and KEDA's CRDs, a real scaler in-process serving the
//! Demand service from a real Redis list, and the provisioner itself in-process (one or two
//! replicas). Each test has its own namespace, NodePool and Lease, and its provisioners watch
//! only that namespace, so the tests share one cluster.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use headroom_integration::kube::{
    FakeNode, KubeCluster, create_fake_node, create_namespace, keda_crds_dir, wait_until,
};
use headroom_integration::{RedisServer, repo_root, start_scaler};
use headroom_provisioner::crd::PrewarmPolicy;
use headroom_scaler::server::ServeConfig;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn claims_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim")),
    )
}

/// Karpenter's, KEDA's ScaledObject and Headroom's CRDs, and the kwok node class.
fn install_crds(cluster: &KubeCluster) {
    cluster.install_karpenter_crds().unwrap();
    cluster
        .apply_path(&keda_crds_dir().join("keda.sh_scaledobjects.yaml"))
        .unwrap();
    cluster
        .apply_path(&repo_root().join("charts/headroom/crds/prewarmpolicies.headroom.dev.yaml"))
        .unwrap();
    cluster
        .wait_established(&[
            "crd/scaledobjects.keda.sh",
            "crd/prewarmpolicies.headroom.dev",
        ])
        .unwrap();
    cluster
        .apply(
            "apiVersion: karpenter.kwok.sh/v1alpha1\nkind: KWOKNodeClass\nmetadata:\n  name: default\n",
        )
        .unwrap();
}

/// The shared cluster, with [`install_crds`] done once.
fn cluster() -> &'static KubeCluster {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let cluster = KubeCluster::shared().unwrap();
    READY.get_or_init(|| install_crds(cluster));
    cluster
}

/// A NodePool named after the namespace, allowing three GPU types.
fn node_pool(cluster: &KubeCluster, name: &str) {
    cluster
        .apply(&format!(
            r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: {name}
spec:
  template:
    metadata:
      labels:
        headroom.dev/pool: {name}
    spec:
      nodeClassRef:
        group: karpenter.kwok.sh
        kind: KWOKNodeClass
        name: default
      requirements:
        - key: node.kubernetes.io/instance-type
          operator: In
          values: ["g5.xlarge", "g5.2xlarge", "g5.12xlarge"]
        - key: karpenter.sh/capacity-type
          operator: In
          values: ["on-demand"]
"#
        ))
        .unwrap();
}

/// A GPU worker Deployment (0 replicas: no pod exists) and its ScaledObject with an external
/// trigger on the Redis list `jobs` (one replica per 2 items).
fn workload(cluster: &KubeCluster, ns: &str, scaler: &str, redis: &str, gpus: u32) {
    cluster
        .apply(&format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: worker
  namespace: {ns}
spec:
  replicas: 0
  selector:
    matchLabels: {{app: worker}}
  template:
    metadata:
      labels: {{app: worker}}
    spec:
      nodeSelector: {{headroom.dev/pool: gpu}}
      containers:
        - name: main
          image: registry.k8s.io/pause:3.10
          resources:
            requests: {{cpu: "3", memory: 12Gi, nvidia.com/gpu: "{gpus}"}}
            limits: {{nvidia.com/gpu: "{gpus}"}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
  namespace: {ns}
spec:
  scaleTargetRef: {{name: worker}}
  minReplicaCount: 0
  maxReplicaCount: 20
  triggers:
    - type: external
      metadata:
        scalerAddress: "{scaler}"
        source: redis-list
        address: "{redis}"
        listName: jobs
        listLength: "2"
"#
        ))
        .unwrap();
}

fn policy(ns: &str, name: &str, so: &str, pool: &str, demand: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: headroom.dev/v1alpha1
kind: PrewarmPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  scaledObjectRef: {{name: {so}}}
  demandAddress: "{demand}"
  leadTime: 3m
  scaleDownAfter: 8s
  mode: karpenter
  karpenter:
    nodePool: {pool}
    instanceTypes:
      - {{name: g5.xlarge, gpus: 1, cpu: 3920m, memory: 14Gi, hourlyPrice: 1.006}}
      - {{name: g5.12xlarge, gpus: 4, cpu: "47", memory: 180Gi, hourlyPrice: 5.672}}
{extra}"#
    )
}

async fn provisioner(
    client: &kube::Client,
    ns: &str,
    identity: &str,
    dry_run: bool,
) -> headroom_provisioner::Running {
    let mut config = headroom_provisioner::Config::local(identity, ns);
    config.watch_namespace = Some(ns.to_string());
    config.dry_run = dry_run;
    headroom_provisioner::start(config, client.clone(), None)
        .await
        .unwrap()
}

async fn claims_of(client: &kube::Client, ns: &str, policy: &str) -> Vec<DynamicObject> {
    claims_api(client)
        .list(&ListParams::default().labels(&format!("headroom.dev/policy={ns}.{policy}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .collect()
}

fn condition(p: &PrewarmPolicy, kind: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the policy's condition `kind` has `status` and `reason`; returns its message.
async fn wait_condition(
    api: &Api<PrewarmPolicy>,
    name: &str,
    kind: &str,
    status: &str,
    reason: &str,
) -> String {
    wait_until(WAIT, &format!("{name}: {kind}={status} ({reason})"), || {
        let api = api.clone();
        async move {
            let p = api.get(name).await?;
            let c = condition(&p, kind);
            anyhow::ensure!(
                c.as_ref()
                    .is_some_and(|(s, r, _)| s == status && r == reason),
                "conditions: {:?}",
                p.status.map(|s| s.conditions)
            );
            Ok(c.map(|(_, _, m)| m))
        }
    })
    .await
    .unwrap()
}

/// What most tests start with: a namespace, its NodePool `gpu-<ns>`, a Redis, a scaler and
/// the workload (a Deployment and its ScaledObject `worker`, one GPU per pod).
struct Bed {
    client: kube::Client,
    ns: String,
    pool: String,
    redis: RedisServer,
    scaler: headroom_scaler::server::Running,
    scaler_addr: String,
    _keda: headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
}

async fn bed(cluster: &KubeCluster, prefix: &str) -> Bed {
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, prefix).await.unwrap();
    let pool = format!("gpu-{ns}");
    node_pool(cluster, &pool);
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _keda) = start_scaler(ServeConfig::local()).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(cluster, &ns, &scaler_addr, &redis.address(), 1);
    Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    }
}

async fn push_jobs(redis: &RedisServer, n: usize) {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let items: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
    let _: () = redis::cmd("RPUSH")
        .arg("jobs")
        .arg(&items)
        .query_async(&mut c)
        .await
        .unwrap();
}

async fn clear_jobs(redis: &RedisServer) {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("jobs")
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_installs_and_rejects_an_invalid_policy() {
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-crd").await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "headroom.dev",
            "v1alpha1",
            "PrewarmPolicy",
        )),
    );
    let good: Value = serde_yaml::from_str(&policy(
        &ns,
        "ok",
        "worker",
        "gpu",
        "s:9090",
        "  limits: {maxNodes: 2, maxGpus: 2}\n",
    ))
    .unwrap();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(good.clone()).unwrap(),
    )
    .await
    .unwrap();
    for (what, patch) in [
        ("no limits", json!({"spec": {"limits": null}})),
        (
            "an unknown mode",
            json!({"spec": {"mode": "gce", "limits": {"maxNodes": 1, "maxGpus": 1}}}),
        ),
        (
            "a lead time in words",
            json!({"spec": {"leadTime": "3 minutes", "limits": {"maxNodes": 1, "maxGpus": 1}}}),
        ),
    ] {
        let mut bad = good.clone();
        bad["metadata"]["name"] = json!("bad");
        json_merge(&mut bad, &patch);
        match api
            .create(
                &PostParams::default(),
                &serde_json::from_value(bad).unwrap(),
            )
            .await
        {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{what}: {s:?}"),
            other => panic!("{what}: accepted or unexpected: {other:?}"),
        }
    }

    // EC2 launch intents live in the policy's annotation: read back as written, cleared, and
    // never read from or written onto another object of the same name.
    use headroom_provisioner::provider::PolicyRef;
    use headroom_provisioner::providers::intent::{Intent, IntentStore, PolicyAnnotation};
    let typed: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let uid = typed.get("ok").await.unwrap().metadata.uid.unwrap();
    let store = PolicyAnnotation::new(client.clone());
    let pref = PolicyRef {
        namespace: ns.clone(),
        name: "ok".into(),
        uid,
    };
    assert_eq!(store.read(&pref).await.unwrap(), None);
    let intent = Intent {
        token: "uid-2".into(),
        at: 1_763_980_000_000,
        count: 3,
    };
    store.write(&pref, Some(&intent)).await.unwrap();
    assert_eq!(store.read(&pref).await.unwrap(), Some(intent.clone()));
    let stranger = PolicyRef {
        uid: "another-uid".into(),
        ..pref.clone()
    };
    assert_eq!(store.read(&stranger).await.unwrap(), None);
    assert!(store.write(&stranger, None).await.is_err());
    assert_eq!(store.read(&pref).await.unwrap(), Some(intent));
    store.write(&pref, None).await.unwrap();
    assert_eq!(store.read(&pref).await.unwrap(), None);
}

fn json_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A NodeClaim deleted before it was ready (as Karpenter deletes one it cannot launch:
/// insufficient capacity, a registration timeout) is a failed launch: counted, reported as
/// `CapacityFailing`, and not recreated while the backoff runs. The test deletes the NodeClaim
/// itself, standing in for Karpenter (no Karpenter controller runs in this file's cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodeclaim_deleted_before_it_is_ready_backs_off_and_says_so() {
    let cluster = cluster();
    let Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    } = bed(cluster, "pwp-fail").await;
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 2, maxGpus: 2}\n",
        ))
        .unwrap();
    // listLength 2: four jobs, two replicas, two one-GPU nodes.
    push_jobs(&redis, 4).await;
    let running = provisioner(&client, &ns, "solo", false).await;
    let claims = wait_until(WAIT, "two NodeClaims", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let c = claims_of(&client, &ns, "gpu").await;
            Ok((c.len() == 2).then_some(c))
        }
    })
    .await
    .unwrap();
    let failed = claims[0].metadata.name.clone().unwrap();
    claims_api(&client)
        .delete(&failed, &DeleteParams::default())
        .await
        .unwrap();
    let api: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let m = wait_condition(&api, "gpu", "CapacityFailing", "True", "LaunchFailed").await;
    assert!(
        m.contains(&failed) && m.contains("nothing is created until"),
        "{m}"
    );
    // Backing off (30 s): the plan still wants two, but nothing replaces it yet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        claims_of(&client, &ns, "gpu").await.len(),
        1,
        "recreated during the backoff"
    );
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "LaunchFailed"), "{reasons:?}");
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// The main story: a spike creates the right NodeClaims before any pod exists, within the
/// limits and once; a second replica stays passive and takes over without duplicating; demand
/// gone, idle capacity goes after scaleDownAfter and busy capacity stays; deletion cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_spike_creates_nodeclaims_ahead_of_pods_within_limits_once_and_scales_down_idle_ones()
 {
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-spike").await.unwrap();
    let pool = format!("gpu-{ns}");
    node_pool(cluster, &pool);
    let redis = RedisServer::start(&[]).unwrap();
    let mut scaler_config = ServeConfig::local();
    scaler_config.observation_ttl = Duration::from_millis(100);
    let (scaler, _keda) = start_scaler(scaler_config).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(cluster, &ns, &scaler_addr, &redis.address(), 1);
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 3, maxGpus: 8}\n",
        ))
        .unwrap();
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);

    let first = provisioner(&client, &ns, "replica-a", false).await;
    wait_until(WAIT, "replica-a leading", || async {
        Ok(first.is_leader().then_some(()))
    })
    .await
    .unwrap();
    let second = provisioner(&client, &ns, "replica-b", false).await;
    wait_condition(&policies, "gpu", "DemandAvailable", "True", "Answering").await;
    assert!(
        claims_of(&client, &ns, "gpu").await.is_empty(),
        "an empty queue wants nothing"
    );

    // The spike: 8 jobs, 2 per replica = 4 replicas of 1 GPU; maxNodes holds it at 3.
    let t0 = Instant::now();
    push_jobs(&redis, 8).await;
    let claims = wait_until(WAIT, "3 NodeClaims", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let c = claims_of(&client, &ns, "gpu").await;
            Ok((c.len() >= 3).then_some(c))
        }
    })
    .await
    .unwrap();
    let spike_to_claims = t0.elapsed();
    eprintln!(
        "provisioner: forecast spike (8 jobs pushed) -> 3 NodeClaims created in {:.3} s",
        spike_to_claims.as_secs_f64()
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod exists yet"
    );
    for c in &claims {
        let labels = c.metadata.labels.clone().unwrap();
        assert_eq!(labels["headroom.dev/policy"], format!("{ns}.gpu"));
        assert_eq!(labels["karpenter.sh/nodepool"], pool);
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "headroom-provisioner"
        );
        assert_eq!(
            labels["headroom.dev/pool"], pool,
            "the pool template's labels are copied"
        );
        let annotations = c.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
        let reqs = c.data["spec"]["requirements"].as_array().unwrap();
        let types = reqs
            .iter()
            .find(|r| r["key"] == "node.kubernetes.io/instance-type")
            .unwrap();
        assert_eq!(
            types["values"],
            json!(["g5.xlarge"]),
            "the cheapest type holding one pod"
        );
        assert_eq!(
            c.data["spec"]["resources"]["requests"]["nvidia.com/gpu"],
            "1"
        );
        assert_eq!(c.data["spec"]["nodeClassRef"]["kind"], "KWOKNodeClass");
    }
    let msg = wait_condition(&policies, "gpu", "LimitReached", "True", "MaxNodes").await;
    assert!(msg.contains("maxNodes"), "{msg}");
    let p = policies.get("gpu").await.unwrap();
    let status = p.status.unwrap();
    assert_eq!(status.desired_nodes, 3);
    assert_eq!(status.last_forecast.as_ref().unwrap().peak_replicas, 4);
    assert_eq!(status.observed_generation, p.metadata.generation);

    // Limits hold and nothing is made twice over several passes; the second replica is passive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(claims_of(&client, &ns, "gpu").await.len(), 3);
    assert!(
        first.is_leader() && !second.is_leader(),
        "one leader, one passive replica"
    );

    // The leader goes; the passive replica takes over and adopts the 3 NodeClaims.
    let names = |cs: &[DynamicObject]| {
        let mut n: Vec<String> = cs
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        n.sort();
        n
    };
    let before = names(&claims);
    first.shutdown();
    first.wait().await.unwrap();
    wait_until(WAIT, "replica-b leading", || async {
        Ok(second.is_leader().then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        names(&claims_of(&client, &ns, "gpu").await),
        before,
        "the new leader adopts, it does not create again"
    );

    // One NodeClaim becomes a node that runs a worker pod: busy.
    let busy_claim = before[0].clone();
    let node_name = format!("node-{ns}");
    create_fake_node(&client, &FakeNode::new(&node_name).gpus(1))
        .await
        .unwrap();
    claims_api(&client)
        .patch_status(
            &busy_claim,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeName": node_name}})),
        )
        .await
        .unwrap();
    // A worker that KEDA scaled down and that is still finishing its task: terminating (its
    // finalizer holds it), still running on the node.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "worker-busy", "labels": {"app": "worker"}, "finalizers": ["example.com/finishing"]},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.delete("worker-busy", &DeleteParams::default())
        .await
        .unwrap();

    // Demand gone: idle NodeClaims go only after scaleDownAfter (8 s), the busy one stays.
    clear_jobs(&redis).await;
    let dropped = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        claims_of(&client, &ns, "gpu").await.len(),
        3,
        "nothing is removed before scaleDownAfter"
    );
    let left = wait_until(WAIT, "idle NodeClaims removed", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let c = claims_of(&client, &ns, "gpu").await;
            Ok((c.len() == 1).then_some(c))
        }
    })
    .await
    .unwrap();
    eprintln!(
        "provisioner: idle capacity removed {:.1} s after demand dropped (scaleDownAfter 8 s)",
        dropped.elapsed().as_secs_f64()
    );
    assert_eq!(
        left[0].metadata.name.as_deref(),
        Some(busy_claim.as_str()),
        "the one running a terminating worker stays"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = nodes.get(&node_name).await.unwrap();
    assert_ne!(
        node.spec.and_then(|s| s.unschedulable),
        Some(true),
        "a kept node is not left cordoned"
    );
    // The worker finishes: its node is idle, and goes after scaleDownAfter.
    pods.patch(
        "worker-busy",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_until(WAIT, "the finished worker's NodeClaim removed", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            Ok(claims_of(&client, &ns, "gpu")
                .await
                .is_empty()
                .then_some(()))
        }
    })
    .await
    .unwrap();
    wait_condition(&policies, "gpu", "LimitReached", "False", "WithinLimits").await;

    // Events say what happened.
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["CapacityCreated", "CapacityRemoved", "MaxNodes"] {
        assert!(reasons.iter().any(|x| x == r), "event {r} in {reasons:?}");
    }

    // Deleting the policy removes what it holds, then the policy goes.
    policies
        .delete("gpu", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        WAIT,
        "the policy deleted and its NodeClaims removed",
        || {
            let (client, ns, policies) = (client.clone(), ns.clone(), policies.clone());
            async move {
                let gone = policies.get_opt("gpu").await?.is_none();
                Ok((gone && claims_of(&client, &ns, "gpu").await.is_empty()).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    second.shutdown();
    second.wait().await.unwrap();
    scaler.shutdown();
}

/// Bad input: a condition and an event that say what is wrong, and nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_conditions_and_events_and_creates_nothing() {
    let cluster = cluster();
    let Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    } = bed(cluster, "pwp-bad").await;
    push_jobs(&redis, 6).await;
    let limits = "  limits: {maxNodes: 4, maxGpus: 4}\n";
    for (name, so, nodepool, demand, extra) in [
        (
            "no-so",
            "missing",
            pool.as_str(),
            scaler_addr.as_str(),
            limits,
        ),
        (
            "no-pool",
            "worker",
            "missing-pool",
            scaler_addr.as_str(),
            limits,
        ),
        ("no-demand", "worker", pool.as_str(), "127.0.0.1:1", limits),
        (
            "zero",
            "worker",
            pool.as_str(),
            scaler_addr.as_str(),
            "  limits: {maxNodes: 0, maxGpus: 0}\n",
        ),
    ] {
        cluster
            .apply(&policy(&ns, name, so, nodepool, demand, extra))
            .unwrap();
    }
    // A pod of 8 GPUs fits no instance type listed.
    cluster
        .apply(&format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: huge, namespace: {ns}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: huge}}}}
  template:
    metadata: {{labels: {{app: huge}}}}
    spec:
      containers:
        - name: main
          image: registry.k8s.io/pause:3.10
          resources: {{limits: {{nvidia.com/gpu: "8"}}}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: huge, namespace: {ns}}}
spec:
  scaleTargetRef: {{name: huge}}
  triggers:
    - type: external
      metadata: {{scalerAddress: "{scaler_addr}", source: redis-list, address: "{}", listName: jobs}}
"#,
            redis.address()
        ))
        .unwrap();
    cluster
        .apply(&policy(&ns, "too-big", "huge", &pool, &scaler_addr, limits))
        .unwrap();
    // What the operator does not allow: another NodePool, a PriorityClass that outranks real
    // pods, an EC2 endpoint that would receive signed requests.
    let other_pool = format!("other-{ns}");
    node_pool(cluster, &other_pool);
    cluster
        .apply(&policy(
            &ns,
            "not-allowed",
            "worker",
            &other_pool,
            &scaler_addr,
            limits,
        ))
        .unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: high-{ns}}}
value: 1000
---
apiVersion: headroom.dev/v1alpha1
kind: PrewarmPolicy
metadata: {{name: high-priority, namespace: {ns}}}
spec:
  scaledObjectRef: {{name: worker}}
  demandAddress: "{scaler_addr}"
  mode: overprovision
  overprovision: {{priorityClassName: high-{ns}}}
  limits: {{maxNodes: 4, maxGpus: 4}}
---
apiVersion: headroom.dev/v1alpha1
kind: PrewarmPolicy
metadata: {{name: own-endpoint, namespace: {ns}}}
spec:
  scaledObjectRef: {{name: worker}}
  demandAddress: "{scaler_addr}"
  mode: ec2
  ec2:
    region: us-east-1
    launchTemplate: {{id: lt-0123456789abcdef0}}
    instanceTypes: [{{name: g5.xlarge, gpus: 1, cpu: "4", memory: 16Gi}}]
    subnetIds: [subnet-1]
    endpoint: http://127.0.0.1:1
  limits: {{maxNodes: 4, maxGpus: 4}}
"#
        ))
        .unwrap();

    let mut config = headroom_provisioner::Config::local("solo", &ns);
    config.watch_namespace = Some(ns.to_string());
    config.boundaries.node_pools = Some(
        headroom_provisioner::admin::AllowList::parse(
            "allowed-node-pools",
            &[format!("{ns}/{pool}"), format!("{ns}/missing-pool")],
            false,
        )
        .unwrap(),
    );
    let running = headroom_provisioner::start(config, client.clone(), None)
        .await
        .unwrap();
    let api: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let m = wait_condition(
        &api,
        "no-so",
        "ShapeResolved",
        "False",
        "ScaledObjectNotFound",
    )
    .await;
    assert!(m.contains("missing"), "{m}");
    let m = wait_condition(&api, "no-pool", "Ready", "False", "NodePoolNotFound").await;
    assert!(m.contains("missing-pool"), "{m}");
    let m = wait_condition(
        &api,
        "no-demand",
        "DemandAvailable",
        "False",
        "DemandUnavailable",
    )
    .await;
    assert!(m.contains("127.0.0.1:1"), "{m}");
    let m = wait_condition(
        &api,
        "too-big",
        "ShapeResolved",
        "False",
        "NoInstanceTypeFits",
    )
    .await;
    assert!(m.contains("8 GPU"), "{m}");
    let m = wait_condition(&api, "zero", "LimitReached", "True", "MaxNodes").await;
    assert!(m.contains("0 node"), "{m}");
    let m = wait_condition(&api, "not-allowed", "Allowed", "False", "NotAllowed").await;
    assert!(
        m.contains(&other_pool) && m.contains("--allowed-node-pools"),
        "{m}"
    );
    let m = wait_condition(&api, "own-endpoint", "Allowed", "False", "NotAllowed").await;
    assert!(
        m.contains("127.0.0.1:1") && m.contains("--allowed-ec2-endpoints"),
        "{m}"
    );
    let m = wait_condition(&api, "high-priority", "Ready", "False", "NotAllowed").await;
    assert!(m.contains("value 1000"), "{m}");
    let placeholders: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    assert!(
        placeholders
            .get_opt("high-priority-headroom")
            .await
            .unwrap()
            .is_none(),
        "a placeholder Deployment under a positive PriorityClass"
    );

    // Give every policy a few passes, then: nothing created by any of them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in [
        "no-so",
        "no-pool",
        "no-demand",
        "zero",
        "too-big",
        "not-allowed",
    ] {
        assert!(
            claims_of(&client, &ns, name).await.is_empty(),
            "{name} created NodeClaims"
        );
    }
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in [
        "ScaledObjectNotFound",
        "NodePoolNotFound",
        "DemandUnavailable",
        "NoInstanceTypeFits",
        "MaxNodes",
        "NotAllowed",
    ] {
        assert!(reasons.iter().any(|x| x == r), "event {r} in {reasons:?}");
    }
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// `--dry-run`: plans and writes status, creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_plans_and_writes_status_but_creates_nothing() {
    let cluster = cluster();
    let Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    } = bed(cluster, "pwp-dry").await;
    push_jobs(&redis, 4).await;
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 4, maxGpus: 4}\n",
        ))
        .unwrap();
    let running = provisioner(&client, &ns, "dry", true).await;
    let api: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let m = wait_condition(&api, "gpu", "Ready", "True", "DryRun").await;
    assert!(m.contains("would create 2"), "{m}");
    assert_eq!(
        api.get("gpu").await.unwrap().status.unwrap().desired_nodes,
        2
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(claims_of(&client, &ns, "gpu").await.is_empty());
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// End to end with the real Karpenter controller (its kwok provider) on a cluster of its own:
/// the NodeClaims Headroom creates ahead of a spike become Ready nodes with their GPUs, before
/// any pod exists, and the policy reports them warm with the observed time to capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn karpenter_turns_headrooms_nodeclaims_into_ready_gpu_nodes_before_any_pod_exists() {
    let cluster = KubeCluster::start().unwrap();
    cluster.start_karpenter(None).unwrap();
    install_crds(&cluster);
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-e2e").await.unwrap();
    let pool = "gpu".to_string();
    node_pool(&cluster, &pool);
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _keda) = start_scaler(ServeConfig::local()).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(&cluster, &ns, &scaler_addr, &redis.address(), 1);
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 4, maxGpus: 4}\n",
        ))
        .unwrap();
    let running = provisioner(&client, &ns, "e2e", false).await;
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    wait_condition(&policies, "gpu", "DemandAvailable", "True", "Answering").await;

    let t0 = Instant::now();
    push_jobs(&redis, 4).await;
    let warm = wait_until(
        Duration::from_secs(120),
        "2 warm nodes in the policy's status",
        || {
            let policies = policies.clone();
            async move {
                let s = policies.get("gpu").await?.status.unwrap_or_default();
                anyhow::ensure!(s.warm_nodes == 2, "status: {s:?}");
                Ok(Some(s))
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nkarpenter log:\n{}",
            cluster.log_tail("karpenter", 40)
        )
    });
    let to_warm = t0.elapsed();
    assert_eq!(warm.in_flight_nodes, 0);
    let ttc = warm.observed_time_to_capacity_seconds.unwrap();
    assert!((0.0..120.0).contains(&ttc), "{ttc}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod exists"
    );
    let claims = claims_of(&client, &ns, "gpu").await;
    assert_eq!(claims.len(), 2);
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for c in &claims {
        let node = nodes
            .get(c.data["status"]["nodeName"].as_str().unwrap())
            .await
            .unwrap();
        let labels = node.metadata.labels.clone().unwrap();
        assert_eq!(labels["node.kubernetes.io/instance-type"], "g5.xlarge");
        assert_eq!(
            labels["headroom.dev/policy"],
            format!("{ns}.gpu"),
            "Karpenter copies the owner label"
        );
        assert_eq!(
            node.status.unwrap().allocatable.unwrap()["nvidia.com/gpu"].0,
            "1"
        );
    }
    eprintln!(
        "provisioner e2e: spike -> 2 Karpenter nodes Ready and Initialized in {:.1} s (observed time to capacity {ttc:.1} s)",
        to_warm.as_secs_f64()
    );
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// `mode: overprovision` through the controller: a spike scales the policy's placeholder
/// Deployment to the replicas the forecast wants, shaped like the workload's pods; demand gone,
/// the placeholders go after scaleDownAfter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overprovision_mode_scales_placeholders_shaped_like_the_workload_and_back() {
    use k8s_openapi::api::apps::v1::Deployment;

    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-over").await.unwrap();
    let redis = RedisServer::start(&[]).unwrap();
    let mut scaler_config = ServeConfig::local();
    scaler_config.observation_ttl = Duration::from_millis(100);
    let (scaler, _keda) = start_scaler(scaler_config).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(cluster, &ns, &scaler_addr, &redis.address(), 1);
    cluster
        .apply(&format!(
            r#"
apiVersion: headroom.dev/v1alpha1
kind: PrewarmPolicy
metadata:
  name: warm
  namespace: {ns}
spec:
  scaledObjectRef: {{name: worker}}
  demandAddress: "{scaler_addr}"
  leadTime: 3m
  scaleDownAfter: 5s
  mode: overprovision
  limits: {{maxNodes: 10, maxGpus: 10}}
"#
        ))
        .unwrap();
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let _running = provisioner(&client, &ns, "replica-over", false).await;
    wait_condition(&policies, "warm", "DemandAvailable", "True", "Answering").await;

    // 6 jobs, 2 per replica: 3 replicas wanted, none running, so 3 placeholders.
    push_jobs(&redis, 6).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let placeholder = wait_until(WAIT, "placeholder Deployment at 3 replicas", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get_opt("warm-headroom").await?;
            Ok(d.filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(3)))
        }
    })
    .await
    .unwrap();
    let pod = placeholder.spec.unwrap().template.spec.unwrap();
    let requests = pod.containers[0]
        .resources
        .as_ref()
        .unwrap()
        .requests
        .clone()
        .unwrap();
    let quantity = |k: &str| headroom_provisioner::shape::parse_quantity(&requests[k].0);
    assert_eq!(quantity("nvidia.com/gpu"), Some(1.0));
    assert_eq!(quantity("cpu"), Some(3.0));
    assert_eq!(quantity("memory"), Some(12.0 * 1024.0 * 1024.0 * 1024.0));
    assert_eq!(
        pod.node_selector.unwrap()["headroom.dev/pool"],
        "gpu",
        "the workload's node selector is copied"
    );
    assert!(pod.priority_class_name.is_some());

    // Demand gone: after scaleDownAfter the placeholders are scaled away.
    clear_jobs(&redis).await;
    wait_until(Duration::from_secs(60), "placeholders scaled to 0", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("warm-headroom").await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(0)).then_some(()))
        }
    })
    .await
    .unwrap();
}

/// Image warming with the real Karpenter (its kwok provider): the node of a Headroom NodeClaim
/// gets a pre-pull pod pinned to it with every image of the workload's pod template (init
/// containers too), its pull secrets and a tolerate-everything toleration; once kwok runs it
/// (a kubelet starts a container only after its pull), the pod goes, the NodeClaim records the
/// images and the policy reports the unit image-warm. A new workload image pulls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_nodeclaim_gets_a_prepull_pod_with_the_workload_images_and_then_counts_image_warm()
{
    use futures::StreamExt;
    use headroom_provisioner::warm;
    use kube::runtime::watcher;

    let cluster = KubeCluster::start().unwrap();
    cluster.start_karpenter(None).unwrap();
    install_crds(&cluster);
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-warm").await.unwrap();
    let pool = "gpu".to_string();
    node_pool(&cluster, &pool);
    // The pool's nodes are tainted: the pre-pull pod must tolerate what the node has.
    cluster
        .kubectl(&[
            "patch",
            "nodepool",
            &pool,
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"taints":[{"key":"nvidia.com/gpu","value":"true","effect":"NoSchedule"}]}}}}"#,
        ])
        .unwrap();
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _keda) = start_scaler(ServeConfig::local()).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(&cluster, &ns, &scaler_addr, &redis.address(), 1);
    let template = json!({"spec": {"template": {"spec": {
        "imagePullSecrets": [{"name": "regcred"}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "initContainers": [{"name": "migrate", "image": "registry.example/migrate:1"}],
        "containers": [
            {"name": "main", "image": "registry.example/worker:2",
             "resources": {"requests": {"cpu": "3", "memory": "12Gi", "nvidia.com/gpu": "1"},
                           "limits": {"nvidia.com/gpu": "1"}}},
            {"name": "sidecar", "image": "registry.example/sidecar:3"},
        ],
    }}}});
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    deployments
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Strategic(&template),
        )
        .await
        .unwrap();
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 2, maxGpus: 2}\n",
        ))
        .unwrap();

    // Every pre-pull pod as it was first seen (it may live for less than a second).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Pod>::new()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let watch = {
        let seen = seen.clone();
        let stream = watcher(
            pods.clone(),
            watcher::Config::default().labels("headroom.dev/warm=prepull"),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(e) = stream.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = e {
                    let mut seen = seen.lock().unwrap();
                    if !seen.iter().any(|s| s.metadata.uid == p.metadata.uid) {
                        seen.push(p);
                    }
                }
            }
        })
    };

    let mut config = headroom_provisioner::Config::local("warm", &ns);
    config.watch_namespace = Some(ns.clone());
    config.warm_helper = Some(warm::Helper {
        image: "headroom/provisioner:test".into(),
        path: "/usr/local/bin/headroom-warm".into(),
    });
    let running = headroom_provisioner::start(config, client.clone(), None)
        .await
        .unwrap();
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    wait_condition(&policies, "gpu", "DemandAvailable", "True", "Answering").await;
    push_jobs(&redis, 2).await;

    let images = [
        "registry.example/migrate:1",
        "registry.example/worker:2",
        "registry.example/sidecar:3",
    ];
    let hash = warm::images_hash(&images.map(String::from));
    let wait_warm = |hash: String| {
        let policies = policies.clone();
        async move {
            wait_until(
                Duration::from_secs(120),
                "1 image-warm unit in the policy's status",
                || {
                    let policies = policies.clone();
                    let hash = hash.clone();
                    async move {
                        let p = policies.get("gpu").await?;
                        let s = p.status.clone().unwrap_or_default();
                        let w = s.image_warm.clone().unwrap_or_default();
                        anyhow::ensure!(
                            w.warm_units == 1 && w.pulling_units == 0 && w.images == hash,
                            "status: {s:?}"
                        );
                        Ok(Some(p))
                    }
                },
            )
            .await
        }
    };
    let warm_policy = wait_warm(hash.clone()).await.unwrap_or_else(|e| {
        panic!(
            "{e:#}\nkarpenter log:\n{}",
            cluster.log_tail("karpenter", 40)
        )
    });
    let c = condition(&warm_policy, "ImageWarm").unwrap();
    assert_eq!(
        (c.0.as_str(), c.1.as_str()),
        ("True", "ImagesPulled"),
        "{c:?}"
    );

    let claims = claims_of(&client, &ns, "gpu").await;
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    let node = claim.data["status"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        claim.metadata.annotations.as_ref().unwrap()[warm::IMAGES_ANNOTATION],
        hash,
        "the NodeClaim records the images it holds"
    );
    let first: Vec<Pod> = seen.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "one pre-pull pod: {first:?}");
    let pod = &first[0];
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["headroom.dev/policy"], format!("{ns}.gpu"));
    assert_eq!(
        labels[warm::UNIT_LABEL],
        claim.metadata.name.clone().unwrap()
    );
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.as_str()),
        "pinned to the node"
    );
    let pulled: Vec<&str> = spec
        .containers
        .iter()
        .map(|c| c.image.as_deref().unwrap())
        .collect();
    assert_eq!(pulled, images, "every image, init containers too");
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
    let t = spec.tolerations.unwrap();
    assert_eq!(
        (t.len(), t[0].operator.as_deref(), t[0].key.as_deref()),
        (1, Some("Exists"), None)
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    for c in &spec.containers {
        let r = c.resources.clone().unwrap().requests.unwrap();
        assert!(!r.contains_key("nvidia.com/gpu"), "no GPU request");
        assert_eq!(r["cpu"].0, "1m");
    }
    assert_eq!(
        spec.init_containers.unwrap()[0].image.as_deref(),
        Some("headroom/provisioner:test")
    );
    // The pod is gone once pulled.
    wait_until(WAIT, "the pre-pull pod removed", || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default().labels("headroom.dev/warm=prepull"))
                .await?
                .items;
            anyhow::ensure!(
                left.is_empty(),
                "left: {:?}",
                left.iter()
                    .map(|p| p.metadata.name.clone())
                    .collect::<Vec<_>>()
            );
            Ok(Some(()))
        }
    })
    .await
    .unwrap();

    // A new image: the warm unit pulls again.
    let new_image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "registry.example/sidecar:4"},
    ]}}}});
    deployments
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Strategic(&new_image),
        )
        .await
        .unwrap();
    let new_hash = warm::images_hash(
        &[
            "registry.example/migrate:1",
            "registry.example/worker:2",
            "registry.example/sidecar:4",
        ]
        .map(String::from),
    );
    wait_warm(new_hash.clone()).await.unwrap();
    let all: Vec<Pod> = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "a second pre-pull pod for the new images");
    assert_eq!(
        all[1].metadata.annotations.as_ref().unwrap()[warm::IMAGES_ANNOTATION],
        new_hash
    );
    assert_eq!(
        all[1].spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    eprintln!(
        "provisioner warm: pre-pull pods {:?}",
        all.iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    watch.abort();
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// A pull that fails is a condition and an event naming the image and the node, and the unit
/// counts as failed, not warm; once the kubelet reports the container started, it is warm. The
/// NodeClaim's node here is one no kubelet (nor kwok) serves, so the test plays the kubelet by
/// writing the pre-pull pod's status, as a real one would on `ErrImagePull`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_is_a_condition_and_an_event_and_the_unit_is_not_warm() {
    use headroom_provisioner::warm;

    let cluster = cluster();
    let Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    } = bed(cluster, "pwp-pullfail").await;
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 1, maxGpus: 1}\n",
        ))
        .unwrap();
    let mut config = headroom_provisioner::Config::local("pullfail", &ns);
    config.watch_namespace = Some(ns.clone());
    config.warm_helper = Some(warm::Helper {
        image: "headroom/provisioner:test".into(),
        path: "/usr/local/bin/headroom-warm".into(),
    });
    let running = headroom_provisioner::start(config, client.clone(), None)
        .await
        .unwrap();
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    wait_condition(&policies, "gpu", "DemandAvailable", "True", "Answering").await;
    push_jobs(&redis, 2).await;
    let claim = wait_until(WAIT, "one NodeClaim", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let c = claims_of(&client, &ns, "gpu").await;
            Ok((c.len() == 1).then(|| c[0].clone()))
        }
    })
    .await
    .unwrap();
    let claim_name = claim.metadata.name.clone().unwrap();
    // Launched and Initialized, on a node no kubelet serves.
    let node = format!("ghost-{ns}");
    claims_api(&client)
        .patch_status(
            &claim_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "nodeName": node,
                "conditions": [{"type": "Initialized", "status": "True", "reason": "Initialized",
                                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            }})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = wait_until(WAIT, "a pre-pull pod on the ghost node", || {
        let pods = pods.clone();
        async move {
            let p = pods
                .list(&ListParams::default().labels("headroom.dev/warm=prepull"))
                .await?
                .items;
            Ok(p.into_iter().next())
        }
    })
    .await
    .unwrap();
    let pod_name = pod.metadata.name.clone().unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some(node.as_str()));
    let image = "registry.k8s.io/pause:3.10";
    let status = |state: Value, phase: &str| {
        json!({"status": {"phase": phase, "containerStatuses": [{
            "name": "pull-0", "image": image, "imageID": "", "ready": false,
            "restartCount": 0, "state": state,
        }]}})
    };
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(status(
            json!({"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}),
            "Pending",
        )),
    )
    .await
    .unwrap();
    let message = wait_condition(&policies, "gpu", "ImageWarm", "False", "ErrImagePull").await;
    assert!(
        message.contains(image)
            && message.contains(&node)
            && message.contains("pull access denied"),
        "{message}"
    );
    let s = policies.get("gpu").await.unwrap().status.unwrap();
    let w = s.image_warm.unwrap();
    assert_eq!((w.failed_units, w.warm_units), (1, 0), "failed, not warm");
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    wait_until(WAIT, "an ErrImagePull event", || {
        let events = events.clone();
        async move {
            let e = events.list(&Default::default()).await?.items;
            Ok(e.into_iter()
                .find(|e| e.reason.as_deref() == Some("ErrImagePull")))
        }
    })
    .await
    .unwrap();
    assert!(
        pods.get_opt(&pod_name).await.unwrap().is_some(),
        "a failed pull keeps its pod (the kubelet retries)"
    );

    // The kubelet pulled after all: the container runs, the unit is warm, the pod goes.
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(status(
            json!({"running": {"startedAt": "2026-01-01T00:00:05Z"}}),
            "Running",
        )),
    )
    .await
    .unwrap();
    wait_condition(&policies, "gpu", "ImageWarm", "True", "ImagesPulled").await;
    let w = policies
        .get("gpu")
        .await
        .unwrap()
        .status
        .unwrap()
        .image_warm
        .unwrap();
    assert_eq!((w.failed_units, w.warm_units), (0, 1));
    wait_until(WAIT, "the pre-pull pod removed", || {
        let pods = pods.clone();
        let pod_name = pod_name.clone();
        async move { Ok(pods.get_opt(&pod_name).await?.is_none().then_some(())) }
    })
    .await
    .unwrap();
    let c = claims_api(&client).get(&claim_name).await.unwrap();
    assert_eq!(
        c.metadata.annotations.unwrap()[warm::IMAGES_ANNOTATION],
        warm::images_hash(&[image.to_string()])
    );
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}

/// Never kill work on policy deletion: a NodeClaim whose node runs a pod is cordoned and kept
/// (the policy stays, with `Deleting=True WaitingForBusyUnits` naming it) while the idle one
/// goes at once; once the pod is gone the unit is removed and the policy with it. Real
/// Karpenter (with kwok) makes the nodes.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_policy_waits_for_its_busy_node_cordoned_and_removes_the_idle_one_at_once() {
    use k8s_openapi::api::core::v1::Node;

    let cluster = KubeCluster::start().unwrap();
    cluster.start_karpenter(None).unwrap();
    install_crds(&cluster);
    let b = bed(&cluster, "pwp-del").await;
    let (client, ns) = (b.client.clone(), b.ns.clone());
    cluster
        .apply(&policy(
            &ns,
            "gpu",
            "worker",
            &b.pool,
            &b.scaler_addr,
            "  limits: {maxNodes: 2, maxGpus: 2}\n",
        ))
        .unwrap();
    let mut config = headroom_provisioner::Config::local("del", &ns);
    config.watch_namespace = Some(ns.clone());
    let _running = headroom_provisioner::start(config, client.clone(), None)
        .await
        .unwrap();
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    wait_condition(&policies, "gpu", "DemandAvailable", "True", "Answering").await;
    push_jobs(&b.redis, 4).await;

    let nodes_of_claims = wait_until(Duration::from_secs(120), "2 NodeClaims with nodes", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let claims = claims_of(&client, &ns, "gpu").await;
            let named: Vec<(String, String)> = claims
                .iter()
                .filter_map(|c| {
                    Some((
                        c.metadata.name.clone()?,
                        c.data["status"]["nodeName"].as_str()?.to_string(),
                    ))
                })
                .collect();
            anyhow::ensure!(named.len() == 2, "claims: {claims:?}");
            Ok(Some(named))
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nkarpenter log:\n{}",
            cluster.log_tail("karpenter", 40)
        )
    });
    let (busy_claim, busy_node) = nodes_of_claims[0].clone();
    let (idle_claim, _) = nodes_of_claims[1].clone();

    // A worker on the first node (bound directly, as the scheduler would).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "busy"},
        "spec": {"nodeName": busy_node, "containers": [{"name": "w", "image": "worker"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    policies
        .delete("gpu", &DeleteParams::default())
        .await
        .unwrap();
    let message = wait_condition(&policies, "gpu", "Deleting", "True", "WaitingForBusyUnits").await;
    assert!(message.contains(&busy_claim), "{message}");
    assert!(!message.contains(&idle_claim), "{message}");
    let left: Vec<String> = claims_of(&client, &ns, "gpu")
        .await
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&busy_claim),
        "the idle NodeClaim goes at once"
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(&busy_node).await.unwrap();
    assert_eq!(
        node.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "the busy node stays cordoned so nothing new lands there"
    );

    pods.delete("busy", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(90),
        "the policy and its last NodeClaim gone",
        || {
            let policies = policies.clone();
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let gone = policies.get_opt("gpu").await?.is_none();
                let claims = claims_of(&client, &ns, "gpu").await;
                anyhow::ensure!(
                    gone && claims.is_empty(),
                    "policy gone: {gone}, claims: {}",
                    claims.len()
                );
                Ok(Some(()))
            }
        },
    )
    .await
    .unwrap();
}

/// `scaleDownAfter: auto` on the real API server: the CRD's rule admits `auto` and refuses a
/// typo, and the learned state lives in the status — a burst, the idle time after it and the
/// next burst become one recorded gap, with the 10m fallback while the gaps are few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_after_auto_learns_idle_gaps_into_the_status() {
    let cluster = cluster();
    let Bed {
        client,
        ns,
        pool,
        redis,
        scaler,
        scaler_addr,
        _keda,
    } = bed(cluster, "pwp-auto").await;
    let spec = |name: &str, after: &str| {
        policy(
            &ns,
            name,
            "worker",
            &pool,
            &scaler_addr,
            "  limits: {maxNodes: 4, maxGpus: 4}\n",
        )
        .replace("scaleDownAfter: 8s", &format!("scaleDownAfter: {after}"))
    };
    let refused = cluster.apply(&spec("typo", "automatic")).unwrap_err();
    assert!(
        format!("{refused:#}").contains("scaleDownAfter"),
        "{refused:#}"
    );
    cluster.apply(&spec("gpu", "auto")).unwrap();
    let running = provisioner(&client, &ns, "auto", true).await;
    let api: Api<PrewarmPolicy> = Api::namespaced(client.clone(), &ns);
    let keep_alive = |api: Api<PrewarmPolicy>| async move {
        let p = api.get("gpu").await?;
        p.status
            .and_then(|s| s.keep_alive)
            .ok_or_else(|| anyhow::anyhow!("no status.keepAlive yet"))
    };

    push_jobs(&redis, 4).await;
    let busy = wait_until(WAIT, "a burst seen", || {
        let api = api.clone();
        async move {
            let k = keep_alive(api).await?;
            anyhow::ensure!(k.busy_since_unix_ms.is_some(), "{k:?}");
            Ok(Some(k))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (busy.basis.as_str(), busy.keep_for.as_str()),
        ("FewSamples", "10m")
    );
    assert!(busy.onset_replicas > 0, "{busy:?}");

    clear_jobs(&redis).await;
    wait_until(Duration::from_secs(60), "demand at zero", || {
        let api = api.clone();
        async move {
            let k = keep_alive(api).await?;
            anyhow::ensure!(k.idle_since_unix_ms.is_some(), "{k:?}");
            Ok(Some(()))
        }
    })
    .await
    .unwrap();

    push_jobs(&redis, 2).await;
    let again = wait_until(WAIT, "the gap recorded", || {
        let api = api.clone();
        async move {
            let k = keep_alive(api).await?;
            anyhow::ensure!(k.samples == 1 && k.busy_since_unix_ms.is_some(), "{k:?}");
            Ok(Some(k))
        }
    })
    .await
    .unwrap();
    assert_eq!(again.gaps, vec![[0, 1]], "a gap under a minute: {again:?}");
    assert_eq!(again.idle_since_unix_ms, None);

    // Back to a fixed duration: the learned state goes with `auto`.
    api.patch(
        "gpu",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"scaleDownAfter": "10m"}})),
    )
    .await
    .unwrap();
    wait_until(WAIT, "keepAlive dropped", || {
        let api = api.clone();
        async move {
            let p = api.get("gpu").await?;
            anyhow::ensure!(p.status.and_then(|s| s.keep_alive).is_none());
            Ok(Some(()))
        }
    })
    .await
    .unwrap();
    running.shutdown();
    running.wait().await.unwrap();
    scaler.shutdown();
}
