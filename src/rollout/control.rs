//! Control calls by a person or a script (`start`, `pause`, `resume`, `abort`, `promote`, `retry`)
//! and the views of a rollout the admin API, `ctl` and the metrics read.

use super::controller::{find, step_words, ControlError, Phase, Rollouts, Run, Summary, ACTIONS};
use super::hooks;
use super::plan;
use super::view::RolloutView;
use crate::config::Step;
use crate::state::{ChangeError, State};
use std::time::Instant;

impl Rollouts {
    /// A control call by a person (or a script): `start`, `pause`, `resume`, `abort`, `promote`,
    /// `retry`. Returns the rollout as [`Rollouts::view`] shows it.
    pub fn control(
        &self,
        state: &State,
        route: &str,
        action: &str,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<RolloutView, ControlError> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_handing_over() {
            return Err(ControlError::Change(ChangeError::HandingOver));
        }
        // A route that does not exist, or has no rollout, is 404 on every instance, leader or not.
        {
            let live = state.load();
            let r = find(&live, route)
                .ok_or_else(|| ControlError::NotFound(live.config.no_such_route(route)))?;
            if r.rollout.is_none() {
                return Err(ControlError::NotFound(format!(
                    "route {route:?} has no rollout configured"
                )));
            }
        }
        if let Some(fleet) = crate::fleet::of(state) {
            if !fleet.leads(route) {
                let leader = fleet.leader_of(route);
                return Err(ControlError::Elsewhere {
                    admin: leader.as_ref().and_then(|l| l.1.clone()),
                    leader: leader.map(|l| l.0),
                });
            }
        }
        self.sync(&mut inner, state, now);
        let live = state.load();
        let r = find(&live, route)
            .ok_or_else(|| ControlError::NotFound(live.config.no_such_route(route)))?;
        let ro = r.rollout.clone().ok_or_else(|| {
            ControlError::NotFound(format!("route {route:?} has no rollout configured"))
        })?;
        let run = inner.runs.get_mut(route).ok_or_else(|| {
            ControlError::NotFound(format!("route {route:?} has no rollout state"))
        })?;
        let said = |what: &str| match reason {
            Some(r) => format!("{what} by {actor}: {r}"),
            None => format!("{what} by {actor}"),
        };
        let step_no = run.record.step + 1;
        let phase = run.record.phase;
        let conflict = |m: String| Err(ControlError::Conflict(m));
        match action {
            "start" => {
                if phase.active() {
                    return conflict(format!(
                        "the rollout is already {} at step {step_no}; abort it first",
                        phase.as_str()
                    ));
                }
                let mut fresh = Run::new(r, &ro, now);
                fresh.record.added = run.record.added.clone();
                fresh.record.history = std::mem::take(&mut run.record.history);
                fresh.record.checks = run.record.checks;
                fresh.enter_step(&ro, 0, now);
                let why = format!(
                    "{}; step 1/{}: {}",
                    said("started"),
                    ro.steps.len(),
                    step_words(&ro, 0)
                );
                self.commit(
                    state,
                    &ro,
                    &mut fresh,
                    actor,
                    "rollout.start",
                    &why,
                    false,
                    |r, ro, a| {
                        plan::take_back(r, a);
                        plan::apply_step(r, ro, 0, a)
                    },
                )
                .map_err(ControlError::Change)?;
                self.event(&ro, &mut fresh, "start", actor, None, None, why);
                *run = fresh;
            }
            "pause" => {
                if phase != Phase::Running {
                    return conflict(format!("the rollout is {}, not running", phase.as_str()));
                }
                let why = said("paused");
                self.commit(
                    state,
                    &ro,
                    run,
                    actor,
                    "rollout.pause",
                    &why,
                    false,
                    |_, _, _| Ok(()),
                )
                .map_err(ControlError::Change)?;
                run.record.phase = Phase::Paused;
                run.record.reason = Some(why.clone());
                self.event(&ro, run, "pause", actor, None, None, why);
            }
            "resume" => {
                if phase != Phase::Paused {
                    return conflict(format!("the rollout is {}, not paused", phase.as_str()));
                }
                if matches!(
                    ro.steps.get(run.record.step).map(|s| &s.kind),
                    Some(Step::Pause)
                ) {
                    return conflict(format!(
                        "step {step_no} is a pause: `promote` goes on to the next step"
                    ));
                }
                let why = format!(
                    "{}; step {step_no}/{}: {} (re-applied)",
                    said("resumed"),
                    ro.steps.len(),
                    step_words(&ro, run.record.step)
                );
                let i = run.record.step;
                self.commit(
                    state,
                    &ro,
                    run,
                    actor,
                    "rollout.resume",
                    &why,
                    false,
                    |r, ro, a| plan::apply_step(r, ro, i, a),
                )
                .map_err(ControlError::Change)?;
                run.record.phase = Phase::Running;
                run.record.reason = None;
                // A fresh window: the step is judged again from now, with a new step_timeout.
                run.record.failures = 0;
                run.record.starved_ms = 0;
                run.marks = None;
                run.last_check = now;
                self.event(&ro, run, "resume", actor, None, None, why);
            }
            "abort" => {
                if !phase.active() {
                    return conflict(format!(
                        "the rollout is {}: nothing to abort",
                        phase.as_str()
                    ));
                }
                let why = format!("{}; canary rolled back", said("aborted"));
                self.commit(
                    state,
                    &ro,
                    run,
                    actor,
                    "rollout.abort",
                    &why,
                    false,
                    plan::roll_back,
                )
                .map_err(ControlError::Change)?;
                run.record.phase = Phase::Aborted;
                run.record.reason = Some(why.clone());
                self.event(&ro, run, "abort", actor, None, None, why);
                hooks::fire(&ro.webhooks, "rollback", self.payload(&ro, run, "aborted"));
            }
            "promote" => {
                if !phase.active() {
                    return conflict(format!(
                        "the rollout is {}: nothing to promote",
                        phase.as_str()
                    ));
                }
                let why = format!("{} at step {step_no}", said("promoted"));
                self.advance(state, &ro, run, actor, "rollout.promote", why, now)?;
            }
            "retry" => {
                if !matches!(phase, Phase::Failed | Phase::Aborted) {
                    return conflict(format!(
                        "the rollout is {}: only a failed or aborted rollout can be retried",
                        phase.as_str()
                    ));
                }
                let i = run.record.step;
                let why = format!(
                    "{}; step {step_no}/{}: {} again",
                    said("retried"),
                    ro.steps.len(),
                    step_words(&ro, i)
                );
                self.commit(
                    state,
                    &ro,
                    run,
                    actor,
                    "rollout.start",
                    &why,
                    false,
                    |r, ro, a| plan::apply_step(r, ro, i, a),
                )
                .map_err(ControlError::Change)?;
                run.enter_step(&ro, i, now);
                self.event(&ro, run, "retry", actor, None, None, why);
            }
            other => {
                return Err(ControlError::NotFound(format!(
                    "no rollout action {other:?} (expected one of: {})",
                    ACTIONS.join(", ")
                )))
            }
        }
        inner.dirty = true;
        self.save(&mut inner, state, now);
        drop(inner);
        self.view(state, route)
            .ok_or_else(|| ControlError::NotFound(format!("no such route {route:?}")))
    }

    /// Every rollout's phase, step and counts, for the metrics.
    pub fn summaries(&self) -> Vec<Summary> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .runs
            .values()
            .map(|run| Summary {
                route: run.record.route.clone(),
                phase: run.record.phase,
                step: run.record.step + 1,
                checks: run.record.checks,
            })
            .collect()
    }

    /// Notifications that could not be queued, and those given up after their retries.
    pub fn notify_losses(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.notifier.dropped.load(Relaxed),
            self.notifier.failed.load(Relaxed),
        )
    }
}
