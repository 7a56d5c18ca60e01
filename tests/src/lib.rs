//! The test bed: real peers started on free loopback ports for integration tests and benchmarks.
//!
//! - [`RedisServer`]: Debian's `redis-server`, one per test, stopped on drop (and restartable on
//!   the same port, for outage tests).
//! - [`Celery`]: real Celery producers and workers, through `tests/python/celery_tool.py` in the
//!   virtualenv that `tests/scripts/install-testbed.sh` builds (installed on first use).
//! - [`start_scaler`]: the scaler's own server in this process, on a real TCP port, and a client
//!   built from KEDA's proto.
//! - [`kube`]: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager,
//!   scheduler, kwok fake nodes) and optionally KEDA, from `tests/scripts/k8s-up.sh`.

// Test support: failing loudly on a broken test bed is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

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
        let mut s = Self {
            port: free_port(),
            args: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts a TLS-only server (`--tls-port`) with these PEM files; clients need not present
    /// certificates.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        let port = free_port();
        let mut s = Self {
            port,
            args: [
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
            .to_vec(),
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server: run tests/scripts/install-testbed.sh")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not listen on {} within 5 s", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

    /// Starts a real worker on `queues` and waits until it consumes.
    pub fn worker(
        &self,
        queues: &str,
        concurrency: u32,
        prefetch: u32,
        acks_late: bool,
    ) -> Result<Worker> {
        let mut c = self.command();
        c.args(["worker", "--queue", queues])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--prefetch", &prefetch.to_string()])
            .args(["--sleep", "600"]);
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
