//! Every metric the scaler exports, declared in one place so that dashboards, alerts and code
//! cannot drift. Names follow `headroom_scaler_<name>_<unit>`; labels are bounded snake_case
//! values (never raw errors, URLs or secrets).

use std::time::Duration;

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
    gauge!(BUILD_INFO, "component" => "scaler", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
    let labels = [
        ("namespace", namespace.to_string()),
        ("scaled_object", scaled_object.to_string()),
        ("metric", metric.to_string()),
        ("source", kind.label().to_string()),
    ];
    gauge!(QUEUE_DEPTH, &labels).set(waiting as f64);
    gauge!(QUEUE_IN_FLIGHT, &labels).set(in_flight as f64);
    gauge!(METRIC_VALUE, &labels).set(value);
}

fn trigger_labels(
    namespace: &str,
    scaled_object: &str,
    metric: &str,
) -> [(&'static str, String); 3] {
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

pub fn push_streams(delta: f64) {
    gauge!(PUSH_STREAMS).increment(delta);
}

pub fn push_watchers(mode: &'static str, delta: f64) {
    gauge!(PUSH_WATCHERS, "mode" => mode).increment(delta);
}

pub fn push_activation(kind: SourceKind) {
    counter!(PUSH_ACTIVATIONS, "source" => kind.label()).increment(1);
}

pub fn push_detected(kind: SourceKind, elapsed: Duration) {
    histogram!(PUSH_LATENCY, "source" => kind.label()).record(elapsed.as_secs_f64());
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
