//! The `overprovision` capacity provider against the real control plane: kube-apiserver,
//! kube-controller-manager (Deployments, ReplicaSets), kube-scheduler (placement, preemption)
//! and kwok GPU nodes. The placeholder Deployment takes the workload's exact shape, its pods land
//! on the GPU nodes, `create` is idempotent per token, `remove` takes exactly the named pods, and
//! real workload pods preempt the placeholders.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use headroom_integration::kube::{
    FakeNode, KubeCluster, create_fake_node, create_namespace, node_is_ready, wait_until,
};
use headroom_provisioner::crd::OverprovisionSpec;
use headroom_provisioner::karpenter::LAST_NEEDED_ANNOTATION;
use headroom_provisioner::provider::{CapacityProvider, CreateRequest, PolicyRef, Unit};
use headroom_provisioner::providers::overprovision::{
    OverprovisionProvider, TOKEN_ANNOTATION, deployment_name,
};
use headroom_provisioner::shape::{parse_quantity, shape_of};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use kube::api::{Api, ListParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

/// The workload: one GPU, CPU and memory, a node selector, a toleration and a required node
/// affinity — everything the placeholders must copy.
fn workload_pod(pool: &str) -> PodSpec {
    serde_json::from_value(serde_json::json!({
        "containers": [{
            "name": "worker",
            "image": "registry.k8s.io/pause:3.10",
            "resources": {
                "requests": {"cpu": "3", "memory": "12Gi"},
                "limits": {"nvidia.com/gpu": "1", "memory": "12Gi"},
            },
        }],
        "nodeSelector": {"headroom-test/pool": pool},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "gpu-class", "operator": "In", "values": ["a10g"]}
            ]}]
        }}},
        "terminationGracePeriodSeconds": 0,
    }))
    .unwrap()
}

async fn units_when(
    provider: &OverprovisionProvider,
    policy: &PolicyRef,
    what: &str,
    ok: impl Fn(&[Unit]) -> bool,
) -> Vec<Unit> {
    let ok = &ok;
    wait_until(WAIT, what, || async move {
        let units = provider.list(policy).await?;
        Ok(ok(&units).then_some(units))
    })
    .await
    .unwrap()
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> f64 {
    parse_quantity(&q.0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_take_the_workload_shape_land_on_gpu_nodes_and_are_preempted_by_real_pods() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "overprovision").await.unwrap();
    // Two kwok nodes with one GPU each, only for this test (by the pool label), plus one
    // without the GPU class, which the affinity must keep placeholders off.
    let nodes: Api<Node> = Api::all(client.clone());
    let mut gpu_nodes = BTreeSet::new();
    for (i, class) in [(1, "a10g"), (2, "a10g"), (3, "t4")] {
        let name = format!("{ns}-gpu-{i}");
        create_fake_node(
            &client,
            &FakeNode::new(&name)
                .gpus(1)
                .label("headroom-test/pool", &ns)
                .label("gpu-class", class),
        )
        .await
        .unwrap();
        if class == "a10g" {
            gpu_nodes.insert(name);
        }
    }
    for name in &gpu_nodes {
        wait_until(WAIT, "GPU node ready", || {
            let nodes = nodes.clone();
            let name = name.clone();
            async move { Ok(node_is_ready(&nodes.get(&name).await?).then_some(())) }
        })
        .await
        .unwrap();
    }

    let workload = workload_pod(&ns);
    let shape = shape_of(&workload).unwrap();
    let spec: OverprovisionSpec = serde_json::from_value(serde_json::json!({})).unwrap();
    let provider = OverprovisionProvider::new(client.clone(), spec);
    let policy = PolicyRef {
        namespace: ns.clone(),
        name: "gpu-worker".into(),
        uid: String::new(),
    };
    assert!(provider.list(&policy).await.unwrap().is_empty());

    // create: two placeholders; the same token again creates nothing more.
    let request = CreateRequest {
        count: 2,
        shape: &shape,
        token: "gpu-worker-0".into(),
        now: 1_000,
    };
    let asked = Instant::now();
    let created = provider.create(&policy, &request).await.unwrap();
    assert_eq!(created.len(), 2);
    assert!(provider.create(&policy, &request).await.unwrap().is_empty());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get(&deployment_name(&policy)).await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()[TOKEN_ANNOTATION],
        "gpu-worker-0"
    );

    // The exact shape, as the API server stored it.
    let pod = d.spec.unwrap().template.spec.unwrap();
    let r = pod.containers[0].resources.clone().unwrap();
    let requests = r.requests.unwrap();
    assert_eq!(quantity(&requests["cpu"]), 3.0);
    assert_eq!(quantity(&requests["memory"]), (12u64 << 30) as f64);
    assert_eq!(quantity(&requests["nvidia.com/gpu"]), 1.0);
    assert_eq!(quantity(&r.limits.unwrap()["nvidia.com/gpu"]), 1.0);
    assert_eq!(pod.node_selector, workload.node_selector);
    assert_eq!(pod.tolerations, workload.tolerations);
    assert_eq!(pod.affinity, workload.affinity);
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("headroom-overprovision")
    );

    // Both placeholders run, one per GPU node (one GPU each), none on the t4 node.
    let units = units_when(&provider, &policy, "two ready placeholders", |u| {
        u.len() == 2 && u.iter().all(|u| u.ready)
    })
    .await;
    eprintln!("placeholders ready {:?} after create", asked.elapsed());
    let placed: BTreeSet<String> = units.iter().filter_map(|u| u.node_name.clone()).collect();
    assert_eq!(placed, gpu_nodes);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let p = pods.get(&units[0].id).await.unwrap();
    assert_eq!(
        p.spec.unwrap().priority,
        Some(-10),
        "the negative PriorityClass applies"
    );

    // hold: the last-needed time is kept on the pods.
    let ids: Vec<String> = units.iter().map(|u| u.id.clone()).collect();
    provider.hold(&policy, &ids, 123_456).await.unwrap();
    for id in &ids {
        let p = pods.get(id).await.unwrap();
        assert_eq!(
            p.metadata.annotations.unwrap()[LAST_NEEDED_ANNOTATION],
            "123456"
        );
    }
    assert!(
        provider
            .list(&policy)
            .await
            .unwrap()
            .iter()
            .all(|u| u.last_needed == 123_456)
    );

    // remove: exactly the named placeholder goes, and the Deployment shrinks.
    let (gone, kept) = (ids[1].clone(), ids[0].clone());
    provider
        .remove(&policy, std::slice::from_ref(&gone))
        .await
        .unwrap();
    let units = units_when(&provider, &policy, "one placeholder left", |u| u.len() == 1).await;
    assert_eq!(
        units[0].id, kept,
        "the named pod was removed, not the other"
    );
    let d = deployments.get(&deployment_name(&policy)).await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));
    // Removing what is already gone is success.
    provider.remove(&policy, &[gone]).await.unwrap();

    // A new token scales up again, onto the freed GPU node.
    provider
        .create(
            &policy,
            &CreateRequest {
                count: 1,
                shape: &shape,
                token: "gpu-worker-1".into(),
                now: 2_000,
            },
        )
        .await
        .unwrap();
    units_when(&provider, &policy, "two ready placeholders again", |u| {
        u.len() == 2 && u.iter().all(|u| u.ready)
    })
    .await;

    // Real workload pods (priority 0 > -10) preempt the placeholders under kube-scheduler:
    // both GPUs are held, so the workload only runs by evicting them.
    let worker: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "worker"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {"metadata": {"labels": {"app": "worker"}}, "spec": workload},
        },
    }))
    .unwrap();
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &worker)
        .await
        .unwrap();
    let running = wait_until(WAIT, "both worker pods running on the GPU nodes", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=worker"))
                .await?;
            let on: BTreeSet<String> = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                .collect();
            Ok((on.len() == 2).then_some(on))
        }
    })
    .await
    .unwrap();
    eprintln!(
        "workload running on the placeholders' nodes {:?} after it was created",
        started.elapsed()
    );
    assert_eq!(running, gpu_nodes);
    // The placeholders were evicted; their replacements wait for room (not ready), and the
    // Deployment still asks for two.
    let units = units_when(&provider, &policy, "placeholders preempted", |u| {
        u.iter().all(|u| !u.ready) && u.len() == 2
    })
    .await;
    assert!(units.iter().all(|u| u.node_name.is_none()), "{units:?}");
    assert!(!units.iter().any(|u| u.id == kept), "the old pods are gone");
}

/// With image warming on, placeholders run the workload's images (every container, the init
/// containers' images as init containers) with the `headroom-warm` helper copied in by an
/// init container, its pull secrets, the workload's shape on the first container and the
/// negative priority as before; kwok runs them, and they read as image-warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_placeholders_run_the_workload_images_with_the_helper() {
    use headroom_provisioner::warm;

    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let ns = create_namespace(&client, "overprovision-warm")
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = format!("{ns}-gpu-1");
    create_fake_node(
        &client,
        &FakeNode::new(&node)
            .gpus(1)
            .label("headroom-test/pool", &ns)
            .label("gpu-class", "a10g"),
    )
    .await
    .unwrap();
    wait_until(WAIT, "GPU node ready", || {
        let nodes = nodes.clone();
        let node = node.clone();
        async move { Ok(node_is_ready(&nodes.get(&node).await?).then_some(())) }
    })
    .await
    .unwrap();

    let mut workload = workload_pod(&ns);
    workload.containers[0].image = Some("registry.example/worker:2".into());
    workload.containers.push(
        serde_json::from_value(serde_json::json!(
            {"name": "sidecar", "image": "registry.example/sidecar:3", "imagePullPolicy": "Always"}
        ))
        .unwrap(),
    );
    workload.init_containers = Some(vec![
        serde_json::from_value(serde_json::json!(
            {"name": "migrate", "image": "registry.example/migrate:1"}
        ))
        .unwrap(),
    ]);
    workload.image_pull_secrets = Some(vec![
        serde_json::from_value(serde_json::json!(
            {"name": "regcred"}
        ))
        .unwrap(),
    ]);
    let shape = shape_of(&workload).unwrap();
    let spec: OverprovisionSpec = serde_json::from_value(serde_json::json!({})).unwrap();
    let priority_class = spec.priority_class_name.clone();
    let provider =
        OverprovisionProvider::new(client.clone(), spec).with_warm_helper(Some(warm::Helper {
            image: "headroom/provisioner:test".into(),
            path: "/usr/local/bin/headroom-warm".into(),
        }));
    let policy = PolicyRef {
        namespace: ns.clone(),
        name: "gpu-worker".into(),
        uid: String::new(),
    };
    let created = provider
        .create(
            &policy,
            &CreateRequest {
                count: 1,
                shape: &shape,
                token: "warm-0".into(),
                now: 1_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    units_when(&provider, &policy, "one ready placeholder", |u| {
        u.len() == 1 && u[0].ready
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let live = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=headroom-placeholder"))
        .await
        .unwrap()
        .items;
    assert_eq!(live.len(), 1);
    let pod = &live[0];
    let hash = warm::images_hash(
        &[
            "registry.example/migrate:1",
            "registry.example/worker:2",
            "registry.example/sidecar:3",
        ]
        .map(String::from),
    );
    assert_eq!(
        warm::placeholder_state(pod, &hash).0,
        warm::UnitState::Warm,
        "running, with the current images: {:?}",
        pod.status
    );
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some(priority_class.as_str())
    );
    assert!(spec.priority.unwrap() < 0, "negative priority as before");
    let images: Vec<&str> = spec
        .containers
        .iter()
        .map(|c| c.image.as_deref().unwrap())
        .collect();
    assert_eq!(
        images,
        ["registry.example/worker:2", "registry.example/sidecar:3"]
    );
    assert_eq!(
        spec.containers[1].image_pull_policy.as_deref(),
        Some("Always")
    );
    for c in &spec.containers {
        assert_eq!(
            c.command.clone().unwrap(),
            ["/headroom-warm/headroom-warm", "sleep"]
        );
    }
    let first = spec.containers[0].resources.clone().unwrap();
    assert_eq!(quantity(&first.requests.unwrap()["cpu"]), 3.0);
    assert_eq!(first.limits.unwrap()["nvidia.com/gpu"].0, "1");
    let second = spec.containers[1]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    assert_eq!(
        second["cpu"].0, "1m",
        "only the first container holds the room"
    );
    let init = spec.init_containers.unwrap();
    let init: Vec<(&str, Vec<String>)> = init
        .iter()
        .map(|c| (c.image.as_deref().unwrap(), c.command.clone().unwrap()))
        .collect();
    assert_eq!(
        init,
        [
            (
                "headroom/provisioner:test",
                vec![
                    "/usr/local/bin/headroom-warm".to_string(),
                    "copy".into(),
                    "/headroom-warm/headroom-warm".into()
                ]
            ),
            (
                "registry.example/migrate:1",
                vec!["/headroom-warm/headroom-warm".to_string(), "exit".into()]
            ),
        ]
    );
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()[warm::IMAGES_ANNOTATION],
        hash
    );
    assert!(
        !provider.refresh_images(&policy, &shape).await.unwrap(),
        "the same images: nothing to write"
    );

    // A new sidecar image: the template changes and the placeholder is replaced by one that
    // runs (so pulled) the new image.
    workload.containers[1].image = Some("registry.example/sidecar:4".into());
    let shape = shape_of(&workload).unwrap();
    assert!(provider.refresh_images(&policy, &shape).await.unwrap());
    let new_hash = shape.images.hash.clone();
    assert_ne!(new_hash, hash);
    wait_until(WAIT, "a warm placeholder running the new image", || {
        let pods = pods.clone();
        let new_hash = new_hash.clone();
        async move {
            let live = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=headroom-placeholder"))
                .await?
                .items;
            let live: Vec<&Pod> = live
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            Ok((live.len() == 1
                && warm::placeholder_state(live[0], &new_hash).0 == warm::UnitState::Warm
                && live[0].spec.as_ref().unwrap().containers[1]
                    .image
                    .as_deref()
                    == Some("registry.example/sidecar:4"))
            .then_some(()))
        }
    })
    .await
    .unwrap();
}
