//! The bodies the admin API answers with (and the JSON bodies it takes), as Rust types: each handler
//! serialises one of these, and the OpenAPI document ([`super::openapi`]) is generated from the same
//! types, so the two cannot drift apart.

use crate::config::{
    BlueGreenConfig, MatchConfig, MirrorConfig, OrderedMap, RolloutConfig, RouteConfig, RuleConfig,
    SplitConfig,
};
use crate::fleet::FleetStatus;
use crate::metrics::diffs::DiffSample;
use crate::rollout::view::{RolloutSummary, RolloutView};
use crate::state::store::AuditEntry;
use crate::upstream::BackendHealth;
use serde::{Deserialize, Serialize};

/// A refusal: RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// `urn:switchyard:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong, in words.
    pub detail: String,
    /// Stable: bad_request, unauthorized, not_found, method_not_allowed, conflict,
    /// payload_too_large, invalid_config, refused, storage_error, no_space, handing_over,
    /// unavailable, not_leader, store_unavailable, not_in_a_fleet, internal_error.
    pub code: String,
    /// For `invalid_config`: every problem found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ConfigProblem>>,
}

/// One problem of a refused config.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConfigProblem {
    /// Where in the config (`routes[0].split.targets`).
    pub path: String,
    pub message: String,
    /// Path and message in one line.
    pub text: String,
}

/// One route as status shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Route")]
pub struct RouteView {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// How many rules the route has.
    pub rules: usize,
    /// Each rule in order: its `when` and the target it sends to.
    pub rule_list: Vec<RuleConfig>,
    pub split: Option<SplitView>,
    pub blue_green: Option<BlueGreenConfig>,
    pub mirror: Option<MirrorConfig>,
    pub rollout: Option<RolloutConfig>,
}

impl RouteView {
    pub fn of(r: &RouteConfig) -> RouteView {
        RouteView {
            name: r.name.clone(),
            matcher: r.matcher.clone(),
            rules: r.rules.len(),
            rule_list: r.rules.clone(),
            split: r.split.as_ref().map(SplitView::of),
            blue_green: r.blue_green.clone(),
            mirror: r.mirror.clone(),
            rollout: r.rollout.clone(),
        }
    }
}

/// A split as status shows it: targets in bucket order (baseline first, marked), with weights and
/// shares.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Split")]
pub struct SplitView {
    pub baseline: Option<String>,
    pub targets: Vec<SplitShare>,
    pub sticky: Vec<String>,
    pub salt: Option<String>,
}

/// One target of a split.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "SplitTarget")]
pub struct SplitShare {
    pub target: String,
    pub weight: f64,
    /// Percent of split traffic, rounded to 0.01.
    pub share: f64,
    pub baseline: bool,
}

impl SplitView {
    pub fn of(sp: &SplitConfig) -> SplitView {
        let total: f64 = sp.targets.iter().map(|(_, w)| *w).sum();
        let baseline = sp.baseline_name();
        let targets = sp
            .ordered_targets()
            .into_iter()
            .map(|(name, w)| {
                let share = if total > 0.0 { w / total * 100.0 } else { 0.0 };
                SplitShare {
                    target: name.to_string(),
                    weight: w,
                    share: (share * 100.0).round() / 100.0,
                    baseline: Some(name) == baseline,
                }
            })
            .collect();
        SplitView {
            baseline: baseline.map(str::to_string),
            targets,
            sticky: sp.sticky.iter().map(|k| k.written().clone()).collect(),
            salt: sp.salt.clone(),
        }
    }
}

/// A route in a list, with its rollout's state in one line.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ListedRoute {
    #[serde(flatten)]
    pub route: RouteView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_state: Option<RolloutSummary>,
}

/// `GET /v1/routes/{name}`: the route, with its rollout in full.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RouteDetail {
    #[serde(flatten)]
    pub route: RouteView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_state: Option<RolloutView>,
}

/// An upstream and every backend's health.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Upstream")]
pub struct UpstreamView {
    pub name: String,
    /// Whether a health check probes its backends.
    pub health_check: bool,
    pub backends: Vec<BackendHealth>,
}

/// `GET /v1/status`: routes, backends, the live revision, and the fleet when there is one.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Status")]
pub struct StatusBody {
    pub revision: u64,
    pub routes: Vec<ListedRoute>,
    pub upstreams: Vec<UpstreamView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// `GET /v1/routes`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Routes")]
pub struct RoutesBody {
    pub routes: Vec<ListedRoute>,
    pub revision: u64,
}

/// The answer to a change: the new revision and, for a route's change, the route as status showed
/// it before and shows it after.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChangeResult {
    pub revision: u64,
    #[serde(flatten)]
    pub route: Option<RouteChange>,
}

/// A route before and after a change.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RouteChange {
    pub route: String,
    pub before: Option<RouteView>,
    pub after: Option<RouteView>,
}

/// `GET /v1/revisions`: the revisions kept in `state_dir`, oldest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Revisions")]
pub struct RevisionsBody {
    /// The live revision.
    pub live: u64,
    pub revisions: Vec<RevisionItem>,
    /// The `after` of the next page, when there is one.
    pub next_after: Option<u64>,
}

/// One kept revision, with the audit line that made it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Revision")]
pub struct RevisionItem {
    pub revision: u64,
    pub live: bool,
    pub at: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub route: Option<String>,
}

/// `GET /v1/audit`: the audit log, oldest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Audit")]
pub struct AuditBody {
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page, when there is one.
    pub next_after: Option<u64>,
}

/// `GET /v1/mirror/diffs`: the newest shadow/primary pairs that differed, oldest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Diffs")]
pub struct DiffsBody {
    pub diffs: Vec<DiffSample>,
}

/// `GET /v1/routes/{name}/explain`: the target a described request gets, and why.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Explain")]
pub struct ExplainBody {
    pub route: String,
    /// `null` when the answer is random (a split without a sticky key) or the request is refused.
    pub target: Option<String>,
    /// `rule:N`, `split:BUCKET`, `split:random`, `live:COLOUR` or `client_required`.
    pub reason: String,
    /// The reason in words.
    pub explanation: String,
    pub baseline: Option<String>,
    pub revision: u64,
}

/// `PATCH /v1/routes/{name}`: any of `split`, `live` and `mirror`, and why.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
// The handler reads the body field by field, for messages that name the field; a test in
// api_tests holds the two to the same bodies.
#[allow(dead_code)]
pub struct RoutePatch {
    /// Target weights; `"5%"` gives that target exactly 5% and the baseline the difference.
    pub split: Option<OrderedMap<WeightOrPercent>>,
    pub live: Option<Colour>,
    pub mirror: Option<MirrorPatch>,
    /// Why; kept in the audit log.
    pub reason: Option<String>,
}

/// A weight, or an exact share as `"N%"`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum WeightOrPercent {
    Weight(f64),
    Percent(String),
}

/// A blue/green colour.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
}

/// The mirrored share.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorPatch {
    pub percent: Option<f64>,
}

/// The body of a change that takes nothing but why.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)] // the reason is read for every change before the handler runs
pub struct Reason {
    /// Why; kept in the audit log.
    pub reason: Option<String>,
}
