//! headroom-scaler: a KEDA external scaler for queue-driven (GPU) workloads.
//!
//! KEDA sends each trigger's metadata with every call; the scaler parses it into a
//! [`trigger::Trigger`], reads the queue it names through [`observations::Observations`] (one
//! read per queue per TTL, however many triggers and calls), and answers what KEDA's built-in
//! scaler of the same kind would answer. [`push::PushHub`] turns `StreamIsActive` into an
//! activation within milliseconds of work landing in an empty queue.
//!
//! Layering: [`sources`] know their queues and nothing of gRPC or KEDA; [`service`] knows the
//! protocol; [`server`] wires the process together.

pub mod access;
pub mod bounds;
pub mod cache;
pub mod check;
pub mod cli;
pub mod demand;
pub mod docs;
pub mod error;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod observations;
pub mod planned;
pub mod planner;
pub mod push;
pub mod secrets;
pub mod server;
pub mod service;
pub mod shared_state;
pub mod sources;
pub mod trigger;

// The pure policy, moved to headroom-policy; re-exported at the paths it had here.
pub use headroom_policy::{estimate, forecast, policy, schedule};

/// Makes ring the process-wide rustls crypto provider (see [`headroom_common`]); called by every
/// entry point that may open TLS connections ([`server::start`], `check`, the Redis pools).
pub use headroom_common::install_crypto_provider;
