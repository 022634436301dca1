//! `GET /v1/routes/{name}/mirror/fields` (SPEC §5): a route's per-field differences between its
//! shadow's answers and the primary's, against the noise of the primary's upstream, and the schema
//! drift they show.

use super::{error, json};
use crate::config::CompareConfig;
use crate::metrics::fields::Rule;
use crate::metrics::Metrics;
use crate::state::Snapshot;
use http::{Response, StatusCode};

/// The report of `route` under the live config: its rule is the route's `compare:` now. A route that
/// no longer compares still shows what was learned, under the default thresholds, as observed.
pub(super) fn fields(live: &Snapshot, metrics: &Metrics, route: &str) -> Response<Vec<u8>> {
    let Some(id) = live.table.route_id(route) else {
        return error(StatusCode::NOT_FOUND, &live.config.no_such_route(route));
    };
    let rule = Rule::for_route(&live.table, route);
    let mirror = live.table.route(id).and_then(|r| r.mirror.as_ref());
    match (rule, mirror) {
        (Some(rule), Some(m)) => {
            let target = live.table.upstream_name(m.to);
            json(
                StatusCode::OK,
                &metrics.mirror_fields.report_or_empty(route, target, &rule),
            )
        }
        _ => {
            let observed = Rule {
                learns: false,
                ..Rule::of_config(&CompareConfig::default())
            };
            match metrics.mirror_fields.report(route, &observed) {
                Some(report) => json(StatusCode::OK, &report),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!(
                    "route {route:?} does not compare mirrored answers (it has no mirror.compare)"
                ),
                ),
            }
        }
    }
}
