//! `forecast: seasonal` — a learned forecast of a queue's arrivals.
//!
//! **Model.** Double-seasonal exponential smoothing (Taylor 2003's daily + weekly Holt-Winters)
//! in log space, with a damped trend and an AR(1) correction of the last error (its coefficient fitted online):
//!
//! ```text
//! x_k   = ln(1 + arrivals in bin k)
//! x̂_k   = L + T + D[k mod day] + W[k mod week]                    (one step ahead)
//! e_k   = x_k − x̂_k,  ẽ_k = e_k clipped to ±4σ
//! L ← L + T + α ẽ_k;  T ← φ_T T + αβ ẽ_k;  D[·] += γ_d(1−α) ẽ_k;  W[·] += γ_w(1−α) ẽ_k
//! x̂_{k+h} = L + T·Σφ_T^i + D[(k+h) mod day] + W[(k+h) mod week] + φ^h e_k,  φ = corr(e_k, e_{k−1})
//! ŷ = exp(x̂ + σ²/2) − 1                                          (lognormal mean)
//! ```
//!
//! Why this one: arrivals of request-driven work are multiplicative (a weekday is "busier",
//! not "busier by 50 requests"), which the log makes additive and zero-safe; two seasonal
//! indices cover business hours and weekends; the level follows slow drift (growth, holidays)
//! and the AR term the current deviation, which dominates at lead times of minutes — that is
//! where a same-time-yesterday forecast loses. Clipping innovations keeps one spike or outage
//! from rewriting the profiles. It is O(1) per bin and its state is a fixed-size vector.
//!
//! **Grid.** Fixed bins of `bin_seconds` (default 300 s; must divide a day), aligned to the
//! Unix epoch (so to UTC midnight). Samples are spread over the bins they cover; a bin is
//! *observed* when samples cover at least half of it (its count is scaled up to the full bin),
//! else *missing*: a missing bin does not update the profiles, the level follows the trend and
//! the AR term decays. A gap longer than [`RESET_AFTER_WEEKS`] weeks, or a reading from before
//! the current bin (clock jump back), cannot corrupt the model: the former starts learning
//! again, the latter is dropped and counted.
//!
//! **Readiness.** The forecast stays out of the answer ([`Forecaster::ready`] false) until it
//! has one full daily period with at least half of its bins observed; then the daily profile
//! starts from that day. The weekly index starts at zero and learns from the first week on.
//!
//! **Error.** Each finished bin is compared with the forecast made `error_horizon_bins` before
//! it (the lead time) and with the seasonal-naive forecast (same bin last week when a week of
//! history exists, else yesterday): rolling (one-day half-life) and cumulative MAPE, WAPE and
//! under-forecast share are exposed ([`Forecaster::error`]), and [`backtest`] runs the same over
//! a whole series.
//!
//! **Memory.** Three week-long vectors (≈ 2 016 floats each at 5-minute bins), serialisable.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub const DEFAULT_BIN_SECONDS: u32 = 300;
/// Gaps longer than this many weeks restart learning.
pub const RESET_AFTER_WEEKS: i64 = 8;
const DAY: i64 = 86_400;
/// Forecast bins expecting fewer tasks than this count as empty in [`Forecaster::max_rate_between`].
pub const MIN_TASKS_PER_BIN: f64 = 1.0;
/// Cap on the log-space error variance used to widen forecasts (σ ≤ 0.5).
const MAX_VAR: f64 = 0.25;
/// Marks a missing bin in the history (counts are never negative).
const MISSING: f32 = -1.0;

/// The forecaster's knobs; the defaults are what `forecast: seasonal` uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    /// Bin width in seconds; divides 86 400.
    pub bin_seconds: u32,
    /// Half-life of the level, seconds.
    pub level_half_life: f64,
    /// Trend gain relative to the level's (β).
    pub trend_gain: f64,
    /// Per-bin damping of the trend (φ_T).
    pub trend_damping: f64,
    /// Seasonal gains per occurrence (γ_d, γ_w).
    pub gamma_day: f64,
    pub gamma_week: f64,
    /// Half-life of the running statistics the AR(1) coefficient is fitted from, seconds.
    pub ar_half_life: f64,
    /// Innovations are clipped at this many σ.
    pub clip_sigmas: f64,
    /// The horizon at which the error is tracked, in bins (the lead time).
    pub error_horizon_bins: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            bin_seconds: DEFAULT_BIN_SECONDS,
            level_half_life: 3.0 * 3600.0,
            trend_gain: 0.05,
            trend_damping: 0.98,
            gamma_day: 0.1,
            gamma_week: 0.1,
            ar_half_life: 2.0 * 86_400.0,
            clip_sigmas: 4.0,
            error_horizon_bins: 1,
        }
    }
}

impl ForecastConfig {
    /// Defaults for a bin width and a lead time (the error horizon is ⌈lead / bin⌉, at least 1).
    pub fn for_lead(bin_seconds: u32, lead_seconds: f64) -> Self {
        let bins = (lead_seconds.max(0.0) / f64::from(bin_seconds.max(1))).ceil();
        Self {
            bin_seconds,
            error_horizon_bins: (bins as u32).max(1),
            ..Self::default()
        }
    }

    fn valid_bin(&self) -> i64 {
        let b = i64::from(self.bin_seconds);
        if b > 0 && DAY % b == 0 {
            b
        } else {
            i64::from(DEFAULT_BIN_SECONDS)
        }
    }
}

/// Accuracy of one forecaster (or baseline) over some bins.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Score {
    /// Mean absolute percentage error over bins with arrivals.
    pub mape: f64,
    /// Σ|error| / Σ actual: MAPE that does not explode on near-empty bins.
    pub wape: f64,
    /// Share of bins forecast below what arrived.
    pub under_share: f64,
    /// Bins scored.
    pub bins: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
struct Acc {
    ape: f64,
    ape_n: f64,
    abs_err: f64,
    actual: f64,
    under: f64,
    n: f64,
}

impl Acc {
    fn add(&mut self, forecast: f64, actual: f64, weight: f64) {
        if actual > 0.0 {
            self.ape = self.ape * weight + (forecast - actual).abs() / actual;
            self.ape_n = self.ape_n * weight + 1.0;
        } else {
            self.ape *= weight;
            self.ape_n *= weight;
        }
        self.abs_err = self.abs_err * weight + (forecast - actual).abs();
        self.actual = self.actual * weight + actual;
        self.under = self.under * weight + if forecast < actual { 1.0 } else { 0.0 };
        self.n = self.n * weight + 1.0;
    }

    fn score(&self, bins: u64) -> Option<Score> {
        (self.n > 0.0).then(|| Score {
            mape: if self.ape_n > 0.0 {
                self.ape / self.ape_n
            } else {
                0.0
            },
            wape: if self.actual > 0.0 {
                self.abs_err / self.actual
            } else {
                0.0
            },
            under_share: self.under / self.n,
            bins,
        })
    }
}

/// The forecaster's recent and cumulative error at the lead time, against seasonal-naive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ForecastError {
    /// Rolling (one-day half-life).
    pub recent: Option<Score>,
    pub recent_naive: Option<Score>,
    /// Since the forecaster became ready.
    pub total: Option<Score>,
    /// Same-time-yesterday on the same bins.
    pub total_naive_day: Option<Score>,
    /// Same-time-last-week, and the model, on the bins where a week of history exists.
    pub total_naive_week: Option<Score>,
    pub total_on_week_bins: Option<Score>,
}

/// A forecast waiting for its bin: the model's, seasonal-naive's (last week, else yesterday),
/// yesterday's and last week's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Pending {
    bin: i64,
    model: f64,
    naive: Option<f64>,
    day: Option<f64>,
    week: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Tracker {
    /// Forecasts made H bins before their bin, waiting for it to finish.
    pending: VecDeque<Pending>,
    recent: Acc,
    recent_naive: Acc,
    total: Acc,
    total_naive_day: Acc,
    total_week: Acc,
    total_naive_week: Acc,
    bins: u64,
    week_bins: u64,
    recent_bins: u64,
}

/// Per-queue forecaster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    config: ForecastConfig,
    /// The bin being filled, its count and the seconds covered.
    open: Option<(i64, f64, f64)>,
    /// The last finished bin.
    last_bin: Option<i64>,
    /// Finished bins since learning (re)started.
    bins_seen: i64,
    ready: bool,
    level: f64,
    trend: f64,
    day: Vec<f64>,
    week: Vec<f64>,
    /// Last one-step error (log space) and its variance.
    resid: f64,
    var: f64,
    /// Running lag-1 covariance and variance of the raw errors: the AR(1) coefficient.
    ar_cov: f64,
    ar_var: f64,
    /// Counts of the last week of bins, by bin mod week; [`MISSING`] when not observed.
    history: Vec<f32>,
    tracker: Tracker,
    /// Samples that arrived for bins already finished (clock jumps back).
    pub dropped_samples: u64,
}

fn ln1p(x: f64) -> f64 {
    x.max(0.0).ln_1p()
}

impl Forecaster {
    pub fn new(config: ForecastConfig) -> Self {
        let bin = config.valid_bin();
        let per_day = (DAY / bin) as usize;
        Self {
            config,
            open: None,
            last_bin: None,
            bins_seen: 0,
            ready: false,
            level: 0.0,
            trend: 0.0,
            day: vec![0.0; per_day],
            week: vec![0.0; per_day * 7],
            resid: 0.0,
            var: 0.0,
            ar_cov: 0.0,
            ar_var: 0.0,
            history: vec![MISSING; per_day * 7],
            tracker: Tracker::default(),
            dropped_samples: 0,
        }
    }

    pub fn config(&self) -> &ForecastConfig {
        &self.config
    }

    /// Whether a deserialised state has the shape its configuration implies (tables of one day
    /// and one week of bins, finite numbers). A stored history is written by another process
    /// and may be corrupt or from another version: an inconsistent one is dropped, never
    /// indexed (an empty day table would divide by zero).
    pub fn is_consistent(&self) -> bool {
        let per_day = (DAY / self.bin()) as usize;
        let finite = [
            self.level,
            self.trend,
            self.resid,
            self.var,
            self.ar_cov,
            self.ar_var,
        ]
        .iter()
        .all(|v| v.is_finite());
        self.day.len() == per_day
            && self.week.len() == per_day * 7
            && self.history.len() == per_day * 7
            && finite
            && self.day.iter().chain(&self.week).all(|v| v.is_finite())
            && self
                .open
                .is_none_or(|(_, n, s)| n.is_finite() && s.is_finite())
    }

    fn bin(&self) -> i64 {
        self.config.valid_bin()
    }

    fn per_day(&self) -> i64 {
        self.day.len() as i64
    }

    fn per_week(&self) -> i64 {
        self.week.len() as i64
    }

    /// Whether the forecast may be used: one full day of history.
    pub fn ready(&self) -> bool {
        self.ready
    }

    fn alpha(&self) -> f64 {
        let b = self.bin() as f64;
        1.0 - 0.5f64.powf(b / self.config.level_half_life.max(b))
    }

    /// The AR(1) coefficient of the one-step errors, fitted online (lag-1 autocorrelation),
    /// within [0, 0.98]: 0 on white noise, where correcting by the last error only adds noise.
    fn ar(&self) -> f64 {
        if self.ar_var <= 0.0 {
            return 0.0;
        }
        (self.ar_cov / self.ar_var).clamp(0.0, 0.98)
    }

    /// Adds `arrivals` spread evenly over `[from, to)` (unix seconds). Bins before `to`'s are
    /// finished as time passes them.
    pub fn observe(&mut self, from: f64, to: f64, arrivals: f64) {
        if !(from.is_finite() && to.is_finite() && arrivals.is_finite()) || to <= from {
            return;
        }
        let arrivals = arrivals.max(0.0);
        let bin = self.bin() as f64;
        let first = (from / bin).floor() as i64;
        let last = ((to / bin).ceil() as i64 - 1).max(first);
        if let Some(lb) = self.last_bin
            && first <= lb
        {
            // Part or all of it is in finished bins: a clock jump back or a replay.
            self.dropped_samples += 1;
            return;
        }
        let rate = arrivals / (to - from);
        for b in first..=last {
            let lo = from.max(b as f64 * bin);
            let hi = to.min((b + 1) as f64 * bin);
            if hi <= lo {
                continue;
            }
            self.advance_to(b);
            if let Some((ob, count, covered)) = &mut self.open
                && *ob == b
            {
                *count += rate * (hi - lo);
                *covered += hi - lo;
            }
        }
    }

    /// Finishes every bin before `b` (now passed) and opens `b`.
    pub fn advance_to(&mut self, b: i64) {
        match self.open {
            Some((ob, _, _)) if ob == b => return,
            Some((ob, _, _)) if ob > b => return,
            _ => {}
        }
        if let Some((ob, count, covered)) = self.open.take() {
            let value =
                (covered >= self.bin() as f64 * 0.5).then(|| count * self.bin() as f64 / covered);
            self.finish(ob, value);
            let gap = b - ob - 1;
            if gap > RESET_AFTER_WEEKS * self.per_week() {
                *self = Self::new(self.config.clone());
            } else {
                for m in ob + 1..b {
                    self.finish(m, None);
                }
            }
        }
        self.open = Some((b, 0.0, 0.0));
    }

    /// Moves the clock: finishes the bins `now` has passed even when no sample came.
    pub fn tick(&mut self, now: f64) {
        if now.is_finite() {
            let b = (now / self.bin() as f64).floor() as i64;
            if self.open.is_some() {
                self.advance_to(b);
            }
        }
    }

    fn one_step(&self, k: i64) -> f64 {
        self.level
            + self.trend
            + self.day[k.rem_euclid(self.per_day()) as usize]
            + self.week[k.rem_euclid(self.per_week()) as usize]
    }

    fn naive(&self, k: i64, days: i64) -> Option<f64> {
        let back = k - days * self.per_day();
        // The history ring holds the last week; older bins are gone.
        let lb = self.last_bin?;
        if back > lb || lb - back >= self.per_week() {
            return None;
        }
        let v = self.history[back.rem_euclid(self.per_week()) as usize];
        (v >= 0.0).then_some(f64::from(v))
    }

    fn finish(&mut self, k: i64, value: Option<f64>) {
        let per_week = self.per_week();
        self.last_bin = Some(k);
        self.bins_seen += 1;
        self.history[k.rem_euclid(per_week) as usize] = value.map_or(MISSING, |v| v as f32);
        // Score the forecasts made for this bin.
        while let Some(&Pending {
            bin: pb,
            model: f,
            naive,
            day: nd,
            week: nw,
        }) = self.tracker.pending.front()
        {
            if pb > k {
                break;
            }
            self.tracker.pending.pop_front();
            if pb < k {
                continue;
            }
            if let Some(y) = value {
                let t = &mut self.tracker;
                let w = 0.5f64.powf(1.0 / self.day.len() as f64);
                t.recent.add(f, y, w);
                if let Some(n) = naive {
                    t.recent_naive.add(n, y, w);
                }
                t.recent_bins += 1;
                if let Some(d) = nd {
                    t.total.add(f, y, 1.0);
                    t.total_naive_day.add(d, y, 1.0);
                    t.bins += 1;
                }
                if let Some(wk) = nw {
                    t.total_week.add(f, y, 1.0);
                    t.total_naive_week.add(wk, y, 1.0);
                    t.week_bins += 1;
                }
            }
        }
        if !self.ready {
            self.try_start();
        } else if let Some(y) = value {
            self.update(k, ln1p(y));
        } else {
            self.level += self.trend;
            self.trend *= self.config.trend_damping;
            self.resid *= self.ar();
        }
        if self.ready {
            self.record_forecast(k);
        }
    }

    fn try_start(&mut self) {
        let (per_day, per_week) = (self.per_day(), self.per_week());
        let Some(k) = self.last_bin else { return };
        if self.bins_seen < per_day {
            return;
        }
        let values: Vec<Option<f64>> = (k - per_day + 1..=k)
            .map(|b| {
                let v = self.history[b.rem_euclid(per_week) as usize];
                (v >= 0.0).then(|| ln1p(f64::from(v)))
            })
            .collect();
        let seen: Vec<f64> = values.iter().flatten().copied().collect();
        if seen.len() * 2 < values.len() {
            return;
        }
        let level = seen.iter().sum::<f64>() / seen.len() as f64;
        for (i, v) in values.iter().enumerate() {
            let b = k - per_day + 1 + i as i64;
            self.day[b.rem_euclid(per_day) as usize] = v.map_or(0.0, |v| v - level);
        }
        // Missing slots: the mean of the nearest observed neighbours.
        for i in 0..per_day as usize {
            let b = (k - per_day + 1 + i as i64).rem_euclid(per_day) as usize;
            if values[i].is_none() {
                let n = per_day as usize;
                let prev = (1..n).find_map(|d| values[(i + n - d) % n]);
                let next = (1..n).find_map(|d| values[(i + d) % n]);
                let fill = match (prev, next) {
                    (Some(p), Some(q)) => (p + q) / 2.0,
                    (Some(p), None) | (None, Some(p)) => p,
                    (None, None) => level,
                };
                self.day[b] = fill - level;
            }
        }
        self.level = level;
        self.trend = 0.0;
        self.resid = 0.0;
        let var = seen.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f64>()
            / (seen.len().max(2) - 1) as f64;
        self.var = var.min(4.0);
        self.ready = true;
    }

    fn update(&mut self, k: i64, x: f64) {
        let (per_day, per_week) = (self.per_day(), self.per_week());
        let alpha = self.alpha();
        let e = x - self.one_step(k);
        let sigma = self.var.sqrt().max(0.05);
        let limit = self.config.clip_sigmas * sigma;
        let ec = e.clamp(-limit, limit);
        let c = &self.config;
        self.level += self.trend + alpha * ec;
        self.trend = c.trend_damping * self.trend + alpha * c.trend_gain * ec;
        let d = k.rem_euclid(per_day) as usize;
        let w = k.rem_euclid(per_week) as usize;
        self.day[d] += c.gamma_day * (1.0 - alpha) * ec;
        self.week[w] += c.gamma_week * (1.0 - alpha) * ec;
        // The AR term carries the raw deviation (a real surge is not an outlier to it), bounded.
        let e = e.clamp(-3.0 * limit, 3.0 * limit);
        let w = 1.0 - 0.5f64.powf(self.bin() as f64 / self.config.ar_half_life.max(1.0));
        self.ar_cov = (1.0 - w) * self.ar_cov + w * e * self.resid;
        self.ar_var = (1.0 - w) * self.ar_var + w * e * e;
        self.resid = e;
        self.var = 0.99 * self.var + 0.01 * ec * ec;
        if !(self.level.is_finite() && self.trend.is_finite() && self.var.is_finite()) {
            // Unreachable with clipped finite inputs; never let state go non-finite.
            *self = Self::new(self.config.clone());
        }
    }

    fn record_forecast(&mut self, k: i64) {
        let h = i64::from(self.config.error_horizon_bins.max(1));
        let target = k + h;
        let f = self.count_ahead(target, 0.0).unwrap_or(0.0);
        let nd = self.naive(target, 1);
        let nw = self.naive(target, 7);
        let naive = nw.or(nd);
        self.tracker.pending.push_back(Pending {
            bin: target,
            model: f,
            naive,
            day: nd,
            week: nw,
        });
        while self.tracker.pending.len() > (h as usize + 2) {
            self.tracker.pending.pop_front();
        }
    }

    /// Forecast arrivals in bin `b`, `sigmas` standard deviations above the mean (log space).
    fn count_ahead(&self, b: i64, sigmas: f64) -> Option<f64> {
        if !self.ready {
            return None;
        }
        let k = self.last_bin?;
        let h = (b - k).max(1);
        if h > self.per_week() {
            return None;
        }
        let damp = self.config.trend_damping;
        let trend_sum = if (damp - 1.0).abs() < 1e-12 {
            h as f64
        } else {
            damp * (1.0 - damp.powi(h as i32)) / (1.0 - damp)
        };
        let x = self.level
            + self.trend * trend_sum
            + self.day[b.rem_euclid(self.per_day()) as usize]
            + self.week[b.rem_euclid(self.per_week()) as usize]
            + self.resid * self.ar().powi(h as i32);
        // The lognormal mean correction is capped: on an intermittent series (hours of nothing,
        // then thousands) the log-space variance is huge and exp(σ²/2) would multiply every
        // forecast by orders of magnitude.
        let var = self.var.min(MAX_VAR);
        let y = (x + var / 2.0 + sigmas * var.sqrt()).min(60.0).exp_m1();
        Some(y.max(0.0))
    }

    /// Forecast arrival rate (per second) at instant `t`: the mean of `t`'s bin. `None` before
    /// the forecaster is ready or beyond a week ahead.
    pub fn rate_at(&self, t: f64) -> Option<f64> {
        self.rate_band_at(t, 0.0)
    }

    /// Like [`Forecaster::rate_at`], `sigmas` standard deviations of the recent one-step error
    /// above the mean (log space): a cautious forecast for capacity.
    pub fn rate_band_at(&self, t: f64, sigmas: f64) -> Option<f64> {
        if !t.is_finite() {
            return None;
        }
        let b = (t / self.bin() as f64).floor() as i64;
        self.count_ahead(b, sigmas).map(|c| c / self.bin() as f64)
    }

    /// The largest forecast rate over the bins of `[from, to]`.
    pub fn max_rate_between(&self, from: f64, to: f64, sigmas: f64) -> Option<f64> {
        if !(from.is_finite() && to.is_finite()) {
            return None;
        }
        let bin = self.bin() as f64;
        let b0 = (from / bin).floor() as i64;
        let b1 = (to.max(from) / bin).floor() as i64;
        (b0..=b1.min(b0 + self.per_week()))
            .filter_map(|b| self.count_ahead(b, sigmas))
            // Less than one task expected in a bin is no reason to hold a replica: without
            // this, the lognormal tail of an empty night would keep one GPU up forever.
            .map(|c| if c < MIN_TASKS_PER_BIN { 0.0 } else { c / bin })
            .reduce(f64::max)
    }

    /// Error at the lead time, rolling and cumulative, with the seasonal-naive baselines.
    pub fn error(&self) -> ForecastError {
        let t = &self.tracker;
        ForecastError {
            recent: t.recent.score(t.recent_bins),
            recent_naive: t.recent_naive.score(t.recent_bins),
            total: t.total.score(t.bins),
            total_naive_day: t.total_naive_day.score(t.bins),
            total_naive_week: t.total_naive_week.score(t.week_bins),
            total_on_week_bins: t.total_week.score(t.week_bins),
        }
    }
}

/// The forecaster against seasonal-naive at one lead time over a whole series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BacktestReport {
    pub bin_seconds: u32,
    pub horizon_bins: u32,
    /// The model and same-time-yesterday, on every bin after the first day.
    pub model: Score,
    pub naive_day: Score,
    /// The model and same-time-last-week, on the bins after the first week.
    pub model_week_bins: Option<Score>,
    pub naive_week: Option<Score>,
}

/// Feeds `samples` (`(from, to, arrivals)`, ascending) through a forecaster and reports its
/// error at `lead_seconds` against seasonal-naive. `None` when the series is shorter than
/// two days (nothing to score).
pub fn backtest(
    samples: impl IntoIterator<Item = (f64, f64, f64)>,
    bin_seconds: u32,
    lead_seconds: f64,
) -> Option<BacktestReport> {
    let config = ForecastConfig::for_lead(bin_seconds, lead_seconds);
    let mut f = Forecaster::new(config);
    let mut end = f64::NEG_INFINITY;
    for (from, to, n) in samples {
        f.observe(from, to, n);
        end = end.max(to);
    }
    // Finish the last bin.
    f.tick(end + f64::from(bin_seconds));
    let e = f.error();
    Some(BacktestReport {
        bin_seconds: f.config.valid_bin() as u32,
        horizon_bins: f.config.error_horizon_bins,
        model: e.total?,
        naive_day: e.total_naive_day?,
        model_week_bins: e.total_on_week_bins,
        naive_week: e.total_naive_week,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean daily + weekly pattern with multiplicative noise from a fixed LCG.
    fn synthetic(days: i64, bin: i64) -> Vec<(f64, f64, f64)> {
        let mut seed = 42u64;
        let mut noise = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2
        };
        (0..days * DAY / bin)
            .map(|k| {
                let t = (k * bin) as f64;
                let hour = (t % 86_400.0) / 3600.0;
                let weekday = ((t / 86_400.0) as i64 + 4) % 7; // 1970-01-01 was a Thursday
                let daily = 50.0 + 400.0 * (-((hour - 13.0) / 3.5).powi(2)).exp();
                let weekly = if weekday == 0 || weekday == 6 {
                    0.4
                } else {
                    1.0
                };
                // Each day's level wanders (a busy Tuesday, a quiet Friday) and the deviation
                // persists for hours: what a same-time-last-week forecast cannot know.
                let day_n = (t / 86_400.0) as i64;
                let level = 1.0 + 0.25 * ((day_n as f64 * 2.1).sin() * (hour / 24.0 + 0.5));
                let y = daily * weekly * level * (1.0 + noise());
                (t, t + bin as f64, y)
            })
            .collect()
    }

    #[test]
    fn stays_out_until_one_full_day_then_forecasts_the_profile() {
        let mut f = Forecaster::new(ForecastConfig::default());
        let data = synthetic(3, 300);
        for (i, (a, b, n)) in data.iter().enumerate() {
            f.observe(*a, *b, *n);
            if i < 288 {
                assert!(!f.ready() && f.rate_at(*b).is_none(), "bin {i}");
            }
        }
        assert!(f.ready());
        // Day 4, 13:00 (a Sunday: 1970-01-04): weekend dip not yet learned, but the level
        // and AR follow; the peak is still well above the trough.
        let peak = f.rate_at(3.0 * 86_400.0 + 13.0 * 3600.0).unwrap();
        let trough = f.rate_at(3.0 * 86_400.0 + 3.0 * 3600.0).unwrap();
        assert!(peak > 3.0 * trough, "{peak} {trough}");
    }

    #[test]
    fn beats_seasonal_naive_on_a_noisy_seasonal_series() {
        let r = backtest(synthetic(28, 300), 300, 600.0).unwrap();
        assert!(r.model.mape < r.naive_day.mape, "{r:?}");
        let (mw, nw) = (r.model_week_bins.unwrap(), r.naive_week.unwrap());
        assert!(mw.mape < nw.mape, "{r:?}");
        assert!(mw.wape < nw.wape, "{r:?}");
    }

    #[test]
    fn missing_bins_and_gaps_do_not_break_it() {
        let mut f = Forecaster::new(ForecastConfig::default());
        for (i, (a, b, n)) in synthetic(10, 300).into_iter().enumerate() {
            // Every third hour missing, and a two-day outage on days 5-6.
            let hour = i / 12;
            let day = i / 288;
            if hour % 3 == 0 || day == 5 || day == 6 {
                continue;
            }
            f.observe(a, b, n);
        }
        assert!(f.ready());
        let r = f.rate_at(10.0 * 86_400.0 + 13.0 * 3600.0).unwrap();
        assert!(r.is_finite() && r > 0.0 && r < 10.0, "{r}");
    }

    #[test]
    fn clock_jumps_are_dropped_and_long_gaps_restart_learning() {
        let mut f = Forecaster::new(ForecastConfig::default());
        for (a, b, n) in synthetic(2, 300) {
            f.observe(a, b, n);
        }
        assert!(f.ready());
        f.observe(1000.0, 1300.0, 1e9);
        assert_eq!(f.dropped_samples, 1);
        // Ten weeks later.
        let later = 2.0 * 86_400.0 + 70.0 * 86_400.0;
        f.observe(later, later + 300.0, 5.0);
        f.tick(later + 600.0);
        assert!(!f.ready());
    }

    #[test]
    fn zeros_and_bursts_stay_finite_and_bounded() {
        let mut f = Forecaster::new(ForecastConfig::default());
        for k in 0..(4 * 288) {
            let t = (k * 300) as f64;
            let n = if k % 97 == 0 { 1e7 } else { 0.0 };
            f.observe(t, t + 300.0, n);
            if let Some(r) = f.rate_at(t + 600.0) {
                assert!(r.is_finite() && (0.0..1e7).contains(&r), "{r}");
            }
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut f = Forecaster::new(ForecastConfig::default());
        for (a, b, n) in synthetic(2, 300) {
            f.observe(a, b, n);
        }
        let json = serde_json::to_string(&f).unwrap();
        let back: Forecaster = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.rate_at(2.0 * 86_400.0 + 600.0),
            f.rate_at(2.0 * 86_400.0 + 600.0)
        );
        assert!(json.len() < 200_000, "{}", json.len());
    }
}
