//! `mode: karpenter`: one NodeClaim (`karpenter.sh/v1`) per unit of capacity, built from the
//! policy's NodePool and the workload's pod shape by [`crate::karpenter::node_claim`].
//!
//! How the contract of [`crate::provider`] is kept here:
//! - ownership: every NodeClaim carries the `headroom.dev/policy` label (and the policy's
//!   `namespace/name` in the `headroom.dev/policy-ref` annotation, for label values that had to
//!   be hashed); `list` selects by that label;
//! - idempotency: a NodeClaim's name is `<nodepool>-hr-<token>-<i>`, so a retried `create` with
//!   the same token meets `409 AlreadyExists` on what the first try made, and counts it as made;
//! - `hold` sets `karpenter.sh/do-not-disrupt: "true"` and `headroom.dev/last-needed`; `release`
//!   drops `do-not-disrupt` (Karpenter may then consolidate the node once it is empty, because
//!   the NodeClaims carry `karpenter.sh/nodepool`); `remove` deletes;
//! - ready: the NodeClaim's `Initialized` condition is `True`, which Karpenter sets only when the
//!   node is Ready, its startup taints are gone and every requested extended resource (the GPUs)
//!   shows in its allocatable.
//!
//! NodeClaims being deleted are not listed as units (they are no longer capacity), but
//! `holdings` returns them: their nodes drain, and are paid for, until gone.

use async_trait::async_trait;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::crd::KarpenterSpec;
use crate::karpenter::{
    DO_NOT_DISRUPT, INSTANCE_TYPE_LABEL, LAST_NEEDED_ANNOTATION, POLICY_LABEL, node_claim,
    policy_label, requirement_values,
};
use crate::plan::{Millis, NodeType, UnitCost};
use crate::provider::{CapacityProvider, CreateRequest, Holdings, PolicyRef, ProviderError, Unit};
use crate::shape::{GPU_RESOURCE, Shape, parse_quantity};

/// `namespace/name` of the owning policy, on every NodeClaim (the label may be a hash).
pub const POLICY_REF_ANNOTATION: &str = "headroom.dev/policy-ref";

/// `karpenter.sh/v1` NodeClaim.
pub fn node_claim_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim"))
}

/// `karpenter.sh/v1` NodePool.
pub fn node_pool_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("karpenter.sh", "v1", "NodePool"))
}

/// The node type plans count in, and the instance types the NodeClaims allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Values of the NodeClaims' `node.kubernetes.io/instance-type` requirement.
    pub instance_types: Vec<String>,
    pub node: NodeType,
    /// What a NodeClaim created now counts against the limits: the chosen type's GPUs and
    /// price, or, without `instanceTypes`, the most GPUs the NodePool's
    /// [`GPU_COUNT_LABEL`] requirement allows (unknown without one) at an unknown price.
    pub worst: UnitCost,
}

/// The well-known Karpenter (AWS) label of an instance type's GPU count.
pub const GPU_COUNT_LABEL: &str = "karpenter.k8s.aws/instance-gpu-count";

/// The most GPUs a node of `pool` may have, from its [`GPU_COUNT_LABEL`] requirements (`In`:
/// the largest value; `Lt n`: n - 1); `None` when they do not bound it.
pub fn gpu_count_bound(pool: &Value) -> Option<u32> {
    let requirements = pool
        .pointer("/spec/template/spec/requirements")?
        .as_array()?;
    requirements
        .iter()
        .filter(|r| r["key"] == GPU_COUNT_LABEL)
        .filter_map(|r| {
            let values = r["values"].as_array()?;
            let numbers = values
                .iter()
                .filter_map(|v| v.as_str()?.trim().parse::<u32>().ok());
            match r["operator"].as_str()? {
                "In" => numbers.max(),
                "Lt" => numbers.min()?.checked_sub(1),
                _ => None,
            }
        })
        .min()
}

/// Chooses the instance type for a policy (pure).
///
/// With `spec.instanceTypes`: the cheapest of them (by `hourlyPrice`; types without a price
/// come after priced ones, then fewer GPUs first) that the NodePool allows and that holds at
/// least one pod; plans count nodes of that type. Without: every type the NodePool's
/// `node.kubernetes.io/instance-type` requirement lists, and Karpenter picks the cheapest that
/// holds the NodeClaim's requests (one pod); plans then count one pod per node, at an unknown
/// price (so `maxHourlyCost` cannot bind).
pub fn choose(spec: &KarpenterSpec, pool: &Value, shape: &Shape) -> Result<Choice, ProviderError> {
    let pod = shape.plan_shape();
    let allowed = requirement_values(pool, INSTANCE_TYPE_LABEL);
    if spec.instance_types.is_empty() {
        let Some(types) = allowed.filter(|t| !t.is_empty()) else {
            return Err(ProviderError::NoFit(format!(
                "spec.karpenter.instanceTypes is empty and NodePool {} does not list instance types (an `In` requirement on {INSTANCE_TYPE_LABEL}): list the types to use in spec.karpenter.instanceTypes",
                spec.node_pool
            )));
        };
        return Ok(Choice {
            instance_types: types,
            node: NodeType {
                gpus: pod.gpus,
                cpu: pod.cpu,
                memory: pod.memory,
                hourly_price: 0.0,
            },
            worst: UnitCost {
                gpus: gpu_count_bound(pool).map(|g| g.max(pod.gpus)),
                hourly_price: None,
            },
        });
    }
    let mut fitting = Vec::new();
    let mut problems = Vec::new();
    for (i, t) in spec.instance_types.iter().enumerate() {
        let (Some(cpu), Some(memory)) = (parse_quantity(&t.cpu), parse_quantity(&t.memory)) else {
            problems.push(format!(
                "spec.karpenter.instanceTypes[{i}] ({}): cpu {:?} or memory {:?} is not a Kubernetes quantity",
                t.name, t.cpu, t.memory
            ));
            continue;
        };
        let node = NodeType {
            gpus: t.gpus,
            cpu,
            memory,
            hourly_price: t.hourly_price.unwrap_or(0.0).max(0.0),
        };
        if allowed.as_ref().is_some_and(|a| !a.contains(&t.name)) {
            problems.push(format!("{}: not allowed by the NodePool", t.name));
        } else if node.pods_per_node(&pod) == 0 {
            problems.push(format!(
                "{}: {} GPU(s), {} CPU, {} bytes is too small",
                t.name, t.gpus, t.cpu, t.memory
            ));
        } else {
            fitting.push((i, t, node));
        }
    }
    let best = fitting.into_iter().min_by(|a, b| {
        let price = |t: &crate::crd::InstanceType| t.hourly_price.filter(|p| *p > 0.0);
        match (price(a.1), price(b.1)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then(a.1.gpus.cmp(&b.1.gpus))
        .then(a.0.cmp(&b.0))
    });
    match best {
        Some((_, t, node)) => Ok(Choice {
            instance_types: vec![t.name.clone()],
            node,
            worst: UnitCost {
                gpus: Some(t.gpus),
                hourly_price: t.hourly_price.filter(|p| *p > 0.0),
            },
        }),
        None => Err(ProviderError::NoFit(format!(
            "no instance type of spec.karpenter.instanceTypes holds one pod ({} GPU(s), {} CPU, {} bytes of memory) in NodePool {}: {}",
            shape.gpus,
            shape.cpu,
            shape.memory,
            spec.node_pool,
            problems.join("; ")
        ))),
    }
}

/// The NodeClaim name for unit `i` of a create call: deterministic from the token.
pub fn claim_name(pool: &str, token: &str, i: u32) -> String {
    let token: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    format!("{pool}-hr-{token}-{i}")
}

/// Maps a Kubernetes API error to the provider's error kinds.
pub fn map_kube_error(error: kube::Error, kind: &'static str, name: &str) -> ProviderError {
    match error {
        kube::Error::Api(status) => {
            let message = format!("{kind} {name}: {}", status.message);
            match status.code {
                404 => ProviderError::Missing {
                    kind,
                    name: name.to_string(),
                    detail: status.message.clone(),
                },
                409 => ProviderError::Conflict(message),
                429 => ProviderError::Throttled(message),
                401 | 403 => ProviderError::Unauthorized(message),
                _ => ProviderError::Other(message),
            }
        }
        other => ProviderError::Other(format!("{kind} {name}: {other}")),
    }
}

fn millis(v: &Value) -> Option<Millis> {
    v.as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A NodeClaim as a unit. `prices` gives hourly prices by instance type.
pub fn to_unit(obj: &Value, prices: &[(String, f64)]) -> Unit {
    let meta = &obj["metadata"];
    let created_at = millis(&meta["creationTimestamp"]).unwrap_or(0);
    let instance_type = meta["labels"][INSTANCE_TYPE_LABEL]
        .as_str()
        .map(String::from)
        .or_else(|| {
            // Before launch the type is known only when the requirement names one.
            obj.pointer("/spec/requirements")?
                .as_array()?
                .iter()
                .find(|r| r["key"] == INSTANCE_TYPE_LABEL && r["operator"] == "In")
                .and_then(|r| r["values"].as_array())
                .filter(|v| v.len() == 1)
                .and_then(|v| v[0].as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    let initialized = condition(obj, "Initialized").filter(|c| c["status"] == "True");
    Unit {
        id: meta["name"].as_str().unwrap_or_default().to_string(),
        node_name: obj
            .pointer("/status/nodeName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from),
        hourly_price: prices
            .iter()
            .find(|(t, _)| *t == instance_type)
            .map_or(0.0, |(_, p)| *p),
        instance_type,
        ready: initialized.is_some(),
        created_at,
        ready_at: initialized.and_then(|c| millis(&c["lastTransitionTime"])),
        // Karpenter writes the launched instance's capacity (GPUs included) to the status.
        gpus: obj
            .pointer("/status/capacity")
            .and_then(|c| c.get(GPU_RESOURCE))
            .and_then(Value::as_str)
            .and_then(parse_quantity)
            .map(|g| g.max(0.0).min(f64::from(u32::MAX)) as u32),
        last_needed: meta["annotations"][LAST_NEEDED_ANNOTATION]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(created_at),
        images: meta["annotations"][crate::warm::IMAGES_ANNOTATION]
            .as_str()
            .map(String::from),
        launch_error: launch_error(obj),
    }
}

/// `Launched=False` or `Registered=False` on a NodeClaim: its reason and message (Karpenter's
/// own words, e.g. `InsufficientCapacityError`), bounded.
fn launch_error(obj: &Value) -> Option<String> {
    ["Launched", "Registered"].iter().find_map(|kind| {
        let c = condition(obj, kind).filter(|c| c["status"] == "False")?;
        let reason = c["reason"].as_str().unwrap_or("");
        let message = c["message"].as_str().unwrap_or("");
        let mut text = format!("{kind}=False {reason}: {message}");
        if text.len() > crate::provider::MAX_LAUNCH_ERROR {
            let mut end = crate::provider::MAX_LAUNCH_ERROR;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        Some(text)
    })
}

/// NodeClaims for one policy's `spec.karpenter`.
#[derive(Clone)]
pub struct KarpenterProvider {
    claims: Api<DynamicObject>,
    pools: Api<DynamicObject>,
    spec: KarpenterSpec,
    /// The instance type choice, for `create`; `None` until the controller resolved it.
    choice: Option<Choice>,
}

impl std::fmt::Debug for KarpenterProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KarpenterProvider")
            .field("node_pool", &self.spec.node_pool)
            .field("choice", &self.choice)
            .finish_non_exhaustive()
    }
}

impl KarpenterProvider {
    pub fn new(client: kube::Client, spec: KarpenterSpec) -> Self {
        Self {
            claims: Api::all_with(client.clone(), &node_claim_resource()),
            pools: Api::all_with(client, &node_pool_resource()),
            spec,
            choice: None,
        }
    }

    /// The policy's NodePool; `Missing` when it does not exist.
    pub async fn node_pool(&self) -> Result<Value, ProviderError> {
        let pool = self
            .pools
            .get(&self.spec.node_pool)
            .await
            .map_err(|e| map_kube_error(e, "NodePool", &self.spec.node_pool))?;
        serde_json::to_value(pool).map_err(|e| ProviderError::Other(e.to_string()))
    }

    /// Reads the NodePool and chooses the instance type for `shape` ([`choose`]); `create` uses
    /// this choice.
    pub async fn resolve(&mut self, shape: &Shape) -> Result<Choice, ProviderError> {
        let pool = self.node_pool().await?;
        let choice = choose(&self.spec, &pool, shape)?;
        self.choice = Some(choice.clone());
        Ok(choice)
    }

    fn prices(&self) -> Vec<(String, f64)> {
        self.spec
            .instance_types
            .iter()
            .map(|t| (t.name.clone(), t.hourly_price.unwrap_or(0.0)))
            .collect()
    }

    async fn patch_annotations(&self, id: &str, annotations: Value) -> Result<(), ProviderError> {
        let patch = json!({"metadata": {"annotations": annotations}});
        match self
            .claims
            .patch(id, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone already: the next list shows it.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_kube_error(e, "NodeClaim", id)),
        }
    }
}

#[async_trait]
impl CapacityProvider for KarpenterProvider {
    fn name(&self) -> &'static str {
        "karpenter"
    }

    async fn list(&self, policy: &PolicyRef) -> Result<Vec<Unit>, ProviderError> {
        Ok(self.holdings(policy).await?.units)
    }

    async fn holdings(&self, policy: &PolicyRef) -> Result<Holdings, ProviderError> {
        let label = policy_label(&policy.namespace, &policy.name);
        let list = self
            .claims
            .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={label}")))
            .await
            .map_err(|e| map_kube_error(e, "NodeClaim", "list"))?;
        let prices = self.prices();
        let mut held = Holdings::default();
        for c in list.items {
            let deleting = c.metadata.deletion_timestamp.is_some();
            let Ok(v) = serde_json::to_value(c) else {
                continue;
            };
            let unit = to_unit(&v, &prices);
            if deleting {
                held.deleting.push(unit);
            } else {
                held.units.push(unit);
            }
        }
        Ok(held)
    }

    async fn create(
        &self,
        policy: &PolicyRef,
        request: &CreateRequest<'_>,
    ) -> Result<Vec<Unit>, ProviderError> {
        let pool = self.node_pool().await?;
        let choice = match &self.choice {
            Some(c) => c.clone(),
            None => choose(&self.spec, &pool, request.shape)?,
        };
        let label = policy_label(&policy.namespace, &policy.name);
        let types: Vec<&str> = choice.instance_types.iter().map(String::as_str).collect();
        let prices = self.prices();
        let mut created = Vec::new();
        let mut failure = None;
        for i in 0..request.count {
            let mut claim = node_claim(&pool, &label, &types, request.shape, request.now)
                .map_err(|e| ProviderError::NoFit(e.to_string()))?;
            let name = claim_name(&self.spec.node_pool, &request.token, i);
            claim["metadata"]["name"] = json!(name);
            if let Some(m) = claim["metadata"].as_object_mut() {
                m.remove("generateName");
            }
            claim["metadata"]["annotations"][POLICY_REF_ANNOTATION] =
                json!(format!("{}/{}", policy.namespace, policy.name));
            let obj: DynamicObject = serde_json::from_value(claim)
                .map_err(|e| ProviderError::Other(format!("NodeClaim {name}: {e}")))?;
            match self.claims.create(&PostParams::default(), &obj).await {
                Ok(made) => {
                    if let Ok(v) = serde_json::to_value(made) {
                        created.push(to_unit(&v, &prices));
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // A retry of the same decision: what the first try made counts as made,
                    // if it is ours and alive.
                    match self.claims.get(&name).await {
                        Ok(existing) => {
                            let ours = existing
                                .metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(POLICY_LABEL))
                                == Some(&label);
                            if ours && existing.metadata.deletion_timestamp.is_none() {
                                if let Ok(v) = serde_json::to_value(existing) {
                                    created.push(to_unit(&v, &prices));
                                }
                            } else {
                                failure = Some(ProviderError::Conflict(format!(
                                    "NodeClaim {name} exists and is {}",
                                    if ours {
                                        "being deleted"
                                    } else {
                                        "not this policy's"
                                    }
                                )));
                                break;
                            }
                        }
                        Err(e) => {
                            failure = Some(map_kube_error(e, "NodeClaim", &name));
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(map_kube_error(e, "NodeClaim", &name));
                    break;
                }
            }
        }
        match failure {
            Some(e) if created.is_empty() => Err(e),
            _ => Ok(created),
        }
    }

    async fn hold(
        &self,
        _policy: &PolicyRef,
        ids: &[String],
        now: Millis,
    ) -> Result<(), ProviderError> {
        for id in ids {
            self.patch_annotations(
                id,
                json!({DO_NOT_DISRUPT: "true", LAST_NEEDED_ANNOTATION: now.to_string()}),
            )
            .await?;
        }
        Ok(())
    }

    async fn release(&self, _policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        for id in ids {
            self.patch_annotations(id, json!({DO_NOT_DISRUPT: null}))
                .await?;
        }
        Ok(())
    }

    async fn remove(&self, _policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        for id in ids {
            match self.claims.delete(id, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(map_kube_error(e, "NodeClaim", id)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::InstanceType;
    use std::collections::BTreeMap;

    fn pool(types: &[&str]) -> Value {
        json!({
            "metadata": {"name": "gpu"},
            "spec": {"template": {"spec": {
                "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"},
                "requirements": [{"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": types}],
            }}}
        })
    }

    fn shape(gpus: u32) -> Shape {
        Shape {
            gpus,
            cpu: 2.0,
            memory: 8e9,
            node_selector: BTreeMap::new(),
            affinity: None,
            tolerations: vec![],
            requests: BTreeMap::new(),
            images: Default::default(),
        }
    }

    use crate::provider::fixtures::instance_type as it;

    fn spec(types: Vec<InstanceType>) -> KarpenterSpec {
        KarpenterSpec {
            node_pool: "gpu".into(),
            instance_types: types,
        }
    }

    #[test]
    fn the_cheapest_allowed_type_that_holds_a_pod_is_chosen() {
        let s = spec(vec![
            it("g5.12xlarge", 4, Some(5.672)),
            it("g5.xlarge", 1, Some(1.006)),
            it("p4d.24xlarge", 8, Some(0.5)),
            it("g4dn.xlarge", 1, None),
        ]);
        let p = pool(&["g5.xlarge", "g5.12xlarge", "g4dn.xlarge"]);
        let c = choose(&s, &p, &shape(1)).unwrap();
        assert_eq!(c.instance_types, ["g5.xlarge"], "p4d is not in the pool");
        assert_eq!((c.node.gpus, c.node.hourly_price), (1, 1.006));
        let c = choose(&s, &p, &shape(2)).unwrap();
        assert_eq!(c.instance_types, ["g5.12xlarge"]);
        let e = choose(&s, &p, &shape(16)).unwrap_err();
        assert_eq!(e.reason(), "NoInstanceTypeFits");
        assert!(e.to_string().contains("p4d.24xlarge: not allowed"), "{e}");
    }

    #[test]
    fn without_instance_types_the_pool_lists_them_and_a_node_holds_one_pod() {
        let c = choose(
            &spec(vec![]),
            &pool(&["g5.xlarge", "g5.2xlarge"]),
            &shape(1),
        )
        .unwrap();
        assert_eq!(c.instance_types, ["g5.xlarge", "g5.2xlarge"]);
        assert_eq!(c.node.pods_per_node(&shape(1).plan_shape()), 1);
        let open = json!({"metadata": {"name": "gpu"}, "spec": {"template": {"spec": {}}}});
        let e = choose(&spec(vec![]), &open, &shape(1)).unwrap_err();
        assert!(
            e.to_string().contains("spec.karpenter.instanceTypes"),
            "{e}"
        );
    }

    #[test]
    fn without_instance_types_a_node_counts_the_most_gpus_the_pool_allows() {
        let c = choose(&spec(vec![]), &pool(&["g5.xlarge"]), &shape(1)).unwrap();
        assert_eq!(
            c.worst,
            UnitCost::default(),
            "unknown: no bound in the pool"
        );
        let mut p = pool(&["g5.xlarge", "g5.12xlarge"]);
        p["spec"]["template"]["spec"]["requirements"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": GPU_COUNT_LABEL, "operator": "In", "values": ["1", "4"]}));
        let c = choose(&spec(vec![]), &p, &shape(1)).unwrap();
        assert_eq!((c.worst.gpus, c.worst.hourly_price), (Some(4), None));
        let lt = json!({"spec": {"template": {"spec": {"requirements": [
            {"key": GPU_COUNT_LABEL, "operator": "Lt", "values": ["3"]},
            {"key": GPU_COUNT_LABEL, "operator": "Gt", "values": ["0"]},
        ]}}}});
        assert_eq!(gpu_count_bound(&lt), Some(2));
        // With instanceTypes the chosen type is exact.
        let c = choose(
            &spec(vec![it("g5.xlarge", 1, Some(1.006))]),
            &pool(&["g5.xlarge"]),
            &shape(1),
        )
        .unwrap();
        assert_eq!((c.worst.gpus, c.worst.hourly_price), (Some(1), Some(1.006)));
    }

    #[test]
    fn a_launched_node_claim_reports_its_gpus() {
        let claim = json!({
            "metadata": {"name": "c", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"capacity": {GPU_RESOURCE: "4", "cpu": "48"}},
        });
        assert_eq!(to_unit(&claim, &[]).gpus, Some(4));
        let pending = json!({"metadata": {"name": "c"}});
        assert_eq!(to_unit(&pending, &[]).gpus, None);
    }

    #[test]
    fn launched_false_is_kept_with_karpenters_reason_and_bounded() {
        let claim = |message: &str| {
            json!({
                "metadata": {"name": "c", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"conditions": [
                    {"type": "Launched", "status": "False", "reason": "InsufficientCapacityError",
                     "message": message, "lastTransitionTime": "2026-01-01T00:00:05Z"},
                    {"type": "Initialized", "status": "Unknown"},
                ]},
            })
        };
        assert_eq!(
            to_unit(&claim("all requested instance types were unavailable"), &[]).launch_error,
            Some(
                "Launched=False InsufficientCapacityError: all requested instance types were unavailable"
                    .into()
            )
        );
        let long = to_unit(&claim(&"é".repeat(5_000)), &[])
            .launch_error
            .unwrap();
        assert!(long.len() <= crate::provider::MAX_LAUNCH_ERROR + '…'.len_utf8());
        assert!(long.ends_with('…'));
        let launched = json!({"metadata": {"name": "c"}, "status": {"conditions": [
            {"type": "Launched", "status": "True"}]}});
        assert_eq!(to_unit(&launched, &[]).launch_error, None);
    }

    #[test]
    fn claim_names_are_deterministic_valid_names() {
        assert_eq!(claim_name("gpu", "A1b2_c3", 0), "gpu-hr-a1b2c3-0");
        assert_eq!(claim_name("gpu", "x", 2), claim_name("gpu", "x", 2));
    }

    #[test]
    fn a_node_claim_reads_as_a_unit() {
        let claim = json!({
            "metadata": {
                "name": "gpu-hr-1-0",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {INSTANCE_TYPE_LABEL: "g5.xlarge"},
                "annotations": {LAST_NEEDED_ANNOTATION: "1767225660000"},
            },
            "status": {
                "nodeName": "n1",
                "conditions": [{"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:01:30Z"}],
            }
        });
        let u = to_unit(&claim, &[("g5.xlarge".into(), 1.0)]);
        assert_eq!(u.id, "gpu-hr-1-0");
        assert_eq!(u.node_name.as_deref(), Some("n1"));
        assert!(u.ready);
        assert_eq!(u.created_at, 1_767_225_600_000);
        assert_eq!(u.ready_at, Some(1_767_225_690_000));
        assert_eq!(u.last_needed, 1_767_225_660_000);
        assert_eq!(u.hourly_price, 1.0);
    }

    #[test]
    fn kube_errors_map_to_provider_errors() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "m".into(),
                ..Default::default()
            }))
        };
        let reasons: Vec<&str> = [404, 409, 429, 401, 403, 500]
            .into_iter()
            .map(|c| map_kube_error(status(c), "NodePool", "gpu").reason())
            .collect();
        assert_eq!(
            reasons,
            [
                "NotFound",
                "Conflict",
                "Throttled",
                "Unauthorized",
                "Unauthorized",
                "ProviderError"
            ]
        );
    }
}
