//! Per-version observability on a real instance: Prometheus counters equal the traffic sent, latency
//! lands in the right buckets and percentiles, upstream-side detail (connect failures, timeouts, reuse,
//! fallbacks), `/v1/stats` and `ctl stats`, and the JSON access log — including when it cannot be
//! written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

const TOKEN: &str = "ops-token";

/// Samples of a Prometheus text page: (name, sorted labels) -> value.
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut out = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut pairs: Vec<(String, String)> = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            pairs.sort();
            out.insert((name.to_string(), pairs), value.parse::<f64>().unwrap());
        }
        Scrape(out)
    }

    /// The value of `name{labels}`; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        self.0.get(&(name.to_string(), key)).copied().unwrap_or(0.0)
    }

    /// Requests counted: answered by a target, or rejected before one was chosen.
    fn total(&self) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| {
                n == "switchyard_requests_total" || n == "switchyard_rejected_total"
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every sample of `name`, with its labels.
    fn all(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.iter().cloned().collect(), *v))
            .collect()
    }
}

struct Rig {
    proxy: ProxyProcess,
    admin: SocketAddr,
    v1: RunningBackend,
    v2: RunningBackend,
    slow: RunningBackend,
    broken: RunningBackend,
}

impl Rig {
    fn start(access_log: &str, stdout: Stdio) -> Rig {
        let (v1, v2, slow, broken) = (
            backend("v1"),
            backend("v2"),
            backend("slow"),
            backend("broken"),
        );
        slow.control.set_delay(Duration::from_millis(200));
        broken.control.set_status(503);
        let admin = free_addr();
        let refused = free_addr();
        let body = format!(
            r#"admin:
  listen: "{admin}"
  tokens: {{ops: {token}}}
upstreams:
  v1: {{backends: ["{v1}"]}}
  v2: {{backends: ["{v2}"]}}
  slow: {{backends: ["{slow}"]}}
  impatient: {{backends: ["{slow}"], timeouts: {{read: 50ms}}}}
  broken: {{backends: ["{broken}"]}}
  half-dead: {{backends: ["{refused}", "{v1}"]}}
  down:
    backends: ["{refused}"]
    health_check: {{path: /health, interval: 100ms, timeout: 100ms, unhealthy_after: 1}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: beta}}}}
        to: v2
    split: {{targets: {{v1: 50, v2: 50}}, baseline: v1, sticky: [header:X-User-Id]}}
  - name: slow
    match: {{path_prefix: /slow}}
    split: {{targets: {{slow: 100}}}}
  - name: impatient
    match: {{path_prefix: /impatient}}
    split: {{targets: {{impatient: 100}}}}
  - name: broken
    match: {{path_prefix: /broken}}
    split: {{targets: {{broken: 100}}}}
  - name: half-dead
    match: {{path_prefix: /half}}
    split: {{targets: {{half-dead: 100}}}}
  - name: fallback
    match: {{path_prefix: /fallback}}
    split: {{targets: {{v1: 0, down: 100}}, baseline: v1}}
  - name: rolling
    match: {{path_prefix: /rolling}}
    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}
    rollout: {{canary: v2, steps: [{{pause: {{}}}}, 10], hold: 1m}}
  - name: shadowed
    match: {{path_prefix: /shadowed}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: v2, percent: 0, compare: {{}}}}
"#,
            token = sha256_hex(TOKEN),
            v1 = v1.addr,
            v2 = v2.addr,
            slow = slow.addr,
            broken = broken.addr,
        );
        let proxy = ProxyProcess::start_with(&body, access_log, stdout);
        assert!(eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(admin).is_ok()
        }));
        Rig {
            proxy,
            admin,
            v1,
            v2,
            slow,
            broken,
        }
    }

    fn scrape(&self) -> Scrape {
        let r = get(&client(), &format!("http://{}/metrics", self.admin), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        Scrape::parse(&r.body)
    }

    /// A scrape once `n` requests have been counted. A request is counted in the proxy's logging
    /// phase, which may end just after the client has read the response.
    fn scrape_after(&self, n: usize) -> Scrape {
        let mut last = self.scrape();
        for _ in 0..200 {
            if last.total() >= n as f64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
            last = self.scrape();
        }
        assert_eq!(last.total(), n as f64, "requests counted");
        last
    }

    fn stats(&self, route: &str) -> serde_json::Value {
        let r = get(
            &client(),
            &format!("http://{}/v1/stats?route={route}", self.admin),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

fn window<'a>(stats: &'a serde_json::Value, target: &str, which: &str) -> &'a serde_json::Value {
    stats["routes"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no target {target} in {stats}"))
        .get(which)
        .unwrap()
}

fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn counters_equal_the_requests_sent_per_route_target_and_class() {
    let rig = Rig::start("off", Stdio::null());
    let agent = client();
    // Before any traffic, every fallback a route can make is a series at 0.
    assert_eq!(
        rig.scrape().get(
            "switchyard_fallbacks_total",
            &[("route", "api"), ("from", "v2"), ("to", "v1")]
        ),
        0.0
    );
    assert!(rig
        .scrape()
        .all("switchyard_fallbacks_total")
        .iter()
        .any(|(l, v)| l["route"] == "api" && l["from"] == "v2" && *v == 0.0));
    let mut expected: HashMap<(String, String, String), u64> = HashMap::new();
    for i in 0..300 {
        let user = format!("user-{i}");
        let mut headers = vec![("X-User-Id", user.as_str())];
        if i % 10 == 0 {
            headers.push(("X-Version", "beta"));
        }
        let r = get(&agent, &rig.proxy.url("/api/orders"), &headers);
        assert_eq!(r.status, 200);
        *expected
            .entry(("api".into(), r.version(), r.status.to_string()))
            .or_default() += 1;
    }
    for _ in 0..25 {
        let r = get(&agent, &rig.proxy.url("/broken/x"), &[]);
        assert_eq!(r.status, 503);
        *expected
            .entry(("broken".into(), "broken".into(), "503".into()))
            .or_default() += 1;
    }
    for _ in 0..7 {
        assert_eq!(get(&agent, &rig.proxy.url("/nowhere"), &[]).status, 404);
    }

    let m = rig.scrape_after(332);
    let mut seen = 0.0;
    for (labels, value) in m.all("switchyard_requests_total") {
        // `code` is the exact status; `code_class` its class.
        let code: u16 = labels["code"].parse().unwrap();
        assert_eq!(labels["code_class"], class(code), "{labels:?}");
        let key = (
            labels["route"].clone(),
            labels["target"].clone(),
            labels["code"].clone(),
        );
        let want = expected.get(&key).copied().unwrap_or(0) as f64;
        assert_eq!(value, want, "switchyard_requests_total{labels:?}");
        seen += value;
    }
    assert_eq!(seen, 325.0);
    assert!(expected[&("api".to_string(), "v2".to_string(), "200".to_string())] >= 30);
    // Body bytes sent per route and target: every demo answer is a JSON body.
    assert!(
        m.get(
            "switchyard_response_bytes_total",
            &[("route", "api"), ("target", "v1")]
        ) > 100.0 * 60.0
    );
    // The scrape itself is the only request in flight (none on the proxy's listeners).
    assert_eq!(m.get("switchyard_requests_in_flight", &[]), 0.0);
    assert_eq!(m.get("switchyard_config_last_reload_successful", &[]), 1.0);
    assert!(
        m.get(
            "switchyard_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    // The histogram counts the same requests.
    for target in ["v1", "v2"] {
        let sent: u64 = expected
            .iter()
            .filter(|((r, t, _), _)| r == "api" && t == target)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            m.get(
                "switchyard_request_duration_seconds_count",
                &[("route", "api"), ("target", target)]
            ),
            sent as f64
        );
    }
    assert_eq!(
        m.get("switchyard_rejected_total", &[("reason", "no_route")]),
        7.0
    );
    // Revision 2: the `rolling` route's rollout started (its first step is a revision by `rollout`).
    assert_eq!(m.get("switchyard_config_revision", &[]), 2.0);
    assert_eq!(
        m.get(
            "switchyard_split_weight",
            &[("route", "api"), ("target", "v2")]
        ),
        50.0
    );
    assert_eq!(rig.v1.control.requests() + rig.v2.control.requests(), 300);
    assert_eq!(rig.broken.control.requests(), 25);

    // A refused reload is counted, and changes nothing else.
    std::fs::write(rig.proxy.config_path(), "routes: [").unwrap();
    signal(rig.proxy.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || {
        rig.scrape()
            .get("switchyard_reloads_total", &[("result", "error")])
            == 1.0
    }));
    assert_eq!(rig.scrape().get("switchyard_config_revision", &[]), 2.0);
    assert_eq!(
        rig.scrape()
            .get("switchyard_config_last_reload_successful", &[]),
        0.0
    );
}

fn a_200ms_upstream_lands_above_100ms_and_its_p99_reads_200_to_300ms() {
    let rig = Rig::start("off", Stdio::null());
    // 100 requests (5 clients at a time), so that one slow outlier on a busy machine is not the p99.
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let url = rig.proxy.url("/slow/x");
            std::thread::spawn(move || {
                let agent = client();
                for _ in 0..20 {
                    assert_eq!(get(&agent, &url, &[]).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = rig.scrape_after(100);
    let labels = [("route", "slow"), ("target", "slow")];
    let bucket =
        |name: &str, le: &str| m.get(name, &[("route", "slow"), ("target", "slow"), ("le", le)]);
    for name in [
        "switchyard_request_duration_seconds_bucket",
        "switchyard_upstream_ttfb_seconds_bucket",
    ] {
        assert_eq!(bucket(name, "0.1"), 0.0, "{name}");
        assert_eq!(bucket(name, "+Inf"), 100.0, "{name}");
        assert!(bucket(name, "0.25") >= 95.0, "{name}");
    }
    let sum = m.get("switchyard_request_duration_seconds_sum", &labels);
    assert!(sum >= 20.0, "sum {sum}");
    assert_eq!(rig.slow.control.requests(), 100);

    let stats = rig.stats("slow");
    for which in ["last_60s", "since_start"] {
        let w = window(&stats, "slow", which);
        assert_eq!(w["requests"], 100);
        for p in ["p50_ms", "p95_ms", "p99_ms"] {
            let v = w[p].as_f64().unwrap();
            assert!((200.0..300.0).contains(&v), "{which} {p} = {v}");
        }
        assert_eq!(w["error_rate"], 0.0);
    }
}

fn an_all_503_upstream_has_a_5xx_rate_of_one_and_ctl_shows_it() {
    let rig = Rig::start("off", Stdio::null());
    let agent = client();
    for _ in 0..20 {
        assert_eq!(get(&agent, &rig.proxy.url("/broken"), &[]).status, 503);
    }
    rig.scrape_after(20);
    let stats = rig.stats("broken");
    for which in ["last_60s", "since_start"] {
        let w = window(&stats, "broken", which);
        assert_eq!(w["requests"], 20);
        assert_eq!(w["status_5xx"], 20);
        assert_eq!(w["error_rate"], 1.0);
        assert_eq!(w["upstream_errors"], 0, "a 503 is an answer, not a failure");
    }
    // An unknown route is a clean 404.
    let r = get(
        &client(),
        &format!("http://{}/v1/stats?route=nope", rig.admin),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 404);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "stats", "broken"])
        .env("SWITCHYARD_ADMIN", format!("http://{}", rig.admin))
        .env("SWITCHYARD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("broken"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "broken");
    assert_eq!(cols[2], "20");
    assert_eq!(cols[4], "100.00", "{row}");
}

fn upstream_detail_connect_failures_timeouts_reuse_and_fallbacks() {
    let rig = Rig::start("off", Stdio::null());
    let agent = client();
    // Half the pool refuses connections: every request still succeeds, on the other backend.
    for _ in 0..10 {
        let r = get(&agent, &rig.proxy.url("/half"), &[]);
        assert_eq!(r.status, 200);
    }
    // A read timeout of 50 ms against a 200 ms upstream: 504, counted as a timeout.
    for _ in 0..3 {
        let r = get(&agent, &rig.proxy.url("/impatient"), &[]);
        assert_eq!(r.status, 504, "{}", r.body);
        assert_eq!(r.json()["error"], "upstream_timeout");
    }
    // Keep-alive to the upstream: later requests reuse the connection.
    for _ in 0..5 {
        get(&agent, &rig.proxy.url("/api/x"), &[("X-User-Id", "same")]);
    }
    // Once health checks mark `down` dead, its traffic goes to the baseline and is counted.
    let mut sent = 18;
    assert!(eventually(Duration::from_secs(10), || {
        sent += 1;
        get(&agent, &rig.proxy.url("/fallback"), &[]).status == 200
    }));
    let before = rig.scrape_after(sent).get(
        "switchyard_fallbacks_total",
        &[("route", "fallback"), ("from", "down"), ("to", "v1")],
    );
    for _ in 0..8 {
        let r = get(&agent, &rig.proxy.url("/fallback"), &[]);
        assert_eq!(r.version(), "v1");
    }

    let m = rig.scrape_after(sent + 8);
    let half = [("route", "half-dead"), ("target", "half-dead")];
    let errors = |route: &str, target: &str, kind: &str| {
        m.get(
            "switchyard_upstream_errors_total",
            &[("route", route), ("target", target), ("kind", kind)],
        )
    };
    let refused = errors("half-dead", "half-dead", "connect_failure");
    assert!(
        (1.0..=10.0).contains(&refused),
        "the dead backend is tried, once per request at most: {refused}"
    );
    assert_eq!(
        m.get(
            "switchyard_requests_total",
            &[half[0], half[1], ("code", "200"), ("code_class", "2xx")]
        ),
        10.0
    );
    assert_eq!(errors("impatient", "impatient", "timeout"), 3.0);
    assert_eq!(
        m.get(
            "switchyard_requests_total",
            &[
                ("route", "impatient"),
                ("target", "impatient"),
                ("code", "504"),
                ("code_class", "5xx")
            ]
        ),
        3.0
    );
    let api = |reused: &str| {
        m.get(
            "switchyard_upstream_connections_total",
            &[("route", "api"), ("target", "v1"), ("reused", reused)],
        ) + m.get(
            "switchyard_upstream_connections_total",
            &[("route", "api"), ("target", "v2"), ("reused", reused)],
        )
    };
    assert_eq!(api("true") + api("false"), 5.0);
    assert!(api("true") >= 4.0, "reused {}", api("true"));
    let after = m.get(
        "switchyard_fallbacks_total",
        &[("route", "fallback"), ("from", "down"), ("to", "v1")],
    );
    assert_eq!(after - before, 8.0);

    let stats = rig.stats("fallback");
    let down = window(&stats, "down", "last_60s");
    assert!(down["fallbacks"].as_u64().unwrap() >= 8, "{stats}");
    assert!(
        window(&stats, "v1", "last_60s")["requests"]
            .as_u64()
            .unwrap()
            >= 8
    );
    dashboard_queries_only_use_exposed_metrics(&m);

    let half = rig.stats("half-dead");
    assert_eq!(
        window(&half, "half-dead", "since_start")["upstream_errors"]
            .as_f64()
            .unwrap(),
        refused
    );
    drop(rig.v2);
}

/// Every metric the shipped Grafana dashboard queries is exposed, with every label it selects on or
/// groups by.
fn dashboard_queries_only_use_exposed_metrics(m: &Scrape) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/grafana/switchyard-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    // The alerting rules in conf/prometheus/ too.
    let rules: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/prometheus/switchyard.rules.yml"
        ))
        .unwrap(),
    )
    .unwrap();
    let before = exprs.len();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= before + 7);
    for expr in &exprs {
        let mut labels_of_expr = std::collections::HashSet::new();
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("switchyard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if name.starts_with("switchyard_fleet_") {
                // Only an instance of a fleet has them: tests/fleet.rs checks them there.
                continue;
            }
            let samples = m.all(&name);
            assert!(!samples.is_empty(), "{name} (in {expr}) is not exposed");
            let labels: std::collections::HashSet<String> = samples
                .iter()
                .flat_map(|(l, _)| l.keys().cloned())
                .collect();
            if let Some(selector) = rest.strip_prefix('{') {
                let selector = &selector[..selector.find('}').unwrap()];
                for matcher in selector.split(',') {
                    let key = matcher.split(['=', '!']).next().unwrap().trim();
                    // `instance` and `job` are added by Prometheus when it scrapes.
                    if key != "instance" && key != "job" {
                        assert!(labels.contains(key), "{name} has no label {key} ({expr})");
                    }
                }
            }
            labels_of_expr.extend(labels);
        }
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("by (") {
            let group = &rest[at + 4..];
            let group = &group[..group.find(')').unwrap()];
            for key in group
                .split(',')
                .map(str::trim)
                .filter(|k| *k != "instance" && *k != "job")
            {
                assert!(
                    labels_of_expr.contains(key),
                    "grouping by {key}: no such label ({expr})"
                );
            }
            rest = &rest[at + 4..];
        }
    }
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn one_access_log_line_per_request_with_the_spec_fields() {
    let rig = Rig::start("{dir}/access.log", Stdio::null());
    let path = rig.proxy.dir.join("access.log");
    let agent = client();
    let mut sent = Vec::new();
    for i in 0..40 {
        let (url, headers): (&str, Vec<(&str, &str)>) = match i % 4 {
            0 => (
                "/api/a?secret=1",
                vec![
                    ("X-Version", "beta"),
                    ("User-Agent", "release-check/1.0"),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("traceparent", TRACEPARENT),
                ],
            ),
            1 => ("/api/b", vec![("X-User-Id", "alice")]),
            2 => ("/nowhere", vec![]),
            _ => ("/broken", vec![]),
        };
        let r = get(&agent, &rig.proxy.url(url), &headers);
        if i % 4 == 0 {
            // Trace context goes on to the upstream unchanged.
            assert_eq!(
                r.upstream_header("traceparent").as_deref(),
                Some(TRACEPARENT)
            );
        }
        sent.push((i, r.header("x-request-id").unwrap().to_string(), r.status));
    }
    let m = rig.scrape_after(40);
    assert!(eventually(Duration::from_secs(5), || log_lines(&path)
        .len()
        >= 40));
    std::thread::sleep(Duration::from_millis(200));
    let lines = log_lines(&path);
    assert_eq!(lines.len(), 40, "one line per request");
    let fields = [
        "ts",
        "request_id",
        "route",
        "target",
        "reason",
        "client",
        "method",
        "path",
        "status",
        "upstream",
        "duration_ms",
        "mirrored",
        "protocol",
        "client_addr",
        "host",
        "request_bytes",
        "response_bytes",
    ];
    for (i, id, status) in sent {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line for {id}"));
        for f in fields {
            assert!(line.get(f).is_some(), "{f} missing in {line}");
        }
        assert_eq!(line["status"], status);
        assert_eq!(line["method"], "GET");
        assert!(line["ts"].as_str().unwrap().ends_with('Z'));
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(line["mirrored"], false);
        match i % 4 {
            0 => {
                assert_eq!(line["route"], "api");
                assert_eq!(line["target"], "v2");
                assert_eq!(line["reason"], "rule:0");
                assert_eq!(line["path"], "/api/a", "the query string is not logged");
                assert_eq!(line["upstream"], rig.v2.addr.to_string());
                // What Envoy and Traefik users grep for.
                assert_eq!(line["client_addr"], "127.0.0.1");
                assert_eq!(line["user_agent"], "release-check/1.0");
                assert_eq!(line["x_forwarded_for"], "203.0.113.7");
                assert_eq!(line["traceparent"], TRACEPARENT);
                assert!(
                    line["host"].as_str().unwrap().starts_with("localhost")
                        || line["host"].as_str().unwrap().starts_with("127.0.0.1"),
                    "{line}"
                );
                let protocol = if request_path().http2() {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                };
                assert_eq!(line["protocol"], protocol);
                assert!(line["response_bytes"].as_u64().unwrap() > 20, "{line}");
                assert_eq!(line["request_bytes"], 0);
                assert!(line["upstream_ttfb_ms"].as_f64().unwrap() > 0.0, "{line}");
                let tls = rig.proxy.tls_addr.is_some();
                assert_eq!(line["tls_version"].is_string(), tls, "{line}");
            }
            1 => {
                assert_eq!(line["route"], "api");
                let reason = line["reason"].as_str().unwrap();
                assert!(reason.starts_with("split:"), "{reason}");
            }
            2 => {
                assert_eq!(line["route"], serde_json::Value::Null);
                assert_eq!(line["target"], serde_json::Value::Null);
                assert_eq!(line["reason"], "no_route");
                assert_eq!(line["status"], 404);
            }
            _ => {
                assert_eq!(line["route"], "broken");
                assert_eq!(line["status"], 503);
            }
        }
    }
    assert!(eventually(Duration::from_secs(5), || {
        rig.scrape().get("switchyard_access_log_lines_total", &[]) == 40.0
    }));
    drop(m);

    // logrotate: move the file away, SIGUSR1 (as for nginx), and new lines go to a new file.
    let rotated = rig.proxy.dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    signal(rig.proxy.child.id(), "USR1");
    std::thread::sleep(Duration::from_millis(300));
    get(&agent, &rig.proxy.url("/api/after"), &[]);
    assert!(eventually(Duration::from_secs(5), || log_lines(&path)
        .len()
        == 1));
    assert_eq!(log_lines(&rotated).len(), 40);
}

fn an_unwritable_log_never_blocks_or_fails_a_request() {
    // /dev/full: every write fails with ENOSPC, like a full disk.
    let rig = Rig::start("/dev/full", Stdio::null());
    let agent = client();
    for _ in 0..50 {
        assert_eq!(get(&agent, &rig.proxy.url("/api/x"), &[]).status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || {
        rig.scrape().get(
            "switchyard_access_log_dropped_total",
            &[("reason", "write_error")],
        ) == 50.0
    }));
    let m = rig.scrape();
    assert_eq!(m.get("switchyard_access_log_lines_total", &[]), 0.0);
    assert_eq!(m.total(), 50.0);
}

fn a_stalled_stdout_drops_lines_instead_of_stalling_requests() {
    // Nobody reads the pipe: once it and the queue are full, lines are dropped and counted.
    let mut rig = Rig::start("stdout", Stdio::piped());
    let stdout = rig.proxy.child.stdout.take().unwrap();
    let total = 10_000;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = rig.proxy.url("/api/x");
            std::thread::spawn(move || {
                let agent = client();
                let mut ok = 0;
                for _ in 0..total / 4 {
                    if get(&agent, &url, &[]).status == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, total);
    let m = rig.scrape();
    let dropped = m.get(
        "switchyard_access_log_dropped_total",
        &[("reason", "queue_full")],
    );
    assert!(dropped > 0.0, "nothing dropped");
    // Whatever was not dropped reaches stdout once it is read.
    let mut reader = stdout;
    let mut buf = vec![0u8; 1 << 16];
    let n = reader.read(&mut buf).unwrap();
    assert!(n > 0);
}

on_both_paths!(
    counters_equal_the_requests_sent_per_route_target_and_class,
    a_200ms_upstream_lands_above_100ms_and_its_p99_reads_200_to_300ms,
    an_all_503_upstream_has_a_5xx_rate_of_one_and_ctl_shows_it,
    upstream_detail_connect_failures_timeouts_reuse_and_fallbacks,
    one_access_log_line_per_request_with_the_spec_fields,
    an_unwritable_log_never_blocks_or_fails_a_request,
    a_stalled_stdout_drops_lines_instead_of_stalling_requests,
);

on_tls_paths!(
    counters_equal_the_requests_sent_per_route_target_and_class,
    upstream_detail_connect_failures_timeouts_reuse_and_fallbacks,
    a_200ms_upstream_lands_above_100ms_and_its_p99_reads_200_to_300ms,
    an_all_503_upstream_has_a_5xx_rate_of_one_and_ctl_shows_it,
    one_access_log_line_per_request_with_the_spec_fields,
    an_unwritable_log_never_blocks_or_fails_a_request,
    a_stalled_stdout_drops_lines_instead_of_stalling_requests,
);
on_h2_paths!(
    counters_equal_the_requests_sent_per_route_target_and_class,
    upstream_detail_connect_failures_timeouts_reuse_and_fallbacks,
    a_200ms_upstream_lands_above_100ms_and_its_p99_reads_200_to_300ms,
    an_all_503_upstream_has_a_5xx_rate_of_one_and_ctl_shows_it,
    one_access_log_line_per_request_with_the_spec_fields,
    an_unwritable_log_never_blocks_or_fails_a_request,
    a_stalled_stdout_drops_lines_instead_of_stalling_requests,
);

/// `metrics.listen` serves `/metrics` and `/healthz` without a token and nothing else; `/metrics` is
/// gzipped when the scraper asks for it, and the histograms have sub-millisecond buckets.
#[test]
fn metrics_have_a_listener_of_their_own_and_are_gzipped_on_request() {
    use std::io::Read;
    let v1 = backend("v1");
    let (admin, metrics) = (free_addr(), free_addr());
    let proxy = ProxyProcess::start(&format!(
        "admin:\n  listen: \"{admin}\"\n  tokens: {{ops: {}}}\nmetrics: {{listen: \"{metrics}\"}}\nupstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 100}}}}\n",
        sha256_hex("ops-token"),
        v1.addr
    ));
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(metrics).is_ok()
    }));
    let agent = client();
    for _ in 0..5 {
        assert_eq!(get(&agent, &proxy.url("/x"), &[]).status, 200);
    }
    // A request is counted once its answer is written: the client can read it a moment before.
    let mut plain = get(&agent, &format!("http://{metrics}/metrics"), &[]);
    let counted =
        r#"switchyard_requests_total{route="api",target="v1",code="200",code_class="2xx"} 5"#;
    eventually(Duration::from_secs(2), || {
        plain = get(&agent, &format!("http://{metrics}/metrics"), &[]);
        plain.body.contains(counted)
    });
    assert_eq!(plain.status, 200);
    assert!(plain.body.contains(counted), "{}", plain.body);
    assert!(plain.body.contains(
        r#"switchyard_request_duration_seconds_bucket{route="api",target="v1",le="0.0001"}"#
    ));
    // gzip when asked for (ureq sends no Accept-Encoding of its own here).
    let r = ureq::get(&format!("http://{metrics}/metrics"))
        .set("Accept-Encoding", "gzip")
        .call()
        .unwrap();
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut zipped = Vec::new();
    r.into_reader().read_to_end(&mut zipped).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(zipped.as_slice())
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("switchyard_requests_total{"), "{text}");
    assert!(
        zipped.len() * 3 < text.len(),
        "{} -> {}",
        text.len(),
        zipped.len()
    );
    // Nothing of the admin API on this listener.
    assert_eq!(
        get(&agent, &format!("http://{metrics}/healthz"), &[]).status,
        200
    );
    let status = get(
        &agent,
        &format!("http://{metrics}/v1/status"),
        &[("Authorization", "Bearer ops-token")],
    );
    assert_eq!(status.status, 404);
    // The admin listener still serves /metrics too.
    assert_eq!(
        get(&agent, &format!("http://{admin}/metrics"), &[]).status,
        200
    );
}
