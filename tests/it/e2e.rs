//! End to end, the way a user meets Headroom: the chart installed with `helm`, the real KEDA
//! operator and metrics adapter, the real Karpenter controller (kwok provider), the Celery
//! example's ScaledObject and PrewarmPolicy, real Celery tasks — on the test bed's control plane
//! (kube-apiserver, etcd, controller-manager with the HPA controller, scheduler, kwok).
//!
//! kwok only pretends to run pods, so the chart's scaler and provisioner pods do not run the
//! programs. The programs run on this machine instead, exactly as the installed Deployments
//! configure them (their container args and env, read back from the apiserver), authenticated as
//! the chart's ServiceAccounts (tokens from the TokenRequest API), so the chart's RBAC is what
//! they get; only their listen addresses move to free loopback ports, which the ScaledObject and
//! the PrewarmPolicy name instead of the Service. Likewise the worker's pods are kwok's: a real
//! Celery worker on this machine does their work once they are Running.
//!
//! The run: the example's schedule declares 2 workers from a window a minute or two ahead; the
//! provisioner (leadTime 4m) creates the GPU NodeClaims at once and Karpenter makes them nodes,
//! before any pod exists. Tasks arrive before the window: KEDA activates the Deployment from 0
//! through the scaler's push stream, the HPA sizes it to what the scaler asks, and the pods land
//! on the prewarmed nodes. The worker drains the queue; after the window and KEDA's cooldown the
//! Deployment is back at 0, and after `scaleDownAfter` the nodes are gone. The test prints the
//! timeline (CONTRIBUTING.md's "End to end" section records one run).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use headroom_integration::kube::{
    FakeNode, KubeCluster, condition, create_fake_node, helm_bin, kubectl_bin, node_is_ready,
    wait_until,
};
use headroom_integration::prometheus::http_get;
use headroom_integration::{Celery, RedisServer, free_port, repo_root, unix_now, workspace_bin};
use headroom_provisioner::crd::{PrewarmPolicy, PrewarmPolicyStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_yaml::Value as Yaml;

/// The examples' namespace, and the chart's.
const NS: &str = "ml";
const RELEASE_NS: &str = "headroom";
const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "e2e-redis-password";
/// Tasks enqueued; with the example's `tasksPerReplica: "2"` the scaler asks for 2 workers.
const TASKS: u32 = 4;
const WORKERS: i32 = 2;
/// The ScaledObject's `leadTimeSeconds` in this run: KEDA sees the window this early.
const SCALER_LEAD_SECONDS: i64 = 20;

/// Moments of the run, as unix seconds, printed relative to the first.
#[derive(Default)]
struct Timeline {
    rows: Vec<(f64, String)>,
}

impl Timeline {
    fn mark(&mut self, what: impl Into<String>) -> f64 {
        let t = unix_now();
        self.mark_at(t, what);
        t
    }

    fn mark_at(&mut self, at: f64, what: impl Into<String>) {
        self.rows.push((at, what.into()));
    }

    fn render(&self, zero: f64) -> String {
        let mut rows = self.rows.clone();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out = String::from("| t (s) | event |\n|---:|---|\n");
        for (t, what) in rows {
            out.push_str(&format!("| {:+.2} | {what} |\n", t - zero));
        }
        out
    }
}

/// One of the chart's programs, run here as its installed Deployment configures it.
struct Program {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    metrics_addr: String,
}

impl Program {
    /// Reads the Deployment `deployment` in the release namespace and runs `bin` with its
    /// container's args and env (downward-API values filled in as the kubelet would), as its
    /// ServiceAccount, with `overrides` replacing or adding env values.
    async fn run_as_installed(
        name: &'static str,
        client: &kube::Client,
        cluster: &KubeCluster,
        deployment: &str,
        overrides: &[(&str, String)],
        dir: &Path,
    ) -> Result<Program> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
        let d = api.get(deployment).await?;
        let pod = d
            .spec
            .and_then(|s| s.template.spec)
            .context("Deployment has a pod template")?;
        let sa = pod
            .service_account_name
            .clone()
            .context("the pod template names a ServiceAccount")?;
        let container = pod.containers.first().context("a container")?;
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container.env.clone().unwrap_or_default() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => format!("{deployment}-e2e"),
                        Some("metadata.namespace") => RELEASE_NS.to_string(),
                        other => bail!("{deployment}: env {} from {other:?}", var.name),
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name, value));
        }
        for (k, v) in overrides {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.clone()));
        }
        let metrics_addr = env
            .iter()
            .find(|(k, _)| k == "HEADROOM_METRICS_ADDR")
            .map(|(_, v)| v.clone())
            .context("HEADROOM_METRICS_ADDR")?;
        let kubeconfig = service_account_kubeconfig(cluster, &sa, dir)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(workspace_bin(name))
            .args(container.args.clone().unwrap_or_default())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .envs(env)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("run {name}"))?;
        let program = Program {
            name,
            child: Some(child),
            log,
            metrics_addr,
        };
        let url = format!("http://{}/readyz", program.metrics_addr);
        wait_until(Duration::from_secs(60), &format!("{name} /readyz"), || {
            let url = url.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || http_get(&url)).await??;
                Ok(Some(body))
            }
        })
        .await
        .map_err(|e| e.context(program.log_tail(30)))?;
        Ok(program)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "{} log:\n{}",
            self.name,
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// The sum of every series of one metric on the program's /metrics.
    async fn metric(&self, name: &str) -> Result<f64> {
        Ok(metric_sum(&scrape(&self.metrics_addr).await?, name))
    }

    /// SIGTERM, then the exit status within 20 s (the chart gives each 10 s of grace).
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{} did not exit within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A kubeconfig for the cluster that authenticates as `system:serviceaccount:headroom:<sa>`
/// with a token from the TokenRequest API, checked with `kubectl auth whoami`.
fn service_account_kubeconfig(cluster: &KubeCluster, sa: &str, dir: &Path) -> Result<PathBuf> {
    let token = cluster.kubectl(&["create", "token", sa, "-n", RELEASE_NS, "--duration=2h"])?;
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::copy(&cluster.kubeconfig, &path)?;
    let kubectl = |args: &[&str]| -> Result<String> {
        let out = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&path)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    kubectl(&[
        "config",
        "set-credentials",
        sa,
        &format!("--token={}", token.trim()),
    ])?;
    kubectl(&[
        "config",
        "set-context",
        "--current",
        &format!("--user={sa}"),
    ])?;
    let who = kubectl(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    anyhow::ensure!(
        who == format!("system:serviceaccount:{RELEASE_NS}:{sa}"),
        "the kubeconfig authenticates as {who}"
    );
    Ok(path)
}

/// The status of the PrewarmPolicy `ml/gpu-worker`.
async fn policy_status(policies: &Api<PrewarmPolicy>) -> PrewarmPolicyStatus {
    policies
        .get("gpu-worker")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

/// A program's /metrics page.
async fn scrape(metrics_addr: &str) -> Result<String> {
    let url = format!("http://{metrics_addr}/metrics");
    tokio::task::spawn_blocking(move || http_get(&url)).await?
}

/// The sum of every series of the metric `name` in a Prometheus text page.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every 100 ms: the scaler's readings and answer (waiting, in flight, desired replicas, summed
/// over series) and the Deployment's replicas; a row each time one changes.
async fn sample_changes(
    metrics_addr: String,
    client: kube::Client,
    rows: std::sync::Arc<std::sync::Mutex<Vec<(f64, String)>>>,
) {
    let mut last = (String::new(), String::new());
    loop {
        let text = scrape(&metrics_addr).await.unwrap_or_default();
        let sum = |name: &str| metric_sum(&text, name);
        let scaler = format!(
            "scaler reads {} waiting, {} in flight; answers {} replicas",
            sum("headroom_scaler_queue_depth"),
            sum("headroom_scaler_queue_in_flight"),
            sum("headroom_scaler_desired_replicas")
        );
        let deployment = match deployment_replicas(&client).await {
            Ok(r) => format!("Deployment spec.replicas = {r}"),
            Err(_) => last.1.clone(),
        };
        let now = unix_now();
        if let Ok(mut rows) = rows.lock() {
            if scaler != last.0 {
                rows.push((now, scaler.clone()));
            }
            if deployment != last.1 {
                rows.push((now, deployment.clone()));
            }
        }
        last = (scaler, deployment);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON log lines of one program that tell the story (pushes, capacity created and
/// removed), as (unix seconds, message and its numbers).
fn logged_events(log: &Path) -> Vec<(f64, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = v["message"].as_str().unwrap_or_default();
        if !(message.contains("push") || message.contains("capacity")) {
            continue;
        }
        let Some(at) = v["timestamp"].as_str().and_then(rfc3339_unix) else {
            continue;
        };
        let numbers: Vec<String> = ["waiting", "created", "removed", "peak"]
            .iter()
            .filter_map(|k| v.get(*k).map(|n| format!("{k} {n}")))
            .collect();
        out.push((at, format!("{message} ({})", numbers.join(", "))));
    }
    out
}

/// `2026-11-24T14:38:45.487182Z` as unix seconds.
fn rfc3339_unix(ts: &str) -> Option<f64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

fn read_example(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn nodeclaims(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim")),
    )
}

/// Names of the nodes behind the NodeClaims of the PrewarmPolicy `ml/gpu-worker`, and the
/// number of NodeClaims that are someone else's (Karpenter's own, for pending pods).
async fn claims(client: &kube::Client) -> Result<(Vec<Option<String>>, usize)> {
    let list = nodeclaims(client).list(&ListParams::default()).await?;
    let mut ours = Vec::new();
    let mut others = 0;
    for c in list.items {
        let policy = c
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("headroom.dev/policy"))
            .cloned();
        if policy.as_deref() == Some("ml.gpu-worker") {
            ours.push(c.data["status"]["nodeName"].as_str().map(String::from));
        } else {
            others += 1;
        }
    }
    Ok((ours, others))
}

async fn worker_pods(client: &kube::Client) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    Ok(pods
        .list(&ListParams::default().labels("app=gpu-worker"))
        .await?
        .items)
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn deployment_replicas(client: &kube::Client) -> Result<i32> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    Ok(api
        .get("gpu-worker")
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1))
}

/// What KEDA's metrics adapter answers, through the apiserver, for the HPA's metric.
async fn adapter_value(client: &kube::Client, metric: &str) -> Result<String> {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3Dgpu-worker"
    );
    let list: serde_json::Value = client
        .request(http::Request::get(path).body(Vec::new())?)
        .await?;
    Ok(list["items"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// The next whole minute at least `min_ahead` seconds from now, as (unix seconds, UTC hour,
/// UTC minute).
fn window_start(min_ahead: i64) -> (i64, i64, i64) {
    let now = unix_now() as i64;
    let at = (now + min_ahead + 59) / 60 * 60;
    (at, at / 3600 % 24, at / 60 % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installed_headroom_prewarms_gpu_nodes_and_keda_scales_celery_workers_from_zero_and_back()
 {
    let mut timeline = Timeline::default();
    let cluster = KubeCluster::start_with_keda().unwrap();
    cluster.start_karpenter(None).unwrap();
    let client = cluster.client().await.unwrap();
    let dir = cluster.dir().join("e2e");
    std::fs::create_dir_all(&dir).unwrap();

    // A CPU node for the chart's pods (untainted; the GPU pool is tainted, so Karpenter never
    // launches GPU nodes for them).
    create_fake_node(
        &client,
        &FakeNode::new("system-0").label("headroom.dev/test", "system"),
    )
    .await
    .unwrap();

    // helm install, as the README's Install section does, pinning the chart's pods to the CPU
    // node.
    let out = Command::new(helm_bin())
        .args(["upgrade", "--install", "headroom"])
        .arg(repo_root().join("charts/headroom"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["--namespace", RELEASE_NS, "--create-namespace", "--wait"])
        .args(["--timeout", "120s"])
        .args(["--set", r"scaler.nodeSelector.headroom\.dev/test=system"])
        .args([
            "--set",
            r"provisioner.nodeSelector.headroom\.dev/test=system",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    timeline.mark("`helm install` done (chart Deployments available under kwok)");

    // The programs, as installed.
    let scaler_grpc = format!("127.0.0.1:{}", free_port());
    let mut scaler = Program::run_as_installed(
        "headroom-scaler",
        &client,
        &cluster,
        "headroom-scaler",
        &[
            ("HEADROOM_GRPC_ADDR", scaler_grpc.clone()),
            (
                "HEADROOM_METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()),
            ),
        ],
        &dir,
    )
    .await
    .unwrap();
    let mut provisioner = Program::run_as_installed(
        "headroom-provisioner",
        &client,
        &cluster,
        "headroom-provisioner",
        &[(
            "HEADROOM_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )],
        &dir,
    )
    .await
    .unwrap();

    // Redis with a password in a Secret, the worker's Deployment (0 replicas) whose env KEDA
    // resolves `addressFromEnv` / `passwordFromEnv` from, and the GPU NodePool.
    let redis = RedisServer::start(&["--requirepass", PASSWORD]).unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: redis-auth, namespace: {NS}}}
stringData: {{password: {PASSWORD}}}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {{name: gpu-a10g}}
spec:
  limits: {{nvidia.com/gpu: "8"}}
  template:
    spec:
      nodeClassRef: {{group: karpenter.kwok.sh, kind: KWOKNodeClass, name: default}}
      taints: [{{key: nvidia.com/gpu, value: "true", effect: NoSchedule}}]
      requirements:
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [g5.xlarge, g5.2xlarge]}}
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: gpu-worker, namespace: {NS}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: gpu-worker}}}}
  template:
    metadata: {{labels: {{app: gpu-worker}}}}
    spec:
      nodeSelector: {{karpenter.sh/nodepool: gpu-a10g}}
      tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]
      containers:
        - name: worker    # stands for `celery -A app worker -Q gpu-a10g,celery`
          image: registry.k8s.io/pause:3.10
          env:
            - {{name: REDIS_ADDRESS, value: "{redis_addr}"}}
            - name: REDIS_PASSWORD
              valueFrom: {{secretKeyRef: {{name: redis-auth, key: password}}}}
          resources:
            requests: {{cpu: "3", memory: 12Gi, nvidia.com/gpu: "1"}}
            limits: {{nvidia.com/gpu: "1"}}
"#,
            redis_addr = redis.address()
        ))
        .unwrap();

    // The examples, changed only where this run must differ: the addresses (loopback instead of
    // the Service), a window a minute or two ahead instead of office hours, shorter waits.
    let (window_at, hour, minute) = window_start(75);
    let mut so = read_example("examples/celery/scaledobject-planned.yaml");
    so["spec"]["pollingInterval"] = 5.into();
    so["spec"]["cooldownPeriod"] = 5.into();
    so["spec"]["maxReplicaCount"] = 4.into();
    let md = &mut so["spec"]["triggers"][0]["metadata"];
    md["scalerAddress"] = scaler_grpc.clone().into();
    md["schedule"] = format!("{minute} {hour} * * * for 1m = {WORKERS}").into();
    md["timezone"] = "UTC".into();
    md["leadTimeSeconds"] = SCALER_LEAD_SECONDS.to_string().into();
    md["serviceTimeSeconds"] = "2".into();
    let mut policy = read_example("examples/celery/prewarmpolicy.yaml");
    policy["spec"]["demandAddress"] = scaler_grpc.clone().into();
    policy["spec"]["scaleDownAfter"] = "10s".into();
    policy["spec"]["minWarmGpus"] = 0.into();
    let applied = timeline.mark(format!(
        "ScaledObject and PrewarmPolicy applied (the schedule's window opens at +{} s)",
        window_at - unix_now() as i64
    ));
    cluster.apply(&serde_yaml::to_string(&so).unwrap()).unwrap();
    cluster
        .apply(&serde_yaml::to_string(&policy).unwrap())
        .unwrap();
    let fail = |e: anyhow::Error, scaler: &Program, provisioner: &Program| -> ! {
        panic!(
            "{e:#}\n{}\n{}\nkeda-operator log:\n{}\nkarpenter log:\n{}",
            scaler.log_tail(20),
            provisioner.log_tail(20),
            cluster.log_tail("keda-operator", 20),
            cluster.log_tail("karpenter", 20)
        )
    };

    // The forecast: 2 workers within the provisioner's 4 minutes; 2 NodeClaims, then 2 nodes,
    // before any pod exists.
    wait_until(WAIT, "2 NodeClaims of the PrewarmPolicy", || {
        let client = client.clone();
        async move { Ok((claims(&client).await?.0.len() == 2).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    timeline.mark("provisioner created 2 NodeClaims (forecast: 2 workers at the window)");
    let warm_nodes = wait_until(WAIT, "2 prewarmed nodes Ready", || {
        let client = client.clone();
        async move {
            let names: Vec<String> = claims(&client).await?.0.into_iter().flatten().collect();
            let nodes: Api<Node> = Api::all(client.clone());
            let mut ready = 0;
            for n in &names {
                if nodes.get_opt(n).await?.is_some_and(|n| node_is_ready(&n)) {
                    ready += 1;
                }
            }
            Ok((ready == 2).then_some(names))
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    timeline.mark("Karpenter: both nodes Ready (g5.xlarge, 1 GPU each)");
    assert!(
        worker_pods(&client).await.unwrap().is_empty(),
        "capacity came before any pod"
    );

    // KEDA: Ready, its push stream open on the scaler; the provisioner gets its demand.
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "keda.sh",
            "v1alpha1",
            "ScaledObject",
        )),
    );
    wait_until(
        WAIT,
        "ScaledObject Ready and KEDA's push stream open",
        || {
            let api = scaled_objects.clone();
            let scaler = &scaler;
            async move {
                let so = api.get("gpu-worker").await?;
                let ready = condition(&so, "Ready");
                let watchers = scaler.metric("headroom_scaler_push_watchers").await?;
                anyhow::ensure!(
                    ready.as_ref().is_some_and(|(s, _, _)| s == "True") && watchers > 0.0,
                    "Ready {ready:?}, push watchers {watchers}"
                );
                Ok(Some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    let policies: Api<PrewarmPolicy> = Api::namespaced(client.clone(), NS);
    let status = policy_status(&policies).await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "DemandAvailable" && c.status == "True"),
        "{status:?}"
    );
    assert_eq!(deployment_replicas(&client).await.unwrap(), 0);

    // Tasks arrive before KEDA sees the window (which would activate the Deployment itself),
    // and once the scaler has watched the queue for 15 s: before a tenth of its 120 s rate window
    // is covered the arrival rate is unknown and planned mode answers on the backlog alone, so a
    // burst in the first seconds of a new ScaledObject drains to 0 replicas and comes back to 1
    // when the rate becomes known (seen in an earlier run of this test). A ScaledObject in
    // production has been watched for long before its bursts.
    let watched_since = applied + 15.0;
    tokio::time::sleep(Duration::from_secs_f64(
        (watched_since - unix_now()).max(0.0),
    ))
    .await;
    let latest = window_at - SCALER_LEAD_SECONDS - 8;
    assert!(
        (unix_now() as i64) < latest,
        "the set-up took too long: the tasks must be sent before {latest} (now {})",
        unix_now()
    );
    let pushes_before = scaler
        .metric("headroom_scaler_push_activations_total")
        .await
        .unwrap();
    // From here on, every change of what the scaler reads and answers, and of the Deployment's
    // replicas, goes into the timeline (sampled every 100 ms).
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(f64, String)>::new()));
    let sampler = tokio::spawn(sample_changes(
        scaler.metrics_addr.clone(),
        client.clone(),
        samples.clone(),
    ));
    let broker = format!("redis://:{PASSWORD}@{}/0", redis.address());
    let celery = Celery::with_broker(&broker);
    let (first_sent, _) = celery
        .enqueue_timed("gpu-a10g", TASKS, None)
        .expect("enqueue Celery tasks");
    timeline.mark_at(first_sent, format!("{TASKS} Celery tasks enqueued"));

    // Follow the activation at 20 ms resolution.
    let mut push_at = None;
    let mut scaled_at = None;
    let mut scheduled_at = None;
    let mut running_at = None;
    let deadline = Instant::now() + WAIT;
    while running_at.is_none() {
        if Instant::now() > deadline {
            fail(
                anyhow::anyhow!(
                    "no {WORKERS} Running workers within {WAIT:?}: push {push_at:?}, scaled {scaled_at:?}, scheduled {scheduled_at:?}"
                ),
                &scaler,
                &provisioner,
            );
        }
        let now = unix_now();
        if push_at.is_none()
            && scaler
                .metric("headroom_scaler_push_activations_total")
                .await
                .unwrap()
                > pushes_before
        {
            push_at = Some(now);
        }
        if scaled_at.is_none() && deployment_replicas(&client).await.unwrap() > 0 {
            scaled_at = Some(now);
        }
        let pods = worker_pods(&client).await.unwrap();
        if scheduled_at.is_none()
            && pods
                .iter()
                .any(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        {
            scheduled_at = Some(now);
        }
        if pods.iter().filter(|p| running(p)).count() == WORKERS as usize {
            running_at = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (push_at, scaled_at) = (push_at.unwrap(), scaled_at.unwrap());
    timeline.mark_at(push_at, "scaler: push sent to KEDA (StreamIsActive true)");
    timeline.mark_at(
        scaled_at,
        "KEDA: Deployment scaled 0 → 1 (pollingInterval 5 s)",
    );
    timeline.mark_at(
        scheduled_at.unwrap(),
        "first pod scheduled on a prewarmed node",
    );
    timeline.mark_at(
        running_at.unwrap(),
        format!("HPA: {WORKERS} pods Running on the prewarmed nodes"),
    );
    let activation = scaled_at - first_sent;
    assert!(
        activation < 2.0,
        "KEDA activated {activation:.2} s after the first task (want < 2 s)"
    );

    // The HPA holds what the scaler asks: KEDA's adapter answers the scaler's value, the HPA
    // wants that many, the Deployment has them.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NS);
    let hpa = hpas.get("keda-hpa-gpu-worker").await.unwrap();
    let metric = hpa.spec.unwrap().metrics.unwrap()[0]
        .external
        .clone()
        .unwrap()
        .metric
        .name;
    assert_eq!(
        adapter_value(&client, &metric).await.unwrap(),
        WORKERS.to_string(),
        "the scaler asks for ceil({TASKS} tasks / tasksPerReplica 2)"
    );
    wait_until(WAIT, "HPA desiredReplicas = the scaler's answer", || {
        let hpas = hpas.clone();
        async move {
            let s = hpas.get("keda-hpa-gpu-worker").await?.status;
            Ok((s.map(|s| s.desired_replicas) == Some(WORKERS)).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    assert_eq!(deployment_replicas(&client).await.unwrap(), WORKERS);
    // Every worker runs on a node the provisioner made ahead; Karpenter launched nothing else.
    for p in worker_pods(&client).await.unwrap() {
        let node = p.spec.unwrap().node_name.unwrap();
        assert!(warm_nodes.contains(&node), "{node} is not a prewarmed node");
    }
    assert_eq!(claims(&client).await.unwrap().1, 0, "no other NodeClaims");

    // The workers do the work: a real Celery worker per Running pod (2 processes' worth).
    let _worker = celery
        .worker_with_task_time("gpu-a10g,celery", WORKERS as u32, 1, true, 2.0)
        .unwrap();
    timeline.mark("Celery worker consuming (concurrency 2, 2 s per task)");
    let mut conn = redis::Client::open(broker.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    wait_until(WAIT, "the queue drained", || {
        let scaler = &scaler;
        let depth: redis::RedisResult<i64> = redis::cmd("LLEN").arg("gpu-a10g").query(&mut conn);
        async move {
            let depth = depth?;
            let in_flight = scaler.metric("headroom_scaler_queue_in_flight").await?;
            anyhow::ensure!(
                depth == 0 && in_flight == 0.0,
                "{depth} waiting, {in_flight} in flight"
            );
            Ok(Some(()))
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    timeline.mark("queue drained (scaler: 0 waiting, 0 in flight)");
    timeline.mark_at(
        window_at as f64 - SCALER_LEAD_SECONDS as f64,
        format!("the schedule's window is {SCALER_LEAD_SECONDS} s ahead: KEDA is told to have {WORKERS} workers"),
    );
    timeline.mark_at(
        window_at as f64,
        format!("the window opens ({WORKERS} workers for 1 min)"),
    );
    timeline.mark_at(window_at as f64 + 60.0, "the window closes");

    // The window: the schedule alone holds the workers (the queue is empty).
    let until_window = Duration::from_secs((window_at + 10 - unix_now() as i64).max(0) as u64);
    tokio::time::sleep(until_window).await;
    wait_until(WAIT, "the schedule's workers during the window", || {
        let client = client.clone();
        async move {
            let (replicas, running) = (
                deployment_replicas(&client).await?,
                worker_pods(&client)
                    .await?
                    .iter()
                    .filter(|p| running(p))
                    .count(),
            );
            anyhow::ensure!(
                replicas == WORKERS && running == WORKERS as usize,
                "{replicas} replicas, {running} Running"
            );
            Ok(Some(()))
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));

    // Back to zero: KEDA after the window and its cooldown, the provisioner after scaleDownAfter.
    let until_zero = Duration::from_secs((window_at + 60 - unix_now() as i64).max(0) as u64) + WAIT;
    wait_until(until_zero, "Deployment back to 0 and no worker pod", || {
        let client = client.clone();
        async move {
            Ok(
                (deployment_replicas(&client).await? == 0
                    && worker_pods(&client).await?.is_empty())
                .then_some(()),
            )
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    timeline.mark("KEDA: Deployment back to 0, pods gone (cooldown 5 s)");
    wait_until(WAIT, "no NodeClaim and no GPU node left", || {
        let client = client.clone();
        async move {
            let (ours, others) = claims(&client).await?;
            let nodes: Api<Node> = Api::all(client.clone());
            let gpu_nodes = nodes
                .list(&ListParams::default().labels("karpenter.sh/nodepool=gpu-a10g"))
                .await?
                .items
                .len();
            Ok((ours.is_empty() && others == 0 && gpu_nodes == 0).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| fail(e, &scaler, &provisioner));
    timeline.mark("provisioner: idle NodeClaims deleted after scaleDownAfter 10 s; nodes gone");
    let status = policy_status(&policies).await;
    assert_eq!((status.warm_nodes, status.in_flight_nodes), (0, 0));

    sampler.abort();
    for (at, what) in samples.lock().unwrap().drain(..) {
        timeline.mark_at(at, what);
    }
    // What the programs logged, on the same clock.
    for (program, prefix) in [(&scaler, "scaler"), (&provisioner, "provisioner")] {
        for (at, what) in logged_events(&program.log) {
            timeline.mark_at(at, format!("{prefix} log: {what}"));
        }
    }

    // Graceful shutdown, as on a rollout.
    for p in [&mut provisioner, &mut scaler] {
        let status = p.stop().unwrap();
        assert!(status.success(), "{} exited with {status}", p.name);
    }
    eprintln!(
        "end to end (activation {activation:.2} s after the first task; KEDA's pollingInterval 5 s):\n{}",
        timeline.render(applied)
    );
}
