//! The `PrewarmPolicy` custom resource (`headroom.dev/v1alpha1`).
//!
//! The Rust types are the source of truth: `headroom-provisioner crd` prints the CRD generated
//! from them, the committed copy lives in `charts/headroom/crds/`, and a test fails when the two
//! differ.

use std::time::Duration;

use headroom_common::parse_duration;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Capacity kept warm for one KEDA ScaledObject, ahead of what its queues will need.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "headroom.dev",
    version = "v1alpha1",
    kind = "PrewarmPolicy",
    plural = "prewarmpolicies",
    shortname = "pwp",
    namespaced,
    status = "PrewarmPolicyStatus",
    printcolumn = r#"{"name":"ScaledObject","type":"string","jsonPath":".spec.scaledObjectRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredNodes"}"#,
    printcolumn = r#"{"name":"Warm","type":"integer","jsonPath":".status.warmNodes"}"#,
    printcolumn = r#"{"name":"InFlight","type":"integer","jsonPath":".status.inFlightNodes"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmPolicySpec {
    /// The KEDA ScaledObject, in the policy's namespace, whose demand this policy follows. Its
    /// scale target's pod template gives the shape of the capacity (GPU, CPU and memory
    /// requests, node selector, affinity, tolerations).
    pub scaled_object_ref: LocalRef,
    /// gRPC address of headroom-scaler's Demand service, e.g.
    /// `headroom-scaler.headroom.svc:9090`.
    pub demand_address: String,
    /// How far ahead capacity is asked for: node boot plus image pull plus start-up, e.g. `3m`.
    /// Default `3m`, at most `24h`.
    #[serde(default = "default_lead_time")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"),
        length(max = 32),
        extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('24h')", "message": "must be at most 24h"}])
    )]
    pub lead_time: String,
    /// How capacity is made: `karpenter` (NodeClaims), `overprovision` (pause pods under a
    /// negative PriorityClass) or `ec2` (instances launched directly).
    pub mode: CapacityMode,
    /// Parameters of `mode: karpenter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub karpenter: Option<KarpenterSpec>,
    /// Parameters of `mode: overprovision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovision: Option<OverprovisionSpec>,
    /// Parameters of `mode: ec2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Spec>,
    /// Hard limits: capacity is never created beyond them.
    pub limits: LimitsSpec,
    /// GPUs kept warm and idle at all times, on top of the forecast. Default 0.
    #[serde(default)]
    pub min_warm_gpus: u32,
    /// How long capacity must have gone unneeded before it is removed, e.g. `10m`. Idle capacity
    /// only: capacity running pods is never removed. Default `10m`, at most `24h`. `auto` learns
    /// it from the policy's own idle gaps (the time from demand falling to zero to the next
    /// burst): idle capacity stays for the gaps' 99th percentile, and where even their 5th
    /// percentile is long (at least twice `leadTime`) it goes at once and is prepared again a
    /// lead time before that point; `10m` while fewer than 10 gaps are known or they follow no
    /// pattern (`status.keepAlive` says which).
    #[serde(default = "default_scale_down_after")]
    #[schemars(
        regex(pattern = r"^(auto|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"),
        length(max = 32),
        extend("x-kubernetes-validations" = [{"rule": "self == 'auto' || duration(self) <= duration('24h')", "message": "must be auto or at most 24h"}])
    )]
    pub scale_down_after: String,
}

/// The longest `leadTime` and `scaleDownAfter` a policy may give: checked by the API server
/// (a CEL rule in the CRD) and again in [`PrewarmPolicySpec::durations`], so a policy written
/// before the rule existed (or with validation off) gets a condition, never an overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A policy's durations, parsed and within [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecDurations {
    pub lead_time: Duration,
    pub scale_down_after: ScaleDown,
}

/// `scaleDownAfter`: fixed, or learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDown {
    After(Duration),
    /// `auto`: `headroom_policy::keepalive`, with [`AUTO_FALLBACK`] while it knows too little.
    Auto,
}

/// What `scaleDownAfter: auto` uses until the idle gaps say more: the default `10m`.
pub const AUTO_FALLBACK: Duration = Duration::from_secs(600);

/// Why a policy's spec cannot be planned for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field} {value:?} is not a duration like 3m or 1h30m{}", if *field == "scaleDownAfter" { " (or auto)" } else { "" })]
    NotADuration { field: &'static str, value: String },
    #[error("spec.{field} {value:?} is longer than the maximum of 24h")]
    TooLong { field: &'static str, value: String },
}

impl PrewarmPolicySpec {
    /// `leadTime` and `scaleDownAfter`, parsed and bounded by [`MAX_DURATION`]: whatever they
    /// say, the arithmetic on them afterwards (twice the lead time, milliseconds as `i64`)
    /// cannot overflow.
    /// `scaleDownAfter: auto`.
    pub fn scale_down_is_auto(&self) -> bool {
        self.scale_down_after == "auto"
    }

    pub fn durations(&self) -> Result<SpecDurations, SpecError> {
        let parse = |field: &'static str, value: &str| {
            let d = parse_duration(value).ok_or_else(|| SpecError::NotADuration {
                field,
                value: value.to_string(),
            })?;
            if d > MAX_DURATION {
                return Err(SpecError::TooLong {
                    field,
                    value: value.to_string(),
                });
            }
            Ok(d)
        };
        Ok(SpecDurations {
            lead_time: parse("leadTime", &self.lead_time)?,
            scale_down_after: if self.scale_down_is_auto() {
                ScaleDown::Auto
            } else {
                ScaleDown::After(parse("scaleDownAfter", &self.scale_down_after)?)
            },
        })
    }
}

fn default_lead_time() -> String {
    "3m".into()
}

fn default_scale_down_after() -> String {
    headroom_common::format_duration(AUTO_FALLBACK)
}

/// A reference to an object in the policy's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CapacityMode {
    Karpenter,
    Overprovision,
    Ec2,
}

impl CapacityMode {
    /// As `spec.mode` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityMode::Karpenter => "karpenter",
            CapacityMode::Overprovision => "overprovision",
            CapacityMode::Ec2 => "ec2",
        }
    }
}

/// `mode: karpenter`: NodeClaims (`karpenter.sh/v1`) created ahead of demand.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KarpenterSpec {
    /// The NodePool whose template (node class, requirements, taints) the NodeClaims copy; they
    /// carry its `karpenter.sh/nodepool` label, so they count toward its limits.
    #[schemars(length(min = 1))]
    pub node_pool: String,
    /// Instance types to choose from, narrowed by the pod shape; empty: those the NodePool's
    /// requirements allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<InstanceType>,
}

/// An instance type the planner may use, with what it holds and costs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceType {
    /// e.g. `g5.xlarge`.
    #[schemars(length(min = 1))]
    pub name: String,
    pub gpus: u32,
    /// Allocatable CPU, as a Kubernetes quantity (`3920m`).
    pub cpu: String,
    /// Allocatable memory, as a Kubernetes quantity (`14Gi`).
    pub memory: String,
    /// Price per hour (on-demand), for `maxHourlyCost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_price: Option<f64>,
}

/// `mode: overprovision`: a Deployment of pause pods shaped like the workload's pods, under a
/// negative PriorityClass, so any node autoscaler brings nodes up and real pods preempt them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverprovisionSpec {
    /// The PriorityClass of the pause pods; created with value -10 when missing. Default
    /// `headroom-overprovision`.
    #[serde(default = "default_priority_class")]
    pub priority_class_name: String,
    /// Image of the placeholder pods. Default `registry.k8s.io/pause:3.10`.
    #[serde(default = "default_pause_image")]
    pub pause_image: String,
}

impl Default for OverprovisionSpec {
    fn default() -> Self {
        Self {
            priority_class_name: default_priority_class(),
            pause_image: default_pause_image(),
        }
    }
}

fn default_priority_class() -> String {
    "headroom-overprovision".into()
}

fn default_pause_image() -> String {
    "registry.k8s.io/pause:3.10".into()
}

/// `mode: ec2`: instances launched with CreateFleet (`instant`), for clusters without Karpenter.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ec2Spec {
    pub region: String,
    /// The launch template (its user data joins the node to the cluster).
    pub launch_template: LaunchTemplateRef,
    /// Instance types, in order of preference, with what they hold.
    #[schemars(length(min = 1))]
    pub instance_types: Vec<InstanceType>,
    /// Subnets to launch into; empty: the launch template's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
    /// Try spot first, then on-demand on insufficient capacity. Default true.
    #[serde(default = "yes")]
    pub spot: bool,
    /// Stopped instances kept ready to start (faster than launching). Default 0 (off).
    #[serde(default)]
    pub warm_pool_size: u32,
    /// Endpoint override (an EC2-compatible API, for tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchTemplateRef {
    /// `lt-...`; give this or `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default `$Default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Hard limits of a policy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Most nodes this policy holds at once.
    pub max_nodes: u32,
    /// Most GPUs this policy holds at once.
    pub max_gpus: u32,
    /// Most cost per hour of what this policy holds (in the instance types' currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hourly_cost: Option<f64>,
}

/// What the provisioner last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes the last plan wanted (after limits).
    #[serde(default)]
    pub desired_nodes: u32,
    /// Nodes ready for pods.
    #[serde(default)]
    pub warm_nodes: u32,
    /// Nodes asked for and not ready yet.
    #[serde(default)]
    pub in_flight_nodes: u32,
    /// Replicas the last forecast wanted within the lead time, and when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forecast: Option<ForecastStatus>,
    /// Seconds from asking for a node to its being ready, for the most recent node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time_to_capacity_seconds: Option<f64>,
    /// Units by image-warm state (karpenter mode, with image warming on): a unit is warm only
    /// once it holds the workload's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_warm: Option<ImageWarmStatus>,
    /// The mode whose capacity the policy holds. After `spec.mode` changes it names the old
    /// mode until that mode's capacity is gone (idle units removed at once, busy nodes cordoned
    /// and removed once empty); only then does the new mode create anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_mode: Option<CapacityMode>,
    /// With `scaleDownAfter: auto`: the keep-alive in force and the idle gaps it was learned
    /// from (kept here, so a restart or a new leader goes on from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAliveStatus>,
    /// `Ready`, `LimitReached`, `DemandAvailable`, `ShapeResolved`, `ImageWarm`,
    /// `CapacityFailing`, `Allowed`, `Deleting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The learned keep-alive (`scaleDownAfter: auto`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveStatus {
    /// How long idle capacity stays after demand falls to zero, e.g. `33m`.
    #[serde(default)]
    pub keep_for: String,
    /// When set: idle capacity goes as soon as demand falls to zero and is prepared again to
    /// be ready this long after it did (until `keepFor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm_after: Option<String>,
    /// `Learned`, or why the 10m fallback: `FewSamples` (under 10 gaps), `BeyondRange` (most
    /// gaps over 4 h), `TooSpread` (no pattern).
    #[serde(default)]
    pub basis: String,
    /// Idle gaps it rests on.
    #[serde(default)]
    pub samples: u64,
    /// The idle gaps: `[minute, count]` pairs (gaps of 0-1 min in minute 0, …, up to 4 h).
    #[serde(default)]
    #[schemars(length(max = 240))]
    pub gaps: Vec<[u32; 2]>,
    /// Gaps longer than 4 h.
    #[serde(default)]
    pub gaps_beyond_range: u32,
    /// When demand last fell to zero (Unix ms), while it is zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_unix_ms: Option<i64>,
    /// When the current burst began (Unix ms), while demand is above zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_since_unix_ms: Option<i64>,
    /// Replicas the last burst wanted in its first minute: what a pre-warm prepares.
    #[serde(default)]
    pub onset_replicas: u32,
}

impl KeepAliveStatus {
    /// The learned state, repaired and bounded whatever the status held.
    pub fn gaps(&self) -> headroom_policy::keepalive::IdleGaps {
        headroom_policy::keepalive::IdleGaps {
            bins: self
                .gaps
                .iter()
                .take(headroom_policy::keepalive::BINS * 4)
                .filter_map(|&[b, c]| Some((u16::try_from(b).ok()?, c)))
                .collect(),
            beyond_range: self.gaps_beyond_range,
            idle_since: self.idle_since_unix_ms,
            busy_since: self.busy_since_unix_ms,
            onset_replicas: self.onset_replicas,
        }
        .sanitised()
    }

    pub fn new(
        gaps: &headroom_policy::keepalive::IdleGaps,
        decision: &headroom_policy::keepalive::KeepAlive,
    ) -> Self {
        let dur = |ms: i64| {
            headroom_common::format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        };
        Self {
            keep_for: dur(decision.keep_for),
            prewarm_after: (decision.prewarm_after > 0).then(|| dur(decision.prewarm_after)),
            basis: decision.basis.as_str().into(),
            samples: decision.samples,
            gaps: gaps.bins.iter().map(|&(b, c)| [u32::from(b), c]).collect(),
            gaps_beyond_range: gaps.beyond_range,
            idle_since_unix_ms: gaps.idle_since,
            busy_since_unix_ms: gaps.busy_since,
            onset_replicas: gaps.onset_replicas,
        }
    }
}

/// Units by image-warm state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageWarmStatus {
    /// Ready units holding the workload's current images.
    #[serde(default)]
    pub warm_units: u32,
    /// Ready units pulling them (a pre-pull pod runs on the node).
    #[serde(default)]
    pub pulling_units: u32,
    /// Units whose node is not Ready yet.
    #[serde(default)]
    pub booting_units: u32,
    /// Ready units where an image cannot be pulled (see the `ImageWarm` condition): not warm.
    #[serde(default)]
    pub failed_units: u32,
    /// The hash of the workload's image list the counts are about (`headroom.dev/images`).
    #[serde(default)]
    pub images: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForecastStatus {
    pub peak_replicas: u32,
    pub desired_replicas_now: u32,
    /// RFC 3339.
    pub observed_at: String,
}

/// A status condition, as `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRD as YAML, as committed in `charts/headroom/crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&PrewarmPolicy::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRD is what the types generate (regenerate with
    /// `cargo run -p headroom-provisioner -- crd > charts/headroom/crds/prewarmpolicies.headroom.dev.yaml`).
    #[test]
    fn committed_crd_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/headroom/crds/prewarmpolicies.headroom.dev.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "{path} is stale: regenerate it with `cargo run -p headroom-provisioner -- crd`"
        );
    }

    fn spec_with(lead_time: &str, scale_down_after: &str) -> PrewarmPolicySpec {
        let mut spec: PrewarmPolicySpec = serde_yaml::from_str(
            "scaledObjectRef: {name: w}\ndemandAddress: s:9090\nmode: karpenter\n\
             limits: {maxNodes: 1, maxGpus: 1}\n",
        )
        .unwrap();
        spec.lead_time = lead_time.into();
        spec.scale_down_after = scale_down_after.into();
        spec
    }

    #[test]
    fn absurd_durations_are_spec_errors_not_overflows() {
        for (lead, down, field) in [
            ("4000000000000000h", "10m", "leadTime"),
            ("25h", "10m", "leadTime"),
            ("24h0.001s", "10m", "leadTime"),
            ("3m", "99999999999999999999h", "scaleDownAfter"),
            ("3m", "1e400s", "scaleDownAfter"),
            ("-1s", "10m", "leadTime"),
            ("", "10m", "leadTime"),
        ] {
            let e = spec_with(lead, down).durations().unwrap_err();
            assert!(e.to_string().contains(field), "{lead} {down}: {e}");
        }
        let d = spec_with("24h", "0s").durations().unwrap();
        assert_eq!(d.lead_time, MAX_DURATION);
        assert_eq!(d.scale_down_after, ScaleDown::After(Duration::ZERO));
        let auto = spec_with("3m", "auto").durations().unwrap();
        assert_eq!(auto.scale_down_after, ScaleDown::Auto);
        let e = spec_with("3m", "automatic").durations().unwrap_err();
        assert!(e.to_string().contains("(or auto)"), "{e}");
        // What the controller does with the largest allowed lead time does not overflow.
        assert!(d.lead_time.checked_mul(2).is_some());
        assert!(i64::try_from(d.lead_time.as_millis()).is_ok());
    }

    #[test]
    fn the_crd_bounds_both_durations_with_a_cel_rule() {
        let yaml = crd_yaml().unwrap();
        assert_eq!(
            yaml.matches("rule: duration(self) <= duration('24h')")
                .count(),
            1,
            "{yaml}"
        );
        assert_eq!(
            yaml.matches("rule: self == 'auto' || duration(self) <= duration('24h')")
                .count(),
            1,
            "{yaml}"
        );
        assert_eq!(yaml.matches("maxLength: 32").count(), 2);
    }

    #[test]
    fn a_minimal_policy_gets_the_documented_defaults() {
        let spec: PrewarmPolicySpec = serde_yaml::from_str(
            "scaledObjectRef: {name: gpu-worker}\n\
             demandAddress: headroom-scaler.headroom.svc:9090\n\
             mode: karpenter\n\
             karpenter: {nodePool: gpu}\n\
             limits: {maxNodes: 4, maxGpus: 4}\n",
        )
        .unwrap();
        assert_eq!(spec.lead_time, "3m");
        assert_eq!(spec.scale_down_after, "10m");
        assert_eq!(spec.min_warm_gpus, 0);
        assert_eq!(spec.mode, CapacityMode::Karpenter);
    }
}
