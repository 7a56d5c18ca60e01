//! The test bed: real peers started on free loopback ports for integration tests and benchmarks.
//!
//! - [`RedisServer`]: Debian's `redis-server`, one per test, stopped on drop (and restartable on
//!   the same port, for outage tests).
//! - [`Celery`]: real Celery producers and workers, through `tests/python/celery_tool.py` in the
//!   virtualenv that `tests/scripts/install-testbed.sh` builds (installed on first use).
//! - [`sqs::SqsServer`]: moto's SQS server; [`kafka::KafkaBroker`]: Apache Kafka (KRaft), both
//!   installed by `tests/scripts/install-brokers.sh` on first use; [`ec2::Ec2Server`]: moto's
//!   EC2 behind a fault-injecting proxy (spot capacity errors, throttling).
//! - [`start_scaler`]: the scaler's own server in this process, on a real TCP port, and a client
//!   built from KEDA's proto.
//! - [`fault::FaultProxy`]: a TCP proxy that injects latency, stalls, half-open connections,
//!   resets and slow bandwidth between the scaler and a backend.
//! - [`kube`]: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager,
//!   scheduler, kwok fake nodes) and optionally KEDA, from `tests/scripts/k8s-up.sh`.
//! - [`prometheus`]: Debian's Prometheus (and promtool), and prometheus-operator's CRDs.

// Test support: failing loudly on a broken test bed is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod ec2;
pub mod fault;
pub mod kafka;
pub mod sqs;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use headroom_scaler::server::{Running, ServeConfig, start};
use tonic::transport::Channel;

pub mod kube;
pub mod prometheus;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Seconds since the epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Kills a peer's process (as a crash would) and reaps it; nothing when none runs.
pub fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with no persistence and the given extra arguments
    /// (e.g. `["--notify-keyspace-events", "Kl"]`, `["--requirepass", "pw"]`).
    pub fn start(extra: &[&str]) -> Result<Self> {
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Self::start_on_free_port(|port| {
            let mut all = vec!["--port".to_string(), port.to_string()];
            all.extend(args.iter().cloned());
            all
        })
    }

    /// Starts a TLS-only server (`--tls-port`) with these PEM files; clients need not present
    /// certificates.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        Self::start_on_free_port(|port| {
            [
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
            .to_vec()
        })
    }

    /// A port that was free a moment ago may be taken by the time redis-server binds it (other
    /// tests pick ports concurrently): try a few ports before giving up.
    fn start_on_free_port(args: impl Fn(u16) -> Vec<String>) -> Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let mut s = Self {
                port,
                args: args(port),
                child: None,
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Runs redis-server and waits until it listens. Fails when it exits (its port was taken)
    /// or when another process answers on its port.
    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server: run tests/scripts/install-testbed.sh")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let tls = self.args.iter().any(|a| a == "--tls-port");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "redis-server for port {} exited at start ({status}); the port was probably taken",
                    self.port
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // A TLS server cannot be asked in plain text; it is ours if it is still alive.
                let ours = tls || self.answering_pid() == Some(child.id());
                std::thread::sleep(Duration::from_millis(20));
                if ours && child.try_wait().ok().flatten().is_none() {
                    self.child = Some(child);
                    return Ok(());
                }
                let _ = child.kill();
                let _ = child.wait();
                bail!("another process answers on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("redis-server did not listen on {} within 5 s", self.port)
    }

    /// The `process_id` of the Redis server answering on our port (`None` when what answers is
    /// not a Redis server).
    fn answering_pid(&self) -> Option<u32> {
        let password = self
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.args.get(i + 1))
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let url = format!("redis://{password}127.0.0.1:{}/", self.port);
        let client = redis::Client::open(url).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// `host:port`, as the `address` key takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A plain client for arranging data (db 0 unless the URL says otherwise).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis URL")
    }

    pub fn connection(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    /// `calls` of one command from `INFO commandstats` (e.g. `evalsha`, `llen`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Sum of `calls` over every command, minus the INFO calls made to read it.
    pub fn total_calls(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .expect("INFO commandstats");
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }

    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.connection())
            .expect("CONFIG RESETSTAT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test bed's Python, installing the virtualenv on first use.
pub fn celery_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = repo_root().join("tests/scripts/install-testbed.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run tests/scripts/install-testbed.sh");
        assert!(status.success(), "tests/scripts/install-testbed.sh failed");
        let out = Command::new("bash")
            .arg(repo_root().join("tests/scripts/env.sh"))
            .output()
            .expect("run tests/scripts/env.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        let python = text
            .lines()
            .find_map(|l| l.strip_prefix("HEADROOM_CELERY_PYTHON="))
            .expect("env.sh prints HEADROOM_CELERY_PYTHON");
        PathBuf::from(python)
    })
}

/// A binary of the workspace (`headroom-scaler`, `headroom-provisioner`), for tests that run the
/// real program. Built once per test process with exactly the command `tests/scripts/test.sh`
/// runs before the tests (`cargo build --workspace --all-targets`), so there it only checks freshness;
/// run alone, a test builds what changed. Building one package alone (`-p`) would resolve
/// features differently and compile a second copy of many dependencies.
pub fn workspace_bin(bin: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // `cargo` from PATH, as test.sh runs it: the rustup proxy picks the toolchain of
        // rust-toolchain.toml. `env!("CARGO")` can name another toolchain's cargo (it did here:
        // stable's), whose different fingerprints rebuilt every dependency.
        // Nor may it inherit what `cargo test` sets for the test binary: ring's build script
        // reruns when CARGO_MANIFEST_DIR changes, and with it everything above ring (rustls,
        // kube, the AWS SDK) was rebuilt inside the test, then again by the next plain build.
        let mut cargo = std::process::Command::new("cargo");
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_by_cargo_test = key == "CARGO"
                || key == "OUT_DIR"
                || key.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&key.as_ref());
            if set_by_cargo_test {
                cargo.env_remove(key.as_ref());
            }
        }
        let status = cargo
            // The same command as test.sh's build step: the same targets, so the same features.
            .args(["build", "-q", "--workspace", "--all-targets", "--locked"])
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo build --workspace --all-targets failed ({status})"
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/<bin>
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps")
        .join(bin)
}

/// Installs the SQS and Kafka peers (and the build dependencies of the clients) once per test
/// process.
pub fn install_brokers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("tests/scripts/install-brokers.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run tests/scripts/install-brokers.sh");
        assert!(status.success(), "tests/scripts/install-brokers.sh failed");
    });
}

/// Real Celery producers and workers for one broker and one set of transport options.
#[derive(Debug, Clone)]
pub struct Celery {
    broker: String,
    options: Vec<String>,
}

impl Celery {
    pub fn new(redis: &RedisServer) -> Self {
        Self {
            broker: redis.url(),
            options: Vec::new(),
        }
    }

    /// Producers and workers for another broker URL (e.g. one with a password:
    /// `redis://:pw@127.0.0.1:6379/0`).
    pub fn with_broker(url: &str) -> Self {
        Self {
            broker: url.to_string(),
            options: Vec::new(),
        }
    }

    /// kombu's `sep` transport option.
    pub fn sep(mut self, sep: &str) -> Self {
        self.options.extend(["--sep".into(), sep.into()]);
        self
    }

    /// kombu's `priority_steps`.
    pub fn steps(mut self, steps: &str) -> Self {
        self.options.extend(["--steps".into(), steps.into()]);
        self
    }

    /// kombu's `global_keyprefix`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.options.extend(["--prefix".into(), prefix.into()]);
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(celery_python());
        c.arg(repo_root().join("tests/python/celery_tool.py"))
            .args(["--broker", &self.broker])
            .args(&self.options);
        c
    }

    /// Sends `count` tasks to `queue` with `apply_async` (priority when given). Returns the
    /// time, as `time.time()`, right after the last send.
    pub fn enqueue(&self, queue: &str, count: u32, priority: Option<u8>) -> Result<f64> {
        self.enqueue_timed(queue, count, priority).map(|(_, t)| t)
    }

    /// As [`Celery::enqueue`], returning the times right before the first `apply_async` and
    /// right after the last.
    /// The producer is warm (connected, queue declared) before the first send, as in a running
    /// application.
    pub fn enqueue_timed(
        &self,
        queue: &str,
        count: u32,
        priority: Option<u8>,
    ) -> Result<(f64, f64)> {
        let mut c = self.command();
        c.args([
            "enqueue",
            "--warm",
            "--queue",
            queue,
            "--count",
            &count.to_string(),
        ]);
        if let Some(p) = priority {
            c.args(["--priority", &p.to_string()]);
        }
        let out = c.output().context("run celery_tool.py enqueue")?;
        if !out.status.success() {
            bail!(
                "celery_tool.py enqueue failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
            .context("enqueue output")?;
        Ok((
            v["t0"].as_f64().context("enqueue output has t0")?,
            v["t"].as_f64().context("enqueue output has t")?,
        ))
    }

    /// Starts a real worker on `queues` whose tasks take 10 minutes (they stay in flight), and
    /// waits until it consumes.
    pub fn worker(
        &self,
        queues: &str,
        concurrency: u32,
        prefetch: u32,
        acks_late: bool,
    ) -> Result<Worker> {
        self.worker_with_task_time(queues, concurrency, prefetch, acks_late, 600.0)
    }

    /// As [`Celery::worker`], with each task taking `seconds`.
    pub fn worker_with_task_time(
        &self,
        queues: &str,
        concurrency: u32,
        prefetch: u32,
        acks_late: bool,
        seconds: f64,
    ) -> Result<Worker> {
        let mut c = self.command();
        c.args(["worker", "--queue", queues])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--prefetch", &prefetch.to_string()])
            .args(["--sleep", &seconds.to_string()]);
        if acks_late {
            c.arg("--acks-late");
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("run celery_tool.py worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        let worker = Worker { child };
        rx.recv_timeout(Duration::from_secs(30))
            .context("celery worker did not print READY within 30 s")?;
        Ok(worker)
    }
}

use std::os::unix::process::CommandExt;

/// A running Celery worker; killed (with its pool) on drop.
#[derive(Debug)]
pub struct Worker {
    child: Child,
}

impl Worker {
    /// SIGKILL to the worker's process group: its prefetched tasks stay in `unacked`.
    pub fn kill(&mut self) {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scaler in this process on a real loopback port, and a KEDA-proto client for it.
pub async fn start_scaler(config: ServeConfig) -> Result<(Running, ExternalScalerClient<Channel>)> {
    let running = start(config, None).await?;
    let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))?
        .connect()
        .await?;
    Ok((running, ExternalScalerClient::new(channel)))
}

/// Trigger metadata from pairs.
pub fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn so_ref(metadata: HashMap<String, String>) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "worker".into(),
        namespace: "test".into(),
        scaler_metadata: metadata,
    }
}

/// What KEDA would get from one poll of a trigger: spec, value, active.
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    pub metric_name: String,
    pub target: f64,
    pub target_int: i64,
    pub value: f64,
    pub value_int: i64,
    pub active: bool,
}

/// KEDA's poll sequence over gRPC: GetMetricSpec, GetMetrics, IsActive.
pub async fn poll(
    client: &mut ExternalScalerClient<Channel>,
    metadata: &HashMap<String, String>,
) -> Result<Poll, tonic::Status> {
    let r = so_ref(metadata.clone());
    let spec = client.get_metric_spec(r.clone()).await?.into_inner();
    assert_eq!(spec.metric_specs.len(), 1, "exactly one metric spec");
    let spec = &spec.metric_specs[0];
    let values = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: spec.metric_name.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(values.metric_values.len(), 1, "exactly one metric value");
    let value = &values.metric_values[0];
    let active = client.is_active(r).await?.into_inner().result;
    #[allow(deprecated)]
    Ok(Poll {
        metric_name: spec.metric_name.clone(),
        target: spec.target_size_float,
        target_int: spec.target_size,
        value: value.metric_value_float,
        value_int: value.metric_value,
        active,
    })
}

/// Opens a stream, checks the first message is the current state (`false`), enqueues one real
/// Celery task, and returns the time from the start of a warm `apply_async` to the `true`
/// message (so it includes the producer's LPUSH).
pub async fn time_to_push(redis: &RedisServer) -> Duration {
    let (_s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", "burst"),
    ]);
    let mut stream = c.stream_is_active(so_ref(m)).await.unwrap().into_inner();
    let first = tokio::time::timeout(
        Duration::from_secs(2),
        futures::StreamExt::next(&mut stream),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(!first.result, "an empty queue is inactive");

    let celery = Celery::new(redis);
    let waiter = tokio::spawn(async move {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut stream),
        )
        .await;
        (unix_now(), msg)
    });
    let (before, _after) =
        tokio::task::spawn_blocking(move || celery.enqueue_timed("burst", 1, None).unwrap())
            .await
            .unwrap();
    let (received, msg) = waiter.await.unwrap();
    assert!(
        msg.unwrap().unwrap().unwrap().result,
        "the next message is true"
    );
    // Measured from the call, so it includes apply_async's own connect and LPUSH.
    Duration::from_secs_f64((received - before).max(0.0))
}

/// What a [`CountingProxy`] counts in the client-to-server bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP/1.1 requests (request lines ending in ` HTTP/1.1`).
    Http,
    /// Kafka protocol requests (4-byte big-endian size, then the request).
    Kafka,
}

/// A TCP proxy on a loopback port that forwards to `target` and counts the requests clients
/// send through it: the benchmark's measure of backend calls, taken on the wire rather than
/// from the scaler's own bookkeeping.
#[derive(Debug)]
pub struct CountingProxy {
    pub port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on `port` (0: any free port).
    pub async fn start(port: u16, target: std::net::SocketAddr, framing: Framing) -> Result<Self> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut tail: Vec<u8> = Vec::new();
                        // Kafka: bytes left of the current frame, and a partial size prefix.
                        let mut left: usize = 0;
                        let mut size: Vec<u8> = Vec::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let data = &buf[..n];
                            match framing {
                                Framing::Http => {
                                    let mut scan = std::mem::take(&mut tail);
                                    scan.extend_from_slice(data);
                                    let pat = b" HTTP/1.1\r\n";
                                    let hits = scan.windows(pat.len()).filter(|w| w == pat).count();
                                    counter.fetch_add(hits as u64, Ordering::Relaxed);
                                    let keep = scan.len().min(pat.len() - 1);
                                    tail = scan[scan.len() - keep..].to_vec();
                                }
                                Framing::Kafka => {
                                    let mut i = 0;
                                    while i < data.len() {
                                        if left > 0 {
                                            let take = left.min(data.len() - i);
                                            left -= take;
                                            i += take;
                                            continue;
                                        }
                                        size.push(data[i]);
                                        i += 1;
                                        if size.len() == 4 {
                                            left = u32::from_be_bytes([
                                                size[0], size[1], size[2], size[3],
                                            ])
                                                as usize;
                                            size.clear();
                                            counter.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                }
                            }
                            if sw.write_all(data).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self {
            port,
            requests,
            task,
        })
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
