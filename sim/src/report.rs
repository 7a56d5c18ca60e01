//! Results: rows over seeds (means and 95 % intervals), paired comparisons with ties, the
//! table, CSV, JSON and the SVG chart.

use std::fmt::Write as _;

use crate::engine::{PolicyKind, RunResult};
use crate::oracle;

/// Student's t at 97.5 % for 1..=30 degrees of freedom (then 1.96).
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// A mean across seeds and its 95 % interval (Student's t; one seed: no width).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        if n == 0 {
            return Self {
                mean: 0.0,
                lo: 0.0,
                hi: 0.0,
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Self {
                mean,
                lo: mean,
                hi: mean,
            };
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let t = T975.get(n - 2).copied().unwrap_or(1.96);
        let half = t * (var / n as f64).sqrt();
        Self {
            mean,
            lo: mean - half,
            hi: mean + half,
        }
    }

    fn half(&self) -> f64 {
        0.5 * (self.hi - self.lo)
    }

    /// `mean±half` with `decimals`.
    fn show(&self, decimals: usize) -> String {
        format!("{:.*}±{:.*}", decimals, self.mean, decimals, self.half())
    }
}

/// How `a` compares with `b` on a smaller-is-better measure, seed by seed (every policy of a
/// seed sees the same arrivals): the 95 % interval of the paired difference decides; a
/// difference inside it is a tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    Tie,
}

impl Verdict {
    /// `a[i] - b[i]` per seed; seeds must line up.
    pub fn paired(a: &[f64], b: &[f64]) -> (Self, Interval) {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let iv = Interval::of(&d);
        // One seed has no interval: any difference decides (the rows say how many seeds).
        let v = if iv.hi < -1e-9 {
            Verdict::Better
        } else if iv.lo > 1e-9 {
            Verdict::Worse
        } else {
            Verdict::Tie
        };
        (v, iv)
    }

    pub fn word(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Tie => "tie",
        }
    }
}

/// One row of the results table: one policy on one trace over every seed, held-out part only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub trace: String,
    /// The policy's name (`policy` too, for older readers).
    pub name: &'static str,
    pub policy: &'static str,
    pub seeds: usize,
    /// Jobs scored (arrived in the held-out part), mean over seeds.
    pub jobs: f64,
    /// Jobs still waiting when the trace ended (counted in the waits with wait = end − arrival),
    /// mean over seeds.
    pub unserved_jobs: f64,
    pub unserved_jobs_ci: [f64; 2],
    /// Wait quantiles, seconds: mean over seeds, and the 95 % interval of that mean.
    pub wait_p50_s: f64,
    pub wait_p50_s_ci: [f64; 2],
    pub wait_p95_s: f64,
    pub wait_p95_s_ci: [f64; 2],
    pub wait_p99_s: f64,
    pub wait_p99_s_ci: [f64; 2],
    pub within_30s: f64,
    pub gpu_node_hours: f64,
    pub gpu_node_hours_ci: [f64; 2],
    pub cost_usd: f64,
    pub cost_usd_ci: [f64; 2],
    pub idle_gpu_hours: f64,
    /// Headroom's forecast MAPE at the lead time, and seasonal-naive's, when it ran (first
    /// seed).
    pub forecast_mape: Option<f64>,
    pub naive_mape: Option<f64>,
    /// Per seed, in seed order: seed, p95 wait, GPU hours, cost (for paired comparisons).
    #[serde(skip)]
    pub per_seed: Vec<(u64, f64, f64, f64)>,
}

fn ci(i: Interval) -> [f64; 2] {
    [i.lo, i.hi]
}

impl Row {
    /// One row from the runs of one (trace, policy), one per seed.
    pub fn from_runs(runs: &[&RunResult]) -> Option<Self> {
        let first = runs.first()?;
        let of = |f: &dyn Fn(&RunResult) -> f64| {
            Interval::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let p50 = of(&|r| r.waits.quantile(0.50));
        let p95 = of(&|r| r.waits.quantile(0.95));
        let p99 = of(&|r| r.waits.quantile(0.99));
        let gpu = of(&|r| r.gpu_node_hours);
        let cost = of(&|r| r.cost);
        let unserved = of(&|r| r.unserved);
        Some(Self {
            trace: first.scenario.clone(),
            name: first.policy.name(),
            policy: first.policy.name(),
            seeds: runs.len(),
            jobs: of(&|r| r.waits.total()).mean,
            unserved_jobs: unserved.mean,
            unserved_jobs_ci: ci(unserved),
            wait_p50_s: p50.mean,
            wait_p50_s_ci: ci(p50),
            wait_p95_s: p95.mean,
            wait_p95_s_ci: ci(p95),
            wait_p99_s: p99.mean,
            wait_p99_s_ci: ci(p99),
            within_30s: of(&|r| r.waits.share_within(30)).mean,
            gpu_node_hours: gpu.mean,
            gpu_node_hours_ci: ci(gpu),
            cost_usd: cost.mean,
            cost_usd_ci: ci(cost),
            idle_gpu_hours: of(&|r| r.idle_gpu_hours).mean,
            forecast_mape: first.forecast_mape.map(|m| m.0),
            naive_mape: first.forecast_mape.map(|m| m.1),
            per_seed: runs
                .iter()
                .map(|r| (r.seed, r.waits.quantile(0.95), r.gpu_node_hours, r.cost))
                .collect(),
        })
    }

    fn iv(&self, mean: f64, ci: [f64; 2]) -> Interval {
        Interval {
            mean,
            lo: ci[0],
            hi: ci[1],
        }
    }

    pub fn p95(&self) -> Interval {
        self.iv(self.wait_p95_s, self.wait_p95_s_ci)
    }

    fn series(&self, k: usize) -> Vec<f64> {
        self.per_seed
            .iter()
            .map(|s| match k {
                0 => s.1,
                1 => s.2,
                _ => s.3,
            })
            .collect()
    }

    pub fn p95_per_seed(&self) -> Vec<f64> {
        self.series(0)
    }

    pub fn gpu_hours_per_seed(&self) -> Vec<f64> {
        self.series(1)
    }

    pub fn cost_per_seed(&self) -> Vec<f64> {
        self.series(2)
    }
}

/// Rows per (trace, policy) from runs in any order, traces and policies in first-seen order.
pub fn rows(results: &[RunResult]) -> Vec<Row> {
    let mut keys: Vec<(String, PolicyKind)> = Vec::new();
    for r in results {
        let k = (r.scenario.clone(), r.policy);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.iter()
        .filter_map(|(t, p)| {
            let mut runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| &r.scenario == t && r.policy == *p)
                .collect();
            runs.sort_by_key(|r| r.seed);
            Row::from_runs(&runs)
        })
        .collect()
}

/// The text table: means ± the half-width of their 95 % interval across seeds.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<17} {:>9} {:>10} {:>9} {:>11} {:>11} {:>7} {:>14} {:>14}",
        "trace",
        "policy",
        "jobs",
        "unserved",
        "p50 s",
        "p95 s",
        "p99 s",
        "≤30 s",
        "GPU·h",
        "cost $"
    );
    let mut last = "";
    for r in rows {
        if r.trace != last && !last.is_empty() {
            out.push('\n');
        }
        last = &r.trace;
        let _ = writeln!(
            out,
            "{:<20} {:<17} {:>9.0} {:>10} {:>9} {:>11} {:>11} {:>6.1}% {:>14} {:>14}",
            r.trace,
            r.policy,
            r.jobs,
            r.iv(r.unserved_jobs, r.unserved_jobs_ci).show(0),
            r.iv(r.wait_p50_s, r.wait_p50_s_ci).show(0),
            r.p95().show(0),
            r.iv(r.wait_p99_s, r.wait_p99_s_ci).show(0),
            r.within_30s * 100.0,
            r.iv(r.gpu_node_hours, r.gpu_node_hours_ci).show(1),
            r.iv(r.cost_usd, r.cost_usd_ci).show(1),
        );
    }
    out
}

/// `a` against `b` on p95, GPU hours and cost, paired by seed: e.g. `p95 -180 s [-200, -160]
/// better`.
pub fn compare(a: &Row, b: &Row) -> String {
    let part = |name: &str, unit: &str, x: Vec<f64>, y: Vec<f64>| {
        let (v, d) = Verdict::paired(&x, &y);
        format!(
            "{name} {:+.1}{unit} [{:+.1}, {:+.1}] {}",
            d.mean,
            d.lo,
            d.hi,
            v.word()
        )
    };
    format!(
        "{}; {}; {}",
        part("p95", " s", a.p95_per_seed(), b.p95_per_seed()),
        part("GPU·h", "", a.gpu_hours_per_seed(), b.gpu_hours_per_seed()),
        part("cost", " $", a.cost_per_seed(), b.cost_per_seed())
    )
}

fn find<'a>(rows: &'a [Row], trace: &str, p: PolicyKind) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.trace == trace && r.policy == p.name())
}

fn traces(rows: &[Row]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for r in rows {
        if !out.contains(&r.trace.as_str()) {
            out.push(&r.trace);
        }
    }
    out
}

/// Prewarming's effect per trace: `headroom` (planned mode alone; Karpenter launches nodes
/// for the pods it creates) against `headroom+prewarm` (the same plus the provisioner's
/// `plan()` creating nodes ahead of the pods), paired by seed.
pub fn prewarm_effect(rows: &[Row]) -> String {
    let mut out = String::new();
    for trace in traces(rows) {
        let (Some(h), Some(w)) = (
            find(rows, trace, PolicyKind::Headroom),
            find(rows, trace, PolicyKind::HeadroomPrewarm),
        ) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{:<20} p95 {:>9} → {:>9} s, cost {:>12} → {:>12} $  ({})",
            trace,
            h.p95().show(0),
            w.p95().show(0),
            h.iv(h.cost_usd, h.cost_usd_ci).show(1),
            w.iv(w.cost_usd, w.cost_usd_ci).show(1),
            compare(w, h)
        );
    }
    out
}

/// Every policy against keda-tuned, per trace, paired by seed.
pub fn against_keda_tuned(rows: &[Row]) -> String {
    let mut out = String::new();
    for trace in traces(rows) {
        let Some(kt) = find(rows, trace, PolicyKind::KedaTuned) else {
            continue;
        };
        for r in rows
            .iter()
            .filter(|r| r.trace == trace && r.policy != kt.policy)
        {
            let _ = writeln!(out, "{:<20} {:<17} {}", trace, r.policy, compare(r, kt));
        }
    }
    out
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "trace,policy,seeds,jobs,unserved_jobs,wait_p50_s,wait_p95_s,wait_p95_lo,wait_p95_hi,wait_p99_s,within_30s,gpu_node_hours,gpu_node_hours_lo,gpu_node_hours_hi,cost_usd,cost_usd_lo,cost_usd_hi,idle_gpu_hours,forecast_mape,naive_mape\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{}",
            r.trace,
            r.policy,
            r.seeds,
            r.jobs,
            r.unserved_jobs,
            r.wait_p50_s,
            r.wait_p95_s,
            r.wait_p95_s_ci[0],
            r.wait_p95_s_ci[1],
            r.wait_p99_s,
            r.within_30s,
            r.gpu_node_hours,
            r.gpu_node_hours_ci[0],
            r.gpu_node_hours_ci[1],
            r.cost_usd,
            r.cost_usd_ci[0],
            r.cost_usd_ci[1],
            r.idle_gpu_hours,
            opt(r.forecast_mape),
            opt(r.naive_mape)
        );
    }
    out
}

/// One seed's frontier on one trace, as (cost, p95) points.
fn frontier_of(frontier: &[RunResult], trace: &str, seed: u64) -> Vec<(f64, f64)> {
    frontier
        .iter()
        .filter(|r| r.scenario == trace && r.seed == seed)
        .map(|r| (r.cost, r.waits.quantile(0.95)))
        .collect()
}

/// The targets for one trace, as (claim, met) lines, each paired by seed: met when the
/// claim's difference is below zero beyond its interval, or a tie on the right side of zero.
pub fn targets(
    rows: &[Row],
    frontier: &[RunResult],
    trace: &str,
    unpredictable: bool,
) -> Vec<(String, bool)> {
    let (Some(h), Some(kt)) = (
        find(rows, trace, PolicyKind::Headroom),
        find(rows, trace, PolicyKind::KedaTuned),
    ) else {
        return Vec::new();
    };
    let mut out = vec![];
    let scaled = |v: Vec<f64>, k: f64| v.into_iter().map(|x| x * k).collect::<Vec<_>>();
    let check = |what: &str, a: Vec<f64>, b: Vec<f64>| {
        let (v, d) = Verdict::paired(&a, &b);
        let met = v == Verdict::Better || (v == Verdict::Tie && d.mean <= 1e-9);
        (
            format!(
                "{what}: difference {:+.1} [{:+.1}, {:+.1}] ({})",
                d.mean,
                d.lo,
                d.hi,
                v.word()
            ),
            met,
        )
    };
    out.push(check(
        &format!(
            "p95 {} s ≤ 50 % of keda-tuned's {} s",
            h.p95().show(0),
            kt.p95().show(0)
        ),
        h.p95_per_seed(),
        scaled(kt.p95_per_seed(), 0.5),
    ));
    out.push(check(
        &format!(
            "GPU·h {:.1} ≤ 1.15 × keda-tuned's {:.1}",
            h.gpu_node_hours, kt.gpu_node_hours
        ),
        h.gpu_hours_per_seed(),
        scaled(kt.gpu_hours_per_seed(), 1.15),
    ));
    // The frontier's p95 at Headroom's cost, seed by seed.
    let at_cost: Option<Vec<f64>> = h
        .per_seed
        .iter()
        .map(|&(seed, _, _, cost)| oracle::p95_at_cost(cost, &frontier_of(frontier, trace, seed)))
        .collect();
    match at_cost {
        Some(f) if !frontier.is_empty() => out.push(check(
            &format!(
                "p95 {} s ≤ 2 × the oracle frontier's {} s at Headroom's cost",
                h.p95().show(0),
                Interval::of(&f).show(0)
            ),
            h.p95_per_seed(),
            scaled(f, 2.0),
        )),
        _ => out.push((
            "p95 ≤ 2 × the oracle frontier's at Headroom's cost: no frontier plan is that cheap"
                .into(),
            false,
        )),
    }
    if unpredictable {
        out.push(check(
            "p95 not worse than keda-tuned's",
            h.p95_per_seed(),
            kt.p95_per_seed(),
        ));
        out.push(check(
            "GPU·h not worse than keda-tuned's",
            h.gpu_hours_per_seed(),
            kt.gpu_hours_per_seed(),
        ));
    }
    out
}

/// One oracle plan on one trace over the seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrontierRow {
    pub trace: String,
    pub utilisation: f64,
    pub window_seconds: f64,
    pub seeds: usize,
    pub wait_p95_s: f64,
    pub wait_p95_s_ci: [f64; 2],
    pub wait_p99_s: f64,
    pub gpu_node_hours: f64,
    pub gpu_node_hours_ci: [f64; 2],
    pub cost_usd: f64,
    pub cost_usd_ci: [f64; 2],
    pub unserved_jobs: f64,
    /// On the lower-left envelope of the means (no other plan as cheap and as fast).
    pub efficient: bool,
}

/// The frontier's rows per trace, plans in [`oracle::plans`] order.
pub fn frontier_rows(frontier: &[RunResult]) -> Vec<FrontierRow> {
    let mut keys: Vec<(String, oracle::Plan)> = Vec::new();
    for r in frontier {
        if let Some(p) = r.oracle_plan {
            let k = (r.scenario.clone(), p);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut out: Vec<FrontierRow> = keys
        .iter()
        .map(|(t, p)| {
            let runs: Vec<&RunResult> = frontier
                .iter()
                .filter(|r| &r.scenario == t && r.oracle_plan == Some(*p))
                .collect();
            let of = |f: &dyn Fn(&RunResult) -> f64| {
                Interval::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let (p95, gpu, cost) = (
                of(&|r| r.waits.quantile(0.95)),
                of(&|r| r.gpu_node_hours),
                of(&|r| r.cost),
            );
            FrontierRow {
                trace: t.clone(),
                utilisation: p.utilisation,
                window_seconds: p.window_seconds,
                seeds: runs.len(),
                wait_p95_s: p95.mean,
                wait_p95_s_ci: ci(p95),
                wait_p99_s: of(&|r| r.waits.quantile(0.99)).mean,
                gpu_node_hours: gpu.mean,
                gpu_node_hours_ci: ci(gpu),
                cost_usd: cost.mean,
                cost_usd_ci: ci(cost),
                unserved_jobs: of(&|r| r.unserved).mean,
                efficient: false,
            }
        })
        .collect();
    let snapshot: Vec<(String, f64, f64)> = out
        .iter()
        .map(|r| (r.trace.clone(), r.cost_usd, r.wait_p95_s))
        .collect();
    for (i, r) in out.iter_mut().enumerate() {
        r.efficient = !snapshot.iter().enumerate().any(|(j, (t, c, p))| {
            j != i
                && *t == r.trace
                && *c <= r.cost_usd
                && *p <= r.wait_p95_s
                && (*c < r.cost_usd || *p < r.wait_p95_s)
        });
    }
    out
}

/// The frontier's efficient plans per trace.
pub fn frontier_table(rows: &[FrontierRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>6} {:>8} {:>11} {:>9} {:>14} {:>14}",
        "trace", "util", "window", "p95 s", "p99 s", "GPU·h", "cost $"
    );
    let mut last = "";
    for r in rows.iter().filter(|r| r.efficient) {
        if r.trace != last && !last.is_empty() {
            out.push('\n');
        }
        last = &r.trace;
        let iv = |m: f64, c: [f64; 2]| Interval {
            mean: m,
            lo: c[0],
            hi: c[1],
        };
        let _ = writeln!(
            out,
            "{:<20} {:>5.0}% {:>7.0}s {:>11} {:>9.0} {:>14} {:>14}",
            r.trace,
            r.utilisation * 100.0,
            r.window_seconds,
            iv(r.wait_p95_s, r.wait_p95_s_ci).show(0),
            r.wait_p99_s,
            iv(r.gpu_node_hours, r.gpu_node_hours_ci).show(1),
            iv(r.cost_usd, r.cost_usd_ci).show(1),
        );
    }
    out
}

/// Every (trace, policy, seed, cost, p95) that no frontier plan of the same seed dominates,
/// i.e. that beats the frontier on both axes. Empty when the oracle is a true yardstick.
pub fn beats_frontier(
    results: &[RunResult],
    frontier: &[RunResult],
) -> Vec<(String, &'static str, u64, f64, f64)> {
    results
        .iter()
        .filter(|r| r.policy != PolicyKind::Oracle)
        .filter_map(|r| {
            let f = frontier_of(frontier, &r.scenario, r.seed);
            let (cost, p95) = (r.cost, r.waits.quantile(0.95));
            (!f.is_empty() && !oracle::dominated(cost, p95, &f))
                .then(|| (r.scenario.clone(), r.policy.name(), r.seed, cost, p95))
        })
        .collect()
}

/// An SVG chart of one trace: per policy, the offered load (arrivals × S / c, grey), replicas
/// (blue), ready pods (green) and nodes (orange) over time.
pub fn svg(trace: &str, results: &[&RunResult], load_per_arrival: f64) -> String {
    let (w, ph, pad) = (1100.0, 150.0, 40.0);
    let h = pad + results.len() as f64 * (ph + pad);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{pad}\" y=\"24\" font-size=\"16\">{trace}: offered load (grey), replicas (blue), ready pods (green), nodes (orange)</text>\n"
    );
    for (k, r) in results.iter().enumerate() {
        let y0 = pad + k as f64 * (ph + pad) + 10.0;
        let s = &r.series;
        if s.is_empty() {
            continue;
        }
        let (t0, t1) = (s[0].0, s[s.len() - 1].0.max(s[0].0 + 1.0));
        let ymax = s
            .iter()
            .map(|p| (p.1 * load_per_arrival).max(f64::from(p.2.max(p.4))))
            .fold(1.0, f64::max);
        let x = |t: f64| pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad);
        let y = |v: f64| y0 + ph - v / ymax * ph;
        let _ = writeln!(
            out,
            "<text x=\"{pad}\" y=\"{}\">{} (max {:.0})</text><rect x=\"{pad}\" y=\"{y0}\" width=\"{}\" height=\"{ph}\" fill=\"none\" stroke=\"#ccc\"/>",
            y0 - 4.0,
            r.policy.name(),
            ymax,
            w - 2.0 * pad
        );
        let mut load = format!("M{:.1},{:.1}", x(t0), y(0.0));
        for p in s {
            let _ = write!(load, " L{:.1},{:.1}", x(p.0), y(p.1 * load_per_arrival));
        }
        let _ = write!(load, " L{:.1},{:.1} Z", x(t1), y(0.0));
        let _ = writeln!(out, "<path d=\"{load}\" fill=\"#ddd\" stroke=\"none\"/>");
        for (colour, pick) in [("#e69f00", 4usize), ("#009e73", 3), ("#0072b2", 2)] {
            let mut d = String::new();
            for (i, p) in s.iter().enumerate() {
                let v = match pick {
                    2 => p.2,
                    3 => p.3,
                    _ => p.4,
                };
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { " L" },
                    x(p.0),
                    y(f64::from(v))
                );
            }
            let _ = writeln!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1\"/>"
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_the_mean_plus_minus_students_t_standard_errors() {
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((i.mean - 3.0).abs() < 1e-12);
        // s = 1.581, t(4) = 2.776: half-width 1.963.
        assert!((i.hi - 4.963).abs() < 1e-3, "{i:?}");
        assert_eq!(Interval::of(&[7.0]).lo, 7.0);
    }

    #[test]
    fn a_difference_inside_the_interval_is_a_tie() {
        let (v, _) = Verdict::paired(
            &[10.0, 12.0, 9.0, 11.0, 10.0],
            &[11.0, 10.0, 10.0, 10.0, 12.0],
        );
        assert_eq!(v, Verdict::Tie);
        let (v, d) = Verdict::paired(&[5.0, 6.0, 5.5, 6.5, 5.0], &[10.0, 11.0, 10.0, 12.0, 10.0]);
        assert_eq!(v, Verdict::Better);
        assert!(d.hi < 0.0);
        let (v, _) = Verdict::paired(&[0.0, 0.0], &[0.0, 0.0]);
        assert_eq!(v, Verdict::Tie);
    }
}
