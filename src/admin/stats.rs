//! `GET /v1/stats`: per route × target, the last 60 seconds and since start, as SPEC §4 lists them;
//! with `?series=1` also the last minute second by second (`per_second`, oldest first).

use crate::metrics::{Metrics, Stats, WINDOW_SECONDS};
use crate::state::Snapshot;
use serde::Serialize;

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Stats")]
pub struct StatsBody {
    pub revision: u64,
    pub uptime_seconds: f64,
    pub routes: Vec<RouteStats>,
}

/// One route's targets.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RouteStats {
    pub route: String,
    pub targets: Vec<TargetStats>,
}

/// One target of a route: the last 60 s and since start.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TargetStats {
    pub target: String,
    pub baseline: bool,
    pub last_60s: Window,
    pub since_start: Window,
    /// With `?series=1`: the last minute, one item a second, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<Vec<Second>>,
}

/// One window of a target's traffic. Percentiles are `null` without requests; they are at most 13%
/// off.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Window {
    pub seconds: f64,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// 5xx answers over requests.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub upstream_errors: u64,
    pub fallbacks: u64,
    /// Only on a mirrored route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_diff_rate: Option<f64>,
}

/// One second of a target's traffic.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Second {
    pub requests: u64,
    pub status_5xx: u64,
    pub p99_ms: Option<f64>,
}

/// Every route of the live config (or only `?route=NAME`) with every target it can use, plus any
/// other target that served it since start. `None` when the named route does not exist.
pub(crate) fn stats(metrics: &Metrics, s: &Snapshot, query: Option<&str>) -> Option<StatsBody> {
    let only = super::query_param(query, "route");
    // `?series=1`: each target's last minute second by second, for plots that start full.
    let per_second = super::query_param(query, "series").is_some_and(|v| v != "0");
    let uptime = metrics.uptime();
    let window = uptime.min(WINDOW_SECONDS as f64);
    let series = metrics.all_series();
    let mut routes = Vec::new();
    for route in s.table.routes() {
        if only.as_deref().is_some_and(|o| o != &*route.name) {
            continue;
        }
        let mut names: Vec<&str> = route
            .targets()
            .into_iter()
            .map(|t| s.table.upstream_name(t))
            .collect();
        for (r, t, _) in &series {
            if r == &*route.name && !names.contains(&t.as_str()) {
                names.push(t);
            }
        }
        let baseline = s.table.upstream_name(route.baseline());
        let mirrored = route.mirror.is_some();
        let targets = names
            .iter()
            .map(|t| {
                let (last, total) = metrics.stats(&route.name, t);
                TargetStats {
                    target: t.to_string(),
                    baseline: *t == baseline,
                    last_60s: window_of(&last, window, mirrored),
                    since_start: window_of(&total, uptime, mirrored),
                    per_second: per_second.then(|| {
                        metrics
                            .per_second(&route.name, t, WINDOW_SECONDS)
                            .iter()
                            .map(|s| Second {
                                requests: s.requests(),
                                status_5xx: s.status[4],
                                p99_ms: ms(s.quantile(0.99)),
                            })
                            .collect()
                    }),
                }
            })
            .collect();
        routes.push(RouteStats {
            route: route.name.to_string(),
            targets,
        });
    }
    if only.is_some() && routes.is_empty() {
        return None;
    }
    Some(StatsBody {
        revision: s.revision,
        uptime_seconds: uptime,
        routes,
    })
}

fn ms(d: Option<std::time::Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// One window; the mirror's figures only on a mirrored route.
pub(crate) fn window_of(w: &Stats, seconds: f64, mirrored: bool) -> Window {
    Window {
        seconds,
        requests: w.requests(),
        status_2xx: w.status[1],
        status_3xx: w.status[2],
        status_4xx: w.status[3],
        status_5xx: w.status[4],
        error_rate: w.error_rate(),
        p50_ms: ms(w.quantile(0.50)),
        p95_ms: ms(w.quantile(0.95)),
        p99_ms: ms(w.quantile(0.99)),
        upstream_errors: w.upstream_errors,
        fallbacks: w.fallbacks,
        mirror_sent: mirrored.then_some(w.mirror_sent),
        mirror_diff_rate: mirrored.then(|| w.mirror_diff_rate()),
    }
}
