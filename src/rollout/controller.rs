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
//! - Each check compares the canary's and the baseline's counts since the step began with
//!   anytime-valid tests ([`super::checks`]): looking often neither makes a rollback by chance likelier
//!   nor costs power.

use super::hooks::{self, Notifier, PreStep};
use super::plan::{self, Added, PlanError};
pub use super::record::{Event, Phase, Record};
use super::record::{FIGURES_KEPT, HISTORY};
use crate::config::{RolloutConfig, RouteConfig, Step};
use crate::metrics::Stats;
use crate::state::{sha256_hex, Change, ChangeError, Snapshot, State};

use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A record and what is kept of it in memory only.
pub(super) struct Run {
    pub(super) record: Record,
    /// Totals of canary and baseline at the start of the current check window, by instance (`""`:
    /// this one; in a fleet, each other instance's as it published them).
    pub(super) marks: Option<BTreeMap<String, (Stats, Stats)>>,
    pub(super) last_tick: Instant,
    pub(super) last_check: Instant,
    pub(super) pre_step: Option<PreStep>,
    pub(super) pre_step_passed: bool,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) runs: BTreeMap<String, Run>,
    loaded: bool,
    last_saved: Option<Instant>,
    pub(super) dirty: bool,
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
    pub(super) inner: Mutex<Inner>,
    pub(super) notifier: Notifier,
}

/// The actions of `POST /v1/routes/{name}/rollout/{action}`.
pub const ACTIONS: [&str; 6] = ["start", "pause", "resume", "abort", "promote", "retry"];

pub(super) fn route_digest(r: &RouteConfig) -> String {
    let mut r = r.clone();
    r.rollout = None;
    sha256_hex(serde_json::to_string(&r).unwrap_or_default().as_bytes())
}

pub(super) fn rollout_digest(ro: &RolloutConfig) -> String {
    sha256_hex(serde_json::to_string(ro).unwrap_or_default().as_bytes())
}

pub(super) fn find<'a>(s: &'a Snapshot, route: &str) -> Option<&'a RouteConfig> {
    s.config.routes.iter().find(|r| r.name == route)
}

impl Run {
    pub(super) fn new(r: &RouteConfig, ro: &RolloutConfig, now: Instant) -> Run {
        let at = crate::time::now_rfc3339();
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
                starved_ms: 0,
                history: VecDeque::new(),
            },
            marks: None,
            last_tick: now,
            last_check: now,
            pre_step: None,
            pre_step_passed: false,
        }
    }

    pub(super) fn resumed(record: Record, now: Instant) -> Run {
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
    pub(super) fn enter_step(&mut self, ro: &RolloutConfig, i: usize, now: Instant) {
        let r = &mut self.record;
        r.step = i;
        r.held_ms = 0;
        r.passes = 0;
        r.failures = 0;
        r.starved_ms = 0;
        r.step_started_at = crate::time::now_rfc3339();
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
        if let Some(fleet) = crate::fleet::of(state) {
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
                if run.record.passes == 0 && run.record.failures == 0 {
                    run.record.starved_ms += elapsed.as_millis() as u64;
                }
                if self.starved(state, &ro, run) {
                    dirty = true;
                } else if run.record.failures >= ro.failure_limit {
                    // A rollback that could not be committed at its check is tried again.
                    dirty |= self.fail(state, &ro, run, None);
                } else if now.saturating_duration_since(run.last_check) >= ro.interval.get() {
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
    pub(super) fn sync(&self, inner: &mut Inner, state: &State, now: Instant) {
        if !inner.loaded {
            inner.loaded = true;
            load_saved(inner, state, now);
        }
        let live = state.load();
        let configured: Vec<(RouteConfig, RolloutConfig)> = live
            .config
            .routes
            .iter()
            .filter(|r| crate::fleet::of(state).is_none_or(|f| f.leads(&r.name)))
            .filter_map(|r| r.rollout.clone().map(|ro| (r.clone(), ro)))
            .collect();
        if !self.take_over_led(inner, state, &configured, now) {
            return;
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
            let run = self.start_configured(state, &r, &ro, previous, live.revision, now);
            inner.runs.insert(r.name.clone(), run);
            inner.dirty = true;
        }
    }

    /// In a fleet: the rollouts this instance has come to lead, taken up where their previous leader
    /// saved them. `false` when etcd cannot say whether one is under way (wait rather than start it
    /// again).
    fn take_over_led(
        &self,
        inner: &mut Inner,
        state: &State,
        configured: &[(RouteConfig, RolloutConfig)],
        now: Instant,
    ) -> bool {
        let Some(fleet) = crate::fleet::of(state) else {
            return true;
        };
        for (r, ro) in configured {
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
                    log::warn!("route {}: reading its rollout from etcd: {e}", r.name);
                    inner.resync = true;
                    return false;
                }
            }
        }
        true
    }

    /// A rollout block configured (or changed: `previous` is the rollout it replaces, whose
    /// history and counts go on) starts at its first step.
    fn start_configured(
        &self,
        state: &State,
        r: &RouteConfig,
        ro: &RolloutConfig,
        previous: Option<Run>,
        revision: u64,
        now: Instant,
    ) -> Run {
        let mut run = Run::new(r, ro, now);
        if let Some(old) = &previous {
            run.record.added = old.record.added.clone();
            run.record.history = old.record.history.clone();
            run.record.checks = old.record.checks;
        }
        let why = if previous.is_some() {
            format!("rollout block changed (revision {revision}): starting again")
        } else {
            format!("rollout of {} configured (revision {revision})", ro.canary)
        };
        run.enter_step(ro, 0, now);
        let reason = format!("{why}; step 1/{}: {}", ro.steps.len(), step_words(ro, 0));
        match self.commit(
            state,
            ro,
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
            Ok(()) => self.event(ro, &mut run, "start", "rollout", None, None, reason),
            Err(e) => {
                run.record.phase = Phase::Paused;
                run.record.reason = Some(format!("could not start: {e}"));
                log::error!("route {}: rollout could not start: {e}", r.name);
            }
        }
        run
    }

    /// Moves to the next step, or ends the rollout with the canary at 100% after the last.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn advance(
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
    pub(super) fn commit(
        &self,
        state: &State,
        ro: &RolloutConfig,
        run: &mut Run,
        actor: &str,
        action: &str,
        reason: &str,
        guard: bool,
        edit: impl FnOnce(&mut RouteConfig, &RolloutConfig, &mut Added) -> Result<(), PlanError>,
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
            edit(r, ro, &mut added).map_err(|e| ChangeError::Refused(e.to_string()))?;
            Ok(config)
        })?;
        run.record.added = added;
        run.record.revision = snapshot.revision;
        if let Some(r) = find(&snapshot, &route) {
            run.record.expected = route_digest(r);
        }
        Ok(())
    }

    /// Records an event in the history and the log, and sends it to `notify`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn event(
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
            at: crate::time::now_rfc3339(),
            step: run.record.step + 1,
            event: event.to_string(),
            verdict: verdict.map(str::to_string),
            gate,
            reason,
            actor: actor.to_string(),
            check: None,
        };
        self.record_event(ro, run, e);
    }

    /// Records an event built by the caller (a check carries its figures).
    pub(super) fn record_event(&self, ro: &RolloutConfig, run: &mut Run, e: Event) {
        let (event, actor) = (e.event.as_str(), e.actor.as_str());
        if event != "check" {
            log::info!(
                "route {}: rollout {event} by {actor}: {}",
                run.record.route,
                e.reason
            );
        }
        if let Some(url) = &ro.notify {
            let mut body = self.payload(ro, run, &e.event);
            body["event"] = json!(e);
            self.notifier.send(url, body);
        }
        let history = &mut run.record.history;
        history.push_back(e);
        while history.len() > HISTORY {
            history.pop_front();
        }
        // Only the newest events keep a check's full figures (a few KB each): the record is saved
        // every second, to state_dir or to etcd. Older ones keep their summary in `reason`.
        if let Some(old) = history
            .len()
            .checked_sub(FIGURES_KEPT + 1)
            .and_then(|i| history.get_mut(i))
        {
            old.check = None;
        }
    }

    /// What webhooks and notifications receive.
    pub(super) fn payload(&self, ro: &RolloutConfig, run: &Run, what: &str) -> Value {
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

    pub(super) fn save(&self, inner: &mut Inner, state: &State, now: Instant) {
        if let Some(fleet) = crate::fleet::of(state) {
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
}

/// Step `i` in words, e.g. `weight 10%`.
pub(super) fn step_words(ro: &RolloutConfig, i: usize) -> String {
    ro.steps.get(i).map(plan::describe).unwrap_or_default()
}

/// Drives [`Rollouts::tick`] while the server runs.
pub struct Controller {
    state: std::sync::Arc<State>,
    rollouts: std::sync::Arc<Rollouts>,
}

impl Controller {
    pub fn new(state: std::sync::Arc<State>, rollouts: std::sync::Arc<Rollouts>) -> Controller {
        Controller { state, rollouts }
    }
}

/// The rollouts as last saved in `state_dir`, taken up where they were.
fn load_saved(inner: &mut Inner, state: &State, now: Instant) {
    let Some(saved) = state.load_rollouts() else {
        return;
    };
    match serde_json::from_slice::<BTreeMap<String, Record>>(&saved) {
        Ok(records) => {
            for (name, record) in records {
                inner.runs.insert(name, Run::resumed(record, now));
            }
        }
        Err(e) => log::error!(
            "rollouts.json cannot be read ({e}); rollouts start again from their first step"
        ),
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
                    let (state, rollouts) = (self.state.clone(), self.rollouts.clone());
                    if let Err(e) = tokio::task::spawn_blocking(move || rollouts.tick(&state)).await {
                        log::error!("rollout controller: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
