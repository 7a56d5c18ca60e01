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

/// Which limit held the plan below what the forecast wanted: one of the policy's, or a cap
/// across every policy (`--max-total-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Nodes,
    Gpus,
    HourlyCost,
    TotalNodes,
    TotalGpus,
    TotalHourlyCost,
}

impl Limit {
    /// Every limit, in the order of [`Limit::name`]s the metrics list.
    pub const ALL: [Limit; 6] = [
        Limit::Nodes,
        Limit::Gpus,
        Limit::HourlyCost,
        Limit::TotalNodes,
        Limit::TotalGpus,
        Limit::TotalHourlyCost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Limit::Nodes => "maxNodes",
            Limit::Gpus => "maxGpus",
            Limit::HourlyCost => "maxHourlyCost",
            Limit::TotalNodes => "maxTotalNodes",
            Limit::TotalGpus => "maxTotalGpus",
            Limit::TotalHourlyCost => "maxTotalHourlyCost",
        }
    }

    /// A cap across every policy, not one policy's limit.
    pub fn is_cluster_wide(self) -> bool {
        matches!(
            self,
            Limit::TotalNodes | Limit::TotalGpus | Limit::TotalHourlyCost
        )
    }
}

/// What one unit counts against the limits: its instance type's GPUs and hourly price when the
/// type is known, else the worst case (most GPUs, highest price) of the types it may be.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UnitCost {
    /// `None`: not even a worst case is known — such a unit may hold every GPU a limit leaves,
    /// so while one exists nothing more is created under a GPU limit.
    pub gpus: Option<u32>,
    /// `None`: unknown — a cost limit cannot be held then, so nothing is created under one.
    /// `Some(0.0)`: free (a placeholder pod; the planner's own default for an unpriced type).
    pub hourly_price: Option<f64>,
}

/// Capacity held, as the limits count it: ready, in-flight and deleting units alike.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub nodes: u64,
    pub gpus: u64,
    /// Some unit's GPUs are unknown.
    pub unknown_gpus: bool,
    pub hourly_cost: f64,
    /// Some unit's price is unknown.
    pub unknown_cost: bool,
}

impl Usage {
    /// More than any cap allows: what an unknown share counts as.
    pub const FULL: Usage = Usage {
        nodes: u64::MAX,
        gpus: u64::MAX,
        unknown_gpus: true,
        hourly_cost: f64::INFINITY,
        unknown_cost: true,
    };

    /// Adds `n` units costing `cost` each.
    pub fn add(&mut self, cost: UnitCost, n: u64) {
        if n == 0 {
            return;
        }
        self.nodes = self.nodes.saturating_add(n);
        match cost.gpus {
            Some(g) => self.gpus = self.gpus.saturating_add(u64::from(g).saturating_mul(n)),
            None => self.unknown_gpus = true,
        }
        match cost.hourly_price {
            Some(p) => self.hourly_cost += p.max(0.0) * n as f64,
            None => self.unknown_cost = true,
        }
    }

    /// The sum of two usages.
    pub fn plus(mut self, other: Usage) -> Usage {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.gpus = self.gpus.saturating_add(other.gpus);
        self.unknown_gpus |= other.unknown_gpus;
        self.hourly_cost += other.hourly_cost;
        self.unknown_cost |= other.unknown_cost;
        self
    }
}

/// Caps across every policy (the provisioner's `--max-total-*` flags); `None`: no cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Caps {
    pub max_nodes: Option<u32>,
    pub max_gpus: Option<u32>,
    pub max_hourly_cost: Option<f64>,
}

impl Caps {
    pub fn is_empty(&self) -> bool {
        self.max_nodes.is_none() && self.max_gpus.is_none() && self.max_hourly_cost.is_none()
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
#[derive(Debug, Clone, PartialEq)]
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
    /// What the policy holds once `create` is done (owned, deleting and created units): its
    /// share of the caps across policies.
    pub usage: Usage,
}

/// Why no plan can be made: the controller reports it as a condition and creates nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    PodDoesNotFit {
        gpus: u32,
        cpu: f64,
        memory: f64,
        node_gpus: u32,
        node_cpu: f64,
        node_memory: f64,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::PodDoesNotFit {
                gpus,
                cpu,
                memory,
                node_gpus,
                node_cpu,
                node_memory,
            } => write!(
                f,
                "a pod requesting {gpus} GPU(s), {cpu} CPU and {memory} bytes does not fit the node type ({node_gpus} GPU(s), {node_cpu} CPU, {node_memory} bytes)"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// What the controller knows beyond [`PlanInput`]; [`Extra::default`] is what [`plan`] assumes
/// (and the simulator, which calls it, needs nothing more).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// The demand behind the plan is incomplete (a trigger could not be read): every owned
    /// node is kept and counted as needed — nothing is released or removed — while capacity
    /// may still be added for what the readable triggers want. A missing metric never reads
    /// as low demand (as the HPA refuses to scale down on one).
    pub hold_all: bool,
    /// What each of `PlanInput::owned` counts against the limits, in the same order; a node
    /// without an entry counts as [`Extra::new_unit`].
    pub owned_costs: Vec<UnitCost>,
    /// Units being deleted: no longer capacity for pods, but held (and paid for) until gone,
    /// so they count against every limit.
    pub deleting: Vec<UnitCost>,
    /// What a unit created now counts (the worst case of the types it may be); `None`: the
    /// GPUs and price of `PlanInput::node` (an unpriced node counting as free).
    pub new_unit: Option<UnitCost>,
    /// Caps across every policy, and what the other policies hold.
    pub cluster: Caps,
    pub others: Usage,
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

    // Which owned nodes to keep follows the policy's limits in nodes of the plan's type; what
    // may be created is counted unit by unit (below).
    let (limit, static_limit) = node_limit(&input.limits, &input.node);
    let planned = wanted.min(limit);

    // Hard limits: everything held counts — ready, in flight, unneeded and deleting units, by
    // their own type where known and by the worst case otherwise — and so does what the other
    // policies hold against the caps across policies.
    let node_cost = UnitCost {
        gpus: Some(input.node.gpus),
        hourly_price: Some(input.node.hourly_price.max(0.0)),
    };
    let new_unit = extra.new_unit.unwrap_or(node_cost);
    let mut usage = Usage::default();
    for i in 0..input.owned.len() {
        usage.add(extra.owned_costs.get(i).copied().unwrap_or(new_unit), 1);
    }
    for cost in &extra.deleting {
        usage.add(*cost, 1);
    }
    let policy_limits = Caps {
        max_nodes: Some(input.limits.max_nodes),
        max_gpus: Some(input.limits.max_gpus),
        max_hourly_cost: input.limits.max_hourly_cost,
    };
    let by_policy = room(
        &policy_limits,
        &usage,
        new_unit,
        input.node.gpus,
        [Limit::Nodes, Limit::Gpus, Limit::HourlyCost],
    );
    let by_cluster = room(
        &extra.cluster,
        &usage.plus(extra.others),
        new_unit,
        input.node.gpus,
        [Limit::TotalNodes, Limit::TotalGpus, Limit::TotalHourlyCost],
    );
    let (fits, hard_limit) = if by_cluster.0 < by_policy.0 {
        by_cluster
    } else {
        by_policy
    };

    let owned = u32::try_from(input.owned.len()).unwrap_or(u32::MAX);
    let want_create = planned.saturating_sub(owned);
    let create = u64::from(want_create).min(fits) as u32;
    usage.add(new_unit, u64::from(create));
    let planned = planned.min(owned.saturating_add(create));
    let limited_by = if planned >= wanted {
        None
    } else if create < want_create {
        hard_limit
    } else {
        static_limit
    };

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
        usage,
    })
}

/// How many more units costing `unit` fit beside `used` under `limits`, and the limit that
/// binds first (`names`: nodes, GPUs, cost). A unit of unknown GPUs holds at least `min_gpus`.
fn room(
    limits: &Caps,
    used: &Usage,
    unit: UnitCost,
    min_gpus: u32,
    names: [Limit; 3],
) -> (u64, Option<Limit>) {
    let mut best = (u64::MAX, None);
    let mut bind = |k: u64, limit: Limit| {
        if k < best.0 {
            best = (k, Some(limit));
        }
    };
    if let Some(max) = limits.max_nodes {
        bind(u64::from(max).saturating_sub(used.nodes), names[0]);
    }
    if let Some(max) = limits.max_gpus {
        let left = u64::from(max).saturating_sub(used.gpus);
        let k = match unit.gpus {
            Some(0) => u64::MAX,
            // A unit of unknown size may hold all that is left.
            _ if used.unknown_gpus => 0,
            Some(g) => left / u64::from(g),
            None => u64::from(left >= u64::from(min_gpus.max(1))),
        };
        bind(k, names[1]);
    }
    if let Some(max) = limits.max_hourly_cost {
        let max = max.max(0.0);
        let k = match unit.hourly_price {
            Some(p) if p <= 0.0 => u64::MAX,
            _ if used.unknown_cost => 0,
            None => 0,
            Some(p) if !p.is_finite() => 0,
            Some(p) => {
                let left = max - used.hourly_cost;
                let mut k = if left > 0.0 {
                    (left / p).floor().min(u32::MAX as f64) as u64
                } else {
                    0
                };
                // Division rounds; the sum is what must hold.
                while k > 0 && used.hourly_cost + k as f64 * p > max {
                    k -= 1;
                }
                k
            }
        };
        bind(k, names[2]);
    }
    best
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
        let hold = Extra {
            hold_all: true,
            ..Extra::default()
        };
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

    fn cost(gpus: Option<u32>, price: Option<f64>) -> UnitCost {
        UnitCost {
            gpus,
            hourly_price: price,
        }
    }

    #[test]
    fn deleting_units_count_against_every_limit() {
        let owned = [node("a", 1, 100 * MIN)];
        let extra = Extra {
            deleting: vec![cost(Some(1), Some(1.0)); 2],
            ..Extra::default()
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 5,
                limits: Limits {
                    max_nodes: 3,
                    max_gpus: 10,
                    max_hourly_cost: None,
                },
                ..input(&[], &owned)
            },
            &extra,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (0, Some(Limit::Nodes)));
        assert_eq!(p.usage.nodes, 3);
    }

    #[test]
    fn several_allowed_types_count_the_worst_case_of_what_may_launch() {
        // Plans count pods in g5.xlarge nodes; the fleet may launch a 4-GPU type instead.
        let extra = Extra {
            new_unit: Some(cost(Some(4), Some(5.672))),
            ..Extra::default()
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 8,
                limits: Limits {
                    max_nodes: 10,
                    max_gpus: 8,
                    max_hourly_cost: None,
                },
                ..input(&[], &[])
            },
            &extra,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (2, Some(Limit::Gpus)));
        let p = plan_with(
            &PlanInput {
                desired_now: 8,
                limits: Limits {
                    max_nodes: 10,
                    max_gpus: 100,
                    max_hourly_cost: Some(12.0),
                },
                ..input(&[], &[])
            },
            &extra,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (2, Some(Limit::HourlyCost)));
        // A unit whose type is known counts as that type.
        let owned = [node("a", 0, 100 * MIN)];
        let extra = Extra {
            owned_costs: vec![cost(Some(1), Some(1.0))],
            ..extra
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 8,
                limits: Limits {
                    max_nodes: 10,
                    max_gpus: 9,
                    max_hourly_cost: None,
                },
                ..input(&[], &owned)
            },
            &extra,
        )
        .unwrap();
        assert_eq!(p.create, 2);
        assert_eq!(p.usage.gpus, 9);
    }

    #[test]
    fn units_of_unknown_size_are_created_one_at_a_time_under_a_gpu_limit() {
        let unknown = Extra {
            new_unit: Some(cost(None, Some(0.0))),
            ..Extra::default()
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 4,
                ..input(&[], &[])
            },
            &unknown,
        )
        .unwrap();
        assert_eq!(p.create, 1);
        let owned = [node("a", 0, 100 * MIN)];
        let p = plan_with(
            &PlanInput {
                desired_now: 4,
                ..input(&[], &owned)
            },
            &unknown,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (0, Some(Limit::Gpus)));
        // Once the unit's GPUs are known (Karpenter launched it), the rest follows.
        let known = Extra {
            owned_costs: vec![cost(Some(1), Some(0.0))],
            ..unknown
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 4,
                ..input(&[], &owned)
            },
            &known,
        )
        .unwrap();
        assert_eq!(p.create, 1);
    }

    #[test]
    fn a_cost_limit_with_unknown_prices_creates_nothing() {
        let extra = Extra {
            new_unit: Some(cost(Some(1), None)),
            ..Extra::default()
        };
        let limits = Limits {
            max_nodes: 10,
            max_gpus: 10,
            max_hourly_cost: Some(100.0),
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 4,
                limits,
                ..input(&[], &[])
            },
            &extra,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (0, Some(Limit::HourlyCost)));
        let p = plan_with(
            &PlanInput {
                desired_now: 4,
                ..input(&[], &[])
            },
            &extra,
        )
        .unwrap();
        assert_eq!(p.create, 4, "no cost limit: unknown prices do not matter");
    }

    #[test]
    fn caps_across_policies_count_what_the_others_hold() {
        let extra = Extra {
            cluster: Caps {
                max_nodes: Some(10),
                max_gpus: Some(100),
                max_hourly_cost: None,
            },
            others: Usage {
                nodes: 9,
                gpus: 9,
                ..Usage::default()
            },
            ..Extra::default()
        };
        let p = plan_with(
            &PlanInput {
                desired_now: 5,
                ..input(&[], &[])
            },
            &extra,
        )
        .unwrap();
        assert_eq!((p.create, p.limited_by), (1, Some(Limit::TotalNodes)));
        assert!(Limit::TotalNodes.is_cluster_wide());
        assert_eq!(p.usage.nodes, 1);
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

    fn unit_cost() -> impl Strategy<Value = UnitCost> {
        (
            proptest::option::of(0u32..9),
            proptest::option::of(prop_oneof![Just(0.0), 0.01f64..10.0]),
        )
            .prop_map(|(gpus, hourly_price)| UnitCost { gpus, hourly_price })
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
        fn limits_and_caps_hold_counting_deleting_units_and_the_worst_case(
            desired_now in 0u32..100,
            owned in owned_nodes(),
            owned_costs in proptest::collection::vec(unit_cost(), 0..12),
            deleting in proptest::collection::vec(unit_cost(), 0..6),
            new_unit in proptest::option::of(unit_cost()),
            node_gpus in 1u32..9,
            max_nodes in 0u32..20,
            max_gpus in 0u32..64,
            max_cost in proptest::option::of(0.0f64..50.0),
            caps in (proptest::option::of(0u32..30), proptest::option::of(0u32..80), proptest::option::of(0.0f64..80.0)),
            others in (0u64..20, 0u64..40, 0.0f64..40.0, any::<bool>(), any::<bool>()),
            hold_all in any::<bool>(),
        ) {
            let limits = Limits { max_nodes, max_gpus, max_hourly_cost: max_cost };
            let cluster = Caps { max_nodes: caps.0, max_gpus: caps.1, max_hourly_cost: caps.2 };
            let others = Usage { nodes: others.0, gpus: others.1, hourly_cost: others.2, unknown_gpus: others.3, unknown_cost: others.4 };
            let input = PlanInput {
                now: 1_000_000,
                desired_now,
                forecast: &[],
                lead_time: 0,
                shape: PodShape { gpus: 1, cpu: 1.0, memory: 1e9 },
                node: NodeType { gpus: node_gpus, cpu: 8.0, memory: 32e9, hourly_price: 1.0 },
                placed_elsewhere: 0,
                owned: &owned,
                limits,
                min_warm_gpus: 0,
                scale_down_after: 0,
            };
            let extra = Extra { hold_all, owned_costs: owned_costs.clone(), deleting: deleting.clone(), new_unit, cluster, others };
            let p = plan_with(&input, &extra).unwrap();
            let new_unit = new_unit.unwrap_or(UnitCost { gpus: Some(node_gpus), hourly_price: Some(1.0) });
            // What is held after the plan: every owned unit (removed ones are deleting, and
            // still held), every deleting one, and what is created.
            let mut held: Vec<UnitCost> = (0..owned.len()).map(|i| owned_costs.get(i).copied().unwrap_or(new_unit)).collect();
            held.extend(deleting.iter().copied());
            let before = held.clone();
            held.extend(std::iter::repeat_n(new_unit, p.create as usize));
            let check = |units: &[UnitCost], others: Usage, nodes: Option<u32>, gpus: Option<u32>, cost: Option<f64>| -> Result<(), TestCaseError> {
                if let Some(max) = nodes {
                    prop_assert!(units.len() as u64 + others.nodes <= u64::from(max));
                }
                if let Some(max) = gpus {
                    let known: Option<u64> = units.iter().map(|u| u.gpus.map(u64::from)).sum();
                    let unknown_new = new_unit.gpus.is_none();
                    if unknown_new {
                        // Created one at a time, and only while no other unit's size is unknown.
                        prop_assert!(p.create <= 1);
                        prop_assert!(before.iter().all(|u| u.gpus.is_some()) && !others.unknown_gpus);
                    } else if new_unit.gpus != Some(0) {
                        prop_assert!(!others.unknown_gpus && before.iter().all(|u| u.gpus.is_some()));
                        prop_assert!(known.unwrap_or(u64::MAX) + others.gpus <= u64::from(max));
                    }
                }
                if let Some(max) = cost {
                    if new_unit.hourly_price.is_some_and(|p| p > 0.0) {
                        let known: Option<f64> = units.iter().map(|u| u.hourly_price.map(|p| p.max(0.0))).sum();
                        prop_assert!(!others.unknown_cost);
                        prop_assert!(known.unwrap_or(f64::INFINITY) + others.hourly_cost <= max.max(0.0) + 1e-9);
                    } else {
                        prop_assert!(new_unit.hourly_price.is_some());
                    }
                }
                Ok(())
            };
            if p.create > 0 {
                check(&held, Usage::default(), Some(max_nodes), Some(max_gpus), max_cost)?;
                check(&held, others, cluster.max_nodes, cluster.max_gpus, cluster.max_hourly_cost)?;
            }
            prop_assert_eq!(p.usage.nodes, held.len() as u64);
            prop_assert!(p.planned_nodes <= p.wanted_nodes);
            if hold_all {
                prop_assert!(p.remove.is_empty());
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
            let p = plan_with(&input, &Extra { hold_all: true, ..Extra::default() }).unwrap();
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
