//! Control calls by a person or a script (`start`, `pause`, `resume`, `abort`, `promote`, `retry`)
//! and the views of a rollout the admin API, `ctl` and the metrics read.

use super::controller::{
    duration, find, rollout_digest, step_words, ControlError, Event, Phase, Record, Rollouts, Run,
    Summary, ACTIONS,
};
use super::hooks;
use super::plan;
use crate::config::Step;
use crate::state::{ChangeError, State};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
    ) -> Result<Value, ControlError> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_handing_over() {
            return Err(ControlError::Change(ChangeError::HandingOver));
        }
        if let Some(fleet) = state.fleet() {
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

    /// A route's rollout: phase, step, time held and left, counts and recent history. `None` when the
    /// route does not exist or has no rollout.
    pub fn view(&self, state: &State, route: &str) -> Option<Value> {
        let live = state.load();
        let r = find(&live, route)?;
        let ro = r.rollout.as_ref()?;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let share = r.split.as_ref().map_or(0.0, |s| s.share(&ro.canary));
        // A rollout block the controller has not taken up yet (within its next turn) is pending.
        let digest = rollout_digest(ro);
        let own = inner
            .runs
            .get(route)
            .map(|run| run.record.clone())
            .filter(|r| r.digest == digest);
        drop(inner);
        // In a fleet, an instance that does not lead the rollout shows it as its leader last
        // saved it.
        let record = own.or_else(|| {
            let bytes = state.fleet()?.followed(route)?;
            serde_json::from_slice::<Record>(&bytes)
                .ok()
                .filter(|r| r.digest == digest)
        });
        let leader = state
            .fleet()
            .and_then(|f| f.leader_of(route))
            .map(|l| json!({"instance": l.0, "admin": l.1}));
        let Some(rec) = record else {
            return Some(json!({
                "route": route,
                "canary": ro.canary,
                "state": "pending",
                "steps": ro.steps.len(),
                "canary_share": share,
            }));
        };
        let rec = &rec;
        let hold = plan::hold_of(ro, rec.step);
        let held = Duration::from_millis(rec.held_ms);
        let waiting = matches!(ro.steps.get(rec.step).map(|s| &s.kind), Some(Step::Pause));
        let left = if rec.phase == Phase::Running && !waiting {
            Some(hold.saturating_sub(held).as_secs_f64())
        } else {
            None
        };
        let recent: Vec<&Event> = rec
            .history
            .iter()
            .rev()
            .take(super::record::FIGURES_KEPT)
            .collect();
        let last_check = rec.history.iter().rev().find_map(|e| e.check.as_ref());
        Some(json!({
            "route": route,
            "canary": rec.canary,
            "baseline": rec.baseline,
            "state": rec.phase.as_str(),
            "reason": rec.reason,
            "step": rec.step + 1,
            "steps": ro.steps.len(),
            "phase": step_words(ro, rec.step),
            "plan": ro.steps.iter().map(plan::describe).collect::<Vec<_>>(),
            "canary_share": (share * 1e4).round() / 1e4,
            "hold_seconds": hold.as_secs_f64(),
            "held_seconds": held.as_secs_f64(),
            "left_seconds": left,
            "interval_seconds": duration(&ro.interval, Duration::from_secs(30)).as_secs_f64(),
            "passes": rec.passes,
            "failures": rec.failures,
            "failure_limit": ro.failure_limit,
            "checks": {"pass": rec.checks[0], "fail": rec.checks[1], "inconclusive": rec.checks[2]},
            "started_at": rec.started_at,
            "step_started_at": rec.step_started_at,
            "history": recent.into_iter().rev().collect::<Vec<_>>(),
            "last_check": last_check,
            "step_timeout_seconds": ro.step_timeout.as_deref().map_or(super::checks::DEFAULT_STEP_TIMEOUT, |t| duration(t, super::checks::DEFAULT_STEP_TIMEOUT)).as_secs_f64(),
            "on_failure": ro.on_failure.as_deref().unwrap_or("rollback"),
            "leader": leader,
        }))
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
