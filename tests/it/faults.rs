//! The network between the scaler and its backends fails the ways real networks do — latency,
//! a partition that heals, a backend gone without a word (half-open connections), resets, a
//! slow link — through a fault proxy ([`headroom_integration::fault`]) in front of real Redis
//! (Celery), a real Kafka broker and moto's SQS. For each: every answer comes within the
//! deadline, a failed read is UNAVAILABLE and never a value, and the scaler recovers on its own
//! once the network does, with no restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use headroom_integration::fault::{Fault, FaultProxy};
use headroom_integration::kafka::KafkaBroker;
use headroom_integration::sqs::{SqsServer, trigger};
use headroom_integration::*;
use headroom_proto::externalscaler::GetMetricsRequest;
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_scaler::server::ServeConfig;
use tonic::Code;
use tonic::transport::Channel;

/// The scaler's per-call budget for backend reads in these tests.
const BACKEND_TIMEOUT: Duration = Duration::from_millis(800);
/// What an answer may take beyond it (gRPC, the proxy, a loaded CI machine).
const SLACK: Duration = Duration::from_millis(1200);
/// How long the scaler may take to read correctly again once the network is back.
const RECOVERY: Duration = Duration::from_secs(20);

fn config() -> ServeConfig {
    ServeConfig {
        observation_ttl: Duration::ZERO,
        backend_timeout: BACKEND_TIMEOUT,
        ..ServeConfig::local()
    }
}

struct Case {
    name: &'static str,
    client: ExternalScalerClient<Channel>,
    metadata: HashMap<String, String>,
    metric: String,
    want: f64,
}

impl Case {
    async fn new(
        name: &'static str,
        mut client: ExternalScalerClient<Channel>,
        metadata: HashMap<String, String>,
        want: f64,
    ) -> Self {
        let p = poll(&mut client, &metadata).await.unwrap();
        assert_eq!(p.value, want, "{name}: the value through a healthy proxy");
        Self {
            name,
            client,
            metadata,
            metric: p.metric_name,
            want,
        }
    }

    /// One GetMetrics, and how long it took.
    async fn read(&mut self) -> (Result<f64, tonic::Status>, Duration) {
        let started = Instant::now();
        let r = self
            .client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(so_ref(self.metadata.clone())),
                metric_name: self.metric.clone(),
            })
            .await
            .map(|r| r.into_inner().metric_values[0].metric_value_float);
        (r, started.elapsed())
    }

    /// Under a fault that stops reads: UNAVAILABLE (never a value), each within the deadline.
    async fn unavailable_within_the_deadline(&mut self, fault: Fault) {
        for i in 0..3 {
            let (r, took) = self.read().await;
            eprintln!("{}: {fault:?} read {i}: {r:?} in {took:?}", self.name);
            let e = r.expect_err("a read through a broken network must fail, never answer a value");
            assert_eq!(
                e.code(),
                Code::Unavailable,
                "{}: {fault:?}: {e:?}",
                self.name
            );
            assert!(
                took < BACKEND_TIMEOUT + SLACK,
                "{}: {fault:?}: answered after {took:?}",
                self.name
            );
        }
        let started = Instant::now();
        let e = self
            .client
            .is_active(so_ref(self.metadata.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::Unavailable,
            "{}: IsActive: {e:?}",
            self.name
        );
        assert!(started.elapsed() < BACKEND_TIMEOUT + SLACK);
    }

    /// Once the network is back: the right value again, with no restart. Returns how long.
    async fn recovers(&mut self, after: Fault) -> Duration {
        let started = Instant::now();
        loop {
            let (r, took) = self.read().await;
            assert!(
                took < BACKEND_TIMEOUT + SLACK,
                "{}: after {after:?}: {took:?}",
                self.name
            );
            match r {
                Ok(v) => {
                    assert_eq!(v, self.want, "{}: after {after:?}", self.name);
                    let t = started.elapsed();
                    eprintln!("{}: recovered from {after:?} in {t:?}", self.name);
                    return t;
                }
                Err(e) => assert_eq!(e.code(), Code::Unavailable, "{}: {e:?}", self.name),
            }
            assert!(
                started.elapsed() < RECOVERY,
                "{}: still failing {RECOVERY:?} after {after:?} cleared",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every fault in turn, each followed by recovery.
    async fn through_every_fault(&mut self, proxy: &FaultProxy) {
        // A slow but working network still gives the right value, within the deadline.
        proxy.set(Fault::Latency(Duration::from_millis(40)));
        let (r, took) = self.read().await;
        assert_eq!(r.unwrap(), self.want, "{}: 40 ms each way", self.name);
        assert!(took < BACKEND_TIMEOUT + SLACK, "{}: {took:?}", self.name);

        for fault in [
            Fault::Latency(Duration::from_secs(3)),
            Fault::Stall,
            Fault::Blackhole,
            Fault::Reset,
        ] {
            proxy.set(fault);
            self.unavailable_within_the_deadline(fault).await;
            proxy.set(Fault::None);
            self.recovers(fault).await;
        }

        // A link too slow for the deadline: the right value or UNAVAILABLE, in time, never
        // anything else.
        proxy.set(Fault::Bandwidth(2_000));
        for _ in 0..3 {
            let (r, took) = self.read().await;
            eprintln!("{}: 2 kB/s: {r:?} in {took:?}", self.name);
            assert!(took < BACKEND_TIMEOUT + SLACK, "{}: {took:?}", self.name);
            match r {
                Ok(v) => assert_eq!(v, self.want, "{}: 2 kB/s", self.name),
                Err(e) => assert_eq!(e.code(), Code::Unavailable, "{}: {e:?}", self.name),
            }
        }
        proxy.set(Fault::None);
        self.recovers(Fault::Bandwidth(2_000)).await;
    }
}

#[tokio::test]
async fn celery_on_redis_through_every_network_fault() {
    let redis = RedisServer::start(&[]).unwrap();
    let proxy = FaultProxy::start(redis.address().parse().unwrap())
        .await
        .unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("LPUSH")
        .arg("q")
        .arg(&["a", "b", "c"])
        .query(&mut conn)
        .unwrap();
    let (_s, c) = start_scaler(config()).await.unwrap();
    let m = md(&[
        ("source", "celery"),
        ("address", &proxy.address()),
        ("queues", "q"),
    ]);
    let mut case = Case::new("celery", c, m, 3.0).await;
    case.through_every_fault(&proxy).await;
}

#[tokio::test]
async fn sqs_through_every_network_fault() {
    let server = SqsServer::start().unwrap();
    let url = server.create_queue("faults").await.unwrap();
    server.send(&url, 4, 0).await.unwrap();
    let moto = server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(moto).await.unwrap();
    let (_s, c) = start_scaler(config()).await.unwrap();
    let endpoint = format!("http://{}", proxy.address());
    let m: HashMap<String, String> = trigger(&server, &url, &[("awsEndpoint", &endpoint)])
        .into_iter()
        .collect();
    let mut case = Case::new("sqs", c, m, 4.0).await;
    case.through_every_fault(&proxy).await;
}

// Multi-threaded: the broker helpers block (librdkafka's sync calls), and the proxy in this
// process must go on forwarding meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_through_every_network_fault() {
    // The broker listens on `listen` and tells clients to use the proxy's port.
    let listen = free_port();
    let proxy = FaultProxy::start(format!("127.0.0.1:{listen}").parse().unwrap())
        .await
        .unwrap();
    let advertised = proxy.port;
    let broker = tokio::task::spawn_blocking(move || {
        KafkaBroker::start_behind(Some((listen, advertised))).unwrap()
    })
    .await
    .unwrap();
    broker.create_topic("faults", 2).await.unwrap();
    broker.produce("faults", 0, 5).unwrap();
    broker.produce("faults", 1, 3).unwrap();
    broker.commit("g", "faults", &[(0, 1), (1, 1)]).unwrap();
    let (_s, c) = start_scaler(config()).await.unwrap();
    let m: HashMap<String, String> = broker
        .trigger("g", Some("faults"), &[("lagThreshold", "10")])
        .into_iter()
        .collect();
    // Lag 4 + 2 (under KEDA's cap of partitions × lagThreshold).
    let mut case = Case::new("kafka", c, m, 6.0).await;
    case.through_every_fault(&proxy).await;
}
