//! Control calls by a person or a script (`start`, `pause`, `resume`, `abort`, `promote`, `retry`)
//! and the views of a rollout the admin API, `ctl` and the metrics read.

use super::controller::{find, step_words, ControlError, Phase, Rollouts, Run, Summary, ACTIONS};
use super::hooks;
use super::plan;
use super::view::RolloutView;
use crate::config::{RolloutConfig, RouteConfig, Step};
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
        controlled_here(state, route)?;
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
        let call = Call {
            state,
            ro: &ro,
            actor,
            reason,
            now,
        };
        match action {
            "start" => {
                let fresh = self.start(&call, r, run)?;
                *run = fresh;
            }
            "pause" => self.pause(&call, run)?,
            "resume" => self.resume(&call, run)?,
            "abort" => self.abort(&call, run)?,
            "promote" => {
                let phase = run.record.phase;
                if !phase.active() {
                    return conflict(format!(
                        "the rollout is {}: nothing to promote",
                        phase.as_str()
                    ));
                }
                let why = format!("{} at step {}", call.said("promoted"), run.record.step + 1);
                self.advance(state, &ro, run, actor, "rollout.promote", why, now)?;
            }
            "retry" => self.retry(&call, run)?,
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

    /// `start`: a new rollout from step 1 (the history and counts kept).
    fn start(&self, c: &Call<'_>, r: &RouteConfig, run: &mut Run) -> Result<Run, ControlError> {
        let phase = run.record.phase;
        if phase.active() {
            return conflict(format!(
                "the rollout is already {} at step {}; abort it first",
                phase.as_str(),
                run.record.step + 1
            ));
        }
        let ro = c.ro;
        let mut fresh = Run::new(r, ro, c.now);
        fresh.record.added = run.record.added.clone();
        fresh.record.history = std::mem::take(&mut run.record.history);
        fresh.record.checks = run.record.checks;
        fresh.enter_step(ro, 0, c.now);
        let why = format!(
            "{}; step 1/{}: {}",
            c.said("started"),
            ro.steps.len(),
            step_words(ro, 0)
        );
        self.commit_call(c, &mut fresh, "rollout.start", &why, |r, ro, a| {
            plan::take_back(r, a);
            plan::apply_step(r, ro, 0, a)
        })?;
        self.event(ro, &mut fresh, "start", c.actor, None, None, why);
        Ok(fresh)
    }

    /// Commits what a control call does to the route (`edit`), audited as `action` by its caller.
    fn commit_call(
        &self,
        c: &Call<'_>,
        run: &mut Run,
        action: &str,
        why: &str,
        edit: impl FnOnce(
            &mut RouteConfig,
            &RolloutConfig,
            &mut plan::Added,
        ) -> Result<(), plan::PlanError>,
    ) -> Result<(), ControlError> {
        self.commit(c.state, c.ro, run, c.actor, action, why, false, edit)
            .map_err(ControlError::Change)
    }

    /// `pause`: the step holds; no check moves it.
    fn pause(&self, c: &Call<'_>, run: &mut Run) -> Result<(), ControlError> {
        let phase = run.record.phase;
        if phase != Phase::Running {
            return conflict(format!("the rollout is {}, not running", phase.as_str()));
        }
        let why = c.said("paused");
        self.commit_call(c, run, "rollout.pause", &why, |_, _, _| Ok(()))?;
        run.record.phase = Phase::Paused;
        run.record.reason = Some(why.clone());
        self.event(c.ro, run, "pause", c.actor, None, None, why);
        Ok(())
    }

    /// `resume`: the step is applied again and judged afresh from now.
    fn resume(&self, c: &Call<'_>, run: &mut Run) -> Result<(), ControlError> {
        let (ro, phase, i) = (c.ro, run.record.phase, run.record.step);
        if phase != Phase::Paused {
            return conflict(format!("the rollout is {}, not paused", phase.as_str()));
        }
        if matches!(ro.steps.get(i).map(|s| &s.kind), Some(Step::Pause)) {
            return conflict(format!(
                "step {} is a pause: `promote` goes on to the next step",
                i + 1
            ));
        }
        let why = format!(
            "{}; step {}/{}: {} (re-applied)",
            c.said("resumed"),
            i + 1,
            ro.steps.len(),
            step_words(ro, i)
        );
        self.commit_call(c, run, "rollout.resume", &why, |r, ro, a| {
            plan::apply_step(r, ro, i, a)
        })?;
        run.record.phase = Phase::Running;
        run.record.reason = None;
        // A fresh window: the step is judged again from now, with a new step_timeout.
        run.record.failures = 0;
        run.record.starved_ms = 0;
        run.marks = None;
        run.last_check = c.now;
        self.event(ro, run, "resume", c.actor, None, None, why);
        Ok(())
    }

    /// `abort`: the canary's traffic goes back to the baseline.
    fn abort(&self, c: &Call<'_>, run: &mut Run) -> Result<(), ControlError> {
        let phase = run.record.phase;
        if !phase.active() {
            return conflict(format!(
                "the rollout is {}: nothing to abort",
                phase.as_str()
            ));
        }
        let why = format!("{}; canary rolled back", c.said("aborted"));
        self.commit_call(c, run, "rollout.abort", &why, plan::roll_back)?;
        run.record.phase = Phase::Aborted;
        run.record.reason = Some(why.clone());
        self.event(c.ro, run, "abort", c.actor, None, None, why);
        hooks::fire(
            &c.ro.webhooks,
            "rollback",
            self.payload(c.ro, run, "aborted"),
        );
        Ok(())
    }

    /// `retry`: a failed or aborted rollout takes up its step again.
    fn retry(&self, c: &Call<'_>, run: &mut Run) -> Result<(), ControlError> {
        let (ro, phase, i) = (c.ro, run.record.phase, run.record.step);
        if !matches!(phase, Phase::Failed | Phase::Aborted) {
            return conflict(format!(
                "the rollout is {}: only a failed or aborted rollout can be retried",
                phase.as_str()
            ));
        }
        let why = format!(
            "{}; step {}/{}: {} again",
            c.said("retried"),
            i + 1,
            ro.steps.len(),
            step_words(ro, i)
        );
        self.commit_call(c, run, "rollout.start", &why, |r, ro, a| {
            plan::apply_step(r, ro, i, a)
        })?;
        run.enter_step(ro, i, c.now);
        self.event(ro, run, "retry", c.actor, None, None, why);
        Ok(())
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

/// One control call: who makes it, why, on which rollout, and when.
struct Call<'a> {
    state: &'a State,
    ro: &'a RolloutConfig,
    actor: &'a str,
    reason: Option<&'a str>,
    now: Instant,
}

impl Call<'_> {
    /// What was done, by whom, and why ("paused by ops: checking the dashboards").
    fn said(&self, what: &str) -> String {
        match self.reason {
            Some(r) => format!("{what} by {}: {r}", self.actor),
            None => format!("{what} by {}", self.actor),
        }
    }
}

fn conflict<T>(m: String) -> Result<T, ControlError> {
    Err(ControlError::Conflict(m))
}

/// Whether a control call for `route` is taken on this instance: 404 for a route that does not
/// exist or has no rollout (on every instance, leader or not), and in a fleet, the leader's address
/// when another instance leads the rollout.
fn controlled_here(state: &State, route: &str) -> Result<(), ControlError> {
    let live = state.load();
    let r = find(&live, route)
        .ok_or_else(|| ControlError::NotFound(live.config.no_such_route(route)))?;
    if r.rollout.is_none() {
        return Err(ControlError::NotFound(format!(
            "route {route:?} has no rollout configured"
        )));
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
    Ok(())
}
