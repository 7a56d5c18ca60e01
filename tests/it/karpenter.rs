//! The real Karpenter controller (sigs.k8s.io/karpenter with its kwok cloud provider) on the real
//! control plane: a pending pod that asks for a GPU makes Karpenter create a NodeClaim of a GPU
//! instance type, the kwok provider turns it into a Node, the test bed's kwok makes the Node
//! Ready, and kube-scheduler binds the pod to it. A NodeClaim created by hand (as Headroom's
//! provisioner will) is launched the same way. A cluster of its own: Karpenter acts on everything.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use headroom_integration::kube::{
    KubeCluster, condition_is, create_namespace, node_is_ready, wait_until,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

const WAIT: Duration = Duration::from_secs(120);

fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("karpenter.sh", "v1", kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn karpenter_launches_a_gpu_node_for_a_pending_gpu_pod_and_for_a_handmade_nodeclaim() {
    let cluster = KubeCluster::start().unwrap();
    cluster.start_karpenter(None).unwrap();
    let client = cluster.client().await.unwrap();

    cluster
        .apply(
            r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: gpu
spec:
  limits:
    nvidia.com/gpu: "4"
  disruption:
    consolidationPolicy: WhenEmpty
    consolidateAfter: 1h
  template:
    metadata:
      labels:
        headroom.dev/pool: gpu
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
"#,
        )
        .unwrap();

    // A pending pod that asks for one GPU.
    let ns = create_namespace(&client, "karpenter").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "trainer"},
        "spec": {
            "nodeSelector": {"headroom.dev/pool": "gpu"},
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {
                "requests": {"cpu": "1", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}],
        }
    }))
    .unwrap();
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let running = wait_until(
        WAIT,
        "the GPU pod Running on a node Karpenter launched",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("trainer").await?;
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                Ok(running.then_some(p))
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
    let to_running = t0.elapsed();
    let node_name = running.spec.unwrap().node_name.unwrap();
    let node = Api::<Node>::all(client.clone())
        .get(&node_name)
        .await
        .unwrap();
    assert!(node_is_ready(&node));
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["karpenter.sh/nodepool"], "gpu");
    assert_eq!(labels["karpenter.sh/capacity-type"], "on-demand");
    // The cheapest instance type that holds one GPU.
    assert_eq!(labels["node.kubernetes.io/instance-type"], "g5.xlarge");
    let allocatable = node.status.unwrap().allocatable.unwrap();
    assert_eq!(allocatable["nvidia.com/gpu"].0, "1");

    let claims = api(&client, "NodeClaim");
    let claim = wait_until(
        WAIT,
        "the pod's NodeClaim Launched, Registered and Initialized",
        || {
            let claims = claims.clone();
            let node_name = node_name.clone();
            async move {
                let list = claims.list(&Default::default()).await?;
                let seen: Vec<String> = list
                    .items
                    .iter()
                    .map(|c| format!("{}", c.data["status"]))
                    .collect();
                let claim = list
                    .items
                    .into_iter()
                    .find(|c| c.data["status"]["nodeName"] == node_name.as_str());
                anyhow::ensure!(
                    claim.is_some(),
                    "no NodeClaim names node {node_name}: {seen:?}"
                );
                Ok(claim.filter(|c| {
                    ["Launched", "Registered", "Initialized"]
                        .iter()
                        .all(|k| condition_is(c, k, "True"))
                }))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        claim.metadata.labels.as_ref().unwrap()["karpenter.sh/nodepool"],
        "gpu"
    );

    // A NodeClaim made by hand, as the provisioner will: Karpenter launches it without a pod.
    let handmade: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": "prewarm-1", "labels": {"headroom.dev/managed-by": "headroom"}},
        "spec": {
            "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"},
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.12xlarge"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
            ],
            "resources": {"requests": {"nvidia.com/gpu": "4"}},
        }
    }))
    .unwrap();
    let t1 = Instant::now();
    claims
        .create(&PostParams::default(), &handmade)
        .await
        .unwrap();
    let ready_claim = wait_until(WAIT, "the handmade NodeClaim Initialized", || {
        let claims = claims.clone();
        async move {
            let c = claims.get("prewarm-1").await?;
            Ok(condition_is(&c, "Initialized", "True").then_some(c))
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nkarpenter log:\n{}",
            cluster.log_tail("karpenter", 40)
        )
    });
    let prewarm_node = ready_claim.data["status"]["nodeName"].as_str().unwrap();
    let node = Api::<Node>::all(client.clone())
        .get(prewarm_node)
        .await
        .unwrap();
    assert!(node_is_ready(&node));
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels["node.kubernetes.io/instance-type"], "g5.12xlarge");
    assert_eq!(labels["karpenter.sh/capacity-type"], "spot");
    assert_eq!(
        node.status.unwrap().allocatable.unwrap()["nvidia.com/gpu"].0,
        "4"
    );
    eprintln!(
        "karpenter: pending GPU pod Running after {:.1} s; handmade NodeClaim Initialized after {:.1} s",
        to_running.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
}
