//! headroom-sim: a trace-driven simulator that runs the scaler's planned-mode code (policy,
//! schedule, estimator, forecast) and the provisioner's `plan()` — the `headroom-policy` crate
//! both programs run, no copies, and none of their I/O dependencies — on a virtual
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
//! - [`oracle`]: perfect foresight, a cost–p95 frontier no policy should beat;
//! - [`forecast_eval`]: the forecaster against persistence and seasonal-naive, as planned
//!   mode uses it (the maximum over the lead window);
//! - [`tune`]: the tuning split, keda-tuned's grid, the warm pool's rule;
//! - [`report`]: table, CSV, JSON, SVG, the targets.

pub mod cluster;
pub mod engine;
pub mod forecast_eval;
pub mod generate;
pub mod oracle;
pub mod prewarm;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod trace;
pub mod tune;
pub mod workload;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::ClusterConfig;
use crate::engine::{PolicyKind, RunResult, Scenario};
use crate::tune::GridPoint;

/// Runs `f` over `jobs` on up to `threads` threads, calling `progress(done, total, label)`
/// after each; results come back in job order.
pub fn parallel<J: Sync, R: Send>(
    jobs: &[J],
    threads: usize,
    f: &(dyn Fn(&J) -> (R, String) + Sync),
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let (r, label) = f(job);
                    if let Ok(mut v) = results.lock() {
                        v.push((i, r));
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(d, jobs.len(), &label);
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

/// Tunes keda-tuned on each scenario's tuning part (the [`tune::grid`], on the cluster's seed)
/// and stores the choice in the scenario. Returns each scenario's grid scores. Scenarios
/// without a tuning part keep their settings.
pub fn tune_all(
    scenarios: &mut [Scenario],
    cluster: &ClusterConfig,
    threads: usize,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Vec<Vec<GridPoint>> {
    let grid = tune::grid();
    let parts: Vec<Option<Scenario>> = scenarios
        .iter()
        .map(|sc| (tune::split_second(sc) > 0).then(|| tune::tuning_part(sc)))
        .collect();
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for (s, part) in parts.iter().enumerate() {
        if part.is_some() {
            jobs.extend((0..grid.len()).map(|g| (s, g)));
        }
    }
    let run = |&(s, g): &(usize, usize)| {
        let Some(part) = &parts[s] else {
            return (None, String::new());
        };
        let mut sc = part.clone();
        sc.keda_tuning = grid[g];
        let r = engine::run(&sc, PolicyKind::KedaTuned, cluster);
        let point = GridPoint {
            tuning: grid[g],
            wait_p95_s: r.waits.quantile(0.95),
            gpu_node_hours: r.gpu_node_hours,
        };
        (
            Some((s, point)),
            format!("tuning {} {:?}", sc.name, grid[g]),
        )
    };
    let points = parallel(&jobs, threads, &run, progress);
    let mut out = vec![Vec::new(); scenarios.len()];
    for (s, p) in points.into_iter().flatten() {
        out[s].push(p);
    }
    for (sc, pts) in scenarios.iter_mut().zip(&out) {
        if !pts.is_empty() {
            sc.keda_tuning = tune::choose(pts);
        }
    }
    out
}

/// Every run of an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// One per (scenario, policy, seed), in that order.
    pub results: Vec<RunResult>,
    /// The oracle's frontier: every [`oracle::plans`] plan per (scenario, seed), when the
    /// oracle was asked for.
    pub frontier: Vec<RunResult>,
}

/// The `oracle` row's choice among its frontier (one seed's): the cheapest of the plans with
/// the lowest p95, so that a policy matching its p95 must also beat its cost.
pub fn oracle_row(frontier: &[RunResult]) -> Option<RunResult> {
    let best = frontier
        .iter()
        .map(|r| r.waits.quantile(0.95))
        .min_by(f64::total_cmp)?;
    frontier
        .iter()
        .filter(|r| r.waits.quantile(0.95) <= best + 1e-9)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .cloned()
}

/// Runs every (scenario, seed, policy) on up to `threads` threads, calling `progress(done,
/// total, label)` after each. Seed `k` of `seeds` is `cluster.seed + k` (arrivals and node
/// times; every policy of a seed sees the same). The oracle runs its whole frontier and its
/// row is [`oracle_row`].
pub fn run_all(
    scenarios: &[Scenario],
    policies: &[PolicyKind],
    cluster: &ClusterConfig,
    seeds: u32,
    threads: usize,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Runs {
    let mut jobs: Vec<(usize, usize, u32)> = Vec::new();
    for s in 0..scenarios.len() {
        for p in 0..policies.len() {
            for k in 0..seeds.max(1) {
                jobs.push((s, p, k));
            }
        }
    }
    // Longest traces first, so the threads finish together.
    jobs.sort_by(|a, b| {
        scenarios[b.0]
            .trace
            .duration()
            .total_cmp(&scenarios[a.0].trace.duration())
    });
    let run = |&(s, p, k): &(usize, usize, u32)| {
        let cfg = ClusterConfig {
            seed: cluster.seed.wrapping_add(u64::from(k)),
            ..cluster.clone()
        };
        let label = format!("{} / {} / seed {k}", scenarios[s].name, policies[p].name());
        if policies[p] == PolicyKind::Oracle {
            let f = oracle::Foresight::new(&scenarios[s], &cfg);
            let frontier: Vec<RunResult> =
                oracle::plans().into_iter().map(|pl| f.run(pl)).collect();
            let row = oracle_row(&frontier);
            return ((s, p, k, row, frontier), label);
        }
        let r = engine::run(&scenarios[s], policies[p], &cfg);
        ((s, p, k, Some(r), Vec::new()), label)
    };
    let mut v = parallel(&jobs, threads, &run, progress);
    v.sort_by_key(|(s, p, k, _, _)| (*s, *p, *k));
    let mut out = Runs::default();
    for (_, _, _, r, f) in v {
        out.results.extend(r);
        out.frontier.extend(f);
    }
    out
}
