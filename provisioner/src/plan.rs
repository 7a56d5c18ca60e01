//! The planner: a pure function from (forecast, pod shape, capacity now and in flight, limits,
//! clock) to the capacity wanted. No Kubernetes or AWS calls and no wall clock, so the
//! controller, the simulator and the property tests run the same code.
//!
//! Capacity is counted in nodes of one type (the instance type the provider launches). The plan
//! asks for enough nodes that every replica the forecast wants within `lead_time` has a place,
//! plus `min_warm_gpus` idle GPUs, within the limits; it never removes a node that runs pods,
//! and removes an idle node only after it has gone unneeded for `scale_down_after`.

/// Milliseconds since the Unix epoch: the planner's only notion of time.
pub type Millis = i64;

/// Replicas the workload will want at a point in time (from the scaler's Demand service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub at: Millis,
    pub replicas: u32,
}

/// What one workload pod requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodShape {
    pub gpus: u32,
    /// CPU cores.
    pub cpu: f64,
    /// Memory in bytes.
    pub memory: f64,
}

/// The node type the provider launches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeType {
    pub gpus: u32,
    /// Allocatable CPU cores.
    pub cpu: f64,
    /// Allocatable memory in bytes.
    pub memory: f64,
    /// Price per hour of one node, in the policy's currency (0 when unknown).
    pub hourly_price: f64,
}

impl NodeType {
    /// How many pods of `shape` fit on one node: the tightest of GPUs, CPU and memory. Zero when
    /// the pod does not fit at all.
    pub fn pods_per_node(&self, shape: &PodShape) -> u32 {
        let by = |have: f64, need: f64| -> u32 {
            if need <= 0.0 {
                u32::MAX
            } else if have <= 0.0 {
                0
            } else {
                (have / need).floor().min(u32::MAX as f64) as u32
            }
        };
        let gpus = self.gpus.checked_div(shape.gpus).unwrap_or(u32::MAX);
        let n = gpus
            .min(by(self.cpu, shape.cpu))
            .min(by(self.memory, shape.memory));
        // A pod that requests nothing still takes a place: one per node keeps the arithmetic
        // finite without pretending a node holds infinitely many.
        if n == u32::MAX { 1 } else { n }
    }
}

/// A node Headroom created (a NodeClaim, a fleet instance, or a node its pause pods hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNode {
    pub id: String,
    /// Ready for pods (false while it boots).
    pub ready: bool,
    /// Pods other than Headroom's placeholders running on it.
    pub busy_pods: u32,
    /// The last time a plan counted this node as needed (its creation time at first).
    pub last_needed: Millis,
}

/// Hard limits of one policy. Capacity is never created beyond them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_nodes: u32,
    pub max_gpus: u32,
    /// Per hour; `None` for no cost limit.
    pub max_hourly_cost: Option<f64>,
}

/// Which limit held the plan below what the forecast wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Nodes,
    Gpus,
    HourlyCost,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Nodes => "maxNodes",
            Limit::Gpus => "maxGpus",
            Limit::HourlyCost => "maxHourlyCost",
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub now: Millis,
    /// Replicas wanted now.
    pub desired_now: u32,
    /// Replicas wanted at future points; points after `now + lead_time` are not yet acted on
    /// (capacity asked for now is ready by then).
    pub forecast: &'a [Want],
    pub lead_time: Millis,
    pub shape: PodShape,
    pub node: NodeType,
    /// Workload pods that have a place on capacity Headroom does not own (they need no node of
    /// ours).
    pub placed_elsewhere: u32,
    pub owned: &'a [OwnedNode],
    pub limits: Limits,
    pub min_warm_gpus: u32,
    pub scale_down_after: Millis,
}

/// What the controller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Replicas the capacity is planned for (the peak within the lead time).
    pub peak_replicas: u32,
    /// Nodes wanted before limits.
    pub wanted_nodes: u32,
    /// Nodes wanted after limits.
    pub planned_nodes: u32,
    /// Nodes to create now.
    pub create: u32,
    /// Owned nodes counted as needed: their `last_needed` becomes `now`.
    pub needed: Vec<String>,
    /// Owned nodes to remove now: idle, and unneeded for at least `scale_down_after`.
    pub remove: Vec<String>,
    /// The limit that held `planned_nodes` below `wanted_nodes`, if any.
    pub limited_by: Option<Limit>,
}

/// Why no plan can be made: the controller reports it as a condition and creates nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "a pod requesting {gpus} GPU(s), {cpu} CPU and {memory} bytes does not fit the node type ({node_gpus} GPU(s), {node_cpu} CPU, {node_memory} bytes)"
    )]
    PodDoesNotFit {
        gpus: u32,
        cpu: f64,
        memory: f64,
        node_gpus: u32,
        node_cpu: f64,
        node_memory: f64,
    },
}

/// What the controller knows beyond [`PlanInput`]; [`Extra::default`] is what [`plan`] assumes
/// (and the simulator, which calls it, needs nothing more).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// The demand behind the plan is incomplete (a trigger could not be read): every owned
    /// node is kept and counted as needed — nothing is released or removed — while capacity
    /// may still be added for what the readable triggers want. A missing metric never reads
    /// as low demand (as the HPA refuses to scale down on one).
    pub hold_all: bool,
}

/// The capacity wanted now. See the module documentation for the rules.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    plan_with(input, &Extra::default())
}

/// [`plan`], with what only the controller knows.
pub fn plan_with(input: &PlanInput<'_>, extra: &Extra) -> Result<Plan, PlanError> {
    let per_node = input.node.pods_per_node(&input.shape);
    if per_node == 0 {
        return Err(PlanError::PodDoesNotFit {
            gpus: input.shape.gpus,
            cpu: input.shape.cpu,
            memory: input.shape.memory,
            node_gpus: input.node.gpus,
            node_cpu: input.node.cpu,
            node_memory: input.node.memory,
        });
    }
    let horizon = input.now.saturating_add(input.lead_time.max(0));
    let peak = input
        .forecast
        .iter()
        .filter(|w| w.at <= horizon)
        .map(|w| w.replicas)
        .fold(input.desired_now, u32::max);

    let pods = u64::from(peak.saturating_sub(input.placed_elsewhere));
    let for_pods = pods.div_ceil(u64::from(per_node));
    let for_warm = if input.node.gpus == 0 {
        0
    } else {
        (pods * u64::from(input.shape.gpus) + u64::from(input.min_warm_gpus))
            .div_ceil(u64::from(input.node.gpus))
    };
    let wanted = for_pods.max(for_warm).min(u64::from(u32::MAX)) as u32;

    let (limit, limited_by) = node_limit(&input.limits, &input.node);
    let planned = wanted.min(limit);
    let limited_by = (planned < wanted).then_some(limited_by).flatten();

    let owned = input.owned.len() as u32;
    let create = planned.saturating_sub(owned);

    // Which owned nodes are needed: busy ones always (their pods need them), then ready ones,
    // then the oldest-needed, up to the plan.
    let mut order: Vec<&OwnedNode> = input.owned.iter().collect();
    order.sort_by(|a, b| {
        (b.busy_pods > 0)
            .cmp(&(a.busy_pods > 0))
            .then(b.ready.cmp(&a.ready))
            .then(b.last_needed.cmp(&a.last_needed))
            .then(a.id.cmp(&b.id))
    });
    let mut needed = Vec::new();
    let mut remove = Vec::new();
    for (i, node) in order.into_iter().enumerate() {
        if extra.hold_all || node.busy_pods > 0 || (i as u32) < planned {
            needed.push(node.id.clone());
        } else if input.now.saturating_sub(node.last_needed) >= input.scale_down_after {
            remove.push(node.id.clone());
        }
    }
    Ok(Plan {
        peak_replicas: peak,
        wanted_nodes: wanted,
        planned_nodes: planned,
        create,
        needed,
        remove,
        limited_by,
    })
}

/// The most nodes the limits allow, and the limit that binds.
fn node_limit(limits: &Limits, node: &NodeType) -> (u32, Option<Limit>) {
    let mut bound = (limits.max_nodes, Some(Limit::Nodes));
    if let Some(by_gpus) = limits.max_gpus.checked_div(node.gpus)
        && by_gpus < bound.0
    {
        bound = (by_gpus, Some(Limit::Gpus));
    }
    if let Some(cost) = limits.max_hourly_cost
        && node.hourly_price > 0.0
    {
        let by_cost = (cost.max(0.0) / node.hourly_price)
            .floor()
            .min(u32::MAX as f64) as u32;
        if by_cost < bound.0 {
            bound = (by_cost, Some(Limit::HourlyCost));
        }
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const G5: NodeType = NodeType {
        gpus: 1,
        cpu: 3.9,
        memory: 14.0e9,
        hourly_price: 1.006,
    };
    const POD: PodShape = PodShape {
        gpus: 1,
        cpu: 2.0,
        memory: 8.0e9,
    };
    const MIN: Millis = 60_000;

    fn input<'a>(forecast: &'a [Want], owned: &'a [OwnedNode]) -> PlanInput<'a> {
        PlanInput {
            now: 100 * MIN,
            desired_now: 0,
            forecast,
            lead_time: 3 * MIN,
            shape: POD,
            node: G5,
            placed_elsewhere: 0,
            owned,
            limits: Limits {
                max_nodes: 10,
                max_gpus: 10,
                max_hourly_cost: None,
            },
            min_warm_gpus: 0,
            scale_down_after: 10 * MIN,
        }
    }

    fn node(id: &str, busy: u32, last_needed: Millis) -> OwnedNode {
        OwnedNode {
            id: id.into(),
            ready: true,
            busy_pods: busy,
            last_needed,
        }
    }

    #[test]
    fn a_spike_within_the_lead_time_is_prewarmed_and_one_beyond_it_waits() {
        let forecast = [
            Want {
                at: 102 * MIN,
                replicas: 4,
            },
            Want {
                at: 110 * MIN,
                replicas: 9,
            },
        ];
        let p = plan(&input(&forecast, &[])).unwrap();
        assert_eq!((p.peak_replicas, p.create), (4, 4));
    }

    #[test]
    fn pods_placed_elsewhere_need_no_node_of_ours() {
        let forecast = [Want {
            at: 101 * MIN,
            replicas: 5,
        }];
        let p = plan(&PlanInput {
            placed_elsewhere: 3,
            ..input(&forecast, &[])
        })
        .unwrap();
        assert_eq!(p.create, 2);
    }

    #[test]
    fn several_pods_share_a_node_by_their_tightest_resource() {
        let big = NodeType {
            gpus: 4,
            cpu: 47.0,
            memory: 180e9,
            hourly_price: 5.672,
        };
        assert_eq!(big.pods_per_node(&POD), 4);
        let cpu_bound = PodShape { cpu: 20.0, ..POD };
        assert_eq!(big.pods_per_node(&cpu_bound), 2);
        let p = plan(&PlanInput {
            desired_now: 5,
            node: big,
            ..input(&[], &[])
        })
        .unwrap();
        assert_eq!(p.create, 2);
    }

    #[test]
    fn limits_hold_and_name_themselves() {
        let p = plan(&PlanInput {
            desired_now: 50,
            ..input(&[], &[])
        })
        .unwrap();
        assert_eq!((p.planned_nodes, p.limited_by), (10, Some(Limit::Nodes)));
        let p = plan(&PlanInput {
            desired_now: 50,
            limits: Limits {
                max_nodes: 10,
                max_gpus: 10,
                max_hourly_cost: Some(3.5),
            },
            ..input(&[], &[])
        })
        .unwrap();
        assert_eq!(
            (p.planned_nodes, p.limited_by),
            (3, Some(Limit::HourlyCost))
        );
    }

    #[test]
    fn min_warm_gpus_keep_idle_capacity() {
        let p = plan(&PlanInput {
            min_warm_gpus: 2,
            ..input(&[], &[])
        })
        .unwrap();
        assert_eq!(p.create, 2);
    }

    #[test]
    fn idle_nodes_go_only_after_scale_down_after_and_busy_ones_never() {
        let owned = [
            node("busy", 1, 0),
            node("fresh", 0, 95 * MIN),
            node("stale", 0, 80 * MIN),
        ];
        let p = plan(&input(&[], &owned)).unwrap();
        assert_eq!(p.needed, ["busy"]);
        assert_eq!(p.remove, ["stale"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn unreadable_demand_keeps_every_node_and_still_adds_for_what_is_read() {
        let owned = [
            node("busy", 1, 0),
            node("fresh", 0, 95 * MIN),
            node("stale", 0, 80 * MIN),
        ];
        let hold = Extra { hold_all: true };
        let p = plan_with(&input(&[], &owned), &hold).unwrap();
        assert_eq!(p.needed, ["busy", "fresh", "stale"]);
        assert!(p.remove.is_empty());
        assert_eq!(p.create, 0);
        let p = plan_with(
            &PlanInput {
                desired_now: 5,
                ..input(&[], &owned)
            },
            &hold,
        )
        .unwrap();
        assert_eq!((p.create, p.remove.len()), (2, 0));
    }

    #[test]
    fn a_pod_that_fits_no_node_is_an_error() {
        let e = plan(&PlanInput {
            shape: PodShape { gpus: 2, ..POD },
            ..input(&[], &[])
        })
        .unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn owned_nodes() -> impl Strategy<Value = Vec<OwnedNode>> {
        proptest::collection::vec((any::<bool>(), 0u32..3, 0i64..2_000_000), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (ready, busy_pods, last_needed))| OwnedNode {
                    id: format!("n{i}"),
                    ready,
                    busy_pods,
                    last_needed,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn never_creates_beyond_a_limit_never_removes_busy_or_recently_needed_capacity(
            desired_now in 0u32..200,
            forecast in proptest::collection::vec((0i64..2_000_000, 0u32..200), 0..8),
            lead_time in 0i64..600_000,
            pod_gpus in 0u32..3,
            node_gpus in 1u32..9,
            placed_elsewhere in 0u32..50,
            owned in owned_nodes(),
            max_nodes in 0u32..20,
            max_gpus in 0u32..64,
            max_cost in proptest::option::of(0.0f64..50.0),
            price in 0.0f64..10.0,
            min_warm_gpus in 0u32..8,
            scale_down_after in 0i64..1_000_000,
        ) {
            let now = 1_000_000;
            let forecast: Vec<Want> = forecast.into_iter().map(|(at, replicas)| Want { at, replicas }).collect();
            let node = NodeType { gpus: node_gpus, cpu: 8.0, memory: 32e9, hourly_price: price };
            let shape = PodShape { gpus: pod_gpus, cpu: 1.0, memory: 1e9 };
            let limits = Limits { max_nodes, max_gpus, max_hourly_cost: max_cost };
            let input = PlanInput {
                now, desired_now, forecast: &forecast, lead_time, shape, node, placed_elsewhere,
                owned: &owned, limits, min_warm_gpus, scale_down_after,
            };
            let Ok(p) = plan(&input) else {
                prop_assert!(pod_gpus > node_gpus);
                return Ok(());
            };
            let after = owned.len() as u32 + p.create - p.remove.len() as u32;
            if p.create > 0 {
                prop_assert!(after <= max_nodes);
                prop_assert!(after * node_gpus <= max_gpus);
                if let Some(cost) = max_cost {
                    prop_assert!(f64::from(after) * price <= cost + 1e-9);
                }
            }
            prop_assert!(p.planned_nodes <= p.wanted_nodes);
            for id in &p.remove {
                let n = owned.iter().find(|n| &n.id == id).unwrap();
                prop_assert_eq!(n.busy_pods, 0);
                prop_assert!(now - n.last_needed >= scale_down_after);
                prop_assert!(!p.needed.contains(id));
            }
            for n in owned.iter().filter(|n| n.busy_pods > 0) {
                prop_assert!(p.needed.contains(&n.id));
            }
            // The plan never wants fewer nodes than the replicas due within the lead time need
            // (unless a limit says so).
            if p.limited_by.is_none() {
                let peak = forecast.iter().filter(|w| w.at <= now + lead_time).map(|w| w.replicas).fold(desired_now, u32::max);
                let per_node = node.pods_per_node(&shape);
                let need = peak.saturating_sub(placed_elsewhere).div_ceil(per_node);
                prop_assert!(p.planned_nodes >= need);
                prop_assert!(owned.len() as u32 + p.create >= need);
            }
        }

        #[test]
        fn unreadable_demand_never_removes_or_releases_and_adds_within_limits(
            desired_now in 0u32..50,
            owned in owned_nodes(),
            max_nodes in 0u32..20,
            scale_down_after in 0i64..1_000_000,
        ) {
            let input = PlanInput {
                now: 1_000_000,
                desired_now,
                forecast: &[],
                lead_time: 0,
                shape: PodShape { gpus: 1, cpu: 1.0, memory: 1e9 },
                node: NodeType { gpus: 1, cpu: 8.0, memory: 32e9, hourly_price: 1.0 },
                placed_elsewhere: 0,
                owned: &owned,
                limits: Limits { max_nodes, max_gpus: 100, max_hourly_cost: None },
                min_warm_gpus: 0,
                scale_down_after,
            };
            let p = plan_with(&input, &Extra { hold_all: true }).unwrap();
            prop_assert!(p.remove.is_empty());
            prop_assert_eq!(p.needed.len(), owned.len());
            prop_assert_eq!(p.create, plan(&input).unwrap().create);
        }

        #[test]
        fn no_input_makes_the_planner_panic(
            now in any::<i64>(),
            desired_now in any::<u32>(),
            forecast in proptest::collection::vec((any::<i64>(), any::<u32>()), 0..4),
            lead_time in any::<i64>(),
            pod in (any::<u32>(), any::<f64>(), any::<f64>()),
            node in (any::<u32>(), any::<f64>(), any::<f64>(), any::<f64>()),
            placed_elsewhere in any::<u32>(),
            owned in proptest::collection::vec((any::<bool>(), any::<u32>(), any::<i64>()), 0..4),
            limits in (any::<u32>(), any::<u32>(), proptest::option::of(any::<f64>())),
            min_warm_gpus in any::<u32>(),
            scale_down_after in any::<i64>(),
        ) {
            let forecast: Vec<Want> = forecast.into_iter().map(|(at, replicas)| Want { at, replicas }).collect();
            let owned: Vec<OwnedNode> = owned
                .into_iter()
                .enumerate()
                .map(|(i, (ready, busy_pods, last_needed))| OwnedNode { id: format!("n{i}"), ready, busy_pods, last_needed })
                .collect();
            let _ = plan(&PlanInput {
                now,
                desired_now,
                forecast: &forecast,
                lead_time,
                shape: PodShape { gpus: pod.0, cpu: pod.1, memory: pod.2 },
                node: NodeType { gpus: node.0, cpu: node.1, memory: node.2, hourly_price: node.3 },
                placed_elsewhere,
                owned: &owned,
                limits: Limits { max_nodes: limits.0, max_gpus: limits.1, max_hourly_cost: limits.2 },
                min_warm_gpus,
                scale_down_after,
            });
        }

        #[test]
        fn a_node_needed_now_is_not_removed_before_scale_down_after(
            owned in owned_nodes(),
            scale_down_after in 1i64..1_000_000,
            step in 1i64..1_000_000,
        ) {
            // Plan once with demand for every node, then again with none, `step` later.
            let now = 3_000_000;
            let needed_now: Vec<OwnedNode> = owned.iter().map(|n| OwnedNode { last_needed: now, ..n.clone() }).collect();
            let base = PlanInput {
                now,
                desired_now: owned.len() as u32,
                forecast: &[],
                lead_time: 0,
                shape: PodShape { gpus: 1, cpu: 1.0, memory: 1e9 },
                node: NodeType { gpus: 1, cpu: 8.0, memory: 32e9, hourly_price: 1.0 },
                placed_elsewhere: 0,
                owned: &needed_now,
                limits: Limits { max_nodes: 100, max_gpus: 100, max_hourly_cost: None },
                min_warm_gpus: 0,
                scale_down_after,
            };
            let first = plan(&base).unwrap();
            prop_assert_eq!(first.needed.len(), owned.len());
            let later = plan(&PlanInput { now: now + step, desired_now: 0, ..base }).unwrap();
            if step < scale_down_after {
                prop_assert!(later.remove.is_empty());
            }
        }
    }
}
