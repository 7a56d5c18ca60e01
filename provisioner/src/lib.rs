//! headroom-provisioner: turns the scaler's forecast of replicas into GPU capacity ahead of demand.
//!
//! Not built yet: see the provisioner issue. The crate exists so the workspace has its final shape.
