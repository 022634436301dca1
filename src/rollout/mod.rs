//! The progressive rollout (SPEC §6). So far: the significance tests ([`stats`]) and the check of a
//! canary against its baseline over one interval ([`judge`]); the controller that walks the steps
//! comes on top of them.

pub mod judge;
pub mod stats;
