//! headroom-policy: Headroom's decisions as pure functions of readings and the clock.
//!
//! Nothing here does I/O, reads the wall clock or depends on a runtime, a Kubernetes client or
//! a queue client: the scaler, the provisioner and the simulator (`headroom-sim`) run the same
//! code, and the simulator builds without any of the programs' I/O dependencies
//! (`sim/tests/deps.rs` checks it).
//!
//! - [`estimate`]: backlog, arrival rate and service time from queue readings;
//! - [`forecast`]: the learned daily + weekly forecast of arrivals, and its backtest;
//! - [`schedule`]: declared demand windows (`schedule`, `timezone`);
//! - [`policy`]: replicas from demand, forecast and schedule;
//! - [`planner`]: one queue's planned mode, joining the four above;
//! - [`keepalive`]: learned keep-alive (`scaleDownAfter: auto`) from a policy's idle gaps;
//! - [`plan`]: the provisioner's planner — forecast, pod shape, capacity and limits in,
//!   capacity wanted out.
//!
//! The scaler re-exports the first five at their old paths (`headroom_scaler::forecast`, …) and
//! the provisioner re-exports [`plan`] (`headroom_provisioner::plan`); parsing trigger metadata
//! into a [`planner::PlannedConfig`] stays in the scaler, which owns the metadata reader.

pub mod estimate;
pub mod forecast;
pub mod keepalive;
pub mod plan;
pub mod planner;
pub mod policy;
pub mod schedule;
