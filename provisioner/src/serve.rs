//! `headroom-provisioner serve`: the HTTP endpoints, leader election and the reconcile loop
//! (only while leading), and graceful shutdown. [`start`] is also the in-process entry point of
//! the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use headroom_common::parse_duration;

use crate::admin::{AllowList, Boundaries};
use crate::controller::{self, Settings};
use crate::demand::DemandTls;
use crate::leader::{self, Leadership, LeaseConfig};
use crate::plan::Caps;

/// Flags of `headroom-provisioner serve`. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HEADROOM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "headroom")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "HEADROOM_LEASE_NAME",
        default_value = "headroom-provisioner"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease holds without renewal.
    #[arg(long, env = "HEADROOM_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: String,
    /// Plan, log and write status, but create and delete nothing.
    #[arg(long, env = "HEADROOM_DRY_RUN")]
    pub dry_run: bool,
    /// How often every policy is reconciled even when nothing changed.
    #[arg(long, env = "HEADROOM_RESYNC_INTERVAL", default_value = "10s")]
    pub resync_interval: String,
    /// Only policies in this namespace (default: all namespaces).
    #[arg(long, env = "HEADROOM_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// How long shutdown waits for reconciles in progress after SIGTERM.
    #[arg(long, env = "HEADROOM_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
    /// Most nodes all policies together hold (ready, in flight and deleting); no cap when
    /// unset.
    #[arg(long, env = "HEADROOM_MAX_TOTAL_NODES")]
    pub max_total_nodes: Option<u32>,
    /// Most GPUs all policies together hold (a unit of unknown type counts as the most GPUs
    /// it may have); no cap when unset.
    #[arg(long, env = "HEADROOM_MAX_TOTAL_GPUS")]
    pub max_total_gpus: Option<u32>,
    /// Most cost per hour of what all policies together hold (the instance types'
    /// `hourlyPrice`; unpriced capacity cannot be created under it); no cap when unset.
    #[arg(long, env = "HEADROOM_MAX_TOTAL_HOURLY_COST")]
    pub max_total_hourly_cost: Option<f64>,
    /// PEM CA bundle that an `https://` demandAddress's certificate must chain to (the only
    /// trust: no system roots); `https://` addresses are refused without it.
    #[arg(long, env = "HEADROOM_DEMAND_CA_FILE")]
    pub demand_ca_file: Option<String>,
    /// PEM client certificate for scalers that require one (mTLS); with --demand-key-file.
    #[arg(long, env = "HEADROOM_DEMAND_CERT_FILE", requires = "demand_key_file")]
    pub demand_cert_file: Option<String>,
    /// PEM private key of --demand-cert-file.
    #[arg(long, env = "HEADROOM_DEMAND_KEY_FILE", requires = "demand_cert_file")]
    pub demand_key_file: Option<String>,
    /// NodePools that `mode: karpenter` policies may name: `name` (any namespace),
    /// `namespace/name`, `namespace/*` or `*`, comma-separated. Unset: any.
    #[arg(long, env = "HEADROOM_ALLOWED_NODE_POOLS", value_delimiter = ',')]
    pub allowed_node_pools: Option<Vec<String>>,
    /// Launch templates (id or name) that `mode: ec2` policies may name, as
    /// --allowed-node-pools. Unset: any.
    #[arg(long, env = "HEADROOM_ALLOWED_LAUNCH_TEMPLATES", value_delimiter = ',')]
    pub allowed_launch_templates: Option<Vec<String>>,
    /// Subnet ids that `mode: ec2` policies may name, as --allowed-node-pools. Unset: any.
    #[arg(long, env = "HEADROOM_ALLOWED_SUBNETS", value_delimiter = ',')]
    pub allowed_subnets: Option<Vec<String>>,
    /// EC2 endpoint URLs that `spec.ec2.endpoint` may name (`URL` or `namespace=URL`,
    /// comma-separated). Unset: none — an endpoint receives requests signed with the
    /// provisioner's AWS credentials.
    #[arg(long, env = "HEADROOM_ALLOWED_EC2_ENDPOINTS", value_delimiter = ',')]
    pub allowed_ec2_endpoints: Option<Vec<String>>,
    /// PriorityClasses that `mode: overprovision` policies may name, as --allowed-node-pools.
    /// Unset: any; an existing PriorityClass is used only when its value is negative.
    #[arg(long, env = "HEADROOM_ALLOWED_PRIORITY_CLASSES", value_delimiter = ',')]
    pub allowed_priority_classes: Option<Vec<String>>,
    /// Namespaces where Headroom may create pods and Deployments (overprovision placeholders),
    /// comma-separated, `*` for all; set but empty: none. Unset: any (the chart always sets it
    /// to the namespaces its Roles grant).
    #[arg(long, env = "HEADROOM_WORKLOAD_NAMESPACES", value_delimiter = ',')]
    pub workload_namespaces: Option<Vec<String>>,
    /// Image holding the `headroom-warm` helper (normally the provisioner's own image; the
    /// chart sets it). When set, karpenter-mode units are warmed: a pre-pull pod pulls the
    /// workload's images onto each new node, and a unit counts as image-warm only then.
    /// Unset: no warming.
    #[arg(long, env = "HEADROOM_WARM_HELPER_IMAGE")]
    pub warm_helper_image: Option<String>,
    /// Path of the `headroom-warm` helper inside --warm-helper-image.
    #[arg(
        long,
        env = "HEADROOM_WARM_HELPER_PATH",
        default_value = "/usr/local/bin/headroom-warm"
    )]
    pub warm_helper_path: String,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub metrics_addr: SocketAddr,
    pub lease: LeaseConfig,
    pub dry_run: bool,
    pub resync: Duration,
    pub watch_namespace: Option<String>,
    pub shutdown_grace: Duration,
    /// Caps across every policy.
    pub caps: Caps,
    /// TLS of the Demand client, for `https://` addresses.
    pub demand_tls: Option<DemandTls>,
    /// What policies may name.
    pub boundaries: Boundaries,
    /// Where the image-warming helper comes from; no warming when `None`.
    pub warm_helper: Option<crate::warm::Helper>,
}

impl Config {
    /// For tests and embedding: loopback metrics on an ephemeral port, a short lease.
    pub fn local(identity: &str, lease_namespace: &str) -> Self {
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease: LeaseConfig {
                namespace: lease_namespace.into(),
                name: "headroom-provisioner".into(),
                identity: identity.into(),
                duration: Duration::from_secs(3),
            },
            dry_run: false,
            resync: Duration::from_secs(2),
            watch_namespace: None,
            shutdown_grace: Duration::from_secs(5),
            caps: Caps::default(),
            demand_tls: None,
            boundaries: Boundaries::default(),
            warm_helper: None,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "headroom-provisioner".into())
}

impl ServeArgs {
    /// Checks every flag and reports every bad one at once.
    pub fn validate(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let metrics_addr = self.metrics_addr.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(format!(
                "--metrics-addr: {:?} is not an address like 0.0.0.0:8080",
                self.metrics_addr
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let mut duration = |flag: &str, v: &str, min: Duration| match parse_duration(v) {
            Some(d) if d >= min => d,
            _ => {
                errors.push(format!(
                    "--{flag}: {v:?} is not a duration of at least {min:?} like 10s or 1m"
                ));
                min
            }
        };
        let lease_duration = duration(
            "lease-duration",
            &self.lease_duration,
            Duration::from_secs(1),
        );
        let resync = duration(
            "resync-interval",
            &self.resync_interval,
            Duration::from_millis(100),
        );
        let shutdown_grace = duration("shutdown-grace", &self.shutdown_grace, Duration::ZERO);
        for (flag, v) in [
            ("lease-namespace", &self.lease_namespace),
            ("lease-name", &self.lease_name),
        ] {
            if v.is_empty() {
                errors.push(format!("--{flag} must not be empty"));
            }
        }
        if let Some(cost) = self.max_total_hourly_cost
            && !(cost.is_finite() && cost >= 0.0)
        {
            errors.push(format!(
                "--max-total-hourly-cost: {cost} is not a cost of 0 or more"
            ));
        }
        let mut read = |flag: &str, path: &Option<String>| -> Option<Vec<u8>> {
            let path = path.as_deref()?;
            match std::fs::read(path) {
                Ok(b) if !b.is_empty() => Some(b),
                Ok(_) => {
                    errors.push(format!("--{flag}: {path} is empty"));
                    None
                }
                Err(e) => {
                    errors.push(format!("--{flag}: cannot read {path}: {e}"));
                    None
                }
            }
        };
        let ca = read("demand-ca-file", &self.demand_ca_file);
        let cert = read("demand-cert-file", &self.demand_cert_file);
        let key = read("demand-key-file", &self.demand_key_file);
        if ca.is_none() && self.demand_ca_file.is_none() && self.demand_cert_file.is_some() {
            errors.push("--demand-cert-file needs --demand-ca-file".into());
        }
        let mut allow = |flag: &str, v: &Option<Vec<String>>, urls: bool| {
            v.as_ref()
                .and_then(|v| match AllowList::parse(flag, v, urls) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                })
        };
        let boundaries = Boundaries {
            node_pools: allow("allowed-node-pools", &self.allowed_node_pools, false),
            launch_templates: allow(
                "allowed-launch-templates",
                &self.allowed_launch_templates,
                false,
            ),
            subnets: allow("allowed-subnets", &self.allowed_subnets, false),
            ec2_endpoints: allow("allowed-ec2-endpoints", &self.allowed_ec2_endpoints, true)
                .unwrap_or_default(),
            priority_classes: allow(
                "allowed-priority-classes",
                &self.allowed_priority_classes,
                false,
            ),
            workload_namespaces: self.workload_namespaces.as_ref().map(|v| {
                v.iter()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect()
            }),
        };
        let warm_helper = match self.warm_helper_image.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(image) => {
                if !self.warm_helper_path.starts_with('/') {
                    errors.push(format!(
                        "--warm-helper-path: {:?} is not an absolute path",
                        self.warm_helper_path
                    ));
                }
                Some(crate::warm::Helper {
                    image: image.to_string(),
                    path: self.warm_helper_path.clone(),
                })
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            boundaries,
            metrics_addr,
            lease: LeaseConfig {
                namespace: self.lease_namespace.clone(),
                name: self.lease_name.clone(),
                identity: self
                    .identity
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(host_name),
                duration: lease_duration,
            },
            dry_run: self.dry_run,
            resync,
            watch_namespace: self.watch_namespace.clone().filter(|s| !s.is_empty()),
            shutdown_grace,
            caps: Caps {
                max_nodes: self.max_total_nodes,
                max_gpus: self.max_total_gpus,
                max_hourly_cost: self.max_total_hourly_cost,
            },
            demand_tls: ca.map(|ca_pem| DemandTls {
                ca_pem,
                identity: cert.zip(key),
            }),
            warm_helper,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// A running provisioner.
#[derive(Debug)]
pub struct Running {
    pub metrics_addr: SocketAddr,
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Whether this replica holds the Lease (and so acts).
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Starts shutting down: stops acting, releases the Lease.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until everything stopped.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }
}

/// Binds the HTTP server, joins the election, and reconciles while leading. `metrics` renders
/// /metrics; `None` serves an empty page (tests running several replicas in one process).
pub async fn start(
    config: Config,
    client: kube::Client,
    metrics: Option<PrometheusHandle>,
) -> Result<Running, ServeError> {
    let http = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_addr = http.local_addr().map_err(ServeError::Http)?;
    let shutdown = CancellationToken::new();
    let api_ok = Arc::new(AtomicBool::new(false));

    let app = headroom_common::health_router(metrics, {
        let api_ok = api_ok.clone();
        let shutdown = shutdown.clone();
        move || {
            if shutdown.is_cancelled() {
                Err("shutting down")
            } else if api_ok.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the API server is not reachable")
            }
        }
    });

    // Readiness: the API server answers (checked every 5 s).
    let probe = {
        let client = client.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let ok = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
                    .await
                    .is_ok_and(|r| r.is_ok());
                if api_ok.swap(ok, Ordering::Relaxed) != ok {
                    tracing::info!(reachable = ok, "API server");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };

    let (lead_tx, lead_rx) = watch::channel(false);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let leadership = Leadership::default();
    let election = tokio::spawn(leader::run(
        client.clone(),
        config.lease.clone(),
        lead_tx,
        leadership.clone(),
        shutdown.clone(),
        async move {
            let _ = stopped_rx.await;
        },
    ));

    // Acts only while leading: a controller per term of leadership.
    let acting = {
        let mut leading = lead_rx.clone();
        let settings = Settings {
            dry_run: config.dry_run,
            resync: config.resync,
            watch_namespace: config.watch_namespace.clone(),
            identity: config.lease.identity.clone(),
            caps: config.caps,
            boundaries: config.boundaries.clone(),
            leadership,
            demand_tls: config.demand_tls.clone(),
            warm_helper: config.warm_helper.clone(),
        };
        let grace = config.shutdown_grace;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Dropped when this task ends: the election then releases the Lease.
            let _stopped = stopped_tx;
            loop {
                // Wait to lead (or for shutdown).
                while !*leading.borrow_and_update() {
                    tokio::select! {
                        r = leading.changed() => if r.is_err() { return },
                        () = shutdown.cancelled() => return,
                    }
                }
                tracing::info!(dry_run = settings.dry_run, "leading: reconciling policies");
                let stop = CancellationToken::new();
                let mut run = tokio::spawn(controller::run(
                    client.clone(),
                    settings.clone(),
                    stop.clone(),
                ));
                let mut ended = false;
                while *leading.borrow_and_update() && !shutdown.is_cancelled() {
                    tokio::select! {
                        r = leading.changed() => if r.is_err() { break },
                        () = shutdown.cancelled() => {}
                        _ = &mut run => { ended = true; break }
                    }
                }
                stop.cancel();
                if !ended && !shutdown.is_cancelled() {
                    // Leadership lost: another replica may act any moment, so what runs here
                    // stops now, mid-call if need be (a provider write cut short is adopted by
                    // its token or intent, never repeated).
                    run.abort();
                    let _ = run.await;
                } else if !ended && tokio::time::timeout(grace, &mut run).await.is_err() {
                    tracing::warn!(
                        "reconciles still running after the grace period; stopping anyway"
                    );
                    run.abort();
                }
                tracing::info!("not leading: stopped reconciling");
                if shutdown.is_cancelled() {
                    return;
                }
            }
        })
    };

    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let http_shutdown = shutdown.clone();
            let http_result = axum::serve(http, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
                .map_err(ServeError::Http);
            let _ = acting.await;
            let _ = election.await;
            probe.abort();
            http_result
        })
    };
    tracing::info!(%metrics_addr, identity = %config.lease.identity, dry_run = config.dry_run, "serving");
    Ok(Running {
        metrics_addr,
        leading: lead_rx,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            metrics_addr: "0.0.0.0:8080".into(),
            lease_namespace: "headroom".into(),
            lease_name: "headroom-provisioner".into(),
            identity: Some("pod-1".into()),
            lease_duration: "15s".into(),
            dry_run: false,
            resync_interval: "10s".into(),
            watch_namespace: None,
            shutdown_grace: "10s".into(),
            max_total_nodes: None,
            max_total_gpus: None,
            max_total_hourly_cost: None,
            demand_ca_file: None,
            demand_cert_file: None,
            demand_key_file: None,
            allowed_node_pools: None,
            allowed_launch_templates: None,
            allowed_subnets: None,
            allowed_ec2_endpoints: None,
            allowed_priority_classes: None,
            workload_namespaces: None,
            warm_helper_image: None,
            warm_helper_path: "/usr/local/bin/headroom-warm".into(),
        }
    }

    #[test]
    fn allow_lists_are_parsed_and_a_bad_entry_names_its_flag() {
        let c = args().validate().unwrap();
        assert_eq!(c.boundaries, Boundaries::default());
        let mut a = args();
        a.allowed_node_pools = Some(vec!["ml/gpu".into(), "shared".into()]);
        a.allowed_ec2_endpoints = Some(vec!["ml=http://moto:5000".into()]);
        a.workload_namespaces = Some(vec![String::new()]);
        let c = a.validate().unwrap();
        let pools = c.boundaries.node_pools.unwrap();
        assert!(pools.allows("ml", "gpu") && !pools.allows("etl", "gpu"));
        assert!(c.boundaries.ec2_endpoints.allows("ml", "http://moto:5000"));
        assert_eq!(c.boundaries.workload_namespaces, Some(vec![]));
        a.allowed_subnets = Some(vec!["/subnet-1".into()]);
        let errors = a.validate().unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("--allowed-subnets")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_default_flags_validate() {
        let c = args().validate().unwrap();
        assert_eq!(c.lease.duration, Duration::from_secs(15));
        assert_eq!(c.resync, Duration::from_secs(10));
        assert_eq!(c.lease.identity, "pod-1");
    }

    #[test]
    fn caps_across_policies_are_optional_flags() {
        let c = args().validate().unwrap();
        assert!(c.caps.is_empty());
        let mut a = args();
        a.max_total_nodes = Some(20);
        a.max_total_gpus = Some(64);
        a.max_total_hourly_cost = Some(120.5);
        let c = a.validate().unwrap();
        assert_eq!(
            c.caps,
            Caps {
                max_nodes: Some(20),
                max_gpus: Some(64),
                max_hourly_cost: Some(120.5)
            }
        );
    }

    #[test]
    fn a_demand_ca_file_gives_the_demand_client_tls() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/demand-tls");
        let mut a = args();
        assert!(a.validate().unwrap().demand_tls.is_none());
        a.demand_ca_file = Some(format!("{dir}/ca.pem"));
        let tls = a.validate().unwrap().demand_tls.unwrap();
        assert!(tls.ca_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(tls.identity.is_none());
        a.demand_cert_file = Some(format!("{dir}/server.pem"));
        a.demand_key_file = Some(format!("{dir}/server.key"));
        let tls = a.validate().unwrap().demand_tls.unwrap();
        assert!(tls.identity.is_some());
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let mut a = args();
        a.metrics_addr = "nope".into();
        a.lease_duration = "0s".into();
        a.resync_interval = "often".into();
        a.lease_name = String::new();
        a.max_total_hourly_cost = Some(f64::NAN);
        a.demand_ca_file = Some("/nonexistent/ca.pem".into());
        let errors = a.validate().unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        for flag in [
            "--metrics-addr",
            "--lease-duration",
            "--resync-interval",
            "--lease-name",
            "--max-total-hourly-cost",
            "--demand-ca-file",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(flag)),
                "{flag}: {errors:?}"
            );
        }
    }
}
