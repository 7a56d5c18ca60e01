//! Soak: the real `headroom-scaler` process under KEDA's call pattern for many triggers over a
//! long run, with its resident memory, open files and threads sampled from `/proc`; they must
//! stay flat once warm. Real Redis with real Celery queues; gRPC on loopback.
//!
//! `cargo bench --profile dev -p headroom-integration --bench soak [-- --triggers 1000
//! --queues 100 --push 100 --minutes 15 --sample 10s --scaler target/release/headroom-scaler]`
//!
//! KEDA's rate (`reference/keda-external-scaler.md`): per trigger, every polling interval (30 s)
//! the operator's GetMetricSpec, GetMetrics, IsActive, and every HPA sync (15 s) the metrics
//! server's same three; `--push` of the triggers also hold a StreamIsActive stream open. Calls
//! are spread evenly over each interval. Every trigger is distinct (its queue and its
//! `tasksPerReplica`), so per-trigger state is exercised, not one cache entry.
//!
//! Prints one line per sample and a verdict: after a warm-up (the first fifth of the run, at
//! least one minute), the range of RSS must stay within max(10 %, 16 MiB) of its warm value,
//! open files within 16 and threads within 4, and no call may fail; exits 1 otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headroom_common::parse_duration;
use headroom_integration::{RedisServer, free_port, md, poll, so_ref, workspace_bin};
use headroom_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
struct Args {
    triggers: usize,
    queues: usize,
    push: usize,
    minutes: f64,
    sample: Duration,
    scaler: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        triggers: 1000,
        queues: 100,
        push: 100,
        minutes: 15.0,
        sample: Duration::from_secs(10),
        scaler: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--triggers" => a.triggers = value().parse().expect("--triggers N"),
            "--queues" => a.queues = value().parse().expect("--queues N"),
            "--push" => a.push = value().parse().expect("--push N"),
            "--minutes" => a.minutes = value().parse().expect("--minutes M"),
            "--sample" => a.sample = parse_duration(&value()).expect("--sample DURATION"),
            "--scaler" => a.scaler = Some(PathBuf::from(value())),
            "--bench" => {} // cargo bench passes this
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        a.queues > 0 && a.triggers > 0,
        "--triggers and --queues must be > 0"
    );
    a.push = a.push.min(a.triggers);
    a
}

/// One reading of the process from /proc.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    threads: u64,
    fds: u64,
    calls: u64,
    errors: u64,
}

fn read_proc(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (field("VmRSS:"), field("Threads:"), fds)
}

fn trigger(i: usize, a: &Args, redis: &RedisServer) -> HashMap<String, String> {
    md(&[
        ("scalerAddress", "headroom:9090"),
        ("source", "celery"),
        ("address", &redis.address()),
        ("queues", &format!("queue-{}", i % a.queues)),
        ("tasksPerReplica", &(1 + i / a.queues).to_string()),
    ])
}

#[tokio::main]
async fn main() {
    let a = args();
    let redis = RedisServer::start(&[]).unwrap();
    {
        let mut conn = redis.connection();
        for q in 0..a.queues {
            let _: () = redis::cmd("LPUSH")
                .arg(format!("queue-{q}"))
                .arg(vec!["task"; q % 7 + 1])
                .query(&mut conn)
                .unwrap();
        }
    }
    let bin = a
        .scaler
        .clone()
        .unwrap_or_else(|| workspace_bin("headroom-scaler"));
    let grpc = free_port();
    let metrics = free_port();
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
        ])
        .env("HEADROOM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let pid = child.id();
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let channel = {
        let started = Instant::now();
        loop {
            match Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the scaler never listened on {endpoint}: {e}"),
            }
        }
    };
    eprintln!(
        "soak: {} (pid {pid}), {} triggers over {} Celery queues, {} push streams, {} min, \
         KEDA's rate: {:.0} RPC/s",
        bin.display(),
        a.triggers,
        a.queues,
        a.push,
        a.minutes,
        a.triggers as f64 * 9.0 / 30.0
    );

    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let run = Duration::from_secs_f64(a.minutes * 60.0);
    let started = Instant::now();
    let triggers: Arc<Vec<HashMap<String, String>>> =
        Arc::new((0..a.triggers).map(|i| trigger(i, &a, &redis)).collect());

    // Push streams, held open for the whole run (KEDA reopens one that ends; so do we).
    for i in 0..a.push {
        let mut c = ExternalScalerClient::new(channel.clone());
        let r = so_ref(triggers[i].clone());
        let errors = errors.clone();
        tokio::spawn(async move {
            while started.elapsed() < run {
                match c.stream_is_active(r.clone()).await {
                    Ok(s) => {
                        let mut s = s.into_inner();
                        while let Some(m) = s.next().await {
                            if m.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    // The pollers: one poll (spec, metrics, active) per trigger every 10 s on average (the
    // operator's every 30 s plus the HPA's every 15 s), spread evenly.
    let interval = Duration::from_secs(10);
    let tick = interval / a.triggers as u32;
    let poller = {
        let channel = channel.clone();
        let triggers = triggers.clone();
        let calls = calls.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick.max(Duration::from_micros(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            let mut i = 0usize;
            while started.elapsed() < run {
                ticker.tick().await;
                let permit = limit.clone().acquire_owned().await.unwrap();
                let mut c = ExternalScalerClient::new(channel.clone());
                let m = triggers[i % triggers.len()].clone();
                let calls = calls.clone();
                let errors = errors.clone();
                tokio::spawn(async move {
                    if poll(&mut c, &m).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(3, Ordering::Relaxed);
                    drop(permit);
                });
                i += 1;
            }
        })
    };

    let mut samples = Vec::new();
    println!(
        "{:>8} {:>10} {:>8} {:>6} {:>10} {:>7}",
        "t s", "RSS MiB", "threads", "fds", "RPCs", "errors"
    );
    while started.elapsed() < run {
        tokio::time::sleep(a.sample.min(run.saturating_sub(started.elapsed()))).await;
        let (rss_kib, threads, fds) = read_proc(pid);
        let s = Sample {
            at: started.elapsed(),
            rss_kib,
            threads,
            fds,
            calls: calls.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
        };
        println!(
            "{:>8.0} {:>10.1} {:>8} {:>6} {:>10} {:>7}",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.threads,
            s.fds,
            s.calls,
            s.errors
        );
        samples.push(s);
    }
    let _ = poller.await;
    let _ = child.kill();
    let _ = child.wait();

    let warm_up = (run / 5).max(Duration::from_secs(60));
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    let Some(first) = warm.first() else {
        eprintln!("soak: the run is shorter than its warm-up ({warm_up:?}): no verdict");
        return;
    };
    let range = |f: fn(&Sample) -> u64| {
        let lo = warm.iter().map(|s| f(s)).min().unwrap_or(0);
        let hi = warm.iter().map(|s| f(s)).max().unwrap_or(0);
        (lo, hi)
    };
    let (rss_lo, rss_hi) = range(|s| s.rss_kib);
    let (thr_lo, thr_hi) = range(|s| s.threads);
    let (fd_lo, fd_hi) = range(|s| s.fds);
    let last = samples.last().copied().unwrap_or(**first);
    let rss_allowed = (first.rss_kib / 10).max(16 * 1024);
    let rps = last.calls as f64 / last.at.as_secs_f64();
    println!(
        "\nafter warm-up ({:.0} s): RSS {:.1}–{:.1} MiB (allowed range {:.1}), threads {thr_lo}–{thr_hi}, \
         open files {fd_lo}–{fd_hi}; {} RPCs at {rps:.0}/s, {} failed",
        warm_up.as_secs_f64(),
        rss_lo as f64 / 1024.0,
        rss_hi as f64 / 1024.0,
        rss_allowed as f64 / 1024.0,
        last.calls,
        last.errors
    );
    let flat = rss_hi - rss_lo <= rss_allowed && thr_hi - thr_lo <= 4 && fd_hi - fd_lo <= 16;
    if flat && last.errors == 0 {
        println!("soak: FLAT");
    } else {
        println!("soak: NOT FLAT or calls failed");
        std::process::exit(1);
    }
}
