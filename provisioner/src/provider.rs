//! The one seam between the reconcile loop and whatever makes capacity: Karpenter NodeClaims,
//! pause-pod overprovisioning, or EC2 instances.
//!
//! # Contract
//!
//! Every implementation keeps these promises; the controller relies on them and never second
//! guesses a provider:
//!
//! 1. **Ownership is visible on the capacity itself.** Everything `create` makes carries the
//!    policy's owner mark (the `headroom.dev/policy` label on Kubernetes objects, the same key as
//!    a tag on EC2), so `list` after a restart finds exactly what an earlier process created —
//!    adoption, never duplication. `list` returns nothing it did not create for that policy.
//! 2. **`create` is idempotent per token.** Calling `create` twice with the same
//!    [`CreateRequest::token`] (a retry after a timeout, a second reconcile before the first one's
//!    objects are listed) creates the units once. Tokens are deterministic: derived from the policy
//!    and how many units it already owned when it decided to create.
//! 3. **`create` never creates more than `count` units**, and may create fewer (capacity errors,
//!    quotas): it returns what it did create, and an error only when it created nothing. The
//!    controller re-plans on the next pass from what `list` shows.
//! 4. **`hold` marks units as needed now**: their `last_needed` becomes the given time (kept on the
//!    capacity, e.g. the `headroom.dev/last-needed` annotation or tag, so a restart keeps the
//!    clock) and, where the platform has such a thing, they are protected from disruption
//!    (`karpenter.sh/do-not-disrupt`). `release` lifts that protection without removing anything.
//! 5. **`holdings` shows what the limits count**: the units `list` returns, those being
//!    deleted (still held until gone) and those asked for but not made yet, so a limit holds
//!    while capacity drains or a controller lags.
//! 6. **`remove` removes only the named units**, each of which the controller has checked is
//!    idle; removing a unit already gone is success.
//! 7. **Errors say what is wrong and whether to retry**: see [`ProviderError`]. A provider never
//!    answers an error as "nothing exists".
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller: providers read no clock
//! of their own for planning decisions (they may for call timeouts).

use std::fmt;

use async_trait::async_trait;

use crate::plan::Millis;
use crate::shape::Shape;

/// The policy a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    /// The policy object's UID: owner references, and tokens that change if the policy is
    /// deleted and recreated under the same name.
    pub uid: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One unit of capacity a provider holds for a policy: a NodeClaim, an EC2 instance, or one
/// placeholder pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// NodeClaim name, instance id, or placeholder pod name.
    pub id: String,
    /// The Kubernetes node it is (or runs on), once known.
    pub node_name: Option<String>,
    pub instance_type: String,
    /// Ready for workload pods: the node is Ready and Initialized (GPUs registered), or the
    /// placeholder pod is Running.
    pub ready: bool,
    /// When the unit was asked for.
    pub created_at: Millis,
    /// When it became ready, if known (for time-to-capacity).
    pub ready_at: Option<Millis>,
    /// The last time a plan counted it as needed (its creation time until then).
    pub last_needed: Millis,
    /// Per hour, in the instance types' currency; 0 when unknown.
    pub hourly_price: f64,
    /// GPUs of the unit, when the platform reported them (a launched NodeClaim's capacity);
    /// otherwise the controller counts its instance type's, or the worst case.
    pub gpus: Option<u32>,
    /// The [`crate::warm::images_hash`] of the workload images the unit is known to hold
    /// (the `headroom.dev/images` annotation), if any.
    pub images: Option<String>,
    /// Why the platform says it is not up yet, when it says (a NodeClaim's `Launched=False`
    /// or `Registered=False` reason and message, at most [`MAX_LAUNCH_ERROR`] bytes): kept by
    /// the launch tracker, so a unit the platform then deletes is reported with the cause.
    pub launch_error: Option<String>,
}

/// The longest [`Unit::launch_error`] kept.
pub const MAX_LAUNCH_ERROR: usize = 300;

/// Everything a provider holds for a policy, as the limits count it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holdings {
    /// The units that are capacity: what [`CapacityProvider::list`] returns.
    pub units: Vec<Unit>,
    /// Units being removed (a NodeClaim or pod with a deletion timestamp, an instance shutting
    /// down or stopping): capacity no more, but held — and paid for — until gone, so they count
    /// against the limits. The controller never acts on them.
    pub deleting: Vec<Unit>,
    /// Units asked for that exist as no object yet (a placeholder Deployment's `spec.replicas`
    /// beyond its pods while the ReplicaSet catches up): counted as in flight.
    pub unmaterialised: u32,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    /// Units to create (at most).
    pub count: u32,
    /// The workload pod's shape: the capacity must hold pods of exactly this shape.
    pub shape: &'a Shape,
    /// Idempotency token (see the contract, rule 2). At most 64 ASCII characters.
    pub token: String,
    /// Now, for `created_at` and `last_needed` of what is created.
    pub now: Millis,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Something the policy names does not exist (a NodePool, a launch template, a PriorityClass
    /// that cannot be created). Not retried until the policy or that object changes.
    #[error("{kind} {name:?} not found{}", suffix(.detail))]
    Missing {
        kind: &'static str,
        name: String,
        detail: String,
    },
    /// The shape fits no instance type the policy allows.
    #[error("{0}")]
    NoFit(String),
    /// The platform has no capacity of the kinds asked for right now (spot and on-demand both).
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(String),
    /// Throttled or rate limited: retried with backoff.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The object changed under us (HTTP 409): re-read and retried.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The operator does not allow what the policy asks for (a PriorityClass that is not
    /// negative, a value outside the allow-lists). Not retried until the policy changes.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// Credentials missing, expired or not allowed to do this.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// Anything else (network, server errors): retried with backoff.
    #[error("{0}")]
    Other(String),
}

fn suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

impl ProviderError {
    /// CamelCase reason for conditions and events, and the bounded `reason` label of
    /// `headroom_provisioner_provider_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::Missing { .. } => "NotFound",
            ProviderError::NoFit(_) => "NoInstanceTypeFits",
            ProviderError::InsufficientCapacity(_) => "InsufficientCapacity",
            ProviderError::Throttled(_) => "Throttled",
            ProviderError::Conflict(_) => "Conflict",
            ProviderError::Unauthorized(_) => "Unauthorized",
            ProviderError::NotAllowed(_) => "NotAllowed",
            ProviderError::Other(_) => "ProviderError",
        }
    }

    /// Whether retrying the same call later can succeed without anything else changing.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            ProviderError::Missing { .. }
                | ProviderError::NoFit(_)
                | ProviderError::Unauthorized(_)
                | ProviderError::NotAllowed(_)
        )
    }
}

/// Makes and removes capacity for policies. See the module documentation for the contract.
#[async_trait]
pub trait CapacityProvider: Send + Sync {
    /// `karpenter`, `overprovision` or `ec2`: the `provider` label of the provider metrics.
    fn name(&self) -> &'static str;

    /// Everything this provider holds for `policy`, found by its owner mark.
    async fn list(&self, policy: &PolicyRef) -> Result<Vec<Unit>, ProviderError>;

    /// [`list`](Self::list), plus what is being deleted and what is asked for but not made
    /// yet: what the limits count. The same owner mark; default: `list` alone.
    async fn holdings(&self, policy: &PolicyRef) -> Result<Holdings, ProviderError> {
        Ok(Holdings {
            units: self.list(policy).await?,
            ..Holdings::default()
        })
    }

    /// Create up to `request.count` units; returns those created.
    async fn create(
        &self,
        policy: &PolicyRef,
        request: &CreateRequest<'_>,
    ) -> Result<Vec<Unit>, ProviderError>;

    /// Mark `ids` as needed at `now` and protect them from disruption.
    async fn hold(
        &self,
        policy: &PolicyRef,
        ids: &[String],
        now: Millis,
    ) -> Result<(), ProviderError>;

    /// Lift disruption protection from `ids` (their window has closed) without removing them.
    async fn release(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError>;

    /// Remove `ids`, each idle. Already gone is success.
    async fn remove(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError>;

    /// Brings what exists up to date with the workload's images where units are built from a
    /// template (overprovision: a new image list rewrites the placeholder template, so the
    /// placeholders are replaced by ones that pull the new images). Returns whether anything
    /// was written. Default: nothing to do.
    async fn refresh_images(
        &self,
        _policy: &PolicyRef,
        _shape: &Shape,
    ) -> Result<bool, ProviderError> {
        Ok(false)
    }
}

/// Values the unit tests of several modules build.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Unit;
    use crate::crd::InstanceType;

    /// An instance type with `gpus` GPUs and an optional hourly price.
    pub fn instance_type(name: &str, gpus: u32, price: Option<f64>) -> InstanceType {
        InstanceType {
            name: name.into(),
            gpus,
            cpu: "7".into(),
            memory: "30Gi".into(),
            hourly_price: price,
        }
    }

    /// A unit that is not ready, of `instance_type` (empty: not yet known).
    pub fn unit(id: &str, instance_type: &str) -> Unit {
        Unit {
            id: id.into(),
            node_name: None,
            instance_type: instance_type.into(),
            ready: false,
            created_at: 0,
            ready_at: None,
            last_needed: 0,
            hourly_price: 0.0,
            gpus: None,
            images: None,
            launch_error: None,
        }
    }
}
