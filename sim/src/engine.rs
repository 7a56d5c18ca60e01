//! The simulation: a queue of jobs served by pods, pods scaled by a policy, on a virtual clock
//! that advances one second per step.
//!
//! Jobs are a fluid: each second's arrivals (see [`crate::workload`]: Poisson within the trace's
//! bins) join a FIFO queue as one cohort with that second's mean service time S; free worker
//! slots (ready pods × concurrency) take from the head, and each taken share records its wait
//! and completes at its own cohort's S times the spread's quantile points (lognormal by
//! default), not at the S of the second it starts in. That keeps millions of jobs cheap while
//! waits keep their real distribution of seconds.

use std::collections::VecDeque;

use headroom_policy::estimate::Observation;
use headroom_policy::planner::{ForecastMode, PlannedConfig, Planner};
use headroom_policy::policy::PolicyConfig;
use headroom_policy::schedule::{Schedule, instant};

use crate::cluster::{Cluster, ClusterConfig, Hpa, Keda};
use crate::prewarm::{Prewarm, PrewarmSettings, PrewarmStats};
use crate::trace::Trace;
use crate::tune::{self, KedaTuning};
use crate::workload::arrivals_per_second;

/// One trace with the workload's shape and what its users would declare.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub trace: Trace,
    /// Mean service seconds per job when the trace has none.
    pub service_seconds: f64,
    /// Jobs one pod runs at once.
    pub concurrency: u32,
    pub max_replicas: u32,
    /// The declared windows (CronHPA and Headroom's `schedule`), and their time zone.
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    /// Whether Headroom is told `serviceTimeSeconds` (else it learns it from drains).
    pub declare_service_time: bool,
    /// Whether the queue exposes produced/consumed counters (Kafka) or only depths.
    pub counters: bool,
    /// Size of the fixed warm pool (pause pods); `None`: the seed's rule
    /// ([`tune::warm_pool_rule`]).
    pub warm_pool: Option<u32>,
    /// keda-tuned's settings (also under warm-pool and cron-hpa), as [`tune`] chose them.
    pub keda_tuning: KedaTuning,
    /// The share of the trace, from its start, that is the tuning part: run, not reported.
    pub tuning_share: f64,
    /// Headroom's `drainSeconds`.
    pub drain_seconds: f64,
    /// The PrewarmPolicy of `headroom+prewarm`.
    pub prewarm: PrewarmSettings,
}

/// The policies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PolicyKind {
    KedaDefaults,
    KedaTuned,
    WarmPool,
    CronHpa,
    Headroom,
    HeadroomPrewarm,
    Oracle,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::KedaDefaults,
        PolicyKind::KedaTuned,
        PolicyKind::WarmPool,
        PolicyKind::CronHpa,
        PolicyKind::Headroom,
        PolicyKind::HeadroomPrewarm,
        PolicyKind::Oracle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::KedaDefaults => "keda-defaults",
            PolicyKind::KedaTuned => "keda-tuned",
            PolicyKind::WarmPool => "warm-pool",
            PolicyKind::CronHpa => "cron-hpa",
            PolicyKind::Headroom => "headroom",
            PolicyKind::HeadroomPrewarm => "headroom+prewarm",
            PolicyKind::Oracle => "oracle",
        }
    }
}

/// A histogram of waits in whole seconds (weights are fractional jobs).
#[derive(Debug, Clone)]
pub struct Waits {
    buckets: Vec<f64>,
    total: f64,
}

const MAX_WAIT: usize = 6 * 3600;

impl Default for Waits {
    fn default() -> Self {
        Self {
            buckets: vec![0.0; MAX_WAIT + 1],
            total: 0.0,
        }
    }
}

impl Waits {
    fn add(&mut self, wait: u64, n: f64) {
        self.buckets[(wait as usize).min(MAX_WAIT)] += n;
        self.total += n;
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    /// The `q` quantile in seconds (the `MAX_WAIT` bucket means "at least").
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let want = q * self.total;
        let mut acc = 0.0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b;
            if acc >= want - 1e-9 {
                return i as f64;
            }
        }
        MAX_WAIT as f64
    }

    pub fn share_within(&self, secs: u64) -> f64 {
        if self.total <= 0.0 {
            return 1.0;
        }
        self.buckets[..=(secs as usize).min(MAX_WAIT)]
            .iter()
            .sum::<f64>()
            / self.total
    }
}

/// One run's results.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub scenario: String,
    pub policy: PolicyKind,
    /// The seed of this realisation (arrivals and node times).
    pub seed: u64,
    pub waits: Waits,
    pub gpu_node_hours: f64,
    pub cost: f64,
    pub idle_gpu_hours: f64,
    /// Jobs that arrived in the held-out part of this realisation of the trace.
    pub arrived: f64,
    /// Jobs not done at the end (waiting or in service).
    pub left: f64,
    /// Jobs still waiting at the end, never started: counted in `waits` with wait = end −
    /// arrival (a lower bound on what they will wait).
    pub unserved: f64,
    /// (t, arrivals per s, replicas, ready pods, nodes) sampled for the chart.
    pub series: Vec<(f64, f64, u32, u32, u32)>,
    /// Forecast error at the lead time (Headroom's), when it was on.
    pub forecast_mape: Option<(f64, f64)>,
    /// What the provisioner did (`headroom+prewarm`).
    pub prewarm: Option<PrewarmStats>,
    /// The oracle's plan, for the oracle and its frontier.
    pub oracle_plan: Option<crate::oracle::Plan>,
}

pub(crate) struct Workload {
    /// Cohorts waiting: (arrival second, jobs, their mean service seconds).
    queue: VecDeque<(u64, f64, f64)>,
    pub(crate) waiting: f64,
    pub(crate) in_service: f64,
    /// Completions by second, over a ring longer than the longest service time.
    ring: Vec<f64>,
    /// Multipliers of S, each taking an equal share of a cohort.
    spread: Vec<f64>,
    produced: f64,
    consumed: f64,
    /// Jobs arriving before this second are served but not scored (the tuning part).
    score_from: u64,
    pub(crate) scored_arrivals: f64,
    pub(crate) waits: Waits,
}

impl Workload {
    pub(crate) fn new(max_service: f64, spread: Vec<f64>, score_from: u64) -> Self {
        let longest = spread.iter().copied().fold(1.0, f64::max) * max_service;
        Self {
            queue: VecDeque::new(),
            waiting: 0.0,
            in_service: 0.0,
            ring: vec![0.0; longest.ceil() as usize + 8],
            spread,
            produced: 0.0,
            consumed: 0.0,
            score_from,
            scored_arrivals: 0.0,
            waits: Waits::default(),
        }
    }

    pub(crate) fn step(&mut self, sec: u64, arrivals: f64, slots: f64, service: f64) {
        let len = self.ring.len();
        // Completions this second.
        let done = self.ring[sec as usize % len].min(self.in_service);
        self.ring[sec as usize % len] = 0.0;
        self.in_service -= done;
        self.consumed += done;
        if self.in_service < 1e-9 {
            self.in_service = 0.0;
        }
        if arrivals > 0.0 {
            self.queue.push_back((sec, arrivals, service));
            self.waiting += arrivals;
            self.produced += arrivals;
            if sec >= self.score_from {
                self.scored_arrivals += arrivals;
            }
        }
        let mut free = slots - self.in_service;
        let mut started = 0.0;
        while free > 1e-9 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let n = front.1.min(free);
            if front.0 >= self.score_from {
                self.waits.add(sec - front.0, n);
            }
            front.1 -= n;
            free -= n;
            started += n;
            // Completions at this cohort's S times each quantile point (whole seconds, at
            // least 1).
            let s = front.2;
            let per = n / self.spread.len() as f64;
            for m in &self.spread {
                let d = (s * m).round().max(1.0) as usize;
                self.ring[(sec as usize + d) % len] += per;
            }
            if front.1 <= 1e-9 {
                self.queue.pop_front();
            }
        }
        if started > 0.0 {
            self.waiting = (self.waiting - started).max(0.0);
            self.in_service += started;
        }
    }

    pub(crate) fn backlog(&self) -> f64 {
        self.waiting + self.in_service
    }

    /// Ends the run at second `end`: every job still waiting counts with wait = end − arrival
    /// (dropping them would drop the worst waits). Returns how many there were.
    pub(crate) fn finish(&mut self, end: u64) -> f64 {
        let mut unserved = 0.0;
        for (arrived, n, _) in self.queue.drain(..) {
            if arrived >= self.score_from {
                self.waits.add(end.saturating_sub(arrived), n);
                unserved += n;
            }
        }
        unserved
    }
}

/// The per-policy controller.
enum Control {
    Keda {
        keda: Keda,
        hpa: Hpa,
        cron: Option<Schedule>,
    },
    Headroom {
        keda: Keda,
        hpa: Hpa,
        planner: Box<Planner>,
        prewarm: Option<Prewarm>,
    },
}

fn planned_config(sc: &Scenario, lead: f64) -> PlannedConfig {
    let schedule = sc
        .schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s, sc.timezone.as_deref()).ok());
    PlannedConfig {
        policy: PolicyConfig {
            tasks_per_replica: f64::from(sc.concurrency),
            service_time: sc.declare_service_time.then_some(sc.service_seconds),
            concurrency: sc.concurrency,
            drain_seconds: sc.drain_seconds,
            min_replicas: 0,
            max_replicas: sc.max_replicas,
        },
        schedule,
        forecast: ForecastMode::Seasonal,
        lead_time_seconds: lead,
    }
}

/// Runs one policy over one scenario; everything in the result is of the held-out part (from
/// [`tune::split_second`] on).
pub fn run(sc: &Scenario, policy: PolicyKind, cl: &ClusterConfig) -> RunResult {
    if policy == PolicyKind::Oracle {
        return crate::oracle::Foresight::new(sc, cl).run(crate::oracle::Plan::EXACT);
    }
    let tr = &sc.trace;
    let n = tr.duration().round() as u64;
    let lead = cl.worst_pod_latency();
    let tpr = f64::from(sc.concurrency);
    let score_from = tune::split_second(sc);
    // The KEDA baselines a competent user runs: keda-tuned's settings, also under the warm
    // pool and the CronHPA.
    let tuned = matches!(
        policy,
        PolicyKind::KedaTuned | PolicyKind::WarmPool | PolicyKind::CronHpa
    );
    let mut cfg = cl.clone();
    let mut min_replicas = 0;
    if tuned {
        if let Some(c) = sc.keda_tuning.consolidate_after_seconds {
            cfg.consolidate_after_seconds = c;
        }
        min_replicas = sc.keda_tuning.min_replicas.min(sc.max_replicas);
    }
    let mut cluster = Cluster::new(cfg);
    let mut control = match policy {
        PolicyKind::KedaDefaults => Control::Keda {
            keda: Keda::new(30.0),
            hpa: Hpa::new(true, sc.max_replicas),
            cron: None,
        },
        PolicyKind::KedaTuned | PolicyKind::WarmPool => Control::Keda {
            keda: Keda::new(2.0),
            hpa: Hpa::new(false, sc.max_replicas),
            cron: None,
        },
        PolicyKind::CronHpa => Control::Keda {
            keda: Keda::new(2.0),
            hpa: Hpa::new(false, sc.max_replicas),
            cron: sc
                .schedule
                .as_deref()
                .and_then(|s| Schedule::parse(s, sc.timezone.as_deref()).ok()),
        },
        PolicyKind::Headroom | PolicyKind::HeadroomPrewarm => Control::Headroom {
            keda: Keda::new(30.0),
            hpa: Hpa::new(false, sc.max_replicas),
            planner: Box::new(Planner::new(planned_config(sc, lead))),
            prewarm: (policy == PolicyKind::HeadroomPrewarm)
                .then(|| Prewarm::new(sc.prewarm.clone(), lead, sc.max_replicas)),
        },
        // Served above, by the oracle's own model.
        PolicyKind::Oracle => Control::Keda {
            keda: Keda::new(2.0),
            hpa: Hpa::new(false, sc.max_replicas),
            cron: None,
        },
    };
    if policy == PolicyKind::WarmPool {
        cluster.set_pause_pods(sc.warm_pool.unwrap_or_else(|| tune::warm_pool_rule(sc)));
    }
    let max_service = tr.service.as_ref().map_or(sc.service_seconds, |s| {
        s.iter().copied().fold(sc.service_seconds, f64::max)
    });
    let mut work = Workload::new(max_service, cl.service_spread.multipliers(), score_from);
    let arrivals_at = arrivals_per_second(tr, cl.arrivals, cl.seed);
    let sample_every = (n / 1500).max(1);
    let mut series = Vec::new();
    let mut sample_arrivals = 0.0;
    // The cluster's accounting when the held-out part starts.
    let mut at_split = (0.0, 0.0, 0.0);
    for sec in 0..n {
        if sec == score_from {
            at_split = (cluster.node_seconds, cluster.cost, cluster.idle_gpu_seconds);
        }
        let t = tr.start + sec as f64;
        let arrivals = arrivals_at.get(sec as usize).copied().unwrap_or(0.0);
        let service = tr.service_at(t).unwrap_or(sc.service_seconds);
        let slots = f64::from(cluster.ready_pods() * sc.concurrency);
        work.step(sec, arrivals, slots, service);
        sample_arrivals += arrivals;
        let backlog = work.backlog();
        let current = cluster.replicas();
        let desired = match &mut control {
            Control::Keda { keda, hpa, cron } => {
                // A CronHPA user starts each window a pod-to-Ready latency early (the lead
                // Headroom gets) and keeps it to its declared end.
                let cron_now = cron
                    .as_ref()
                    .and_then(|s| s.replicas_at(instant(t), lead.ceil() as i64));
                let active = backlog > 1e-6 || cron_now.is_some();
                let mut r = current;
                if keda.due(t) {
                    r = keda.poll(t, active, r);
                }
                if hpa.due(t) {
                    let mut metrics = vec![(backlog, tpr)];
                    if let Some(c) = cron_now {
                        metrics.push((f64::from(c), 1.0));
                    }
                    r = hpa.sync(t, r, &metrics);
                }
                // `minReplicaCount`: KEDA scales to it, not to zero.
                r.max(min_replicas)
            }
            Control::Headroom {
                keda,
                hpa,
                planner,
                prewarm,
            } => {
                let waiting = work.waiting.round() as u64;
                let in_flight = work.in_service.round() as u64;
                let obs = if sc.counters {
                    Observation {
                        at: t,
                        waiting,
                        in_flight,
                        produced_total: Some(work.produced.floor() as u64),
                        consumed_total: Some(work.consumed.floor() as u64),
                    }
                } else {
                    Observation::depth(t, waiting, in_flight)
                };
                planner.observe(obs);
                let mut r = current;
                // Push: the scaler's stream reports activation within its poll (≤ 1 s here).
                if r == 0 {
                    r = keda.push(t, planner.active(t), r);
                }
                if keda.due(t) {
                    r = keda.poll(t, planner.active(t), r);
                }
                if hpa.due(t) {
                    let value = f64::from(planner.desired_now(t));
                    r = hpa.sync(t, r, &[(value, 1.0)]);
                }
                // The provisioner acts before the new pods exist, as the controller does on a
                // Demand answer.
                if let Some(p) = prewarm {
                    p.reconcile(t, planner, &mut cluster);
                }
                r
            }
        };
        if desired != current {
            cluster.scale_to(desired);
        }
        let busy = (work.in_service / tpr).min(f64::from(cluster.ready_pods()));
        cluster.step(t, busy);
        if sec % sample_every == 0 {
            series.push((
                t,
                sample_arrivals / sample_every as f64,
                cluster.replicas(),
                cluster.ready_pods(),
                cluster.nodes(),
            ));
            sample_arrivals = 0.0;
        }
    }
    let (forecast_mape, prewarm) = match &control {
        Control::Headroom {
            planner, prewarm, ..
        } => (
            planner
                .forecast_error()
                .and_then(|e| Some((e.total?.mape, e.total_naive_day?.mape))),
            prewarm.as_ref().map(|p| p.stats),
        ),
        _ => (None, None),
    };
    let left = work.backlog();
    let arrived = work.scored_arrivals;
    let unserved = work.finish(n);
    RunResult {
        scenario: sc.name.clone(),
        policy,
        seed: cl.seed,
        gpu_node_hours: (cluster.node_seconds - at_split.0) / 3600.0,
        cost: cluster.cost - at_split.1,
        idle_gpu_hours: (cluster.idle_gpu_seconds - at_split.2) / 3600.0,
        arrived,
        left,
        unserved,
        waits: work.waits,
        series,
        forecast_mape,
        prewarm,
        oracle_plan: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workload::ServiceSpread;

    /// `rate` jobs/s of 10 s on one-job pods, not split (everything scored).
    pub(crate) fn steady(rate: f64, secs: usize) -> Scenario {
        Scenario {
            name: "steady".into(),
            trace: Trace {
                name: "steady".into(),
                start: 1_715_558_400.0,
                bin: 1.0,
                arrivals: vec![rate; secs],
                service: None,
            },
            service_seconds: 10.0,
            concurrency: 1,
            max_replicas: 50,
            schedule: None,
            timezone: None,
            declare_service_time: true,
            counters: false,
            warm_pool: Some(2),
            keda_tuning: KedaTuning::default(),
            tuning_share: 0.0,
            drain_seconds: 60.0,
            prewarm: PrewarmSettings::default(),
        }
    }

    #[test]
    fn jobs_are_conserved_and_waits_are_recorded() {
        let sc = steady(0.5, 7200);
        let r = run(&sc, PolicyKind::KedaTuned, &ClusterConfig::default());
        // Poisson: about 0.5 × 7200 arrive.
        assert!((r.arrived - 3600.0).abs() < 300.0, "{}", r.arrived);
        // Every arrival is counted: served, or waiting at the end with wait = end − arrival.
        assert!(
            (r.waits.total() - r.arrived).abs() < 1e-6 * r.arrived,
            "{} {}",
            r.waits.total(),
            r.unserved
        );
        // The first jobs wait for a node: minutes.
        assert!(r.waits.quantile(0.999) > 300.0);
        assert!(r.gpu_node_hours > 1.0);
    }

    #[test]
    fn a_queued_cohort_is_served_with_its_own_service_time() {
        // 10 jobs of 60 s arrive at 0 with no slot; at 100 slots open while the trace's
        // service column says 5 s: they must still take 30-90 s each.
        let mut w = Workload::new(60.0, ServiceSpread::Uniform.multipliers(), 0);
        w.step(0, 10.0, 0.0, 60.0);
        for sec in 1..100 {
            w.step(sec, 0.0, 0.0, 5.0);
        }
        w.step(100, 0.0, 10.0, 5.0);
        for sec in 101..129 {
            w.step(sec, 0.0, 10.0, 5.0);
        }
        assert!(w.in_service > 9.99, "{}", w.in_service);
        for sec in 129..200 {
            w.step(sec, 0.0, 10.0, 5.0);
        }
        assert!(w.in_service < 1e-6, "{}", w.in_service);
        assert!((w.waits.quantile(0.5) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn jobs_still_waiting_at_the_end_count_with_their_wait_so_far() {
        // Jobs arrive in the last minute of a 30-minute trace: no node can be up in time.
        let mut sc = steady(0.0, 1800);
        for a in &mut sc.trace.arrivals[1740..] {
            *a = 1.0;
        }
        let r = run(&sc, PolicyKind::KedaTuned, &ClusterConfig::default());
        assert!((r.unserved - 60.0).abs() < 1e-6, "{}", r.unserved);
        assert!((r.waits.total() - 60.0).abs() < 1e-6);
        // The first arrival waited 60 s when the trace ended, the last one 1 s.
        assert_eq!(r.waits.quantile(0.99), 60.0);
        assert!(r.waits.quantile(0.01) <= 2.0);
    }

    #[test]
    fn cron_hpa_starts_its_window_a_lead_time_early() {
        // A declared 08:00-09:00 UTC window of 5 pods; jobs only inside it.
        let mut sc = steady(0.0, 10 * 3600);
        for a in &mut sc.trace.arrivals[8 * 3600..9 * 3600] {
            *a = 0.3;
        }
        sc.schedule = Some("0 8 * * * for 1h = 5".into());
        let cron = run(&sc, PolicyKind::CronHpa, &ClusterConfig::default());
        let keda = run(&sc, PolicyKind::KedaTuned, &ClusterConfig::default());
        // The window's pods are Ready when it opens; without the lead they would still be
        // pulling their image, as keda-tuned's are.
        assert!(
            cron.waits.quantile(0.95) <= 30.0,
            "{}",
            cron.waits.quantile(0.95)
        );
        assert!(
            keda.waits.quantile(0.95) > 100.0,
            "{}",
            keda.waits.quantile(0.95)
        );
    }

    #[test]
    fn min_replica_count_keeps_a_warm_pod_and_a_longer_consolidate_after_keeps_the_node() {
        let mut sc = steady(0.0, 7200);
        for a in &mut sc.trace.arrivals[3600..] {
            *a = 0.05;
        }
        let cl = ClusterConfig::default();
        let plain = run(&sc, PolicyKind::KedaTuned, &cl);
        sc.keda_tuning = KedaTuning {
            consolidate_after_seconds: Some(900.0),
            min_replicas: 1,
        };
        let warm = run(&sc, PolicyKind::KedaTuned, &cl);
        // Without: the first jobs of the hour wait for a node and its image pull.
        assert!(
            plain.waits.quantile(0.95) > 150.0,
            "{}",
            plain.waits.quantile(0.95)
        );
        assert!(
            warm.waits.quantile(0.95) <= 60.0,
            "{}",
            warm.waits.quantile(0.95)
        );
        // The kept pod holds its node through the quiet hour too.
        assert!(warm.gpu_node_hours > 1.9, "{}", warm.gpu_node_hours);
    }

    #[test]
    fn only_the_held_out_part_is_scored() {
        let mut sc = steady(0.0, 4000);
        for a in &mut sc.trace.arrivals[..1000] {
            *a = 1.0;
        }
        sc.tuning_share = 0.5;
        let r = run(&sc, PolicyKind::KedaTuned, &ClusterConfig::default());
        // All jobs arrived in the tuning half; its nodes were gone long before the second half
        // ended, so almost nothing is billed there.
        assert_eq!((r.arrived, r.waits.total()), (0.0, 0.0));
        assert!(r.gpu_node_hours < 0.2, "{}", r.gpu_node_hours);
    }

    #[test]
    fn the_oracle_has_capacity_before_the_first_job() {
        let mut sc = steady(0.0, 3600);
        for a in &mut sc.trace.arrivals[1800..] {
            *a = 0.5;
        }
        let r = run(&sc, PolicyKind::Oracle, &ClusterConfig::default());
        assert!(r.waits.quantile(0.99) <= 2.0, "{}", r.waits.quantile(0.99));
        let k = run(&sc, PolicyKind::KedaDefaults, &ClusterConfig::default());
        assert!(k.waits.quantile(0.9) > 60.0, "{}", k.waits.quantile(0.9));
    }

    /// Quiet for half an hour, then 0.5 jobs/s (5 busy pods at S = 10 s).
    fn cold_start() -> Scenario {
        let mut sc = steady(0.0, 3600);
        for a in &mut sc.trace.arrivals[1800..] {
            *a = 0.5;
        }
        sc
    }

    #[test]
    fn prewarmed_nodes_pay_the_image_pull_when_the_first_pod_lands_unless_they_pre_pull() {
        let mut sc = cold_start();
        sc.prewarm.min_warm_gpus = 6;
        let cl = ClusterConfig::default();
        let warm = run(&sc, PolicyKind::HeadroomPrewarm, &cl);
        let cold = run(&sc, PolicyKind::Headroom, &cl);
        sc.prewarm.prepull = true;
        let pulled = run(&sc, PolicyKind::HeadroomPrewarm, &cl);
        let p95 = |r: &RunResult| r.waits.quantile(0.95);
        // Pre-pulled: the pod starts (20 s) on a node that is up with the image. Prewarmed
        // without it: the node is up, the first pods still pull the image (4-6 min). Cold:
        // boot, then the pull.
        assert!(p95(&pulled) <= 60.0, "{}", p95(&pulled));
        assert!(p95(&warm) > 150.0, "{}", p95(&warm));
        assert!(p95(&cold) > 300.0, "{}", p95(&cold));
        let stats = warm.prewarm.unwrap();
        assert!(
            stats.nodes_created >= 6 && stats.plan_errors == 0,
            "{stats:?}"
        );
    }

    #[test]
    fn the_provisioner_never_holds_more_than_its_limits() {
        let mut sc = cold_start();
        sc.prewarm.min_warm_gpus = 6;
        sc.prewarm.max_nodes = Some(3);
        let r = run(&sc, PolicyKind::HeadroomPrewarm, &ClusterConfig::default());
        let stats = r.prewarm.unwrap();
        assert_eq!(stats.max_owned, 3, "{stats:?}");
        assert!(stats.plans_at_limit > 0, "{stats:?}");
        // Karpenter still launches nodes for the pods beyond the limit: the work gets done.
        assert!(r.left < 20.0, "{}", r.left);
    }
}
