//! The reconcile loop over `PrewarmPolicy`: observe → [`plan`] → act through the policy's
//! [`CapacityProvider`] → status and events.
//!
//! Triggers: the policy itself (spec and finalizer changes, not its own status writes), its
//! ScaledObject, the scale targets (Deployments, StatefulSets), Pods, Nodes and the NodeClaims
//! it owns, every Demand answer of its stream (so a forecast spike acts at once), and a
//! periodic resync.
//!
//! What bad input gets: a missing ScaledObject, scale target or NodePool, a shape that fits no
//! instance type, an unreachable Demand service or a mode not in this build each set a condition
//! and publish an event; nothing is created then. Limits bind inside the plan, so nothing is
//! ever created beyond them; creation is idempotent per decision (a token from the policy's
//! UID and the units it owned), so nothing is created twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::admin::Boundaries;
use crate::crd::{
    AUTO_FALLBACK, CapacityMode, Condition, ForecastStatus, KeepAliveStatus, PrewarmPolicy,
    PrewarmPolicyStatus, ScaleDown,
};
use crate::demand::{DemandStreams, Latest, PolicyKey, Watch};
use crate::karpenter::POLICY_LABEL;
use crate::launches::{self, Launches};
use crate::leader::Leadership;
use crate::metrics::{self, PolicyGauges};
use crate::plan::{self, Caps, Limits, Millis, OwnedNode, PlanInput, Usage, Want};
use crate::provider::{CreateRequest, Holdings, PolicyRef, ProviderError, Unit};
use crate::providers::{self, ForPolicyError, karpenter::POLICY_REF_ANNOTATION};
use crate::shape::{Shape, shape_of};
use crate::warm::{self, PullState, UnitState};

/// Finalizer on every policy: its capacity is removed before it goes.
pub const FINALIZER: &str = "headroom.dev/cleanup";
/// Field manager of status writes.
pub const MANAGER: &str = "headroom-provisioner";

/// `keda.sh/v1alpha1` ScaledObject.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the pod or node cache is not ready")]
    NotReady,
    #[error("not leading (the Lease was not renewed in time): nothing written")]
    NotLeader,
    #[error("{0} busy unit(s) still to empty")]
    Busy(usize),
}

/// What the reconcile loop shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub demand: DemandStreams,
    pub dry_run: bool,
    pub resync: Duration,
    pods: Store<Pod>,
    /// Every node, trimmed to its name, labels, annotations and spec (no status, no managed
    /// fields): EC2 units find their node by `spec.providerID`.
    nodes: Store<Node>,
    /// Consecutive failures per policy, for the error backoff.
    failures: Mutex<HashMap<PolicyKey, u32>>,
    /// Capacity that failed to come up, per policy, for the creation backoff.
    launches: Mutex<Launches>,
    /// Units whose time to capacity was recorded.
    recorded_ready: Mutex<HashSet<String>>,
    started_ms: Millis,
    /// Caps across every policy (`--max-total-*`).
    caps: Caps,
    /// What policies may name.
    boundaries: Boundaries,
    /// What each policy holds (with what its last plan created), for the caps: planning and
    /// recording a policy's share happen under this lock, so two policies reconciled at once
    /// cannot both take the last room.
    tally: Mutex<HashMap<PolicyKey, Usage>>,
    /// Every policy the loop watches, to know whose share the tally lacks.
    policies: Store<PrewarmPolicy>,
    leadership: Leadership,
    /// Where the image-warming helper comes from; no warming when `None`.
    warm_helper: Option<warm::Helper>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dry_run: bool,
    pub resync: Duration,
    /// Only policies in this namespace; all when `None`.
    pub watch_namespace: Option<String>,
    /// Reporting instance of events (the pod name).
    pub identity: String,
    /// Caps across every policy this loop watches (`--max-total-*`).
    pub caps: Caps,
    /// What policies may name (`--allowed-*`, `--workload-namespaces`).
    pub boundaries: Boundaries,
    /// Checked right before every provider write: nothing is written once the Lease may
    /// have passed to another replica.
    pub leadership: Leadership,
    /// TLS of the Demand client, for `https://` demand addresses.
    pub demand_tls: Option<crate::demand::DemandTls>,
    /// Where the image-warming helper comes from; no warming when `None`.
    pub warm_helper: Option<crate::warm::Helper>,
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A duration in the planner's milliseconds, saturating (durations are bounded by the spec's
/// validation; this keeps a bug elsewhere from wrapping).
fn millis_of(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn rfc3339(ms: Millis) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Deterministic creation token: the policy's UID and the units it owned when it decided.
pub fn token(uid: &str, owned: &[Unit]) -> String {
    let mut ids: Vec<&str> = owned.iter().map(|u| u.id.as_str()).collect();
    ids.sort_unstable();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in uid.bytes().chain(
        ids.iter()
            .flat_map(|i| std::iter::once(0u8).chain(i.bytes())),
    ) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Runs the controller until `stop` is cancelled.
pub async fn run(client: kube::Client, settings: Settings, stop: CancellationToken) {
    let policies: Api<PrewarmPolicy> = match &settings.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (demand, wake) = DemandStreams::new(settings.demand_tls.clone());
    let (pods_reader, pods_writer) = reflector::store::<Pod>();
    let pods_stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pods_writer)
        .touched_objects();

    // Every node, not only those labelled as a policy's: an EC2 instance joins under whatever
    // name its launch template gives it, and is found by its providerID.
    let (nodes_reader, nodes_writer) = reflector::store::<Node>();
    let nodes_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(trim_node)
        .reflect(nodes_writer)
        .touched_objects();

    let (policy_reader, policy_writer) = reflector::store::<PrewarmPolicy>();
    let policy_stream = watcher(policies, watcher::Config::default())
        .default_backoff()
        .reflect(policy_writer)
        .applied_objects()
        // Its own status writes do not wake a policy; spec, deletion and finalizer changes do.
        .predicate_filter(
            predicates::generation::<PrewarmPolicy>
                .combine(predicates::finalizers::<PrewarmPolicy>),
            Default::default(),
        );

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "headroom-provisioner".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
        demand,
        dry_run: settings.dry_run,
        resync: settings.resync,
        pods: pods_reader,
        nodes: nodes_reader,
        failures: Mutex::new(HashMap::new()),
        launches: Mutex::new(Launches::default()),
        recorded_ready: Mutex::new(HashSet::new()),
        started_ms: now_ms(),
        caps: settings.caps,
        boundaries: settings.boundaries,
        tally: Mutex::new(HashMap::new()),
        policies: policy_reader.clone(),
        leadership: settings.leadership.clone(),
        warm_helper: settings.warm_helper.clone(),
    });

    let in_namespace = {
        let store = policy_reader.clone();
        move |ns: Option<String>| -> Vec<ObjectRef<PrewarmPolicy>> {
            let Some(ns) = ns else { return Vec::new() };
            store
                .state()
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect()
        }
    };
    let owner_of = |labels: &BTreeMap<String, String>,
                    annotations: &BTreeMap<String, String>|
     -> Option<ObjectRef<PrewarmPolicy>> {
        let (ns, name) = match annotations.get(POLICY_REF_ANNOTATION) {
            Some(r) => r.split_once('/')?,
            // Namespaces hold no dots: `<namespace>.<name>`.
            None => labels.get(POLICY_LABEL)?.split_once('.')?,
        };
        Some(ObjectRef::new(name).within(ns))
    };

    let wakes = tokio_stream::wrappers::UnboundedReceiverStream::new(wake)
        .map(|(ns, name)| ObjectRef::<PrewarmPolicy>::new(&name).within(&ns));
    let so_map = in_namespace.clone();
    let deploy_map = in_namespace.clone();
    let sts_map = in_namespace.clone();
    let pod_map = in_namespace;
    let stop_signal = stop.clone();
    let cleanup_ctx = ctx.clone();
    // Pods stay cluster-wide: any pod on a node we own keeps it busy.
    let ns_scope = settings.watch_namespace.clone();
    let (so_api, deploy_api, sts_api) = match &ns_scope {
        Some(ns) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &scaled_object_resource()),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<DynamicObject>::all_with(client.clone(), &scaled_object_resource()),
            Api::<Deployment>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
        ),
    };
    Controller::for_stream(policy_stream, policy_reader)
        .watches_with(
            so_api,
            scaled_object_resource(),
            watcher::Config::default(),
            move |so| so_map(so.namespace()),
        )
        .watches(deploy_api, watcher::Config::default(), move |d| {
            deploy_map(d.namespace())
        })
        .watches(sts_api, watcher::Config::default(), move |s| {
            sts_map(s.namespace())
        })
        .watches_stream(pods_stream, move |p: Pod| pod_map(p.namespace()))
        .watches_with(
            Api::<DynamicObject>::all_with(
                client.clone(),
                &providers::karpenter::node_claim_resource(),
            ),
            providers::karpenter::node_claim_resource(),
            watcher::Config::default().labels(POLICY_LABEL),
            move |c| owner_of(c.labels(), c.annotations()),
        )
        .watches_stream(nodes_stream, move |n: Node| {
            owner_of(n.labels(), n.annotations())
        })
        .reconcile_on(wakes)
        .graceful_shutdown_on(async move { stop_signal.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    cleanup_ctx.demand.stop_all();
}

/// What the node store keeps of a node: its status (conditions, images, addresses) changes
/// often and is not read from the store.
fn trim_node(n: &mut Node) {
    n.status = None;
    n.metadata.managed_fields = None;
}

/// The EC2 instance a node runs on, from its `spec.providerID` (`aws:///<zone>/<instance-id>`).
pub fn instance_of_provider_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    (id.starts_with("i-")
        && id.len() > 2
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then_some(id)
}

/// Sets each EC2 unit's node to the node whose providerID names its instance, or none when no
/// such node exists yet: the private DNS name EC2 reports is not necessarily the node's name
/// (a launch template may name nodes otherwise), and a node found by the wrong name would hide
/// the pods that keep it busy.
fn nodes_by_provider_id(nodes: &Store<Node>, units: &mut [Unit]) {
    let by_instance: HashMap<String, String> = nodes
        .state()
        .iter()
        .filter_map(|n| {
            let pid = n.spec.as_ref()?.provider_id.as_deref()?;
            Some((instance_of_provider_id(pid)?.to_string(), n.name_any()))
        })
        .collect();
    for u in units {
        u.node_name = by_instance.get(&u.id).cloned();
    }
}

fn key_of(p: &PrewarmPolicy) -> PolicyKey {
    (p.namespace().unwrap_or_default(), p.name_any())
}

async fn reconcile(policy: Arc<PrewarmPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<PrewarmPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalized::Apply(p) => apply(&p, &ctx).await,
            Finalized::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    metrics::reconcile(result.is_ok(), start.elapsed());
    result
}

/// How often a policy waiting for busy units to empty (deletion, mode change) looks again; a
/// pod leaving one of its nodes wakes it sooner.
const BUSY_RETRY: Duration = Duration::from_secs(30);

fn error_policy(policy: Arc<PrewarmPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&policy);
    // Waiting, not failing: no growing backoff.
    if let Error::Finalizer(e) = error
        && let kube::runtime::finalizer::Error::CleanupFailed(Error::Busy(n)) = e.as_ref()
    {
        tracing::info!(namespace = %key.0, policy = %key.1, busy = n, "deleted policy waits for its busy units");
        return Action::requeue(BUSY_RETRY);
    }
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_millis(500)
        .saturating_mul(1 << n.min(10))
        .min(Duration::from_secs(300));
    tracing::warn!(namespace = %key.0, policy = %key.1, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Conditions of one pass, keyed by type.
#[derive(Debug, Default)]
struct Conditions(BTreeMap<&'static str, (bool, &'static str, String)>);

impl Conditions {
    fn set(
        &mut self,
        kind: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        self.0.insert(kind, (ok, reason, message.into()));
    }
}

/// The outcome of one observation, written to status whatever happened.
#[derive(Debug, Default)]
struct Report {
    conditions: Conditions,
    desired_nodes: Option<u32>,
    units: Vec<Unit>,
    forecast: Option<ForecastStatus>,
    gauges: Option<PolicyGauges>,
    /// The policy's share of the caps was recorded in this pass.
    counted: bool,
    /// Units by image-warm state, when warming ran.
    image_warm: Option<crate::crd::ImageWarmStatus>,
    /// The mode whose capacity the policy holds, when this pass knows it.
    capacity_mode: Option<CapacityMode>,
    /// The learned keep-alive, with `scaleDownAfter: auto`.
    keep_alive: Option<KeepAliveStatus>,
}

async fn apply(policy: &PrewarmPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(policy);
    let mut report = Report::default();
    let outcome = observe_and_act(policy, ctx, &mut report).await;
    if matches!(outcome, Err(Error::NotLeader)) {
        // Not ours to write any more, status included.
        return outcome;
    }
    if !report.counted && !ctx.caps.is_empty() {
        count_unplanned(policy, ctx).await;
    }
    write_status(policy, ctx, &report).await?;
    match outcome {
        Ok(action) => {
            ctx.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            Ok(action)
        }
        Err(e) => Err(e),
    }
}

/// Observes, plans and acts, recording what it found in `report`. `Ok` with a requeue when the
/// policy cannot act until something changes (bad input); `Err` for retryable failures.
async fn observe_and_act(
    policy: &PrewarmPolicy,
    ctx: &Context,
    report: &mut Report,
) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let key = key_of(policy);
    let spec = &policy.spec;
    let resync = Action::requeue(ctx.resync);
    let now = now_ms();
    // After a mode change the old mode's capacity goes first (idle units at once, busy nodes
    // cordoned until they are empty); the new mode creates nothing until then, so the two
    // never add up past the limits.
    if let Some(old) = policy.status.as_ref().and_then(|s| s.capacity_mode)
        && old != spec.mode
    {
        let pref = PolicyRef {
            namespace: ns.clone(),
            name: name.clone(),
            uid: policy.uid().unwrap_or_default(),
        };
        let changing = format!(
            "spec.mode changed from {} to {}: the {} capacity goes first",
            old.as_str(),
            spec.mode.as_str(),
            old.as_str()
        );
        report.capacity_mode = Some(old);
        if ctx.dry_run {
            report.conditions.set(
                "Ready",
                false,
                "ModeChanging",
                format!("{changing} (dry run: nothing removed)"),
            );
            return Ok(resync);
        }
        let drained = drain_mode(ctx, policy, &pref, old, "mode changed").await?;
        if !drained.kept.is_empty() {
            report.conditions.set(
                "Ready",
                false,
                "ModeChanging",
                format!(
                    "{changing}; waiting for {} busy unit(s) to empty (cordoned): {}",
                    drained.kept.len(),
                    drained.kept.join(", ")
                ),
            );
            report.units = drained.units;
            return Ok(Action::requeue(BUSY_RETRY));
        }
        publish(
            ctx,
            policy,
            EventType::Normal,
            "ModeChanged",
            "Remove",
            format!("{changing}: it is gone, {} takes over", spec.mode.as_str()),
        )
        .await;
    }
    report.capacity_mode = Some(spec.mode);
    let c = &mut report.conditions;

    // Bounded (at most 24 h), so the arithmetic below cannot overflow whatever the spec says.
    let (lead, scale_down) = match spec.durations() {
        Ok(d) => (d.lead_time, d.scale_down_after),
        Err(e) => {
            c.set("Ready", false, "InvalidSpec", e.to_string());
            return Ok(resync);
        }
    };

    // What the policy names must be what the operator allows: no capacity otherwise.
    let refused = ctx.boundaries.check(policy);
    if !refused.is_empty() {
        let message = refused.join("; ");
        c.set("Allowed", false, "NotAllowed", message.clone());
        c.set("Ready", false, "NotAllowed", message.clone());
        // The Warning event comes with the condition's transition (write_status).
        ctx.demand.stop(&key);
        return Ok(resync);
    }
    c.set(
        "Allowed",
        true,
        "Allowed",
        "everything the policy names is allowed by the operator",
    );

    // The ScaledObject and its scale target's pod template give the shape.
    let so_name = &spec.scaled_object_ref.name;
    let so_api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &scaled_object_resource());
    let so = match so_api.get_opt(so_name).await {
        Ok(Some(so)) => Some(so),
        Ok(None) => None,
        // Also when KEDA's CRD is not installed: no ScaledObject either way.
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    let so = match so {
        Some(so) => so,
        None => {
            ctx.demand.stop(&key);
            c.set(
                "ShapeResolved",
                false,
                "ScaledObjectNotFound",
                format!("ScaledObject {ns}/{so_name} not found"),
            );
            c.set("Ready", false, "ScaledObjectNotFound", "nothing to follow");
            return Ok(resync);
        }
    };
    let so_value = serde_json::to_value(&so).unwrap_or(Value::Null);
    let (template, selector) = match scale_target(ctx, &ns, &so_value).await {
        Ok(t) => t,
        Err(TargetError::Kube(e)) => return Err(e.into()),
        Err(TargetError::Bad(reason, message)) => {
            c.set("ShapeResolved", false, reason, message);
            c.set("Ready", false, reason, "no pod shape to plan for");
            return Ok(resync);
        }
    };
    let shape: Shape = match template.spec.as_ref().map(shape_of) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            c.set("ShapeResolved", false, "BadPodTemplate", e.to_string());
            c.set("Ready", false, "BadPodTemplate", "no pod shape to plan for");
            return Ok(resync);
        }
        None => {
            c.set(
                "ShapeResolved",
                false,
                "BadPodTemplate",
                "the pod template has no spec",
            );
            c.set("Ready", false, "BadPodTemplate", "no pod shape to plan for");
            return Ok(resync);
        }
    };

    // The Demand stream: started here, kept while the policy resolves.
    let horizon = lead.saturating_mul(2).max(Duration::from_secs(600));
    let latest = ctx.demand.ensure(
        &key,
        &Watch {
            address: spec.demand_address.clone(),
            namespace: ns.clone(),
            name: so_name.clone(),
            triggers: crate::demand::triggers_of(&so_value),
            horizon,
        },
    );

    // The provider and the node type it makes.
    let warm_helper = ctx.warm_helper.as_ref();
    let built = match providers::for_policy(&ctx.client, policy, &shape, warm_helper).await {
        Ok(b) => b,
        Err(e) => {
            let reason = e.reason();
            if matches!(e, ForPolicyError::Provider(ProviderError::NoFit(_))) {
                c.set("ShapeResolved", false, reason, e.to_string());
            } else {
                c.set(
                    "ShapeResolved",
                    true,
                    "Resolved",
                    describe_shape(&shape, &[]),
                );
            }
            c.set("Ready", false, reason, e.to_string());
            return if e.retryable() {
                Err(match e {
                    ForPolicyError::Provider(p) => Error::Provider(p),
                    other => Error::Provider(ProviderError::Other(other.to_string())),
                })
            } else {
                Ok(resync)
            };
        }
    };
    c.set(
        "ShapeResolved",
        true,
        "Resolved",
        describe_shape(&shape, &built.instance_types),
    );
    let provider = &built.provider;
    let pref = PolicyRef {
        namespace: ns.clone(),
        name: name.clone(),
        uid: policy.uid().unwrap_or_default(),
    };

    // What it owns, and which of it runs pods.
    if tokio::time::timeout(Duration::from_secs(10), ctx.pods.wait_until_ready())
        .await
        .is_err()
    {
        return Err(Error::NotReady);
    }
    let ec2 = provider.name() == "ec2";
    if ec2
        && tokio::time::timeout(Duration::from_secs(10), ctx.nodes.wait_until_ready())
            .await
            .is_err()
    {
        return Err(Error::NotReady);
    }
    let mut held = match provider.holdings(&pref).await {
        Ok(h) => h,
        Err(e) => {
            c.set("Ready", false, e.reason(), e.to_string());
            return Err(e.into());
        }
    };
    if ec2 {
        nodes_by_provider_id(&ctx.nodes, &mut held.units);
    }
    let units = held.units.clone();
    // Nodes that failed to come up: counted, reported, given up on, and creation backed off.
    let launch = if built.units_are_nodes {
        let v = ctx
            .launches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&key, &units, now);
        for (failure, id) in &v.new_failures {
            metrics::capacity_failure(provider.name(), failure.reason());
            tracing::warn!(namespace = %ns, policy = %name, unit = %id, reason = failure.reason(), "capacity failed to come up");
        }
        match &v.failing {
            Some((n, failure, id)) => c.set(
                "CapacityFailing",
                true,
                failure.reason(),
                format!(
                    "{n} consecutive unit(s) failed to come up (last: {id}, {}{}); nothing is created until {}",
                    match failure {
                        launches::Failure::LaunchFailed => "deleted before it was ready",
                        launches::Failure::NotInitialized => "not ready in time, removed",
                    },
                    v.failing_error
                        .as_deref()
                        .map(|e| format!("; the platform said {e}"))
                        .unwrap_or_default(),
                    rfc3339(v.retry_at)
                ),
            ),
            None => c.set(
                "CapacityFailing",
                false,
                "Launching",
                "no capacity failed to come up recently",
            ),
        }
        Some(v)
    } else {
        None
    };
    record_time_to_capacity(ctx, &pref, provider.name(), &units);
    // Image warming (karpenter mode): units pulling keep their disruption protection.
    let mut pulling = HashSet::new();
    if provider.name() == "karpenter"
        && ctx.warm_helper.is_some()
        && !ctx.boundaries.allows_workloads_in(&ns)
    {
        // Pre-pull pods are pods in the policy's namespace: only where the operator lets
        // Headroom create them (and its Roles grant it).
        c.set(
            "ImageWarm",
            false,
            "NotAllowed",
            format!(
                "namespace {ns} is not one where the operator lets Headroom create pre-pull pods (--workload-namespaces): units come up without the workload's images"
            ),
        );
    } else if provider.name() == "karpenter"
        && let (Some(helper), Some(template_spec)) = (&ctx.warm_helper, template.spec.as_ref())
    {
        match warm_units(ctx, &pref, template_spec, &units, helper, now).await {
            Ok(w) => {
                set_image_warm_condition(c, &w);
                report.image_warm = Some(w.status.clone());
                pulling = w.pulling;
            }
            Err(Error::NotLeader) => return Err(Error::NotLeader),
            // Warming is not capacity: planning goes on, and the condition says why units
            // stay cold.
            Err(e) => {
                tracing::warn!(namespace = %ns, policy = %name, error = %e, "image warming failed");
                c.set(
                    "ImageWarm",
                    false,
                    "PrePullFailed",
                    format!("pre-pull pods: {e}"),
                );
            }
        }
    } else if provider.name() == "overprovision"
        && ctx.warm_helper.is_some()
        && !shape.images.containers.is_empty()
    {
        if !ctx.dry_run {
            leading(ctx)?;
            match provider.refresh_images(&pref, &shape).await {
                Ok(true) => {
                    tracing::info!(namespace = %ns, policy = %name, images = %shape.images.hash, "placeholders replaced for new images")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, policy = %name, error = %e, "cannot update the placeholders' images")
                }
            }
        }
        let w = warm_placeholders(ctx, &pref, &shape.images.hash).await;
        set_image_warm_condition(c, &w);
        report.image_warm = Some(w.status.clone());
    }
    // Held units get their last-needed mark refreshed only now and then, so the writes do not
    // wake us in a loop.
    let fixed_scale_down = match scale_down {
        ScaleDown::After(d) => d,
        ScaleDown::Auto => AUTO_FALLBACK,
    };
    let refresh = (fixed_scale_down / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    report.units = units.clone();
    let (mut owned, placed_elsewhere) =
        occupancy(ctx, &ns, &selector, &units, built.units_are_nodes);
    // Costs per owned unit for the hard limits, and the units asked for but not made yet (a
    // lagging ReplicaSet) as in-flight nodes, so nothing is asked for twice.
    let mut owned_costs: Vec<plan::UnitCost> = units.iter().map(|u| built.cost_of(u)).collect();
    for i in 0..held.unmaterialised {
        owned.push(OwnedNode {
            id: format!("{UNMATERIALISED}{i}"),
            ready: false,
            busy_pods: 0,
            last_needed: now,
        });
        owned_costs.push(built.worst);
    }
    let deleting: Vec<plan::UnitCost> = held.deleting.iter().map(|u| built.cost_of(u)).collect();

    // Demand: an error is reported, never read as 0.
    let answer = match demand_answer(&latest) {
        Ok(a) => {
            c.set(
                "DemandAvailable",
                true,
                "Answering",
                format!("Demand service at {}", spec.demand_address),
            );
            a
        }
        Err((reason, message)) => {
            // Nothing is created or removed without a forecast, and what exists is held (its
            // last-needed mark kept fresh), so the outage does not count as idle time when
            // the answers come back; the stream wakes us.
            c.set(
                "DemandDegraded",
                true,
                reason,
                format!(
                    "no forecast ({message}): holding all {} unit(s), creating and removing nothing",
                    units.len()
                ),
            );
            c.set("DemandAvailable", false, reason, message.clone());
            c.set("Ready", false, reason, message);
            record_usage(ctx, &key, held_usage(&built, &held));
            report.counted = true;
            if !ctx.dry_run {
                let stale = due_for_hold(units.iter(), now, refresh);
                if !stale.is_empty() {
                    leading(ctx)?;
                }
                if !stale.is_empty()
                    && let Err(e) = provider.hold(&pref, &stale, now).await
                {
                    tracing::warn!(namespace = %ns, policy = %name, error = %e, "cannot hold capacity");
                    if e.retryable() {
                        return Err(e.into());
                    }
                }
            }
            return Ok(resync);
        }
    };
    // A trigger the scaler could not read is missing demand, not low demand: keep what exists.
    let unreadable = unreadable_triggers(answer);
    match &unreadable {
        Some(message) => c.set(
            "DemandDegraded",
            true,
            "TriggerUnreadable",
            format!(
                "{message}; holding all {} unit(s), removing none",
                units.len()
            ),
        ),
        None => c.set(
            "DemandDegraded",
            false,
            "AllTriggersRead",
            "every trigger was read",
        ),
    }
    let mut forecast: Vec<Want> = answer
        .forecast
        .iter()
        .map(|p| Want {
            at: p.at_unix_ms,
            replicas: p.replicas,
        })
        .collect();
    let limits = Limits {
        max_nodes: spec.limits.max_nodes,
        max_gpus: spec.limits.max_gpus,
        max_hourly_cost: spec.limits.max_hourly_cost,
    };
    let lead_ms = millis_of(lead);
    // `scaleDownAfter: auto`: the keep-alive learned from the idle gaps kept in the status. A
    // reading with an unreadable trigger is not a zero: it is left out of the gaps.
    let (scale_down_ms, scale_down_text) = match scale_down {
        ScaleDown::After(d) => (millis_of(d), spec.scale_down_after.clone()),
        ScaleDown::Auto => {
            let mut gaps = policy
                .status
                .as_ref()
                .and_then(|s| s.keep_alive.as_ref())
                .map(KeepAliveStatus::gaps)
                .unwrap_or_default();
            let wanted = unreadable.is_none().then_some(answer.desired_replicas);
            let step = gaps.step(now, wanted, millis_of(AUTO_FALLBACK), lead_ms);
            forecast.extend(step.prewarm);
            let status = KeepAliveStatus::new(&gaps, &step.decision);
            let text = format!("{} (auto, {})", status.keep_for, status.basis);
            report.keep_alive = Some(status);
            (step.scale_down_after, text)
        }
    };
    let mut extra = plan::Extra {
        hold_all: unreadable.is_some(),
        owned_costs,
        deleting,
        new_unit: Some(built.worst),
        cluster: ctx.caps,
        others: Usage::default(),
    };
    let input = PlanInput {
        now,
        desired_now: answer.desired_replicas,
        forecast: &forecast,
        lead_time: lead_ms,
        shape: shape.plan_shape(),
        node: built.node,
        placed_elsewhere,
        owned: &owned,
        limits,
        min_warm_gpus: spec.min_warm_gpus,
        scale_down_after: scale_down_ms,
    };
    // Planned under the tally's lock, and its share recorded before the lock is let go: what
    // the plan creates is reserved against the caps before any other policy plans.
    let mut uncounted = None;
    let planned = {
        let mut tally = ctx.tally.lock().unwrap_or_else(PoisonError::into_inner);
        if !ctx.caps.is_empty() {
            match others_of(&tally, &key, &ctx.policies) {
                Ok(others) => extra.others = others,
                Err(missing) => {
                    extra.others = Usage::FULL;
                    uncounted = Some(missing);
                }
            }
        }
        let r = plan::plan_with(&input, &extra);
        if let Ok(p) = &r {
            let share = if ctx.dry_run {
                held_usage(&built, &held)
            } else {
                p.usage
            };
            tally.insert(key.clone(), share);
            metrics::cluster_usage(&total_of(&tally, &ctx.policies));
        }
        r
    };
    report.counted = planned.is_ok();
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            c.set("ShapeResolved", false, "PodDoesNotFit", e.to_string());
            c.set("Ready", false, "PodDoesNotFit", e.to_string());
            return Ok(resync);
        }
    };
    report.desired_nodes = Some(plan.planned_nodes);
    report.forecast = Some(ForecastStatus {
        peak_replicas: plan.peak_replicas,
        desired_replicas_now: answer.desired_replicas,
        observed_at: rfc3339(if answer.observed_at_unix_ms > 0 {
            answer.observed_at_unix_ms
        } else {
            now
        }),
    });
    match plan.limited_by {
        Some(l) => {
            let mut why = String::new();
            if l.is_cluster_wide() {
                metrics::cluster_cap_held(l.name());
                why.push_str(" (a cap across all policies");
                if let Some(missing) = &uncounted {
                    why.push_str(&format!(
                        ": waiting until the capacity of {missing} has been counted"
                    ));
                }
                why.push(')');
            } else if l == plan::Limit::HourlyCost && built.worst.hourly_price.is_none() {
                why.push_str(
                    " (a unit's price is unknown: list the instance types with hourlyPrice)",
                );
            } else if l == plan::Limit::Gpus && built.worst.gpus.is_none() {
                why.push_str(" (a node's GPU count is unknown until it launches: one at a time)");
            }
            c.set(
                "LimitReached",
                true,
                limit_reason(l),
                format!(
                    "{}{why} holds the plan at {} node(s); the forecast wants {}",
                    l.name(),
                    plan.planned_nodes,
                    plan.wanted_nodes
                ),
            )
        }
        None => c.set(
            "LimitReached",
            false,
            "WithinLimits",
            "the plan is within every limit",
        ),
    }
    report.gauges = Some(PolicyGauges {
        planned_nodes: plan.planned_nodes,
        planned_gpus: plan.planned_nodes.saturating_mul(built.node.gpus),
        node_gpus: built.node.gpus,
        max_nodes: limits.max_nodes,
        max_gpus: limits.max_gpus,
        forecast_replicas: plan.peak_replicas,
        at_limit: plan.limited_by.map(plan::Limit::name),
        ..Default::default()
    });

    if ctx.dry_run {
        tracing::info!(
            namespace = %ns, policy = %name, peak = plan.peak_replicas, planned = plan.planned_nodes,
            create = plan.create, remove = ?plan.remove, "dry run: plan not acted on"
        );
        c.set(
            "Ready",
            true,
            "DryRun",
            format!(
                "dry run: would create {} and remove {} node(s)",
                plan.create,
                plan.remove.len()
            ),
        );
        return Ok(resync);
    }

    // Act: hold what is needed (refreshing the mark only now and then, so the writes do not
    // wake us in a loop), release what is not, remove what has been idle long enough, create.
    let hold = due_for_hold(
        units.iter().filter(|u| plan.needed.contains(&u.id)),
        now,
        refresh,
    );
    let release: Vec<String> = units
        .iter()
        .filter(|u| !plan.needed.contains(&u.id) && !plan.remove.contains(&u.id))
        .filter(|u| !pulling.contains(&u.id))
        .map(|u| u.id.clone())
        .collect();
    // Only units that exist as objects are removed (not the stand-ins for unmade replicas).
    let mut remove: Vec<String> = plan
        .remove
        .iter()
        .filter(|id| units.iter().any(|u| &u.id == *id))
        .cloned()
        .collect();
    // Given up on (never ready): removed like idle capacity, after the same fresh check.
    for id in launch.iter().flat_map(|v| &v.give_up) {
        if !remove.contains(id) {
            remove.push(id.clone());
        }
    }
    let backing_off = launch.as_ref().is_some_and(|v| v.failing.is_some());
    // Leadership is checked right before each write: a Lease lost mid-pass stops it there.
    let mut removed: Vec<String> = Vec::new();
    let act = async {
        if !hold.is_empty() {
            leading(ctx)?;
            provider.hold(&pref, &hold, now).await?;
        }
        if !release.is_empty() {
            leading(ctx)?;
            provider.release(&pref, &release).await?;
        }
        // A node Headroom cordoned and then kept (a crash between cordon and removal, a mode
        // change undone) is schedulable again while its unit stays.
        let staying = units.iter().filter(|u| !remove.contains(&u.id));
        for node in left_cordoned(&ctx.nodes, staying) {
            leading(ctx)?;
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            match uncordon(&nodes, &node).await {
                Ok(()) => {
                    tracing::info!(namespace = %ns, policy = %name, node, "uncordoned a node Headroom had cordoned, as its unit stays")
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, policy = %name, node, error = %e, "cannot uncordon a node Headroom had cordoned")
                }
            }
        }
        if !remove.is_empty() {
            leading(ctx)?;
            let (remove, kept) = empty_before_removal(
                ctx,
                &units,
                remove.clone(),
                built.units_are_nodes,
                Cordon::Undo,
            )
            .await;
            if !kept.is_empty() {
                tracing::info!(namespace = %ns, policy = %name, kept = ?kept, "idle by the plan, busy on a fresh read: kept");
                metrics::removals_kept(kept.len());
                publish(
                    ctx,
                    policy,
                    EventType::Normal,
                    "RemovalDeferred",
                    "Remove",
                    format!("kept, as a fresh read found pods: {}", kept.join(", ")),
                )
                .await;
            }
            removed.clone_from(&remove);
        }
        if !removed.is_empty() {
            let remove = &removed;
            leading(ctx)?;
            provider.remove(&pref, remove).await?;
            tracing::info!(namespace = %ns, policy = %name, removed = ?remove, "capacity removed");
            publish(
                ctx,
                policy,
                EventType::Normal,
                "CapacityRemoved",
                "Remove",
                format!(
                    "removed {} idle node(s), unneeded for {}: {}",
                    remove.len(),
                    scale_down_text,
                    remove.join(", ")
                ),
            )
            .await;
        }
        let mut created = Vec::new();
        if plan.create > 0 && !backing_off {
            leading(ctx)?;
            created = provider
                .create(
                    &pref,
                    &CreateRequest {
                        count: plan.create,
                        shape: &shape,
                        token: token(&pref.uid, &units),
                        now,
                    },
                )
                .await?;
            tracing::info!(
                namespace = %ns, policy = %name, created = created.len(), peak = plan.peak_replicas,
                "capacity created"
            );
            publish(
                ctx,
                policy,
                EventType::Normal,
                "CapacityCreated",
                "Create",
                format!(
                    "created {} node(s) of {} for a peak of {} replica(s) within {}: {}",
                    created.len(),
                    built.instance_types.join("|"),
                    plan.peak_replicas,
                    spec.lead_time,
                    created
                        .iter()
                        .map(|u| u.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .await;
        }
        Ok::<_, Error>(created)
    };
    let acted = act.await;
    if launch.is_some() {
        // What this pass removed is no failure, even when a later write failed.
        let created: &[Unit] = acted.as_ref().map_or(&[], |c| c.as_slice());
        ctx.launches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acted(&key, &removed, created);
    }
    match acted {
        Ok(created) => {
            report.units.retain(|u| !removed.contains(&u.id));
            report.units.extend(created);
            c.set(
                "Ready",
                true,
                "Planned",
                format!(
                    "planned {} node(s) for a peak of {} replica(s)",
                    plan.planned_nodes, plan.peak_replicas
                ),
            );
            Ok(resync)
        }
        Err(Error::Provider(e)) => {
            c.set("Ready", false, e.reason(), e.to_string());
            if e.retryable() {
                Err(e.into())
            } else {
                Ok(resync)
            }
        }
        Err(e) => Err(e),
    }
}

/// `Err(NotLeader)` unless this replica's leadership is valid right now.
fn leading(ctx: &Context) -> Result<(), Error> {
    if ctx.leadership.is_held() {
        Ok(())
    } else {
        Err(Error::NotLeader)
    }
}

fn limit_reason(l: plan::Limit) -> &'static str {
    match l {
        plan::Limit::Nodes => "MaxNodes",
        plan::Limit::Gpus => "MaxGpus",
        plan::Limit::HourlyCost => "MaxHourlyCost",
        plan::Limit::TotalNodes => "MaxTotalNodes",
        plan::Limit::TotalGpus => "MaxTotalGpus",
        plan::Limit::TotalHourlyCost => "MaxTotalHourlyCost",
    }
}

/// Ids of the in-flight nodes standing for a placeholder Deployment's replicas that have no
/// pod yet: never written to (the provider skips its pending ids).
const UNMATERIALISED: &str = "pending:unmaterialised:";

/// What `held` counts against the limits.
fn held_usage(built: &providers::Built, held: &Holdings) -> Usage {
    let mut u = Usage::default();
    for unit in held.units.iter().chain(&held.deleting) {
        u.add(built.cost_of(unit), 1);
    }
    u.add(built.worst, u64::from(held.unmaterialised));
    u
}

/// Sum of what every watched policy but `own` holds; `Err` naming a policy whose share is not
/// known yet (just after start or a leadership change), when nothing may be created under a
/// cap.
fn others_of(
    tally: &HashMap<PolicyKey, Usage>,
    own: &PolicyKey,
    policies: &Store<PrewarmPolicy>,
) -> Result<Usage, String> {
    let mut sum = Usage::default();
    for p in policies.state() {
        let key = key_of(&p);
        if key == *own {
            continue;
        }
        match tally.get(&key) {
            Some(u) => sum = sum.plus(*u),
            None => return Err(format!("policy {}/{}", key.0, key.1)),
        }
    }
    Ok(sum)
}

/// What every watched policy holds, as far as the tally knows.
fn total_of(tally: &HashMap<PolicyKey, Usage>, policies: &Store<PrewarmPolicy>) -> Usage {
    policies
        .state()
        .iter()
        .filter_map(|p| tally.get(&key_of(p)))
        .fold(Usage::default(), |sum, u| sum.plus(*u))
}

fn record_usage(ctx: &Context, key: &PolicyKey, usage: Usage) {
    let mut tally = ctx.tally.lock().unwrap_or_else(PoisonError::into_inner);
    tally.insert(key.clone(), usage);
    metrics::cluster_usage(&total_of(&tally, &ctx.policies));
}

/// The provider of `policy`'s mode for listing and removing what it holds
/// ([`providers::for_cleanup`]), unless that would send requests where the operator does not
/// allow: an EC2 endpoint off the list gets none, clean-up and counting included (nothing was
/// created through an endpoint that was never allowed).
async fn listing_provider(
    ctx: &Context,
    policy: &PrewarmPolicy,
    mode: CapacityMode,
) -> Option<Box<dyn crate::provider::CapacityProvider>> {
    let ns = policy.namespace().unwrap_or_default();
    if mode == CapacityMode::Ec2
        && let Some(endpoint) = policy.spec.ec2.as_ref().and_then(|e| e.endpoint.as_deref())
        && !ctx.boundaries.ec2_endpoint_allowed(&ns, endpoint)
    {
        tracing::warn!(
            namespace = %ns, policy = %policy.name_any(), endpoint,
            "its EC2 endpoint is not allowed: no request is sent there"
        );
        return None;
    }
    providers::for_cleanup(&ctx.client, policy, mode).await
}

/// Counts what a policy holds that this pass could not plan for (its ScaledObject or shape is
/// missing, ...), so the caps across policies still see it: its units by their instance type
/// where the spec lists it, and as of unknown size otherwise. Not counted (and so holding every
/// creation under a cap back) while that listing fails.
async fn count_unplanned(policy: &PrewarmPolicy, ctx: &Context) {
    let key = key_of(policy);
    let Some(provider) = listing_provider(ctx, policy, policy.spec.mode).await else {
        record_usage(ctx, &key, Usage::default());
        return;
    };
    let pref = PolicyRef {
        namespace: key.0.clone(),
        name: key.1.clone(),
        uid: policy.uid().unwrap_or_default(),
    };
    let held = match provider.holdings(&pref).await {
        Ok(h) => h,
        Err(ProviderError::Missing { .. }) => Holdings::default(),
        Err(e) => {
            tracing::warn!(namespace = %key.0, policy = %key.1, error = %e, "cannot count the policy's capacity for the caps");
            return;
        }
    };
    let spec = &policy.spec;
    let catalog = match spec.mode {
        crate::crd::CapacityMode::Karpenter => spec
            .karpenter
            .as_ref()
            .map(|k| k.instance_types.clone())
            .unwrap_or_default(),
        crate::crd::CapacityMode::Ec2 => spec
            .ec2
            .as_ref()
            .map(|e| e.instance_types.clone())
            .unwrap_or_default(),
        crate::crd::CapacityMode::Overprovision => Vec::new(),
    };
    let mut usage = Usage::default();
    for unit in held.units.iter().chain(&held.deleting) {
        let known = catalog.iter().find(|t| t.name == unit.instance_type);
        usage.add(
            plan::UnitCost {
                gpus: unit.gpus.or(known.map(|t| t.gpus)),
                hourly_price: known
                    .and_then(|t| t.hourly_price)
                    .or(Some(unit.hourly_price))
                    .filter(|p| *p > 0.0),
            },
            1,
        );
    }
    usage.add(plan::UnitCost::default(), u64::from(held.unmaterialised));
    record_usage(ctx, &key, usage);
}

fn describe_shape(shape: &Shape, types: &[String]) -> String {
    let mut s = format!(
        "one pod requests {} GPU(s), {} CPU, {:.0} bytes of memory",
        shape.gpus, shape.cpu, shape.memory
    );
    if !types.is_empty() {
        s.push_str(&format!("; instance type {}", types.join("|")));
    }
    s
}

/// The units among `units` whose last-needed mark is older than `refresh`: those a hold
/// writes to (the others were marked recently enough).
fn due_for_hold<'a>(
    units: impl Iterator<Item = &'a Unit>,
    now: Millis,
    refresh: Duration,
) -> Vec<String> {
    units
        .filter(|u| now.saturating_sub(u.last_needed) >= millis_of(refresh))
        .map(|u| u.id.clone())
        .collect()
}

/// The triggers the scaler could not read in `answer` (their metric names and errors), as one
/// message; `None` when every trigger was read.
fn unreadable_triggers(answer: &headroom_proto::headroom::v1::DemandResponse) -> Option<String> {
    let bad: Vec<String> = answer
        .triggers
        .iter()
        .filter(|t| !t.error.is_empty())
        .map(|t| {
            let name = if t.metric_name.is_empty() {
                "(unnamed)"
            } else {
                t.metric_name.as_str()
            };
            format!("trigger {name} unreadable: {}", t.error)
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

fn demand_answer(
    latest: &Latest,
) -> Result<&headroom_proto::headroom::v1::DemandResponse, (&'static str, String)> {
    if let Some(error) = &latest.error {
        return Err(("DemandUnavailable", error.clone()));
    }
    match &latest.answer {
        Some((a, _)) => Ok(a),
        None => Err(("WaitingForDemand", "no Demand answer yet".into())),
    }
}

enum TargetError {
    Kube(kube::Error),
    Bad(&'static str, String),
}

/// The scale target's pod template and the label selector of its pods.
async fn scale_target(
    ctx: &Context,
    ns: &str,
    so: &Value,
) -> Result<(PodTemplateSpec, BTreeMap<String, String>), TargetError> {
    let target = &so["spec"]["scaleTargetRef"];
    let Some(name) = target["name"].as_str() else {
        return Err(TargetError::Bad(
            "ScaleTargetNotFound",
            "the ScaledObject has no spec.scaleTargetRef.name".into(),
        ));
    };
    let kind = target["kind"].as_str().unwrap_or("Deployment");
    let missing = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 404 => TargetError::Bad(
            "ScaleTargetNotFound",
            format!("{kind} {ns}/{name} (the ScaledObject's scale target) not found"),
        ),
        other => TargetError::Kube(other),
    };
    let (template, selector) = match kind {
        "Deployment" => {
            let d = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                .get(name)
                .await
                .map_err(missing)?;
            let spec = d.spec.unwrap_or_default();
            (
                spec.template,
                spec.selector.match_labels.unwrap_or_default(),
            )
        }
        "StatefulSet" => {
            let s = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                .get(name)
                .await
                .map_err(missing)?;
            let spec = s.spec.unwrap_or_default();
            (
                spec.template,
                spec.selector.match_labels.unwrap_or_default(),
            )
        }
        other => {
            return Err(TargetError::Bad(
                "UnsupportedScaleTarget",
                format!("scale target kind {other} is not supported (Deployment or StatefulSet)"),
            ));
        }
    };
    Ok((template, selector))
}

/// A pod that makes its node busy: not finished (a terminating pod still runs: a worker
/// finishing its task after a scale-down), and neither a daemon, a static (mirror) pod nor one
/// of Headroom's pre-pull pods.
pub fn keeps_node_busy(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
        && !p.owner_references().iter().any(|o| o.kind == "DaemonSet")
        && !p.annotations().contains_key("kubernetes.io/config.mirror")
        && !p.labels().contains_key(warm::WARM_LABEL)
}

/// What becomes of the cordon on a node kept for its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cordon {
    /// Uncordoned (if Headroom cordoned it): the unit stays in use.
    Undo,
    /// Left cordoned, so the pods there finish and nothing new lands: the unit is going
    /// (policy deleted, mode changed).
    Keep,
}

/// The annotation marking a node Headroom cordoned before removing its unit.
pub const CORDONED_ANNOTATION: &str = "headroom.dev/cordoned";

/// Of the units `remove` names, those that may go: a unit without a node yet goes as it is; a
/// node is cordoned, then the pods on it are read afresh from the API server (not the cache),
/// and it goes only when none keeps it busy — otherwise it is uncordoned (if Headroom cordoned
/// it) and kept. A node that cannot be checked is kept. Returns (may go, kept with why).
async fn empty_before_removal(
    ctx: &Context,
    units: &[Unit],
    remove: Vec<String>,
    units_are_nodes: bool,
    busy: Cordon,
) -> (Vec<String>, Vec<String>) {
    if !units_are_nodes {
        return (remove, Vec::new());
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut go = Vec::new();
    let mut kept = Vec::new();
    for id in remove {
        let Some(node) = units
            .iter()
            .find(|u| u.id == id)
            .and_then(|u| u.node_name.clone())
        else {
            go.push(id);
            continue;
        };
        let cordoned = match cordon(&nodes, &node).await {
            Ok(c) => c,
            // Gone already: nothing runs there.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                go.push(id);
                continue;
            }
            Err(e) => {
                kept.push(format!("{id} (cannot cordon node {node}: {e})"));
                continue;
            }
        };
        let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
        match pods.list(&lp).await {
            Ok(list) => {
                let busy = list.items.iter().filter(|p| keeps_node_busy(p)).count();
                if busy == 0 {
                    go.push(id);
                    continue;
                }
                kept.push(format!("{id} ({busy} pod(s) on node {node})"));
            }
            Err(e) => kept.push(format!("{id} (cannot list the pods of node {node}: {e})")),
        }
        if cordoned
            && busy == Cordon::Undo
            && let Err(e) = uncordon(&nodes, &node).await
        {
            tracing::warn!(node, error = %e, "cannot uncordon a node kept for its pods");
        }
    }
    (go, kept)
}

/// The nodes of `units` that carry Headroom's cordon annotation, from the node store.
fn left_cordoned<'a>(nodes: &Store<Node>, units: impl Iterator<Item = &'a Unit>) -> Vec<String> {
    units
        .filter_map(|u| u.node_name.as_deref())
        .filter(|n| {
            nodes
                .get(&ObjectRef::new(n))
                .is_some_and(|node| node.annotations().contains_key(CORDONED_ANNOTATION))
        })
        .map(String::from)
        .collect()
}

/// Marks `node` unschedulable; `true` when Headroom did (it was schedulable), so only then is
/// it undone.
async fn cordon(nodes: &Api<Node>, node: &str) -> Result<bool, kube::Error> {
    let current = nodes.get(node).await?;
    if current.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"annotations": {CORDONED_ANNOTATION: "true"}},
        "spec": {"unschedulable": true}
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

async fn uncordon(nodes: &Api<Node>, node: &str) -> Result<(), kube::Error> {
    let patch = json!({
        "metadata": {"annotations": {CORDONED_ANNOTATION: null}},
        "spec": {"unschedulable": false}
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn running(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Owned units as the planner sees them (with the pods running on each), and the workload pods
/// placed on nodes Headroom does not own.
fn occupancy(
    ctx: &Context,
    ns: &str,
    selector: &BTreeMap<String, String>,
    units: &[Unit],
    units_are_nodes: bool,
) -> (Vec<OwnedNode>, u32) {
    let pods = ctx.pods.state();
    // Placeholder pods (overprovision) hold room on nodes anyone may own: workload pods on
    // those nodes do not run "on" a placeholder, so none is ever busy and every workload pod
    // counts as placed elsewhere.
    let ours: HashSet<&str> = units
        .iter()
        .filter(|_| units_are_nodes)
        .filter_map(|u| u.node_name.as_deref())
        .collect();
    let mut busy: HashMap<&str, u32> = HashMap::new();
    let mut placed_elsewhere = 0u32;
    for p in &pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if ours.contains(node) {
            // Terminating pods included: a worker finishing its task after a scale-down
            // still runs on the node.
            if keeps_node_busy(p) {
                *busy.entry(node).or_default() += 1;
            }
        } else if running(p)
            && p.namespace().as_deref() == Some(ns)
            && !selector.is_empty()
            && selector.iter().all(|(k, v)| p.labels().get(k) == Some(v))
        {
            placed_elsewhere += 1;
        }
    }
    let owned = units
        .iter()
        .map(|u| OwnedNode {
            id: u.id.clone(),
            ready: u.ready,
            busy_pods: u
                .node_name
                .as_deref()
                .and_then(|n| busy.get(n))
                .copied()
                .unwrap_or(0),
            last_needed: u.last_needed,
        })
        .collect();
    (owned, placed_elsewhere)
}

fn record_time_to_capacity(
    ctx: &Context,
    policy: &PolicyRef,
    provider: &'static str,
    units: &[Unit],
) {
    let mut seen = ctx
        .recorded_ready
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Kubernetes timestamps have whole seconds: a unit that became ready in the second this
    // process started reads as earlier than the start, and must still count.
    let since = ctx.started_ms - ctx.started_ms.rem_euclid(1000);
    for u in units {
        if let Some(ready_at) = u.ready_at
            && ready_at >= since
            && seen.insert(u.id.clone())
        {
            let secs = ready_at.saturating_sub(u.created_at).max(0) as f64 / 1000.0;
            metrics::time_to_capacity(&policy.namespace, &policy.name, provider, secs);
        }
    }
}

async fn publish(
    ctx: &Context,
    policy: &PrewarmPolicy,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
}

/// Writes status (server-side apply, one field manager) and publishes a Warning event for each
/// condition that turned bad.
async fn write_status(policy: &PrewarmPolicy, ctx: &Context, report: &Report) -> Result<(), Error> {
    let now = now_ms();
    let old = policy.status.clone().unwrap_or_default();
    let warm = report.units.iter().filter(|u| u.ready).count() as u32;
    let in_flight = report.units.len() as u32 - warm;
    let mut conditions = Vec::new();
    for (kind, (ok, reason, message)) in &report.conditions.0 {
        // LimitReached and DemandDegraded are "True" when bad; the others when good.
        let status = if *ok { "True" } else { "False" };
        let previous = old.conditions.iter().find(|c| c.type_ == *kind);
        let transition = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => rfc3339(now),
        };
        let bad = if matches!(*kind, "LimitReached" | "DemandDegraded" | "CapacityFailing") {
            *ok
        } else {
            !*ok
        };
        let changed = previous.is_none_or(|p| p.status != status || p.reason != *reason);
        if bad && changed && !matches!(*reason, "WaitingForDemand" | "Pulling") {
            publish(
                ctx,
                policy,
                EventType::Warning,
                reason,
                kind,
                message.clone(),
            )
            .await;
        }
        conditions.push(Condition {
            type_: (*kind).to_string(),
            status: status.into(),
            reason: (*reason).into(),
            message: message.clone(),
            last_transition_time: transition,
            observed_generation: policy.metadata.generation,
        });
    }
    // Conditions this pass did not reach keep their last value.
    for c in &old.conditions {
        if !report.conditions.0.contains_key(c.type_.as_str()) {
            conditions.push(c.clone());
        }
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let ttc = report
        .units
        .iter()
        .filter_map(|u| {
            u.ready_at
                .map(|r| (r, r.saturating_sub(u.created_at).max(0) as f64 / 1000.0))
        })
        .max_by_key(|(r, _)| *r)
        .map(|(_, s)| s)
        .or(old.observed_time_to_capacity_seconds);
    let status = PrewarmPolicyStatus {
        observed_generation: policy.metadata.generation,
        desired_nodes: report.desired_nodes.unwrap_or(old.desired_nodes),
        warm_nodes: warm,
        in_flight_nodes: in_flight,
        last_forecast: report.forecast.clone().or(old.last_forecast),
        observed_time_to_capacity_seconds: ttc,
        image_warm: report.image_warm.clone().or(old.image_warm),
        capacity_mode: report.capacity_mode.or(old.capacity_mode),
        // Kept while the policy is on `auto` (a pass that did not reach the plan keeps the last
        // state), dropped once it is not.
        keep_alive: if policy.spec.scale_down_is_auto() {
            report.keep_alive.clone().or(old.keep_alive)
        } else {
            None
        },
        conditions,
    };
    if let Some(mut g) = report.gauges {
        let gpus_per = g.node_gpus;
        g.warm_nodes = warm;
        g.in_flight_nodes = in_flight;
        g.warm_gpus = warm.saturating_mul(gpus_per);
        g.in_flight_gpus = in_flight.saturating_mul(gpus_per);
        g.hourly_cost = report.units.iter().map(|u| u.hourly_price).sum();
        let (ns, name) = key_of(policy);
        metrics::policy(&ns, &name, &g);
    }
    let api: Api<PrewarmPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "headroom.dev/v1alpha1",
        "kind": "PrewarmPolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// What the warm pass found.
#[derive(Debug, Default)]
struct Warmth {
    status: crate::crd::ImageWarmStatus,
    /// Units pulling now.
    pulling: HashSet<String>,
    /// (unit, node, image, reason, message) of units whose images cannot be pulled.
    failures: Vec<(String, String, String, &'static str, String)>,
}

/// The pre-pull pods of `policy`, from the pod cache.
fn prepull_pods(ctx: &Context, policy: &PolicyRef) -> Vec<Arc<Pod>> {
    let label = crate::karpenter::policy_label(&policy.namespace, &policy.name);
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(policy.namespace.as_str()))
        .filter(|p| p.labels().get(POLICY_LABEL) == Some(&label))
        .filter(|p| {
            p.labels().get(warm::WARM_LABEL).map(String::as_str) == Some(warm::WARM_PREPULL)
        })
        .collect()
}

/// Deletes the policy's pre-pull pods that `doomed` picks (not being deleted already).
async fn remove_prepull_pods(
    ctx: &Context,
    policy: &PolicyRef,
    doomed: impl Fn(&Pod) -> bool,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &policy.namespace);
    for p in prepull_pods(ctx, policy) {
        if p.metadata.deletion_timestamp.is_some() || !doomed(&p) {
            continue;
        }
        leading(ctx)?;
        match api
            .delete(
                &p.name_any(),
                &kube::api::DeleteParams::default().grace_period(0),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes ready units image-warm: a pre-pull pod per ready unit that does not hold the current
/// images; once pulled, the unit's NodeClaim records the images' hash and the pod goes. Pods
/// for other images or units are removed. Writes nothing in dry-run mode.
async fn warm_units(
    ctx: &Context,
    policy: &PolicyRef,
    template: &k8s_openapi::api::core::v1::PodSpec,
    units: &[Unit],
    helper: &warm::Helper,
    now: Millis,
) -> Result<Warmth, Error> {
    let images = warm::images_of(template);
    let hash = warm::images_hash(&images);
    let label = crate::karpenter::policy_label(&policy.namespace, &policy.name);
    let policy_ref = format!("{}/{}", policy.namespace, policy.name);
    let pods = prepull_pods(ctx, policy);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &policy.namespace);
    let claims: Api<DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &providers::karpenter::node_claim_resource(),
    );
    let act = !ctx.dry_run;
    let mut w = Warmth {
        status: crate::crd::ImageWarmStatus {
            images: hash.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut wanted: HashSet<String> = HashSet::new();
    for u in units {
        let state = match (u.ready, u.node_name.as_deref()) {
            (false, _) | (_, None) => UnitState::Booting,
            _ if images.is_empty() || u.images.as_deref() == Some(hash.as_str()) => UnitState::Warm,
            (true, Some(node)) => {
                let name = warm::prepull_name(&u.id, &hash);
                wanted.insert(name.clone());
                let pod = pods
                    .iter()
                    .find(|p| p.name_any() == name && p.metadata.deletion_timestamp.is_none());
                match pod.map(|p| (p, warm::classify(p))) {
                    None => {
                        if act {
                            let pod = warm::prepull_pod(&warm::Prepull {
                                namespace: &policy.namespace,
                                policy_label: &label,
                                policy_ref: &policy_ref,
                                unit: &u.id,
                                node,
                                template,
                                helper,
                            });
                            leading(ctx)?;
                            match pod_api.create(&Default::default(), &pod).await {
                                Ok(_) => {
                                    metrics::image_pull_started(&policy.namespace, &policy.name);
                                    tracing::info!(namespace = %policy.namespace, policy = %policy.name, unit = %u.id, %node, pod = %name, "pre-pull pod created");
                                }
                                Err(kube::Error::Api(s)) if s.code == 409 => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        UnitState::Pulling
                    }
                    Some((_, PullState::Pulling)) => UnitState::Pulling,
                    Some((_, PullState::Pulled)) => {
                        if act {
                            leading(ctx)?;
                            let patch = json!({"metadata": {"annotations": {warm::IMAGES_ANNOTATION: hash}}});
                            match claims
                                .patch(&u.id, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                            {
                                Ok(_) => {}
                                // The NodeClaim is gone: the next pass drops its pod.
                                Err(kube::Error::Api(s)) if s.code == 404 => {}
                                Err(e) => return Err(e.into()),
                            }
                            let secs = now.saturating_sub(u.created_at).max(0) as f64 / 1000.0;
                            // From asking for the unit: its first images only, not a re-pull.
                            if u.images.is_none() {
                                metrics::time_to_image_warm(&policy.namespace, &policy.name, secs);
                            }
                            tracing::info!(namespace = %policy.namespace, policy = %policy.name, unit = %u.id, %node, seconds = secs, "unit image-warm");
                        }
                        // The pod goes below, as one no longer wanted.
                        wanted.remove(&name);
                        UnitState::Warm
                    }
                    Some((
                        p,
                        PullState::Failed {
                            reason,
                            image,
                            message,
                        },
                    )) => {
                        let reason = warm::reason_label(&reason);
                        count_pull_failure(ctx, policy, p, reason).await;
                        w.failures
                            .push((u.id.clone(), node.to_string(), image, reason, message));
                        UnitState::Failed
                    }
                }
            }
        };
        match state {
            UnitState::Booting => w.status.booting_units += 1,
            UnitState::Pulling => {
                w.status.pulling_units += 1;
                w.pulling.insert(u.id.clone());
            }
            UnitState::Warm => w.status.warm_units += 1,
            UnitState::Failed => {
                w.status.failed_units += 1;
                // A failed pull keeps the pod (the kubelet retries it); the node stays held.
                w.pulling.insert(u.id.clone());
            }
        }
    }
    if act {
        remove_prepull_pods(ctx, policy, |p| !wanted.contains(&p.name_any())).await?;
    }
    warm_gauges(policy, &w);
    Ok(w)
}

/// Marks a pod whose pull failed, so the failure is counted once.
const PULL_FAILED_ANNOTATION: &str = "headroom.dev/pull-failed";

async fn count_pull_failure(ctx: &Context, policy: &PolicyRef, pod: &Pod, reason: &'static str) {
    if ctx.dry_run
        || pod.annotations().contains_key(PULL_FAILED_ANNOTATION)
        || !ctx.leadership.is_held()
    {
        return;
    }
    metrics::image_pull_failed(&policy.namespace, &policy.name, reason);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &policy.namespace);
    let patch = json!({"metadata": {"annotations": {PULL_FAILED_ANNOTATION: reason}}});
    if let Err(e) = api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(error = %e, pod = %pod.name_any(), "cannot mark a failed pull");
    }
}

/// Placeholders (overprovision mode) by warm state, from the pod cache: they run the
/// workload's images, so a running placeholder of the current template holds them.
async fn warm_placeholders(ctx: &Context, policy: &PolicyRef, hash: &str) -> Warmth {
    let label = crate::karpenter::policy_label(&policy.namespace, &policy.name);
    let mut w = Warmth {
        status: crate::crd::ImageWarmStatus {
            images: hash.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(policy.namespace.as_str()))
        .filter(|p| p.labels().get(POLICY_LABEL) == Some(&label))
        .filter(|p| {
            p.labels().get("app.kubernetes.io/name").map(String::as_str)
                == Some("headroom-placeholder")
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    for p in pods {
        let (state, pull) = warm::placeholder_state(&p, hash);
        match state {
            UnitState::Booting => w.status.booting_units += 1,
            UnitState::Pulling => w.status.pulling_units += 1,
            UnitState::Warm => w.status.warm_units += 1,
            UnitState::Failed => w.status.failed_units += 1,
        }
        if let PullState::Failed {
            reason,
            image,
            message,
        } = pull
        {
            let reason = warm::reason_label(&reason);
            count_pull_failure(ctx, policy, &p, reason).await;
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            w.failures
                .push((p.name_any(), node, image, reason, message));
        }
    }
    warm_gauges(policy, &w);
    w
}

fn warm_gauges(policy: &PolicyRef, w: &Warmth) {
    let s = &w.status;
    metrics::image_warm_units(
        &policy.namespace,
        &policy.name,
        &UnitState::ALL.map(|st| {
            (
                st.name(),
                match st {
                    UnitState::Booting => s.booting_units,
                    UnitState::Pulling => s.pulling_units,
                    UnitState::Warm => s.warm_units,
                    UnitState::Failed => s.failed_units,
                },
            )
        }),
    );
}

/// `ImageWarm`: False with the kubelet's reason while an image cannot be pulled, naming the
/// image and node; False `Pulling` while pulls run; True once every ready unit holds them.
fn set_image_warm_condition(c: &mut Conditions, w: &Warmth) {
    let s = &w.status;
    if let Some((unit, node, image, reason, message)) = w.failures.first() {
        let more = match w.failures.len() {
            1 => String::new(),
            n => format!(" (and {} more unit(s))", n - 1),
        };
        c.set(
            "ImageWarm",
            false,
            reason,
            format!(
                "image {image:?} cannot be pulled on node {node} (unit {unit}): {message}{more}; {} unit(s) image-warm",
                s.warm_units
            ),
        );
    } else if s.pulling_units > 0 {
        c.set(
            "ImageWarm",
            false,
            "Pulling",
            format!(
                "{} unit(s) pulling the workload's images, {} image-warm, {} booting",
                s.pulling_units, s.warm_units, s.booting_units
            ),
        );
    } else {
        c.set(
            "ImageWarm",
            true,
            "ImagesPulled",
            format!(
                "{} ready unit(s) hold the workload's images, {} booting",
                s.warm_units, s.booting_units
            ),
        );
    }
}

/// On deletion: removes everything the policy holds (not in dry-run mode), then lets it go.
/// Idle units go at once; a node that runs pods is cordoned (so nothing new lands there) and
/// kept until it is empty: the finalizer stays, with a `Deleting` condition and an event naming
/// what it waits for.
async fn cleanup(policy: &PrewarmPolicy, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(policy);
    ctx.demand.stop(&key);
    ctx.launches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .forget(&key);
    if ctx.dry_run {
        return Ok(Action::await_change());
    }
    let pref = PolicyRef {
        namespace: key.0.clone(),
        name: key.1.clone(),
        uid: policy.uid().unwrap_or_default(),
    };
    remove_prepull_pods(ctx, &pref, |_| true).await?;
    // The spec's mode, and the one whose capacity it still held after a mode change.
    let mut modes = vec![policy.spec.mode];
    if let Some(held) = policy.status.as_ref().and_then(|s| s.capacity_mode)
        && held != policy.spec.mode
    {
        modes.push(held);
    }
    let mut waiting = Drained::default();
    for mode in modes {
        let d = drain_mode(ctx, policy, &pref, mode, "policy deleted").await?;
        waiting.kept.extend(d.kept);
        waiting.units.extend(d.units);
    }
    if waiting.kept.is_empty() {
        ctx.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        return Ok(Action::await_change());
    }
    let message = format!(
        "waiting for {} busy unit(s) to empty (cordoned; drain them to go sooner): {}",
        waiting.kept.len(),
        waiting.kept.join(", ")
    );
    let was = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Deleting"))
        .is_some_and(|c| c.status == "True");
    if !was {
        publish(
            ctx,
            policy,
            EventType::Normal,
            "DeletionWaiting",
            "Delete",
            message.clone(),
        )
        .await;
    }
    let mut report = Report {
        units: waiting.units,
        ..Report::default()
    };
    report
        .conditions
        .set("Deleting", true, "WaitingForBusyUnits", message);
    write_status(policy, ctx, &report).await?;
    Err(Error::Busy(waiting.kept.len()))
}

/// What draining a mode's capacity left.
#[derive(Debug, Default)]
struct Drained {
    /// The units kept, with why (pods on the node, or a node that cannot be checked).
    kept: Vec<String>,
    /// Those units.
    units: Vec<Unit>,
}

/// Removes what `policy` holds in `mode`: units without a node and empty nodes at once; nodes
/// with pods are cordoned and kept (see [`empty_before_removal`]). Nothing is sent where the
/// operator does not allow ([`listing_provider`]).
async fn drain_mode(
    ctx: &Context,
    policy: &PrewarmPolicy,
    pref: &PolicyRef,
    mode: CapacityMode,
    why: &str,
) -> Result<Drained, Error> {
    let Some(provider) = listing_provider(ctx, policy, mode).await else {
        return Ok(Drained::default());
    };
    let mut units = match provider.list(pref).await {
        Ok(u) => u,
        // The kind of object it would have made does not exist (no Karpenter CRDs): nothing
        // to remove.
        Err(ProviderError::Missing { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if units.is_empty() {
        return Ok(Drained::default());
    }
    let units_are_nodes = mode != CapacityMode::Overprovision;
    if mode == CapacityMode::Ec2 {
        if tokio::time::timeout(Duration::from_secs(10), ctx.nodes.wait_until_ready())
            .await
            .is_err()
        {
            return Err(Error::NotReady);
        }
        nodes_by_provider_id(&ctx.nodes, &mut units);
    }
    let ids: Vec<String> = units.iter().map(|u| u.id.clone()).collect();
    leading(ctx)?;
    let (go, kept) = empty_before_removal(ctx, &units, ids, units_are_nodes, Cordon::Keep).await;
    if !go.is_empty() {
        leading(ctx)?;
        provider.remove(pref, &go).await?;
        tracing::info!(namespace = %pref.namespace, policy = %pref.name, removed = ?go, "{why}: capacity removed");
    }
    units.retain(|u| !go.contains(&u.id));
    Ok(Drained { kept, units })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str) -> Unit {
        crate::provider::fixtures::unit(id, "g5.xlarge")
    }

    #[test]
    fn terminating_pods_keep_a_node_busy_and_daemons_mirrors_and_pre_pulls_do_not() {
        let pod = |v: Value| -> Pod { serde_json::from_value(v).unwrap() };
        let worker = json!({"metadata": {"name": "w"}, "status": {"phase": "Running"}});
        assert!(keeps_node_busy(&pod(worker)));
        let finishing = json!({"metadata": {"name": "w", "deletionTimestamp": "2026-12-07T00:00:00Z"}, "status": {"phase": "Running"}});
        assert!(keeps_node_busy(&pod(finishing)));
        for idle in [
            json!({"metadata": {"name": "w"}, "status": {"phase": "Succeeded"}}),
            json!({"metadata": {"name": "w"}, "status": {"phase": "Failed"}}),
            json!({"metadata": {"name": "d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "u"}]}}),
            json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "h"}}}),
            json!({"metadata": {"name": "p", "labels": {warm::WARM_LABEL: "x"}}}),
        ] {
            assert!(!keeps_node_busy(&pod(idle.clone())), "{idle}");
        }
    }

    #[test]
    fn an_instance_is_found_by_the_providerid_of_its_node() {
        assert_eq!(
            instance_of_provider_id("aws:///us-east-1a/i-0123456789abcdef0"),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(instance_of_provider_id("aws:///i-abc"), Some("i-abc"));
        for other in [
            "",
            "i-abc",
            "gce://p/z/i-abc",
            "aws:///us-east-1a/",
            "aws:///us-east-1a/i-",
            "aws:///us-east-1a/i-ab c",
            "kwok://n1",
        ] {
            assert_eq!(instance_of_provider_id(other), None, "{other}");
        }
        let (reader, mut writer) = reflector::store::<Node>();
        let node = |name: &str, pid: Option<&str>| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"providerID": pid}}))
                .unwrap()
        };
        for n in [
            node("gpu-a", Some("aws:///us-east-1a/i-1")),
            // Named as EC2 names the instance, but another instance's node.
            node("ip-10-0-0-2.ec2.internal", Some("aws:///us-east-1a/i-3")),
            node("no-pid", None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(n));
        }
        let mut units = vec![unit("i-1"), unit("i-2"), unit("i-3")];
        units[1].node_name = Some("ip-10-0-0-2.ec2.internal".into());
        nodes_by_provider_id(&reader, &mut units);
        let names: Vec<Option<&str>> = units.iter().map(|u| u.node_name.as_deref()).collect();
        assert_eq!(
            names,
            [Some("gpu-a"), None, Some("ip-10-0-0-2.ec2.internal")]
        );
        let mut cordoned = node("gpu-a", None);
        cordoned
            .annotations_mut()
            .insert(CORDONED_ANNOTATION.into(), "true".into());
        writer.apply_watcher_event(&watcher::Event::Apply(cordoned));
        assert_eq!(left_cordoned(&reader, units.iter()), ["gpu-a"]);
    }

    #[test]
    fn without_demand_every_unit_not_marked_recently_is_held() {
        let mut old = unit("old");
        old.last_needed = 1_000;
        let mut recent = unit("recent");
        recent.last_needed = 95_000;
        let units = [old, recent, unit("never")];
        let held = due_for_hold(units.iter(), 100_000, Duration::from_secs(10));
        assert_eq!(held, ["old", "never"]);
    }

    #[test]
    fn an_unreadable_trigger_is_named_with_its_error() {
        use headroom_proto::headroom::v1::{DemandResponse, TriggerDemand};
        let trigger = |metric: &str, error: &str| TriggerDemand {
            metric_name: metric.into(),
            error: error.into(),
            ..Default::default()
        };
        let mut answer = DemandResponse {
            triggers: vec![trigger("s0-redis-jobs", ""), trigger("s1-sqs-q", "")],
            ..Default::default()
        };
        assert_eq!(unreadable_triggers(&answer), None);
        answer.triggers[1].error = "connection refused".into();
        let m = unreadable_triggers(&answer).unwrap();
        assert_eq!(m, "trigger s1-sqs-q unreadable: connection refused");
        answer.triggers[0].error = "timeout".into();
        let m = unreadable_triggers(&answer).unwrap();
        assert!(m.contains("s0-redis-jobs unreadable: timeout"), "{m}");
        assert!(m.contains("s1-sqs-q"), "{m}");
    }

    #[test]
    fn tokens_repeat_for_the_same_decision_and_change_with_what_is_owned() {
        let a = token("uid", &[unit("x"), unit("y")]);
        assert_eq!(a, token("uid", &[unit("y"), unit("x")]));
        assert_ne!(a, token("uid", &[unit("x")]));
        assert_ne!(a, token("other", &[unit("x"), unit("y")]));
        assert_eq!(a.len(), 16);
    }
}
