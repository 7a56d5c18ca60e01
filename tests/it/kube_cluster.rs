//! Smoke tests of the Kubernetes test bed itself (tests/src/kube.rs): kwok nodes turn Ready, the
//! real kube-scheduler places a Deployment's pods and kwok runs them, and extended resources
//! (`nvidia.com/gpu`) are honoured by the scheduler. One cluster for this binary; each test keeps
//! to its own namespace and its own node labels.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use anyhow::Result;
use headroom_integration::kube::{
    FakeNode, KubeCluster, create_fake_node, create_namespace, node_is_ready, wait_until,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn pod(name: &str, test: &str, gpus: Option<u32>) -> Pod {
    let mut resources = serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"}});
    if let Some(g) = gpus {
        resources["requests"]["nvidia.com/gpu"] = serde_json::json!(g.to_string());
        resources["limits"] = serde_json::json!({"nvidia.com/gpu": g.to_string()});
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"headroom.dev/test": test},
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": resources}],
        }
    }))
    .unwrap()
}

async fn wait_node_ready(client: &kube::Client, name: &str) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until(WAIT, &format!("node {name} Ready and untainted"), || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get(name).await?;
            Ok(node_is_ready(&n).then_some(n))
        }
    })
    .await
}

#[tokio::test]
async fn cluster_serves_the_pinned_kubernetes_version_and_is_ready_in_seconds() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.35.4", "{version:?}");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "35")
    );
    // Not a timing assertion (the machine is shared): the number is reported, and it must at
    // least have been measured.
    assert!(cluster.ready_seconds.is_finite() && cluster.ready_seconds > 0.0);
    eprintln!("cluster ready in {:.2} s", cluster.ready_seconds);
}

#[tokio::test]
async fn kwok_node_turns_ready_and_deployment_pods_are_scheduled_and_run() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let test = "deploy";
    create_fake_node(
        &client,
        &FakeNode::new("deploy-node-1").label("headroom.dev/test", test),
    )
    .await
    .unwrap();
    let node = wait_node_ready(&client, "deploy-node-1").await.unwrap();
    let allocatable = node.status.unwrap().allocatable.unwrap();
    assert_eq!(allocatable["cpu"].0, "8");

    let ns = create_namespace(&client, "deploy").await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let template = pod("unused", test, None);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": template.spec,
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = wait_until(WAIT, "3 pods of the Deployment Running", || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let running: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            Ok((running.len() == 3).then_some(running))
        }
    })
    .await
    .unwrap();
    for p in &running {
        let spec = p.spec.as_ref().unwrap();
        // Bound by kube-scheduler: nothing in the Deployment names a node.
        assert_eq!(spec.node_name.as_deref(), Some("deploy-node-1"));
        let status = p.status.as_ref().unwrap();
        assert!(status.pod_ip.is_some(), "kwok gives running pods an IP");
        let ready = status.conditions.as_ref().unwrap();
        assert!(
            ready
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }
    let d = deployments.get("web").await.unwrap();
    wait_until(WAIT, "Deployment status readyReplicas=3", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            Ok((d.status.and_then(|s| s.ready_replicas) == Some(3)).then_some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
}

#[tokio::test]
async fn gpu_pod_schedules_only_onto_a_node_advertising_nvidia_gpus() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let test = "gpu";
    create_fake_node(
        &client,
        &FakeNode::new("gpu-test-cpu-only").label("headroom.dev/test", test),
    )
    .await
    .unwrap();
    create_fake_node(
        &client,
        &FakeNode::new("gpu-test-a10g")
            .gpus(2)
            .label("headroom.dev/test", test),
    )
    .await
    .unwrap();
    wait_node_ready(&client, "gpu-test-cpu-only").await.unwrap();
    let gpu_node = wait_node_ready(&client, "gpu-test-a10g").await.unwrap();
    assert_eq!(
        gpu_node.status.unwrap().allocatable.unwrap()["nvidia.com/gpu"].0,
        "2"
    );

    let ns = create_namespace(&client, "gpu").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..4 {
        // Four one-GPU pods: two fit the GPU node, and the CPU-only node must not take the rest.
        pods.create(
            &PostParams::default(),
            &pod(&format!("gpu-{i}"), test, Some(1)),
        )
        .await
        .unwrap();
    }
    pods.create(&PostParams::default(), &pod("cpu", test, None))
        .await
        .unwrap();

    // Stops early when a GPU pod is bound to the node without GPUs, so that shows as such.
    let (placed, misplaced) =
        wait_until(WAIT, "two GPU pods Running and two Unschedulable", || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await?;
                let (mut running, mut misplaced, mut unschedulable) = (Vec::new(), Vec::new(), 0);
                for p in list
                    .items
                    .iter()
                    .filter(|p| p.metadata.name.as_deref() != Some("cpu"))
                {
                    let status = p.status.as_ref();
                    let phase = status.and_then(|s| s.phase.as_deref());
                    match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                        Some(n) if n != "gpu-test-a10g" => misplaced.push(n),
                        Some(n) if phase == Some("Running") => running.push(n),
                        Some(_) => {}
                        None => {
                            let conditions = status
                                .and_then(|s| s.conditions.as_deref())
                                .unwrap_or_default();
                            if conditions.iter().any(|c| {
                                c.type_ == "PodScheduled"
                                    && c.status == "False"
                                    && c.reason.as_deref() == Some("Unschedulable")
                            }) {
                                unschedulable += 1;
                            }
                        }
                    }
                }
                let done = !misplaced.is_empty() || (running.len() == 2 && unschedulable == 2);
                Ok(done.then_some((running, misplaced)))
            }
        })
        .await
        .unwrap();
    assert!(
        misplaced.is_empty(),
        "GPU pods bound to a node without GPUs: {misplaced:?}"
    );
    assert_eq!(placed, ["gpu-test-a10g", "gpu-test-a10g"]);

    // The scheduler says why: the GPU node is full and the other has no GPUs at all.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let message = wait_until(WAIT, "a FailedScheduling event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .and_then(|e| e.message))
        }
    })
    .await
    .unwrap();
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "FailedScheduling message: {message}"
    );

    // A pod without a GPU request can go to either node and runs.
    let cpu_pod = wait_until(WAIT, "the CPU pod Running", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("cpu").await?;
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            Ok(running.then_some(p))
        }
    })
    .await
    .unwrap();
    assert!(cpu_pod.spec.unwrap().node_name.is_some());
}

#[tokio::test]
async fn helm_built_from_its_module_installs_a_chart_into_the_cluster() {
    let cluster = KubeCluster::shared().unwrap();
    let client = cluster.client().await.unwrap();
    let helm = headroom_integration::kube::helm_bin();
    let version = std::process::Command::new(&helm)
        .args(["version", "--short"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("v3.20.2"),
        "{version:?}"
    );

    // A minimal chart whose value lands in a ConfigMap.
    let chart = cluster.dir().join("smoke-chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .unwrap();
    let ns = create_namespace(&client, "helm").await.unwrap();
    let out = std::process::Command::new(&helm)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["install", "smoke"])
        .arg(&chart)
        .args([
            "--namespace",
            &ns,
            "--set",
            "greeting=hi",
            "--wait",
            "--timeout",
            "60s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm install: {out:?}");

    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = cms.get("smoke-cm").await.unwrap();
    assert_eq!(cm.data.unwrap()["greeting"], "hi");
    // helm keeps its release record as a Secret in the namespace.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, &ns);
    assert!(
        secrets
            .get_opt("sh.helm.release.v1.smoke.v1")
            .await
            .unwrap()
            .is_some()
    );
}
