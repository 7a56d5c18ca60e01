//! headroom-provisioner: turns the scaler's forecast of replicas into GPU capacity ahead of
//! demand.
//!
//! - [`admin`]: what the operator lets policies name (NodePools, templates, endpoints, …);
//! - [`crd`]: the `PrewarmPolicy` resource (`headroom.dev/v1alpha1`);
//! - [`plan`]: the pure planner — forecast, pod shape, capacity and limits in, capacity wanted out
//!   (in `headroom-policy`, re-exported);
//! - [`shape`]: the workload pod's shape, read from its pod template;
//! - [`karpenter`], [`overprovision`]: the objects each capacity mode creates, built purely;
//! - [`provider`]: the `CapacityProvider` contract; [`providers`]: its implementations;
//! - [`demand`]: the client of the scaler's `headroom.v1.Demand` stream;
//! - [`controller`]: the reconcile loop; [`launches`]: capacity that fails to come up; [`leader`]: Lease-based leader election;
//! - [`warm`]: image-warm capacity (pre-pull pods, the helper they run);
//! - [`serve`]: the process (HTTP endpoints, election, the loop while leading), [`metrics`].

pub mod admin;
pub mod controller;
pub mod crd;
pub mod demand;
pub mod karpenter;
pub mod launches;
pub mod leader;
pub mod metrics;
pub mod overprovision;
pub mod provider;
pub mod providers;
pub mod serve;
pub mod shape;
pub mod warm;

// The pure planner, moved to headroom-policy; re-exported at the path it had here.
pub use headroom_policy::plan;

pub use serve::{Config, Running, start};

/// Makes ring the process-wide rustls crypto provider (see [`headroom_common`]): kube, tonic
/// and the AWS SDK all use rustls.
pub use headroom_common::install_crypto_provider;
