//! Forecast evaluation as the planner uses the forecast: what matters to capacity is the
//! largest arrival rate over the lead window (`Forecaster::max_rate_between`), not one bin
//! ahead. The scaler's seasonal forecaster is scored on that against two baselines that need
//! no model — persistence (the last finished bin's rate) and seasonal-naive (the largest rate
//! over the same window yesterday) — at leads of 1, 5 and 10 minutes, on the held-out part of
//! each scenario as it is simulated (scaled to job counts, since the forecaster's "under one
//! task per bin is empty" rule depends on the count).

use headroom_policy::forecast::{ForecastConfig, Forecaster};

use crate::engine::Scenario;
use crate::tune;

/// The leads scored, seconds.
pub const LEADS: [f64; 3] = [60.0, 300.0, 600.0];

/// The forecast bin: one minute, or the trace's own bin when coarser (rounded up to a divisor
/// of a day).
fn bin_for(trace_bin: f64) -> u32 {
    let want = trace_bin.max(60.0).ceil() as u32;
    (want..=86_400).find(|b| 86_400 % b == 0).unwrap_or(86_400)
}

/// Error of one predictor of the window maximum.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct MaxScore {
    /// Σ|predicted − actual| / Σ actual over the scored windows.
    pub wape: f64,
    /// Share of windows predicted below what arrived (capacity short).
    pub under_share: f64,
    pub windows: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    abs: f64,
    actual: f64,
    under: u64,
    n: u64,
}

impl Acc {
    fn add(&mut self, predicted: f64, actual: f64) {
        self.abs += (predicted - actual).abs();
        self.actual += actual;
        self.under += u64::from(predicted < actual - 1e-12);
        self.n += 1;
    }

    fn score(&self) -> MaxScore {
        MaxScore {
            wape: if self.actual > 0.0 {
                self.abs / self.actual
            } else {
                0.0
            },
            under_share: if self.n > 0 {
                self.under as f64 / self.n as f64
            } else {
                0.0
            },
            windows: self.n,
        }
    }
}

/// One scenario at one lead.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeadReport {
    pub trace: String,
    pub lead_seconds: f64,
    pub bin_seconds: u32,
    pub model: MaxScore,
    pub persistence: MaxScore,
    pub seasonal_naive: MaxScore,
}

impl LeadReport {
    /// The predictor with the lowest WAPE.
    pub fn best(&self) -> &'static str {
        let m = self.model.wape;
        let p = self.persistence.wape;
        let s = self.seasonal_naive.wape;
        if m <= p && m <= s {
            "model"
        } else if p <= s {
            "persistence"
        } else {
            "seasonal-naive"
        }
    }
}

/// Scores the forecaster and the baselines on `sc` at `lead_seconds`, over the windows that
/// start in the held-out part once the model is ready and a day of history exists. `None` when
/// no window qualifies.
pub fn evaluate(sc: &Scenario, lead_seconds: f64) -> Option<LeadReport> {
    let tr = &sc.trace;
    let bin = bin_for(tr.bin);
    let b = f64::from(bin);
    let first = (tr.start / b).floor() as i64;
    let last = (tr.end() / b).ceil() as i64;
    let len = usize::try_from(last - first).ok()?;
    // Counts per absolute forecast bin.
    let mut counts = vec![0.0; len];
    for (from, _, n) in tr.samples() {
        let k = ((from / b).floor() as i64 - first) as usize;
        if let Some(c) = counts.get_mut(k) {
            *c += n;
        }
    }
    let horizon = ((lead_seconds / b).ceil() as usize).max(1);
    let per_day = (86_400 / bin) as usize;
    let score_from = tr.start + tune::split_second(sc) as f64;
    let mut f = Forecaster::new(ForecastConfig::for_lead(bin, lead_seconds));
    let (mut model, mut persistence, mut naive) = (Acc::default(), Acc::default(), Acc::default());
    let rate_max = |from: usize, to: usize| {
        counts[from..to.min(len)]
            .iter()
            .copied()
            .fold(0.0, f64::max)
            / b
    };
    for k in 0..len {
        let now = (first + k as i64) as f64 * b;
        if k >= per_day
            && k + horizon <= len
            && now >= score_from
            && let Some(m) = f.max_rate_between(now, now + lead_seconds - 1e-6, 0.0)
        {
            let actual = rate_max(k, k + horizon);
            model.add(m, actual);
            persistence.add(counts[k - 1] / b, actual);
            naive.add(rate_max(k - per_day, k - per_day + horizon), actual);
        }
        f.observe(now, now + b, counts[k]);
    }
    (model.n > 0).then(|| LeadReport {
        trace: sc.name.clone(),
        lead_seconds,
        bin_seconds: bin,
        model: model.score(),
        persistence: persistence.score(),
        seasonal_naive: naive.score(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_bins_are_a_minute_or_the_traces_own_divisor_of_a_day() {
        assert_eq!(bin_for(10.0), 60);
        assert_eq!(bin_for(1800.0), 1800);
        assert_eq!(bin_for(3600.0), 3600);
        assert_eq!(bin_for(700.0), 720);
    }

    #[test]
    fn on_a_steady_series_persistence_is_exact_and_the_model_close() {
        let mut sc = crate::engine::tests::steady(2.0, 4 * 86_400);
        sc.tuning_share = 0.5;
        let r = evaluate(&sc, 300.0).unwrap();
        assert_eq!(r.persistence.wape, 0.0);
        assert!(r.model.wape < 0.05, "{r:?}");
        assert_eq!(r.best(), "persistence");
        assert!(r.model.windows > 2000, "{r:?}");
    }
}
