//! Load benchmark: GetMetrics for N triggers over M Celery queues on a real Redis, through real
//! gRPC on loopback, with Headroom's observation cache against a naive one-read-per-call baseline
//! in the same run.
//!
//! `cargo bench -p headroom-integration --bench getmetrics [-- --triggers 1000 --queues 100
//! --seconds 5 --concurrency 64 --ttl 1s]`
//!
//! Reports RPC p50/p99, RPCs per second, backend commands per RPC (Redis `INFO commandstats`)
//! and backend reads per second, and the ratios between the two runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headroom_common::parse_duration;
use headroom_integration::{RedisServer, md, so_ref, start_scaler};
use headroom_proto::externalscaler::GetMetricsRequest;
use headroom_scaler::server::ServeConfig;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
struct Args {
    triggers: usize,
    queues: usize,
    seconds: f64,
    concurrency: usize,
    channels: usize,
    ttl: Duration,
}

fn args() -> Args {
    let mut a = Args {
        triggers: 1000,
        queues: 100,
        seconds: 5.0,
        concurrency: 64,
        channels: 4,
        ttl: Duration::from_secs(1),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--triggers" => a.triggers = value().parse().expect("--triggers N"),
            "--queues" => a.queues = value().parse().expect("--queues N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--channels" => a.channels = value().parse().expect("--channels N"),
            "--ttl" => a.ttl = parse_duration(&value()).expect("--ttl DURATION"),
            "--bench" => {} // cargo bench passes this
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Run {
    name: &'static str,
    rpcs: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    backend_commands: u64,
    backend_reads: u64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.rpcs as f64 / self.elapsed.as_secs_f64()
    }
    fn commands_per_rpc(&self) -> f64 {
        self.backend_commands as f64 / self.rpcs.max(1) as f64
    }
    fn reads_per_second(&self) -> f64 {
        self.backend_reads as f64 / self.elapsed.as_secs_f64()
    }
}

async fn run(name: &'static str, a: &Args, redis: &RedisServer, ttl: Duration) -> Run {
    let config = ServeConfig {
        observation_ttl: ttl,
        ..ServeConfig::local()
    };
    let (server, _) = start_scaler(config).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..a.channels {
        channels.push(
            Channel::from_shared(format!("http://{}", server.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let requests: Arc<Vec<GetMetricsRequest>> = Arc::new(
        (0..a.triggers)
            .map(|i| {
                let queue = format!("queue-{}", i % a.queues);
                let mut r = so_ref(md(&[
                    ("scalerAddress", "headroom:9090"),
                    ("source", "celery"),
                    ("address", &redis.address()),
                    ("queues", &queue),
                    ("activationTasks", &(i % 3).to_string()),
                ]));
                r.name = format!("worker-{i}");
                GetMetricsRequest {
                    scaled_object_ref: Some(r),
                    metric_name: format!("celery-{queue}"),
                }
            })
            .collect(),
    );
    // Warm up: load the script, open connections.
    let mut c = headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient::new(
        channels[0].clone(),
    );
    c.get_metrics(requests[0].clone()).await.unwrap();

    redis.reset_stats();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let channel = channels[w % channels.len()].clone();
        let requests = requests.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c =
                headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient::new(
                    channel,
                );
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0usize;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match c.get_metrics(requests[i % requests.len()].clone()).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 7919; // a prime stride spreads each worker over all triggers
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let run = Run {
        name,
        rpcs: latencies.len(),
        errors,
        elapsed,
        p50: q(0.50),
        p99: q(0.99),
        backend_commands: redis.total_calls(),
        backend_reads: redis.command_calls("evalsha"),
    };
    server.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    run
}

#[tokio::main]
async fn main() {
    let a = args();
    let redis = RedisServer::start(&[]).unwrap();
    let mut conn = redis.connection();
    let mut pipe = redis::pipe();
    for q in 0..a.queues {
        pipe.cmd("RPUSH")
            .arg(format!("queue-{q}"))
            .arg(vec!["task"; q % 17 + 1])
            .ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();

    println!(
        "GetMetrics: {} triggers over {} Celery queues, {} concurrent callers on {} connections, {} s per run",
        a.triggers, a.queues, a.concurrency, a.channels, a.seconds
    );
    let headroom = run("headroom (ttl)", &a, &redis, a.ttl).await;
    let naive = run("naive (read per call)", &a, &redis, Duration::ZERO).await;

    println!();
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>9} {:>13} {:>12} {:>7}",
        "run", "RPC/s", "p50 ms", "p99 ms", "RPCs", "backend cmd/RPC", "reads/s", "errors"
    );
    for r in [&headroom, &naive] {
        println!(
            "{:<24} {:>10.0} {:>9.3} {:>9.3} {:>9} {:>15.4} {:>12.1} {:>7}",
            r.name,
            r.rps(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.rpcs,
            r.commands_per_rpc(),
            r.reads_per_second(),
            r.errors
        );
    }
    println!();
    println!(
        "ratios headroom/naive: RPC/s {:.2}x, p99 {:.2}x, backend commands per RPC {:.4}x",
        headroom.rps() / naive.rps(),
        headroom.p99.as_secs_f64() / naive.p99.as_secs_f64(),
        headroom.commands_per_rpc() / naive.commands_per_rpc()
    );
    println!(
        "bound: backend reads/s {:.1} against queues/TTL = {:.1}",
        headroom.reads_per_second(),
        a.queues as f64 / a.ttl.as_secs_f64().max(1e-9)
    );
}
