//! Every metric the scaler exports, declared in one place so that dashboards, alerts and code
//! cannot drift. Names follow `headroom_scaler_<name>_<unit>`; labels are bounded snake_case
//! values (never raw errors, URLs or secrets).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::sources::{SourceError, SourceKind};

pub const RPC_DURATION: &str = "headroom_scaler_rpc_duration_seconds";
pub const RPCS: &str = "headroom_scaler_rpcs_total";
pub const BACKEND_READ_DURATION: &str = "headroom_scaler_backend_read_duration_seconds";
pub const BACKEND_ERRORS: &str = "headroom_scaler_backend_errors_total";
pub const OBSERVATIONS: &str = "headroom_scaler_observations_total";
pub const QUEUE_DEPTH: &str = "headroom_scaler_queue_depth";
pub const QUEUE_IN_FLIGHT: &str = "headroom_scaler_queue_in_flight";
pub const METRIC_VALUE: &str = "headroom_scaler_metric_value";
pub const PUSH_STREAMS: &str = "headroom_scaler_push_streams";
pub const PUSH_WATCHERS: &str = "headroom_scaler_push_watchers";
pub const PUSH_ACTIVATIONS: &str = "headroom_scaler_push_activations_total";
pub const PUSH_LATENCY: &str = "headroom_scaler_push_detect_duration_seconds";
pub const DESIRED_REPLICAS: &str = "headroom_scaler_desired_replicas";
pub const FORECAST_REPLICAS: &str = "headroom_scaler_forecast_replicas";
pub const FORECAST_ERROR: &str = "headroom_scaler_forecast_error_ratio";
pub const PLANNERS: &str = "headroom_scaler_planners";
pub const BUILD_INFO: &str = "headroom_build_info";
pub const CACHE_ENTRIES: &str = "headroom_scaler_cache_entries";
pub const CACHE_EVICTIONS: &str = "headroom_scaler_cache_evictions_total";

/// Buckets for RPC and backend latencies: 100 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Registers descriptions (shown as `# HELP`) and the build info gauge.
pub fn describe() {
    describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "Time to answer one externalscaler RPC, by rpc and gRPC code."
    );
    describe_counter!(
        RPCS,
        "externalscaler RPCs answered, by rpc, source and gRPC code."
    );
    describe_histogram!(
        BACKEND_READ_DURATION,
        metrics::Unit::Seconds,
        "Time of one backend read (one round trip for all queues of a trigger), by source."
    );
    describe_counter!(
        BACKEND_ERRORS,
        "Backend reads that failed, by source and kind (unavailable, timeout, auth, not_found, wrong_type, backend, protocol)."
    );
    describe_counter!(
        OBSERVATIONS,
        "Readings served from the observation cache (result=hit) or read from the backend (result=miss)."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Messages waiting in the trigger's queues at the last read."
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        "Messages held by workers and not yet acknowledged at the last read."
    );
    describe_gauge!(
        METRIC_VALUE,
        "The metric value last answered to KEDA for a trigger."
    );
    describe_gauge!(PUSH_STREAMS, "Open StreamIsActive streams.");
    describe_gauge!(
        PUSH_WATCHERS,
        "Queues watched for push activation (shared by all streams on one queue), by mode."
    );
    describe_counter!(
        PUSH_ACTIVATIONS,
        "`true` messages sent on StreamIsActive after the queue turned active."
    );
    describe_histogram!(
        PUSH_LATENCY,
        metrics::Unit::Seconds,
        "Time from a keyspace event (or poll tick) to the activation it revealed."
    );
    describe_gauge!(
        DESIRED_REPLICAS,
        "Planned mode: replicas the policy wants now (backlog, arrivals, forecast within the lead time, schedule)."
    );
    describe_gauge!(
        FORECAST_REPLICAS,
        "The largest replicas of the last Demand forecast over its horizon."
    );
    describe_gauge!(
        FORECAST_ERROR,
        "Recent forecast error of arrivals at the lead time (weighted absolute percentage, 0.25 = 25 %)."
    );
    describe_gauge!(PLANNERS, "Planned-mode planners (queue histories) held.");
    describe_gauge!(BUILD_INFO, "Build information; always 1.");
    describe_gauge!(
        CACHE_ENTRIES,
        "Entries of a bounded per-target cache (connections, semaphores, Secret watches), by cache."
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Entries dropped from a bounded per-target cache (idle or over its capacity), by cache."
    );
    refresh();
}

pub fn rpc(rpc: &'static str, source: Option<SourceKind>, code: tonic::Code, elapsed: Duration) {
    let code = code_label(code);
    let source = source.map_or("unknown", SourceKind::label);
    histogram!(RPC_DURATION, "rpc" => rpc, "code" => code).record(elapsed.as_secs_f64());
    counter!(RPCS, "rpc" => rpc, "source" => source, "code" => code).increment(1);
}

pub fn backend_read(kind: SourceKind, elapsed: Duration, error: Option<&SourceError>) {
    histogram!(BACKEND_READ_DURATION, "source" => kind.label()).record(elapsed.as_secs_f64());
    if let Some(e) = error {
        counter!(BACKEND_ERRORS, "source" => kind.label(), "kind" => e.kind()).increment(1);
    }
}

pub fn observation_served(kind: SourceKind, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(OBSERVATIONS, "source" => kind.label(), "result" => result).increment(1);
}

/// Per-trigger gauges. The label set is bounded by the cluster's ScaledObjects; series of
/// triggers that stop being asked about expire (see the exporter's idle timeout).
pub fn trigger_reading(
    namespace: &str,
    scaled_object: &str,
    metric: &str,
    kind: SourceKind,
    waiting: u64,
    in_flight: u64,
    value: f64,
) {
    let [ns, so, m] = trigger_labels(namespace, scaled_object, metric);
    let labels = [ns, so, m, ("source", kind.label().to_string())];
    gauge!(QUEUE_DEPTH, &labels).set(waiting as f64);
    gauge!(QUEUE_IN_FLIGHT, &labels).set(in_flight as f64);
    gauge!(METRIC_VALUE, &labels).set(value);
}

/// Triggers (namespace, ScaledObject, metric) with series of their own. Names come from the
/// caller: past this many live ones, further triggers share the `_overflow` series, so a flood
/// of made-up names cannot grow the exporter without bound.
pub const MAX_TRIGGER_SERIES: usize = 2_000;

/// A trigger keeps its series while it was written within this (the exporter's gauge idle
/// timeout, set in main.rs).
pub const SERIES_IDLE: Duration = Duration::from_secs(600);

/// The overflow value of each label.
pub const OVERFLOW: &str = "_overflow";

/// (namespace, ScaledObject, metric) → last written.
type Series = HashMap<(String, String, String), Instant>;

static SERIES: Mutex<Option<Series>> = Mutex::new(None);

/// Whether the trigger may have series of its own (see [`MAX_TRIGGER_SERIES`]).
fn admit(namespace: &str, scaled_object: &str, metric: &str) -> bool {
    let mut guard = SERIES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let series = guard.get_or_insert_with(HashMap::new);
    let key = (
        namespace.to_string(),
        scaled_object.to_string(),
        metric.to_string(),
    );
    let now = Instant::now();
    if let Some(at) = series.get_mut(&key) {
        *at = now;
        return true;
    }
    if series.len() >= MAX_TRIGGER_SERIES {
        series.retain(|_, at| now.duration_since(*at) < SERIES_IDLE);
    }
    if series.len() >= MAX_TRIGGER_SERIES {
        return false;
    }
    series.insert(key, now);
    true
}

fn trigger_labels(
    namespace: &str,
    scaled_object: &str,
    metric: &str,
) -> [(&'static str, String); 3] {
    if !admit(namespace, scaled_object, metric) {
        return [
            ("namespace", OVERFLOW.to_string()),
            ("scaled_object", OVERFLOW.to_string()),
            ("metric", OVERFLOW.to_string()),
        ];
    }
    [
        ("namespace", namespace.to_string()),
        ("scaled_object", scaled_object.to_string()),
        ("metric", metric.to_string()),
    ]
}

pub fn desired_replicas(namespace: &str, scaled_object: &str, metric: &str, replicas: u32) {
    gauge!(
        DESIRED_REPLICAS,
        &trigger_labels(namespace, scaled_object, metric)
    )
    .set(f64::from(replicas));
}

pub fn forecast_replicas(namespace: &str, scaled_object: &str, metric: &str, replicas: u32) {
    gauge!(
        FORECAST_REPLICAS,
        &trigger_labels(namespace, scaled_object, metric)
    )
    .set(f64::from(replicas));
}

pub fn forecast_error(namespace: &str, scaled_object: &str, metric: &str, ratio: f64) {
    gauge!(
        FORECAST_ERROR,
        &trigger_labels(namespace, scaled_object, metric)
    )
    .set(ratio);
}

pub fn planners(n: usize) {
    gauge!(PLANNERS).set(n as f64);
}

/// Counts behind the process-wide gauges. The exporter forgets a gauge not written for its idle
/// timeout (which drops the series of queues nobody asks about any more); these are written as
/// absolute values, on every change and by [`refresh`], so they never vanish while the process
/// lives and never drift below zero.
static PUSH_STREAMS_OPEN: AtomicI64 = AtomicI64::new(0);
static PUSH_WATCHERS_EVENTS: AtomicI64 = AtomicI64::new(0);
static PUSH_WATCHERS_POLL: AtomicI64 = AtomicI64::new(0);

fn add(counter: &AtomicI64, delta: i64) -> f64 {
    (counter.fetch_add(delta, Ordering::Relaxed) + delta).max(0) as f64
}

pub fn push_streams(delta: f64) {
    gauge!(PUSH_STREAMS).set(add(&PUSH_STREAMS_OPEN, delta as i64));
}

pub fn push_watchers(mode: &'static str, delta: f64) {
    let counter = if mode == "events" {
        &PUSH_WATCHERS_EVENTS
    } else {
        &PUSH_WATCHERS_POLL
    };
    gauge!(PUSH_WATCHERS, "mode" => mode).set(add(counter, delta as i64));
}

/// Writes the process-wide gauges again (build info, push streams and watchers), well within
/// the exporter's idle timeout: called every minute by the server's sweeper.
pub fn refresh() {
    gauge!(BUILD_INFO, "component" => "scaler", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let get = |c: &AtomicI64| c.load(Ordering::Relaxed).max(0) as f64;
    gauge!(PUSH_STREAMS).set(get(&PUSH_STREAMS_OPEN));
    gauge!(PUSH_WATCHERS, "mode" => "events").set(get(&PUSH_WATCHERS_EVENTS));
    gauge!(PUSH_WATCHERS, "mode" => "poll").set(get(&PUSH_WATCHERS_POLL));
}

pub fn push_activation(kind: SourceKind) {
    counter!(PUSH_ACTIVATIONS, "source" => kind.label()).increment(1);
}

pub fn push_detected(kind: SourceKind, elapsed: Duration) {
    histogram!(PUSH_LATENCY, "source" => kind.label()).record(elapsed.as_secs_f64());
}

pub fn cache_entries(cache: &'static str, n: usize) {
    gauge!(CACHE_ENTRIES, "cache" => cache).set(n as f64);
}

pub fn cache_evicted(cache: &'static str, n: usize) {
    counter!(CACHE_EVICTIONS, "cache" => cache).increment(n as u64);
}

/// gRPC codes as bounded snake_case labels.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use metrics_util::MetricKindMask;

    #[test]
    fn build_info_and_push_gauges_survive_the_idle_timeout_that_drops_queue_series() {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_millis(100)))
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            push_streams(1.0);
            desired_replicas("apps", "idle", "m", 3);
        });
        assert!(handle.render().contains("headroom_scaler_desired_replicas"));
        std::thread::sleep(Duration::from_millis(250));
        metrics::with_local_recorder(&recorder, refresh);
        let text = handle.render();
        assert!(text.contains("headroom_build_info{"), "{text}");
        assert!(text.contains("headroom_scaler_push_streams "), "{text}");
        // The idle timeout is real: the series nobody wrote again is gone.
        assert!(
            !text.contains("headroom_scaler_desired_replicas{"),
            "{text}"
        );
        metrics::with_local_recorder(&recorder, || push_streams(-1.0));
    }

    #[test]
    fn push_gauges_never_go_below_zero() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            push_watchers("events", -1.0);
            push_watchers("events", 1.0);
        });
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("headroom_scaler_push_watchers{mode=\"events\"}"))
            .expect("the gauge");
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{line}");
    }

    #[test]
    fn caller_named_triggers_past_the_cap_share_the_overflow_series() {
        for i in 0..MAX_TRIGGER_SERIES + 5 {
            trigger_labels("flood", &format!("so-{i}"), "m");
        }
        let labels = trigger_labels("flood", "one-more", "m");
        assert_eq!(labels[0].1, OVERFLOW);
        // One already admitted keeps its own.
        let labels = trigger_labels("flood", "so-0", "m");
        assert_eq!(labels[1].1, "so-0");
    }
}
