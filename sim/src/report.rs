//! Results: the table, CSV, JSON and the SVG chart.

use std::fmt::Write as _;

use crate::engine::{PolicyKind, RunResult};

/// One row of the results table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub trace: String,
    pub policy: &'static str,
    pub jobs: f64,
    /// Jobs still waiting when the trace ended (counted in the waits with wait = end − arrival).
    pub unserved_jobs: f64,
    pub wait_p50_s: f64,
    pub wait_p95_s: f64,
    pub wait_p99_s: f64,
    pub within_30s: f64,
    pub gpu_node_hours: f64,
    pub cost_usd: f64,
    pub idle_gpu_hours: f64,
    /// Headroom's forecast MAPE at the lead time, and seasonal-naive's, when it ran.
    pub forecast_mape: Option<f64>,
    pub naive_mape: Option<f64>,
}

impl Row {
    pub fn from(r: &RunResult) -> Self {
        Self {
            trace: r.scenario.clone(),
            policy: r.policy.name(),
            jobs: r.waits.total(),
            unserved_jobs: r.unserved,
            wait_p50_s: r.waits.quantile(0.50),
            wait_p95_s: r.waits.quantile(0.95),
            wait_p99_s: r.waits.quantile(0.99),
            within_30s: r.waits.share_within(30),
            gpu_node_hours: r.gpu_node_hours,
            cost_usd: r.cost,
            idle_gpu_hours: r.idle_gpu_hours,
            forecast_mape: r.forecast_mape.map(|m| m.0),
            naive_mape: r.forecast_mape.map(|m| m.1),
        }
    }
}

/// The text table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<17} {:>10} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "trace",
        "policy",
        "jobs",
        "unserved",
        "p50 s",
        "p95 s",
        "p99 s",
        "≤30 s",
        "GPU·h",
        "cost $",
        "idle GPU·h"
    );
    let mut last = "";
    for r in rows {
        if r.trace != last && !last.is_empty() {
            out.push('\n');
        }
        last = &r.trace;
        let _ = writeln!(
            out,
            "{:<20} {:<17} {:>10.0} {:>8.0} {:>7.0} {:>7.0} {:>7.0} {:>6.1}% {:>9.1} {:>9.2} {:>9.1}",
            r.trace,
            r.policy,
            r.jobs,
            r.unserved_jobs,
            r.wait_p50_s,
            r.wait_p95_s,
            r.wait_p99_s,
            r.within_30s * 100.0,
            r.gpu_node_hours,
            r.cost_usd,
            r.idle_gpu_hours
        );
    }
    out
}

/// Prewarming's effect per trace: `headroom` (planned mode alone; Karpenter launches nodes
/// for the pods it creates) against `headroom+prewarm` (the same plus the provisioner's
/// `plan()` creating nodes ahead of the pods), wait and cost side by side.
pub fn prewarm_effect(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>15} {:>15} {:>17} {:>21} {:>8}",
        "trace", "p95 s", "p99 s", "≤30 s", "cost $", "cost Δ"
    );
    let mut traces: Vec<&str> = Vec::new();
    for r in rows {
        if !traces.contains(&r.trace.as_str()) {
            traces.push(&r.trace);
        }
    }
    for trace in traces {
        let get = |p: PolicyKind| {
            rows.iter()
                .find(|r| r.trace == trace && r.policy == p.name())
        };
        let (Some(h), Some(w)) = (get(PolicyKind::Headroom), get(PolicyKind::HeadroomPrewarm))
        else {
            continue;
        };
        let delta = if h.cost_usd > 0.0 {
            format!("{:+.1}%", (w.cost_usd / h.cost_usd - 1.0) * 100.0)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<20} {:>6.0} → {:>6.0} {:>6.0} → {:>6.0} {:>6.1}% → {:>6.1}% {:>9.2} → {:>9.2} {:>8}",
            trace,
            h.wait_p95_s,
            w.wait_p95_s,
            h.wait_p99_s,
            w.wait_p99_s,
            h.within_30s * 100.0,
            w.within_30s * 100.0,
            h.cost_usd,
            w.cost_usd,
            delta
        );
    }
    out
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "trace,policy,jobs,unserved_jobs,wait_p50_s,wait_p95_s,wait_p99_s,within_30s,gpu_node_hours,cost_usd,idle_gpu_hours,forecast_mape,naive_mape\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{:.1},{:.1},{},{},{},{:.4},{:.3},{:.3},{:.3},{},{}",
            r.trace,
            r.policy,
            r.jobs,
            r.unserved_jobs,
            r.wait_p50_s,
            r.wait_p95_s,
            r.wait_p99_s,
            r.within_30s,
            r.gpu_node_hours,
            r.cost_usd,
            r.idle_gpu_hours,
            opt(r.forecast_mape),
            opt(r.naive_mape)
        );
    }
    out
}

/// The targets for one trace, as (claim, met) lines.
pub fn targets(rows: &[Row], trace: &str, unpredictable: bool) -> Vec<(String, bool)> {
    let get = |p: PolicyKind| {
        rows.iter()
            .find(|r| r.trace == trace && r.policy == p.name())
    };
    let (Some(h), Some(kd), Some(kt), Some(o)) = (
        get(PolicyKind::Headroom),
        get(PolicyKind::KedaDefaults),
        get(PolicyKind::KedaTuned),
        get(PolicyKind::Oracle),
    ) else {
        return Vec::new();
    };
    let mut out = vec![];
    let mut check = |claim: String, met: bool| out.push((claim, met));
    // A p95 of 0 s stays met by 0 s.
    let le = |a: f64, b: f64| a <= b + 1e-9;
    check(
        format!(
            "p95 {:.0} s ≤ 25 % of keda-defaults' {:.0} s",
            h.wait_p95_s, kd.wait_p95_s
        ),
        le(h.wait_p95_s, 0.25 * kd.wait_p95_s),
    );
    check(
        format!(
            "p95 {:.0} s ≤ 50 % of keda-tuned's {:.0} s",
            h.wait_p95_s, kt.wait_p95_s
        ),
        le(h.wait_p95_s, 0.5 * kt.wait_p95_s),
    );
    check(
        format!(
            "GPU·h {:.1} ≤ 1.15 × keda-tuned's {:.1}",
            h.gpu_node_hours, kt.gpu_node_hours
        ),
        le(h.gpu_node_hours, 1.15 * kt.gpu_node_hours),
    );
    check(
        format!(
            "cost ${:.2} ≤ 1.5 × oracle's ${:.2}",
            h.cost_usd, o.cost_usd
        ),
        le(h.cost_usd, 1.5 * o.cost_usd),
    );
    check(
        format!(
            "p95 {:.0} s ≤ 2 × oracle's {:.0} s",
            h.wait_p95_s, o.wait_p95_s
        ),
        le(h.wait_p95_s, 2.0 * o.wait_p95_s),
    );
    if unpredictable {
        check(
            "not worse than keda-tuned on p95 and GPU·h".into(),
            le(h.wait_p95_s, kt.wait_p95_s) && le(h.gpu_node_hours, kt.gpu_node_hours),
        );
    }
    out
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
