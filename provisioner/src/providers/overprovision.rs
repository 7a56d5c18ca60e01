//! `mode: overprovision` as a [`CapacityProvider`]: one placeholder Deployment per policy (built
//! by [`crate::overprovision::deployment`], in the policy's namespace, under the negative
//! PriorityClass of [`crate::overprovision::priority_class`]), whose pods are the units.
//!
//! - `list`: the placeholder pods of the policy (by the owner labels), not those being deleted;
//!   a unit is ready once its pod is scheduled and Running.
//! - `create`: the Deployment scaled up by `count` (created with `count` replicas the first
//!   time), with the workload's current shape. The last token applied is kept in the
//!   [`TOKEN_ANNOTATION`] annotation of the Deployment, written in the same update as the
//!   replicas (guarded by the resourceVersion), so a repeated token changes nothing. The pods
//!   do not exist yet when `create` returns (the ReplicaSet makes them): the units it returns
//!   have `pending:` ids that `list` later replaces with the pods' names.
//! - `remove`: the named pods get the lowest `controller.kubernetes.io/pod-deletion-cost`, then
//!   the Deployment is scaled down by how many of them exist. The ReplicaSet deletes pods by
//!   rank — unscheduled before scheduled, Pending before Running, not ready before ready, then
//!   lower deletion cost — so among Running placeholders exactly the named ones go; a Pending
//!   placeholder would go before them (it holds no node, so the capacity that stays is the same
//!   or more).
//! - `hold`: the [`LAST_NEEDED_ANNOTATION`] annotation on the pods. `release`: nothing (a
//!   placeholder is never disrupted by the platform; it is only preempted, which is its job).

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::crd::OverprovisionSpec;
use crate::karpenter::{LAST_NEEDED_ANNOTATION, POLICY_LABEL, policy_label};
use crate::overprovision::{deployment, priority_class};
use crate::plan::Millis;
use crate::provider::{CapacityProvider, CreateRequest, Holdings, PolicyRef, ProviderError, Unit};

/// Writes of the placeholder Deployment tried before a Conflict is returned.
const WRITE_ATTEMPTS: u32 = 3;

/// The last `create` token applied to a placeholder Deployment.
pub const TOKEN_ANNOTATION: &str = "headroom.dev/create-token";
/// The ReplicaSet deletes pods with a lower cost first (when their phase and readiness tie).
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost given to the pods `remove` names: the lowest an int32 holds.
const REMOVE_COST: &str = "-2147483648";
/// Prefix of the ids of units asked for whose pods the ReplicaSet has not made yet.
pub const PENDING_PREFIX: &str = "pending:";

/// `Ok` when `class` may hold placeholders: its value is negative, so every pod of the default
/// priority (0) preempts them.
pub fn placeholder_priority(class: &PriorityClass) -> Result<(), ProviderError> {
    if class.value < 0 {
        return Ok(());
    }
    Err(ProviderError::NotAllowed(format!(
        "PriorityClass {:?} has value {}: placeholders need a negative priority, or real pods \
         could not preempt them (name another, or let Headroom create it with value {})",
        class.metadata.name.as_deref().unwrap_or_default(),
        class.value,
        crate::overprovision::PRIORITY
    )))
}

/// Pause-pod placeholders for the policies of one cluster.
#[derive(Clone)]
pub struct OverprovisionProvider {
    client: kube::Client,
    spec: OverprovisionSpec,
    /// The image-warming helper: placeholders run the workload's images when set.
    warm: Option<crate::warm::Helper>,
}

impl std::fmt::Debug for OverprovisionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverprovisionProvider")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The name of a policy's placeholder Deployment: `<policy>-headroom`, shortened with a hash
/// when the policy's name is long (pod names derived from it stay within 63 characters).
pub fn deployment_name(policy: &PolicyRef) -> String {
    let full = format!("{}-headroom", policy.name);
    if full.len() <= 47 {
        return full;
    }
    let hash = policy_label(&policy.namespace, &policy.name)
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    let head: String = policy.name.chars().take(28).collect();
    format!(
        "{}-{:08x}-headroom",
        head.trim_end_matches('-'),
        hash as u32
    )
}

impl OverprovisionProvider {
    pub fn new(client: kube::Client, spec: OverprovisionSpec) -> Self {
        Self {
            client,
            spec,
            warm: None,
        }
    }

    /// Placeholders run the workload's images with this helper (image warming), instead of
    /// the pause image; `None`: pause.
    pub fn with_warm_helper(mut self, helper: Option<crate::warm::Helper>) -> Self {
        self.warm = helper;
        self
    }

    fn deployments(&self, policy: &PolicyRef) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &policy.namespace)
    }

    fn pods(&self, policy: &PolicyRef) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &policy.namespace)
    }

    fn selector(policy: &PolicyRef) -> String {
        format!(
            "{POLICY_LABEL}={},app.kubernetes.io/name=headroom-placeholder",
            policy_label(&policy.namespace, &policy.name)
        )
    }

    /// The placeholder pods of `policy` that are not being deleted.
    async fn placeholder_pods(&self, policy: &PolicyRef) -> Result<Vec<Pod>, ProviderError> {
        Ok(self
            .all_placeholder_pods(policy)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// The placeholder pods of `policy`, those being deleted included.
    async fn all_placeholder_pods(&self, policy: &PolicyRef) -> Result<Vec<Pod>, ProviderError> {
        let list = self
            .pods(policy)
            .list(&ListParams::default().labels(&Self::selector(policy)))
            .await
            .map_err(|e| api_error(e, "Pod", &policy.namespace))?;
        Ok(list.items)
    }

    /// Creates the PriorityClass when missing; an existing one is used only when its value is
    /// negative (a placeholder that outranks real pods would hold their room instead of
    /// yielding it), and is refused otherwise.
    async fn ensure_priority_class(&self) -> Result<(), ProviderError> {
        let api: Api<PriorityClass> = Api::all(self.client.clone());
        let name = &self.spec.priority_class_name;
        match api.get_opt(name).await {
            Ok(Some(existing)) => return placeholder_priority(&existing),
            Ok(None) => {}
            Err(e) => return Err(api_error(e, "PriorityClass", name)),
        }
        match api
            .create(&PostParams::default(), &priority_class(name))
            .await
        {
            Ok(_) => Ok(()),
            // Made by another call meanwhile.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(match api_error(e, "PriorityClass", name) {
                ProviderError::Other(detail) | ProviderError::Unauthorized(detail) => {
                    ProviderError::Missing {
                        kind: "PriorityClass",
                        name: name.clone(),
                        detail: format!("and it cannot be created: {detail}"),
                    }
                }
                other => other,
            }),
        }
    }

    /// Writes `replicas` (and, for `create`, the token) with the current shape, guarded by the
    /// resourceVersion read: a concurrent change answers `Conflict`, never a lost update.
    async fn write(
        &self,
        policy: &PolicyRef,
        mut desired: Deployment,
        current: Option<&Deployment>,
        token: Option<&str>,
    ) -> Result<(), ProviderError> {
        let name = deployment_name(policy);
        let meta = &mut desired.metadata;
        let mut annotations: BTreeMap<String, String> = current
            .and_then(|d| d.metadata.annotations.clone())
            .unwrap_or_default();
        if let Some(token) = token {
            annotations.insert(TOKEN_ANNOTATION.into(), token.into());
        }
        meta.annotations = (!annotations.is_empty()).then_some(annotations);
        if !policy.uid.is_empty() {
            meta.owner_references = Some(vec![OwnerReference {
                api_version: "headroom.dev/v1alpha1".into(),
                kind: "PrewarmPolicy".into(),
                name: policy.name.clone(),
                uid: policy.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]);
        }
        let api = self.deployments(policy);
        let result = match current {
            None => api
                .create(&PostParams::default(), &desired)
                .await
                .map(|_| ()),
            Some(c) => {
                meta.resource_version = c.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &desired)
                    .await
                    .map(|_| ())
            }
        };
        result.map_err(|e| api_error(e, "Deployment", &name))
    }

    fn build(&self, policy: &PolicyRef, shape: &crate::shape::Shape, replicas: u32) -> Deployment {
        deployment(
            &deployment_name(policy),
            &policy.namespace,
            &policy_label(&policy.namespace, &policy.name),
            shape,
            replicas,
            &self.spec.priority_class_name,
            &self.spec.pause_image,
            self.warm.as_ref(),
        )
    }
}

fn replicas_of(d: &Deployment) -> u32 {
    d.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(1, |r| u32::try_from(r).unwrap_or(0))
}

fn millis(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Millis {
    t.0.as_millisecond()
}

/// One placeholder pod as a unit.
fn unit_of(pod: &Pod) -> Unit {
    let created_at = pod.metadata.creation_timestamp.as_ref().map_or(0, millis);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = running && node_name.is_some();
    let ready_at = if ready {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(millis)
            .or_else(|| status.and_then(|s| s.start_time.as_ref()).map(millis))
    } else {
        None
    };
    let last_needed = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_NEEDED_ANNOTATION))
        .and_then(|v| v.parse::<Millis>().ok())
        .unwrap_or(created_at);
    Unit {
        id: pod.metadata.name.clone().unwrap_or_default(),
        node_name,
        // A placeholder holds room on a node it does not choose: the node's type is the
        // autoscaler's business, and pricing it is the node's (NodeClaim's) provider's.
        instance_type: String::new(),
        ready,
        created_at,
        ready_at,
        last_needed,
        hourly_price: 0.0,
        gpus: None,
        images: None,
        launch_error: None,
    }
}

/// Turns a Kubernetes API error into the provider error that says what to do.
fn api_error(e: kube::Error, kind: &'static str, name: &str) -> ProviderError {
    match e {
        kube::Error::Api(s) => {
            let detail = format!("{kind} {name}: {}", s.message);
            match s.code {
                404 => ProviderError::Missing {
                    kind,
                    name: name.to_string(),
                    detail: s.message.clone(),
                },
                409 => ProviderError::Conflict(detail),
                429 => ProviderError::Throttled(detail),
                401 | 403 => ProviderError::Unauthorized(detail),
                _ => ProviderError::Other(detail),
            }
        }
        other => ProviderError::Other(format!("{kind} {name}: {other}")),
    }
}

#[async_trait]
impl CapacityProvider for OverprovisionProvider {
    fn name(&self) -> &'static str {
        "overprovision"
    }

    async fn list(&self, policy: &PolicyRef) -> Result<Vec<Unit>, ProviderError> {
        let mut units: Vec<Unit> = self
            .placeholder_pods(policy)
            .await?
            .iter()
            .map(unit_of)
            .collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(units)
    }

    /// The pods, those being deleted, and the Deployment's `spec.replicas` beyond its live
    /// pods (the ReplicaSet has not made them yet): `create` adds to `spec.replicas`, so that
    /// is what bounds the placeholders, not the pods listed.
    async fn holdings(&self, policy: &PolicyRef) -> Result<Holdings, ProviderError> {
        let name = deployment_name(policy);
        let deployment = self
            .deployments(policy)
            .get_opt(&name)
            .await
            .map_err(|e| api_error(e, "Deployment", &name))?;
        let pods = self.all_placeholder_pods(policy).await?;
        let (deleting, live): (Vec<Pod>, Vec<Pod>) = pods
            .into_iter()
            .partition(|p| p.metadata.deletion_timestamp.is_some());
        let mut units: Vec<Unit> = live.iter().map(unit_of).collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        let replicas = deployment.as_ref().map_or(0, replicas_of);
        Ok(Holdings {
            unmaterialised: replicas.saturating_sub(u32::try_from(units.len()).unwrap_or(u32::MAX)),
            units,
            deleting: deleting.iter().map(unit_of).collect(),
        })
    }

    async fn create(
        &self,
        policy: &PolicyRef,
        request: &CreateRequest<'_>,
    ) -> Result<Vec<Unit>, ProviderError> {
        if request.count == 0 {
            return Ok(Vec::new());
        }
        let name = deployment_name(policy);
        // The Deployment controller writes the object too (revision, status): a write that
        // raced it answers Conflict, and is redone from a fresh read (the token makes a write
        // that did land count once).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self
                .deployments(policy)
                .get_opt(&name)
                .await
                .map_err(|e| api_error(e, "Deployment", &name))?;
            let applied = current
                .as_ref()
                .and_then(|d| d.metadata.annotations.as_ref())
                .and_then(|a| a.get(TOKEN_ANNOTATION))
                .is_some_and(|t| *t == request.token);
            if applied {
                return Ok(Vec::new());
            }
            self.ensure_priority_class().await?;
            let before = current.as_ref().map_or(0, replicas_of);
            let replicas = before.saturating_add(request.count);
            let desired = self.build(policy, request.shape, replicas);
            match self
                .write(policy, desired, current.as_ref(), Some(&request.token))
                .await
            {
                Err(ProviderError::Conflict(_)) if attempt < WRITE_ATTEMPTS => continue,
                other => other?,
            }
            break;
        }
        Ok((0..request.count)
            .map(|i| Unit {
                id: format!("{PENDING_PREFIX}{name}:{}:{i}", request.token),
                node_name: None,
                instance_type: String::new(),
                ready: false,
                created_at: request.now,
                ready_at: None,
                last_needed: request.now,
                hourly_price: 0.0,
                gpus: Some(request.shape.gpus),
                images: None,
                launch_error: None,
            })
            .collect())
    }

    async fn hold(
        &self,
        policy: &PolicyRef,
        ids: &[String],
        now: Millis,
    ) -> Result<(), ProviderError> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {LAST_NEEDED_ANNOTATION: now.to_string()}}
        });
        let pods = self.pods(policy);
        for id in ids.iter().filter(|id| !id.starts_with(PENDING_PREFIX)) {
            match pods
                .patch(id, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                // Preempted or removed meanwhile: nothing to hold.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error(e, "Pod", id)),
            }
        }
        Ok(())
    }

    async fn release(&self, _policy: &PolicyRef, _ids: &[String]) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn refresh_images(
        &self,
        policy: &PolicyRef,
        shape: &crate::shape::Shape,
    ) -> Result<bool, ProviderError> {
        let name = deployment_name(policy);
        let images_of = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(crate::warm::IMAGES_ANNOTATION))
                .cloned()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self
                .deployments(policy)
                .get_opt(&name)
                .await
                .map_err(|e| api_error(e, "Deployment", &name))?;
            let Some(current) = current else {
                return Ok(false);
            };
            let desired = self.build(policy, shape, replicas_of(&current));
            if images_of(&desired) == images_of(&current) {
                return Ok(false);
            }
            match self.write(policy, desired, Some(&current), None).await {
                Err(ProviderError::Conflict(_)) if attempt < WRITE_ATTEMPTS => continue,
                other => other?,
            }
            return Ok(true);
        }
    }

    async fn remove(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        let existing: Vec<String> = self
            .placeholder_pods(policy)
            .await?
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .filter(|n| ids.contains(n))
            .collect();
        if existing.is_empty() {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {DELETION_COST_ANNOTATION: REMOVE_COST}}
        });
        let pods = self.pods(policy);
        let mut marked = 0u32;
        for id in &existing {
            match pods
                .patch(id, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => marked += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error(e, "Pod", id)),
            }
        }
        let name = deployment_name(policy);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(current) = self
                .deployments(policy)
                .get_opt(&name)
                .await
                .map_err(|e| api_error(e, "Deployment", &name))?
            else {
                return Ok(());
            };
            let replicas = replicas_of(&current).saturating_sub(marked);
            let mut desired = current.clone();
            if let Some(spec) = desired.spec.as_mut() {
                spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
            }
            // A Conflict wrote nothing: redo it from a fresh read (see `create`).
            match self.write(policy, desired, Some(&current), None).await {
                Err(ProviderError::Conflict(_)) if attempt < WRITE_ATTEMPTS => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_negative_priority_class_may_hold_placeholders() {
        let mut class = priority_class("p");
        assert_eq!(placeholder_priority(&class), Ok(()));
        for value in [0, 1_000_000_000] {
            class.value = value;
            let e = placeholder_priority(&class).unwrap_err();
            assert_eq!(e.reason(), "NotAllowed");
            assert!(!e.retryable());
            assert!(e.to_string().contains(&format!("value {value}")), "{e}");
        }
    }

    fn policy(name: &str) -> PolicyRef {
        PolicyRef {
            namespace: "ml".into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    #[test]
    fn deployment_names_are_short_and_stable() {
        assert_eq!(
            deployment_name(&policy("gpu-worker")),
            "gpu-worker-headroom"
        );
        let long = "a-very-long-policy-name-that-goes-on-and-on-and-on";
        let n = deployment_name(&policy(long));
        assert!(n.len() <= 47, "{n}");
        assert_eq!(n, deployment_name(&policy(long)));
        assert_ne!(n, deployment_name(&policy(&format!("{long}-2"))));
    }

    #[test]
    fn a_pod_is_a_ready_unit_once_scheduled_and_running() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {LAST_NEEDED_ANNOTATION: "1767225700000"},
            },
            "spec": {"containers": [], "nodeName": "gpu-1"},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-01-01T00:00:05Z"}],
            },
        }))
        .unwrap();
        let u = unit_of(&pod);
        assert_eq!(u.id, "p1");
        assert!(u.ready);
        assert_eq!(u.node_name.as_deref(), Some("gpu-1"));
        assert_eq!(u.created_at, 1_767_225_600_000);
        assert_eq!(u.ready_at, Some(1_767_225_605_000));
        assert_eq!(u.last_needed, 1_767_225_700_000);

        let pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p2", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": []},
            "status": {"phase": "Pending"},
        }))
        .unwrap();
        let u = unit_of(&pending);
        assert!(!u.ready);
        assert_eq!(u.last_needed, u.created_at, "never held: its creation time");
    }

    #[test]
    fn api_errors_keep_their_meaning() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "m".into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            api_error(status(409), "Deployment", "d").reason(),
            "Conflict"
        );
        assert_eq!(
            api_error(status(429), "Deployment", "d").reason(),
            "Throttled"
        );
        assert_eq!(
            api_error(status(403), "Deployment", "d").reason(),
            "Unauthorized"
        );
        assert_eq!(
            api_error(status(404), "Deployment", "d").reason(),
            "NotFound"
        );
        assert_eq!(
            api_error(status(500), "Deployment", "d").reason(),
            "ProviderError"
        );
    }
}
