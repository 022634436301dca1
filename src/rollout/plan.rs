//! What each step of a rollout means for its route's config, as pure edits of a [`RouteConfig`]. The
//! routing of step `i` depends on `i` alone, so applying a step again (on resume, retry or after a
//! restart) always lands on the same routing:
//!
//! - the canary's share is the largest weight step up to `i` (0 before the first);
//! - every header step up to `i` has its rule sending matching requests to the canary (internal users
//!   keep the new version through the later phases), first among the route's rules; every clients
//!   step up to `i` likewise sends its API clients (so they move cumulatively);
//! - a mirror step copies its share of traffic to the canary, compared, for that step only; the route's
//!   own `mirror` (if any) is put back afterwards.

use crate::config::{
    CompareConfig, MirrorConfig, Percent, RolloutConfig, RouteConfig, RuleConfig, Step, StepConfig,
    WhenConfig,
};
use serde::{Deserialize, Serialize};

/// What the controller added to a route, so that it takes back exactly that and nothing of a
/// person's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Added {
    /// Header rules added for header steps (a rule the route already had is not added, nor removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// The route's own mirror, kept while a mirror step replaces it (`Some(None)`: it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_mirror: Option<SavedMirror>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMirror {
    pub mirror: Option<MirrorConfig>,
}

/// The canary's share at step `i`: the largest weight step up to it, 0 before the first.
pub fn weight_at(ro: &RolloutConfig, i: usize) -> f64 {
    ro.steps
        .iter()
        .take(i + 1)
        .filter_map(|s| match &s.kind {
            Step::Weight(w) => w.read().ok(),
            _ => None,
        })
        .fold(0.0, f64::max)
}

/// How long step `i` is held: its own `hold`, else the rollout's.
pub fn hold_of(ro: &RolloutConfig, i: usize) -> std::time::Duration {
    ro.steps
        .get(i)
        .and_then(|s| s.hold.as_ref())
        .unwrap_or(&ro.hold)
        .get()
}

/// A step in words, e.g. `weight 10%`, `header X-Version: beta`, `mirror 10%`, `pause`.
pub fn describe(step: &StepConfig) -> String {
    let what = match &step.kind {
        Step::Weight(w) => format!("weight {}%", w.get()),
        Step::Mirror(m) => format!("mirror {}%", m.get()),
        Step::Header(h) => {
            let pairs: Vec<String> = h.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("header {}", pairs.join(", "))
        }
        Step::Clients(c) => format!("clients {}", c.join(", ")),
        Step::Pause => "pause".into(),
    };
    match &step.hold {
        Some(h) => format!("{what} for {h}"),
        None => what,
    }
}

/// The rule a header or clients step adds: matching requests (or those clients) go to the canary.
fn step_rule(step: &Step, canary: &str) -> Option<RuleConfig> {
    let when = match step {
        Step::Header(h) => WhenConfig {
            header: h.clone(),
            ..WhenConfig::default()
        },
        Step::Clients(c) => WhenConfig {
            client_in: Some(c.clone()),
            ..WhenConfig::default()
        },
        _ => return None,
    };
    Some(RuleConfig {
        when,
        to: canary.to_string(),
    })
}

/// Why a step could not be applied to a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("route {0:?} has no split")]
    NoSplit(String),
    /// The split refused the shares (a target it does not have).
    #[error("{0}")]
    Shares(String),
    #[error("{0}")]
    Percent(String),
}

/// Sets the canary's share of the split to `percent`; the baseline takes the difference.
fn set_canary_share(r: &mut RouteConfig, canary: &str, percent: f64) -> Result<(), PlanError> {
    let split = r
        .split
        .as_mut()
        .ok_or_else(|| PlanError::NoSplit(r.name.clone()))?;
    split
        .set_shares(&[(canary, percent)])
        .map_err(PlanError::Shares)
}

/// Routes `r` as step `i` of `ro` says (see the module's description).
pub fn apply_step(
    r: &mut RouteConfig,
    ro: &RolloutConfig,
    i: usize,
    added: &mut Added,
) -> Result<(), PlanError> {
    set_canary_share(r, &ro.canary, weight_at(ro, i))?;
    for step in ro.steps.iter().take(i + 1) {
        if let Some(rule) = step_rule(&step.kind, &ro.canary) {
            if !r.rules.contains(&rule) {
                r.rules.insert(0, rule.clone());
                added.rules.push(rule);
            }
        }
    }
    match ro.steps.get(i).map(|s| &s.kind) {
        Some(Step::Mirror(p)) => {
            let percent = p.read().map_err(PlanError::Percent)?;
            let own = added
                .saved_mirror
                .get_or_insert_with(|| SavedMirror {
                    mirror: r.mirror.clone(),
                })
                .mirror
                .clone();
            r.mirror = Some(shadow_mirror(own, &ro.canary, percent));
        }
        _ => restore_mirror(r, added),
    }
    Ok(())
}

/// The mirror of a dark phase: `percent` of traffic to the canary, always compared. Settings the
/// route's own mirror had (methods, body limit, timeout, comparison) are kept.
fn shadow_mirror(own: Option<MirrorConfig>, canary: &str, percent: f64) -> MirrorConfig {
    let mut m = own.unwrap_or_else(|| MirrorConfig {
        to: String::new(),
        percent: Percent::from(100.0),
        sticky: Vec::new(),
        methods: None,
        max_body_bytes: 65536,
        timeout: "2s".into(),
        max_in_flight: 256,
        compare: None,
    });
    m.to = canary.to_string();
    m.percent = Percent::from(percent);
    if m.compare.is_none() {
        m.compare = Some(CompareConfig {
            ignore_headers: vec!["date".into(), "x-request-id".into()],
            ..CompareConfig::default()
        });
    }
    m
}

fn restore_mirror(r: &mut RouteConfig, added: &mut Added) {
    if let Some(saved) = added.saved_mirror.take() {
        r.mirror = saved.mirror;
    }
}

fn remove_added_rules(r: &mut RouteConfig, added: &mut Added) {
    for rule in added.rules.drain(..) {
        if let Some(at) = r.rules.iter().position(|x| *x == rule) {
            r.rules.remove(at);
        }
    }
}

/// Takes back the rules and the mirror the controller added, leaving the split as it is.
pub fn take_back(r: &mut RouteConfig, added: &mut Added) {
    remove_added_rules(r, added);
    restore_mirror(r, added);
}

/// Takes the canary out: 0% of the split, its header rules and its mirror gone.
pub fn roll_back(
    r: &mut RouteConfig,
    ro: &RolloutConfig,
    added: &mut Added,
) -> Result<(), PlanError> {
    set_canary_share(r, &ro.canary, 0.0)?;
    remove_added_rules(r, added);
    restore_mirror(r, added);
    Ok(())
}

/// The end of a successful rollout: the canary takes 100% of the split; its header rules and mirror
/// are no longer needed.
pub fn complete(
    r: &mut RouteConfig,
    ro: &RolloutConfig,
    added: &mut Added,
) -> Result<(), PlanError> {
    set_canary_share(r, &ro.canary, 100.0)?;
    remove_added_rules(r, added);
    restore_mirror(r, added);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(steps: &str) -> (RouteConfig, RolloutConfig) {
        let text = format!(
            "upstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n    mirror: {{to: v2, percent: 5, timeout: 3s}}\n    rollout: {{canary: v2, steps: {steps}, hold: 1s}}\n"
        );
        let c = Config::load_str(&text).unwrap();
        let r = c.routes[0].clone();
        let ro = r.rollout.clone().unwrap();
        (r, ro)
    }

    #[test]
    fn a_step_may_hold_longer_than_the_rest_and_steps_survive_a_round_trip() {
        let (r, ro) =
            route("[{header: {X-Version: beta}}, {weight: 1, hold: 24h}, 10, {pause: {}}]");
        assert_eq!(hold_of(&ro, 0), std::time::Duration::from_secs(1));
        assert_eq!(hold_of(&ro, 1), std::time::Duration::from_secs(86_400));
        assert_eq!(describe(&ro.steps[1]), "weight 1% for 24h");
        assert_eq!(describe(&ro.steps[0]), "header X-Version: beta");
        let yaml = serde_yaml::to_string(&r).unwrap();
        let again: RouteConfig = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(again, r, "{yaml}");
    }

    #[test]
    fn each_step_routes_as_its_index_says_and_rollback_takes_back_only_what_was_added() {
        let (mut r, ro) = route("[{header: {X-Version: beta}}, {mirror: 20}, 1, {pause: {}}, 10]");
        let mut added = Added::default();
        apply_step(&mut r, &ro, 0, &mut added).unwrap();
        assert_eq!(r.split.as_ref().unwrap().share("v2"), 0.0);
        assert_eq!(r.rules.len(), 1);
        apply_step(&mut r, &ro, 1, &mut added).unwrap();
        let m = r.mirror.clone().unwrap();
        assert_eq!(m.percent, Percent::from(20.0));
        assert_eq!(
            m.timeout.written(),
            "3s",
            "the route's own mirror settings are kept"
        );
        assert!(m.compare.is_some());
        assert_eq!(r.rules.len(), 1, "a rule is added once");
        apply_step(&mut r, &ro, 2, &mut added).unwrap();
        assert_eq!(r.mirror.as_ref().unwrap().percent, Percent::from(5.0));
        assert_eq!(r.split.as_ref().unwrap().share("v2"), 1.0);
        apply_step(&mut r, &ro, 3, &mut added).unwrap();
        assert_eq!(
            r.split.as_ref().unwrap().share("v2"),
            1.0,
            "a pause keeps the weight"
        );
        apply_step(&mut r, &ro, 4, &mut added).unwrap();
        assert_eq!(r.split.as_ref().unwrap().share("v2"), 10.0);
        roll_back(&mut r, &ro, &mut added).unwrap();
        assert_eq!(r.split.as_ref().unwrap().share("v2"), 0.0);
        assert!(r.rules.is_empty());
        assert_eq!(added, Added::default());
        apply_step(&mut r, &ro, 1, &mut added).unwrap();
        complete(&mut r, &ro, &mut added).unwrap();
        assert_eq!(r.split.as_ref().unwrap().share("v2"), 100.0);
        assert_eq!(r.split.as_ref().unwrap().share("v1"), 0.0);
        assert_eq!(r.mirror.as_ref().unwrap().percent, Percent::from(5.0));
        assert!(r.rules.is_empty());
    }
}
