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
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "worker-busy", "labels": {"app": "worker"}},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

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
        "the busy one stays"
    );
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
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-bad").await.unwrap();
    let pool = format!("gpu-{ns}");
    node_pool(cluster, &pool);
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _keda) = start_scaler(ServeConfig::local()).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(cluster, &ns, &scaler_addr, &redis.address(), 1);
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
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "pwp-dry").await.unwrap();
    let pool = format!("gpu-{ns}");
    node_pool(cluster, &pool);
    let redis = RedisServer::start(&[]).unwrap();
    let (scaler, _keda) = start_scaler(ServeConfig::local()).await.unwrap();
    let scaler_addr = scaler.grpc_addr.to_string();
    workload(cluster, &ns, &scaler_addr, &redis.address(), 1);
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
