//! The server around the service: health, TLS and mTLS, the binary's flags, metrics, graceful
//! shutdown, and `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use headroom_integration::*;
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_scaler::server::{ServeConfig, TlsFiles};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The `headroom-scaler` binary.
fn scaler_bin() -> PathBuf {
    workspace_bin("headroom-scaler")
}

async fn health_client(s: &headroom_scaler::server::Running) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", s.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

#[tokio::test]
async fn health_is_serving_then_not_serving_on_shutdown() {
    let (s, _c) = start_scaler(ServeConfig::local()).await.unwrap();
    let mut health = health_client(&s).await;
    let service = "externalscaler.ExternalScaler".to_string();
    let status = health
        .check(HealthCheckRequest {
            service: service.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut watch = health
        .watch(HealthCheckRequest { service })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    s.shutdown();
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .unwrap();
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // A watch stream would hold the server until the grace period; probes use Check.
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(5), s.wait())
        .await
        .unwrap()
        .unwrap();
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["keda-operator".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: bool,
) -> Result<ExternalScalerClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ExternalScalerClient::new(channel))
}

fn spec_metadata() -> std::collections::HashMap<String, String> {
    md(&[
        ("source", "redis-list"),
        ("address", "127.0.0.1:1"),
        ("listName", "q"),
    ])
}

#[tokio::test]
async fn tls_serves_verified_clients_and_refuses_plaintext() {
    let pki = pki();
    let config = ServeConfig {
        tls: Some(TlsFiles {
            cert: pki.server_cert.clone().into(),
            key: pki.server_key.clone().into(),
            client_ca: None,
        }),
        ..ServeConfig::local()
    };
    let (s, mut plain) = start_scaler(config).await.unwrap();
    let mut c = tls_client(s.grpc_addr, &pki, false).await.unwrap();
    let spec = c
        .get_metric_spec(so_ref(spec_metadata()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs[0].metric_name, "redis-q");
    assert!(
        plain
            .get_metric_spec(so_ref(spec_metadata()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let config = ServeConfig {
        tls: Some(TlsFiles {
            cert: pki.server_cert.clone().into(),
            key: pki.server_key.clone().into(),
            client_ca: Some(pki.ca.clone().into()),
        }),
        ..ServeConfig::local()
    };
    let (s, _plain) = start_scaler(config).await.unwrap();
    let mut c = tls_client(s.grpc_addr, &pki, true).await.unwrap();
    assert!(c.get_metric_spec(so_ref(spec_metadata())).await.is_ok());
    let anonymous = match tls_client(s.grpc_addr, &pki, false).await {
        Ok(mut c) => c.get_metric_spec(so_ref(spec_metadata())).await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate is refused");
}

#[test]
fn bad_flags_exit_64_listing_every_problem() {
    let out = Command::new(scaler_bin())
        .args([
            "serve",
            "--grpc-addr",
            "nowhere",
            "--observation-ttl",
            "soon",
        ])
        .env("HEADROOM_BACKEND_TIMEOUT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for flag in ["--grpc-addr", "--observation-ttl", "--backend-timeout"] {
        assert!(err.contains(flag), "{err}");
    }
    let out = Command::new(scaler_bin())
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn the_binary_serves_metrics_json_logs_and_stops_on_sigterm() {
    let redis = RedisServer::start(&[]).unwrap();
    // Port 0: the binary binds, then logs the addresses it got (a port picked here could be
    // taken by a concurrent test before the binary binds it).
    let mut child = Command::new(scaler_bin())
        .args(["--log-format", "json", "serve"])
        .env("HEADROOM_GRPC_ADDR", "127.0.0.1:0")
        .env("HEADROOM_METRICS_ADDR", "127.0.0.1:0")
        .env("HEADROOM_DRAIN_DELAY", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (serving, mut logs) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            seen.push_str(&line);
            if line.contains("\"serving\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                return (v, (seen, stderr));
            }
            line.clear();
        }
        panic!("the binary exited without serving:\n{seen}");
    })
    .await
    .unwrap();
    let addr = |field: &str| -> std::net::SocketAddr {
        serving["fields"][field]
            .as_str()
            .or_else(|| serving[field].as_str())
            .unwrap_or_else(|| panic!("no {field} in {serving}"))
            .parse()
            .unwrap()
    };
    let (grpc, http) = (addr("grpc_addr").port(), addr("metrics_addr").port());
    let ch = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = ExternalScalerClient::new(ch);
    let m = md(&[("source", "celery"), ("address", &redis.address())]);
    poll(&mut c, &m).await.unwrap();
    let bad = md(&[("source", "celery"), ("address", "127.0.0.1:1")]);
    assert!(poll(&mut c, &bad).await.is_err());

    let body = http_get(http, "/metrics").await;
    for name in [
        "headroom_scaler_rpc_duration_seconds_bucket",
        "headroom_scaler_rpcs_total",
        "headroom_scaler_backend_read_duration_seconds_bucket",
        "headroom_scaler_backend_errors_total{source=\"celery\",kind=\"unavailable\"}",
        "headroom_scaler_queue_depth{namespace=\"test\",scaled_object=\"worker\",metric=\"celery-celery\",source=\"celery\"} 0",
        "headroom_build_info",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert!(http_get(http, "/readyz").await.contains("ready"));

    let started = Instant::now();
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // Wait off the runtime, so the open client connection can answer the server's GOAWAY.
    let (status, _child) = tokio::task::spawn_blocking(move || (child.wait(), child))
        .await
        .unwrap();
    let status = status.unwrap();
    assert!(status.success(), "{status:?}");
    // The 1 s drain, then a prompt stop.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let rest = std::io::read_to_string(&mut logs.1).unwrap();
    let logs = logs.0 + &rest;
    let first = logs.lines().next().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO");
    assert!(logs.contains("shutting down"), "{logs}");
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn check_prints_what_keda_would_receive() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("RPUSH")
        .arg("gpu")
        .arg(&["a", "b", "c", "d", "e", "f", "g"])
        .query(&mut conn)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("headroom-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("so.yaml");
    std::fs::write(
        &file,
        format!(
            r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: gpu-worker, namespace: ml}}
spec:
  scaleTargetRef: {{name: gpu-worker}}
  triggers:
    - type: external-push
      metadata:
        scalerAddress: headroom:9090
        source: celery
        addressFromEnv: TEST_REDIS_ADDR
        queues: gpu
        tasksPerReplica: "2"
    - type: external
      metadata:
        scalerAddress: headroom:9090
        source: redis-list
        address: {addr}
"#,
            addr = redis.address()
        ),
    )
    .unwrap();
    let out = Command::new(scaler_bin())
        .args(["check", "-f", file.to_str().unwrap(), "--output", "json"])
        .env("TEST_REDIS_ADDR", redis.address())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "one trigger fails");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["keda_metric_name"], "s0-celery-gpu");
    assert_eq!(v[0]["target"], 2.0);
    assert_eq!(v[0]["value"], 7.0);
    assert_eq!(v[0]["active"], true);
    assert_eq!(v[1]["error"]["code"], "InvalidArgument");
    assert!(
        v[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("listName")
    );

    let out = Command::new(scaler_bin())
        .args([
            "check",
            "--set",
            "source=redis-list",
            "--set",
            &format!("address={}", redis.address()),
            "--set",
            "listName=gpu",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("value        7") && text.contains("active       true"),
        "{text}"
    );
}

/// A TCP listener that counts the connections it receives: a backend that must never be
/// contacted.
async fn tripwire() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(sock);
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_secret_of_another_namespace_is_refused_and_nothing_is_sent_anywhere() {
    let (evil, hits) = tripwire().await;
    let (s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &evil),
        ("passwordSecret", "kube-system/bootstrap-token/token"),
    ]);
    // so_ref's namespace is `test`.
    for e in [
        poll(&mut c, &m).await.unwrap_err(),
        c.is_active(so_ref(m.clone())).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("`passwordSecret`"), "{}", e.message());
        assert!(e.message().contains("kube-system"), "{}", e.message());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // No Kubernetes client was even made: the refusal came from the metadata.
    assert!(
        !s.scaler
            .observations()
            .backends()
            .secrets
            .has_client()
            .await
    );
    s.shutdown();
}

#[tokio::test]
async fn backends_outside_the_allow_list_are_refused_and_listed_ones_are_read() {
    let redis = RedisServer::start(&[]).unwrap();
    let (evil, hits) = tripwire().await;
    let mut config = ServeConfig::local();
    config.access = headroom_scaler::access::Access::new(None, Some("127.0.0.1/32")).unwrap();
    let (s, mut c) = start_scaler(config).await.unwrap();
    let allowed = md(&[("source", "celery"), ("address", &redis.address())]);
    assert_eq!(poll(&mut c, &allowed).await.unwrap().value, 0.0);
    // `localhost` is a name, not the listed range: nothing is resolved.
    let port = evil.rsplit_once(':').unwrap().1;
    let by_name = md(&[
        ("source", "celery"),
        ("address", &format!("localhost:{port}")),
    ]);
    let e = poll(&mut c, &by_name).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`address`"), "{}", e.message());
    assert!(
        e.message().contains("--allowed-backends"),
        "{}",
        e.message()
    );
    let kafka = md(&[
        ("source", "kafka"),
        ("bootstrapServers", &format!("localhost:{port}")),
        ("consumerGroup", "g"),
        ("topic", "t"),
    ]);
    let e = poll(&mut c, &kafka).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("`bootstrapServers`"),
        "{}",
        e.message()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    s.shutdown();
}

#[tokio::test]
async fn oversized_and_amplifying_metadata_is_refused_cheaply() {
    let (s, mut c) = start_scaler(ServeConfig::local()).await.unwrap();
    // Over the metadata bound (64 KiB): refused naming the bound, without a read.
    let mut m = md(&[
        ("source", "redis-list"),
        ("address", "127.0.0.1:1"),
        ("listName", "q"),
    ]);
    m.insert("padding".into(), "x".repeat(70 * 1024));
    let e = poll(&mut c, &m).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("over the bound"), "{}", e.message());
    assert!(
        e.message().len() < 2_000,
        "the error does not echo the input"
    );
    // 9 bytes asking for 100 001 partitions, repeated: refused at 10 000, already in
    // GetMetricSpec (which KEDA calls without a backend).
    let m = md(&[
        ("source", "kafka"),
        ("bootstrapServers", "127.0.0.1:1"),
        ("consumerGroup", "g"),
        ("topic", "t"),
        ("partitionLimitation", &"0-100000,".repeat(1_000)),
    ]);
    let started = Instant::now();
    let e = c.get_metric_spec(so_ref(m)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("partitionLimitation"),
        "{}",
        e.message()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // A message over the server's 1 MiB bound is refused by the transport.
    let mut m = md(&[("source", "celery")]);
    m.insert("huge".into(), "x".repeat(2 * 1024 * 1024));
    let e = c.get_metric_spec(so_ref(m)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::Internal
        ),
        "{e:?}"
    );
    // The server is still fine.
    let redis = RedisServer::start(&[]).unwrap();
    let ok = md(&[("source", "celery"), ("address", &redis.address())]);
    assert_eq!(poll(&mut c, &ok).await.unwrap().value, 0.0);
    s.shutdown();
}

#[tokio::test]
async fn shutdown_keeps_answering_through_the_drain_with_health_not_serving() {
    let redis = RedisServer::start(&[]).unwrap();
    let mut config = ServeConfig::local();
    config.drain_delay = Duration::from_millis(1500);
    let (s, mut c) = start_scaler(config).await.unwrap();
    let mut health = health_client(&s).await;
    let m = md(&[("source", "celery"), ("address", &redis.address())]);
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 0.0);
    let stopping = Instant::now();
    s.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = health
        .check(HealthCheckRequest {
            service: "externalscaler.ExternalScaler".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    // Calls racing the endpoint's removal still succeed during the drain.
    assert_eq!(poll(&mut c, &m).await.unwrap().value, 0.0);
    let ready = http_get(s.metrics_addr.port(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    drop(health);
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), s.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(1500),
        "stopped before the drain ended: {:?}",
        stopping.elapsed()
    );
}
