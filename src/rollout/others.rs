//! Changes to a rollout's route that the controller did not make: someone else's edit (it pauses
//! the rollout, a rollback aborts it) and, in a fleet, a previous leader's unrecorded steps (adopted).

use super::controller::{find, route_digest, step_words, Phase, Rollouts, Run};
use super::hooks;
use super::plan::{self, Added};
use crate::config::{RolloutConfig, RouteConfig};
use crate::state::{Snapshot, State};
use std::time::Instant;

impl Rollouts {
    /// A change to the route by anyone else pauses the rollout (a rollback aborts it). Returns
    /// whether anything changed.
    pub(super) fn notice_others(
        &self,
        state: &State,
        live: &Snapshot,
        ro: &RolloutConfig,
        run: &mut Run,
        now: Instant,
    ) -> bool {
        let Some(r) = find(live, &run.record.route) else {
            return false;
        };
        if route_digest(r) == run.record.expected {
            return false;
        }
        let route = run.record.route.clone();
        let last = state
            .audit()
            .into_iter()
            .rev()
            .find(|e| e.route.as_deref() == Some(route.as_str()) || e.route.is_none());
        let (who, action, revision) = match &last {
            Some(e) => (e.actor.clone(), e.action.clone(), e.revision),
            None => ("someone".to_string(), "a change".to_string(), live.revision),
        };
        if matches!(action.as_str(), "config.reload" | "config.put") {
            // A whole new config (the file reloaded, or PUT) that leaves this route as it was, apart
            // from the step's routing it reset: the step is put back and the rollout goes on.
            let step = run.record.step;
            let mut probe = r.clone();
            let mut fresh = Added::default();
            if plan::apply_step(&mut probe, ro, step, &mut fresh).is_ok()
                && route_digest(&probe) == run.record.expected
            {
                let reason = format!(
                    "{action} by {who} (revision {revision}) left route {route} as it was but reset its routing: step {}/{} ({}) put back",
                    step + 1,
                    ro.steps.len(),
                    step_words(ro, step)
                );
                run.record.added = Added::default();
                match self.commit(
                    state,
                    ro,
                    run,
                    "rollout",
                    "rollout.resume",
                    &reason,
                    false,
                    |r, ro, a| plan::apply_step(r, ro, step, a),
                ) {
                    Ok(()) => {
                        self.event(ro, run, "resume", "rollout", None, None, reason);
                        return true;
                    }
                    Err(e) => {
                        log::error!("route {route}: putting step {} back failed: {e}", step + 1)
                    }
                }
            }
        }
        if action == "route.rollback" {
            let reason =
                format!("route rolled back by {who} (revision {revision}): rollout aborted");
            run.record.phase = Phase::Aborted;
            run.record.reason = Some(reason.clone());
            if let Err(e) = self.commit(
                state,
                ro,
                run,
                "rollout",
                "rollout.abort",
                &reason,
                false,
                plan::roll_back,
            ) {
                log::error!("route {route}: taking the canary's rules and mirror back failed: {e}");
                run.record.expected = route_digest(r);
            }
            self.event(ro, run, "abort", &who, None, None, reason);
            hooks::fire(&ro.webhooks, "rollback", self.payload(ro, run, "aborted"));
        } else {
            let reason = format!(
                "route changed by {who} ({action}, revision {revision}): rollout paused; `resume` puts step {} back, `abort` ends it",
                run.record.step + 1
            );
            run.record.expected = route_digest(r);
            self.hold(state, ro, run, None, reason);
        }
        run.last_check = now;
        true
    }

    /// A new leader's first look at a rollout it read from etcd: changes to the route committed by
    /// the controller after the record's revision were made by the previous leader, which died
    /// before recording them. They are adopted (the step it moved to, the verdict it reached), so
    /// no step is taken twice or skipped. A change by anyone else is left to [`Self::notice_others`].
    pub(super) fn adopt(&self, state: &State, r: &RouteConfig, ro: &RolloutConfig, run: &mut Run) {
        if route_digest(r) == run.record.expected || run.record.revision == 0 {
            return;
        }
        let since: Vec<_> = state
            .audit()
            .into_iter()
            .filter(|e| e.revision > run.record.revision)
            .filter(|e| e.route.as_deref() == Some(r.name.as_str()) || e.route.is_none())
            .collect();
        if since.is_empty() || since.iter().any(|e| e.actor != "rollout") {
            return;
        }
        let now = Instant::now();
        for e in &since {
            match e.action.as_str() {
                "rollout.step" => {
                    let next = run.record.step + 1;
                    run.enter_step(ro, next.min(ro.steps.len().saturating_sub(1)), now);
                }
                "rollout.succeeded" => run.record.phase = Phase::Succeeded,
                "rollout.failed" => run.record.phase = Phase::Failed,
                "rollout.abort" => run.record.phase = Phase::Aborted,
                "rollout.pause" => run.record.phase = Phase::Paused,
                _ => {}
            }
            run.record.reason = if run.record.phase == Phase::Running {
                None
            } else {
                e.reason.clone()
            };
        }
        let last = since.last().map_or(run.record.revision, |e| e.revision);
        run.record.revision = last;
        run.record.expected = route_digest(r);
        let reason = format!(
            "took over from the previous leader, adopting its revision(s) {} not yet recorded: step {}/{} ({})",
            since
                .iter()
                .map(|e| format!("{} {}", e.revision, e.action))
                .collect::<Vec<_>>()
                .join(", "),
            run.record.step + 1,
            ro.steps.len(),
            step_words(ro, run.record.step)
        );
        log::warn!("route {}: {reason}", r.name);
        self.event(ro, run, "adopt", "rollout", None, None, reason);
    }
}
