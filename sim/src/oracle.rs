//! The oracle: perfect foresight of every arrival and every service time, as a yardstick no
//! policy should beat.
//!
//! From the realisation every policy of the seed sees, it computes the jobs in service at each
//! second if each job started the moment it arrived (`busy`). A plan asks for
//! `ceil(mean busy over the last W seconds / (concurrency × utilisation))` pods (W = 0: every
//! job starts on arrival; larger W: peaks queue and drain within about W, for fewer GPUs). Each
//! GPU node of that curve is launched exactly its own boot + pull + pod start before it is
//! first needed, pre-pulled (so it serves the moment it is needed), and between two needs it
//! is kept or removed and relaunched, whichever is cheaper in hindsight (keep if the gap is
//! shorter than the relaunch's lead). Nodes launched before the trace starts cost nothing
//! before it, as for every policy; only the held-out part is scored, with the same accounting
//! as the cluster model. The plans over [`WINDOWS`] × [`UTILISATIONS`] form a cost–p95
//! frontier; its lower-left envelope is what a policy is measured against.

use crate::cluster::ClusterConfig;
use crate::engine::{PolicyKind, RunResult, Scenario, Workload};
use crate::rng::Rng;
use crate::tune;
use crate::workload::arrivals_per_second;

/// Smoothing windows of the frontier, seconds: from every job served on arrival to half an
/// hour of queueing allowed. Spaced so the frontier has a point at each order of p95 the
/// policies reach (0, seconds, a minute, minutes).
pub const WINDOWS: [f64; 8] = [0.0, 2.0, 5.0, 15.0, 60.0, 180.0, 600.0, 1800.0];

/// Utilisations of the frontier: 100 % (the bound) and 85 % (what a careful operator targets).
pub const UTILISATIONS: [f64; 2] = [1.0, 0.85];

/// One oracle plan.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Plan {
    pub utilisation: f64,
    pub window_seconds: f64,
}

impl Plan {
    /// The `oracle` row: every job served on arrival, at 100 % utilisation.
    pub const EXACT: Plan = Plan {
        utilisation: 1.0,
        window_seconds: 0.0,
    };
}

/// Every frontier plan.
pub fn plans() -> Vec<Plan> {
    let mut out = Vec::new();
    for u in UTILISATIONS {
        for w in WINDOWS {
            out.push(Plan {
                utilisation: u,
                window_seconds: w,
            });
        }
    }
    out
}

/// One realisation, known in advance.
pub struct Foresight<'a> {
    sc: &'a Scenario,
    cl: &'a ClusterConfig,
    arrivals: Vec<f64>,
    service: Vec<f64>,
    /// Prefix sums of `busy` (jobs in service at each second with no waiting), length n + 1.
    busy_prefix: Vec<f64>,
    max_service: f64,
}

impl<'a> Foresight<'a> {
    pub fn new(sc: &'a Scenario, cl: &'a ClusterConfig) -> Self {
        let tr = &sc.trace;
        let n = tr.duration().round().max(0.0) as usize;
        let arrivals = arrivals_per_second(tr, cl.arrivals, cl.seed);
        let service: Vec<f64> = (0..n)
            .map(|s| {
                tr.service_at(tr.start + s as f64)
                    .unwrap_or(sc.service_seconds)
            })
            .collect();
        let spread = cl.service_spread.multipliers();
        // The same whole-second completions as the queue's.
        let mut diff = vec![0.0; n + 1];
        for s in 0..n {
            let a = arrivals.get(s).copied().unwrap_or(0.0);
            if a <= 0.0 {
                continue;
            }
            let per = a / spread.len() as f64;
            diff[s] += a;
            for m in &spread {
                let d = (service[s] * m).round().max(1.0) as usize;
                if s + d <= n {
                    diff[s + d] -= per;
                }
            }
        }
        let mut busy = 0.0;
        let mut busy_prefix = Vec::with_capacity(n + 1);
        busy_prefix.push(0.0);
        for d in diff.iter().take(n) {
            busy += d;
            let b: f64 = busy;
            let last = busy_prefix.last().copied().unwrap_or(0.0);
            busy_prefix.push(last + b.max(0.0));
        }
        let max_service = service.iter().copied().fold(sc.service_seconds, f64::max);
        Self {
            sc,
            cl,
            arrivals,
            service,
            busy_prefix,
            max_service,
        }
    }

    /// Pods the plan has Ready at each second.
    fn pods(&self, plan: Plan) -> Vec<u32> {
        let n = self.busy_prefix.len() - 1;
        let w = plan.window_seconds.max(0.0) as usize;
        let per_pod = f64::from(self.sc.concurrency) * plan.utilisation;
        (0..n)
            .map(|t| {
                let from = t.saturating_sub(w);
                let mean =
                    (self.busy_prefix[t + 1] - self.busy_prefix[from]) / (t + 1 - from) as f64;
                ((mean / per_pod - 1e-6).ceil().max(0.0) as u32).min(self.sc.max_replicas)
            })
            .collect()
    }

    /// Runs one plan: waits from the queue model, cost from the node lives.
    pub fn run(&self, plan: Plan) -> RunResult {
        let (sc, cl) = (self.sc, self.cl);
        let g = cl.gpus_per_node.max(1);
        let n = self.busy_prefix.len() - 1;
        let pods = self.pods(plan);
        let score_from = tune::split_second(sc);
        // Node lives, level by level: level i is up while the curve needs more than i nodes.
        let mut rng = Rng::new(cl.seed ^ 0x0DAC_1E5E);
        let mut count_diff = vec![0.0f64; n + 1];
        let mut price_diff = vec![0.0f64; n + 1];
        let mut close = |start: f64, end: usize, spot: bool| {
            let from = start.ceil().max(0.0) as usize;
            if from < end {
                let price = if spot {
                    cl.spot_price
                } else {
                    cl.on_demand_price
                } / 3600.0;
                count_diff[from] += 1.0;
                count_diff[end] -= 1.0;
                price_diff[from] += price;
                price_diff[end] -= price;
            }
        };
        // Per level: (this life's launch time, the end of its last need, spot).
        let mut levels: Vec<(f64, Option<usize>, bool)> = Vec::new();
        let mut prev = 0usize;
        for t in 0..=n {
            // Past the end every node goes.
            let cur = pods.get(t).map_or(0, |p| p.div_ceil(g) as usize);
            for i in prev..cur {
                let lead = rng.uniform(cl.boot_seconds.0, cl.boot_seconds.1)
                    + rng.uniform(cl.pull_seconds.0, cl.pull_seconds.1)
                    + cl.pod_start_seconds;
                let spot = rng.f64() < cl.spot_share;
                match levels.get_mut(i) {
                    Some(level) => {
                        let end = level.1.unwrap_or(t);
                        if (t - end) as f64 > lead {
                            // Cheaper to remove it at `end` and launch anew.
                            close(level.0, end, level.2);
                            *level = (t as f64 - lead, None, spot);
                        } else {
                            level.1 = None;
                        }
                    }
                    None => levels.push((t as f64 - lead, None, spot)),
                }
            }
            for level in levels.iter_mut().take(prev).skip(cur) {
                level.1 = Some(t);
            }
            prev = cur;
        }
        for level in &levels {
            close(level.0, level.1.unwrap_or(n), level.2);
        }
        // The queue, served by exactly the planned pods.
        let mut work = Workload::new(
            self.max_service,
            cl.service_spread.multipliers(),
            score_from,
        );
        let tpr = f64::from(sc.concurrency);
        let (mut nodes, mut price) = (0.0, 0.0);
        let (mut node_seconds, mut cost, mut idle) = (0.0, 0.0, 0.0);
        let sample_every = (n / 1500).max(1);
        let mut series = Vec::new();
        for t in 0..n {
            nodes += count_diff[t];
            price += price_diff[t];
            let a = self.arrivals.get(t).copied().unwrap_or(0.0);
            work.step(t as u64, a, f64::from(pods[t]) * tpr, self.service[t]);
            if t as u64 >= score_from {
                let gpus = nodes * f64::from(g);
                node_seconds += gpus;
                cost += price;
                idle += (gpus - work.in_service / tpr).max(0.0);
            }
            if t % sample_every == 0 {
                series.push((
                    sc.trace.start + t as f64,
                    a,
                    pods[t],
                    pods[t],
                    nodes.round() as u32,
                ));
            }
        }
        let left = work.backlog();
        let arrived = work.scored_arrivals;
        let unserved = work.finish(n as u64);
        RunResult {
            scenario: sc.name.clone(),
            policy: PolicyKind::Oracle,
            seed: cl.seed,
            waits: work.waits,
            gpu_node_hours: node_seconds / 3600.0,
            cost,
            idle_gpu_hours: idle / 3600.0,
            arrived,
            left,
            unserved,
            series,
            forecast_mape: None,
            prewarm: None,
            oracle_plan: Some(plan),
        }
    }
}

/// Whether `(cost, p95)` is weakly dominated by some frontier point (as cheap and as fast, up
/// to float noise): "no policy beats the frontier on both axes".
pub fn dominated(cost: f64, p95: f64, frontier: &[(f64, f64)]) -> bool {
    frontier
        .iter()
        .any(|&(c, p)| c <= cost * (1.0 + 1e-9) + 1e-9 && p <= p95 + 1e-9)
}

/// The lowest p95 the frontier reaches at no more than `cost`, if any point is that cheap.
pub fn p95_at_cost(cost: f64, frontier: &[(f64, f64)]) -> Option<f64> {
    frontier
        .iter()
        .filter(|(c, _)| *c <= cost * (1.0 + 1e-9) + 1e-9)
        .map(|(_, p)| *p)
        .min_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::steady;

    #[test]
    fn the_exact_plan_serves_every_job_on_arrival_and_pays_for_each_nodes_lead() {
        let mut sc = steady(0.0, 7200);
        for a in &mut sc.trace.arrivals[3600..] {
            *a = 0.5;
        }
        let cl = ClusterConfig::default();
        let f = Foresight::new(&sc, &cl);
        let r = f.run(Plan::EXACT);
        assert_eq!(r.waits.quantile(1.0), 0.0);
        assert_eq!(r.unserved, 0.0);
        // About 5 busy pods on average for the second hour, more at Poisson peaks: every
        // peak is covered, the nodes for it launched 6-8 min ahead.
        assert!(
            (5.0..16.0).contains(&r.gpu_node_hours),
            "{}",
            r.gpu_node_hours
        );
        // A looser plan is cheaper and waits more.
        let loose = f.run(Plan {
            utilisation: 1.0,
            window_seconds: 600.0,
        });
        assert!(loose.cost < r.cost, "{} {}", loose.cost, r.cost);
        assert!(loose.waits.quantile(0.99) > 0.0);
    }

    #[test]
    fn a_short_gap_keeps_the_node_and_a_long_one_relaunches_it() {
        // Two 10-minute bursts of one job per second at S = 10 s (10 pods) with a gap between.
        let burst = |gap: usize| {
            let mut sc = steady(0.0, 1200 + gap + 1800);
            for a in &mut sc.trace.arrivals[600..1200] {
                *a = 1.0;
            }
            for a in &mut sc.trace.arrivals[1200 + gap..1800 + gap] {
                *a = 1.0;
            }
            sc.service_seconds = 10.0;
            sc
        };
        let cl = ClusterConfig {
            service_spread: crate::workload::ServiceSpread::Fixed,
            ..ClusterConfig::default()
        };
        let cost = |gap: usize| {
            let sc = burst(gap);
            Foresight::new(&sc, &cl).run(Plan::EXACT).gpu_node_hours
        };
        // Ten nodes, each needed 2 × 600 s and launched 340-500 s (boot + pull + start) ahead.
        // A 2-minute gap is kept (cheaper than relaunching): one lead and the gap per node. A
        // 30-minute gap is not: two leads per node.
        let (short, long) = (cost(120), cost(1800));
        let need = 10.0 * 1200.0 / 3600.0;
        let h = |s: f64| 10.0 * s / 3600.0;
        assert!(
            (need + h(120.0 + 340.0)..need + h(120.0 + 500.0) + 0.1).contains(&short),
            "{short}"
        );
        assert!(
            (need + h(2.0 * 340.0)..need + h(2.0 * 500.0) + 0.1).contains(&long),
            "{long}"
        );
    }

    #[test]
    fn domination_is_as_cheap_and_as_fast() {
        let f = [(100.0, 0.0), (80.0, 300.0)];
        assert!(dominated(100.0, 0.0, &f));
        assert!(dominated(90.0, 300.0, &f));
        assert!(!dominated(90.0, 100.0, &f));
        assert_eq!(p95_at_cost(90.0, &f), Some(300.0));
        assert_eq!(p95_at_cost(70.0, &f), None);
    }
}
