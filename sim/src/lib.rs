//! headroom-sim: a trace-driven simulator that runs the scaler's planned-mode code (policy,
//! schedule, estimator, forecast — the `headroom-scaler` crate itself, no copies) on a virtual
//! clock against a model of KEDA, the HPA, pods and GPU nodes, side by side with the policies
//! teams use today and an oracle.
//!
//! - [`trace`]: the CSV formats and the replayed series;
//! - [`workload`]: a trace as jobs: Poisson arrivals within bins, service-time spread;
//! - [`generate`]: the shipped synthetic traces, from a seed;
//! - [`scenarios`]: shipped and real traces with their workload shapes and declarations;
//! - [`cluster`]: KEDA, the HPA, pods, nodes, consolidation, prices;
//! - [`engine`]: the queue, the policies, one run;
//! - [`prewarm`]: the provisioner's real `plan()` driving nodes ahead of demand;
//! - [`report`]: table, CSV, JSON, SVG, the targets.

pub mod cluster;
pub mod engine;
pub mod generate;
pub mod prewarm;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod trace;
pub mod workload;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::ClusterConfig;
use crate::engine::{PolicyKind, RunResult, Scenario};

/// Runs every (scenario, policy) pair on up to `threads` threads, calling `progress(done,
/// total, label)` after each. Results come back in (scenario, policy) order.
pub fn run_all(
    scenarios: &[Scenario],
    policies: &[PolicyKind],
    cluster: &ClusterConfig,
    threads: usize,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Vec<RunResult> {
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for s in 0..scenarios.len() {
        for p in 0..policies.len() {
            jobs.push((s, p));
        }
    }
    // Longest traces first, so the two threads finish together.
    jobs.sort_by(|a, b| {
        scenarios[b.0]
            .trace
            .duration()
            .total_cmp(&scenarios[a.0].trace.duration())
    });
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, usize, RunResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(s, p)) = jobs.get(i) else { break };
                    let r = engine::run(&scenarios[s], policies[p], cluster);
                    let label = format!("{} / {}", scenarios[s].name, policies[p].name());
                    if let Ok(mut v) = results.lock() {
                        v.push((s, p, r));
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(d, jobs.len(), &label);
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by_key(|(s, p, _)| (*s, *p));
    v.into_iter().map(|(_, _, r)| r).collect()
}
