//! Push latency: from the start of a warm Celery `apply_async` on an empty queue to the `true`
//! message on an open `StreamIsActive` stream, repeated, with keyspace notifications and with
//! the fast-poll fallback, in one run.
//!
//! `cargo bench -p headroom-integration --bench push [-- --runs 20]`
//!
//! The baseline is KEDA's own polling: a `type: external` trigger notices new work after half
//! its polling interval on average (15 s with the default 30 s), which the report prints beside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use headroom_integration::{RedisServer, time_to_push};

fn runs() -> usize {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    let mut runs = 20;
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    runs
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let runs = runs();
    let keda_mean = Duration::from_secs(15);
    println!("push latency, apply_async start -> `true` on the stream, {runs} runs each");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>14}",
        "mode", "p50", "p95", "max", "p50 vs KEDA"
    );
    for (name, args) in [
        (
            "keyspace notifications",
            &["--notify-keyspace-events", "Kl"][..],
        ),
        ("fast poll (50 ms)", &[][..]),
    ] {
        let redis = RedisServer::start(args).unwrap();
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(time_to_push(&redis).await);
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut redis.connection())
                .unwrap();
        }
        samples.sort();
        let p50 = percentile(&samples, 0.5);
        println!(
            "{:<24} {:>9.1?} {:>9.1?} {:>9.1?} {:>13.5}x",
            name,
            p50,
            percentile(&samples, 0.95),
            samples[samples.len() - 1],
            p50.as_secs_f64() / keda_mean.as_secs_f64()
        );
    }
    println!("(KEDA polling every 30 s: 15 s on average, 30 s at worst)");
}
