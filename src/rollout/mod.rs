//! The progressive rollout (SPEC §6): the anytime-valid tests ([`stats`]), one check of a canary
//! against its baseline ([`judge`]), what each step means for the route ([`plan`]), webhooks and
//! notifications ([`hooks`]), what is kept of a rollout ([`record`]), and the controller that walks
//! the steps ([`controller`]), judges them ([`checks`]), notices others' changes ([`others`]) and
//! takes control calls ([`control`]).

pub mod checks;
pub mod control;
pub mod controller;
pub mod hooks;
pub mod judge;
pub mod others;
pub mod plan;
pub mod record;
pub use crate::stats;
pub mod view;

pub use controller::{ControlError, Controller, Phase, Rollouts};
