//! The client side of `headroom.v1.Demand`: one `WatchDemand` stream per policy, reconnected
//! with backoff, whose every answer wakes the policy's reconcile at once.
//!
//! A Demand service that cannot be reached, or answers an error, or stays silent for three
//! steps, is an error the policy reports (`DemandAvailable=False`) — never a demand of 0.
//!
//! TLS: an `https://` address is verified against the operator's CA bundle
//! (`--demand-ca-file`), with a client certificate when the scaler asks for one
//! (`--demand-cert-file`, `--demand-key-file`). The bundle is the only trust: there are no
//! system roots in this build, and a policy cannot name its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use headroom_proto::headroom::v1::demand_client::DemandClient;
use headroom_proto::headroom::v1::{DemandRequest, DemandResponse, TriggerMetadata};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::metrics;

/// Spacing of forecast points asked for.
pub const STEP: Duration = Duration::from_secs(10);
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a policy's stream asks for. A change restarts the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// `host:port` or `http://host:port`.
    pub address: String,
    /// The ScaledObject's namespace and name.
    pub namespace: String,
    pub name: String,
    /// Its external triggers' metadata; empty lets the scaler answer for what KEDA sent it.
    pub triggers: Vec<HashMap<String, String>>,
    pub horizon: Duration,
}

/// The latest thing a stream said.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// The last answer and when it arrived (Unix ms).
    pub answer: Option<(DemandResponse, i64)>,
    /// Set when the last attempt failed; cleared by the next answer.
    pub error: Option<String>,
}

/// The policy a stream belongs to: (namespace, name).
pub type PolicyKey = (String, String);

struct Stream {
    watch: Watch,
    latest: Arc<Mutex<Latest>>,
    task: JoinHandle<()>,
}

/// How the Demand client verifies (and proves itself to) a scaler behind `https://`.
#[derive(Clone, PartialEq, Eq)]
pub struct DemandTls {
    /// PEM CA bundle the scaler's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM client certificate and key, for a scaler that requires client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for DemandTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("DemandTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl DemandTls {
    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// Every policy's Demand stream.
pub struct DemandStreams {
    streams: Mutex<HashMap<PolicyKey, Stream>>,
    wake: mpsc::UnboundedSender<PolicyKey>,
    tls: Option<DemandTls>,
}

impl std::fmt::Debug for DemandStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandStreams").finish_non_exhaustive()
    }
}

impl DemandStreams {
    /// The streams, and the receiver of "policy P has a new answer or error". `tls` is used
    /// for `https://` addresses (which are refused without it).
    pub fn new(tls: Option<DemandTls>) -> (Self, mpsc::UnboundedReceiver<PolicyKey>) {
        let (wake, rx) = mpsc::unbounded_channel();
        (
            Self {
                streams: Mutex::new(HashMap::new()),
                wake,
                tls,
            },
            rx,
        )
    }

    /// Makes sure `policy` has a stream for `watch` (starting or restarting it) and returns what
    /// it last said.
    pub fn ensure(&self, policy: &PolicyKey, watch: &Watch) -> Latest {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = streams.get(policy)
            && s.watch == *watch
            && !s.task.is_finished()
        {
            return s
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
        }
        if let Some(old) = streams.remove(policy) {
            old.task.abort();
        }
        let latest = Arc::new(Mutex::new(Latest::default()));
        let task = tokio::spawn(run(
            policy.clone(),
            watch.clone(),
            self.tls.clone(),
            latest.clone(),
            self.wake.clone(),
        ));
        streams.insert(
            policy.clone(),
            Stream {
                watch: watch.clone(),
                latest,
                task,
            },
        );
        Latest::default()
    }

    /// Ends `policy`'s stream (policy deleted, or no longer resolvable).
    pub fn stop(&self, policy: &PolicyKey) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = streams.remove(policy) {
            s.task.abort();
        }
    }

    /// Ends every stream (shutdown, or leadership lost).
    pub fn stop_all(&self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, s) in streams.drain() {
            s.task.abort();
        }
    }
}

impl Drop for DemandStreams {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn endpoint(address: &str, tls: Option<&DemandTls>) -> Result<Endpoint, String> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let secure = url.starts_with("https://");
    if !secure && !url.starts_with("http://") {
        return Err(format!(
            "spec.demandAddress {address:?}: the scheme must be http:// or https:// (or none: host:port)"
        ));
    }
    let e = Endpoint::from_shared(url)
        .map_err(|e| format!("spec.demandAddress {address:?} is not a valid address: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if !secure {
        return Ok(e);
    }
    let Some(tls) = tls else {
        return Err(format!(
            "spec.demandAddress {address:?} is https: the provisioner needs --demand-ca-file (chart: provisioner.demandTls) to verify the scaler"
        ));
    };
    e.tls_config(tls.config())
        .map_err(|e| format!("spec.demandAddress {address:?}: TLS configuration: {e}"))
}

/// One policy's stream, forever (until aborted): connect, watch, record, reconnect.
async fn run(
    policy: PolicyKey,
    watch: Watch,
    tls: Option<DemandTls>,
    latest: Arc<Mutex<Latest>>,
    wake: mpsc::UnboundedSender<PolicyKey>,
) {
    let fail = |error: String| {
        metrics::demand_error(&policy.0, &policy.1);
        tracing::warn!(namespace = %policy.0, policy = %policy.1, %error, "demand unavailable");
        let mut l = latest.lock().unwrap_or_else(PoisonError::into_inner);
        l.error = Some(error);
        drop(l);
        let _ = wake.send(policy.clone());
    };
    let request = DemandRequest {
        namespace: watch.namespace.clone(),
        name: watch.name.clone(),
        triggers: watch
            .triggers
            .iter()
            .map(|m| TriggerMetadata {
                metadata: m.clone(),
            })
            .collect(),
        horizon_ms: watch.horizon.as_millis().min(86_400_000) as i64,
        step_ms: STEP.as_millis() as i64,
    };
    // The scaler sends at least every step: three silent steps mean a dead connection.
    let idle = STEP * 3;
    let mut backoff = MIN_BACKOFF;
    loop {
        let endpoint = match endpoint(&watch.address, tls.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                // A bad address does not heal by retrying; the policy must change (which
                // restarts this stream).
                fail(e);
                return;
            }
        };
        match endpoint.connect().await {
            Err(e) => fail(format!(
                "cannot connect to the Demand service at {}: {e}",
                watch.address
            )),
            Ok(channel) => {
                let mut client = DemandClient::new(channel);
                match client.watch_demand(request.clone()).await {
                    Err(status) => fail(format!(
                        "Demand service at {} answered {:?}: {}",
                        watch.address,
                        status.code(),
                        status.message()
                    )),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            match tokio::time::timeout(idle, stream.message()).await {
                                Ok(Ok(Some(answer))) => {
                                    backoff = MIN_BACKOFF;
                                    let mut l =
                                        latest.lock().unwrap_or_else(PoisonError::into_inner);
                                    l.answer = Some((answer, now_ms()));
                                    l.error = None;
                                    drop(l);
                                    let _ = wake.send(policy.clone());
                                }
                                Ok(Ok(None)) => {
                                    fail(format!("the Demand stream from {} ended", watch.address));
                                    break;
                                }
                                Ok(Err(status)) => {
                                    fail(format!(
                                        "Demand service at {} answered {:?}: {}",
                                        watch.address,
                                        status.code(),
                                        status.message()
                                    ));
                                    break;
                                }
                                Err(_) => {
                                    fail(format!(
                                        "no Demand answer from {} for {idle:?}",
                                        watch.address
                                    ));
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The metadata of a ScaledObject's `external` and `external-push` triggers, to send with the
/// request so any scaler replica can answer. Empty (the scaler then answers for what KEDA last
/// sent it) when a trigger's values come from elsewhere: an `authenticationRef`, or a
/// `...FromEnv` key that KEDA resolves from the workload's environment.
pub fn triggers_of(scaled_object: &Value) -> Vec<HashMap<String, String>> {
    let Some(triggers) = scaled_object
        .pointer("/spec/triggers")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in triggers {
        if !matches!(t["type"].as_str(), Some("external" | "external-push")) {
            continue;
        }
        if !t["authenticationRef"].is_null() {
            return Vec::new();
        }
        let md: HashMap<String, String> = t["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if md.keys().any(|k| k.ends_with("FromEnv")) {
            return Vec::new();
        }
        out.push(md);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn external_triggers_are_sent_and_resolved_values_are_left_to_keda() {
        let so = json!({"spec": {"triggers": [
            {"type": "external", "metadata": {"scalerAddress": "s:9090", "source": "redis-list", "listLength": "5"}},
            {"type": "cpu", "metadata": {"value": "50"}},
            {"type": "external-push", "metadata": {"scalerAddress": "s:9090", "source": "celery"}},
        ]}});
        let t = triggers_of(&so);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["listLength"], "5");
        assert_eq!(t[1]["source"], "celery");
        let env = json!({"spec": {"triggers": [
            {"type": "external", "metadata": {"source": "celery", "addressFromEnv": "REDIS"}},
        ]}});
        assert!(triggers_of(&env).is_empty());
        let auth = json!({"spec": {"triggers": [
            {"type": "external", "metadata": {"source": "celery"}, "authenticationRef": {"name": "a"}},
        ]}});
        assert!(triggers_of(&auth).is_empty());
    }

    #[test]
    fn addresses_get_a_scheme_and_https_needs_the_operators_ca_bundle() {
        assert!(endpoint("scaler.headroom.svc:9090", None).is_ok());
        assert!(endpoint("http://127.0.0.1:9090", None).is_ok());
        let e = endpoint("https://x:1", None).unwrap_err();
        assert!(e.contains("--demand-ca-file"), "{e}");
        let e = endpoint("ftp://x:1", None).unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
        let tls = DemandTls {
            ca_pem: CA.to_vec(),
            identity: None,
        };
        assert!(endpoint("https://headroom-scaler.headroom.svc:9090", Some(&tls)).is_ok());
    }

    const CA: &[u8] = include_bytes!("../testdata/demand-tls/ca.pem");
    const SERVER_CERT: &[u8] = include_bytes!("../testdata/demand-tls/server.pem");
    const SERVER_KEY: &[u8] = include_bytes!("../testdata/demand-tls/server.key");

    /// A Demand service answering 3 replicas once, then holding the stream open.
    struct Three;

    #[tonic::async_trait]
    impl headroom_proto::headroom::v1::demand_server::Demand for Three {
        async fn get_demand(
            &self,
            _: tonic::Request<DemandRequest>,
        ) -> Result<tonic::Response<DemandResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("watch only"))
        }

        type WatchDemandStream = std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = Result<DemandResponse, tonic::Status>> + Send>,
        >;

        async fn watch_demand(
            &self,
            _: tonic::Request<DemandRequest>,
        ) -> Result<tonic::Response<Self::WatchDemandStream>, tonic::Status> {
            use futures::StreamExt;
            let answer = DemandResponse {
                desired_replicas: 3,
                ..Default::default()
            };
            let s =
                futures::stream::once(async move { Ok(answer) }).chain(futures::stream::pending());
            Ok(tonic::Response::new(Box::pin(s)))
        }
    }

    async fn tls_demand_service() -> std::net::SocketAddr {
        use tonic::transport::{Server, ServerTlsConfig};
        headroom_common::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(SERVER_CERT, SERVER_KEY));
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(headroom_proto::headroom::v1::demand_server::DemandServer::new(Three))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        addr
    }

    fn watch_at(address: String) -> Watch {
        Watch {
            address,
            namespace: "ns".into(),
            name: "so".into(),
            triggers: vec![],
            horizon: Duration::from_secs(600),
        }
    }

    /// What the Demand stream to `addr` over `tls` holds after its first event.
    async fn first_over_tls(tls: DemandTls, addr: std::net::SocketAddr) -> Latest {
        let (streams, mut wake) = DemandStreams::new(Some(tls));
        let key = ("ns".to_string(), "p".to_string());
        let watch = watch_at(format!("https://localhost:{}", addr.port()));
        streams.ensure(&key, &watch);
        tokio::time::timeout(Duration::from_secs(10), wake.recv())
            .await
            .unwrap();
        streams.ensure(&key, &watch)
    }

    #[tokio::test]
    async fn an_https_demand_service_is_verified_against_the_ca_bundle_and_answers() {
        let addr = tls_demand_service().await;
        let tls = DemandTls {
            ca_pem: CA.to_vec(),
            identity: None,
        };
        let latest = first_over_tls(tls, addr).await;
        let (answer, _) = latest.answer.expect("an answer over TLS");
        assert_eq!(answer.desired_replicas, 3, "{:?}", latest.error);
    }

    #[tokio::test]
    async fn an_https_demand_service_outside_the_ca_bundle_is_refused() {
        let addr = tls_demand_service().await;
        // Another CA than the one that signed the scaler's certificate.
        let tls = DemandTls {
            ca_pem: include_bytes!("../testdata/demand-tls/other-ca.pem").to_vec(),
            identity: None,
        };
        let latest = first_over_tls(tls, addr).await;
        assert!(latest.answer.is_none());
        assert!(latest.error.is_some());
    }

    #[tokio::test]
    async fn an_unreachable_demand_service_is_an_error_and_wakes_the_policy() {
        let (streams, mut wake) = DemandStreams::new(None);
        let key = ("ns".to_string(), "p".to_string());
        let watch = Watch {
            address: "127.0.0.1:1".into(),
            namespace: "ns".into(),
            name: "so".into(),
            triggers: vec![],
            horizon: Duration::from_secs(600),
        };
        assert!(streams.ensure(&key, &watch).answer.is_none());
        let woken = tokio::time::timeout(Duration::from_secs(10), wake.recv())
            .await
            .unwrap();
        assert_eq!(woken, Some(key.clone()));
        let latest = streams.ensure(&key, &watch);
        assert!(latest.answer.is_none());
        let error = latest.error.unwrap();
        assert!(error.contains("127.0.0.1:1"), "{error}");
    }
}
