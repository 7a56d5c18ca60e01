//! The Grafana dashboards (charts/headroom/dashboards/*.json) and the chart's alerts
//! (charts/headroom/rendered/all-options.yaml, PrometheusRule) against the metrics the real
//! programs export: the programs run as built, a real Prometheus (Debian's) scrapes them and
//! evaluates the alert rules, and every dashboard query and template variable must parse and
//! return data, every alert rule must be loaded (promtool) and evaluate without error, and every
//! metric an alert reads must exist.
//!
//! Queries that need what a short test cannot make are listed in `NEEDS_HISTORY` with the
//! reason; they must still parse, and their metric names must be declared by the program.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headroom_integration::prometheus::{Prometheus, http_get, promtool};
use headroom_integration::{Celery, RedisServer, free_port, md, repo_root, workspace_bin};
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use headroom_proto::headroom::v1::demand_client::DemandClient;
use headroom_proto::headroom::v1::{DemandRequest, TriggerMetadata};
use tonic::transport::Channel;

/// Metrics that exist only after a day of history: the forecast error is scored per 5-minute bin
/// once the forecast made `leadTime` earlier can be compared with what arrived.
const NEEDS_HISTORY: &[&str] = &["headroom_scaler_forecast_error_ratio"];

/// A workspace binary, built once per name (as tests/it/server.rs does for the scaler).
/// A child process killed on drop, its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(cmd: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `url` answers 200 OK with a body containing `want`.
    fn wait_http(&mut self, url: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(body) = http_get(url)
                && body.contains(want)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before {url} answered: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// (where, query) of every panel target and template variable of a dashboard. Grafana's
/// `label_values(selector, label)` becomes `count by (label) (selector)`.
fn dashboard_queries(file: &str) -> Vec<(String, String)> {
    let path = repo_root().join("charts/headroom/dashboards").join(file);
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{file}: variable query {q}"));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            out.push((
                format!("{file} variable {}", v["name"]),
                format!("count by ({}) ({selector})", label.trim()),
            ));
        }
    }
    let mut panels: Vec<&serde_json::Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("{file} panel {:?}", p["title"].as_str().unwrap_or_default()),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(out.len() > 5, "{file}: queries found: {out:?}");
    out
}

/// Dashboard variables as a person viewing "All" would send them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$namespace", ".*")
        .replace("$scaled_object", ".*")
        .replace("$policy", ".*")
        .replace("$resource", ".*")
}

/// `headroom_...` metric names in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("headroom_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The named group of the chart's PrometheusRule (all-options render), as a Prometheus rule file
/// in `dir`, checked by promtool; and its (alert, expr) pairs.
fn alert_group(group: &str, dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    let rendered =
        std::fs::read_to_string(repo_root().join("charts/headroom/rendered/all-options.yaml"))
            .unwrap();
    let rule = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule in rendered/all-options.yaml");
    let g = rule["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .unwrap_or_else(|| panic!("no rule group {group}"))
        .clone();
    let alerts = g["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), serde_yaml::Value::Sequence(vec![g]));
    let path = dir.join(format!("{group}.rules.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let checked = promtool(&["check", "rules", path.to_str().unwrap()]).unwrap();
    assert!(
        checked.contains("SUCCESS"),
        "promtool check rules: {checked}"
    );
    (path, alerts)
}

/// Waits until every query returns data (or the deadline passes), then returns the ones that
/// never did, each with the reason.
fn wait_for_data(
    prom: &Prometheus,
    queries: &[(String, String)],
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for (what, expr) in queries {
            match prom.query(&substitute(expr)) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => missing.push(format!("{what}: no data for {expr}")),
                Err(e) => missing.push(format!("{what}: does not parse: {e:#} ({expr})")),
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The checks both programs' tests make once Prometheus scrapes them: every query of
/// `dashboard` (and every metric its alerts read) returns data, except those of metrics in
/// `NEEDS_HISTORY` or `exempt`, which must parse and be declared in `declared_in`; every alert rule is loaded
/// and evaluates without error. Waits until `provoked` holds for the pending or firing alerts
/// (`"<alertname> <source label>"`), and returns them.
fn check_dashboard_and_alerts(
    prom: &Prometheus,
    dashboard: &str,
    alerts: &[(String, String)],
    declared_in: &str,
    exempt: &[&str],
    provoked: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let exempt: Vec<&str> = NEEDS_HISTORY.iter().chain(exempt).copied().collect();
    let (must, history): (Vec<_>, Vec<_>) = dashboard_queries(dashboard)
        .into_iter()
        .partition(|(_, e)| !metric_names(e).iter().any(|m| exempt.contains(&m.as_str())));
    let alert_inputs: Vec<(String, String)> = alerts
        .iter()
        .flat_map(|(alert, expr)| {
            metric_names(expr)
                .into_iter()
                .filter(|m| !exempt.contains(&m.as_str()))
                .map(move |m| (format!("alert {alert} input"), format!("count({m})")))
        })
        .collect();
    let mut all = must.clone();
    all.extend(alert_inputs.iter().cloned());
    let missing = wait_for_data(prom, &all, Duration::from_secs(90));
    assert!(
        missing.is_empty(),
        "{} of {} queries failed:\n{}\n(targets: {:?})",
        missing.len(),
        all.len(),
        missing.join("\n"),
        prom.target_health()
    );
    let declared = std::fs::read_to_string(repo_root().join(declared_in)).unwrap();
    for (what, expr) in history.iter().chain(alerts.iter()) {
        prom.query(&substitute(expr))
            .unwrap_or_else(|e| panic!("{what}: {expr} does not parse: {e:#}"));
        for m in metric_names(expr) {
            let base = m
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                declared.contains(&format!("\"{base}\"")),
                "{what}: {m} is not declared in {declared_in}"
            );
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rules = prom.rules().unwrap();
        let body = http_get(&format!("{}/api/v1/alerts", prom.url)).unwrap();
        let now: serde_json::Value = serde_json::from_str(&body).unwrap();
        let pending: Vec<String> = now["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a["labels"]["alertname"].as_str().unwrap_or_default(),
                    a["labels"]["source"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let ok = rules.len() == alerts.len() && rules.iter().all(|(_, h, _)| h == "ok");
        if (ok && provoked(&pending)) || Instant::now() > deadline {
            assert_eq!(
                rules.len(),
                alerts.len(),
                "every alert rule is loaded: {rules:?}"
            );
            assert!(
                rules.iter().all(|(_, h, _)| h == "ok"),
                "every alert rule evaluates: {rules:?}"
            );
            return pending;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn so(name: &str, metadata: HashMap<String, String>) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "ml".into(),
        scaler_metadata: metadata,
    }
}

/// KEDA's calls for one trigger: GetMetricSpec, GetMetrics, IsActive (errors are data here).
async fn keda_poll(c: &mut ExternalScalerClient<Channel>, r: &ScaledObjectRef) {
    let Ok(spec) = c.get_metric_spec(r.clone()).await else {
        return;
    };
    for s in spec.into_inner().metric_specs {
        let _ = c
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(r.clone()),
                metric_name: s.metric_name,
            })
            .await;
    }
    let _ = c.is_active(r.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaler_dashboard_and_alerts_query_metrics_the_running_scaler_exports() {
    // Keyspace events on: push activation follows them (and times their detection).
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kl"]).unwrap();
    let bin = workspace_bin("headroom-scaler");
    let (grpc, metrics) = (free_port(), free_port());
    let mut scaler = Proc::start(
        Command::new(bin)
            .arg("serve")
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .env("HEADROOM_LOG_FORMAT", "json"),
        std::env::temp_dir().join(format!("headroom-dash-scaler-{grpc}.log")),
    );
    scaler.wait_http(&format!("http://127.0.0.1:{metrics}/readyz"), "ready");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut keda = ExternalScalerClient::new(channel.clone());
    let mut demand = DemandClient::new(channel);

    let addr = redis.address();
    let depth = so(
        "gpu-worker",
        md(&[("source", "celery"), ("address", &addr), ("queues", "gpu")]),
    );
    let planned_md = md(&[
        ("source", "celery"),
        ("address", &addr),
        ("queues", "planned"),
        ("metric", "replicas"),
        ("tasksPerReplica", "2"),
        ("leadTimeSeconds", "60"),
    ]);
    let planned = so("gpu-planner", planned_md.clone());
    // Redis that is not there: UNAVAILABLE, a backend error.
    let broken = so(
        "broken",
        md(&[("source", "celery"), ("address", "127.0.0.1:1")]),
    );
    // A misspelt key: INVALID_ARGUMENT.
    let invalid = so(
        "invalid",
        md(&[("source", "celery"), ("address", &addr), ("queuez", "gpu")]),
    );

    // A push stream on the empty queue, then real Celery tasks: an activation.
    let mut stream = keda
        .stream_is_active(depth.clone())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.result, "an empty queue is inactive");
    let celery = Celery::new(&redis);
    celery.enqueue("gpu", 6, None).unwrap();
    celery.enqueue("planned", 7, None).unwrap();
    let pushed = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pushed.result, "the stream turns active when tasks arrive");

    // KEDA's polling and the provisioner's Demand calls, until the checks are done.
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        let mut producer = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // More work keeps arriving (each push is a keyspace event the push watcher times).
                let _: Result<i64, _> = redis::cmd("LPUSH")
                    .arg("gpu")
                    .arg("{}")
                    .query_async(&mut producer)
                    .await;
                for r in [&depth, &planned, &broken, &invalid] {
                    keda_poll(&mut keda, r).await;
                }
                let _ = demand
                    .get_demand(DemandRequest {
                        namespace: "ml".into(),
                        name: "gpu-planner".into(),
                        triggers: vec![TriggerMetadata {
                            metadata: planned_md.clone(),
                        }],
                        horizon_ms: 120_000,
                        step_ms: 10_000,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let dir = std::env::temp_dir().join(format!("headroom-dash-rules-{grpc}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (rules, alerts) = alert_group("headroom-scaler", &dir);
    let prom = tokio::task::block_in_place(|| {
        Prometheus::start(
            "headroom-scaler",
            &[format!("127.0.0.1:{metrics}")],
            std::slice::from_ref(&rules),
        )
    })
    .unwrap();

    let pending = tokio::task::block_in_place(|| {
        check_dashboard_and_alerts(
            &prom,
            "scaler.json",
            &alerts,
            "scaler/src/metrics.rs",
            &[],
            |p| {
                p.iter().any(|a| a == "HeadroomScalerBackendErrors celery")
                    && p.iter()
                        .any(|a| a.starts_with("HeadroomScalerInvalidTriggers"))
            },
        )
    });
    assert!(
        pending.contains(&"HeadroomScalerBackendErrors celery".to_string())
            && pending
                .iter()
                .any(|a| a.starts_with("HeadroomScalerInvalidTriggers")),
        "the unreadable Redis and the misspelt key raise their alerts: {pending:?}"
    );
    assert!(
        !pending
            .iter()
            .any(|a| a.starts_with("HeadroomScalerAbsent")),
        "the scaler is scraped: {pending:?}"
    );

    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    drop(stream);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Provider failures are not provoked here (the overprovision provider talks to a healthy API
/// server); the panel and alert must still parse and name a declared metric.
const NEEDS_PROVIDER_FAILURE: &str = "headroom_provisioner_provider_errors_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioner_dashboard_and_alerts_query_metrics_the_running_provisioner_exports() {
    use headroom_integration::kube::{FakeNode, KubeCluster, create_fake_node, keda_crds_dir};

    // A private cluster: the provisioner acts on everything it is allowed to see.
    let cluster = tokio::task::block_in_place(KubeCluster::start).unwrap();
    tokio::task::block_in_place(|| {
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
    });
    let client = cluster.client().await.unwrap();
    create_fake_node(&client, &FakeNode::new("gpu-1").gpus(4))
        .await
        .unwrap();

    // The scaler the policies ask for demand, with real Celery tasks waiting.
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kl"]).unwrap();
    let (grpc, scaler_metrics) = (free_port(), free_port());
    let mut scaler = Proc::start(
        Command::new(workspace_bin("headroom-scaler"))
            .arg("serve")
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--metrics-addr=127.0.0.1:{scaler_metrics}")),
        std::env::temp_dir().join(format!("headroom-dash-pscaler-{grpc}.log")),
    );
    scaler.wait_http(
        &format!("http://127.0.0.1:{scaler_metrics}/readyz"),
        "ready",
    );
    Celery::new(&redis).enqueue("gpu", 7, None).unwrap();
    let addr = redis.address();
    let trigger = md(&[
        ("scalerAddress", &format!("127.0.0.1:{grpc}")),
        ("source", "celery"),
        ("address", &addr),
        ("queues", "gpu"),
        ("metric", "replicas"),
        ("tasksPerReplica", "2"),
        ("leadTimeSeconds", "60"),
    ]);
    let trigger_yaml: String = trigger
        .iter()
        .map(|(k, v)| format!("          {k}: \"{v}\"\n"))
        .collect();
    // The workload, its ScaledObject, a policy held at its GPU limit (4 replicas wanted, 1 GPU
    // allowed) and a policy whose scaler cannot be reached.
    let manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ml\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gpu-worker\n  namespace: ml\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: gpu-worker}}\n  template:\n    metadata:\n      labels: {{app: gpu-worker}}\n    spec:\n      containers:\n        - name: worker\n          image: registry.k8s.io/pause:3.10\n          resources:\n            requests: {{cpu: 100m, memory: 64Mi, nvidia.com/gpu: \"1\"}}\n            limits: {{nvidia.com/gpu: \"1\"}}\n---\n\
         apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: gpu-worker\n  namespace: ml\nspec:\n  scaleTargetRef: {{name: gpu-worker}}\n  triggers:\n    - type: external-push\n      metadata:\n{trigger_yaml}---\n\
         apiVersion: headroom.dev/v1alpha1\nkind: PrewarmPolicy\nmetadata:\n  name: gpu-worker\n  namespace: ml\nspec:\n  scaledObjectRef: {{name: gpu-worker}}\n  demandAddress: 127.0.0.1:{grpc}\n  mode: overprovision\n  leadTime: 1m\n  limits: {{maxNodes: 1, maxGpus: 1}}\n---\n\
         apiVersion: headroom.dev/v1alpha1\nkind: PrewarmPolicy\nmetadata:\n  name: unreachable\n  namespace: ml\nspec:\n  scaledObjectRef: {{name: gpu-worker}}\n  demandAddress: 127.0.0.1:1\n  mode: overprovision\n  limits: {{maxNodes: 1, maxGpus: 1}}\n"
    );
    tokio::task::block_in_place(|| cluster.apply(&manifests)).unwrap();

    // KEDA's polls, so the scaler knows the ScaledObject's triggers.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut keda = ExternalScalerClient::new(channel);
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        let r = so("gpu-worker", trigger.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                keda_poll(&mut keda, &r).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let metrics = free_port();
    let mut provisioner = Proc::start(
        Command::new(workspace_bin("headroom-provisioner"))
            .arg("serve")
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .args(["--lease-namespace", "default", "--identity", "dash-test"])
            .args(["--resync-interval", "1s"])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("HEADROOM_LOG_FORMAT", "json"),
        std::env::temp_dir().join(format!("headroom-dash-provisioner-{metrics}.log")),
    );
    provisioner.wait_http(&format!("http://127.0.0.1:{metrics}/readyz"), "");

    let dir = std::env::temp_dir().join(format!("headroom-dash-prules-{metrics}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (rules, alerts) = alert_group("headroom-provisioner", &dir);
    let prom = tokio::task::block_in_place(|| {
        Prometheus::start(
            "headroom-provisioner",
            &[format!("127.0.0.1:{metrics}")],
            std::slice::from_ref(&rules),
        )
    })
    .unwrap();
    // Provider errors are not provoked: checked like the history-bound queries.
    let pending = tokio::task::block_in_place(|| {
        check_dashboard_and_alerts(
            &prom,
            "provisioner.json",
            &alerts,
            "provisioner/src/metrics.rs",
            &[NEEDS_PROVIDER_FAILURE],
            |p| {
                p.iter()
                    .any(|a| a.starts_with("HeadroomProvisionerAtLimit"))
                    && p.iter()
                        .any(|a| a.starts_with("HeadroomProvisionerDemandErrors"))
            },
        )
    });
    assert!(
        pending
            .iter()
            .any(|a| a.starts_with("HeadroomProvisionerAtLimit"))
            && pending
                .iter()
                .any(|a| a.starts_with("HeadroomProvisionerDemandErrors")),
        "the GPU limit and the unreachable scaler raise their alerts: {pending:?}\n{}",
        provisioner.log()
    );
    assert!(
        !pending
            .iter()
            .any(|a| a.starts_with("HeadroomProvisionerNoLeader")
                || a.starts_with("HeadroomProvisionerAbsent")),
        "one replica leads and is scraped: {pending:?}"
    );

    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
