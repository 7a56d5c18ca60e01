//! Planned mode's keys: trigger metadata parsed into a [`PlannedConfig`]. The planner itself is
//! pure and lives in [`headroom_policy::planner`], re-exported here.

pub use headroom_policy::planner::*;

use crate::metadata::{Key, Problem, Reader};
use crate::policy::PolicyConfig;
use crate::schedule::Schedule;

/// Every key planned mode reads in a trigger (the per-replica target is the source's own:
/// `tasksPerReplica`, `listLength`, `queueLength`, `lagThreshold`).
pub const KEYS: &[Key] = &[
    Key::optional(
        "serviceTimeSeconds",
        "learned",
        "seconds one task takes on one worker slot (> 0); learned from the observed drain when not given",
    ),
    Key::optional(
        "concurrency",
        "1",
        "tasks one replica processes at once (≥ 1)",
    ),
    Key::optional(
        "drainSeconds",
        "60",
        "how fast a backlog should clear (> 0)",
    ),
    Key::optional(
        "leadTimeSeconds",
        "300",
        "how far ahead capacity must be asked for: node boot + image pull + start (0–86400)",
    ),
    Key::optional(
        "schedule",
        "none",
        "`;`-separated windows `<cron start> for <duration> = <replicas>`; five cron fields (lists, ranges, steps, names, `@daily` …), durations like `10h`, `90m`, `1h30m` (≤ 31 days). A window that overlaps itself (`0 * * * * for 2h`) is refused; different windows may overlap and the largest wins. KEDA's `cron` trigger `start/end/desiredReplicas` is `<start> for <end − start> = <desiredReplicas>`",
    ),
    Key::optional(
        "timezone",
        "`UTC`",
        "IANA name for the cron fields. A start in a skipped hour (spring forward) opens at the jump; a repeated hour (fall back) opens once",
    ),
    Key::optional(
        "forecast",
        "`off`",
        "`seasonal`: a learned daily + weekly model of arrivals; stays out of the answer until it has a full period",
    ),
    Key::optional("minReplicas", "0", "lower bound on the answer"),
    Key::optional("maxReplicas", "100", "upper bound on the answer"),
];

fn positive(r: &mut Reader<'_>, key: &str) -> Option<f64> {
    if !r.contains(key) {
        return None;
    }
    let v = r.float(key, f64::NAN);
    if v.is_nan() {
        return None; // already reported
    }
    if v <= 0.0 {
        r.problem(Problem::Invalid {
            key: key.into(),
            value: Some(v.to_string()),
            expected: "a number > 0".into(),
        });
        return None;
    }
    Some(v)
}

/// Reads planned mode's keys, recording every problem in `r` (each naming its key).
///
/// `tasks_per_replica`: when the source already owns a per-replica target (Celery's
/// `tasksPerReplica`, a Redis list's `listLength`), pass it and this parser leaves the key
/// alone; with `None` it reads `tasksPerReplica` itself (default 5, > 0).
///
/// Returns `None` only when a problem was recorded.
pub fn parse(r: &mut Reader<'_>, tasks_per_replica: Option<f64>) -> Option<PlannedConfig> {
    let before = r.has_problems();
    let tasks_per_replica = match tasks_per_replica {
        Some(t) => t,
        None => {
            let t = r.int_at_least("tasksPerReplica", 5, 1);
            t as f64
        }
    };
    let service_time = positive(r, "serviceTimeSeconds");
    let concurrency = r.int_at_least("concurrency", 1, 1);
    let concurrency = u32::try_from(concurrency).unwrap_or_else(|_| {
        r.problem(Problem::Invalid {
            key: "concurrency".into(),
            value: Some(concurrency.to_string()),
            expected: "an integer ≤ 4294967295".into(),
        });
        1
    });
    let drain_seconds = positive(r, "drainSeconds").unwrap_or(60.0);
    let lead = if r.contains("leadTimeSeconds") {
        let v = r.float("leadTimeSeconds", f64::NAN);
        if !v.is_nan() && !(0.0..=86_400.0).contains(&v) {
            r.problem(Problem::Invalid {
                key: "leadTimeSeconds".into(),
                value: Some(v.to_string()),
                expected: "a number of seconds from 0 to 86400".into(),
            });
        }
        if v.is_nan() {
            DEFAULT_LEAD_TIME_SECONDS
        } else {
            v.clamp(0.0, 86_400.0)
        }
    } else {
        DEFAULT_LEAD_TIME_SECONDS
    };
    let min = r.int_at_least("minReplicas", 0, 0);
    let max = r.int_at_least("maxReplicas", 100, 1);
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    let (min_replicas, max_replicas) = (to_u32(min), to_u32(max));
    if min_replicas > max_replicas {
        r.problem(Problem::Conflict {
            keys: vec!["minReplicas".into(), "maxReplicas".into()],
            reason: format!("minReplicas {min_replicas} is above maxReplicas {max_replicas}"),
        });
    }
    let forecast = match r.string("forecast").as_deref() {
        None | Some("off") => ForecastMode::Off,
        Some("seasonal") => ForecastMode::Seasonal,
        Some(other) => {
            r.problem(Problem::Invalid {
                key: "forecast".into(),
                value: Some(other.into()),
                expected: "`off` or `seasonal`".into(),
            });
            ForecastMode::Off
        }
    };
    let timezone = r.string("timezone");
    let schedule = match r.string("schedule") {
        None => {
            if timezone.is_some() {
                r.problem(Problem::Conflict {
                    keys: vec!["timezone".into(), "schedule".into()],
                    reason: "`timezone` only applies to a `schedule`".into(),
                });
            }
            None
        }
        Some(text) => match Schedule::parse(&text, timezone.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                let value = match e.key() {
                    "timezone" => timezone.clone(),
                    _ => Some(text.clone()),
                };
                r.problem(Problem::Invalid {
                    key: e.key().into(),
                    value,
                    expected: e.expected(),
                });
                None
            }
        },
    };
    if r.has_problems() && !before {
        return None;
    }
    Some(PlannedConfig {
        policy: PolicyConfig {
            tasks_per_replica,
            service_time,
            concurrency,
            drain_seconds,
            min_replicas,
            max_replicas,
        },
        schedule,
        forecast,
        lead_time_seconds: lead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::md;

    fn parse(pairs: &[(&str, &str)]) -> Result<PlannedConfig, crate::metadata::MetadataError> {
        let m = md(pairs);
        let mut r = Reader::new(&m);
        let c = super::parse(&mut r, None);
        r.finish(&|_| None)?;
        Ok(c.unwrap())
    }

    #[test]
    fn defaults_and_every_key_parse() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, PlannedConfig::default());
        let c = parse(&[
            ("tasksPerReplica", "3"),
            ("serviceTimeSeconds", "12.5"),
            ("concurrency", "4"),
            ("drainSeconds", "30"),
            ("schedule", "0 8 * * 1-5 for 10h = 20"),
            ("timezone", "Europe/Berlin"),
            ("forecast", "seasonal"),
            ("leadTimeSeconds", "240"),
            ("minReplicas", "1"),
            ("maxReplicas", "40"),
        ])
        .unwrap();
        assert_eq!(c.policy.tasks_per_replica, 3.0);
        assert_eq!(c.policy.service_time, Some(12.5));
        assert_eq!(
            (
                c.policy.concurrency,
                c.policy.min_replicas,
                c.policy.max_replicas
            ),
            (4, 1, 40)
        );
        assert_eq!(c.forecast, ForecastMode::Seasonal);
        assert_eq!(c.lead_time_seconds, 240.0);
        assert_eq!(c.schedule.unwrap().timezone.name(), "Europe/Berlin");
    }

    #[test]
    fn nonsense_is_refused_naming_every_key() {
        let err = parse(&[
            ("serviceTimeSeconds", "-1"),
            ("concurrency", "0"),
            ("drainSeconds", "0"),
            ("leadTimeSeconds", "-5"),
            ("forecast", "prophet"),
            ("minReplicas", "5"),
            ("maxReplicas", "2"),
            ("timezone", "Nowhere/Land"),
            ("schedule", "0 8 * * * for 1h = 2"),
        ])
        .unwrap_err();
        let keys = err.keys();
        for k in [
            "serviceTimeSeconds",
            "concurrency",
            "drainSeconds",
            "leadTimeSeconds",
            "forecast",
            "minReplicas",
            "maxReplicas",
            "timezone",
        ] {
            assert!(keys.contains(&k), "{k} missing from {err}");
        }
        let err = parse(&[("schedule", "0 8 * * * for 0s = 2")]).unwrap_err();
        assert_eq!(err.keys(), ["schedule"]);
        assert!(err.to_string().contains("window 1"), "{err}");
        let err = parse(&[("timezone", "UTC")]).unwrap_err();
        assert_eq!(err.keys(), ["timezone", "schedule"]);
    }

    #[test]
    fn a_source_owned_tasks_per_replica_is_left_alone() {
        let m = md(&[("tasksPerReplica", "7")]);
        let mut r = Reader::new(&m);
        let c = super::parse(&mut r, Some(2.0)).unwrap();
        assert_eq!(c.policy.tasks_per_replica, 2.0);
        // Nothing read it here, so the trigger parser (where the source reads it) decides.
        assert!(r.finish(&|_| None).is_err());
    }
}
