//! Prometheus text exposition (SPEC §7) through the `prometheus` crate Pingora itself uses
//! (`pingora_prometheus::prometheus`): our series are read into metric families at scrape time and
//! encoded with its `TextEncoder`, followed by anything registered in its default registry.

use super::histogram::{Latencies, PROMETHEUS_LE_US};
use super::series::{CompareResult, MirrorOutcome, UpstreamError, CLASS_NAMES};
use super::{Metrics, Rejection};
use crate::config::Config;
use pingora_prometheus::prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use pingora_prometheus::prometheus::{self, Encoder, TextEncoder};
use std::sync::atomic::Ordering::Relaxed;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every metric, as Prometheus text. `revision` and `config` are the live ones.
pub fn render(
    metrics: &Metrics,
    revision: u64,
    config: &Config,
    pools: &crate::upstream::Pools,
    rollouts: &crate::rollout::Rollouts,
) -> Result<Vec<u8>, String> {
    let mut families = families(metrics, revision, config);
    families.push(backend_up(pools));
    families.extend(rollout_families(rollouts));
    let mut open = Family::new(
        "switchyard_client_connections_open",
        "Client connections open now, on every listener.",
        MetricType::GAUGE,
    );
    open.gauge(&[], crate::proxy::open_connections() as f64);
    families.push(open.0);
    families.extend(prometheus::gather());
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// `switchyard_upstream_backend_up{upstream,backend}`: 1 while a backend is up (always, without a
/// health check), 0 while it is down.
fn backend_up(pools: &crate::upstream::Pools) -> MetricFamily {
    let mut up = Family::new(
        "switchyard_upstream_backend_up",
        "Whether a backend of an upstream is up (1) or down (0) by its health check; 1 without one.",
        MetricType::GAUGE,
    );
    for pool in pools.iter() {
        for b in pool.backend_health() {
            let value = if b.up { 1.0 } else { 0.0 };
            up.gauge(&[("upstream", &pool.name), ("backend", &b.backend)], value);
        }
    }
    up.0
}

/// `switchyard_rollout_step{route}`, `switchyard_rollout_state{route,state}` and
/// `switchyard_rollout_checks_total{route,verdict}`.
fn rollout_families(rollouts: &crate::rollout::Rollouts) -> Vec<MetricFamily> {
    use crate::rollout::Phase;
    let mut step = Family::new(
        "switchyard_rollout_step",
        "The step a route's rollout is at (1 is the first of its steps).",
        MetricType::GAUGE,
    );
    let mut state = Family::new(
        "switchyard_rollout_state",
        "1 for the state a route's rollout is in (running, paused, succeeded, failed, aborted), 0 for the others.",
        MetricType::GAUGE,
    );
    let mut checks = Family::new(
        "switchyard_rollout_checks_total",
        "Checks of a canary against its baseline, by verdict (pass, fail, inconclusive).",
        MetricType::COUNTER,
    );
    let mut notify = Family::new(
        "switchyard_rollout_notify_lost_total",
        "Rollout notifications not delivered: queue full, or given up after their retries.",
        MetricType::COUNTER,
    );
    for s in rollouts.summaries() {
        step.gauge(&[("route", &s.route)], s.step as f64);
        for p in Phase::ALL {
            let v = if p == s.phase { 1.0 } else { 0.0 };
            state.gauge(&[("route", &s.route), ("state", p.as_str())], v);
        }
        for (i, verdict) in ["pass", "fail", "inconclusive"].iter().enumerate() {
            checks.counter(&[("route", &s.route), ("verdict", verdict)], s.checks[i]);
        }
    }
    let (dropped, failed) = rollouts.notify_losses();
    if dropped + failed > 0 {
        notify.counter(&[("reason", "queue_full")], dropped);
        notify.counter(&[("reason", "failed")], failed);
    }
    vec![step.0, state.0, checks.0, notify.0]
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut f = MetricFamily {
            name: Some(name.to_string()),
            help: Some(help.to_string()),
            ..Default::default()
        };
        f.set_field_type(kind);
        Family(f)
    }

    fn counter(&mut self, labels: &[(&str, &str)], value: u64) {
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_counter(Counter {
            value: Some(value as f64),
            ..Default::default()
        });
        self.0.mut_metric().push(m);
    }

    fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_gauge(Gauge {
            value: Some(value),
            ..Default::default()
        });
        self.0.mut_metric().push(m);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], l: &Latencies) {
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_histogram(Histogram {
            sample_count: Some(l.count()),
            sample_sum: Some(l.sum_us as f64 / 1e6),
            bucket: PROMETHEUS_LE_US
                .iter()
                .map(|&le| Bucket {
                    cumulative_count: Some(l.count_le(le)),
                    upper_bound: Some(le as f64 / 1e6),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        self.0.mut_metric().push(m);
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| LabelPair {
            name: Some(k.to_string()),
            value: Some(v.to_string()),
            ..Default::default()
        })
        .collect()
}

fn families(metrics: &Metrics, revision: u64, config: &Config) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut requests = Family::new(
        "switchyard_requests_total",
        "Requests answered, by route, the target that served them, and status class.",
        COUNTER,
    );
    let mut duration = Family::new(
        "switchyard_request_duration_seconds",
        "Time from a request's arrival to the end of its response.",
        HISTOGRAM,
    );
    let mut errors = Family::new(
        "switchyard_upstream_errors_total",
        "Failed upstream attempts (connect failures are counted per attempt, retried or not).",
        COUNTER,
    );
    let mut ttfb = Family::new(
        "switchyard_upstream_ttfb_seconds",
        "Time from the upstream connection being ready to the upstream's response header.",
        HISTOGRAM,
    );
    let mut connections = Family::new(
        "switchyard_upstream_connections_total",
        "Upstream connections used by requests, newly made or reused from the pool.",
        COUNTER,
    );
    let mut mirror = Family::new(
        "switchyard_mirror_total",
        "Shadow copies of a route's traffic towards a target: sent, or dropped, skipped_body, error, timeout.",
        COUNTER,
    );
    let mut compare = Family::new(
        "switchyard_mirror_compare_total",
        "Shadow answers compared with the primary's: match, or the first difference (status, body, headers).",
        COUNTER,
    );
    for (route, target, s) in metrics.all_series() {
        let labels = [("route", route.as_str()), ("target", target.as_str())];
        let totals = s.totals();
        // gRPC calls are their own samples, with `grpc_status`; the plain samples count the rest.
        let grpc = s.grpc_totals();
        for (i, class) in CLASS_NAMES.iter().enumerate() {
            let calls: u64 = grpc.iter().map(|c| c[i]).sum();
            let plain = totals.status[i].saturating_sub(calls);
            // 1xx only once seen: most APIs never send one.
            if i > 0 || plain > 0 {
                requests.counter(&[labels[0], labels[1], ("code", class)], plain);
            }
            for (code, by_class) in grpc.iter().enumerate() {
                if by_class[i] > 0 {
                    let code = code.to_string();
                    requests.counter(
                        &[
                            labels[0],
                            labels[1],
                            ("code", class),
                            ("grpc_status", &code),
                        ],
                        by_class[i],
                    );
                }
            }
        }
        duration.histogram(&labels, &totals.latency);
        let detail = s.upstream_detail();
        for kind in UpstreamError::ALL {
            errors.counter(
                &[labels[0], labels[1], ("kind", kind.as_str())],
                detail.errors[kind as usize],
            );
        }
        ttfb.histogram(&labels, &detail.ttfb);
        connections.counter(
            &[labels[0], labels[1], ("reused", "false")],
            detail.connections_new,
        );
        connections.counter(
            &[labels[0], labels[1], ("reused", "true")],
            detail.connections_reused,
        );
        if detail.mirror.iter().any(|n| *n > 0) {
            for o in MirrorOutcome::ALL {
                mirror.counter(
                    &[labels[0], labels[1], ("outcome", o.as_str())],
                    detail.mirror[o as usize],
                );
            }
            for r in CompareResult::ALL {
                compare.counter(
                    &[labels[0], labels[1], ("result", r.as_str())],
                    detail.compare[r as usize],
                );
            }
        }
    }

    let mut fallbacks = Family::new(
        "switchyard_fallbacks_total",
        "Requests decided for a target whose pool was down, served by the route's baseline instead.",
        COUNTER,
    );
    for (route, from, to, n) in metrics.fallbacks() {
        fallbacks.counter(&[("route", &route), ("from", &from), ("to", &to)], n);
    }

    let mut rejected = Family::new(
        "switchyard_rejected_total",
        "Requests answered by the proxy before any target was chosen.",
        COUNTER,
    );
    for why in [
        Rejection::NoRoute,
        Rejection::ClientRequired,
        Rejection::InvalidRequest,
    ] {
        rejected.counter(&[("reason", why.as_str())], metrics.rejected(why));
    }

    let mut rev = Family::new(
        "switchyard_config_revision",
        "The revision of the configuration being served.",
        GAUGE,
    );
    rev.gauge(&[], revision as f64);

    let mut reloads = Family::new(
        "switchyard_reloads_total",
        "Reloads of the config file (SIGHUP or `switchyard reload`), applied or refused.",
        COUNTER,
    );
    let (ok, refused) = metrics.reloads();
    reloads.counter(&[("result", "ok")], ok);
    reloads.counter(&[("result", "error")], refused);

    let mut weights = Family::new(
        "switchyard_split_weight",
        "Configured weight of each target of a route (blue/green: 100 for the live colour, 0 else).",
        GAUGE,
    );
    for route in &config.routes {
        if let Some(split) = &route.split {
            for (target, w) in split.ordered_targets() {
                weights.gauge(&[("route", &route.name), ("target", target)], w);
            }
        } else if let Some(bg) = &route.blue_green {
            let live = if bg.live == "green" {
                &bg.green
            } else {
                &bg.blue
            };
            for target in [&bg.blue, &bg.green] {
                let w = if target == live { 100.0 } else { 0.0 };
                weights.gauge(&[("route", &route.name), ("target", target)], w);
            }
        }
    }

    let mut log_lines = Family::new(
        "switchyard_access_log_lines_total",
        "Access log lines written.",
        COUNTER,
    );
    log_lines.counter(&[], metrics.access_log.written.load(Relaxed));
    let mut log_dropped = Family::new(
        "switchyard_access_log_dropped_total",
        "Access log lines dropped instead of delaying requests: queue full, or the write failed.",
        COUNTER,
    );
    log_dropped.counter(
        &[("reason", "queue_full")],
        metrics.access_log.dropped_queue_full.load(Relaxed),
    );
    log_dropped.counter(
        &[("reason", "write_error")],
        metrics.access_log.dropped_write_error.load(Relaxed),
    );

    let mut uptime = Family::new(
        "switchyard_uptime_seconds",
        "Seconds since this process started.",
        GAUGE,
    );
    uptime.gauge(&[], metrics.uptime_seconds() as f64);

    [
        requests,
        duration,
        errors,
        fallbacks,
        ttfb,
        connections,
        mirror,
        compare,
        rejected,
        rev,
        reloads,
        weights,
        log_lines,
        log_dropped,
        uptime,
    ]
    .into_iter()
    .map(|f| f.0)
    .collect()
}
