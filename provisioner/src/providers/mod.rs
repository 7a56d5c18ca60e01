//! The capacity providers, one file per mode, and the one place that builds a policy's provider
//! from its spec ([`for_policy`]).

pub mod ec2;
pub mod intent;
pub mod karpenter;
pub mod overprovision;

use std::time::Instant;

use async_trait::async_trait;

use crate::crd::{CapacityMode, InstanceType, PrewarmPolicy};
use crate::metrics;
use crate::plan::{Millis, NodeType, UnitCost};
use crate::provider::{CapacityProvider, CreateRequest, Holdings, PolicyRef, ProviderError, Unit};
use crate::shape::Shape;

/// Why a policy has no provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForPolicyError {
    /// `spec.<mode>` is missing.
    #[error("spec.{0} is required for mode: {0}")]
    MissingParameters(&'static str),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl ForPolicyError {
    /// CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            ForPolicyError::MissingParameters(_) => "InvalidSpec",
            ForPolicyError::Provider(ProviderError::Missing { kind, .. }) => match *kind {
                "NodePool" => "NodePoolNotFound",
                _ => "NotFound",
            },
            ForPolicyError::Provider(e) => e.reason(),
        }
    }

    /// Whether a retry can succeed without the policy or another object changing.
    pub fn retryable(&self) -> bool {
        matches!(self, ForPolicyError::Provider(e) if e.retryable())
    }
}

/// A policy's provider, resolved for the workload's shape.
pub struct Built {
    pub provider: Box<dyn CapacityProvider>,
    /// The node type plans count in.
    pub node: NodeType,
    /// The instance type(s) units are made of, for status and events.
    pub instance_types: Vec<String>,
    /// Units are nodes (NodeClaims, instances), on which workload pods run; `false` when they
    /// are placeholder pods (overprovision), which workload pods never run "on" — they preempt
    /// them instead.
    pub units_are_nodes: bool,
    /// What a unit created now counts against the limits: with several types it may be, the
    /// worst case (most GPUs, highest price; unknown when any is unpriced).
    pub worst: UnitCost,
    /// The instance types the policy lists, to count a unit whose type is known as that type.
    pub catalog: Vec<InstanceType>,
}

impl Built {
    /// What `unit` counts against the limits: its reported GPUs, or its type's from the
    /// catalog, or the worst case; its price, or its type's, or the worst case.
    pub fn cost_of(&self, unit: &Unit) -> UnitCost {
        let known = self
            .catalog
            .iter()
            .find(|t| !unit.instance_type.is_empty() && t.name == unit.instance_type);
        UnitCost {
            gpus: unit.gpus.or(known.map(|t| t.gpus)).or(self.worst.gpus),
            hourly_price: Some(unit.hourly_price)
                .filter(|p| *p > 0.0)
                .or(known.and_then(|t| t.hourly_price).filter(|p| *p > 0.0))
                .or(self.worst.hourly_price),
        }
    }
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("provider", &self.provider.name())
            .field("node", &self.node)
            .field("instance_types", &self.instance_types)
            .finish()
    }
}

/// The provider of `policy`'s mode, with the node type it makes for `shape`. Every mode goes
/// through here: adding a mode is one match arm.
pub async fn for_policy(
    client: &kube::Client,
    policy: &PrewarmPolicy,
    shape: &Shape,
    warm: Option<&crate::warm::Helper>,
) -> Result<Built, ForPolicyError> {
    match policy.spec.mode {
        CapacityMode::Karpenter => {
            let spec = policy
                .spec
                .karpenter
                .clone()
                .ok_or(ForPolicyError::MissingParameters("karpenter"))?;
            let mut p = karpenter::KarpenterProvider::new(client.clone(), spec.clone());
            let choice = p.resolve(shape).await?;
            Ok(Built {
                provider: Box::new(Timed(Box::new(p))),
                node: choice.node,
                instance_types: choice.instance_types,
                units_are_nodes: true,
                worst: choice.worst,
                catalog: spec.instance_types,
            })
        }
        CapacityMode::Overprovision => {
            let spec = policy.spec.overprovision.clone().unwrap_or_default();
            // One unit is one placeholder pod holding exactly one workload pod's room: the
            // plan's "node" is the pod shape itself, so the limits count placeholders and
            // their GPUs.
            let pod = shape.plan_shape();
            Ok(Built {
                provider: Box::new(Timed(Box::new(
                    overprovision::OverprovisionProvider::new(client.clone(), spec)
                        .with_warm_helper(warm.cloned()),
                ))),
                node: NodeType {
                    gpus: pod.gpus,
                    cpu: pod.cpu,
                    memory: pod.memory,
                    hourly_price: 0.0,
                },
                instance_types: vec!["placeholder-pod".into()],
                units_are_nodes: false,
                // A placeholder holds exactly one pod's room and costs nothing itself.
                worst: UnitCost {
                    gpus: Some(pod.gpus),
                    hourly_price: Some(0.0),
                },
                catalog: Vec::new(),
            })
        }
        CapacityMode::Ec2 => {
            let spec = policy
                .spec
                .ec2
                .as_ref()
                .ok_or(ForPolicyError::MissingParameters("ec2"))?;
            // Plans count nodes of the most preferred type that holds a pod; the fleet may
            // fall back to the others (in order), which hold at least one pod each.
            let types = ec2::fitting_types(&spec.instance_types, shape)?;
            let preferred = types[0];
            let node = NodeType {
                gpus: preferred.gpus,
                cpu: crate::shape::parse_quantity(&preferred.cpu).unwrap_or(0.0),
                memory: crate::shape::parse_quantity(&preferred.memory).unwrap_or(0.0),
                hourly_price: preferred.hourly_price.unwrap_or(0.0).max(0.0),
            };
            let instance_types = types.iter().map(|t| t.name.clone()).collect();
            let worst = worst_of(&types);
            let provider = ec2::Ec2Provider::new(spec)
                .await?
                .with_intents(std::sync::Arc::new(intent::PolicyAnnotation::new(
                    client.clone(),
                )));
            Ok(Built {
                provider: Box::new(Timed(Box::new(provider))),
                node,
                instance_types,
                units_are_nodes: true,
                worst,
                catalog: spec.instance_types.clone(),
            })
        }
    }
}

/// The worst case of `types` for the limits: the most GPUs and the highest price (unknown if
/// any type has none), as a fleet may launch any of them.
pub fn worst_of(types: &[&InstanceType]) -> UnitCost {
    let prices: Option<Vec<f64>> = types
        .iter()
        .map(|t| t.hourly_price.filter(|p| *p > 0.0))
        .collect();
    UnitCost {
        gpus: types.iter().map(|t| t.gpus).max(),
        hourly_price: prices.and_then(|p| p.into_iter().reduce(f64::max)),
    }
}

/// The provider of `mode` for listing and removing what `policy` holds in it, without resolving
/// anything the policy names (its NodePool may be gone): for clean-up on deletion and after a
/// mode change. `None` when EC2's parameters are gone or cannot build a client.
pub async fn for_cleanup(
    client: &kube::Client,
    policy: &PrewarmPolicy,
    mode: CapacityMode,
) -> Option<Box<dyn CapacityProvider>> {
    match mode {
        CapacityMode::Karpenter => {
            // Listing and removal find NodeClaims by the policy's label alone: they work after
            // a mode change removed `spec.karpenter`.
            let spec = policy
                .spec
                .karpenter
                .clone()
                .unwrap_or_else(|| crate::crd::KarpenterSpec {
                    node_pool: String::new(),
                    instance_types: Vec::new(),
                });
            Some(Box::new(Timed(Box::new(
                karpenter::KarpenterProvider::new(client.clone(), spec),
            ))))
        }
        CapacityMode::Overprovision => Some(Box::new(Timed(Box::new(
            overprovision::OverprovisionProvider::new(
                client.clone(),
                policy.spec.overprovision.clone().unwrap_or_default(),
            ),
        )))),
        CapacityMode::Ec2 => {
            // Clean-up needs only the owner tags; a spec that cannot build a client has
            // created nothing.
            let spec = policy.spec.ec2.clone()?;
            let provider = ec2::Ec2Provider::new(&spec).await.ok()?;
            Some(Box::new(Timed(Box::new(provider))))
        }
    }
}

/// Times every call and counts its errors (`headroom_provisioner_provider_*`).
pub struct Timed(pub Box<dyn CapacityProvider>);

impl Timed {
    fn record<T>(&self, operation: &'static str, start: Instant, r: &Result<T, ProviderError>) {
        metrics::provider_call(
            self.0.name(),
            operation,
            start.elapsed(),
            r.as_ref().err().map(ProviderError::reason),
        );
    }
}

#[async_trait]
impl CapacityProvider for Timed {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn list(&self, policy: &PolicyRef) -> Result<Vec<Unit>, ProviderError> {
        let start = Instant::now();
        let r = self.0.list(policy).await;
        self.record("list", start, &r);
        r
    }

    async fn holdings(&self, policy: &PolicyRef) -> Result<Holdings, ProviderError> {
        let start = Instant::now();
        let r = self.0.holdings(policy).await;
        self.record("list", start, &r);
        r
    }

    async fn create(
        &self,
        policy: &PolicyRef,
        request: &CreateRequest<'_>,
    ) -> Result<Vec<Unit>, ProviderError> {
        let start = Instant::now();
        let r = self.0.create(policy, request).await;
        self.record("create", start, &r);
        r
    }

    async fn hold(
        &self,
        policy: &PolicyRef,
        ids: &[String],
        now: Millis,
    ) -> Result<(), ProviderError> {
        let start = Instant::now();
        let r = self.0.hold(policy, ids, now).await;
        self.record("hold", start, &r);
        r
    }

    async fn release(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        let start = Instant::now();
        let r = self.0.release(policy, ids).await;
        self.record("release", start, &r);
        r
    }

    async fn remove(&self, policy: &PolicyRef, ids: &[String]) -> Result<(), ProviderError> {
        let start = Instant::now();
        let r = self.0.remove(policy, ids).await;
        self.record("remove", start, &r);
        r
    }

    async fn refresh_images(
        &self,
        policy: &PolicyRef,
        shape: &Shape,
    ) -> Result<bool, ProviderError> {
        let start = Instant::now();
        let r = self.0.refresh_images(policy, shape).await;
        self.record("refresh_images", start, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::provider::fixtures::instance_type as it;

    #[test]
    fn a_fleet_of_several_types_counts_the_most_gpus_and_the_highest_price() {
        let (a, b) = (
            it("g5.xlarge", 1, Some(1.006)),
            it("g5.12xlarge", 4, Some(5.672)),
        );
        let w = worst_of(&[&a, &b]);
        assert_eq!((w.gpus, w.hourly_price), (Some(4), Some(5.672)));
        let unpriced = it("g4dn.xlarge", 1, None);
        assert_eq!(worst_of(&[&a, &unpriced]).hourly_price, None);
    }

    #[test]
    fn a_unit_of_a_known_type_counts_as_that_type_and_others_as_the_worst_case() {
        let (a, b) = (
            it("g5.xlarge", 1, Some(1.006)),
            it("g5.12xlarge", 4, Some(5.672)),
        );
        let built = Built {
            provider: Box::new(Timed(Box::new(NoProvider))),
            node: NodeType {
                gpus: 1,
                cpu: 4.0,
                memory: 16e9,
                hourly_price: 1.006,
            },
            instance_types: vec![],
            units_are_nodes: true,
            worst: worst_of(&[&a, &b]),
            catalog: vec![a.clone(), b.clone()],
        };
        let unit = |ty: &str| crate::provider::fixtures::unit("u", ty);
        let known = built.cost_of(&unit("g5.xlarge"));
        assert_eq!((known.gpus, known.hourly_price), (Some(1), Some(1.006)));
        let unknown = built.cost_of(&unit(""));
        assert_eq!((unknown.gpus, unknown.hourly_price), (Some(4), Some(5.672)));
    }

    struct NoProvider;

    #[async_trait]
    impl CapacityProvider for NoProvider {
        fn name(&self) -> &'static str {
            "none"
        }
        async fn list(&self, _: &PolicyRef) -> Result<Vec<Unit>, ProviderError> {
            Ok(Vec::new())
        }
        async fn create(
            &self,
            _: &PolicyRef,
            _: &CreateRequest<'_>,
        ) -> Result<Vec<Unit>, ProviderError> {
            Ok(Vec::new())
        }
        async fn hold(&self, _: &PolicyRef, _: &[String], _: Millis) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn release(&self, _: &PolicyRef, _: &[String]) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn remove(&self, _: &PolicyRef, _: &[String]) -> Result<(), ProviderError> {
            Ok(())
        }
    }
}
