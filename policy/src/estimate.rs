//! Arrival rate λ and service time S from a queue's readings.
//!
//! A reading is `{at, waiting, in_flight, produced_total?, consumed_total?}`: Kafka gives exact
//! counters (log-end and committed offsets); Celery on Redis and SQS give only depths. Between
//! two readings, with B = waiting + in flight:
//!
//! - **arrivals** = Δproduced when the counter exists; else ΔB + completions, where completions
//!   are Δconsumed when that counter exists, else Little's law `mean in-flight × Δt / S` when S
//!   is known, else the backlog decrease (a lower bound); never below 0.
//! - **λ** = arrivals over the readings of the last `rate_window` seconds / the time they cover.
//!   It is exactly 0 after a window without arrivals (so an idle queue can scale to zero), and
//!   unknown (`None`) after a gap — then the policy works on the backlog alone (reactive).
//! - **S** (when `serviceTimeSeconds` is not given) by Little's law, S = L / X with L the mean
//!   number in flight and X the completion rate: with a consumed counter, over the recent
//!   readings; with depths only, over *drain runs*: maximal stretches of readings during which
//!   tasks were waiting (so the workers were saturated), work was in flight, and the backlog
//!   never rose. Over a run, the fall of the backlog is taken as the completions and the mean in
//!   flight × its duration as the busy time. Whole runs, not single intervals that happened to
//!   fall, are used: picking only the intervals with a completion would bias S low by the
//!   ratio of poll interval to time between completions. Arrivals during a run hide
//!   completions, so the estimate errs high — towards more replicas, not fewer. It assumes
//!   `in_flight` counts tasks being worked on (Celery with `task_acks_late`); prefetched tasks
//!   also count, which again errs high.
//!
//! Robustness: a reading older than the last (clock jump back) or after a gap longer than
//! `max_gap` restarts the rates from that reading; a counter that goes down (broker restart,
//! topic or queue deleted and recreated) gives no counter sample for that interval; a backlog
//! that vanishes with nothing in flight (queue deleted) gives no service-time sample. λ and S are
//! clamped to finite bounds. Memory is bounded (at most [`MAX_INTERVALS`] and [`MAX_DRAINS`]
//! entries).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Readings kept for the rate window, at most.
pub const MAX_INTERVALS: usize = 4096;
/// Drain intervals kept for the service time, at most.
pub const MAX_DRAINS: usize = 64;

/// One reading of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Unix seconds.
    pub at: f64,
    pub waiting: u64,
    pub in_flight: u64,
    /// Messages ever produced (Kafka: sum of log-end offsets), when the backend has it.
    pub produced_total: Option<u64>,
    /// Messages ever completed (Kafka: sum of committed offsets), when the backend has it.
    pub consumed_total: Option<u64>,
}

impl Observation {
    /// A depth-only reading (Celery, Redis lists, SQS).
    pub fn depth(at: f64, waiting: u64, in_flight: u64) -> Self {
        Self {
            at,
            waiting,
            in_flight,
            produced_total: None,
            consumed_total: None,
        }
    }

    pub fn backlog(&self) -> u64 {
        self.waiting.saturating_add(self.in_flight)
    }
}

/// The estimator's knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorConfig {
    /// Seconds of readings λ is computed over.
    pub rate_window: f64,
    /// A gap between readings longer than this restarts the rates.
    pub max_gap: f64,
    /// Declared service time (`serviceTimeSeconds`), used to infer completions from depths.
    pub service_time: Option<f64>,
    /// Bounds on a learned service time, seconds.
    pub service_time_bounds: (f64, f64),
    /// Bound on λ, tasks per second.
    pub max_rate: f64,
    /// Completions a learned service time needs before it is used.
    pub min_completions: f64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        Self {
            rate_window: 120.0,
            max_gap: 300.0,
            service_time: None,
            service_time_bounds: (0.01, 86_400.0),
            max_rate: 1.0e6,
            min_completions: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Interval {
    end: f64,
    secs: f64,
    arrivals: f64,
    /// Mean in flight × seconds, and completions, when completions are counted exactly.
    busy: f64,
    completions: Option<f64>,
}

/// Arrivals derived for one interval between readings, for the forecaster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalSample {
    pub from: f64,
    pub to: f64,
    pub arrivals: f64,
}

/// What the estimator knows now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// When the latest reading was taken (unix seconds).
    pub at: f64,
    /// Waiting + in flight at the latest reading.
    pub backlog: u64,
    /// Tasks per second; `None` when not enough recent readings (then: reactive).
    pub arrival_rate: Option<f64>,
    /// Learned seconds per task; `None` until enough completions were seen.
    pub service_time: Option<f64>,
}

/// Per-queue estimator state; serialisable so it can be shared and survive restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimator {
    config: EstimatorConfig,
    last: Option<Observation>,
    intervals: VecDeque<Interval>,
    /// (in flight × seconds, tasks drained) of recent drain runs.
    drains: VecDeque<(f64, f64)>,
    /// The drain run in progress.
    #[serde(default)]
    run: Option<(f64, f64)>,
}

fn finite_nonneg(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

impl Estimator {
    pub fn new(config: EstimatorConfig) -> Self {
        Self {
            config,
            last: None,
            intervals: VecDeque::new(),
            drains: VecDeque::new(),
            run: None,
        }
    }

    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// The latest reading.
    pub fn last(&self) -> Option<&Observation> {
        self.last.as_ref()
    }

    /// Takes a reading; returns the arrivals derived since the previous one, if any.
    pub fn observe(&mut self, obs: Observation) -> Option<ArrivalSample> {
        if !obs.at.is_finite() {
            return None;
        }
        let Some(prev) = self.last else {
            self.last = Some(obs);
            return None;
        };
        let dt = obs.at - prev.at;
        if dt == 0.0 {
            // Same instant: keep the newer depths, no interval.
            self.last = Some(obs);
            return None;
        }
        if dt < 0.0 || dt > self.config.max_gap {
            // Clock jump or gap: the rates restart from this reading; what was learned about
            // the service time still holds.
            self.intervals.clear();
            self.close_run();
            self.last = Some(obs);
            return None;
        }
        self.last = Some(obs);
        let (b0, b1) = (prev.backlog() as f64, obs.backlog() as f64);
        let busy = (prev.in_flight as f64 + obs.in_flight as f64) / 2.0 * dt;
        let counted = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as f64),
            _ => None,
        };
        let produced = counted(prev.produced_total, obs.produced_total);
        let consumed = counted(prev.consumed_total, obs.consumed_total);
        let completions = consumed.unwrap_or_else(|| {
            match self.service_time_for_completions() {
                // Little's law; cannot complete more than was there plus what arrived, which
                // the max(0, …) below keeps consistent.
                Some(s) => busy / s,
                None => (b0 - b1).max(0.0),
            }
        });
        let arrivals = produced.unwrap_or_else(|| (b1 - b0 + completions).max(0.0));
        let arrivals = arrivals.min(self.config.max_rate * dt);
        // Depth-only drain run: saturated workers, backlog not rising.
        let draining = consumed.is_none()
            && b1 <= b0
            && prev.waiting > 0
            && obs.waiting > 0
            && prev.in_flight > 0
            && obs.in_flight > 0;
        if draining {
            let run = self.run.get_or_insert((0.0, 0.0));
            run.0 += busy;
            run.1 += b0 - b1;
        } else {
            self.close_run();
        }
        self.intervals.push_back(Interval {
            end: obs.at,
            secs: dt,
            arrivals,
            busy,
            completions: consumed,
        });
        let horizon = obs.at - self.config.rate_window;
        while self.intervals.len() > MAX_INTERVALS
            || self
                .intervals
                .front()
                .is_some_and(|i| i.end - i.secs < horizon)
                && self.intervals.len() > 1
        {
            self.intervals.pop_front();
        }
        Some(ArrivalSample {
            from: prev.at,
            to: obs.at,
            arrivals,
        })
    }

    fn close_run(&mut self) {
        if let Some(run) = self.run.take()
            && run.1 > 0.0
        {
            self.drains.push_back(run);
            while self.drains.len() > MAX_DRAINS {
                self.drains.pop_front();
            }
        }
    }

    fn service_time_for_completions(&self) -> Option<f64> {
        self.config
            .service_time
            .filter(|s| s.is_finite() && *s > 0.0)
            .or_else(|| self.learned_service_time())
    }

    /// λ over the rate window; `None` when the readings cover less than a tenth of it.
    pub fn arrival_rate(&self) -> Option<f64> {
        let secs: f64 = self.intervals.iter().map(|i| i.secs).sum();
        if secs <= 0.0 || secs < self.config.rate_window * 0.1 {
            return None;
        }
        let arrivals: f64 = self.intervals.iter().map(|i| i.arrivals).sum();
        Some(finite_nonneg(arrivals / secs).min(self.config.max_rate))
    }

    /// S learned by Little's law; `None` until `min_completions` were seen.
    pub fn learned_service_time(&self) -> Option<f64> {
        let (lo, hi) = self.config.service_time_bounds;
        // Exact completions (counters) win over drains.
        let (busy, done) = self
            .intervals
            .iter()
            .filter_map(|i| i.completions.map(|c| (i.busy, c)))
            .fold((0.0, 0.0), |(b, d), (bi, ci)| (b + bi, d + ci));
        let (busy, done) = if done >= self.config.min_completions {
            (busy, done)
        } else {
            self.drains
                .iter()
                .chain(self.run.iter())
                .fold((0.0, 0.0), |(b, d), (bi, di)| (b + bi, d + di))
        };
        if done < self.config.min_completions || busy <= 0.0 {
            return None;
        }
        let s = busy / done;
        s.is_finite().then(|| s.clamp(lo, hi))
    }

    /// What is known now; `None` before the first reading.
    pub fn estimate(&self) -> Option<Estimate> {
        let last = self.last?;
        Some(Estimate {
            at: last.at,
            backlog: last.backlog(),
            arrival_rate: self.arrival_rate(),
            service_time: self.learned_service_time(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> Estimator {
        Estimator::new(EstimatorConfig::default())
    }

    fn counters(at: f64, waiting: u64, produced: u64, consumed: u64) -> Observation {
        Observation {
            at,
            waiting,
            in_flight: 0,
            produced_total: Some(produced),
            consumed_total: Some(consumed),
        }
    }

    #[test]
    fn exact_counters_give_the_arrival_rate() {
        let mut e = est();
        for i in 0..=60u64 {
            e.observe(counters(1000.0 + i as f64 * 2.0, 3, 10 * i, 10 * i));
        }
        assert!((e.arrival_rate().unwrap() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn depth_growth_is_a_lower_bound_on_arrivals_without_counters() {
        let mut e = est();
        for i in 0..=60u64 {
            e.observe(Observation::depth(i as f64, 2 * i, 0));
        }
        assert!((e.arrival_rate().unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn service_time_is_learned_from_drains_by_littles_law() {
        // 4 tasks in flight, each taking 8 s: 0.5 completions/s; no arrivals.
        let mut e = est();
        let mut waiting = 200u64;
        for i in 0..=80u64 {
            e.observe(Observation::depth(i as f64 * 2.0, waiting, 4));
            waiting -= 1;
        }
        let s = e.learned_service_time().unwrap();
        assert!((s - 8.0).abs() < 1e-9, "{s}");
        // With S known, arrivals are inferred even while the backlog holds steady.
        // Nothing queued, four in flight, depth flat: completions are being replaced.
        let mut t = 160.0;
        for _ in 0..60 {
            t += 2.0;
            e.observe(Observation::depth(t, 0, 4));
        }
        // 59 of the 60 intervals in the window carry 1 arrival per 2 s (the first one is the
        // queue emptying).
        let r = e.arrival_rate().unwrap();
        assert!((r - 59.0 / 120.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn sparse_completions_between_fast_polls_do_not_bias_the_service_time_low() {
        // 2 workers, 10 s per task: one completion every 5 s, read every second; a long queue.
        let mut e = est();
        let mut waiting = 100u64;
        for i in 0..=200u64 {
            if i > 0 && i % 5 == 0 {
                waiting -= 1;
            }
            e.observe(Observation::depth(i as f64, waiting, 2));
        }
        let s = e.learned_service_time().unwrap();
        assert!((s - 10.0).abs() < 0.5, "{s}");
    }

    #[test]
    fn service_time_from_counters_uses_exact_completions() {
        let mut e = est();
        for i in 0..=30u64 {
            e.observe(Observation {
                at: i as f64,
                waiting: 50,
                in_flight: 6,
                produced_total: Some(2 * i),
                consumed_total: Some(2 * i),
            });
        }
        assert!((e.learned_service_time().unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn rates_go_to_exactly_zero_when_arrivals_stop() {
        let mut e = est();
        for i in 0..=30u64 {
            e.observe(counters(i as f64, 0, 5 * i, 5 * i));
        }
        assert!(e.arrival_rate().unwrap() > 0.0);
        for i in 31..=200u64 {
            e.observe(counters(i as f64, 0, 150, 150));
        }
        assert_eq!(e.arrival_rate(), Some(0.0));
    }

    #[test]
    fn gaps_and_clock_jumps_degrade_to_unknown_not_zero() {
        let mut e = est();
        for i in 0..=60u64 {
            e.observe(counters(i as f64, 9, 5 * i, 5 * i));
        }
        // A 10 minute gap: rate unknown, backlog still reported.
        e.observe(counters(660.0, 9, 400, 300));
        let now = e.estimate().unwrap();
        assert_eq!((now.arrival_rate, now.backlog), (None, 9));
        // A clock jump backwards also restarts.
        e.observe(counters(100.0, 9, 410, 310));
        assert_eq!(e.arrival_rate(), None);
        // And it recovers.
        for i in 1..=30u64 {
            e.observe(counters(100.0 + i as f64, 9, 410 + i, 310 + i));
        }
        assert!((e.arrival_rate().unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_counter_reset_or_recreated_queue_never_gives_negative_or_huge_rates() {
        let mut e = est();
        for i in 0..=30u64 {
            e.observe(counters(i as f64, 0, 1_000_000 + i, 1_000_000 + i));
        }
        // Topic recreated: offsets restart near 0.
        for i in 31..=60u64 {
            e.observe(counters(i as f64, 0, i - 31, i - 31));
        }
        let r = e.arrival_rate().unwrap();
        assert!((0.0..=1.0).contains(&r), "{r}");
        // Depth-only queue deleted with work in it: the vanished backlog is no drain sample.
        let mut e = est();
        e.observe(Observation::depth(0.0, 500, 8));
        e.observe(Observation::depth(1.0, 0, 0));
        assert_eq!(e.learned_service_time(), None);
        assert!(e.arrival_rate().is_none_or(|r| r.is_finite() && r >= 0.0));
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut e = est();
        for i in 0..=40u64 {
            e.observe(Observation::depth(i as f64, 100 - 2 * i, 3));
        }
        let json = serde_json::to_string(&e).unwrap();
        let back: Estimator = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_reading_sequence_gives_finite_bounded_estimates(
            steps in proptest::collection::vec(
                (-50.0f64..400.0, 0u64..1_000_000, 0u64..10_000,
                 proptest::option::of(0u64..u64::MAX / 2), proptest::option::of(0u64..u64::MAX / 2)),
                1..200),
        ) {
            let mut e = Estimator::new(EstimatorConfig::default());
            let mut t = 1.7e9;
            for (dt, w, f, p, c) in steps {
                t += dt;
                e.observe(Observation { at: t, waiting: w, in_flight: f, produced_total: p, consumed_total: c });
                let now = e.estimate().unwrap();
                prop_assert_eq!(now.backlog, w + f);
                if let Some(r) = now.arrival_rate {
                    prop_assert!(r.is_finite() && (0.0..=1.0e6).contains(&r));
                }
                if let Some(s) = now.service_time {
                    prop_assert!(s.is_finite() && (0.01..=86_400.0).contains(&s));
                }
            }
        }
    }
}
