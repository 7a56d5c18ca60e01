//! `headroom-scaler serve`: the gRPC server KEDA calls, its health service, the metrics and
//! probe endpoints, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use headroom_proto::externalscaler::external_scaler_server::ExternalScalerServer;
use headroom_proto::headroom::v1::demand_server::DemandServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use headroom_common::parse_duration;

use crate::access::Access;
use crate::bounds;
use crate::metrics;
use crate::observations::Observations;
use crate::push::{PushHub, PushSettings};
use crate::service::Scaler;
use crate::shared_state::{SharedState, StateError};
use crate::sources::Backends;

/// Flags of `headroom-scaler serve`. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC server KEDA calls.
    #[arg(long, env = "HEADROOM_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: String,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HEADROOM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// How long one queue reading answers all calls for the same queue (e.g. 1s, 500ms).
    /// 0 reads the backend on every call.
    #[arg(long, env = "HEADROOM_OBSERVATION_TTL", default_value = "1s")]
    pub observation_ttl: String,
    /// Deadline for one backend read, including connecting. Keep it under KEDA's 3 s HPA
    /// deadline so that a hung backend gives UNAVAILABLE, not a timeout on KEDA's side.
    #[arg(long, env = "HEADROOM_BACKEND_TIMEOUT", default_value = "2s")]
    pub backend_timeout: String,
    /// Poll interval of push activation when Redis cannot notify.
    #[arg(long, env = "HEADROOM_PUSH_POLL_INTERVAL", default_value = "50ms")]
    pub push_poll_interval: String,
    /// Poll interval of push activation for SQS and Kafka, which never notify: one read per
    /// watched queue per interval, while StreamIsActive streams are open on it.
    #[arg(long, env = "HEADROOM_BROKER_POLL_INTERVAL", default_value = "250ms")]
    pub broker_poll_interval: String,
    /// Redis URL (redis:// or rediss://) where state shared by scaler replicas is kept
    /// (Kafka's excludePersistentLag offsets); in memory when unset.
    #[arg(long, env = "HEADROOM_HISTORY_URL")]
    pub history_url: Option<String>,
    /// excludePersistentLag compares a partition's committed offset with the one read at least
    /// this long before (the previous poll), not with a read a moment ago.
    #[arg(long, env = "HEADROOM_PERSISTENT_LAG_INTERVAL", default_value = "1s")]
    pub persistent_lag_interval: String,
    /// How often an open StreamIsActive repeats its current state.
    #[arg(long, env = "HEADROOM_PUSH_HEARTBEAT", default_value = "30s")]
    pub push_heartbeat: String,
    /// How long shutdown waits for calls in progress after SIGTERM.
    #[arg(long, env = "HEADROOM_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
    /// PEM certificate chain of the gRPC server; enables TLS (with --tls-key).
    #[arg(long, env = "HEADROOM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, env = "HEADROOM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "HEADROOM_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Kubeconfig for reading the Secrets that `...Secret` trigger keys name. Default: the
    /// in-cluster service account, else KUBECONFIG or ~/.kube/config. The scaler talks to the
    /// API server only once a trigger uses a `...Secret` key.
    #[arg(long, env = "HEADROOM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose Secrets a `...Secret` key of any ScaledObject may name, comma-separated.
    /// Default none: a trigger reads Secrets only in its ScaledObject's own namespace.
    #[arg(long, env = "HEADROOM_SHARED_SECRET_NAMESPACES")]
    pub shared_secret_namespaces: Option<String>,
    /// Backends triggers may name, comma-separated: host names (`redis.queues.svc`), domains
    /// (`*.queues.svc`), IP ranges (`10.0.0.0/8`) and URL prefixes
    /// (`https://sqs.eu-west-1.amazonaws.com/123456789012/`). Default: any backend.
    #[arg(long, env = "HEADROOM_ALLOWED_BACKENDS")]
    pub allowed_backends: Option<String>,
    /// After SIGTERM, how long the scaler keeps answering while health says NOT_SERVING and
    /// /readyz fails, so that KEDA and the Service stop sending calls before it closes. Then
    /// calls in progress get --shutdown-grace.
    #[arg(long, env = "HEADROOM_DRAIN_DELAY", default_value = "5s")]
    pub drain_delay: String,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub observation_ttl: Duration,
    pub backend_timeout: Duration,
    pub push: PushSettings,
    pub push_heartbeat: Duration,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
    /// `--history-url`.
    pub history_url: Option<String>,
    pub persistent_lag_interval: Duration,
    /// `--kubeconfig`: where `...Secret` keys are read (`None`: in-cluster or inferred).
    pub kubeconfig: Option<PathBuf>,
    /// `--shared-secret-namespaces` and `--allowed-backends`.
    pub access: Access,
    /// `--drain-delay`.
    pub drain_delay: Duration,
}

/// TLS material, read at start.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// A configuration for tests and embedding: loopback, ephemeral ports, defaults.
    pub fn local() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            observation_ttl: Duration::from_secs(1),
            backend_timeout: Duration::from_secs(2),
            push: PushSettings::default(),
            push_heartbeat: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            history_url: None,
            persistent_lag_interval: crate::service::PERSISTENT_LAG_INTERVAL,
            kubeconfig: None,
            access: Access::default(),
            drain_delay: Duration::ZERO,
        }
    }
}

impl ServeArgs {
    /// Checks every flag and reports every bad one at once.
    pub fn validate(&self) -> Result<ServeConfig, Vec<String>> {
        let mut errors = Vec::new();
        let mut addr = |flag: &str, v: &str| match v.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errors.push(format!(
                    "--{flag}: {v:?} is not an address like 0.0.0.0:9090"
                ));
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        let grpc_addr = addr("grpc-addr", &self.grpc_addr);
        let metrics_addr = addr("metrics-addr", &self.metrics_addr);
        let mut dur = |flag: &str, v: &str, allow_zero: bool| match parse_duration(v) {
            Some(d) if allow_zero || !d.is_zero() => d,
            _ => {
                errors.push(format!(
                    "--{flag}: {v:?} is not a {}duration like 500ms, 2s or 1m",
                    if allow_zero { "" } else { "non-zero " }
                ));
                Duration::ZERO
            }
        };
        let observation_ttl = dur("observation-ttl", &self.observation_ttl, true);
        let backend_timeout = dur("backend-timeout", &self.backend_timeout, false);
        let poll_interval = dur("push-poll-interval", &self.push_poll_interval, false);
        let broker_poll_interval = dur("broker-poll-interval", &self.broker_poll_interval, false);
        let persistent_lag_interval = dur(
            "persistent-lag-interval",
            &self.persistent_lag_interval,
            true,
        );
        let push_heartbeat = dur("push-heartbeat", &self.push_heartbeat, false);
        let shutdown_grace = dur("shutdown-grace", &self.shutdown_grace, true);
        let drain_delay = dur("drain-delay", &self.drain_delay, true);
        let access = match Access::new(
            self.shared_secret_namespaces.as_deref(),
            self.allowed_backends.as_deref(),
        ) {
            Ok(a) => a,
            Err(es) => {
                errors.extend(es.into_iter().map(|e| e.to_string()));
                Access::default()
            }
        };
        let mut read = |flag: &str, path: &PathBuf| match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push(format!("--{flag}: cannot read {}: {e}", path.display()));
                None
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let cert = read("tls-cert", cert);
                let key = read("tls-key", key);
                let client_ca = self
                    .tls_client_ca
                    .as_ref()
                    .and_then(|p| read("tls-client-ca", p));
                cert.zip(key).map(|(cert, key)| TlsFiles {
                    cert,
                    key,
                    client_ca,
                })
            }
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    errors.push("--tls-client-ca needs --tls-cert and --tls-key".into());
                }
                None
            }
            _ => {
                errors.push("--tls-cert and --tls-key go together".into());
                None
            }
        };
        if let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            errors.push(format!("--kubeconfig: {} is not a file", path.display()));
        }
        if let Some(url) = &self.history_url
            && let Err(e) = SharedState::open(Some(url), Duration::from_secs(1))
        {
            errors.push(e.to_string());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ServeConfig {
            grpc_addr,
            metrics_addr,
            observation_ttl,
            backend_timeout,
            push: PushSettings {
                poll_interval,
                broker_poll_interval,
                ..PushSettings::default()
            },
            push_heartbeat,
            shutdown_grace,
            tls,
            history_url: self.history_url.clone(),
            persistent_lag_interval,
            kubeconfig: self.kubeconfig.clone(),
            access,
            drain_delay,
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
    #[error("invalid TLS material: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    History(#[from] StateError),
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub scaler: Scaler,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Starts shutting down: NOT_SERVING (still answering for the drain delay), then push
    /// streams end and calls in progress finish within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }
}

/// Binds both listeners and starts serving. `metrics` renders /metrics; `None` serves an empty
/// page (tests that run several servers in one process have one global recorder at most).
pub async fn start(
    config: ServeConfig,
    metrics: Option<PrometheusHandle>,
) -> Result<Running, ServeError> {
    crate::install_crypto_provider();
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let http = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let grpc_addr = grpc.local_addr().map_err(ServeError::Http)?;
    let metrics_addr = http.local_addr().map_err(ServeError::Http)?;

    let backends = Arc::new(Backends::new(
        config.backend_timeout,
        config.kubeconfig.clone(),
    ));
    let history = Arc::new(SharedState::open(
        config.history_url.as_deref(),
        config.backend_timeout,
    )?);
    let observations = Arc::new(Observations::new(
        backends,
        config.observation_ttl,
        config.backend_timeout,
    ));
    let push = PushHub::new(observations.clone(), config.push);
    // `shutdown`: SIGTERM (or Running::shutdown) arrived, the drain begins; `closing`: the drain
    // is over, push streams end and the server stops accepting.
    let shutdown = CancellationToken::new();
    let closing = CancellationToken::new();
    let scaler = Scaler::new(
        observations.clone(),
        push,
        closing.clone(),
        config.push_heartbeat,
    )
    .with_history(history, config.persistent_lag_interval)
    .with_access(config.access.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ExternalScalerServer<Scaler>>().await;
    health.set_serving::<DemandServer<Scaler>>().await;

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(bounds::MAX_CONCURRENT_CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(bounds::MAX_CONCURRENT_STREAMS));
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_config).map_err(ServeError::Tls)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(
            ExternalScalerServer::new(scaler.clone())
                .max_decoding_message_size(bounds::MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(
            DemandServer::new(scaler.clone())
                .max_decoding_message_size(bounds::MAX_GRPC_MESSAGE_BYTES),
        );

    let ready = CancellationToken::new();
    let app = headroom_common::health_router(metrics, {
        let ready = ready.clone();
        move || {
            if ready.is_cancelled() {
                Err("shutting down")
            } else {
                Ok(())
            }
        }
    });

    let sweeper = {
        let observations = observations.clone();
        let scaler = scaler.clone();
        let shutdown = closing.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            // Planner histories go to the store every 30 s and once more on shutdown, so a
            // restart or another replica continues from them.
            let mut save = tokio::time::interval(Duration::from_secs(30));
            save.tick().await;
            loop {
                tokio::select! {
                    _ = save.tick() => { scaler.save_history().await; }
                    _ = tick.tick() => {
                        let idle = Duration::from_secs(600);
                        observations.sweep(idle);
                        observations.backends().kafka.sweep(idle);
                        observations.backends().sqs.sweep();
                        observations.backends().redis.sweep();
                        observations.backends().celery_unacked.sweep();
                        observations.backends().secrets.sweep(crate::secrets::IDLE_WATCH);
                        // Planners hold a queue's learned history: kept for a day without calls
                        // (a ScaledObject paused overnight keeps its forecast).
                        scaler.plans().sweep(Duration::from_secs(86_400));
                        metrics::planners(scaler.plans().len());
                        metrics::refresh();
                        scaler.seen().sweep(idle);
                    }
                    () = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), scaler.save_history()).await;
                        return;
                    }
                }
            }
        })
    };

    let task = {
        let shutdown = shutdown.clone();
        let closing = closing.clone();
        let grace = config.shutdown_grace;
        let drain = config.drain_delay;
        tokio::spawn(async move {
            let http_shutdown = closing.clone();
            let http = tokio::spawn(async move {
                axum::serve(http, app)
                    .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                    .await
            });
            let signal = {
                let shutdown = shutdown.clone();
                let closing = closing.clone();
                async move {
                    shutdown.cancelled().await;
                    ready.cancel();
                    health
                        .set_not_serving::<ExternalScalerServer<Scaler>>()
                        .await;
                    health.set_not_serving::<DemandServer<Scaler>>().await;
                    // Still answering: KEDA's calls that race the endpoint's removal succeed.
                    tracing::info!(drain = ?drain, "draining: health NOT_SERVING, still answering");
                    tokio::time::sleep(drain).await;
                    closing.cancel();
                    tracing::info!(grace = ?grace, "shutting down");
                }
            };
            let grpc = router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), signal);
            let grpc_result = async {
                tokio::pin!(grpc);
                tokio::select! {
                    r = &mut grpc => r.map_err(ServeError::Grpc),
                    () = async { closing.cancelled().await; tokio::time::sleep(grace).await } => {
                        tracing::warn!("calls still running after the grace period; stopping anyway");
                        Ok(())
                    }
                }
            }
            .await;
            sweeper.abort();
            let http_result = match http.await {
                Ok(r) => r.map_err(ServeError::Http),
                Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
            };
            grpc_result.and(http_result)
        })
    };

    tracing::info!(%grpc_addr, %metrics_addr, tls = config.tls.is_some(), "serving");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        scaler,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let args = ServeArgs {
            grpc_addr: "nope".into(),
            metrics_addr: "0.0.0.0:8080".into(),
            observation_ttl: "soon".into(),
            backend_timeout: "0s".into(),
            push_poll_interval: "50ms".into(),
            broker_poll_interval: "250ms".into(),
            history_url: None,
            persistent_lag_interval: "1s".into(),
            push_heartbeat: "30s".into(),
            shutdown_grace: "10s".into(),
            tls_cert: Some("/nonexistent/cert.pem".into()),
            tls_key: None,
            tls_client_ca: None,
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            shared_secret_namespaces: None,
            allowed_backends: None,
            drain_delay: "5s".into(),
        };
        let errors = args.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[4].starts_with("--kubeconfig"), "{errors:?}");
        assert!(errors[0].starts_with("--grpc-addr"));
        assert!(errors[1].starts_with("--observation-ttl"));
        assert!(errors[2].starts_with("--backend-timeout"));
        assert!(errors[3].contains("go together"));
    }
}
