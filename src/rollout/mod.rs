//! The progressive rollout (SPEC §6). So far: the significance tests it judges a canary with
//! ([`stats`]); the controller that walks the steps comes on top of them.

pub mod stats;
