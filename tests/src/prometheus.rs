//! A real Prometheus (Debian's `prometheus` package) for the dashboard and alert tests, and
//! prometheus-operator's CRDs for validating the chart's ServiceMonitor and PrometheusRule.
//! Both come from `tests/scripts/install-prometheus.sh` (run on first use).
//!
//! [`Prometheus::start`] runs one server per test on a free loopback port with a 1 s scrape
//! interval, scraping the given `host:port` targets under one job, and evaluating the given rule
//! files; stopped (and its folder removed) on drop.

// Test support: failing loudly on a broken test bed is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::kube::testbed_env;
use crate::{free_port, kill_child, repo_root};

/// Installs Prometheus and the prometheus-operator CRDs once per process (instant when cached).
pub fn ensure_installed() -> Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script = repo_root().join("tests/scripts/install-prometheus.sh");
            let out = Command::new("bash")
                .arg(&script)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "tests/scripts/install-prometheus.sh failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// prometheus-operator's CRD files (`monitoring.coreos.com_servicemonitors.yaml`, ...).
pub fn operator_crds_dir() -> PathBuf {
    PathBuf::from(
        testbed_env()
            .get("HEADROOM_PROMETHEUS_OPERATOR_HOME")
            .expect("tests/scripts/env.sh prints HEADROOM_PROMETHEUS_OPERATOR_HOME"),
    )
    .join("crds")
}

/// Runs `promtool ARGS...`; its combined output, or an error holding it.
pub fn promtool(args: &[&str]) -> Result<String> {
    ensure_installed()?;
    let out = Command::new("promtool")
        .args(args)
        .output()
        .context("run promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {} failed: {text}", args.join(" "));
    }
    Ok(text)
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path /metrics) every second as job
    /// `job`, with `honor_labels` as the chart's ServiceMonitor sets it, and evaluating
    /// `rule_files` every second. Waits until it is ready.
    pub fn start(job: &str, targets: &[String], rule_files: &[PathBuf]) -> Result<Self> {
        ensure_installed()?;
        let dir = std::env::temp_dir().join(format!(
            "headroom-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: {job}\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() {
                "  []\n".to_string()
            } else {
                rules.concat()
            },
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        promtool(&[
            "check",
            "config",
            config_path.to_str().context("UTF-8 path")?,
        ])?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start prometheus")?;
        let mut me = Self {
            child: Some(child),
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = http_get(&format!("{}/-/ready", me.url))
                && body.contains("Ready")
            {
                return Ok(me);
            }
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                bail!("prometheus exited ({status}): {}", me.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 30 s: {}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The folder holding its configuration (rule files may be written here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An instant query through the HTTP API: the `data.result` array, or an error with
    /// Prometheus' own message (a parse error names the position).
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/api/v1/query?query={}", self.url, url_encode(expr));
        let body = http_get(&url)?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query answer: {body}"))?;
        if v["status"] != "success" {
            bail!("{}: {}", v["errorType"], v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `/api/v1/rules`: every loaded rule as (name, health, lastError).
    pub fn rules(&self) -> Result<Vec<(String, String, String)>> {
        let body = http_get(&format!("{}/api/v1/rules", self.url))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = Vec::new();
        for g in v["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                    r["lastError"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// `/api/v1/targets`: the health of every active target.
    pub fn target_health(&self) -> Result<Vec<String>> {
        let body = http_get(&format!("{}/api/v1/targets", self.url))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["health"].as_str().unwrap_or_default().to_string())
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking HTTP/1.1 GET on loopback (the test bed has no HTTP client crate; curl is installed
/// by install-k8s.sh but a socket is simpler and has no quoting to get wrong).
pub fn http_get(url: &str) -> Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http:// URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
