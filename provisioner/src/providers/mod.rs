//! The capacity providers, one file each, behind [`crate::provider::CapacityProvider`].

pub mod ec2;
