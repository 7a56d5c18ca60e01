//! The capacity providers: one file per mode, each a `CapacityProvider`.

pub mod overprovision;
