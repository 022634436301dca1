//! The progressive rollout (SPEC §6): the significance tests ([`stats`]), one check of a canary
//! against its baseline ([`judge`]), what each step means for the route ([`plan`]), webhooks and
//! notifications ([`hooks`]), and the controller that walks the steps ([`controller`]).

pub mod controller;
pub mod hooks;
pub mod judge;
pub mod plan;
pub mod stats;

pub use controller::{ControlError, Controller, Phase, Rollouts};
