//! The oracle is a yardstick: on every shipped synthetic trace, no policy — tuned baselines,
//! Headroom, prewarming — is both as cheap and as fast as no oracle plan of the same seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use headroom_sim::cluster::ClusterConfig;
use headroom_sim::engine::PolicyKind;
use headroom_sim::report::beats_frontier;
use headroom_sim::scenarios::synthetic;
use headroom_sim::{run_all, tune_all};

#[test]
fn no_policy_beats_the_oracle_frontier_on_any_shipped_trace() {
    let mut scenarios = synthetic().unwrap();
    let cl = ClusterConfig::default();
    let quiet = |_: usize, _: usize, _: &str| {};
    tune_all(&mut scenarios, &cl, 2, &quiet);
    let runs = run_all(&scenarios, &PolicyKind::ALL, &cl, 1, 2, &quiet);
    assert_eq!(runs.results.len(), scenarios.len() * PolicyKind::ALL.len());
    assert!(!runs.frontier.is_empty());
    let beaten = beats_frontier(&runs.results, &runs.frontier);
    assert!(beaten.is_empty(), "beats the frontier: {beaten:?}");
}
