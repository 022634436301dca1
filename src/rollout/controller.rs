//! The rollout controller (SPEC §6): walks every route that has a `rollout` through its steps, judges
//! the canary against the baseline every `interval`, rolls it back on `failure_limit` consecutive
//! failed checks, and takes control calls (`start`, `pause`, `resume`, `abort`, `promote`, `retry`).
//!
//! - Every change of routing is a revision through the one writer ([`State::change`]): actor `rollout`
//!   for the controller's own steps and verdicts, the caller's name for control calls.
//! - A change to the route by anyone else (the API, a reload) pauses the rollout and says who did it;
//!   a person's rollback aborts it. The controller never overwrites such a change: its own edits are
//!   refused when the route is no longer what it left.
//! - A changed `rollout` block (reload, PUT) starts the rollout again from its first step.
//! - State (step, time held, counts, history) is kept in `state_dir/rollouts.json`, written every
//!   second while a rollout runs and at every transition, and read at start: a restart or an upgrade
//!   continues the same step with the time it had held.
//! - Each check compares the canary's and the baseline's counts since the step began: too few canary
//!   requests is inconclusive (wait). The significance is spent over the rollout's checks, so looking
//!   often does not make a rollback by chance likelier.

use super::hooks::{self, Notifier, PreStep};
use super::judge::{self, Gates, Verdict};
use super::plan::{self, Added};
use crate::config::{parse, RolloutConfig, RouteConfig, Step};
use crate::metrics::Stats;
use crate::state::{sha256_hex, store, Change, ChangeError, Snapshot, State};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

    fn active(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }
}

/// One line of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// Events kept per rollout.
const HISTORY: usize = 200;

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
    /// Conclusive checks since the rollout started: the significance each check requires shrinks
    /// with it ([`judge::alpha_for_check`]).
    #[serde(default)]
    pub conclusive: u64,
    #[serde(default)]
    pub history: VecDeque<Event>,
}

/// A record and what is kept of it in memory only.
struct Run {
    record: Record,
    /// Totals of canary and baseline at the start of the current check window, by instance (`""`:
    /// this one; in a fleet, each other instance's as it published them).
    marks: Option<BTreeMap<String, (Stats, Stats)>>,
    last_tick: Instant,
    last_check: Instant,
    pre_step: Option<PreStep>,
    pre_step_passed: bool,
}

#[derive(Default)]
struct Inner {
    runs: BTreeMap<String, Run>,
    loaded: bool,
    last_saved: Option<Instant>,
    dirty: bool,
    /// The live revision the last turn looked at: configured rollouts and changes by others can only
    /// appear with a new one.
    seen_revision: Option<u64>,
    /// In a fleet: a rollout could not be read from etcd; the next turn tries again.
    resync: bool,
}

/// Why a control call was refused.
#[derive(Debug)]
pub enum ControlError {
    NotFound(String),
    Conflict(String),
    Change(ChangeError),
    /// In a fleet, another instance leads the route's rollout: control calls go there. Its id and
    /// admin address (`None`: no leader is known now).
    Elsewhere {
        leader: Option<String>,
        admin: Option<String>,
    },
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotFound(m) | ControlError::Conflict(m) => f.write_str(m),
            ControlError::Change(e) => write!(f, "{e}"),
            ControlError::Elsewhere { leader: Some(id), admin } => write!(
                f,
                "instance {id} leads this rollout in the fleet; send control calls to its admin API ({})",
                admin.as_deref().unwrap_or("address unknown")
            ),
            ControlError::Elsewhere { leader: None, .. } => f.write_str(
                "no instance of the fleet leads this rollout now (etcd unreachable, or a leader is being elected); retry in a moment",
            ),
        }
    }
}

/// One rollout's figures for the metrics.
pub struct Summary {
    pub route: String,
    pub phase: Phase,
    /// 1-based.
    pub step: usize,
    pub checks: [u64; 3],
}

/// Every rollout of this instance.
#[derive(Default)]
pub struct Rollouts {
    inner: Mutex<Inner>,
    notifier: Notifier,
}

/// The actions of `POST /v1/routes/{name}/rollout/{action}`.
pub const ACTIONS: [&str; 6] = ["start", "pause", "resume", "abort", "promote", "retry"];

fn route_digest(r: &RouteConfig) -> String {
    let mut r = r.clone();
    r.rollout = None;
    sha256_hex(serde_json::to_string(&r).unwrap_or_default().as_bytes())
}

fn rollout_digest(ro: &RolloutConfig) -> String {
    sha256_hex(serde_json::to_string(ro).unwrap_or_default().as_bytes())
}

fn find<'a>(s: &'a Snapshot, route: &str) -> Option<&'a RouteConfig> {
    s.config.routes.iter().find(|r| r.name == route)
}

fn duration(text: &str, default: Duration) -> Duration {
    parse::duration(text).unwrap_or(default)
}

impl Run {
    fn new(r: &RouteConfig, ro: &RolloutConfig, now: Instant) -> Run {
        let at = store::now_rfc3339();
        Run {
            record: Record {
                route: r.name.clone(),
                canary: ro.canary.clone(),
                baseline: r
                    .split
                    .as_ref()
                    .and_then(|s| s.baseline_name())
                    .unwrap_or_default()
                    .to_string(),
                digest: rollout_digest(ro),
                phase: Phase::Running,
                step: 0,
                held_ms: 0,
                passes: 0,
                failures: 0,
                reason: None,
                started_at: at.clone(),
                step_started_at: at,
                expected: route_digest(r),
                added: Added::default(),
                checks: [0; 3],
                revision: 0,
                conclusive: 0,
                history: VecDeque::new(),
            },
            marks: None,
            last_tick: now,
            last_check: now,
            pre_step: None,
            pre_step_passed: false,
        }
    }

    fn resumed(record: Record, now: Instant) -> Run {
        Run {
            record,
            marks: None,
            last_tick: now,
            last_check: now,
            pre_step: None,
            pre_step_passed: false,
        }
    }

    /// Begins step `i`: nothing held, nothing counted, a fresh window.
    fn enter_step(&mut self, ro: &RolloutConfig, i: usize, now: Instant) {
        let r = &mut self.record;
        r.step = i;
        r.held_ms = 0;
        r.passes = 0;
        r.failures = 0;
        r.step_started_at = store::now_rfc3339();
        self.marks = None;
        self.last_check = now;
        self.pre_step = None;
        self.pre_step_passed = false;
        if matches!(ro.steps.get(i).map(|s| &s.kind), Some(Step::Pause)) {
            r.phase = Phase::Paused;
            r.reason = Some(format!("step {} is a pause: waiting for promote", i + 1));
        } else {
            r.phase = Phase::Running;
            r.reason = None;
        }
    }
}

impl Rollouts {
    /// One turn of the controller: picks up configured and removed rollouts, notices changes made by
    /// others, judges whatever is due, and saves the state. Called about five times a second.
    pub fn tick(&self, state: &State) {
        if state.is_handing_over() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let revision = state.load().revision;
        let mut changed =
            inner.seen_revision != Some(revision) || std::mem::take(&mut inner.resync);
        if let Some(fleet) = state.fleet() {
            // In a fleet, this instance walks only the rollouts it leads; one it stops leading is
            // forgotten here (its leader keeps it in etcd), one it starts leading is read from there.
            let before = inner.runs.len();
            inner.runs.retain(|route, _| fleet.leads(route));
            let live = state.load();
            let gained = live.config.routes.iter().any(|r| {
                r.rollout.is_some() && fleet.leads(&r.name) && !inner.runs.contains_key(&r.name)
            });
            changed |= gained || inner.runs.len() != before;
        }
        if changed {
            self.sync(&mut inner, state, now);
        }
        let names: Vec<String> = inner.runs.keys().cloned().collect();
        let mut any_running = false;
        for name in names {
            let live = state.load();
            let Some(ro) = find(&live, &name).and_then(|r| r.rollout.clone()) else {
                continue;
            };
            let Some(run) = inner.runs.get_mut(&name) else {
                continue;
            };
            let elapsed = now.saturating_duration_since(run.last_tick);
            run.last_tick = now;
            if !run.record.phase.active() {
                continue;
            }
            let mut dirty = changed && self.notice_others(state, &live, &ro, run, now);
            if run.record.phase == Phase::Running {
                any_running = true;
                run.record.held_ms += elapsed.as_millis() as u64;
                if run.record.failures >= ro.failure_limit {
                    // A rollback that could not be committed at its check is tried again.
                    dirty |= self.fail(state, &ro, run, None);
                } else if now.saturating_duration_since(run.last_check)
                    >= duration(&ro.interval, Duration::from_secs(30))
                {
                    run.last_check = now;
                    self.check(state, &ro, run, now);
                    dirty = true;
                }
            }
            inner.dirty |= dirty;
        }
        inner.seen_revision = Some(revision);
        let due = inner
            .last_saved
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if inner.dirty || (any_running && due) {
            self.save(&mut inner, state, now);
        }
    }

    /// Loads the saved state once, starts rollouts whose block is new or changed, and forgets those
    /// whose route no longer has one.
    fn sync(&self, inner: &mut Inner, state: &State, now: Instant) {
        if !inner.loaded {
            inner.loaded = true;
            if let Some(saved) = state.load_rollouts() {
                match serde_json::from_slice::<BTreeMap<String, Record>>(&saved) {
                    Ok(records) => {
                        for (name, record) in records {
                            inner.runs.insert(name, Run::resumed(record, now));
                        }
                    }
                    Err(e) => log::error!("rollouts.json cannot be read ({e}); rollouts start again from their first step"),
                }
            }
        }
        let live = state.load();
        let configured: Vec<(RouteConfig, RolloutConfig)> = live
            .config
            .routes
            .iter()
            .filter(|r| state.fleet().is_none_or(|f| f.leads(&r.name)))
            .filter_map(|r| r.rollout.clone().map(|ro| (r.clone(), ro)))
            .collect();
        if let Some(fleet) = state.fleet() {
            for (r, ro) in &configured {
                if inner.runs.contains_key(&r.name) {
                    continue;
                }
                match fleet.load_rollout(&r.name) {
                    Ok(Some(bytes)) => match serde_json::from_slice::<Record>(&bytes) {
                        Ok(record) => {
                            let mut run = Run::resumed(record, now);
                            if run.record.digest == rollout_digest(ro) {
                                self.adopt(state, r, ro, &mut run);
                            }
                            log::info!(
                                "route {}: leading its rollout from step {} ({}), {} held",
                                r.name,
                                run.record.step + 1,
                                run.record.phase.as_str(),
                                humantime::format_duration(Duration::from_secs(
                                    run.record.held_ms / 1000
                                ))
                            );
                            inner.runs.insert(r.name.clone(), run);
                            inner.dirty = true;
                        }
                        Err(e) => log::error!(
                            "route {}: the rollout state in etcd cannot be read ({e}); it starts again",
                            r.name
                        ),
                    },
                    Ok(None) => {}
                    Err(e) => {
                        // Not known yet whether a rollout is under way: wait for etcd rather than
                        // start one again.
                        log::warn!("route {}: reading its rollout from etcd: {e}", r.name);
                        inner.resync = true;
                        return;
                    }
                }
            }
        }

        inner.runs.retain(|name, _| {
            let keep = configured.iter().any(|(r, _)| &r.name == name);
            if !keep {
                log::info!(
                    "route {name}: no rollout configured any more; its rollout state is dropped"
                );
            }
            keep
        });
        for (r, ro) in configured {
            let digest = rollout_digest(&ro);
            let previous = match inner.runs.get(&r.name) {
                Some(run) if run.record.digest == digest => continue,
                Some(_) => inner.runs.remove(&r.name),
                None => None,
            };
            let mut run = Run::new(&r, &ro, now);
            if let Some(old) = &previous {
                run.record.added = old.record.added.clone();
                run.record.history = old.record.history.clone();
                run.record.checks = old.record.checks;
            }
            let why = if previous.is_some() {
                format!(
                    "rollout block changed (revision {}): starting again",
                    live.revision
                )
            } else {
                format!(
                    "rollout of {} configured (revision {})",
                    ro.canary, live.revision
                )
            };
            run.enter_step(&ro, 0, now);
            let reason = format!("{why}; step 1/{}: {}", ro.steps.len(), step_words(&ro, 0));
            match self.commit(
                state,
                &ro,
                &mut run,
                "rollout",
                "rollout.start",
                &reason,
                false,
                |r, ro, a| {
                    plan::take_back(r, a);
                    plan::apply_step(r, ro, 0, a)
                },
            ) {
                Ok(()) => {
                    self.event(&ro, &mut run, "start", "rollout", None, None, reason);
                }
                Err(e) => {
                    run.record.phase = Phase::Paused;
                    run.record.reason = Some(format!("could not start: {e}"));
                    log::error!("route {}: rollout could not start: {e}", r.name);
                }
            }
            inner.runs.insert(r.name.clone(), run);
            inner.dirty = true;
        }
    }

    /// A change to the route by anyone else pauses the rollout (a rollback aborts it). Returns
    /// whether anything changed.
    fn notice_others(
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
            run.record.phase = Phase::Paused;
            run.record.reason = Some(reason.clone());
            run.record.expected = route_digest(r);
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
                log::error!("route {route}: recording the pause failed: {e}");
            }
            self.event(ro, run, "pause", "rollout", None, None, reason);
        }
        run.last_check = now;
        true
    }

    /// One check of the current step; may end the step, or the rollout.
    fn check(&self, state: &State, ro: &RolloutConfig, run: &mut Run, now: Instant) {
        let step = run.record.step;
        let verdict = match self.pre_step(ro, run) {
            Some(v) => v,
            None => self.judge(state, ro, run),
        };
        let (name, gate, reason) = match &verdict {
            Verdict::Pass(r) => ("pass", None, r.clone()),
            Verdict::Fail { gate, reason } => ("fail", Some(gate.to_string()), reason.clone()),
            Verdict::Inconclusive(r) => ("inconclusive", None, r.clone()),
        };
        match verdict {
            Verdict::Pass(_) => {
                run.record.passes += 1;
                run.record.failures = 0;
                run.record.checks[0] += 1;
            }
            Verdict::Fail { .. } => {
                run.record.failures += 1;
                run.record.checks[1] += 1;
            }
            Verdict::Inconclusive(_) => run.record.checks[2] += 1,
        }
        self.event(
            ro,
            run,
            "check",
            "rollout",
            Some(name),
            gate.clone(),
            reason.clone(),
        );
        if run.record.failures >= ro.failure_limit {
            let why = match &gate {
                Some(g) => format!("{g}: {reason}"),
                None => reason,
            };
            self.fail(state, ro, run, Some(why));
            return;
        }
        let hold = plan::hold_of(ro, step);
        if name == "pass" && run.record.held_ms >= hold.as_millis() as u64 {
            let reason = format!(
                "step {}/{} ({}) held {} with {} passing check(s)",
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
    /// verdict of this check.
    fn pre_step(&self, ro: &RolloutConfig, run: &mut Run) -> Option<Verdict> {
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
        match run.pre_step.as_ref().map(PreStep::result) {
            None => {
                run.pre_step = Some(PreStep::start(hooks, body));
                Some(Verdict::Inconclusive(
                    "calling the pre_step webhooks".into(),
                ))
            }
            Some(None) => Some(Verdict::Inconclusive(
                "waiting for the pre_step webhooks".into(),
            )),
            Some(Some(Ok(()))) => {
                run.pre_step_passed = true;
                // The judged window starts once the step's acceptance test has passed.
                run.marks = None;
                None
            }
            Some(Some(Err(e))) => {
                run.pre_step = Some(PreStep::start(hooks, body));
                Some(Verdict::Fail {
                    gate: "pre_step",
                    reason: e,
                })
            }
        }
    }

    /// Canary against baseline since the step began (or was resumed). Each conclusive check spends a
    /// smaller share of the significance ([`judge::alpha_for_check`]), while the growing window makes
    /// a real difference ever clearer.
    fn judge(&self, state: &State, ro: &RolloutConfig, run: &mut Run) -> Verdict {
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
        if let Some(fleet) = state.fleet() {
            // The fleet's traffic: every instance's counts as it published them (each second).
            match fleet.peer_counts(route) {
                Ok(peers) => {
                    for (id, targets) in peers {
                        let of = |t: &str| targets.get(t).cloned().unwrap_or_default();
                        now.insert(id, (of(canary), of(baseline)));
                    }
                }
                Err(e) => {
                    return Verdict::Inconclusive(format!(
                        "the fleet's counts cannot be read from etcd: {e}"
                    ))
                }
            }
        }
        let Some(marks) = run.marks.as_mut() else {
            run.marks = Some(now);
            return Verdict::Inconclusive("the step's window begins".into());
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
        let alpha = judge::alpha_for_check(&gates, run.record.conclusive + 1);
        let verdict = match ro.steps.get(run.record.step).map(|s| &s.kind) {
            Some(Step::Mirror(_)) => judge::judge_mirror(&gates, alpha, &c, &b),
            _ => judge::judge_at(&gates, alpha, &c, &b),
        };
        if !matches!(verdict, Verdict::Inconclusive(_)) {
            run.record.conclusive += 1;
        }
        verdict
    }

    /// Rolls the canary back and marks the rollout failed. `why`: the failed check, or `None` to retry
    /// a rollback that could not be committed before. Returns whether anything changed.
    fn fail(&self, state: &State, ro: &RolloutConfig, run: &mut Run, why: Option<String>) -> bool {
        if let Some(why) = why {
            run.record.reason = Some(format!(
                "step {}/{} ({}): {why}",
                run.record.step + 1,
                ro.steps.len(),
                step_words(ro, run.record.step)
            ));
        }
        let reason = run.record.reason.clone().unwrap_or_default();
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

    /// Moves to the next step, or ends the rollout with the canary at 100% after the last.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &self,
        state: &State,
        ro: &RolloutConfig,
        run: &mut Run,
        actor: &str,
        action: &str,
        why: String,
        now: Instant,
    ) -> Result<(), ControlError> {
        let next = run.record.step + 1;
        if next >= ro.steps.len() {
            let reason = format!(
                "{why}; all {} steps done: {} at 100%",
                ro.steps.len(),
                ro.canary
            );
            let action = if action == "rollout.promote" {
                action
            } else {
                "rollout.succeeded"
            };
            self.commit(
                state,
                ro,
                run,
                actor,
                action,
                &reason,
                actor == "rollout",
                plan::complete,
            )
            .map_err(ControlError::Change)?;
            run.record.phase = Phase::Succeeded;
            run.record.reason = Some(reason.clone());
            log::info!("route {}: rollout succeeded: {reason}", run.record.route);
            self.event(ro, run, "succeeded", actor, Some("pass"), None, reason);
            hooks::fire(
                &ro.webhooks,
                "post_rollout",
                self.payload(ro, run, "succeeded"),
            );
            return Ok(());
        }
        let reason = format!(
            "{why}; step {}/{}: {}",
            next + 1,
            ro.steps.len(),
            step_words(ro, next)
        );
        self.commit(
            state,
            ro,
            run,
            actor,
            action,
            &reason,
            actor == "rollout",
            |r, ro, a| plan::apply_step(r, ro, next, a),
        )
        .map_err(ControlError::Change)?;
        run.enter_step(ro, next, now);
        log::info!("route {}: {reason}", run.record.route);
        self.event(ro, run, "step", actor, None, None, reason);
        Ok(())
    }

    /// One revision of the route through the writer. With `guard`, the edit is refused when the route
    /// is no longer what the controller left (someone changed it since): the next turn notices.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        state: &State,
        ro: &RolloutConfig,
        run: &mut Run,
        actor: &str,
        action: &str,
        reason: &str,
        guard: bool,
        edit: impl FnOnce(&mut RouteConfig, &RolloutConfig, &mut Added) -> Result<(), String>,
    ) -> Result<(), ChangeError> {
        let route = run.record.route.clone();
        let expected = run.record.expected.clone();
        let mut added = run.record.added.clone();
        let change = Change {
            actor,
            action,
            route: Some(&route),
            reason: Some(reason),
        };
        let snapshot = state.change(change, |live| {
            let mut config = live.config.clone();
            let r = config
                .routes
                .iter_mut()
                .find(|r| r.name == route)
                .ok_or_else(|| ChangeError::NotFound(format!("no such route {route:?}")))?;
            if guard && route_digest(r) != expected {
                return Err(ChangeError::Conflict(format!(
                    "route {route:?} was changed by someone else since the rollout's last step"
                )));
            }
            edit(r, ro, &mut added).map_err(ChangeError::Refused)?;
            Ok(config)
        })?;
        run.record.added = added;
        run.record.revision = snapshot.revision;
        if let Some(r) = find(&snapshot, &route) {
            run.record.expected = route_digest(r);
        }
        Ok(())
    }

    /// A new leader's first look at a rollout it read from etcd: changes to the route committed by
    /// the controller after the record's revision were made by the previous leader, which died
    /// before recording them. They are adopted (the step it moved to, the verdict it reached), so
    /// no step is taken twice or skipped. A change by anyone else is left to [`Self::notice_others`].
    fn adopt(&self, state: &State, r: &RouteConfig, ro: &RolloutConfig, run: &mut Run) {
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

    /// Records an event in the history and the log, and sends it to `notify`.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        ro: &RolloutConfig,
        run: &mut Run,
        event: &str,
        actor: &str,
        verdict: Option<&str>,
        gate: Option<String>,
        reason: String,
    ) {
        let e = Event {
            at: store::now_rfc3339(),
            step: run.record.step + 1,
            event: event.to_string(),
            verdict: verdict.map(str::to_string),
            gate,
            reason,
            actor: actor.to_string(),
        };
        if event != "check" {
            log::info!(
                "route {}: rollout {event} by {actor}: {}",
                run.record.route,
                e.reason
            );
        }
        if let Some(url) = &ro.notify {
            let mut body = self.payload(ro, run, event);
            body["event"] = json!(e);
            self.notifier.send(url, body);
        }
        run.record.history.push_back(e);
        while run.record.history.len() > HISTORY {
            run.record.history.pop_front();
        }
    }

    /// What webhooks and notifications receive.
    fn payload(&self, ro: &RolloutConfig, run: &Run, what: &str) -> Value {
        let r = &run.record;
        json!({
            "route": r.route,
            "canary": r.canary,
            "baseline": r.baseline,
            "what": what,
            "state": r.phase.as_str(),
            "step": r.step + 1,
            "steps": ro.steps.len(),
            "phase": step_words(ro, r.step),
            "reason": r.reason,
        })
    }

    fn save(&self, inner: &mut Inner, state: &State, now: Instant) {
        if let Some(fleet) = state.fleet() {
            let mut all = true;
            for (route, run) in &inner.runs {
                let Ok(bytes) = serde_json::to_vec(&run.record) else {
                    continue;
                };
                if let Err(e) = fleet.save_rollout(route, bytes) {
                    log::warn!("route {route}: rollout state not saved in etcd: {e}");
                    all = false;
                }
            }
            if all {
                inner.dirty = false;
            }
            inner.last_saved = Some(now);
            return;
        }
        let records: BTreeMap<&String, &Record> =
            inner.runs.iter().map(|(k, v)| (k, &v.record)).collect();
        let Ok(bytes) = serde_json::to_vec_pretty(&records) else {
            return;
        };
        match state.save_rollouts(&bytes) {
            Ok(()) => {
                inner.dirty = false;
                inner.last_saved = Some(now);
            }
            Err(e) => log::warn!("rollout state not saved: {e}"),
        }
    }

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
            .ok_or_else(|| ControlError::NotFound(format!("no such route {route:?}")))?;
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
        let recent: Vec<&Event> = rec.history.iter().rev().take(20).collect();
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

/// Step `i` in words, e.g. `weight 10%`.
fn step_words(ro: &RolloutConfig, i: usize) -> String {
    ro.steps.get(i).map(plan::describe).unwrap_or_default()
}

/// Drives [`Rollouts::tick`] while the server runs.
pub struct Controller {
    state: std::sync::Arc<State>,
}

impl Controller {
    pub fn new(state: std::sync::Arc<State>) -> Controller {
        Controller { state }
    }
}

/// How often the controller looks at its rollouts.
const TICK: Duration = Duration::from_millis(200);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Controller {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let state = self.state.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || state.rollouts.tick(&state)).await {
                        log::error!("rollout controller: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn state(name: &str) -> (State, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("switchyard-adopt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "server: {{state_dir: {}, access_log: off}}\nupstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n    rollout: {{canary: v2, steps: [10, 50, 100], hold: 1h, interval: 1h}}\n",
            dir.display()
        );
        let config = Config::load_str(&text).expect("valid");
        (State::open(config, &text).expect("opens"), dir)
    }

    fn share(state: &State) -> f64 {
        state.load().config.routes[0]
            .split
            .as_ref()
            .map_or(0.0, |s| s.share("v2"))
    }

    /// A leader that committed a step and died before saving its record: the next leader, reading
    /// the older record, adopts the step instead of taking it again.
    #[test]
    fn a_new_leader_adopts_a_step_its_predecessor_committed_but_did_not_record() {
        let (state, dir) = state("step");
        let leader = Rollouts::default();
        leader.tick(&state);
        let saved = {
            let inner = leader.inner.lock().expect("lock");
            inner.runs["api"].record.clone()
        };
        assert_eq!((saved.step, saved.phase), (0, Phase::Running));
        assert!(saved.revision > 0);
        assert_eq!(share(&state), 10.0);
        // The old leader's next step, committed; its record is never saved.
        {
            let mut inner = leader.inner.lock().expect("lock");
            let live = state.load();
            let ro = find(&live, "api")
                .and_then(|r| r.rollout.clone())
                .expect("rollout");
            let run = inner.runs.get_mut("api").expect("run");
            leader
                .advance(
                    &state,
                    &ro,
                    run,
                    "rollout",
                    "rollout.step",
                    "held".into(),
                    Instant::now(),
                )
                .expect("step");
        }
        assert_eq!(share(&state), 50.0);

        let next = Rollouts::default();
        let live = state.load();
        let r = find(&live, "api").expect("route").clone();
        let ro = r.rollout.clone().expect("rollout");
        let mut run = Run::resumed(saved.clone(), Instant::now());
        next.adopt(&state, &r, &ro, &mut run);
        assert_eq!(
            run.record.step, 1,
            "the committed step is adopted, not repeated"
        );
        assert_eq!(run.record.phase, Phase::Running);
        assert_eq!(run.record.expected, route_digest(&r));
        assert_eq!(run.record.revision, live.revision);
        assert_eq!(
            run.record.history.back().map(|e| e.event.as_str()),
            Some("adopt")
        );

        // A person's change after the record is not adopted: the rollout notices it and pauses.
        let change = Change {
            actor: "ops",
            action: "route.patch",
            route: Some("api"),
            reason: None,
        };
        state
            .change(change, |s| {
                let mut c = s.config.clone();
                if let Some(split) = c.routes[0].split.as_mut() {
                    split.targets.insert("v2".to_string(), 30.0);
                }
                Ok(c)
            })
            .expect("patch");
        let live = state.load();
        let r = find(&live, "api").expect("route").clone();
        let mut run = Run::resumed(saved, Instant::now());
        next.adopt(&state, &r, &ro, &mut run);
        assert_eq!(run.record.step, 0);
        assert_ne!(run.record.expected, route_digest(&r));
        let _ = std::fs::remove_dir_all(dir);
    }
}
