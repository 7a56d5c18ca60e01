//! Planned mode (`metric: replicas`): its configuration, and the per-queue [`Planner`] that
//! joins the estimator, the forecast, the schedule and the policy. The scaler parses the
//! configuration from trigger metadata (`headroom_scaler::planner::parse`).
//!
//! Pure: readings and the clock are passed in, nothing here does I/O. The gRPC scaler keeps one
//! [`Planner`] per queue, feeds it every reading with [`Planner::observe`], answers KEDA with
//! [`Planner::decide`] and the Demand service with [`Planner::inputs`] and
//! [`Planner::forecast`]; [`Planner::state`] is what to persist (e.g. in Redis) and
//! [`Planner::with_state`] restores it.

use serde::{Deserialize, Serialize};

use crate::estimate::{Estimator, EstimatorConfig, Observation};
use crate::forecast::{DEFAULT_BIN_SECONDS, ForecastConfig, ForecastError, Forecaster};
use crate::policy::{Decision, Demand, PolicyConfig};
use crate::schedule::{Schedule, instant};

/// Default `leadTimeSeconds`: a GPU node's boot plus a large image pull
/// (`reference/provisioning.md`: 80-120 s boot, minutes of pull).
pub const DEFAULT_LEAD_TIME_SECONDS: f64 = 300.0;

/// How many standard deviations of recent forecast error above the (lognormal-corrected) mean
/// forecast the policy provisions for. 0: in the simulator a +1σ band cost 20-30 % more GPU
/// hours on the business-hours trace for no better p95; the backlog term covers the bins the
/// mean under-forecasts.
pub const FORECAST_BAND_SIGMAS: f64 = 0.0;

/// `forecast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ForecastMode {
    /// `off` (default): the answer follows the current demand and the schedule.
    #[default]
    Off,
    /// `seasonal`: a learned daily + weekly forecast of arrivals (see [`crate::forecast`]).
    Seasonal,
}

/// Planned mode's keys, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedConfig {
    /// `tasksPerReplica`, `serviceTimeSeconds`, `concurrency`, `drainSeconds`, `minReplicas`,
    /// `maxReplicas`.
    pub policy: PolicyConfig,
    /// `schedule` + `timezone` (default UTC): declared windows, applied `leadTimeSeconds` early.
    pub schedule: Option<Schedule>,
    /// `forecast` (default `off`).
    pub forecast: ForecastMode,
    /// `leadTimeSeconds` (default 300): how far ahead capacity must be asked for.
    pub lead_time_seconds: f64,
}

impl Default for PlannedConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig::default(),
            schedule: None,
            forecast: ForecastMode::Off,
            lead_time_seconds: DEFAULT_LEAD_TIME_SECONDS,
        }
    }
}

/// The inputs of the policy now, for the Demand service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DemandInputs {
    /// Unix seconds of the reading.
    pub at: f64,
    /// Waiting + in flight.
    pub backlog: u64,
    /// Arrivals per second; `None` when unknown (too few recent readings).
    pub arrival_rate: Option<f64>,
    /// Seconds per task used by the policy (declared, else learned).
    pub service_time: Option<f64>,
}

/// What [`Planner::state`] returns: everything learned, serialisable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerState {
    pub estimator: Estimator,
    pub forecaster: Option<Forecaster>,
}

/// One queue's planned-mode state: estimator, forecaster (when `forecast: seasonal`), and the
/// trigger's configuration.
#[derive(Debug, Clone)]
pub struct Planner {
    config: PlannedConfig,
    estimator: Estimator,
    forecaster: Option<Forecaster>,
}

impl Planner {
    pub fn new(config: PlannedConfig) -> Self {
        let estimator = Estimator::new(EstimatorConfig {
            service_time: config.policy.service_time,
            ..EstimatorConfig::default()
        });
        let forecaster = (config.forecast == ForecastMode::Seasonal).then(|| {
            Forecaster::new(ForecastConfig::for_lead(
                DEFAULT_BIN_SECONDS,
                config.lead_time_seconds,
            ))
        });
        Self {
            config,
            estimator,
            forecaster,
        }
    }

    /// A planner that continues from a persisted state. Parts that do not match the
    /// configuration (forecast turned on or off, another bin width) start fresh.
    pub fn with_state(config: PlannedConfig, state: PlannerState) -> Self {
        let mut p = Self::new(config);
        let mut est = state.estimator;
        if est.config().service_time == p.config.policy.service_time {
            std::mem::swap(&mut p.estimator, &mut est);
        }
        if let (Some(mine), Some(theirs)) = (&mut p.forecaster, state.forecaster)
            && theirs.config() == mine.config()
            && theirs.is_consistent()
        {
            *mine = theirs;
        }
        p
    }

    pub fn config(&self) -> &PlannedConfig {
        &self.config
    }

    pub fn state(&self) -> PlannerState {
        PlannerState {
            estimator: self.estimator.clone(),
            forecaster: self.forecaster.clone(),
        }
    }

    /// Takes a reading of the queue.
    pub fn observe(&mut self, obs: Observation) {
        let sample = self.estimator.observe(obs);
        if let Some(f) = &mut self.forecaster {
            if let Some(s) = sample {
                f.observe(s.from, s.to, s.arrivals);
            }
            f.tick(obs.at);
        }
    }

    /// Backlog, λ and S as the policy sees them; `None` before the first reading.
    pub fn inputs(&self) -> Option<DemandInputs> {
        let e = self.estimator.estimate()?;
        Some(DemandInputs {
            at: e.at,
            backlog: e.backlog,
            arrival_rate: e.arrival_rate,
            service_time: self.config.policy.service_time(e.service_time),
        })
    }

    fn demand_now(&self) -> Demand {
        match self.estimator.estimate() {
            Some(e) => Demand {
                backlog: e.backlog as f64,
                // Unknown rate (after a gap): the backlog alone drives the answer (reactive).
                arrival_rate: e.arrival_rate.unwrap_or(0.0),
                service_time: e.service_time,
            },
            None => Demand::default(),
        }
    }

    fn service_time(&self) -> Option<f64> {
        self.config
            .policy
            .service_time(self.estimator.learned_service_time())
    }

    /// The forecast rate over `[from, to]`, when the forecast is on and ready.
    fn forecast_rate(&self, from: f64, to: f64) -> Option<f64> {
        let f = self.forecaster.as_ref().filter(|f| f.ready())?;
        f.max_rate_between(from, to, FORECAST_BAND_SIGMAS)
    }

    /// The answer for KEDA at `now`: the largest of the current demand, the forecast over
    /// `[now, now + lead]` and the schedule windows open at `now` (applied `lead` early),
    /// within min/max. `active` is planned-mode activation.
    pub fn decide(&self, now: f64) -> Decision {
        let lead = self.config.lead_time_seconds;
        let policy = &self.config.policy;
        let ahead = self
            .forecast_rate(now, now + lead)
            .map(|rate| policy.replicas_ahead(rate, self.service_time()));
        let scheduled = self
            .config
            .schedule
            .as_ref()
            .and_then(|s| s.replicas_at(instant(now), lead.round() as i64));
        policy.decide(&self.demand_now(), ahead, scheduled)
    }

    /// `decide(now).desired`.
    pub fn desired_now(&self, now: f64) -> u32 {
        self.decide(now).desired
    }

    /// Planned-mode activation: a replica is needed now or within the lead time.
    pub fn active(&self, now: f64) -> bool {
        self.decide(now).active
    }

    /// What the answer is expected to be at `at` (≥ `now`), as known at `now`: the current
    /// backlog counts only at `now`; later, the forecast rate (or, without a ready forecast,
    /// the current rate) and the schedule, each over `[at, at + lead]`.
    pub fn desired_at(&self, now: f64, at: f64) -> u32 {
        if at <= now {
            return self.desired_now(now);
        }
        self.needed(now, at, self.config.lead_time_seconds)
    }

    fn needed(&self, now: f64, at: f64, lead: f64) -> u32 {
        let policy = &self.config.policy;
        let rate = self
            .forecast_rate(at, at + lead)
            .or_else(|| self.estimator.arrival_rate());
        let ahead = rate.map(|r| policy.replicas_ahead(r, self.service_time()));
        let scheduled = self
            .config
            .schedule
            .as_ref()
            .and_then(|s| s.replicas_at(instant(at), lead.round() as i64));
        let now_part = if at <= now {
            self.demand_now()
        } else {
            Demand::default()
        };
        policy.decide(&now_part, ahead, scheduled).desired
    }

    /// Replicas needed at each step `now, now + step, …, now + horizon`, with no lead applied
    /// (a consumer such as the provisioner applies its own): the current backlog at `now`, then
    /// the forecast (or current) rate and the schedule windows open at each instant. At most
    /// 10 000 points.
    pub fn forecast(&self, now: f64, horizon: f64, step: f64) -> Vec<(f64, u32)> {
        if !(now.is_finite() && horizon.is_finite() && step.is_finite()) || step <= 0.0 {
            return Vec::new();
        }
        let n = ((horizon.max(0.0) / step).floor() as usize).min(10_000);
        (0..=n)
            .map(|i| {
                let at = now + i as f64 * step;
                (at, self.needed(now, at, 0.0))
            })
            .collect()
    }

    /// The arrival rate (tasks per second) expected at `at`: the forecast's, or without a
    /// ready forecast the current estimate; `None` when neither is known.
    pub fn rate_at(&self, at: f64) -> Option<f64> {
        self.forecast_rate(at, at)
            .or_else(|| self.estimator.arrival_rate())
    }

    /// The forecaster's error at the lead time, when the forecast is on.
    pub fn forecast_error(&self) -> Option<ForecastError> {
        self.forecaster.as_ref().map(Forecaster::error)
    }

    /// Whether the forecast is on and has its full period of history.
    pub fn forecast_ready(&self) -> bool {
        self.forecaster.as_ref().is_some_and(Forecaster::ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planned mode's defaults with `edit` applied.
    fn planner(edit: impl FnOnce(&mut PlannedConfig)) -> Planner {
        let mut c = PlannedConfig::default();
        edit(&mut c);
        Planner::new(c)
    }

    #[test]
    fn backlog_and_rate_drive_the_answer_and_zero_means_idle() {
        let mut p = planner(|c| {
            c.policy.service_time = Some(10.0);
            c.policy.concurrency = 2;
        });
        assert_eq!(p.desired_now(0.0), 0);
        // 1 task/s arriving and kept up with: 5 replicas plus the backlog's share.
        for i in 0..=60u64 {
            p.observe(Observation {
                at: i as f64,
                waiting: 0,
                in_flight: 10,
                produced_total: Some(i),
                consumed_total: Some(i),
            });
        }
        let d = p.decide(60.0);
        // ((1 + 10/60) · 10) / 2 = 5.83 → 6.
        assert_eq!((d.desired, d.now, d.active), (6, 6, true));
        let i = p.inputs().unwrap();
        assert_eq!((i.backlog, i.service_time), (10, Some(10.0)));
        // Arrivals stop and the queue empties: back to zero, inactive.
        for i in 61..=300u64 {
            p.observe(Observation {
                at: i as f64,
                waiting: 0,
                in_flight: 0,
                produced_total: Some(60),
                consumed_total: Some(60),
            });
        }
        let d = p.decide(300.0);
        assert_eq!((d.desired, d.active), (0, false));
    }

    #[test]
    fn a_schedule_activates_lead_time_before_the_window() {
        let p = planner(|c| {
            c.schedule = Some(Schedule::parse("0 8 * * * for 1h = 4", None).unwrap());
            c.lead_time_seconds = 120.0;
        });
        let eight = 1_715_558_400.0 + 8.0 * 3600.0; // 2024-05-13 08:00 UTC
        assert!(!p.active(eight - 121.0));
        assert!(p.active(eight - 120.0));
        assert_eq!(p.desired_now(eight - 60.0), 4);
        let f = p.forecast(eight - 600.0, 1200.0, 300.0);
        let replicas: Vec<u32> = f.iter().map(|(_, r)| *r).collect();
        // No lead in the forecast: 0 until 08:00, then 4.
        assert_eq!(replicas, [0, 0, 4, 4, 4]);
    }

    #[test]
    fn a_learned_forecast_scales_from_zero_before_a_daily_burst() {
        // Every day 09:00-10:00 UTC, 2 tasks/s arrive; nothing otherwise. Exact counters.
        let mut p = planner(|c| {
            c.policy.service_time = Some(30.0);
            c.forecast = ForecastMode::Seasonal;
            c.lead_time_seconds = 600.0;
        });
        let day0 = 1_715_558_400.0; // 2024-05-13 00:00 UTC
        let mut produced = 0u64;
        let mut t = day0;
        let burst = |t: f64| {
            let h = (t - day0).rem_euclid(86_400.0) / 3600.0;
            (9.0..10.0).contains(&h)
        };
        while t < day0 + 2.0 * 86_400.0 + 8.0 * 3600.0 {
            if burst(t) {
                produced += 20;
            }
            p.observe(Observation {
                at: t,
                waiting: 0,
                in_flight: 0,
                produced_total: Some(produced),
                consumed_total: Some(produced),
            });
            t += 10.0;
        }
        assert!(p.forecast_ready());
        let nine = day0 + 2.0 * 86_400.0 + 9.0 * 3600.0;
        // Idle at 08:00 with nothing queued...
        assert!(!p.active(nine - 3600.0), "{:?}", p.decide(nine - 3600.0));
        // ...active ten minutes before the burst, with about its needs (2/s × 30 s = 60).
        let d = p.decide(nine - 600.0);
        assert!(d.active && d.desired >= 40, "{d:?}");
        assert!(p.desired_at(nine - 3600.0, nine - 600.0) >= 40);
    }

    #[test]
    fn state_survives_a_restart() {
        let mut p = planner(|c| {
            c.forecast = ForecastMode::Seasonal;
            c.policy.service_time = Some(5.0);
        });
        for i in 0..100u64 {
            p.observe(Observation::depth(i as f64 * 5.0, i, 1));
        }
        let json = serde_json::to_string(&p.state()).unwrap();
        let state: PlannerState = serde_json::from_str(&json).unwrap();
        let q = Planner::with_state(p.config().clone(), state);
        assert_eq!(q.decide(500.0), p.decide(500.0));
        assert_eq!(q.inputs(), p.inputs());
    }

    #[test]
    fn a_corrupt_stored_forecaster_is_dropped_instead_of_panicking() {
        let mut p = planner(|c| {
            c.forecast = ForecastMode::Seasonal;
            c.policy.service_time = Some(5.0);
        });
        for i in 0..100u64 {
            p.observe(Observation::depth(i as f64 * 5.0, i, 1));
        }
        let mut json: serde_json::Value = serde_json::to_value(p.state()).unwrap();
        // Tables of the wrong length: `day` empty (a modulo by zero) and `history` short.
        json["forecaster"]["day"] = serde_json::json!([]);
        json["forecaster"]["history"] = serde_json::json!([1.0]);
        let state: PlannerState = serde_json::from_value(json).unwrap();
        let mut q = Planner::with_state(p.config().clone(), state);
        // The forecaster started afresh; the estimator, which was fine, was kept.
        let fresh = Planner::new(p.config().clone()).state();
        assert_eq!(q.state().forecaster, fresh.forecaster);
        assert_eq!(q.state().estimator, p.state().estimator);
        q.observe(Observation::depth(600.0, 3, 1));
        let _ = q.decide(700.0);
        let _ = q.desired_at(700.0, 1300.0);
    }
}
