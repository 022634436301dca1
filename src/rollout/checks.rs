//! Judging a step: each `interval` the controller checks the canary against the baseline on their
//! counts since the step began ([`super::judge`]), records the check with every figure, and acts on
//! it: a pass held long enough takes the next step; `failure_limit` failed checks roll back or pause
//! (`on_failure`); a step not judged within `step_timeout` pauses as `starved`.
//!
//! The rollout's significance `1 - confidence` is split evenly over its judged (non-pause) steps, and
//! each step's share over its tests: the chance that an identical canary is ever failed, over the
//! whole rollout and however often it is checked, stays below `1 - confidence`.

use super::controller::{step_words, Phase, Rollouts, Run};
use super::hooks::{self, PreStep};
use super::judge::{self, Check, Gates, Outcome};
use super::plan;
use super::record::Event;
use crate::config::{RolloutConfig, Step};
use crate::metrics::Stats;
use crate::state::State;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a step may go without a conclusive check when `step_timeout` is not set.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);

/// The significance one step of `ro` may spend: `1 - confidence` over its judged steps.
pub fn step_alpha(ro: &RolloutConfig) -> f64 {
    let gates = Gates::from_config(&ro.gates);
    let judged = ro
        .steps
        .iter()
        .filter(|s| !matches!(s.kind, Step::Pause))
        .count()
        .max(1);
    (1.0 - gates.confidence) / judged as f64
}

/// Who reaches the canary in step `i`, in words (for what an inconclusive check needs).
pub fn reach(ro: &RolloutConfig, i: usize) -> String {
    let weight = plan::weight_at(ro, i);
    let rules: Vec<String> = ro
        .steps
        .iter()
        .take(i + 1)
        .filter_map(|s| match &s.kind {
            Step::Header(h) => Some(format!(
                "requests with {}",
                h.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
            Step::Clients(c) => Some(format!("requests of API clients {}", c.join(", "))),
            _ => None,
        })
        .collect();
    match ro.steps.get(i).map(|s| &s.kind) {
        Some(Step::Mirror(p)) => format!("{}% of requests are copied to the canary", p.get()),
        _ if weight > 0.0 && rules.is_empty() => {
            format!("the canary gets {weight}% of the split's traffic")
        }
        _ if weight > 0.0 => format!(
            "the canary gets {weight}% of the split's traffic and all {}",
            rules.join(" and ")
        ),
        _ if rules.is_empty() => "no request reaches the canary in this step".into(),
        _ => format!("only {} reach the canary", rules.join(" and ")),
    }
}

impl Rollouts {
    /// One check of the current step; may end the step, or the rollout.
    pub(super) fn check(&self, state: &State, ro: &RolloutConfig, run: &mut Run, now: Instant) {
        let step = run.record.step;
        let mut check = match self.pre_step(ro, run) {
            Some(c) => c,
            None => self.judge(state, ro, run),
        };
        let counts = &mut run.record.checks;
        check.number = counts.iter().sum::<u64>() + 1;
        match check.verdict {
            Outcome::Pass => {
                run.record.passes += 1;
                run.record.failures = 0;
                counts[0] += 1;
            }
            Outcome::Fail => {
                run.record.failures += 1;
                counts[1] += 1;
            }
            Outcome::Inconclusive => counts[2] += 1,
        }
        let summary = format!("{} (check {})", check.summary, check.number);
        let verdict = check.verdict;
        let gate = check.gate.clone();
        let event = Event {
            at: crate::time::now_rfc3339(),
            step: step + 1,
            event: "check".into(),
            verdict: Some(verdict.as_str().into()),
            gate: gate.clone(),
            reason: summary.clone(),
            actor: "rollout".into(),
            check: Some(check),
        };
        self.record_event(ro, run, event);
        if run.record.failures >= ro.failure_limit {
            self.fail(state, ro, run, Some(summary));
            return;
        }
        let hold = plan::hold_of(ro, step);
        if verdict == Outcome::Pass && run.record.held_ms >= hold.as_millis() as u64 {
            let reason = format!(
                "step {}/{} ({}) held {} with {} passing check(s), the last: {summary}",
                step + 1,
                ro.steps.len(),
                step_words(ro, step),
                humantime::format_duration(Duration::from_secs(run.record.held_ms / 1000)),
                run.record.passes
            );
            if let Err(e) = self.advance(state, ro, run, "rollout", "rollout.step", reason, now) {
                log::warn!(
                    "route {}: the next step was not taken: {e}",
                    run.record.route
                );
            }
        }
    }

    /// The `pre_step` webhooks of this step: `None` once they passed (or there are none), else the
    /// check they decide.
    fn pre_step(&self, ro: &RolloutConfig, run: &mut Run) -> Option<Check> {
        let hooks: Vec<_> = ro
            .webhooks
            .iter()
            .filter(|h| h.when == "pre_step")
            .cloned()
            .collect();
        if hooks.is_empty() || run.pre_step_passed {
            return None;
        }
        let body = self.payload(ro, run, "pre_step");
        let plain = |v, gate, words: &str| Some(Check::plain(v, gate, words.to_string()));
        match run.pre_step.as_ref().map(PreStep::result) {
            None => {
                run.pre_step = Some(PreStep::start(hooks, body));
                plain(Outcome::Inconclusive, None, "calling the pre_step webhooks")
            }
            Some(None) => plain(
                Outcome::Inconclusive,
                None,
                "waiting for the pre_step webhooks",
            ),
            Some(Some(Ok(()))) => {
                run.pre_step_passed = true;
                // The judged window starts once the step's acceptance test has passed.
                run.marks = None;
                None
            }
            Some(Some(Err(e))) => {
                run.pre_step = Some(PreStep::start(hooks, body));
                plain(
                    Outcome::Fail,
                    Some("pre_step"),
                    &format!("pre_step webhook {e}"),
                )
            }
        }
    }

    /// Canary against baseline since the step began (or was resumed), at the step's significance.
    fn judge(&self, state: &State, ro: &RolloutConfig, run: &mut Run) -> Check {
        let metrics = state.metrics();
        let (route, canary, baseline) = (&run.record.route, &ro.canary, &run.record.baseline);
        let mut now = BTreeMap::new();
        now.insert(
            String::new(),
            (
                metrics.totals(route, canary),
                metrics.totals(route, baseline),
            ),
        );
        if let Some(fleet) = crate::fleet::of(state) {
            // The fleet's traffic: every instance's counts as it published them (each second).
            match fleet.peer_counts(route) {
                Ok(peers) => {
                    for (id, targets) in peers {
                        let of = |t: &str| targets.get(t).cloned().unwrap_or_default();
                        now.insert(id, (of(canary), of(baseline)));
                    }
                }
                Err(e) => {
                    return Check::plain(
                        Outcome::Inconclusive,
                        None,
                        format!("the fleet's counts cannot be read from etcd: {e}"),
                    )
                }
            }
        }
        let Some(marks) = run.marks.as_mut() else {
            run.marks = Some(now);
            if let Some(Step::Mirror(_)) = ro.steps.get(run.record.step).map(|s| &s.kind) {
                // The step's fields and noise are learned from its own window, as its counts are.
                state.metrics().mirror_fields.reset(&run.record.route);
            }
            return Check::plain(
                Outcome::Inconclusive,
                None,
                "the step's window begins".into(),
            );
        };
        // Each instance's traffic since its own mark; an instance seen for the first time counts
        // from now on, one that left takes its window with it.
        let (mut c, mut b) = (Stats::default(), Stats::default());
        for (id, (nc, nb)) in now {
            match marks.get(&id) {
                Some((mc, mb)) => {
                    c.add(&nc.since(mc));
                    b.add(&nb.since(mb));
                }
                None => {
                    marks.insert(id, (nc, nb));
                }
            }
        }
        let gates = Gates::from_config(&ro.gates);
        let alpha = step_alpha(ro);
        let reach = reach(ro, run.record.step);
        let mut check = match ro.steps.get(run.record.step).map(|s| &s.kind) {
            Some(Step::Mirror(_)) => judge::judge_mirror(&gates, alpha, &c, &b, &reach),
            _ => judge::judge(&gates, alpha, &c, &b, &reach),
        };
        if check.gate.as_deref() == Some("max_mirror_diff_rate") {
            check.summary += &significant_fields(state, &run.record.route);
        }
        check
    }

    /// `failure_limit` failed checks: rolls the canary back and marks the rollout failed, or with
    /// `on_failure: pause` holds the step and pauses. `why`: the failed check, or `None` to retry a
    /// rollback that could not be committed before. Returns whether anything changed.
    pub(super) fn fail(
        &self,
        state: &State,
        ro: &RolloutConfig,
        run: &mut Run,
        why: Option<String>,
    ) -> bool {
        if let Some(why) = why {
            run.record.reason = Some(format!(
                "step {}/{} ({}): {why}",
                run.record.step + 1,
                ro.steps.len(),
                step_words(ro, run.record.step)
            ));
        }
        let reason = run.record.reason.clone().unwrap_or_default();
        if ro.on_failure.as_deref() == Some("pause") {
            let reason = format!(
                "{reason}; on_failure: pause: the step is held; `resume` judges it again, `promote` goes on, `abort` rolls back"
            );
            return self.hold(state, ro, run, Some("failed"), reason);
        }
        match self.commit(
            state,
            ro,
            run,
            "rollout",
            "rollout.failed",
            &reason,
            false,
            plan::roll_back,
        ) {
            Ok(()) => {
                run.record.phase = Phase::Failed;
                log::warn!(
                    "route {}: rollout failed, canary rolled back: {reason}",
                    run.record.route
                );
                self.event(ro, run, "failed", "rollout", Some("fail"), None, reason);
                hooks::fire(&ro.webhooks, "rollback", self.payload(ro, run, "failed"));
                true
            }
            Err(e) => {
                log::error!(
                    "route {}: rolling the canary back failed ({e}); trying again",
                    run.record.route
                );
                false
            }
        }
    }

    /// A step that could not be judged within `step_timeout` pauses the rollout with reason
    /// `starved`, saying what the step needs. Returns whether it did.
    pub(super) fn starved(&self, state: &State, ro: &RolloutConfig, run: &mut Run) -> bool {
        let timeout = step_timeout(ro);
        if run.record.starved_ms < timeout.as_millis() as u64 {
            return false;
        }
        let needs = run
            .record
            .history
            .iter()
            .rev()
            .find_map(|e| e.check.as_ref().and_then(|c| c.needs.clone()))
            .unwrap_or_else(|| reach(ro, run.record.step));
        let reason = format!(
            "starved: step {}/{} ({}) was not judged within step_timeout {}: {needs}; `resume` waits again, `promote` goes on without a verdict",
            run.record.step + 1,
            ro.steps.len(),
            step_words(ro, run.record.step),
            humantime::format_duration(timeout)
        );
        self.hold(state, ro, run, Some("starved"), reason)
    }

    /// Pauses the rollout at its step (routing unchanged) with `reason`, recorded (an audit entry by
    /// `rollout`) and notified; the event's verdict is `verdict` (`failed`, `starved`, or none for a
    /// person's change). Paused even when the entry cannot be recorded.
    pub(super) fn hold(
        &self,
        state: &State,
        ro: &RolloutConfig,
        run: &mut Run,
        verdict: Option<&str>,
        reason: String,
    ) -> bool {
        run.record.phase = Phase::Paused;
        run.record.reason = Some(reason.clone());
        if let Err(e) = self.commit(
            state,
            ro,
            run,
            "rollout",
            "rollout.pause",
            &reason,
            false,
            |_, _, _| Ok(()),
        ) {
            log::error!(
                "route {}: recording the pause failed: {e}",
                run.record.route
            );
        }
        log::warn!("route {}: rollout paused: {reason}", run.record.route);
        self.event(ro, run, "pause", "rollout", verdict, None, reason);
        true
    }
}

/// How long a step may go without a conclusive check (`step_timeout`, 1h by default).
pub fn step_timeout(ro: &RolloutConfig) -> Duration {
    ro.step_timeout
        .as_ref()
        .map_or(DEFAULT_STEP_TIMEOUT, |t| t.get())
}

/// The fields that failed a `max_mirror_diff_rate` gate, in words: `; significant fields: /price
/// (value, 20.0% of pairs, noise 0.0%), …`.
fn significant_fields(state: &State, route: &str) -> String {
    let Some(rule) = crate::metrics::fields::Rule::for_route(&state.load().table, route) else {
        return String::new();
    };
    let Some(report) = state.metrics().mirror_fields.report(route, &rule) else {
        return String::new();
    };
    let fields: Vec<String> = report
        .fields
        .iter()
        .filter(|f| f.significant)
        .take(5)
        .map(|f| {
            format!(
                "{} ({}, {:.1}% of pairs, noise {:.1}%)",
                f.path,
                f.kind.as_str(),
                f.shadow_rate * 100.0,
                f.noise_rate * 100.0
            )
        })
        .collect();
    if fields.is_empty() {
        return String::new();
    }
    format!("; significant fields: {}", fields.join(", "))
}
