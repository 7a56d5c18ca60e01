//! headroom-provisioner: turns the scaler's forecast of replicas into GPU capacity ahead of
//! demand.
//!
//! - [`crd`]: the `PrewarmPolicy` resource (`headroom.dev/v1alpha1`);
//! - [`plan`]: the pure planner — forecast, pod shape, capacity and limits in, capacity wanted out;
//! - [`shape`]: the workload pod's shape, read from its pod template;
//! - [`karpenter`], [`overprovision`]: the objects each capacity mode creates, built purely;
//! - [`provider`]: the `CapacityProvider` contract; [`providers`]: its implementations (`ec2`).
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

/// Makes ring the process-wide rustls crypto provider, once, before any TLS connection.
///
/// The AWS SDK (ec2 mode) enables aws-lc-rs next to the ring that kube uses, and with both
/// rustls refuses to pick a default (it panics on the first TLS connection that relies on it);
/// the same choice as `headroom_scaler::install_crypto_provider`. Called by `main` and by
/// [`providers::ec2::Ec2Provider::new`]; harmless if a provider is already installed.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
