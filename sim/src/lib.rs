//! headroom-sim: a trace-driven simulator that runs the scaler's policy and the provisioner's planner
//! on a virtual clock.
//!
//! Not built yet: see the forecast issue. The crate exists so the workspace has its final shape.
