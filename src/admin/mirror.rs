//! `GET /v1/routes/{name}/mirror/fields` (SPEC §5): a route's per-field differences between its
//! shadow's answers and the primary's, against the noise of the primary's upstream, and the schema
//! drift they show.

use super::{error, json};
use crate::metrics::fields::{Overflow, Report, Rule};
use crate::state::Snapshot;
use http::{Response, StatusCode};

/// The report of `route` under the live config: its rule is the route's `compare:` now.
pub(super) fn fields(
    live: &Snapshot,
    metrics: &crate::metrics::Metrics,
    route: &str,
) -> Response<Vec<u8>> {
    let Some(id) = live.table.route_id(route) else {
        return error(StatusCode::NOT_FOUND, &live.config.no_such_route(route));
    };
    let mirror = live.table.route(id).and_then(|r| r.mirror.as_ref());
    let compare = mirror.and_then(|m| m.compare.as_ref());
    let rule = compare.map_or(
        Rule {
            learns: false,
            relative: 0.2,
            absolute: 0.0003,
        },
        Rule::of,
    );
    match metrics.mirror_fields.report(route, &rule) {
        Some(report) => json(StatusCode::OK, &report),
        None => match (mirror, compare) {
            (Some(m), Some(_)) => json(
                StatusCode::OK,
                &Report {
                    route: route.to_string(),
                    target: live.table.upstream_name(m.to).to_string(),
                    pairs: 0,
                    noise_pairs: 0,
                    noise_learned: !rule.learns,
                    fields: Vec::new(),
                    overflow: Overflow {
                        shadow_diffs: 0,
                        noise_diffs: 0,
                    },
                    drift: Vec::new(),
                },
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                &format!(
                    "route {route:?} does not compare mirrored answers (it has no mirror.compare)"
                ),
            ),
        },
    }
}
