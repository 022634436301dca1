//! `GET /v1/stats`: per route × target, the last 60 seconds and since start, as SPEC §4 lists them;
//! with `?series=1` also the last minute second by second (`per_second`, oldest first).

use crate::metrics::{Metrics, Stats, WINDOW_SECONDS};
use crate::state::Snapshot;
use serde_json::{json, Value};

/// Every route of the live config (or only `?route=NAME`) with every target it can use, plus any
/// other target that served it since start. `None` when the named route does not exist.
pub(crate) fn stats(metrics: &Metrics, s: &Snapshot, query: Option<&str>) -> Option<Value> {
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
        let targets: Vec<Value> = names
            .iter()
            .map(|t| {
                let (last, total) = metrics.stats(&route.name, t);
                let mut v = json!({
                    "target": t,
                    "baseline": *t == baseline,
                    "last_60s": window_json(&last, window),
                    "since_start": window_json(&total, uptime),
                });
                if per_second {
                    v["per_second"] = metrics
                        .per_second(&route.name, t, WINDOW_SECONDS)
                        .iter()
                        .map(|s| {
                            json!({"requests": s.requests(), "status_5xx": s.status[4], "p99_ms": ms(s.quantile(0.99))})
                        })
                        .collect();
                }
                v
            })
            .collect();
        let mirrored = route.mirror.is_some();
        let targets = targets
            .into_iter()
            .map(|mut t| {
                if !mirrored {
                    for w in ["last_60s", "since_start"] {
                        if let Some(o) = t[w].as_object_mut() {
                            o.remove("mirror_sent");
                            o.remove("mirror_diff_rate");
                        }
                    }
                }
                t
            })
            .collect::<Vec<_>>();
        routes.push(json!({ "route": &*route.name, "targets": targets }));
    }
    if only.is_some() && routes.is_empty() {
        return None;
    }
    Some(json!({
        "revision": s.revision,
        "uptime_seconds": uptime,
        "routes": routes,
    }))
}

fn ms(d: Option<std::time::Duration>) -> Value {
    match d {
        Some(d) => json!((d.as_secs_f64() * 1e6).round() / 1e3),
        None => Value::Null,
    }
}

/// One window. Percentiles are `null` without requests; they are at most 13% off.
pub(crate) fn window_json(w: &Stats, seconds: f64) -> Value {
    json!({
        "seconds": seconds,
        "requests": w.requests(),
        "status_2xx": w.status[1],
        "status_3xx": w.status[2],
        "status_4xx": w.status[3],
        "status_5xx": w.status[4],
        "error_rate": w.error_rate(),
        "p50_ms": ms(w.quantile(0.50)),
        "p95_ms": ms(w.quantile(0.95)),
        "p99_ms": ms(w.quantile(0.99)),
        "upstream_errors": w.upstream_errors,
        "fallbacks": w.fallbacks,
        "mirror_sent": w.mirror_sent,
        "mirror_diff_rate": w.mirror_diff_rate(),
    })
}
