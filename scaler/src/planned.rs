//! Planned mode's state in the running scaler: one [`Planner`] per (queue, planned-mode
//! configuration), fed every distinct reading of its queue once, answering KEDA and the Demand
//! service from the same history.
//!
//! History is kept in memory. It survives as long as the process; a restarted scaler starts
//! learning again (the forecast stays out of the answer until it has a full period, so the
//! answer degrades to reactive, never to zero).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::estimate::Observation;
use crate::planner::{PlannedConfig, Planner, PlannerState};
use crate::policy::Decision;
use crate::sources::{Depth, Query};

/// Unix seconds of a wall-clock time.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A queue and the Debug form of a planned-mode configuration.
type PlanKey = (Query, String);

#[derive(Debug)]
struct Entry {
    /// Stable across processes: where the history is persisted.
    store_key: String,
    planner: Planner,
    /// Unix seconds of the last reading observed, so a cached reading is observed once.
    last_reading: f64,
    last_used: Instant,
}

/// The planners of every planned-mode trigger this scaler has answered.
#[derive(Debug, Default)]
pub struct Plans {
    entries: Mutex<HashMap<PlanKey, Arc<Mutex<Entry>>>>,
}

/// What planned mode answers at one instant.
#[derive(Debug, Clone)]
pub struct PlannedAnswer {
    pub decision: Decision,
    /// Replicas wanted per step over the horizon asked for (empty when none was asked).
    pub forecast: Vec<(f64, u32)>,
    /// The arrival rate expected at each of those steps (0 when unknown).
    pub forecast_rates: Vec<f64>,
    pub inputs: Option<crate::planner::DemandInputs>,
    /// `off`, `learning` or `ready`.
    pub forecast_state: &'static str,
    /// Recent forecast error (weighted absolute percentage), when known.
    pub forecast_error: Option<f64>,
}

impl Plans {
    fn entry(&self, query: &Query, config: &PlannedConfig) -> Arc<Mutex<Entry>> {
        // The configuration's Debug form identifies it: two triggers on one queue with the same
        // planned keys share a planner (and its history).
        let key = (query.clone(), format!("{config:?}"));
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let store_key = store_key(&key);
        entries
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Entry {
                    store_key,
                    planner: Planner::new(config.clone()),
                    last_reading: f64::NEG_INFINITY,
                    last_used: Instant::now(),
                }))
            })
            .clone()
    }

    /// Observes `depth` read at `read_at` (once per distinct reading) and answers at `now`;
    /// with `horizon` and `step` (seconds), also the forecast of replicas per step.
    pub fn answer(
        &self,
        query: &Query,
        config: &PlannedConfig,
        depth: &Depth,
        read_at: SystemTime,
        now: SystemTime,
        forecast: Option<(f64, f64)>,
    ) -> PlannedAnswer {
        let entry = self.entry(query, config);
        let mut e = entry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = unix_seconds(read_at);
        if at > e.last_reading {
            e.planner
                .observe(Observation::depth(at, depth.waiting, depth.in_flight));
            e.last_reading = at;
        }
        e.last_used = Instant::now();
        let now = unix_seconds(now).max(at);
        let p = &e.planner;
        let forecast_state = match (config.forecast, p.forecast_ready()) {
            (crate::planner::ForecastMode::Off, _) => "off",
            (_, false) => "learning",
            (_, true) => "ready",
        };
        let forecast = forecast
            .map(|(horizon, step)| p.forecast(now, horizon, step))
            .unwrap_or_default();
        let forecast_rates = forecast
            .iter()
            .map(|(at, _)| p.rate_at(*at).unwrap_or(0.0))
            .collect();
        PlannedAnswer {
            decision: p.decide(now),
            forecast,
            forecast_rates,
            inputs: p.inputs(),
            forecast_state,
            forecast_error: p
                .forecast_error()
                .and_then(|e| e.recent)
                .map(|s| s.wape)
                .filter(|w| w.is_finite()),
        }
    }

    /// Whether a planner exists for this queue and configuration (no history to load).
    pub fn contains(&self, query: &Query, config: &PlannedConfig) -> bool {
        let key = (query.clone(), format!("{config:?}"));
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&key)
    }

    /// The persistence key of a queue and configuration's history.
    pub fn key_of(query: &Query, config: &PlannedConfig) -> String {
        store_key(&(query.clone(), format!("{config:?}")))
    }

    /// Starts the planner of this queue and configuration from a persisted state (a restarted
    /// scaler, or another replica's history), unless it already has one.
    pub fn restore(&self, query: &Query, config: &PlannedConfig, state: PlannerState) {
        let key = (query.clone(), format!("{config:?}"));
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.contains_key(&key) {
            return;
        }
        let last_reading = state
            .estimator
            .estimate()
            .map(|e| e.at)
            .unwrap_or(f64::NEG_INFINITY);
        let store_key = store_key(&key);
        entries.insert(
            key,
            Arc::new(Mutex::new(Entry {
                store_key,
                planner: Planner::with_state(config.clone(), state),
                last_reading,
                last_used: Instant::now(),
            })),
        );
    }

    /// Every planner's state with its persistence key, to save.
    pub fn snapshot(&self) -> Vec<(String, PlannerState)> {
        let entries: Vec<Arc<Mutex<Entry>>> = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        entries
            .iter()
            .filter_map(|e| {
                e.lock()
                    .ok()
                    .map(|e| (e.store_key.clone(), e.planner.state()))
            })
            .collect()
    }

    /// Forgets planners nobody asked about for `idle`.
    pub fn sweep(&self, idle: Duration) -> usize {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, e| {
            e.lock()
                .map(|e| e.last_used.elapsed() < idle)
                .unwrap_or(false)
        });
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stable name for a queue + configuration: a hash, so no endpoint, queue name or credential
/// appears in the store's keys.
/// The persisted key of a queue's history: the queue's identity ([`crate::keys`]), not the
/// configuration's — a configuration that changed keeps what still fits (see
/// [`Planner::with_state`]) instead of orphaning the history.
fn store_key(key: &PlanKey) -> String {
    format!(
        "planner:v{}:{:016x}",
        crate::keys::KEY_VERSION,
        key.0.identity().hash()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::Trigger;

    fn trigger(pairs: &[(&str, &str)]) -> Trigger {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Trigger::parse(&m).unwrap()
    }

    #[test]
    fn a_cached_reading_is_observed_once_and_backlog_drives_the_answer() {
        let t = trigger(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("metric", "replicas"),
            ("tasksPerReplica", "4"),
        ]);
        let plans = Plans::default();
        let q = t.query();
        let c = t.planned().unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = Depth::simple(10, 2);
        let a = plans.answer(&q, c, &d, t0, t0, Some((60.0, 30.0)));
        assert_eq!(a.decision.desired, 3, "ceil(12 / 4) without a service time");
        assert!(a.decision.active);
        assert_eq!(a.forecast.len(), 3);
        assert_eq!(a.forecast_state, "off");
        // The same reading again, later: not a second observation.
        let a = plans.answer(&q, c, &d, t0, t0 + Duration::from_secs(1), None);
        assert_eq!(a.decision.desired, 3);
        assert_eq!(plans.len(), 1);
        let empty = Depth::default();
        let t1 = t0 + Duration::from_secs(30);
        let a = plans.answer(&q, c, &empty, t1, t1, None);
        assert_eq!(a.decision.desired, 0);
        assert!(!a.decision.active);
    }

    #[test]
    fn a_restored_history_continues_where_it_was_saved() {
        let t = trigger(&[
            ("source", "celery"),
            ("address", "r:1"),
            ("metric", "replicas"),
            ("tasksPerReplica", "4"),
        ]);
        let (q, c) = (t.query(), t.planned().unwrap());
        let plans = Plans::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        plans.answer(&q, c, &Depth::simple(8, 0), t0, t0, None);
        let saved = plans.snapshot();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].0, Plans::key_of(&q, c));
        assert!(!saved[0].0.contains("r:1"), "no endpoint in the key");

        let other = Plans::default();
        other.restore(&q, c, saved[0].1.clone());
        assert!(other.contains(&q, c));
        // The same reading again is not observed twice; the restored backlog answers.
        let a = other.answer(&q, c, &Depth::simple(8, 0), t0, t0, None);
        assert_eq!(a.decision.desired, 2);
        assert_eq!(other.snapshot()[0].1, saved[0].1);
    }

    #[test]
    fn an_open_schedule_window_activates_an_empty_queue_ahead_of_time() {
        let t = trigger(&[
            ("source", "redis-list"),
            ("address", "r:1"),
            ("listName", "jobs"),
            ("metric", "replicas"),
            ("schedule", "0 8 * * * for 1h = 6"),
            ("leadTimeSeconds", "300"),
        ]);
        let plans = Plans::default();
        // 2023-11-14 07:56 UTC: four minutes before the window, within the lead time.
        let at = UNIX_EPOCH + Duration::from_secs(1_699_948_560);
        let a = plans.answer(
            &t.query(),
            t.planned().unwrap(),
            &Depth::default(),
            at,
            at,
            None,
        );
        assert_eq!(a.decision.desired, 6);
        assert!(a.decision.active);
    }

    #[test]
    fn the_history_key_is_the_queues_identity_pinned_across_configurations() {
        let a = trigger(&[
            ("source", "redis-list"),
            ("address", "r:6379"),
            ("listName", "jobs"),
            ("metric", "replicas"),
        ]);
        let b = trigger(&[
            ("source", "redis-list"),
            ("address", "r:6379"),
            ("listName", "jobs"),
            ("metric", "replicas"),
            ("serviceTimeSeconds", "30"),
            ("password", "not-in-the-key"),
        ]);
        let key = Plans::key_of(&a.query(), a.planned().unwrap());
        // Pinned: a change orphans every stored history (bump keys::KEY_VERSION instead).
        assert_eq!(key, "planner:v1:56e2e517eca5c67f");
        assert_eq!(key, Plans::key_of(&b.query(), b.planned().unwrap()));
    }
}
