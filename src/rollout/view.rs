//! What the admin API, `ctl` and the status page show of a rollout: [`RolloutView`] in full (`GET
//! /v1/routes/{name}/rollout`) and [`RolloutSummary`] beside each route (`GET /v1/status`).

use super::controller::{find, rollout_digest, step_words, Event, Phase, Record, Rollouts};
use super::judge::Check;
use super::plan;
use crate::config::Step;
use crate::state::State;
use serde::Serialize;
use std::time::Duration;

/// A route's rollout: its state and step, the plan, time held and left, counts, the newest events
/// and the last check's figures.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Rollout")]
pub struct RolloutView {
    pub route: String,
    /// The target the rollout walks up.
    pub canary: String,
    /// The target it is judged against (`null` while pending).
    pub baseline: Option<String>,
    /// `pending` until the controller takes the rollout up (within its next turn).
    #[schemars(extend("enum" = ["pending", "running", "paused", "succeeded", "failed", "aborted"]))]
    pub state: String,
    /// Why it is paused, failed or aborted.
    pub reason: Option<String>,
    /// The current step, from 1 (`null` while pending).
    pub step: Option<usize>,
    pub steps: usize,
    /// The current step in words ("10% of traffic to v2, hold 5m").
    pub phase: Option<String>,
    /// Every step in words, in order.
    pub plan: Vec<String>,
    /// The canary's share of the split now, 0 to 1.
    pub canary_share: f64,
    pub hold_seconds: Option<f64>,
    pub held_seconds: Option<f64>,
    /// Time left in the step while it runs (`null` when paused, waiting or finished).
    pub left_seconds: Option<f64>,
    pub interval_seconds: f64,
    /// Passing and consecutive failing checks in this step.
    pub passes: u32,
    pub failures: u32,
    pub failure_limit: u32,
    /// Checks by verdict since the rollout started.
    pub checks: CheckCounts,
    pub started_at: Option<String>,
    pub step_started_at: Option<String>,
    /// The newest events, oldest first.
    pub history: Vec<Event>,
    /// The figures of the newest check.
    pub last_check: Option<Check>,
    pub step_timeout_seconds: f64,
    /// What `failure_limit` failed checks do: `rollback` or `pause`.
    #[schemars(extend("enum" = ["rollback", "pause"]))]
    pub on_failure: String,
    /// In a fleet: the instance leading this rollout.
    pub leader: Option<Leader>,
}

/// Checks since the rollout started, by verdict.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct CheckCounts {
    pub pass: u64,
    pub fail: u64,
    pub inconclusive: u64,
}

/// The instance leading a rollout in a fleet.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Leader {
    pub instance: String,
    /// Its admin address, where control calls are handed.
    pub admin: Option<String>,
}

/// A route's rollout in one line of status.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RolloutSummary {
    #[schemars(extend("enum" = ["pending", "running", "paused", "succeeded", "failed", "aborted"]))]
    pub state: String,
    pub step: Option<usize>,
    pub steps: usize,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub canary_share: f64,
    pub left_seconds: Option<f64>,
}

impl RolloutView {
    pub fn summary(&self) -> RolloutSummary {
        RolloutSummary {
            state: self.state.clone(),
            step: self.step,
            steps: self.steps,
            phase: self.phase.clone(),
            reason: self.reason.clone(),
            canary_share: self.canary_share,
            left_seconds: self.left_seconds,
        }
    }
}

impl Rollouts {
    /// A route's rollout as the API shows it. `None` when the route does not exist or has no
    /// rollout.
    pub fn view(&self, state: &State, route: &str) -> Option<RolloutView> {
        let live = state.load();
        let r = find(&live, route)?;
        let ro = r.rollout.as_ref()?;
        let share = r.split.as_ref().map_or(0.0, |s| s.share(&ro.canary));
        // A rollout block the controller has not taken up yet (within its next turn) is pending.
        let digest = rollout_digest(ro);
        let own = self.record_of(route).filter(|r| r.digest == digest);
        // In a fleet, an instance that does not lead the rollout shows it as its leader last
        // saved it.
        let record = own.or_else(|| {
            let bytes = crate::fleet::of(state)?.followed(route)?;
            serde_json::from_slice::<Record>(&bytes)
                .ok()
                .filter(|r| r.digest == digest)
        });
        let leader = crate::fleet::of(state)
            .and_then(|f| f.leader_of(route))
            .map(|(instance, admin)| Leader { instance, admin });
        let mut view = RolloutView {
            route: route.to_string(),
            canary: ro.canary.clone(),
            baseline: None,
            state: "pending".into(),
            reason: None,
            step: None,
            steps: ro.steps.len(),
            phase: None,
            plan: ro.steps.iter().map(plan::describe).collect(),
            canary_share: (share * 1e4).round() / 1e4,
            hold_seconds: None,
            held_seconds: None,
            left_seconds: None,
            interval_seconds: ro.interval.get().as_secs_f64(),
            passes: 0,
            failures: 0,
            failure_limit: ro.failure_limit,
            checks: CheckCounts {
                pass: 0,
                fail: 0,
                inconclusive: 0,
            },
            started_at: None,
            step_started_at: None,
            history: Vec::new(),
            last_check: None,
            step_timeout_seconds: super::checks::step_timeout(ro).as_secs_f64(),
            on_failure: ro.on_failure.as_deref().unwrap_or("rollback").to_string(),
            leader,
        };
        let Some(rec) = record else {
            return Some(view);
        };
        let hold = plan::hold_of(ro, rec.step);
        let held = Duration::from_millis(rec.held_ms);
        let waiting = matches!(ro.steps.get(rec.step).map(|s| &s.kind), Some(Step::Pause));
        if rec.phase == Phase::Running && !waiting {
            view.left_seconds = Some(hold.saturating_sub(held).as_secs_f64());
        }
        let kept = rec
            .history
            .len()
            .saturating_sub(super::record::FIGURES_KEPT);
        view.last_check = rec.history.iter().rev().find_map(|e| e.check.clone());
        view.history = rec.history.into_iter().skip(kept).collect();
        view.baseline = Some(rec.baseline);
        view.state = rec.phase.as_str().to_string();
        view.reason = rec.reason;
        view.step = Some(rec.step + 1);
        view.phase = Some(step_words(ro, rec.step));
        view.hold_seconds = Some(hold.as_secs_f64());
        view.held_seconds = Some(held.as_secs_f64());
        view.passes = rec.passes;
        view.failures = rec.failures;
        let [pass, fail, inconclusive] = rec.checks;
        view.checks = CheckCounts {
            pass,
            fail,
            inconclusive,
        };
        view.started_at = Some(rec.started_at);
        view.step_started_at = Some(rec.step_started_at);
        Some(view)
    }

    /// The record of the rollout this instance runs on `route`, if any.
    fn record_of(&self, route: &str) -> Option<Record> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.runs.get(route).map(|run| run.record.clone())
    }
}
