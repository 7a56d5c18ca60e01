//! The provisioner in the simulator: `headroom_policy::plan::plan()` itself — the function
//! the controller calls — fed from the scaler's `Planner` (the Demand service's answer) and the
//! cluster model's nodes, acting on them as the Karpenter provider would (create NodeClaims,
//! hold them, delete idle ones after `scaleDownAfter`).
//!
//! What the simulator supplies for the plan's inputs, and why:
//! - `desired_now` and `forecast` are the Demand answer: `Planner::desired_now` and
//!   `Planner::forecast` over the lead time in 60 s steps, as `demand.rs` serves them;
//! - `placed_elsewhere`: workload pods bound to nodes Karpenter launched for them, or pending
//!   with such a node booting (nominated), so the provisioner does not buy a second node for a
//!   pod Karpenter is already handling;
//! - the node type is the cluster's GPU node at the on-demand price; one pod takes one GPU;
//! - the plan runs every `reconcile_seconds` (the controller's `--resync-interval`).

use headroom_policy::keepalive::{Basis, IdleGaps};
use headroom_policy::plan::{
    self, Limits, Millis, NodeType, OwnedNode, PlanError, PlanInput, PodShape, Want,
};
use headroom_policy::planner::Planner;

use crate::cluster::Cluster;

/// A PrewarmPolicy's knobs (the CRD's fields), as the simulator's flags give them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PrewarmSettings {
    /// `scaleDownAfter`, seconds (CRD default `10m`); with `keep_alive_auto`, the fallback.
    pub scale_down_after_seconds: f64,
    /// `scaleDownAfter: auto`: the learned keep-alive (`headroom_policy::keepalive`), with
    /// `scale_down_after_seconds` as its fallback, exactly as the controller runs it.
    pub keep_alive_auto: bool,
    /// `minWarmGpus` (CRD default 0).
    pub min_warm_gpus: u32,
    /// `limits.maxNodes`; `None`: as many as `maxReplicas` pods need.
    pub max_nodes: Option<u32>,
    /// `limits.maxGpus`; `None`: as many as `maxReplicas` pods need.
    pub max_gpus: Option<u32>,
    /// `limits.maxHourlyCost`, $/hour.
    pub max_hourly_cost: Option<f64>,
    /// How often the controller plans, seconds (`--resync-interval`, default 10 s).
    pub reconcile_seconds: f64,
    /// NodeClaims pre-pull the workload image at Ready (not shipped: off by default, so a
    /// prewarmed node's first pod pays the pull).
    pub prepull: bool,
}

impl Default for PrewarmSettings {
    fn default() -> Self {
        Self {
            scale_down_after_seconds: 600.0,
            keep_alive_auto: false,
            min_warm_gpus: 0,
            max_nodes: None,
            max_gpus: None,
            max_hourly_cost: None,
            reconcile_seconds: 10.0,
            prepull: false,
        }
    }
}

/// What the provisioner did over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PrewarmStats {
    pub plans: u64,
    pub nodes_created: u64,
    pub nodes_removed: u64,
    /// Plans a limit held below the forecast.
    pub plans_at_limit: u64,
    /// The most nodes the provisioner held at once.
    pub max_owned: u32,
    /// Plans that failed (a pod no node holds): nothing is created, as in the controller.
    pub plan_errors: u64,
    /// With `keep_alive_auto`: plans whose keep-alive was learned (the rest used the fallback),
    /// and plans that carried a pre-warm.
    pub keep_alive_learned: u64,
    pub prewarms: u64,
}

/// The provisioner's reconcile loop, on the virtual clock.
#[derive(Debug)]
pub struct Prewarm {
    settings: PrewarmSettings,
    lead_seconds: f64,
    max_replicas: u32,
    next_at: f64,
    /// The idle gaps `keep_alive_auto` learns from.
    gaps: IdleGaps,
    pub stats: PrewarmStats,
}

fn ms(seconds: f64) -> Millis {
    (seconds * 1000.0).round() as Millis
}

impl Prewarm {
    /// `lead_seconds` is the policy's `leadTime`; `max_replicas` the ScaledObject's, which
    /// bounds the default limits.
    pub fn new(settings: PrewarmSettings, lead_seconds: f64, max_replicas: u32) -> Self {
        Self {
            settings,
            lead_seconds,
            max_replicas,
            next_at: f64::NEG_INFINITY,
            gaps: IdleGaps::default(),
            stats: PrewarmStats::default(),
        }
    }

    /// Plans and acts if a reconcile is due at `now`.
    pub fn reconcile(&mut self, now: f64, planner: &Planner, cluster: &mut Cluster) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.settings.reconcile_seconds.max(1.0);
        if self.plan_and_act(now, planner, cluster).is_err() {
            self.stats.plan_errors += 1;
        }
    }

    fn plan_and_act(
        &mut self,
        now: f64,
        planner: &Planner,
        cluster: &mut Cluster,
    ) -> Result<(), PlanError> {
        let cfg = cluster.config();
        let gpus_per_node = cfg.gpus_per_node.max(1);
        let node = NodeType {
            gpus: gpus_per_node,
            // Pods request GPUs only here: the GPU count decides how many fit.
            cpu: 0.0,
            memory: 0.0,
            hourly_price: cfg.on_demand_price,
        };
        let shape = PodShape {
            gpus: 1,
            cpu: 0.0,
            memory: 0.0,
        };
        let default_nodes = self.max_replicas.div_ceil(gpus_per_node);
        let limits = Limits {
            max_nodes: self.settings.max_nodes.unwrap_or(default_nodes),
            max_gpus: self
                .settings
                .max_gpus
                .unwrap_or(default_nodes * gpus_per_node),
            max_hourly_cost: self.settings.max_hourly_cost,
        };
        let mut forecast: Vec<Want> = planner
            .forecast(now, self.lead_seconds, 60.0)
            .into_iter()
            .map(|(at, replicas)| Want {
                at: ms(at),
                replicas,
            })
            .collect();
        let owned: Vec<OwnedNode> = cluster
            .owned(now)
            .into_iter()
            .map(|n| OwnedNode {
                id: n.id.to_string(),
                ready: n.ready,
                busy_pods: n.busy_pods,
                last_needed: ms(n.last_needed),
            })
            .collect();
        let desired_now = planner.desired_now(now);
        let mut scale_down_after = ms(self.settings.scale_down_after_seconds);
        if self.settings.keep_alive_auto {
            let step = self.gaps.step(
                ms(now),
                Some(desired_now),
                scale_down_after,
                ms(self.lead_seconds),
            );
            scale_down_after = step.scale_down_after;
            self.stats.keep_alive_learned += u64::from(step.decision.basis == Basis::Learned);
            if let Some(w) = step.prewarm {
                self.stats.prewarms += 1;
                forecast.push(w);
            }
        }
        let p = plan::plan(&PlanInput {
            now: ms(now),
            desired_now,
            forecast: &forecast,
            lead_time: ms(self.lead_seconds),
            shape,
            node,
            placed_elsewhere: cluster.placed_elsewhere(now),
            owned: &owned,
            limits,
            min_warm_gpus: self.settings.min_warm_gpus,
            scale_down_after,
        })?;
        let ids = |v: &[String]| -> Vec<u64> { v.iter().filter_map(|s| s.parse().ok()).collect() };
        cluster.hold(&ids(&p.needed), now);
        self.stats.nodes_removed += u64::from(cluster.remove_owned(&ids(&p.remove)));
        cluster.create_owned(now, p.create, self.settings.prepull);
        self.stats.plans += 1;
        self.stats.nodes_created += u64::from(p.create);
        self.stats.plans_at_limit += u64::from(p.limited_by.is_some());
        self.stats.max_owned = self.stats.max_owned.max(cluster.owned(now).len() as u32);
        Ok(())
    }
}
