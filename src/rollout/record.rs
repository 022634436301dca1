//! What is kept of a rollout: where it stands ([`Phase`]), its history of [`Event`]s with every
//! check's figures, and the [`Record`] persisted in `state_dir/rollouts.json` (in a fleet, in etcd).

use super::judge::Check;
use super::plan::Added;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "RolloutPhase")]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Succeeded,
    Failed,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Running,
        Phase::Paused,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }

    pub fn active(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }
}

/// One line of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "RolloutEvent")]
pub struct Event {
    pub at: String,
    /// 1-based step number.
    pub step: usize,
    /// `check`, `start`, `step`, `pause`, `resume`, `promote`, `abort`, `retry`, `failed`, `succeeded`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    pub reason: String,
    pub actor: String,
    /// A check's figures: both arms, every test, what the step needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// Events kept per rollout.
pub const HISTORY: usize = 200;
/// Newest events that keep a check's full figures (the view shows as many).
pub const FIGURES_KEPT: usize = 20;

/// What is persisted of one route's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub route: String,
    pub canary: String,
    pub baseline: String,
    /// Digest of the `rollout` block this record walks; another block starts a new rollout.
    pub digest: String,
    pub phase: Phase,
    /// 0-based index into `steps`.
    pub step: usize,
    pub held_ms: u64,
    /// Passing and consecutive failing checks in this step.
    pub passes: u32,
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: String,
    pub step_started_at: String,
    /// Digest of the route as the controller last left it.
    pub expected: String,
    #[serde(default)]
    pub added: Added,
    /// Checks by verdict since the rollout started: pass, fail, inconclusive.
    #[serde(default)]
    pub checks: [u64; 3],
    /// The revision of the controller's last change to the route: in a fleet, a new leader adopts
    /// the changes its predecessor committed after it (and died before recording).
    #[serde(default)]
    pub revision: u64,
    /// Time the current step has run without a conclusive check (reset by `resume`): past
    /// `step_timeout` the step is starved.
    #[serde(default)]
    pub starved_ms: u64,
    #[serde(default)]
    pub history: VecDeque<Event>,
}
