//! Prometheus text exposition (SPEC §7) through the `prometheus` crate Pingora itself uses
//! (`pingora_prometheus::prometheus`): our series are read into metric families at scrape time and
//! encoded with its `TextEncoder`, followed by anything registered in its default registry.

use crate::config::Config;
use crate::metrics::fields::{Kind, Rule};
use crate::metrics::series::CLASS_NAMES;
use crate::metrics::{
    class_of, CompareResult, Latencies, Metrics, MirrorOutcome, Rejection, Series, Stats,
    UpstreamError, PROMETHEUS_LE_US,
};
use crate::state::shared::SharedStore;
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
    fleet: Option<&crate::fleet::Fleet>,
) -> Result<Vec<u8>, String> {
    let mut families = families(metrics, revision, config);
    if let Some(fleet) = fleet {
        families.extend(fleet_families(fleet, config));
    }
    families.push(backend_up(pools));
    families.extend(rollout_families(rollouts));
    let mut open = Family::new(
        "switchyard_client_connections_open",
        "Client connections open now, on every listener.",
        MetricType::GAUGE,
    );
    open.gauge(&[], crate::front::open_connections() as f64);
    families.push(open.0);
    let mut build = Family::new(
        "switchyard_build_info",
        "Always 1; the version of the running binary is in the label.",
        MetricType::GAUGE,
    );
    build.gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    families.push(build.0);
    // The default registry: process_cpu_seconds_total, process_resident_memory_bytes,
    // process_open_fds... (the prometheus crate's `process` feature registers them there), and
    // anything Pingora registers.
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
/// A fleet's instance (`store.etcd`): whether it reaches etcd, the fleet's revision as last seen
/// (beside `switchyard_config_revision`, the one served here), and the rollouts it leads.
fn fleet_families(fleet: &crate::fleet::Fleet, config: &Config) -> Vec<MetricFamily> {
    let mut connected = Family::new(
        "switchyard_fleet_connected",
        "1 while this instance reaches the fleet's etcd, caught up and watching; 0 while it serves its last revision and refuses changes.",
        MetricType::GAUGE,
    );
    connected.gauge(&[], if fleet.connected() { 1.0 } else { 0.0 });
    let mut head = Family::new(
        "switchyard_fleet_revision",
        "The fleet's live revision as this instance last saw it in etcd.",
        MetricType::GAUGE,
    );
    head.gauge(&[], fleet.fleet_revision() as f64);
    let mut leads = Family::new(
        "switchyard_rollout_leader",
        "1 for each route whose rollout this instance leads in the fleet, 0 for the others with a rollout.",
        MetricType::GAUGE,
    );
    for r in config.routes.iter().filter(|r| r.rollout.is_some()) {
        leads.gauge(
            &[("route", &r.name)],
            if fleet.leads(&r.name) { 1.0 } else { 0.0 },
        );
    }
    vec![connected.0, head.0, leads.0]
}

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
    let t = Traffic::of(metrics, config);
    let fallbacks = fallback_family(metrics, config);
    let p = Process::of(metrics, revision);
    let weights = weight_family(config);
    let (log_lines, log_dropped) = access_log_families(metrics);
    let (field_diffs, significant) = field_families(metrics, config);
    [
        t.requests,
        t.bytes_in,
        t.bytes_out,
        p.in_flight,
        t.duration,
        t.errors,
        fallbacks,
        t.ttfb,
        t.connections,
        t.mirror,
        t.compare,
        field_diffs,
        significant,
        p.rejected,
        p.revision,
        p.reloads,
        p.reload_ok,
        p.reload_at,
        weights,
        log_lines,
        log_dropped,
        p.uptime,
    ]
    .into_iter()
    .map(|f| f.0)
    .collect()
}

/// The families of each route × target series.
struct Traffic {
    requests: Family,
    duration: Family,
    errors: Family,
    ttfb: Family,
    connections: Family,
    mirror: Family,
    compare: Family,
    bytes_in: Family,
    bytes_out: Family,
}

impl Traffic {
    fn of(metrics: &Metrics, config: &Config) -> Traffic {
        use MetricType::{COUNTER, HISTOGRAM};
        let mut t = Traffic {
            requests: Family::new(
                "switchyard_requests_total",
                "Requests answered, by route, the target that served them, exact status (code) and its class (code_class); gRPC calls also by grpc_status.",
                COUNTER,
            ),
            duration: Family::new(
                "switchyard_request_duration_seconds",
                "Time from a request's arrival to the end of its response.",
                HISTOGRAM,
            ),
            errors: Family::new(
                "switchyard_upstream_errors_total",
                "Failed upstream attempts (connect failures are counted per attempt, retried or not).",
                COUNTER,
            ),
            ttfb: Family::new(
                "switchyard_upstream_ttfb_seconds",
                "Time from the upstream connection being ready to the upstream's response header.",
                HISTOGRAM,
            ),
            connections: Family::new(
                "switchyard_upstream_connections_total",
                "Upstream connections used by requests, newly made or reused from the pool.",
                COUNTER,
            ),
            mirror: Family::new(
                "switchyard_mirror_total",
                "Shadow copies of a route's traffic towards a target: sent, or dropped, skipped_body, error, timeout.",
                COUNTER,
            ),
            compare: Family::new(
                "switchyard_mirror_compare_total",
                "Shadow answers compared with the primary's: match, or the first difference (status, body, headers).",
                COUNTER,
            ),
            bytes_in: Family::new(
                "switchyard_request_bytes_total",
                "Request body bytes received from clients.",
                COUNTER,
            ),
            bytes_out: Family::new(
                "switchyard_response_bytes_total",
                "Response body bytes sent to clients.",
                COUNTER,
            ),
        };
        // A mirrored route's shadow series exist from the start, at 0.
        let mut mirrored: std::collections::BTreeSet<(String, String)> = config
            .routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.mirror.as_ref()?.to.clone())))
            .collect();
        for (route, target, s) in metrics.all_series() {
            let configured = mirrored.remove(&(route.clone(), target.clone()));
            t.add(&route, &target, &s, configured);
        }
        for (route, target) in &mirrored {
            t.add_mirror(
                &[("route", route), ("target", target)],
                &[0; MirrorOutcome::ALL.len()],
                &[0; CompareResult::ALL.len()],
            );
        }
        t
    }

    /// One series; its mirror samples when the route mirrors to its target or it ever got one.
    fn add(&mut self, route: &str, target: &str, s: &Series, mirrored: bool) {
        let labels = [("route", route), ("target", target)];
        let totals = s.totals();
        self.add_requests(&labels, s, &totals);
        let (received, sent) = s.bytes();
        self.bytes_in.counter(&labels, received);
        self.bytes_out.counter(&labels, sent);
        self.duration.histogram(&labels, &totals.latency);
        let detail = s.upstream_detail();
        for kind in UpstreamError::ALL {
            self.errors.counter(
                &[labels[0], labels[1], ("kind", kind.as_str())],
                detail.errors[kind as usize],
            );
        }
        self.ttfb.histogram(&labels, &detail.ttfb);
        self.connections.counter(
            &[labels[0], labels[1], ("reused", "false")],
            detail.connections_new,
        );
        self.connections.counter(
            &[labels[0], labels[1], ("reused", "true")],
            detail.connections_reused,
        );
        if mirrored || detail.mirror.iter().any(|n| *n > 0) {
            self.add_mirror(&labels, &detail.mirror, &detail.compare);
        }
    }

    /// gRPC calls are their own samples, with `grpc_status`; the plain samples count the rest, by
    /// exact status (`code`) and its class (`code_class`). A series's statuses past the first 16
    /// distinct ones are counted under `code` = their class.
    fn add_requests(&mut self, labels: &[(&str, &str); 2], s: &Series, totals: &Stats) {
        let codes = s.codes();
        let grpc = s.grpc_totals();
        for (i, class) in CLASS_NAMES.iter().enumerate() {
            let calls: u64 = grpc.iter().map(|c| c[i]).sum();
            let plain = totals.status[i].saturating_sub(calls);
            let mut exact = 0;
            for (code, n) in codes.iter().filter(|(c, _)| class_of(*c) == i) {
                exact += n;
                let code = code.to_string();
                self.requests.counter(
                    &[labels[0], labels[1], ("code", &code), ("code_class", class)],
                    *n,
                );
            }
            if plain > exact {
                self.requests.counter(
                    &[labels[0], labels[1], ("code", class), ("code_class", class)],
                    plain - exact,
                );
            }
            for (code, by_class) in grpc.iter().enumerate() {
                if by_class[i] > 0 {
                    let code = code.to_string();
                    let grpc_labels = [
                        labels[0],
                        labels[1],
                        ("code", "200"),
                        ("code_class", class),
                        ("grpc_status", code.as_str()),
                    ];
                    self.requests.counter(&grpc_labels, by_class[i]);
                }
            }
        }
    }

    fn add_mirror(&mut self, labels: &[(&str, &str); 2], outcomes: &[u64], compared: &[u64]) {
        for o in MirrorOutcome::ALL {
            self.mirror.counter(
                &[labels[0], labels[1], ("outcome", o.as_str())],
                outcomes[o as usize],
            );
        }
        for r in CompareResult::ALL {
            self.compare.counter(
                &[labels[0], labels[1], ("result", r.as_str())],
                compared[r as usize],
            );
        }
    }
}

/// `switchyard_mirror_field_diffs_total{route,kind}` and `switchyard_mirror_significant_fields{route}`:
/// a dark release's differences by kind, and how many fields differ significantly now.
fn field_families(metrics: &Metrics, config: &Config) -> (Family, Family) {
    let mut diffs = Family::new(
        "switchyard_mirror_field_diffs_total",
        "Field differences between shadow and primary answers, by kind (value, type, added, removed).",
        MetricType::COUNTER,
    );
    let mut significant = Family::new(
        "switchyard_mirror_significant_fields",
        "Fields whose shadow differences exceed the noise of the primary's upstream.",
        MetricType::GAUGE,
    );
    let rule = |route: &str| {
        let r = config.routes.iter().find(|r| r.name == route)?;
        Some(Rule::of_config(r.mirror.as_ref()?.compare.as_ref()?))
    };
    let mut routes = metrics.mirror_fields.totals(&rule);
    // Every comparing route has its series from the start, at 0, for a dashboard's queries.
    for r in &config.routes {
        let compares = r.mirror.as_ref().is_some_and(|m| m.compare.is_some());
        if compares && !routes.iter().any(|(name, _, _)| *name == r.name) {
            routes.push((r.name.clone(), [0; 4], 0));
        }
    }
    for (route, kinds, count) in routes {
        for k in Kind::ALL {
            diffs.counter(
                &[("route", &route), ("kind", k.as_str())],
                kinds[k as usize],
            );
        }
        significant.gauge(&[("route", &route)], count as f64);
    }
    (diffs, significant)
}

/// `switchyard_fallbacks_total`. Every fallback a route can make exists from the start (at 0), so a
/// dashboard's query has a series before the first one happens: each non-baseline target of a split
/// to its baseline, and each colour of a blue/green route to the other.
fn fallback_family(metrics: &Metrics, config: &Config) -> Family {
    let mut fallbacks = Family::new(
        "switchyard_fallbacks_total",
        "Requests decided for a target whose pool was down, served by the route's baseline instead.",
        MetricType::COUNTER,
    );
    let mut seen = std::collections::BTreeMap::new();
    for route in &config.routes {
        if let Some(split) = &route.split {
            if let Some(baseline) = split.baseline_name() {
                for (target, _) in split.ordered_targets() {
                    if target != baseline {
                        seen.insert(
                            (route.name.clone(), target.to_string(), baseline.to_string()),
                            0,
                        );
                    }
                }
            }
        } else if let Some(bg) = &route.blue_green {
            seen.insert((route.name.clone(), bg.blue.clone(), bg.green.clone()), 0);
            seen.insert((route.name.clone(), bg.green.clone(), bg.blue.clone()), 0);
        }
    }
    for (route, from, to, n) in metrics.fallbacks() {
        seen.insert((route, from, to), n);
    }
    for ((route, from, to), n) in seen {
        fallbacks.counter(&[("route", &route), ("from", &from), ("to", &to)], n);
    }
    fallbacks
}

/// The process's own families: rejections, the revision, reloads, requests in flight, uptime.
struct Process {
    rejected: Family,
    revision: Family,
    reloads: Family,
    reload_ok: Family,
    reload_at: Family,
    in_flight: Family,
    uptime: Family,
}

impl Process {
    fn of(metrics: &Metrics, revision: u64) -> Process {
        use MetricType::{COUNTER, GAUGE};
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
        let (last_ok, last_success) = metrics.last_reload();
        let mut reload_ok = Family::new(
            "switchyard_config_last_reload_successful",
            "Whether the last reload of the config file was applied (1) or refused (0); 1 before any.",
            GAUGE,
        );
        reload_ok.gauge(&[], if last_ok { 1.0 } else { 0.0 });
        let mut reload_at = Family::new(
            "switchyard_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully, at start or by a reload (Unix time).",
            GAUGE,
        );
        reload_at.gauge(&[], last_success as f64);
        let mut in_flight = Family::new(
            "switchyard_requests_in_flight",
            "Requests being answered now.",
            GAUGE,
        );
        in_flight.gauge(&[], crate::metrics::requests_in_flight() as f64);
        let mut uptime = Family::new(
            "switchyard_uptime_seconds",
            "Seconds since this process started.",
            GAUGE,
        );
        uptime.gauge(&[], metrics.uptime_seconds() as f64);
        Process {
            rejected,
            revision: rev,
            reloads,
            reload_ok,
            reload_at,
            in_flight,
            uptime,
        }
    }
}

/// `switchyard_split_weight`: each target's configured weight (blue/green: 100 for the live colour).
fn weight_family(config: &Config) -> Family {
    let mut weights = Family::new(
        "switchyard_split_weight",
        "Configured weight of each target of a route (blue/green: 100 for the live colour, 0 else).",
        MetricType::GAUGE,
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
    weights
}

/// The access log's lines written and dropped.
fn access_log_families(metrics: &Metrics) -> (Family, Family) {
    let mut log_lines = Family::new(
        "switchyard_access_log_lines_total",
        "Access log lines written.",
        MetricType::COUNTER,
    );
    log_lines.counter(&[], metrics.access_log.written.load(Relaxed));
    let mut log_dropped = Family::new(
        "switchyard_access_log_dropped_total",
        "Access log lines dropped instead of delaying requests: queue full, or the write failed.",
        MetricType::COUNTER,
    );
    log_dropped.counter(
        &[("reason", "queue_full")],
        metrics.access_log.dropped_queue_full.load(Relaxed),
    );
    log_dropped.counter(
        &[("reason", "write_error")],
        metrics.access_log.dropped_write_error.load(Relaxed),
    );
    (log_lines, log_dropped)
}
