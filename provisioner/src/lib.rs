//! headroom-provisioner: turns the scaler's forecast of replicas into GPU capacity ahead of
//! demand.
//!
//! - [`crd`]: the `PrewarmPolicy` resource (`headroom.dev/v1alpha1`);
//! - [`plan`]: the pure planner — forecast, pod shape, capacity and limits in, capacity wanted out.
//!
//! The reconcile loop and the capacity providers (Karpenter NodeClaims, pause-pod
//! overprovisioning, EC2) build on these; see the provisioner issue for what is still to come.

pub mod crd;
pub mod plan;
