//! A real Kubernetes control plane for integration tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (fake nodes, so pods run without kubelets),
//! optionally KEDA's operator and metrics adapter and Karpenter's controller, all on free
//! loopback ports in a temporary folder.
//!
//! The binaries come from `tests/scripts/install-k8s.sh` (built from the Go module proxy, cached
//! under `~/.cache/headroom/`, installed on first use when missing); the processes are started by
//! `tests/scripts/k8s-up.sh` (and `k8s-keda.sh`), the same scripts a person runs by hand, so the
//! harness and a debugging session see the same cluster.
//!
//! Cost, measured on the 2-core machine: a cluster is ready in about 5 s (8 s while other builds
//! load the machine): certificates, etcd, apiserver readiness, controllers; KEDA adds 2–6 s,
//! Karpenter about 3 s. The control plane holds about 680 MB of memory (400 MB of it the
//! apiserver), KEDA 200 MB more, Karpenter 75 MB. So share one cluster per test binary
//! ([`KubeCluster::shared`], [`KubeCluster::shared_with_keda`]) and isolate tests by namespace and
//! by node labels; start a private one ([`KubeCluster::start`]) for tests that break the cluster
//! or run Karpenter (which acts on every pending pod and NodeClaim it sees).
//!
//! Clean-up: dropping a [`KubeCluster`] stops it and removes its folder. The shared clusters live
//! in statics, which Rust never drops, so every cluster also runs a watchdog (`--watch-pid`)
//! that stops it within a second or two of the test process exiting, however it exits.
//!
//! Use from tokio tests: starting is blocking (a few seconds, once per binary for the shared
//! cluster); make one [`kube::Client`] per test with [`KubeCluster::client`] (a client belongs
//! to the runtime that made it, and `#[tokio::test]` makes one runtime per test).

// Test support: failing loudly on a broken test bed is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::repo_root;

/// Installs the Kubernetes test bed once per process (instant when cached).
pub fn ensure_installed() -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script = repo_root().join("tests/scripts/install-k8s.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "tests/scripts/install-k8s.sh failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The test bed's folders and versions, as `tests/scripts/env.sh` prints them.
pub fn testbed_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("tests/scripts/env.sh"))
            .output()
            .expect("run tests/scripts/env.sh");
        parse_env(&String::from_utf8_lossy(&out.stdout))
    })
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn testbed_path(var: &str) -> PathBuf {
    PathBuf::from(
        testbed_env()
            .get(var)
            .unwrap_or_else(|| panic!("tests/scripts/env.sh prints {var}")),
    )
}

/// Karpenter's CRD files: `karpenter.sh_nodeclaims.yaml`, `karpenter.sh_nodepools.yaml`,
/// `karpenter.sh_nodeoverlays.yaml` and the kwok provider's
/// `karpenter.kwok.sh_kwoknodeclasses.yaml`.
pub fn karpenter_crds_dir() -> PathBuf {
    testbed_path("HEADROOM_KARPENTER_HOME").join("crds")
}

/// KEDA's CRD files (`keda.sh_scaledobjects.yaml`, ...).
pub fn keda_crds_dir() -> PathBuf {
    testbed_path("HEADROOM_KEDA_HOME").join("crds")
}

/// The `helm` binary built from `helm.sh/helm/v3`.
pub fn helm_bin() -> PathBuf {
    testbed_path("HEADROOM_HELM_HOME").join("bin/helm")
}

/// The `kubectl` binary of the control plane's version.
pub fn kubectl_bin() -> PathBuf {
    testbed_path("HEADROOM_K8S_HOME").join("bin/kubectl")
}

/// A running control plane; stopped (and its folder removed) on drop.
#[derive(Debug)]
pub struct KubeCluster {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Admin kubeconfig (client certificate in group `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Seconds from `k8s-up.sh` starting to the cluster being usable, as it measured.
    pub ready_seconds: f64,
}

impl KubeCluster {
    /// Starts a private cluster (installing the test bed first if needed).
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Starts a private cluster with KEDA's operator and metrics adapter running against it.
    pub fn start_with_keda() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(keda: bool) -> Result<Self> {
        ensure_installed()?;
        let dir = tempdir()?;
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("tests/scripts/k8s-up.sh"))
            .args(["--detach", "--dir"])
            .arg(&dir)
            .args(["--watch-pid", &std::process::id().to_string()]);
        if keda {
            cmd.arg("--keda");
        }
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("run tests/scripts/k8s-up.sh")?;
        if !out.status.success() {
            bail!(
                "tests/scripts/k8s-up.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::from_dir(dir)
    }

    fn from_dir(dir: PathBuf) -> Result<Self> {
        let text = std::fs::read_to_string(dir.join("cluster.env"))
            .with_context(|| format!("read {}/cluster.env", dir.display()))?;
        let env = parse_env(&text);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .with_context(|| format!("cluster.env has no {k}"))
        };
        Ok(Self {
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            server: get("HEADROOM_K8S_SERVER")?,
            ready_seconds: get("HEADROOM_K8S_READY_SECONDS")?
                .parse()
                .unwrap_or(f64::NAN),
            dir,
            env,
        })
    }

    /// One cluster for the whole test binary, started on first use.
    pub fn shared() -> Result<&'static KubeCluster> {
        static CLUSTER: OnceLock<Result<KubeCluster, String>> = OnceLock::new();
        CLUSTER
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared cluster did not start: {e}"))
    }

    /// One cluster with KEDA for the whole test binary, started on first use.
    pub fn shared_with_keda() -> Result<&'static KubeCluster> {
        static CLUSTER: OnceLock<Result<KubeCluster, String>> = OnceLock::new();
        CLUSTER
            .get_or_init(|| Self::start_with_keda().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the shared KEDA cluster did not start: {e}"))
    }

    /// The cluster's folder (pki/, logs/, kubeconfig, cluster.env).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A value from `cluster.env` (ports and paths, e.g. `HEADROOM_KEDA_ADAPTER_PORT`).
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// A client for this cluster, as admin. Make one per test (per tokio runtime).
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        // The workspace links both rustls backends (the AWS SDK's aws-lc-rs, everyone else's
        // ring): choose one before the first TLS connection, as the scaler does.
        headroom_scaler::install_crypto_provider();
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs this version's `kubectl` against the cluster; its stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl apply --server-side` of YAML or JSON documents (large CRDs need server-side).
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(manifest),
        )
    }

    /// `kubectl apply --server-side -f PATH` (a file or a folder).
    pub fn apply_path(&self, path: &Path) -> Result<String> {
        let path = path.to_str().context("path is not UTF-8")?;
        self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path])
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies Karpenter's CRDs (NodeClaim, NodePool, NodeOverlay, KWOKNodeClass) and waits
    /// until they are Established.
    pub fn install_karpenter_crds(&self) -> Result<()> {
        self.apply_path(&karpenter_crds_dir())?;
        self.wait_established(&[
            "crd/nodeclaims.karpenter.sh",
            "crd/nodepools.karpenter.sh",
            "crd/kwoknodeclasses.karpenter.kwok.sh",
        ])
        .context("Karpenter's CRDs did not become Established")
    }

    /// Waits (up to 60 s) until the CRDs `crds` (`crd/<name>`) are Established. `kubectl wait`
    /// fails at once on a CRD whose status has no conditions yet (a moment after it is
    /// created), so it is retried until the deadline.
    pub fn wait_established(&self, crds: &[&str]) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut args = vec!["wait", "--for=condition=established", "--timeout=30s"];
        args.extend_from_slice(crds);
        loop {
            match self.kubectl(&args) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Starts Karpenter's controller with its kwok cloud provider against this cluster
    /// (`tests/scripts/k8s-karpenter.sh`): applies Karpenter's CRDs and a KWOKNodeClass named
    /// `default`, with the instance types of `instance_types` (default
    /// `tests/k8s/karpenter/instance-types.json`: `m5.large` and `g5.*` with `nvidia.com/gpu`).
    /// Only on a cluster of its own: Karpenter acts on every NodeClaim and pending pod it sees.
    pub fn start_karpenter(&self, instance_types: Option<&Path>) -> Result<()> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("tests/scripts/k8s-karpenter.sh"))
            .arg(&self.dir);
        if let Some(types) = instance_types {
            cmd.arg(types);
        }
        let out = cmd.output().context("run tests/scripts/k8s-karpenter.sh")?;
        if !out.status.success() {
            bail!(
                "tests/scripts/k8s-karpenter.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The end of one component's log (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`, `kwok`, `keda-operator`, `keda-adapter`, `karpenter`), for failure
    /// messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("tests/scripts/k8s-down.sh"))
            .arg(&self.dir)
            .status();
    }
}

fn tempdir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = base.join(format!(
            "headroom-k8s-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    bail!("cannot create a temporary folder under {}", base.display())
}

/// A fake node's shape, for [`create_fake_node`].
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    /// `nvidia.com/gpu` in capacity and allocatable, when some.
    pub gpus: Option<u32>,
    pub labels: BTreeMap<String, String>,
}

impl FakeNode {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            cpu: "8".into(),
            memory: "32Gi".into(),
            gpus: None,
            labels: BTreeMap::new(),
        }
    }

    pub fn gpus(mut self, n: u32) -> Self {
        self.gpus = Some(n);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// Creates a Node that kwok manages (kwok runs with `--manage-all-nodes`): it turns Ready within
/// a second or two and pods bound to it turn Running. Capacity and allocatable are as given (kwok
/// keeps a node's own status values), so extended resources such as `nvidia.com/gpu` are
/// advertised exactly as a device plugin would.
pub async fn create_fake_node(client: &kube::Client, node: &FakeNode) -> Result<Node> {
    let mut resources = serde_json::json!({
        "cpu": node.cpu, "memory": node.memory, "pods": "110",
    });
    if let Some(g) = node.gpus {
        resources["nvidia.com/gpu"] = serde_json::json!(g.to_string());
    }
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("type".into(), "kwok".into());
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    });
    let node: Node = serde_json::from_value(value)?;
    let api: Api<Node> = Api::all(client.clone());
    Ok(api.create(&PostParams::default(), &node).await?)
}

/// Whether a node reports condition Ready=True and carries no `not-ready`/`unreachable` taint
/// (the controller-manager's node lifecycle controller removes those once it sees Ready).
pub fn node_is_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter().any(|t| {
                t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable"
            })
        });
    ready && !tainted
}

/// Creates a namespace with a unique name starting with `prefix`.
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{prefix}-")}
    }))?;
    let created = api.create(&PostParams::default(), &ns).await?;
    created
        .metadata
        .name
        .context("created namespace has a name")
}

/// A status condition of an object read as a [`DynamicObject`] (KEDA's ScaledObject,
/// Karpenter's NodeClaim): `(status, reason, message)`.
pub fn condition(obj: &DynamicObject, kind: &str) -> Option<(String, String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Whether `obj` has the condition `kind` with `status` (`"True"`, `"False"`, `"Unknown"`).
pub fn condition_is(obj: &DynamicObject, kind: &str, status: &str) -> bool {
    condition(obj, kind).is_some_and(|(s, _, _)| s == status)
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout` with `what` and the
/// last observation (`f`'s `Err`, when it gave one).
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::from("no observation yet");
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
