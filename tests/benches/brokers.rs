//! Load benchmark for the SQS and Kafka sources: GetMetrics for 1 000 triggers, half over 50 SQS
//! queues (moto) and half over 50 Kafka consumer groups (Apache Kafka), through real gRPC on
//! loopback, with Headroom's observation cache against a naive one-read-per-call baseline in
//! the same run.
//!
//! `cargo bench -p headroom-integration --bench brokers [-- --triggers 1000 --queues 50
//! --groups 50 --seconds 5 --concurrency 64 --rate 200 --ttl 1s]`
//!
//! Two loads per run: closed loop (`--concurrency` callers back to back: the most either
//! answers) and open loop at `--rate` RPC/s (requests started on a clock whether or not earlier
//! ones finished). 200 RPC/s is what KEDA sends for 1 000 triggers (GetMetricSpec, GetMetrics and
//! IsActive per trigger every 15 s HPA sync), so the open-loop p99 is the latency KEDA sees.
//!
//! Backend calls are counted on the wire by proxies in front of both servers: HTTP requests to
//! moto, Kafka protocol requests to the broker (the broker advertises the proxy, so every
//! connection of the scaler's librdkafka handles goes through it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headroom_common::parse_duration;
use headroom_integration::kafka::KafkaBroker;
use headroom_integration::sqs::SqsServer;
use headroom_integration::{CountingProxy, Framing, free_port, so_ref, start_scaler};
use headroom_proto::externalscaler::GetMetricsRequest;
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use headroom_scaler::server::ServeConfig;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
struct Args {
    triggers: usize,
    queues: usize,
    groups: usize,
    seconds: f64,
    concurrency: usize,
    rate: f64,
    ttl: Duration,
}

fn args() -> Args {
    let mut a = Args {
        triggers: 1000,
        queues: 50,
        groups: 50,
        seconds: 5.0,
        concurrency: 64,
        rate: 200.0,
        ttl: Duration::from_secs(1),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--triggers" => a.triggers = value().parse().expect("--triggers N"),
            "--queues" => a.queues = value().parse().expect("--queues N"),
            "--groups" => a.groups = value().parse().expect("--groups N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--rate" => a.rate = value().parse().expect("--rate RPC_PER_SECOND"),
            "--ttl" => a.ttl = parse_duration(&value()).expect("--ttl DURATION"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[derive(Default)]
struct Side {
    rpcs: usize,
    errors: usize,
    latencies: Vec<Duration>,
    backend_calls: u64,
}

impl Side {
    fn q(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1e3
    }
    fn calls_per_rpc(&self) -> f64 {
        self.backend_calls as f64 / self.rpcs.max(1) as f64
    }
}

struct Run {
    name: &'static str,
    elapsed: Duration,
    sqs: Side,
    kafka: Side,
    all: Side,
    /// The open-loop load at `--rate`.
    paced: Side,
    paced_sqs: Side,
    paced_kafka: Side,
}

struct Bed {
    sqs_proxy: CountingProxy,
    kafka_proxy: CountingProxy,
    requests: Arc<Vec<(bool, GetMetricsRequest)>>,
}

async fn run(name: &'static str, a: &Args, bed: &Bed, ttl: Duration) -> Run {
    let config = ServeConfig {
        observation_ttl: ttl,
        ..ServeConfig::local()
    };
    let (server, _) = start_scaler(config).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Channel::from_shared(format!("http://{}", server.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    // Warm up: one call per trigger makes every client, handle and connection.
    let mut c = ExternalScalerClient::new(channels[0].clone());
    for (_, r) in bed.requests.iter() {
        c.get_metrics(r.clone()).await.unwrap();
    }
    tokio::time::sleep(a.ttl).await;

    let (sqs0, kafka0) = (bed.sqs_proxy.requests(), bed.kafka_proxy.requests());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut c = ExternalScalerClient::new(channels[w % channels.len()].clone());
        let requests = bed.requests.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sqs, mut kafka) = (Side::default(), Side::default());
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (is_sqs, r) = &requests[i % requests.len()];
                let side = if *is_sqs { &mut sqs } else { &mut kafka };
                let t = Instant::now();
                let mut req = tonic::Request::new(r.clone());
                req.set_timeout(Duration::from_secs(3));
                match c.get_metrics(req).await {
                    Ok(_) => {
                        side.latencies.push(t.elapsed());
                        side.rpcs += 1;
                    }
                    Err(_) => side.errors += 1,
                }
                i += 7919;
            }
            (sqs, kafka)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sqs, mut kafka, mut all) = (Side::default(), Side::default(), Side::default());
    for t in tasks {
        let (s, k) = t.await.unwrap();
        for (into, from) in [(&mut sqs, s), (&mut kafka, k)] {
            into.rpcs += from.rpcs;
            into.errors += from.errors;
            all.latencies.extend(from.latencies.iter().copied());
            into.latencies.extend(from.latencies);
        }
    }
    let elapsed = started.elapsed();
    let (sqs1, kafka1) = (bed.sqs_proxy.requests(), bed.kafka_proxy.requests());
    sqs.backend_calls = sqs1 - sqs0;
    kafka.backend_calls = kafka1 - kafka0;
    all.rpcs = sqs.rpcs + kafka.rpcs;
    all.errors = sqs.errors + kafka.errors;
    all.backend_calls = sqs.backend_calls + kafka.backend_calls;
    for s in [&mut sqs, &mut kafka, &mut all] {
        s.latencies.sort_unstable();
    }

    // Open loop: one request every 1/rate s, each on its own task.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sqs0, kafka0) = (bed.sqs_proxy.requests(), bed.kafka_proxy.requests());
    let total = (a.rate * a.seconds) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let mut c = ExternalScalerClient::new(channels[i % channels.len()].clone());
        let (is_sqs, r) = bed.requests[(i * 7919) % bed.requests.len()].clone();
        set.spawn(async move {
            let t = Instant::now();
            let mut req = tonic::Request::new(r);
            req.set_timeout(Duration::from_secs(3));
            (is_sqs, c.get_metrics(req).await.is_ok(), t.elapsed())
        });
    }
    let (mut paced, mut paced_sqs, mut paced_kafka) =
        (Side::default(), Side::default(), Side::default());
    while let Some(Ok((is_sqs, ok, took))) = set.join_next().await {
        let side = if is_sqs {
            &mut paced_sqs
        } else {
            &mut paced_kafka
        };
        for s in [side, &mut paced] {
            if ok {
                s.rpcs += 1;
                s.latencies.push(took);
            } else {
                s.errors += 1;
            }
        }
    }
    paced_sqs.backend_calls = bed.sqs_proxy.requests() - sqs0;
    paced_kafka.backend_calls = bed.kafka_proxy.requests() - kafka0;
    paced.backend_calls = paced_sqs.backend_calls + paced_kafka.backend_calls;
    for s in [&mut paced, &mut paced_sqs, &mut paced_kafka] {
        s.latencies.sort_unstable();
    }

    server.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    Run {
        name,
        elapsed,
        sqs,
        kafka,
        all,
        paced,
        paced_sqs,
        paced_kafka,
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "setting up {} SQS queues and {} Kafka groups...",
        a.queues, a.groups
    );

    // moto behind a counting proxy: the triggers' awsEndpoint is the proxy.
    let sqs = SqsServer::start().unwrap();
    let sqs_proxy = CountingProxy::start(
        0,
        format!("127.0.0.1:{}", sqs.port).parse().unwrap(),
        Framing::Http,
    )
    .await
    .unwrap();
    let mut queue_urls = Vec::new();
    for q in 0..a.queues {
        let url = sqs.create_queue(&format!("bench-{q}")).await.unwrap();
        sqs.send(&url, (q % 5) as u32 + 1, 0).await.unwrap();
        queue_urls.push(url);
    }

    // Kafka advertising the proxy's port: every connection of the scaler goes through it.
    let listen = free_port();
    let kafka_proxy = CountingProxy::start(
        0,
        format!("127.0.0.1:{listen}").parse().unwrap(),
        Framing::Kafka,
    )
    .await
    .unwrap();
    let kafka_port = kafka_proxy.port;
    let broker = tokio::task::spawn_blocking(move || {
        KafkaBroker::start_behind(Some((listen, kafka_port))).unwrap()
    })
    .await
    .unwrap();
    for g in 0..a.groups {
        let topic = format!("bench-{g}");
        broker.create_topic(&topic, 2).await.unwrap();
        broker.produce(&topic, 0, g % 7 + 3).unwrap();
        broker.produce(&topic, 1, 2).unwrap();
        broker
            .commit(&format!("group-{g}"), &topic, &[(0, 1), (1, 2)])
            .unwrap();
    }

    let sqs_endpoint = format!("http://127.0.0.1:{}", sqs_proxy.port);
    let requests: Vec<(bool, GetMetricsRequest)> = (0..a.triggers)
        .map(|i| {
            let is_sqs = i % 2 == 0;
            let n = i / 2;
            let mut pairs: Vec<(String, String)> = vec![("scalerAddress".into(), "h:9090".into())];
            let metric;
            if is_sqs {
                let q = n % a.queues;
                metric = format!("aws-sqs-bench-{q}");
                pairs.extend(
                    [
                        ("source", "aws-sqs-queue"),
                        ("queueURL", queue_urls[q].as_str()),
                        ("awsRegion", "us-east-1"),
                        ("awsEndpoint", sqs_endpoint.as_str()),
                        ("awsAccessKeyID", "testing"),
                        ("awsSecretAccessKeyFromEnv", "testing"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string())),
                );
                pairs.push(("queueLength".into(), (1 + n % 4).to_string()));
            } else {
                let g = n % a.groups;
                metric = format!("kafka-bench-{g}");
                pairs.extend(
                    [
                        ("source", "kafka".to_string()),
                        ("bootstrapServers", broker.bootstrap()),
                        ("consumerGroup", format!("group-{g}")),
                        ("topic", format!("bench-{g}")),
                        ("lagThreshold", (1 + n % 4).to_string()),
                    ]
                    .map(|(k, v)| (k.to_string(), v)),
                );
            }
            let mut r = so_ref(pairs.into_iter().collect());
            r.name = format!("worker-{i}");
            (
                is_sqs,
                GetMetricsRequest {
                    scaled_object_ref: Some(r),
                    metric_name: metric,
                },
            )
        })
        .collect();
    let bed = Bed {
        sqs_proxy,
        kafka_proxy,
        requests: Arc::new(requests),
    };

    println!(
        "GetMetrics: {} triggers ({} on {} SQS queues, {} on {} Kafka groups), {} concurrent callers, {} s per run",
        a.triggers,
        a.triggers.div_ceil(2),
        a.queues,
        a.triggers / 2,
        a.groups,
        a.concurrency,
        a.seconds
    );
    let headroom = run("headroom (ttl)", &a, &bed, a.ttl).await;
    let naive = run("naive (read per call)", &a, &bed, Duration::ZERO).await;

    println!();
    println!("closed loop, {} callers back to back:", a.concurrency);
    println!(
        "{:<22} {:<6} {:>9} {:>8} {:>8} {:>9} {:>15} {:>7}",
        "run", "source", "RPC/s", "p50 ms", "p99 ms", "RPCs", "backend calls/RPC", "errors"
    );
    for r in [&headroom, &naive] {
        for (label, s) in [("sqs", &r.sqs), ("kafka", &r.kafka), ("all", &r.all)] {
            println!(
                "{:<22} {:<6} {:>9.0} {:>8.2} {:>8.2} {:>9} {:>17.4} {:>7}",
                r.name,
                label,
                s.rpcs as f64 / r.elapsed.as_secs_f64(),
                s.q(0.5),
                s.q(0.99),
                s.rpcs,
                s.calls_per_rpc(),
                s.errors
            );
        }
    }
    println!();
    println!("open loop at {} RPC/s for {} s:", a.rate, a.seconds);
    println!(
        "{:<22} {:<6} {:>8} {:>8} {:>9} {:>17} {:>7}",
        "run", "source", "p50 ms", "p99 ms", "RPCs", "backend calls/RPC", "errors"
    );
    for r in [&headroom, &naive] {
        for (label, s) in [
            ("sqs", &r.paced_sqs),
            ("kafka", &r.paced_kafka),
            ("all", &r.paced),
        ] {
            println!(
                "{:<22} {:<6} {:>8.2} {:>8.2} {:>9} {:>17.4} {:>7}",
                r.name,
                label,
                s.q(0.5),
                s.q(0.99),
                s.rpcs,
                s.calls_per_rpc(),
                s.errors
            );
        }
    }
    println!(
        "open-loop ratios headroom/naive: p99 {:.2}x (sqs {:.2}x, kafka {:.2}x), backend calls per RPC {:.4}x",
        headroom.paced.q(0.99) / naive.paced.q(0.99),
        headroom.paced_sqs.q(0.99) / naive.paced_sqs.q(0.99),
        headroom.paced_kafka.q(0.99) / naive.paced_kafka.q(0.99),
        headroom.paced.calls_per_rpc() / naive.paced.calls_per_rpc()
    );
    println!(
        "closed-loop ratios headroom/naive: RPC/s {:.2}x, p99 {:.2}x (sqs {:.2}x, kafka {:.2}x), backend calls per RPC {:.4}x",
        (headroom.all.rpcs as f64 / headroom.elapsed.as_secs_f64())
            / (naive.all.rpcs as f64 / naive.elapsed.as_secs_f64()),
        headroom.all.q(0.99) / naive.all.q(0.99),
        headroom.sqs.q(0.99) / naive.sqs.q(0.99),
        headroom.kafka.q(0.99) / naive.kafka.q(0.99),
        headroom.all.calls_per_rpc() / naive.all.calls_per_rpc()
    );
    println!(
        "backend calls/s with the cache: sqs {:.1} (bound {} queues / TTL), kafka {:.1} (bound {} groups x requests per read / TTL)",
        headroom.sqs.backend_calls as f64 / headroom.elapsed.as_secs_f64(),
        a.queues,
        headroom.kafka.backend_calls as f64 / headroom.elapsed.as_secs_f64(),
        a.groups
    );
}
