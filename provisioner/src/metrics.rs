//! Every metric the provisioner exports, declared in one place so that dashboards, alerts and
//! code cannot drift (names and labels as the shared contract lists them). `resource` is
//! `nodes` or `gpus`; labels are bounded (policy names, provider and operation names, reasons).

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const WARM_CAPACITY: &str = "headroom_provisioner_warm_capacity";
pub const IN_FLIGHT_CAPACITY: &str = "headroom_provisioner_in_flight_capacity";
pub const PLANNED_CAPACITY: &str = "headroom_provisioner_planned_capacity";
pub const CAPACITY_LIMIT: &str = "headroom_provisioner_capacity_limit";
pub const AT_LIMIT: &str = "headroom_provisioner_at_limit";
pub const FORECAST_REPLICAS: &str = "headroom_provisioner_forecast_replicas";
pub const HOURLY_COST: &str = "headroom_provisioner_hourly_cost";
pub const TIME_TO_CAPACITY: &str = "headroom_provisioner_time_to_capacity_seconds";
pub const PROVIDER_CALL_DURATION: &str = "headroom_provisioner_provider_call_duration_seconds";
pub const PROVIDER_ERRORS: &str = "headroom_provisioner_provider_errors_total";
pub const DEMAND_ERRORS: &str = "headroom_provisioner_demand_errors_total";
pub const RECONCILES: &str = "headroom_provisioner_reconciles_total";
pub const RECONCILE_DURATION: &str = "headroom_provisioner_reconcile_duration_seconds";
pub const LEADER: &str = "headroom_provisioner_leader";
pub const CLUSTER_USAGE: &str = "headroom_provisioner_cluster_usage";
pub const CLUSTER_CAP_HELD: &str = "headroom_provisioner_cluster_cap_held_total";
pub const BUILD_INFO: &str = "headroom_build_info";
pub const REMOVALS_KEPT: &str = "headroom_provisioner_removals_kept_total";
pub const CAPACITY_FAILURES: &str = "headroom_provisioner_capacity_failures_total";
pub const IMAGE_WARM_UNITS: &str = "headroom_provisioner_image_warm_units";
pub const TIME_TO_IMAGE_WARM: &str = "headroom_provisioner_time_to_image_warm_seconds";
pub const IMAGE_PULLS_STARTED: &str = "headroom_provisioner_image_pulls_started_total";
pub const IMAGE_PULLS_FAILED: &str = "headroom_provisioner_image_pulls_failed_total";

/// Buckets of provider calls and reconciles: 1 ms to 30 s.
pub const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of time to capacity: 5 s to 20 min.
pub const TIME_TO_CAPACITY_BUCKETS: &[f64] = &[
    5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 450.0, 600.0, 900.0,
    1200.0,
];

/// Registers descriptions (shown as `# HELP`) and the build info gauge.
pub fn describe() {
    describe_counter!(
        CAPACITY_FAILURES,
        "Units that failed to come up, by provider and reason (LaunchFailed: deleted before ready; NotInitialized: given up on)."
    );
    describe_counter!(
        REMOVALS_KEPT,
        "Units the plan found idle that a fresh read before removal found busy (kept)."
    );
    describe_gauge!(
        WARM_CAPACITY,
        "Ready capacity the policy owns, by resource (nodes, gpus)."
    );
    describe_gauge!(
        IN_FLIGHT_CAPACITY,
        "Capacity asked for and not ready yet, by resource."
    );
    describe_gauge!(
        PLANNED_CAPACITY,
        "Capacity the last plan wants (after limits), by resource."
    );
    describe_gauge!(
        CAPACITY_LIMIT,
        "The policy's maxNodes / maxGpus, by resource."
    );
    describe_gauge!(
        AT_LIMIT,
        "1 while the named limit holds the plan below the forecast, else 0."
    );
    describe_gauge!(
        FORECAST_REPLICAS,
        "Peak replicas within the lead time of the last Demand answer."
    );
    describe_gauge!(
        HOURLY_COST,
        "Cost per hour of the capacity the policy holds."
    );
    describe_histogram!(
        TIME_TO_CAPACITY,
        metrics::Unit::Seconds,
        "Time from asking for a unit of capacity to its being ready, by provider."
    );
    describe_histogram!(
        PROVIDER_CALL_DURATION,
        metrics::Unit::Seconds,
        "Duration of one provider call, by provider and operation (list, create, hold, release, remove)."
    );
    describe_counter!(
        PROVIDER_ERRORS,
        "Provider calls that failed, by provider, operation and reason."
    );
    describe_counter!(DEMAND_ERRORS, "Demand calls (or streams) that failed.");
    describe_counter!(RECONCILES, "Reconciles of a policy, by result (ok, error).");
    describe_histogram!(
        RECONCILE_DURATION,
        metrics::Unit::Seconds,
        "Duration of one reconcile."
    );
    describe_gauge!(LEADER, "1 on the replica holding the Lease, else 0.");
    describe_gauge!(
        CLUSTER_USAGE,
        "What all policies hold, as the caps across policies count it (ready, in-flight and deleting units; worst case where a unit's type is unknown), by resource (nodes, gpus, hourly_cost)."
    );
    describe_counter!(
        CLUSTER_CAP_HELD,
        "Plans a cap across all policies held below the forecast, by limit (maxTotalNodes, maxTotalGpus, maxTotalHourlyCost)."
    );
    describe_gauge!(
        IMAGE_WARM_UNITS,
        "Units by image-warm state (booting, pulling, warm, failed)."
    );
    describe_histogram!(
        TIME_TO_IMAGE_WARM,
        metrics::Unit::Seconds,
        "Time from asking for a unit to its holding the workload's images."
    );
    describe_counter!(
        IMAGE_PULLS_STARTED,
        "Pre-pull pods created (one per unit and image list)."
    );
    describe_counter!(
        IMAGE_PULLS_FAILED,
        "Pre-pull pods whose images could not be pulled, by the kubelet's reason."
    );
    describe_gauge!(BUILD_INFO, "Build information; always 1.");
    gauge!(BUILD_INFO, "component" => "provisioner", "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
}

/// One policy's capacity gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyGauges {
    pub warm_nodes: u32,
    pub warm_gpus: u32,
    pub in_flight_nodes: u32,
    pub in_flight_gpus: u32,
    pub planned_nodes: u32,
    pub planned_gpus: u32,
    pub max_nodes: u32,
    pub max_gpus: u32,
    pub forecast_replicas: u32,
    pub hourly_cost: f64,
    /// The limit holding the plan down (`maxNodes`, `maxGpus`, `maxHourlyCost`), if any.
    pub at_limit: Option<&'static str>,
    /// GPUs of one node of the type the policy makes.
    pub node_gpus: u32,
}

pub fn policy(namespace: &str, policy: &str, g: &PolicyGauges) {
    let (ns, p) = (namespace.to_string(), policy.to_string());
    for (name, nodes, gpus) in [
        (WARM_CAPACITY, g.warm_nodes, g.warm_gpus),
        (IN_FLIGHT_CAPACITY, g.in_flight_nodes, g.in_flight_gpus),
        (PLANNED_CAPACITY, g.planned_nodes, g.planned_gpus),
        (CAPACITY_LIMIT, g.max_nodes, g.max_gpus),
    ] {
        gauge!(name, "namespace" => ns.clone(), "policy" => p.clone(), "resource" => "nodes")
            .set(f64::from(nodes));
        gauge!(name, "namespace" => ns.clone(), "policy" => p.clone(), "resource" => "gpus")
            .set(f64::from(gpus));
    }
    for limit in crate::plan::Limit::ALL.map(crate::plan::Limit::name) {
        let v = if g.at_limit == Some(limit) { 1.0 } else { 0.0 };
        gauge!(AT_LIMIT, "namespace" => ns.clone(), "policy" => p.clone(), "limit" => limit).set(v);
    }
    gauge!(FORECAST_REPLICAS, "namespace" => ns.clone(), "policy" => p.clone())
        .set(f64::from(g.forecast_replicas));
    gauge!(HOURLY_COST, "namespace" => ns, "policy" => p).set(g.hourly_cost);
}

/// Units of a policy by image-warm state; every state is set, so a state that empties reads 0.
pub fn image_warm_units(namespace: &str, policy: &str, counts: &[(&'static str, u32)]) {
    for (state, n) in counts {
        gauge!(IMAGE_WARM_UNITS, "namespace" => namespace.to_string(), "policy" => policy.to_string(), "state" => *state)
            .set(f64::from(*n));
    }
}

pub fn time_to_image_warm(namespace: &str, policy: &str, seconds: f64) {
    histogram!(TIME_TO_IMAGE_WARM, "namespace" => namespace.to_string(), "policy" => policy.to_string())
        .record(seconds);
}

pub fn image_pull_started(namespace: &str, policy: &str) {
    counter!(IMAGE_PULLS_STARTED, "namespace" => namespace.to_string(), "policy" => policy.to_string())
        .increment(1);
}

/// `reason`: one of [`crate::warm::PULL_FAILURE_REASONS`] or `Other` (bounded).
pub fn image_pull_failed(namespace: &str, policy: &str, reason: &'static str) {
    counter!(IMAGE_PULLS_FAILED, "namespace" => namespace.to_string(), "policy" => policy.to_string(), "reason" => reason)
        .increment(1);
}

pub fn time_to_capacity(namespace: &str, policy: &str, provider: &'static str, seconds: f64) {
    histogram!(TIME_TO_CAPACITY, "namespace" => namespace.to_string(), "policy" => policy.to_string(), "provider" => provider)
        .record(seconds);
}

pub fn provider_call(
    provider: &'static str,
    operation: &'static str,
    elapsed: Duration,
    error_reason: Option<&'static str>,
) {
    histogram!(PROVIDER_CALL_DURATION, "provider" => provider, "operation" => operation)
        .record(elapsed.as_secs_f64());
    if let Some(reason) = error_reason {
        counter!(PROVIDER_ERRORS, "provider" => provider, "operation" => operation, "reason" => reason)
            .increment(1);
    }
}

pub fn demand_error(namespace: &str, policy: &str) {
    counter!(DEMAND_ERRORS, "namespace" => namespace.to_string(), "policy" => policy.to_string())
        .increment(1);
}

pub fn reconcile(ok: bool, elapsed: Duration) {
    counter!(RECONCILES, "result" => if ok { "ok" } else { "error" }).increment(1);
    histogram!(RECONCILE_DURATION).record(elapsed.as_secs_f64());
}

pub fn leader(is_leader: bool) {
    gauge!(LEADER).set(if is_leader { 1.0 } else { 0.0 });
}

/// What all policies hold (unknown GPUs or prices count as nothing here; the caps count them
/// as everything).
pub fn cluster_usage(u: &crate::plan::Usage) {
    gauge!(CLUSTER_USAGE, "resource" => "nodes").set(u.nodes as f64);
    gauge!(CLUSTER_USAGE, "resource" => "gpus").set(u.gpus as f64);
    gauge!(CLUSTER_USAGE, "resource" => "hourly_cost").set(u.hourly_cost);
}

/// A cap across all policies (`limit`: `maxTotalNodes`, ...) held a plan back.
pub fn cluster_cap_held(limit: &'static str) {
    counter!(CLUSTER_CAP_HELD, "limit" => limit).increment(1);
}

/// A unit that failed to come up; `reason` is one of [`crate::launches::Failure::reason`].
pub fn capacity_failure(provider: &'static str, reason: &'static str) {
    counter!(CAPACITY_FAILURES, "provider" => provider, "reason" => reason).increment(1);
}

/// Units kept because a fresh read before removal found pods on them.
pub fn removals_kept(n: usize) {
    counter!(REMOVALS_KEPT).increment(n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus scrapes carries the names and labels the dashboards query.
    #[test]
    fn exported_names_and_labels_are_the_contracts() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            policy(
                "ml",
                "gpu",
                &PolicyGauges {
                    warm_nodes: 2,
                    warm_gpus: 8,
                    max_nodes: 4,
                    at_limit: Some("maxGpus"),
                    ..Default::default()
                },
            );
            time_to_capacity("ml", "gpu", "karpenter", 42.0);
            provider_call(
                "karpenter",
                "create",
                Duration::from_millis(5),
                Some("Throttled"),
            );
            demand_error("ml", "gpu");
            reconcile(true, Duration::from_millis(3));
            leader(true);
            cluster_usage(&crate::plan::Usage {
                nodes: 3,
                gpus: 12,
                ..Default::default()
            });
            cluster_cap_held("maxTotalGpus");
            image_warm_units("ml", "gpu", &[("warm", 2), ("failed", 0)]);
            time_to_image_warm("ml", "gpu", 95.0);
            image_pull_started("ml", "gpu");
            image_pull_failed("ml", "gpu", "ErrImagePull");
        });
        let text = handle.render();
        for line in [
            r#"headroom_provisioner_warm_capacity{namespace="ml",policy="gpu",resource="nodes"} 2"#,
            r#"headroom_provisioner_warm_capacity{namespace="ml",policy="gpu",resource="gpus"} 8"#,
            r#"headroom_provisioner_in_flight_capacity{namespace="ml",policy="gpu",resource="nodes"} 0"#,
            r#"headroom_provisioner_planned_capacity{namespace="ml",policy="gpu",resource="gpus"} 0"#,
            r#"headroom_provisioner_capacity_limit{namespace="ml",policy="gpu",resource="nodes"} 4"#,
            r#"headroom_provisioner_at_limit{namespace="ml",policy="gpu",limit="maxGpus"} 1"#,
            r#"headroom_provisioner_at_limit{namespace="ml",policy="gpu",limit="maxNodes"} 0"#,
            r#"headroom_provisioner_forecast_replicas{namespace="ml",policy="gpu"} 0"#,
            r#"headroom_provisioner_hourly_cost{namespace="ml",policy="gpu"} 0"#,
            r#"headroom_provisioner_time_to_capacity_seconds_count{namespace="ml",policy="gpu",provider="karpenter"} 1"#,
            r#"headroom_provisioner_provider_call_duration_seconds_count{provider="karpenter",operation="create"} 1"#,
            r#"headroom_provisioner_provider_errors_total{provider="karpenter",operation="create",reason="Throttled"} 1"#,
            r#"headroom_provisioner_demand_errors_total{namespace="ml",policy="gpu"} 1"#,
            r#"headroom_provisioner_reconciles_total{result="ok"} 1"#,
            r#"headroom_provisioner_leader 1"#,
            r#"headroom_provisioner_at_limit{namespace="ml",policy="gpu",limit="maxTotalGpus"} 0"#,
            r#"headroom_provisioner_cluster_usage{resource="gpus"} 12"#,
            r#"headroom_provisioner_cluster_cap_held_total{limit="maxTotalGpus"} 1"#,
            r#"headroom_provisioner_image_warm_units{namespace="ml",policy="gpu",state="warm"} 2"#,
            r#"headroom_provisioner_image_warm_units{namespace="ml",policy="gpu",state="failed"} 0"#,
            r#"headroom_provisioner_time_to_image_warm_seconds_count{namespace="ml",policy="gpu"} 1"#,
            r#"headroom_provisioner_image_pulls_started_total{namespace="ml",policy="gpu"} 1"#,
            r#"headroom_provisioner_image_pulls_failed_total{namespace="ml",policy="gpu",reason="ErrImagePull"} 1"#,
            r#"headroom_build_info{component="provisioner",version=""#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
