//! headroom-provisioner: turns the scaler's forecast of replicas into GPU capacity ahead of
//! demand.
//!
//! - [`crd`]: the `PrewarmPolicy` resource (`headroom.dev/v1alpha1`);
//! - [`plan`]: the pure planner — forecast, pod shape, capacity and limits in, capacity wanted out;
//! - [`shape`]: the workload pod's shape, read from its pod template;
//! - [`karpenter`], [`overprovision`]: the objects each capacity mode creates, built purely.
//!
//! The reconcile loop and the capacity providers (Karpenter NodeClaims, pause-pod
//! overprovisioning, EC2) build on these; see the provisioner issue for what is still to come.

pub mod crd;
pub mod karpenter;
pub mod overprovision;
pub mod plan;
pub mod provider;
pub mod providers;
pub mod shape;
