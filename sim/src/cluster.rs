//! The cluster model: KEDA, the HPA, pods that need GPU nodes, nodes that take minutes to boot,
//! per-node image state (a node holds the workload's image only once a real pod or a pre-pull
//! on it pulled it), consolidation, prices.

use std::collections::VecDeque;

use crate::rng::Rng;
use crate::workload::{ArrivalModel, DEFAULT_SERVICE_CV, ServiceSpread};

/// The cluster model's knobs (all have flags in the binary).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterConfig {
    /// GPU node boot to Ready, uniform range in seconds (provisioning.md: 80-120 s).
    pub boot_seconds: (f64, f64),
    /// The workload image's pull on a node that lacks it, uniform range in seconds
    /// (provisioning.md: a 15-20 GB CUDA image pulls in 4-6 minutes). Paid when the first real
    /// pod lands on the node (or at Ready with `prepull`), not at launch: a node brought up for
    /// pause pods or by the provisioner holds no image of the workload's.
    pub pull_seconds: (f64, f64),
    /// A pre-pull DaemonSet on the GPU NodePool (kube-fledged's pattern, provisioning.md):
    /// every node starts pulling the workload image as soon as it is Ready, so warm capacity is
    /// image-warm. Off by default: nothing in Headroom or the baselines ships one.
    pub prepull: bool,
    /// Container start and model load on a node that has the image, seconds.
    pub pod_start_seconds: f64,
    /// Karpenter's provisioning batch window: after the first unschedulable pod it waits
    /// until no new one has appeared for `batch_idle_seconds` (`BATCH_IDLE_DURATION`, 1 s), or
    /// `batch_max_seconds` (`BATCH_MAX_DURATION`, 10 s) have passed, then launches for all.
    pub batch_idle_seconds: f64,
    pub batch_max_seconds: f64,
    pub gpus_per_node: u32,
    /// An empty node Karpenter launched is removed after this long (the NodePool's
    /// `consolidateAfter`, plus its reaction time); a policy may override it per run
    /// (keda-tuned tunes it).
    pub consolidate_after_seconds: f64,
    /// $ per node-hour.
    pub on_demand_price: f64,
    pub spot_price: f64,
    /// Share of nodes launched as spot (interruptions are not modelled).
    pub spot_share: f64,
    /// The workload's side of a run, here so that one seed drives all of it: where a bin's
    /// jobs fall within it, and how service times spread around each bin's mean.
    pub arrivals: ArrivalModel,
    pub service_spread: ServiceSpread,
    pub seed: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            boot_seconds: (80.0, 120.0),
            pull_seconds: (240.0, 360.0),
            prepull: false,
            pod_start_seconds: 20.0,
            batch_idle_seconds: 1.0,
            batch_max_seconds: 10.0,
            gpus_per_node: 1,
            consolidate_after_seconds: 30.0,
            // Illustrative single-GPU (A10G-class) prices, $/hour.
            on_demand_price: 1.006,
            spot_price: 0.40,
            spot_share: 0.0,
            arrivals: ArrivalModel::Poisson,
            service_spread: ServiceSpread::Lognormal {
                cv: DEFAULT_SERVICE_CV,
            },
            seed: 1,
        }
    }
}

impl ClusterConfig {
    /// The longest time from a pod's creation to Ready on a new node.
    pub fn worst_pod_latency(&self) -> f64 {
        self.batch_max_seconds
            + self.boot_seconds.1
            + self.pull_seconds.1
            + self.pod_start_seconds
            + 1.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PodState {
    Pending,
    Starting { ready_at: f64 },
    Ready,
}

#[derive(Debug, Clone, Copy)]
struct Pod {
    state: PodState,
    node: Option<usize>,
}

#[derive(Debug, Clone)]
struct Node {
    /// Stable across removals (indices are not).
    id: u64,
    /// Ready (booted, kubelet registered); the image is separate.
    ready_at: f64,
    /// This node's pull of the workload image, seconds (drawn at launch).
    pull: f64,
    /// When the node holds the workload image: `None` until a real pod (or the pre-pull) on it
    /// starts pulling; the kubelet keeps it from then on.
    image_at: Option<f64>,
    used: u32,
    pause: u32,
    spot: bool,
    empty_since: Option<f64>,
    /// Created by the provisioner (a Headroom NodeClaim): Karpenter never consolidates it (it
    /// is held with `karpenter.sh/do-not-disrupt`); only the provisioner removes it.
    owned: bool,
    /// Owned nodes: the last time a plan counted the node as needed, seconds.
    last_needed: f64,
}

/// What the provisioner sees of one node it owns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwnedView {
    pub id: u64,
    pub ready: bool,
    /// Workload pods bound to it (starting or running).
    pub busy_pods: u32,
    pub last_needed: f64,
}

/// Pods and nodes, advanced one second at a time.
#[derive(Debug)]
pub struct Cluster {
    cfg: ClusterConfig,
    rng: Rng,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    /// Placeholder (pause) pods wanted, and how many are bound.
    pause_wanted: u32,
    next_id: u64,
    /// Karpenter's open batch: when it opened, and when the shortfall last grew.
    pending_since: Option<f64>,
    last_growth: f64,
    last_short: u32,
    pub node_seconds: f64,
    pub cost: f64,
    pub idle_gpu_seconds: f64,
    price_per_second: f64,
}

impl Cluster {
    pub fn new(cfg: ClusterConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Self {
            cfg,
            rng,
            pods: Vec::new(),
            nodes: Vec::new(),
            pause_wanted: 0,
            next_id: 0,
            pending_since: None,
            last_growth: 0.0,
            last_short: 0,
            node_seconds: 0.0,
            cost: 0.0,
            idle_gpu_seconds: 0.0,
            price_per_second: 0.0,
        }
    }

    pub fn replicas(&self) -> u32 {
        self.pods.len() as u32
    }

    pub fn ready_pods(&self) -> u32 {
        self.pods
            .iter()
            .filter(|p| p.state == PodState::Ready)
            .count() as u32
    }

    pub fn nodes(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Sets the pause-pod warm pool size.
    pub fn set_pause_pods(&mut self, n: u32) {
        self.pause_wanted = n;
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The nodes the provisioner created and still holds.
    pub fn owned(&self, now: f64) -> Vec<OwnedView> {
        self.nodes
            .iter()
            .filter(|n| n.owned)
            .map(|n| OwnedView {
                id: n.id,
                ready: n.ready_at <= now,
                busy_pods: n.used,
                last_needed: n.last_needed,
            })
            .collect()
    }

    /// Workload pods that need no node of the provisioner's: bound to a node Karpenter launched
    /// for them, or pending with such a node booting for them (Karpenter has nominated them).
    pub fn placed_elsewhere(&self, now: f64) -> u32 {
        let g = self.cfg.gpus_per_node;
        let bound = self
            .pods
            .iter()
            .filter(|p| p.node.is_some_and(|k| !self.nodes[k].owned))
            .count() as u32;
        let pending = self
            .pods
            .iter()
            .filter(|p| p.state == PodState::Pending)
            .count() as u32;
        let booting_free: u32 = self
            .nodes
            .iter()
            .filter(|n| !n.owned && n.ready_at > now)
            .map(|n| g.saturating_sub(n.used + n.pause))
            .sum();
        bound + pending.min(booting_free)
    }

    /// The provisioner creates `n` nodes now (NodeClaims: they boot like any other node and
    /// hold no image of the workload's unless `prepull`, or the cluster's pre-pull DaemonSet,
    /// pulls it at Ready).
    pub fn create_owned(&mut self, now: f64, n: u32, prepull: bool) {
        for _ in 0..n {
            self.launch(now, prepull || self.cfg.prepull);
            if let Some(node) = self.nodes.last_mut() {
                node.owned = true;
                node.last_needed = now;
            }
        }
    }

    /// The provisioner's `hold`: these owned nodes are needed at `now`.
    pub fn hold(&mut self, ids: &[u64], now: f64) {
        for n in self
            .nodes
            .iter_mut()
            .filter(|n| n.owned && ids.contains(&n.id))
        {
            n.last_needed = now;
        }
    }

    /// The provisioner's `remove`: deletes the named owned nodes that are idle (a pod that
    /// landed since the plan keeps its node). Returns how many went.
    pub fn remove_owned(&mut self, ids: &[u64]) -> u32 {
        let mut removed = 0;
        for id in ids {
            if let Some(k) = self
                .nodes
                .iter()
                .position(|n| n.owned && n.id == *id && n.used == 0)
            {
                self.remove_node(k);
                removed += 1;
            }
        }
        removed
    }

    /// Scales the workload to `n` pods: new pods start Pending; removal takes pending pods
    /// first, then starting, then ready ones (newest first).
    pub fn scale_to(&mut self, n: u32) {
        let n = n as usize;
        while self.pods.len() < n {
            self.pods.push(Pod {
                state: PodState::Pending,
                node: None,
            });
        }
        while self.pods.len() > n {
            let rank = |p: &Pod| match p.state {
                PodState::Pending => 0,
                PodState::Starting { .. } => 1,
                PodState::Ready => 2,
            };
            let Some(i) = (0..self.pods.len())
                .rev()
                .min_by_key(|i| rank(&self.pods[*i]))
            else {
                break;
            };
            let p = self.pods.swap_remove(i);
            if let Some(node) = p.node {
                self.nodes[node].used -= 1;
            }
        }
    }

    /// Nodes currently holding the workload image (for tests and reports).
    pub fn image_warm_nodes(&self, now: f64) -> u32 {
        self.nodes
            .iter()
            .filter(|n| n.image_at.is_some_and(|t| t <= now))
            .count() as u32
    }

    /// Launches one node; `prepull`: it pulls the workload image as soon as it is Ready.
    fn launch(&mut self, now: f64, prepull: bool) {
        let boot = self
            .rng
            .uniform(self.cfg.boot_seconds.0, self.cfg.boot_seconds.1);
        let pull = self
            .rng
            .uniform(self.cfg.pull_seconds.0, self.cfg.pull_seconds.1);
        let spot = self.rng.f64() < self.cfg.spot_share;
        self.next_id += 1;
        let ready_at = now + boot;
        self.nodes.push(Node {
            id: self.next_id,
            ready_at,
            pull,
            image_at: prepull.then_some(ready_at + pull),
            used: 0,
            pause: 0,
            spot,
            empty_since: None,
            owned: false,
            last_needed: now,
        });
    }

    /// One second: bind pods, launch and remove nodes, start pods, account.
    /// `busy_gpus` is how many GPUs did work this second (for idle accounting).
    pub fn step(&mut self, now: f64, busy_gpus: f64) {
        let g = self.cfg.gpus_per_node;
        let busy_pods = self
            .pods
            .iter()
            .any(|p| !matches!(p.state, PodState::Ready));
        if busy_pods || self.pause_wanted > 0 {
            self.bind(now);
        }
        self.karpenter_and_consolidate(now);
        // Accounting.
        let gpus = f64::from(self.nodes.len() as u32 * g);
        self.node_seconds += gpus;
        self.cost += self.price_per_second;
        self.idle_gpu_seconds += (gpus - busy_gpus.min(gpus)).max(0.0);
    }

    fn bind(&mut self, now: f64) {
        let g = self.cfg.gpus_per_node;
        // Pods on ready nodes start.
        for p in &mut self.pods {
            if let PodState::Starting { ready_at } = p.state
                && now >= ready_at
            {
                p.state = PodState::Ready;
            }
        }
        // Bind pending pods to ready nodes with a free GPU, preempting pause pods only where
        // nothing is free (the scheduler's order); among those, nodes that hold the image first
        // (the scheduler's ImageLocality score), then nodes already pulling it.
        let start = self.cfg.pod_start_seconds;
        for i in 0..self.pods.len() {
            if self.pods[i].state != PodState::Pending {
                continue;
            }
            let image_rank = |n: &Node| match n.image_at {
                Some(t) if t <= now => 0,
                Some(_) => 1,
                None => 2,
            };
            let pick = |fits: &dyn Fn(&Node) -> bool| {
                self.nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.ready_at <= now && fits(n))
                    .min_by_key(|(_, n)| image_rank(n))
                    .map(|(k, _)| k)
            };
            let free = pick(&|n: &Node| n.used + n.pause < g)
                .or_else(|| pick(&|n: &Node| n.used < g && n.pause > 0));
            if let Some(k) = free {
                let n = &mut self.nodes[k];
                if n.used + n.pause >= g {
                    n.pause -= 1; // preempted: the pause pod goes pending
                }
                n.used += 1;
                n.empty_since = None;
                // The first real pod on a node without the image pulls it; later ones wait
                // for that pull, then start.
                let pull = n.pull;
                let image_at = *n.image_at.get_or_insert(now + pull);
                self.pods[i] = Pod {
                    state: PodState::Starting {
                        ready_at: image_at.max(now) + start,
                    },
                    node: Some(k),
                };
            }
        }
        // Pause pods fill what is left.
        let mut bound_pause: u32 = self.nodes.iter().map(|n| n.pause).sum();
        while bound_pause > self.pause_wanted {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.pause > 0) {
                n.pause -= 1;
            }
            bound_pause -= 1;
        }
        while bound_pause < self.pause_wanted {
            let Some(n) = self
                .nodes
                .iter_mut()
                .find(|n| n.ready_at <= now && n.used + n.pause < g)
            else {
                break;
            };
            n.pause += 1;
            n.empty_since = None;
            bound_pause += 1;
        }
    }

    fn karpenter_and_consolidate(&mut self, now: f64) {
        let g = self.cfg.gpus_per_node;
        let bound_pause: u32 = self.nodes.iter().map(|n| n.pause).sum();
        // Karpenter: launch for pods that fit nowhere, counting capacity still booting.
        let pending = self
            .pods
            .iter()
            .filter(|p| p.state == PodState::Pending)
            .count() as u32
            + self.pause_wanted.saturating_sub(bound_pause);
        let booting_free: u32 = self
            .nodes
            .iter()
            .filter(|n| n.ready_at > now)
            .map(|n| g - n.used - n.pause)
            .sum();
        let short = pending.saturating_sub(booting_free);
        if short > 0 {
            let since = *self.pending_since.get_or_insert(now);
            if short > self.last_short || now == since {
                self.last_growth = now;
            }
            self.last_short = short;
            let idle = now - self.last_growth >= self.cfg.batch_idle_seconds;
            let full = now - since >= self.cfg.batch_max_seconds;
            if idle || full {
                for _ in 0..short.div_ceil(g) {
                    self.launch(now, self.cfg.prepull);
                }
                self.pending_since = None;
                self.last_short = 0;
            }
        } else {
            self.pending_since = None;
            self.last_short = 0;
        }
        // Consolidation of empty ready nodes, except the provisioner's (held from disruption;
        // it removes them itself).
        let after = self.cfg.consolidate_after_seconds;
        let mut k = 0;
        while k < self.nodes.len() {
            let n = &mut self.nodes[k];
            let empty = !n.owned && n.ready_at <= now && n.used == 0 && n.pause == 0;
            if !empty {
                n.empty_since = None;
                k += 1;
                continue;
            }
            let since = *n.empty_since.get_or_insert(now);
            if now - since >= after {
                self.remove_node(k);
            } else {
                k += 1;
            }
        }
        self.price_per_second = self
            .nodes
            .iter()
            .map(|n| if n.spot { self.cfg.spot_price } else { self.cfg.on_demand_price } / 3600.0)
            .sum();
    }

    fn remove_node(&mut self, k: usize) {
        let last = self.nodes.len() - 1;
        self.nodes.swap_remove(k);
        for p in &mut self.pods {
            if p.node == Some(last) {
                p.node = Some(k);
            }
        }
    }
}

/// The Horizontal Pod Autoscaler as KEDA configures it: AverageValue target, 10 % tolerance,
/// 15 s sync, scale-down stabilisation (300 s), and optionally the default scale-up policy
/// (at most +100 % or +4 pods per 15 s).
#[derive(Debug)]
pub struct Hpa {
    pub sync_seconds: f64,
    pub tolerance: f64,
    pub down_window: f64,
    pub limit_scale_up: bool,
    pub max_replicas: u32,
    last_sync: f64,
    recs: VecDeque<(f64, u32)>,
}

impl Hpa {
    pub fn new(limit_scale_up: bool, max_replicas: u32) -> Self {
        Self {
            sync_seconds: 15.0,
            tolerance: 0.1,
            down_window: 300.0,
            limit_scale_up,
            max_replicas,
            last_sync: f64::NEG_INFINITY,
            recs: VecDeque::new(),
        }
    }

    /// Whether a sync is due at `now`.
    pub fn due(&self, now: f64) -> bool {
        now - self.last_sync >= self.sync_seconds
    }

    /// One sync: `desired` per metric is ceil(value / target); the largest wins.
    pub fn sync(&mut self, now: f64, current: u32, metrics: &[(f64, f64)]) -> u32 {
        self.last_sync = now;
        if current == 0 {
            // KEDA owns 0 ↔ 1; the HPA is idle at zero.
            self.recs.clear();
            return 0;
        }
        let mut rec = 1u32;
        for &(value, target) in metrics {
            let ratio = value / (target * f64::from(current));
            let r = if (ratio - 1.0).abs() <= self.tolerance {
                current
            } else {
                (value / target)
                    .ceil()
                    .clamp(0.0, f64::from(self.max_replicas)) as u32
            };
            rec = rec.max(r);
        }
        rec = rec.clamp(1, self.max_replicas.max(1));
        self.recs.push_back((now, rec));
        while self
            .recs
            .front()
            .is_some_and(|(t, _)| now - t > self.down_window)
        {
            self.recs.pop_front();
        }
        let mut desired = if rec >= current {
            rec
        } else {
            let stab = self.recs.iter().map(|(_, r)| *r).max().unwrap_or(rec);
            stab.min(current)
        };
        if self.limit_scale_up && desired > current {
            desired = desired.min((current * 2).max(current + 4));
        }
        desired
    }
}

/// KEDA's activation loop: every polling interval, an active trigger takes 0 to 1; an
/// inactive one takes the workload to 0 after the cooldown.
#[derive(Debug)]
pub struct Keda {
    pub polling_seconds: f64,
    pub cooldown_seconds: f64,
    last_poll: f64,
    last_active: f64,
}

impl Keda {
    pub fn new(polling_seconds: f64) -> Self {
        Self {
            polling_seconds,
            cooldown_seconds: 300.0,
            last_poll: f64::NEG_INFINITY,
            last_active: f64::NEG_INFINITY,
        }
    }

    pub fn due(&self, now: f64) -> bool {
        now - self.last_poll >= self.polling_seconds
    }

    /// A poll with the trigger's activity; returns the replica count KEDA sets.
    pub fn poll(&mut self, now: f64, active: bool, current: u32) -> u32 {
        self.last_poll = now;
        self.activity(now, active, current)
    }

    /// An activity report outside the poll (push): only 0 → 1 acts.
    pub fn push(&mut self, now: f64, active: bool, current: u32) -> u32 {
        if active && current == 0 {
            self.last_active = now;
            return 1;
        }
        current
    }

    fn activity(&mut self, now: f64, active: bool, current: u32) -> u32 {
        if active {
            self.last_active = now;
            return current.max(1);
        }
        if current > 0 && now - self.last_active >= self.cooldown_seconds {
            return 0;
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_follows_average_value_with_tolerance_and_stabilisation() {
        let mut h = Hpa::new(false, 100);
        assert_eq!(h.sync(0.0, 1, &[(10.0, 1.0)]), 10);
        // Within 10 %: no change.
        assert_eq!(h.sync(15.0, 10, &[(10.5, 1.0)]), 10);
        // Down: held by the highest recommendation of the last 300 s.
        assert_eq!(h.sync(30.0, 10, &[(2.0, 1.0)]), 10);
        assert_eq!(h.sync(301.0, 10, &[(2.0, 1.0)]), 10);
        assert_eq!(h.sync(316.0, 10, &[(2.0, 1.0)]), 2);
        // The default scale-up policy: +100 % or +4.
        let mut h = Hpa::new(true, 100);
        assert_eq!(h.sync(0.0, 1, &[(50.0, 1.0)]), 5);
        assert_eq!(h.sync(15.0, 5, &[(50.0, 1.0)]), 10);
    }

    #[test]
    fn keda_activates_on_poll_and_scales_to_zero_after_cooldown() {
        let mut k = Keda::new(30.0);
        assert_eq!(k.poll(0.0, true, 0), 1);
        assert_eq!(k.poll(30.0, false, 3), 3);
        assert_eq!(k.poll(300.0, false, 3), 0);
        assert_eq!(k.push(301.0, true, 0), 1);
    }

    #[test]
    fn pods_wait_for_nodes_and_empty_nodes_go_away() {
        let mut c = Cluster::new(ClusterConfig {
            boot_seconds: (100.0, 100.0),
            pull_seconds: (50.0, 50.0),
            batch_idle_seconds: 0.0,
            batch_max_seconds: 0.0,
            ..ClusterConfig::default()
        });
        c.scale_to(2);
        let mut t = 0.0;
        while c.ready_pods() < 2 {
            c.step(t, 0.0);
            t += 1.0;
            assert!(t < 1000.0);
        }
        // 150 s for the node, 20 s for the pod (+1 s tick).
        assert!((170.0..=172.0).contains(&t), "{t}");
        assert_eq!(c.nodes(), 2);
        c.scale_to(0);
        for _ in 0..40 {
            c.step(t, 0.0);
            t += 1.0;
        }
        assert_eq!(c.nodes(), 0);
        assert!(c.node_seconds > 2.0 * 170.0);
    }

    #[test]
    fn the_provisioners_nodes_stay_until_it_removes_them_and_busy_ones_stay_then_too() {
        let mut c = Cluster::new(ClusterConfig {
            boot_seconds: (10.0, 10.0),
            pull_seconds: (0.0, 0.0),
            batch_idle_seconds: 0.0,
            batch_max_seconds: 0.0,
            ..ClusterConfig::default()
        });
        c.create_owned(0.0, 2, false);
        let mut t = 0.0;
        // Empty and ready for far longer than consolidateAfter: Karpenter leaves them alone.
        while t < 200.0 {
            c.step(t, 0.0);
            t += 1.0;
        }
        assert_eq!(c.nodes(), 2);
        assert!(c.owned(t).iter().all(|n| n.ready && n.busy_pods == 0));
        // A pod lands on one; the provisioner asks to remove both: only the idle one goes.
        c.scale_to(1);
        c.step(t, 0.0);
        assert_eq!(c.placed_elsewhere(t), 0);
        let ids: Vec<u64> = c.owned(t).iter().map(|n| n.id).collect();
        assert_eq!(c.remove_owned(&ids), 1);
        let left = c.owned(t);
        assert_eq!((left.len(), left[0].busy_pods), (1, 1));
        // Held: last_needed moves.
        c.hold(&[left[0].id], 500.0);
        assert_eq!(c.owned(t)[0].last_needed, 500.0);
    }

    #[test]
    fn pods_karpenter_is_launching_for_count_as_placed_elsewhere() {
        let mut c = Cluster::new(ClusterConfig {
            batch_idle_seconds: 0.0,
            batch_max_seconds: 0.0,
            ..ClusterConfig::default()
        });
        c.scale_to(3);
        c.step(0.0, 0.0);
        // Three nodes booting for three pending pods.
        assert_eq!((c.nodes(), c.placed_elsewhere(1.0)), (3, 3));
        c.scale_to(5);
        assert_eq!(c.placed_elsewhere(1.0), 3);
    }

    fn fixed_times(prepull: bool) -> ClusterConfig {
        ClusterConfig {
            boot_seconds: (100.0, 100.0),
            pull_seconds: (300.0, 300.0),
            batch_idle_seconds: 0.0,
            batch_max_seconds: 0.0,
            prepull,
            ..ClusterConfig::default()
        }
    }

    /// Steps until `ready` pods are Ready; returns the second it happened.
    fn until_ready(c: &mut Cluster, mut t: f64, ready: u32) -> f64 {
        while c.ready_pods() < ready {
            c.step(t, 0.0);
            t += 1.0;
            assert!(t < 5000.0, "never ready");
        }
        t
    }

    #[test]
    fn a_pause_pod_node_holds_no_image_so_the_first_real_pod_pays_the_pull() {
        let mut c = Cluster::new(fixed_times(false));
        c.set_pause_pods(1);
        let mut t = 0.0;
        while t < 200.0 {
            c.step(t, 0.0);
            t += 1.0;
        }
        assert_eq!((c.nodes(), c.image_warm_nodes(t)), (1, 0));
        // The real pod preempts the pause pod at once, then pulls (300 s) and starts (20 s).
        c.set_pause_pods(0);
        c.scale_to(1);
        let ready = until_ready(&mut c, t, 1);
        assert!((ready - t - 320.0).abs() <= 2.0, "{}", ready - t);
        assert_eq!(c.image_warm_nodes(ready), 1);
    }

    #[test]
    fn a_node_that_ran_the_image_keeps_it_for_the_next_pod() {
        let mut c = Cluster::new(ClusterConfig {
            consolidate_after_seconds: 1000.0,
            ..fixed_times(false)
        });
        c.scale_to(1);
        let t = until_ready(&mut c, 0.0, 1);
        // Boot 100 s, pull 300 s, start 20 s.
        assert!((420.0..=422.0).contains(&t), "{t}");
        c.scale_to(0);
        c.step(t, 0.0);
        c.scale_to(1);
        let again = until_ready(&mut c, t + 1.0, 1);
        assert!(again - t <= 23.0, "{}", again - t);
    }

    #[test]
    fn prepulled_nodes_and_claims_are_image_warm_before_any_pod_lands() {
        let mut c = Cluster::new(fixed_times(true));
        c.set_pause_pods(1);
        let mut t = 0.0;
        while t < 450.0 {
            c.step(t, 0.0);
            t += 1.0;
        }
        assert_eq!(c.image_warm_nodes(t), 1);
        c.set_pause_pods(0);
        c.scale_to(1);
        let ready = until_ready(&mut c, t, 1);
        assert!(ready - t <= 22.0, "{}", ready - t);
        // A NodeClaim asks for the pre-pull itself, on a cluster without the DaemonSet.
        let mut c = Cluster::new(fixed_times(false));
        c.create_owned(0.0, 1, true);
        c.create_owned(0.0, 1, false);
        assert_eq!(c.image_warm_nodes(401.0), 1);
    }

    #[test]
    fn karpenter_batches_pods_until_none_arrive_for_the_idle_window_or_the_max_passes() {
        // Pods that keep arriving every second hold the batch open until the 10 s maximum.
        let mut c = Cluster::new(ClusterConfig::default());
        for t in 0..30 {
            c.scale_to(t + 1);
            c.step(f64::from(t), 0.0);
            if c.nodes() > 0 {
                assert_eq!(t, 10, "launched at {t}");
                assert_eq!(c.nodes(), 11);
                break;
            }
        }
        assert!(c.nodes() > 0);
        // One pod alone: launched once the 1 s idle window has passed.
        let mut c = Cluster::new(ClusterConfig::default());
        c.scale_to(1);
        c.step(0.0, 0.0);
        assert_eq!(c.nodes(), 0);
        c.step(1.0, 0.0);
        assert_eq!(c.nodes(), 1);
    }
}
