//! `mode: ec2`: instances launched directly with EC2 CreateFleet (`type=instant`), for clusters
//! without Karpenter. The launch template's user data joins each instance to the cluster.
//!
//! - **create**: first what an earlier attempt with the same token made (a retry), then stopped
//!   instances of the policy's warm pool (StartInstances: faster than a launch), then CreateFleet
//!   from the launch template with one override per fitting instance type (× subnet), spot first
//!   when `spot` is on; spot capacity errors (`InsufficientInstanceCapacity` and kin) send the
//!   remainder to a second, on-demand CreateFleet.
//! - **ownership**: every instance carries the tags `headroom.dev/policy` (`<ns>.<name>`, as the
//!   Karpenter provider's label), `app.kubernetes.io/managed-by`, `headroom.dev/created-at` and
//!   `headroom.dev/last-needed` (Unix ms), set at launch through TagSpecifications.
//! - **idempotency**: before any CreateFleet, the decision (token, time, count) is written as
//!   the policy's launch intent ([`super::intent`], an annotation: strongly consistent, unlike
//!   DescribeInstances). While its instances are not all visible they count as in flight
//!   (`holdings`), and a create repeats the intent's request exactly, so a lost response or a
//!   lagging DescribeInstances never launches twice. The `ClientToken` sent is the token plus
//!   the decision's time and the phase: a repeat of the same decision is deduplicated by EC2
//!   itself (the SDK's own retries resend it too), and EC2 remembering a `ClientToken` long after
//!   its instances are gone cannot refuse a later decision, which has another time. The
//!   instances also carry `headroom.dev/token` until the controller has seen them (`hold`
//!   removes it), and `create` first adopts instances with its token.
//! - **client**: 3 s to connect, 10 s per attempt, 30 s per call, 3 attempts (standard retry
//!   mode: backoff with jitter on throttling, 5xx and transport errors).
//! - **list**: DescribeInstances by the owner tags; `pending` and `running` instances are units
//!   (ready = running); `stopped` ones are the warm pool, not units.
//! - **hold**: writes `headroom.dev/last-needed` (and drops the token tag). **release** does
//!   nothing and succeeds: nothing else disrupts an instance Headroom launched directly, so there
//!   is no protection to lift.
//! - **remove**: running on-demand instances are stopped into the warm pool while it has fewer
//!   than `warmPoolSize` stopped instances; the rest (spot ones cannot be stopped, pending ones
//!   not yet) are terminated.
//!
//! No wall clock is read for decisions: every time comes from the caller (how long an intent's
//! unseen instances count as in flight is judged on this host's clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::operation::create_fleet::builders::CreateFleetInputBuilder;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, Instance, InstanceStateName,
    InstanceType as Ec2InstanceType, OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy,
    SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};

use crate::crd::{Ec2Spec, InstanceType};
use crate::karpenter::{LAST_NEEDED_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, POLICY_LABEL};
use crate::plan::Millis;
use crate::provider::{CapacityProvider, CreateRequest, Holdings, PolicyRef, ProviderError, Unit};
use crate::shape::{Shape, parse_quantity};

use super::intent::{Intent, IntentStore, MemoryIntents};

/// This host's clock, in Unix ms: only for how long a launch intent's instances are awaited.
fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as Millis)
}

/// The request token of the create that launched (or started) an instance, until `hold`.
pub const TOKEN_TAG: &str = "headroom.dev/token";
/// Unix ms of the create that launched or last started the instance.
pub const CREATED_AT_TAG: &str = "headroom.dev/created-at";

/// Error codes EC2 gives when it has no capacity of the kind asked for (per instance type in an
/// instant fleet's `errors`, or for the whole call).
const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientFreeAddressesInSubnet",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
];

const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
];

const AUTH_CODES: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "OptInRequired",
    "Blocked",
    "PendingVerification",
];

/// Spot or on-demand: the two CreateFleet phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Spot,
    OnDemand,
}

impl Lifecycle {
    fn tag(self) -> &'static str {
        match self {
            Lifecycle::Spot => "s",
            Lifecycle::OnDemand => "o",
        }
    }
}

/// Makes EC2 instances for `mode: ec2` policies. See the module documentation.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    client: Client,
    spec: Ec2Spec,
    /// Launch intents, written before CreateFleet (see [`super::intent`]).
    intents: Arc<dyn IntentStore>,
}

/// Per-attempt and per-call deadlines of the EC2 client, and its attempts per call (the SDK's
/// standard retry mode: exponential backoff with jitter on throttling, 5xx and transport
/// errors; a retried CreateFleet carries the same `ClientToken`, so EC2 runs it once).
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
pub const ATTEMPTS: u32 = 3;

/// One EC2 client per (region, endpoint) for the whole process. A provider is built for every
/// reconcile of an ec2 policy; loading the AWS config each time re-resolved the credential chain
/// (an STS call with IRSA) on every reconcile, where one client keeps its credentials cached and
/// refreshes them before they expire.
async fn shared_client(region: &str, endpoint: Option<&str>) -> Client {
    type Key = (String, Option<String>);
    static CLIENTS: std::sync::OnceLock<std::sync::Mutex<HashMap<Key, Client>>> =
        std::sync::OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let key: Key = (region.to_string(), endpoint.map(String::from));
    if let Some(c) = clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return c.clone();
    }
    crate::install_crypto_provider();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()));
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader = loader
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS));
    let client = Client::new(&loader.load().await);
    // Two reconciles may both have loaded: the first one stored is kept.
    clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_insert(client)
        .clone()
}

impl Ec2Provider {
    /// A provider for `spec`, with AWS credentials from the default chain (environment, IRSA
    /// web identity, IMDS) and `spec.endpoint` as the endpoint when given.
    pub async fn new(spec: &Ec2Spec) -> Result<Self, ProviderError> {
        Self::with_client(
            shared_client(&spec.region, spec.endpoint.as_deref()).await,
            spec,
        )
    }

    /// A provider using `client` as it is (tests: static keys, an endpoint, retry settings).
    pub fn with_client(client: Client, spec: &Ec2Spec) -> Result<Self, ProviderError> {
        template_spec(spec)?;
        if spec.instance_types.is_empty() {
            return Err(ProviderError::NoFit(
                "spec.ec2.instanceTypes is empty: name at least one instance type".into(),
            ));
        }
        Ok(Self {
            client,
            spec: spec.clone(),
            intents: Arc::new(MemoryIntents::default()),
        })
    }

    /// Keeps launch intents in `store` (the controller: the policy's annotation; the default,
    /// in memory, lasts as long as this provider).
    pub fn with_intents(mut self, store: Arc<dyn IntentStore>) -> Self {
        self.intents = store;
        self
    }

    fn price_of(&self, instance_type: &str) -> f64 {
        self.spec
            .instance_types
            .iter()
            .find(|t| t.name == instance_type)
            .and_then(|t| t.hourly_price)
            .unwrap_or(0.0)
    }

    /// The policy's instances in `states`, optionally only those carrying `token`.
    async fn describe(
        &self,
        policy: &PolicyRef,
        token: Option<&str>,
        states: &[InstanceStateName],
        ids: Option<&[String]>,
    ) -> Result<Vec<Instance>, ProviderError> {
        let filters = owner_filters(policy, token, states, ids);
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeInstances", &self.spec, e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.instance_id().cmp(&b.instance_id()));
        Ok(out)
    }

    async fn tag(&self, ids: &[String], tags: Vec<Tag>) -> Result<(), ProviderError> {
        for chunk in ids.chunks(500) {
            self.client
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| sdk_error("CreateTags", &self.spec, e))?;
        }
        Ok(())
    }

    async fn untag_token(&self, ids: &[String]) -> Result<(), ProviderError> {
        for chunk in ids.chunks(500) {
            self.client
                .delete_tags()
                .set_resources(Some(chunk.to_vec()))
                .tags(Tag::builder().key(TOKEN_TAG).build())
                .send()
                .await
                .map_err(|e| sdk_error("DeleteTags", &self.spec, e))?;
        }
        Ok(())
    }

    /// One CreateFleet phase; `Err` when the call itself failed.
    async fn fleet(
        &self,
        policy: &PolicyRef,
        types: &[&InstanceType],
        count: u32,
        lifecycle: Lifecycle,
        request: &CreateRequest<'_>,
    ) -> Result<FleetOutcome, (ProviderError, bool)> {
        let input = fleet_input(&self.spec, policy, types, count, lifecycle, request)
            .map_err(|e| (e, false))?;
        let out = input.send_with(&self.client).await.map_err(|e| {
            // Only an answer from EC2 (or a request never built) says nothing launched; a
            // timeout or a lost connection may have launched everything.
            let unknown = !matches!(
                e,
                SdkError::ServiceError(_) | SdkError::ConstructionFailure(_)
            );
            (sdk_error("CreateFleet", &self.spec, e), unknown)
        })?;
        Ok(FleetOutcome::from_output(&out))
    }

    /// The policy's instances launched by `intent` (its `created-at` tag), in any state.
    async fn launched_by(
        &self,
        policy: &PolicyRef,
        intent: &Intent,
    ) -> Result<usize, ProviderError> {
        let states = [
            InstanceStateName::Pending,
            InstanceStateName::Running,
            InstanceStateName::ShuttingDown,
            InstanceStateName::Stopping,
            InstanceStateName::Stopped,
            InstanceStateName::Terminated,
        ];
        let at = intent.at.to_string();
        Ok(self
            .describe(policy, None, &states, None)
            .await?
            .iter()
            .filter(|i| tag_value(i, CREATED_AT_TAG) == Some(at.as_str()))
            .count())
    }

    /// CreateFleet of `request.count` instances (its intent already recorded): spot first,
    /// then on-demand for what spot could not place; `units` (started from the pool) and
    /// `first_error` are carried in. Afterwards the intent holds what launched, or is cleared
    /// when nothing did — unless a response was lost, when it stays open for a repeat.
    async fn launch(
        &self,
        policy: &PolicyRef,
        types: &[&InstanceType],
        request: &CreateRequest<'_>,
        mut units: Vec<Unit>,
        mut first_error: Option<ProviderError>,
    ) -> Result<Vec<Unit>, ProviderError> {
        let before = units.len();
        let want = before + request.count as usize;
        let mut remaining = request.count as usize;
        let mut unknown = false;
        let phases: &[Lifecycle] = if self.spec.spot {
            &[Lifecycle::Spot, Lifecycle::OnDemand]
        } else {
            &[Lifecycle::OnDemand]
        };
        let mut capacity_errors: Vec<String> = Vec::new();
        for &phase in phases {
            if remaining == 0 {
                break;
            }
            let outcome = match self
                .fleet(policy, types, remaining as u32, phase, request)
                .await
            {
                Ok(o) => o,
                Err((e, lost)) => {
                    unknown |= lost;
                    let capacity = matches!(e, ProviderError::InsufficientCapacity(_));
                    if capacity {
                        capacity_errors.push(e.to_string());
                    }
                    first_error.get_or_insert(e);
                    if capacity {
                        continue;
                    }
                    break;
                }
            };
            for (id, ty) in outcome.launched.iter().take(remaining) {
                units.push(Unit {
                    id: id.clone(),
                    node_name: None,
                    instance_type: ty.clone(),
                    ready: false,
                    created_at: request.now,
                    ready_at: None,
                    last_needed: request.now,
                    hourly_price: self.price_of(ty),
                    gpus: None,
                    images: None,
                    launch_error: None,
                });
            }
            remaining = want.saturating_sub(units.len());
            if remaining == 0 {
                break;
            }
            if outcome.short_of_capacity_only() {
                capacity_errors.extend(
                    outcome
                        .errors
                        .iter()
                        .map(|(code, msg)| format!("{phase:?}: {code}: {msg}")),
                );
                continue;
            }
            // A non-capacity error (a missing launch template, bad parameters): the other
            // lifecycle would fail the same way.
            if let Some((code, msg)) = outcome
                .errors
                .iter()
                .find(|(code, _)| !CAPACITY_CODES.contains(&code.as_str()))
            {
                first_error.get_or_insert(classify(code, msg, &self.spec));
            }
            break;
        }

        if !unknown {
            let launched = units.len().saturating_sub(before) as u32;
            let settled = Intent {
                token: request.token.clone(),
                at: request.now,
                count: launched,
            };
            let record = (launched > 0).then_some(&settled);
            if let Err(e) = self.intents.write(policy, record).await {
                // The open intent stays: its unseen instances count a little longer.
                tracing::warn!(policy = %policy, error = %e, "cannot update the launch intent");
            }
        }
        if !units.is_empty() {
            units.truncate(want);
            return Ok(units);
        }
        if let Some(e) = first_error
            && !matches!(e, ProviderError::InsufficientCapacity(_))
        {
            return Err(e);
        }
        if !capacity_errors.is_empty() {
            return Err(ProviderError::InsufficientCapacity(
                capacity_errors.join("; "),
            ));
        }
        Err(ProviderError::Other(
            "CreateFleet launched nothing and reported no reason".into(),
        ))
    }

    fn unit_of(&self, instance: &Instance, fallback_now: Millis) -> Option<Unit> {
        unit_of(instance, fallback_now, |t| self.price_of(t))
    }
}

/// What one CreateFleet phase launched and which errors it reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetOutcome {
    /// (instance id, instance type).
    pub launched: Vec<(String, String)>,
    /// (error code, message) per failed override.
    pub errors: Vec<(String, String)>,
}

impl FleetOutcome {
    fn from_output(out: &CreateFleetOutput) -> Self {
        let mut launched = Vec::new();
        for i in out.instances() {
            let ty = i
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default();
            for id in i.instance_ids() {
                launched.push((id.clone(), ty.clone()));
            }
        }
        let errors = out
            .errors()
            .iter()
            .map(|e| {
                (
                    e.error_code().unwrap_or_default().to_string(),
                    e.error_message().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Self { launched, errors }
    }

    /// Only capacity errors (or none): the shortfall may be found with the other lifecycle.
    pub fn short_of_capacity_only(&self) -> bool {
        self.errors
            .iter()
            .all(|(code, _)| CAPACITY_CODES.contains(&code.as_str()))
    }
}

#[async_trait]
impl CapacityProvider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    async fn list(&self, policy: &PolicyRef) -> Result<Vec<Unit>, ProviderError> {
        let live = [InstanceStateName::Pending, InstanceStateName::Running];
        let instances = self.describe(policy, None, &live, None).await?;
        Ok(instances
            .iter()
            .filter_map(|i| self.unit_of(i, 0))
            .collect())
    }

    /// Pending and running instances are units; shutting-down and stopping ones are deleting
    /// (their nodes linger until the kubelet goes). One DescribeInstances for both.
    async fn holdings(&self, policy: &PolicyRef) -> Result<Holdings, ProviderError> {
        let states = [
            InstanceStateName::Pending,
            InstanceStateName::Running,
            InstanceStateName::ShuttingDown,
            InstanceStateName::Stopping,
        ];
        let instances = self.describe(policy, None, &states, None).await?;
        let mut held = Holdings::default();
        // A launch whose instances DescribeInstances does not show yet is in flight. Its age
        // is judged on this host's clock: the intent's time is the controller's own `now`.
        if let Some(intent) = self.intents.read(policy).await?
            && intent.awaited(wall_ms())
        {
            let at = intent.at.to_string();
            let seen = instances
                .iter()
                .filter(|i| tag_value(i, CREATED_AT_TAG) == Some(at.as_str()))
                .count();
            held.unmaterialised = intent.count.saturating_sub(seen as u32);
        }
        for i in &instances {
            let Some(unit) = self.unit_of(i, 0) else {
                continue;
            };
            match state_of(i) {
                Some(InstanceStateName::Pending | InstanceStateName::Running) => {
                    held.units.push(unit)
                }
                _ => held.deleting.push(unit),
            }
        }
        Ok(held)
    }

    async fn create(
        &self,
        policy: &PolicyRef,
        request: &CreateRequest<'_>,
    ) -> Result<Vec<Unit>, ProviderError> {
        if request.count == 0 {
            return Ok(Vec::new());
        }
        let types = fitting_types(&self.spec.instance_types, request.shape)?;

        // 0. A launch decided earlier whose instances are not all seen: its request is
        //    repeated exactly (EC2 runs a ClientToken once), not decided anew.
        let reuse = match self.intents.read(policy).await? {
            Some(i) if i.reusable(request.now) && i.count <= request.count => {
                (self.launched_by(policy, &i).await? < i.count as usize).then_some(i)
            }
            _ => None,
        };
        if let Some(intent) = reuse {
            let again = CreateRequest {
                count: intent.count,
                shape: request.shape,
                token: intent.token.clone(),
                now: intent.at,
            };
            return self.launch(policy, &types, &again, Vec::new(), None).await;
        }
        let want = request.count as usize;

        // 1. A retry: what an earlier attempt with this token made.
        let states = [
            InstanceStateName::Pending,
            InstanceStateName::Running,
            InstanceStateName::Stopped,
        ];
        let earlier = self
            .describe(policy, Some(&request.token), &states, None)
            .await?;
        let mut units: Vec<Unit> = Vec::new();
        let mut to_start: Vec<Instance> = Vec::new();
        for i in earlier.into_iter().take(want) {
            if state_of(&i) == Some(&InstanceStateName::Stopped) {
                to_start.push(i);
            } else if let Some(u) = self.unit_of(&i, request.now) {
                units.push(u);
            }
        }

        // 2. The warm pool: stopped instances of the policy, started instead of launched.
        let mut first_error: Option<ProviderError> = None;
        let mut remaining = want.saturating_sub(units.len() + to_start.len());
        if remaining > 0 && self.spec.warm_pool_size > 0 {
            let pool = self
                .describe(policy, None, &[InstanceStateName::Stopped], None)
                .await?;
            let picked: Vec<Instance> = pool
                .into_iter()
                .filter(|i| tag_value(i, TOKEN_TAG) != Some(request.token.as_str()))
                .take(remaining)
                .collect();
            if !picked.is_empty() {
                let ids: Vec<String> = picked.iter().filter_map(instance_id).collect();
                // The token first: a retry after a crash between these two calls starts them.
                self.tag(
                    &ids,
                    vec![
                        tag(TOKEN_TAG, &request.token),
                        tag(CREATED_AT_TAG, &request.now.to_string()),
                        tag(LAST_NEEDED_ANNOTATION, &request.now.to_string()),
                    ],
                )
                .await?;
                to_start.extend(picked);
            }
        }
        if !to_start.is_empty() {
            let ids: Vec<String> = to_start.iter().filter_map(instance_id).collect();
            match self
                .client
                .start_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
            {
                Ok(_) => {
                    for i in &to_start {
                        if let Some(mut u) = self.unit_of(i, request.now) {
                            u.created_at = request.now;
                            u.last_needed = request.now;
                            u.ready = false;
                            units.push(u);
                        }
                    }
                }
                Err(e) => {
                    // Back to the pool (no token), and launch instead.
                    let _ = self.untag_token(&ids).await;
                    first_error = Some(sdk_error("StartInstances", &self.spec, e));
                }
            }
        }

        // 3. CreateFleet for the rest, its intent recorded first.
        remaining = want.saturating_sub(units.len());
        if remaining == 0 {
            units.truncate(want);
            return Ok(units);
        }
        let intent = Intent {
            token: request.token.clone(),
            at: request.now,
            count: remaining as u32,
        };
        if let Err(e) = self.intents.write(policy, Some(&intent)).await {
            // Not launched without its record; what the pool started is still returned.
            if units.is_empty() {
                return Err(e);
            }
            return Ok(units);
        }
        let again = CreateRequest {
            count: intent.count,
            ..request.clone()
        };
        self.launch(policy, &types, &again, units, first_error)
            .await
            .map(|mut u| {
                u.truncate(want);
                u
            })
    }

    async fn hold(
        &self,
        policy: &PolicyRef,
        ids: &[String],
        now: Millis,
    ) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Only the policy's own instances, and only those still there (CreateTags fails the
        // whole call on one unknown id).
        let states = [
            InstanceStateName::Pending,
            InstanceStateName::Running,
            InstanceStateName::Stopping,
            InstanceStateName::Stopped,
        ];
        let owned: Vec<String> = self
            .describe(policy, None, &states, Some(ids))
            .await?
            .iter()
            .filter_map(instance_id)
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        self.tag(&owned, vec![tag(LAST_NEEDED_ANNOTATION, &now.to_string())])
            .await?;
        // Seen and held: a later create with the same token is a new decision, not a retry.
        self.untag_token(&owned).await
    }

    /// Nothing to lift: no autoscaler disrupts instances Headroom launched itself.
    async fn release(&self, _policy: &PolicyRef, _ids: &[String]) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn remove(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let states = [
            InstanceStateName::Pending,
            InstanceStateName::Running,
            InstanceStateName::Stopping,
            InstanceStateName::Stopped,
        ];
        let owned = self.describe(policy, None, &states, None).await?;
        let (stop, terminate) = removal(&owned, ids, self.spec.warm_pool_size);
        if !stop.is_empty() {
            self.untag_token(&stop).await?;
            self.client
                .stop_instances()
                .set_instance_ids(Some(stop))
                .send()
                .await
                .map_err(|e| sdk_error("StopInstances", &self.spec, e))?;
        }
        if !terminate.is_empty() {
            self.client
                .terminate_instances()
                .set_instance_ids(Some(terminate))
                .send()
                .await
                .map_err(|e| sdk_error("TerminateInstances", &self.spec, e))?;
        }
        Ok(())
    }
}

/// Which of `ids` (among the policy's `owned` instances) to stop into the warm pool and which
/// to terminate. Ids that are not the policy's, or already stopped, are left alone (already
/// gone, as far as units go).
pub fn removal(owned: &[Instance], ids: &[String], pool_size: u32) -> (Vec<String>, Vec<String>) {
    let mut pool = owned
        .iter()
        .filter(|i| {
            matches!(
                state_of(i),
                Some(InstanceStateName::Stopped | InstanceStateName::Stopping)
            )
        })
        .count() as u32;
    let mut stop = Vec::new();
    let mut terminate = Vec::new();
    for i in owned {
        let Some(id) = instance_id(i) else { continue };
        if !ids.contains(&id) {
            continue;
        }
        let state = state_of(i);
        if !matches!(
            state,
            Some(InstanceStateName::Pending | InstanceStateName::Running)
        ) {
            continue;
        }
        // Spot instances from an instant fleet are one-time: they cannot be stopped. A pending
        // instance cannot be stopped yet.
        // (No lifecycle means on-demand.)
        let stoppable =
            i.instance_lifecycle().is_none() && state == Some(&InstanceStateName::Running);
        if stoppable && pool < pool_size {
            pool += 1;
            stop.push(id);
        } else {
            terminate.push(id);
        }
    }
    (stop, terminate)
}

/// The launch template, as CreateFleet takes it.
pub fn template_spec(
    spec: &Ec2Spec,
) -> Result<FleetLaunchTemplateSpecificationRequest, ProviderError> {
    let lt = &spec.launch_template;
    let version = lt.version.clone().unwrap_or_else(|| "$Default".into());
    let b = FleetLaunchTemplateSpecificationRequest::builder().version(version);
    match (&lt.id, &lt.name) {
        (Some(id), _) if !id.is_empty() => Ok(b.launch_template_id(id).build()),
        (_, Some(name)) if !name.is_empty() => Ok(b.launch_template_name(name).build()),
        _ => Err(ProviderError::Missing {
            kind: "launch template",
            name: String::new(),
            detail: "spec.ec2.launchTemplate needs an id or a name".into(),
        }),
    }
}

/// The policy's instance types that hold one pod of `shape` (GPUs, CPU and memory), in the
/// policy's order of preference.
pub fn fitting_types<'a>(
    types: &'a [InstanceType],
    shape: &Shape,
) -> Result<Vec<&'a InstanceType>, ProviderError> {
    let mut fit = Vec::new();
    let mut bad = Vec::new();
    for t in types {
        let (Some(cpu), Some(memory)) = (parse_quantity(&t.cpu), parse_quantity(&t.memory)) else {
            bad.push(format!(
                "{} (cpu {:?}, memory {:?})",
                t.name, t.cpu, t.memory
            ));
            continue;
        };
        if t.gpus >= shape.gpus && cpu >= shape.cpu && memory >= shape.memory {
            fit.push(t);
        }
    }
    if fit.is_empty() {
        let mut msg = format!(
            "no instance type in spec.ec2.instanceTypes holds a pod requesting {} GPU(s), {} CPU and {} bytes of memory",
            shape.gpus, shape.cpu, shape.memory
        );
        if !bad.is_empty() {
            msg.push_str(&format!("; unreadable quantities: {}", bad.join(", ")));
        }
        return Err(ProviderError::NoFit(msg));
    }
    Ok(fit)
}

/// The `ClientToken` of one CreateFleet phase: at most 64 ASCII characters, unique per
/// (token, now, phase).
pub fn client_token(token: &str, now: Millis, lifecycle: Lifecycle) -> String {
    let suffix = format!("-{now:x}-{}", lifecycle.tag());
    let room = 64usize.saturating_sub(suffix.len());
    let head: String = if token.len() <= room && token.is_ascii() {
        token.to_string()
    } else {
        let keep: String = token
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(room.saturating_sub(17))
            .collect();
        format!("{keep}-{:016x}", fnv1a(token.as_bytes()))
    };
    format!("{head}{suffix}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The CreateFleet request of one phase (pure: tested without AWS).
pub fn fleet_input(
    spec: &Ec2Spec,
    policy: &PolicyRef,
    types: &[&InstanceType],
    count: u32,
    lifecycle: Lifecycle,
    request: &CreateRequest<'_>,
) -> Result<CreateFleetInputBuilder, ProviderError> {
    let subnets: Vec<Option<&str>> = if spec.subnet_ids.is_empty() {
        vec![None]
    } else {
        spec.subnet_ids.iter().map(|s| Some(s.as_str())).collect()
    };
    let mut overrides = Vec::new();
    for (priority, t) in types.iter().enumerate() {
        for subnet in &subnets {
            overrides.push(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(Ec2InstanceType::from(t.name.as_str()))
                    .set_subnet_id(subnet.map(String::from))
                    .priority(priority as f64)
                    .build(),
            );
        }
    }
    let config = FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(template_spec(spec)?)
        .set_overrides(Some(overrides))
        .build();
    let capacity = TargetCapacitySpecificationRequest::builder()
        .total_target_capacity(count.min(i32::MAX as u32) as i32)
        .default_target_capacity_type(match lifecycle {
            Lifecycle::Spot => DefaultTargetCapacityType::Spot,
            Lifecycle::OnDemand => DefaultTargetCapacityType::OnDemand,
        })
        .build();
    let tags = owner_tags(policy, &request.token, request.now);
    let mut input = CreateFleetInputBuilder::default()
        .r#type(FleetType::Instant)
        .client_token(client_token(&request.token, request.now, lifecycle))
        .launch_template_configs(config)
        .target_capacity_specification(capacity)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        );
    input = match lifecycle {
        Lifecycle::Spot => input.spot_options(
            SpotOptionsRequest::builder()
                .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                .build(),
        ),
        Lifecycle::OnDemand => input.on_demand_options(
            OnDemandOptionsRequest::builder()
                .allocation_strategy(FleetOnDemandAllocationStrategy::Prioritized)
                .build(),
        ),
    };
    Ok(input)
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The tags every instance of `policy` carries from its launch.
pub fn owner_tags(policy: &PolicyRef, token: &str, now: Millis) -> Vec<Tag> {
    vec![
        tag(
            POLICY_LABEL,
            &crate::karpenter::policy_label(&policy.namespace, &policy.name),
        ),
        tag(MANAGED_BY_LABEL, MANAGED_BY),
        tag(TOKEN_TAG, token),
        tag(CREATED_AT_TAG, &now.to_string()),
        tag(LAST_NEEDED_ANNOTATION, &now.to_string()),
    ]
}

fn owner_filters(
    policy: &PolicyRef,
    token: Option<&str>,
    states: &[InstanceStateName],
    ids: Option<&[String]>,
) -> Vec<Filter> {
    let f = |name: String, values: Vec<String>| {
        Filter::builder()
            .name(name)
            .set_values(Some(values))
            .build()
    };
    let mut v = vec![
        f(
            format!("tag:{POLICY_LABEL}"),
            vec![crate::karpenter::policy_label(
                &policy.namespace,
                &policy.name,
            )],
        ),
        f(format!("tag:{MANAGED_BY_LABEL}"), vec![MANAGED_BY.into()]),
        f(
            "instance-state-name".into(),
            states.iter().map(|s| s.as_str().to_string()).collect(),
        ),
    ];
    if let Some(token) = token {
        v.push(f(format!("tag:{TOKEN_TAG}"), vec![token.into()]));
    }
    if let Some(ids) = ids {
        v.push(f("instance-id".into(), ids.to_vec()));
    }
    v
}

fn instance_id(i: &Instance) -> Option<String> {
    i.instance_id().map(String::from)
}

fn state_of(i: &Instance) -> Option<&InstanceStateName> {
    i.state().and_then(|s| s.name())
}

fn tag_value<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn tag_millis(i: &Instance, key: &str) -> Option<Millis> {
    tag_value(i, key).and_then(|v| v.parse().ok())
}

/// A unit from a described instance (pending or running); `None` for an instance without an id.
pub fn unit_of(
    instance: &Instance,
    fallback_now: Millis,
    price: impl Fn(&str) -> f64,
) -> Option<Unit> {
    let id = instance_id(instance)?;
    let instance_type = instance
        .instance_type()
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();
    let launched = instance.launch_time().and_then(|t| t.to_millis().ok());
    let created_at = tag_millis(instance, CREATED_AT_TAG)
        .or(launched)
        .unwrap_or(fallback_now);
    // EC2's private DNS name, which is the node's name only by default: the controller
    // replaces it with the node whose providerID names the instance.
    let node_name = instance
        .private_dns_name()
        .filter(|n| !n.is_empty())
        .map(String::from);
    Some(Unit {
        id,
        node_name,
        ready: state_of(instance) == Some(&InstanceStateName::Running),
        created_at,
        ready_at: None,
        last_needed: tag_millis(instance, LAST_NEEDED_ANNOTATION).unwrap_or(created_at),
        hourly_price: price(&instance_type),
        // Known from the type (the controller looks it up in spec.ec2.instanceTypes).
        gpus: None,
        images: None,
        launch_error: None,
        instance_type,
    })
}

/// An EC2 error code and message as a [`ProviderError`].
pub fn classify(code: &str, message: &str, spec: &Ec2Spec) -> ProviderError {
    let detail = if message.is_empty() {
        code.to_string()
    } else {
        format!("{code}: {message}")
    };
    if code.starts_with("InvalidLaunchTemplateId") || code.starts_with("InvalidLaunchTemplateName")
    {
        let lt = &spec.launch_template;
        return ProviderError::Missing {
            kind: "launch template",
            name: lt
                .id
                .clone()
                .or_else(|| lt.name.clone())
                .unwrap_or_default(),
            detail,
        };
    }
    if code == "InvalidSubnetID.NotFound" {
        return ProviderError::Missing {
            kind: "subnet",
            name: spec.subnet_ids.join(","),
            detail,
        };
    }
    if CAPACITY_CODES.contains(&code) {
        return ProviderError::InsufficientCapacity(detail);
    }
    if THROTTLE_CODES.contains(&code) {
        return ProviderError::Throttled(detail);
    }
    if AUTH_CODES.contains(&code) {
        return ProviderError::Unauthorized(detail);
    }
    ProviderError::Other(detail)
}

fn sdk_error<E>(
    operation: &str,
    spec: &Ec2Spec,
    e: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(se) = &e {
        let err = se.err();
        if let Some(code) = err.code() {
            return match classify(code, err.message().unwrap_or_default(), spec) {
                ProviderError::Missing { kind, name, detail } => ProviderError::Missing {
                    kind,
                    name,
                    detail: format!("{operation}: {detail}"),
                },
                ProviderError::InsufficientCapacity(m) => {
                    ProviderError::InsufficientCapacity(format!("{operation}: {m}"))
                }
                ProviderError::Throttled(m) => {
                    ProviderError::Throttled(format!("{operation}: {m}"))
                }
                ProviderError::Unauthorized(m) => {
                    ProviderError::Unauthorized(format!("{operation}: {m}"))
                }
                other => ProviderError::Other(format!("{operation}: {other}")),
            };
        }
    }
    let text = DisplayErrorContext(&e).to_string();
    // The credential chain's failures surface before any request is sent.
    if text.contains("credentials") || text.contains("Credentials") {
        return ProviderError::Unauthorized(format!("{operation}: {text}"));
    }
    ProviderError::Other(format!("{operation}: {text}"))
}

/// Tag values by key, for tests and diagnostics.
pub fn tags_of(i: &Instance) -> BTreeMap<String, String> {
    i.tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceLifecycleType, InstanceState};

    use crate::crd::LaunchTemplateRef;

    fn types() -> Vec<InstanceType> {
        let t = |name: &str, gpus, cpu: &str, memory: &str, price| InstanceType {
            name: name.into(),
            gpus,
            cpu: cpu.into(),
            memory: memory.into(),
            hourly_price: price,
        };
        vec![
            t("g5.xlarge", 1, "3920m", "14Gi", Some(1.006)),
            t("g5.12xlarge", 4, "47", "180Gi", Some(5.672)),
            t("g4dn.xlarge", 1, "3920m", "14Gi", None),
        ]
    }

    fn spec() -> Ec2Spec {
        Ec2Spec {
            region: "us-east-1".into(),
            launch_template: LaunchTemplateRef {
                id: None,
                name: Some("gpu-nodes".into()),
                version: None,
            },
            instance_types: types(),
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            spot: true,
            warm_pool_size: 0,
            endpoint: None,
        }
    }

    fn shape(gpus: u32, cpu: f64) -> Shape {
        Shape {
            gpus,
            cpu,
            memory: 8e9,
            node_selector: Default::default(),
            affinity: None,
            tolerations: Vec::new(),
            requests: Default::default(),
            images: Default::default(),
        }
    }

    fn policy() -> PolicyRef {
        PolicyRef {
            namespace: "ml".into(),
            name: "llm".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn the_fleet_request_prefers_types_in_order_across_subnets_and_tags_instances() {
        let spec = spec();
        let all = types();
        let fit: Vec<&InstanceType> = all.iter().take(2).collect();
        let shape = shape(1, 2.0);
        let req = CreateRequest {
            count: 3,
            shape: &shape,
            token: "u1-2".into(),
            now: 1_000,
        };
        let input = fleet_input(&spec, &policy(), &fit, 3, Lifecycle::Spot, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(input.r#type(), Some(&FleetType::Instant));
        assert_eq!(
            input.client_token(),
            Some(client_token("u1-2", 1_000, Lifecycle::Spot).as_str())
        );
        let cap = input.target_capacity_specification().unwrap();
        assert_eq!(cap.total_target_capacity(), Some(3));
        assert_eq!(
            cap.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::Spot)
        );
        assert!(input.spot_options().is_some() && input.on_demand_options().is_none());
        let config = &input.launch_template_configs()[0];
        let lt = config.launch_template_specification().unwrap();
        assert_eq!(lt.launch_template_name(), Some("gpu-nodes"));
        assert_eq!(lt.version(), Some("$Default"));
        let overrides: Vec<(String, String, f64)> = config
            .overrides()
            .iter()
            .map(|o| {
                (
                    o.instance_type().unwrap().as_str().to_string(),
                    o.subnet_id().unwrap().to_string(),
                    o.priority().unwrap(),
                )
            })
            .collect();
        let o = |t: &str, s: &str, p: f64| (t.to_string(), s.to_string(), p);
        assert_eq!(
            overrides,
            [
                o("g5.xlarge", "subnet-a", 0.0),
                o("g5.xlarge", "subnet-b", 0.0),
                o("g5.12xlarge", "subnet-a", 1.0),
                o("g5.12xlarge", "subnet-b", 1.0),
            ]
        );
        let ts = &input.tag_specifications()[0];
        assert_eq!(ts.resource_type(), Some(&ResourceType::Instance));
        let tags: BTreeMap<&str, &str> = ts
            .tags()
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(tags["headroom.dev/policy"], "ml.llm");
        assert_eq!(tags["app.kubernetes.io/managed-by"], "headroom-provisioner");
        assert_eq!(tags["headroom.dev/token"], "u1-2");
        assert_eq!(tags["headroom.dev/created-at"], "1000");
        assert_eq!(tags["headroom.dev/last-needed"], "1000");

        let od = fleet_input(&spec, &policy(), &fit, 2, Lifecycle::OnDemand, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            od.target_capacity_specification()
                .unwrap()
                .default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::OnDemand)
        );
        assert!(od.on_demand_options().is_some() && od.spot_options().is_none());
        assert_ne!(od.client_token(), input.client_token());
    }

    #[test]
    fn the_launch_template_is_named_by_id_first_then_name_and_one_is_required() {
        let mut s = spec();
        s.launch_template = LaunchTemplateRef {
            id: Some("lt-0abc".into()),
            name: Some("gpu-nodes".into()),
            version: Some("7".into()),
        };
        let lt = template_spec(&s).unwrap();
        assert_eq!(
            (
                lt.launch_template_id(),
                lt.launch_template_name(),
                lt.version()
            ),
            (Some("lt-0abc"), None, Some("7"))
        );
        s.launch_template = LaunchTemplateRef {
            id: None,
            name: None,
            version: None,
        };
        let e = template_spec(&s).unwrap_err();
        assert_eq!(e.reason(), "NotFound");
        assert!(e.to_string().contains("id or a name"), "{e}");
    }

    #[test]
    fn only_types_that_hold_the_pod_are_used_and_none_is_an_error() {
        let all = types();
        let names = |s: &Shape| -> Vec<String> {
            fitting_types(&all, s)
                .unwrap()
                .iter()
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(
            names(&shape(1, 2.0)),
            ["g5.xlarge", "g5.12xlarge", "g4dn.xlarge"]
        );
        assert_eq!(names(&shape(2, 2.0)), ["g5.12xlarge"]);
        assert_eq!(names(&shape(1, 8.0)), ["g5.12xlarge"]);
        let e = fitting_types(&all, &shape(8, 1.0)).unwrap_err();
        assert_eq!(e.reason(), "NoInstanceTypeFits");
        assert!(e.to_string().contains("8 GPU(s)"), "{e}");
        let mut bad = types();
        bad.truncate(1);
        bad[0].memory = "lots".into();
        let e = fitting_types(&bad, &shape(1, 1.0)).unwrap_err();
        assert!(e.to_string().contains("\"lots\""), "{e}");
    }

    #[test]
    fn client_tokens_fit_ec2s_limit_and_differ_by_phase_and_decision() {
        let a = client_token("u1-2", 1_000, Lifecycle::Spot);
        assert_eq!(a, client_token("u1-2", 1_000, Lifecycle::Spot));
        assert_ne!(a, client_token("u1-2", 1_000, Lifecycle::OnDemand));
        assert_ne!(a, client_token("u1-2", 2_000, Lifecycle::Spot));
        assert!(a.starts_with("u1-2-"), "{a}");
        let long = "x".repeat(200);
        for t in [long.as_str(), "ünïcode-token"] {
            let c = client_token(t, i64::MAX, Lifecycle::OnDemand);
            assert!(c.len() <= 64 && c.is_ascii(), "{c}");
        }
        assert_ne!(
            client_token(&format!("{long}a"), 1, Lifecycle::Spot),
            client_token(&format!("{long}b"), 1, Lifecycle::Spot)
        );
    }

    #[test]
    fn ec2_error_codes_map_to_provider_errors() {
        let s = spec();
        let cases = [
            ("InvalidLaunchTemplateName.NotFoundException", "NotFound"),
            ("InvalidLaunchTemplateId.NotFound", "NotFound"),
            ("InvalidLaunchTemplateId.VersionNotFound", "NotFound"),
            ("InvalidSubnetID.NotFound", "NotFound"),
            ("InsufficientInstanceCapacity", "InsufficientCapacity"),
            ("MaxSpotInstanceCountExceeded", "InsufficientCapacity"),
            ("VcpuLimitExceeded", "InsufficientCapacity"),
            ("RequestLimitExceeded", "Throttled"),
            ("Throttling", "Throttled"),
            ("UnauthorizedOperation", "Unauthorized"),
            ("AuthFailure", "Unauthorized"),
            ("InvalidParameterValue", "ProviderError"),
        ];
        for (code, reason) in cases {
            let e = classify(code, "msg", &s);
            assert_eq!(e.reason(), reason, "{code}");
            assert!(e.to_string().contains(code), "{e}");
        }
        match classify("InvalidLaunchTemplateName.NotFoundException", "", &s) {
            ProviderError::Missing { kind, name, .. } => {
                assert_eq!((kind, name.as_str()), ("launch template", "gpu-nodes"))
            }
            other => panic!("{other:?}"),
        }
    }

    fn instance(id: &str, state: InstanceStateName, spot: bool, tags: &[(&str, &str)]) -> Instance {
        let mut b = Instance::builder()
            .instance_id(id)
            .instance_type(Ec2InstanceType::from("g5.xlarge"))
            .state(InstanceState::builder().name(state).build())
            .private_dns_name("ip-10-0-0-1.ec2.internal");
        if spot {
            b = b.instance_lifecycle(InstanceLifecycleType::Spot);
        }
        for (k, v) in tags {
            b = b.tags(tag(k, v));
        }
        b.build()
    }

    #[test]
    fn removal_stops_running_on_demand_instances_into_the_pool_and_terminates_the_rest() {
        use InstanceStateName::{Pending, Running, Stopped};
        let owned = [
            instance("i-1", Running, false, &[]),
            instance("i-2", Running, true, &[]),
            instance("i-3", Pending, false, &[]),
            instance("i-4", Running, false, &[]),
            instance("i-5", Running, false, &[]),
            instance("i-6", Stopped, false, &[]),
        ];
        let ids: Vec<String> = ["i-1", "i-2", "i-3", "i-4", "i-5", "i-6", "i-9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Pool of 3 with one already stopped: room for two.
        let (stop, terminate) = removal(&owned, &ids, 3);
        assert_eq!(stop, ["i-1", "i-4"]);
        assert_eq!(terminate, ["i-2", "i-3", "i-5"]);
        // No pool: everything named and live is terminated; i-6 (pool) and i-9 (not ours) stay.
        let (stop, terminate) = removal(&owned, &ids, 0);
        assert!(stop.is_empty());
        assert_eq!(terminate, ["i-1", "i-2", "i-3", "i-4", "i-5"]);
    }

    #[test]
    fn units_carry_their_times_from_tags_price_from_the_spec_and_ready_when_running() {
        let s = spec();
        let price = |t: &str| {
            s.instance_types
                .iter()
                .find(|x| x.name == t)
                .and_then(|x| x.hourly_price)
                .unwrap_or(0.0)
        };
        let i = instance(
            "i-1",
            InstanceStateName::Running,
            false,
            &[(CREATED_AT_TAG, "1000"), (LAST_NEEDED_ANNOTATION, "5000")],
        );
        let u = unit_of(&i, 42, price).unwrap();
        assert_eq!(u.id, "i-1");
        assert!(u.ready);
        assert_eq!((u.created_at, u.last_needed), (1000, 5000));
        assert_eq!(u.hourly_price, 1.006);
        assert_eq!(u.node_name.as_deref(), Some("ip-10-0-0-1.ec2.internal"));
        let i = instance("i-2", InstanceStateName::Pending, false, &[]);
        let u = unit_of(&i, 42, price).unwrap();
        assert!(!u.ready);
        assert_eq!((u.created_at, u.last_needed), (42, 42));
    }

    #[test]
    fn only_capacity_errors_let_the_other_lifecycle_try() {
        let o = |codes: &[&str]| FleetOutcome {
            launched: Vec::new(),
            errors: codes
                .iter()
                .map(|c| (c.to_string(), String::new()))
                .collect(),
        };
        assert!(o(&[]).short_of_capacity_only());
        assert!(
            o(&["InsufficientInstanceCapacity", "SpotMaxPriceTooLow"]).short_of_capacity_only()
        );
        assert!(
            !o(&[
                "InsufficientInstanceCapacity",
                "InvalidLaunchTemplateId.NotFound"
            ])
            .short_of_capacity_only()
        );
    }
}
