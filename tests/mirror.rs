//! Dark releases on a real instance: the shadow gets a faithful copy, the primary never waits for it
//! (slow or dead), sampling, method and body limits, max_in_flight, and the comparison of answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TOKEN: &str = "ops-token";

struct Rig {
    proxy: ProxyProcess,
    admin: SocketAddr,
    v1: RunningBackend,
    v2: RunningBackend,
    slow: RunningBackend,
}

fn start() -> Rig {
    let (v1, v2, slow) = (backend("v1"), backend("v2"), backend("slow"));
    slow.control.set_delay(Duration::from_secs(1));
    let admin = free_addr();
    let dead = free_addr();
    let body = format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {token}}}
upstreams:
  v1: {{backends: ["{v1}"]}}
  v2: {{backends: ["{v2}"]}}
  slow: {{backends: ["{slow}"]}}
  dead: {{backends: ["{dead}"]}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}
    mirror:
      to: v2
      percent: 100
      # Noise is not learned here (tests/mirror_fields.rs does): every difference counts at once.
      compare: {{ignore_headers: [x-served-by], ignore_json: [/ts], noise_percent: 0}}
  - name: writes
    match: {{path_prefix: /writes}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: v2, percent: 100, methods: [GET, POST], max_body_bytes: 4096}}
  - name: half
    match: {{path_prefix: /half}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: v2, percent: 50}}
  - name: slow
    match: {{path_prefix: /slow}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: slow, percent: 100, timeout: 5s, max_in_flight: 1000}}
  - name: tight
    match: {{path_prefix: /tight}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: slow, percent: 100, timeout: 5s, max_in_flight: 2}}
  - name: dead
    match: {{path_prefix: /dead}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: dead, percent: 100, timeout: 2s}}
  - name: plain
    match: {{path_prefix: /plain}}
    split: {{targets: {{v1: 100}}}}
"#,
        token = sha256_hex(TOKEN),
        v1 = v1.addr,
        v2 = v2.addr,
        slow = slow.addr,
    );
    let proxy = ProxyProcess::start_with(&body, "{dir}/access.log", std::process::Stdio::null());
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    Rig {
        proxy,
        admin,
        v1,
        v2,
        slow,
    }
}

impl Rig {
    fn metrics(&self) -> String {
        get(&client(), &format!("http://{}/metrics", self.admin), &[]).body
    }

    /// The value of the sample written exactly as `series` (labels in exposition order); 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn mirror(&self, route: &str, target: &str, outcome: &str) -> f64 {
        self.metric(&format!(
            "switchyard_mirror_total{{route=\"{route}\",target=\"{target}\",outcome=\"{outcome}\"}}"
        ))
    }

    fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = get(
            &client(),
            &format!("http://{}{path}", self.admin),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

fn the_shadow_gets_a_faithful_copy_marked_as_shadow() {
    let rig = start();
    let agent = client();
    let r = get(
        &agent,
        &rig.proxy.url("/api/items?x=1&y=%20two"),
        &[("X-Custom", "abc"), ("X-Switchyard-Shadow", "0")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), "v1");
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(eventually(Duration::from_secs(5), || rig
        .v2
        .control
        .received()
        .len()
        == 1));
    let copy = &rig.v2.control.received()[0];
    assert_eq!(copy.method, "GET");
    assert_eq!(copy.target, "/api/items?x=1&y=%20two");
    let header = |n: &str| {
        copy.headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("x-custom"), ["abc"]);
    assert_eq!(
        header("x-switchyard-shadow"),
        ["1"],
        "the client's own value is replaced"
    );
    assert_eq!(
        header("x-request-id"),
        [id.as_str()],
        "same id as the primary"
    );
    assert_eq!(rig.v1.control.requests(), 1);

    // POST is not mirrored by default...
    // Every ASCII byte, NUL and control characters included.
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 128) as u8).collect();
    let text = String::from_utf8_lossy(&payload).into_owned();
    let r = send_body(
        &agent,
        "POST",
        &rig.proxy.url("/api/orders"),
        &[],
        Some(&text),
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rig.v2.control.received().len(),
        1,
        "POST mirrored by default"
    );

    // ...and byte-exact where allowed.
    let r = send_body(
        &agent,
        "POST",
        &rig.proxy.url("/writes/orders"),
        &[("Content-Type", "application/octet-stream")],
        Some(&text),
    );
    assert_eq!(r.status, 200);
    let got = eventually(Duration::from_secs(5), || {
        rig.v2.control.received().len() == 2
    });
    assert!(
        got,
        "{}",
        rig.metrics()
            .lines()
            .filter(|l| l.contains("mirror"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let copy = &rig.v2.control.received()[1];
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.target, "/writes/orders");
    let primary = rig.v1.control.received().pop().unwrap();
    assert_eq!(
        copy.body, primary.body,
        "the shadow's body is the primary's, byte for byte"
    );
    assert_eq!(copy.body, text.as_bytes());

    // A body over max_body_bytes is not mirrored, and is counted.
    let big = "x".repeat(5000);
    let r = send_body(
        &agent,
        "POST",
        &rig.proxy.url("/writes/big"),
        &[],
        Some(&big),
    );
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(5), || rig.mirror(
        "writes",
        "v2",
        "skipped_body"
    ) == 1.0));
    assert_eq!(rig.v2.control.received().len(), 2);

    // Shadows are not traffic: no series for v2 on `api`, and the access log has primaries only.
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(rig.proxy.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .count()
            == 4
    }));
    let m = rig.metrics();
    let v2_requests: f64 = m
        .lines()
        .filter(|l| l.starts_with("switchyard_requests_total{route=\"api\",target=\"v2\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(v2_requests, 0.0, "{m}");
    let log = std::fs::read_to_string(rig.proxy.dir.join("access.log")).unwrap();
    let mirrored: Vec<bool> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["mirrored"] == true)
        .collect();
    assert_eq!(mirrored, [true, false, true, false]);
}

fn a_slow_or_dead_shadow_leaves_the_primary_unchanged() {
    let rig = start();
    let agent = client();
    let timed = |path: &str| {
        (0..40)
            .map(|_| {
                let t = Instant::now();
                let r = get(&agent, &rig.proxy.url(path), &[]);
                assert_eq!(r.status, 200);
                assert_eq!(r.version(), "v1");
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };
    let plain = p99(timed("/plain"));
    let slow = p99(timed("/slow"));
    let dead = p99(timed("/dead"));
    // The shadow takes 1 s; a primary that waited for it would take as long. The margin absorbs a
    // busy test machine, not the shadow.
    let bound = plain * 3 + Duration::from_millis(250);
    assert!(
        slow < bound,
        "p99 with a 1 s shadow {slow:?}, without {plain:?}"
    );
    assert!(
        dead < bound,
        "p99 with a dead shadow {dead:?}, without {plain:?}"
    );
    assert_eq!(rig.v1.control.requests(), 120);
    assert!(eventually(Duration::from_secs(10), || {
        rig.mirror("slow", "slow", "sent") == 40.0 && rig.slow.control.requests() == 40
    }));
    assert!(eventually(Duration::from_secs(5), || rig
        .mirror("dead", "dead", "error")
        == 40.0));
    assert_eq!(rig.mirror("slow", "slow", "timeout"), 0.0);
}

fn max_in_flight_drops_instead_of_queueing() {
    let rig = start();
    let agent = client();
    for _ in 0..10 {
        assert_eq!(get(&agent, &rig.proxy.url("/tight"), &[]).status, 200);
    }
    // Each copy takes 1 s: the first 2 run, the other 8 are dropped at once, never sent later.
    assert_eq!(rig.mirror("tight", "slow", "sent"), 2.0);
    assert_eq!(rig.mirror("tight", "slow", "dropped"), 8.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rig.slow.control.requests(), 2);
}

fn sampling_at_50_percent_lands_within_binomial_bounds() {
    let rig = start();
    let agent = client();
    let n = 1000;
    for _ in 0..n {
        assert_eq!(get(&agent, &rig.proxy.url("/half"), &[]).status, 200);
    }
    // mean 500, sd 15.8: within 5 sd.
    let sent = rig.mirror("half", "v2", "sent");
    assert!((421.0..=579.0).contains(&sent), "{sent} of {n} mirrored");
    assert!(eventually(Duration::from_secs(5), || {
        rig.v2.control.requests() as f64 == sent
    }));
}

fn answers_are_compared_json_aware_with_ignores_and_diffs_are_kept() {
    let rig = start();
    let agent = client();
    rig.v1
        .control
        .set_body(Some(r#"{"a":1,"b":{"c":[1,2]},"ts":"10:00"}"#));
    rig.v2.control.set_body(Some(
        "{ \"ts\": \"10:01\",\n  \"b\": {\"c\": [1, 2]}, \"a\": 1 }",
    ));
    for _ in 0..5 {
        get(&agent, &rig.proxy.url("/api/x"), &[]);
    }
    let compare = |result: &str| {
        rig.metric(&format!(
            "switchyard_mirror_compare_total{{route=\"api\",target=\"v2\",result=\"{result}\"}}"
        ))
    };
    assert!(eventually(Duration::from_secs(5), || compare("match") == 5.0));

    rig.v2
        .control
        .set_body(Some(r#"{"a":2,"b":{"c":[1,2]},"ts":"10:01"}"#));
    get(
        &agent,
        &rig.proxy.url("/api/changed"),
        &[("Authorization", "Bearer secret")],
    );
    assert!(eventually(Duration::from_secs(5), || compare("body") == 1.0));
    rig.v2.control.set_status(500);
    get(&agent, &rig.proxy.url("/api/status"), &[]);
    assert!(eventually(Duration::from_secs(5), || compare("status") == 1.0));

    let diffs = rig.admin_get("/v1/mirror/diffs?route=api");
    let diffs = diffs["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 2);
    assert_eq!(diffs[0]["result"], "body");
    assert_eq!(diffs[0]["diff"], "body at /a: primary 1 != shadow 2");
    assert_eq!(diffs[0]["path"], "/api/changed");
    assert_eq!(diffs[0]["primary"]["status"], 200);
    assert!(diffs[0]["shadow"]["body"]
        .as_str()
        .unwrap()
        .contains("\"a\":2"));
    assert_eq!(diffs[1]["result"], "status");
    assert_eq!(diffs[1]["diff"], "status: primary 200 != shadow 500");

    let stats = rig.admin_get("/v1/stats?route=api");
    let v2 = stats["routes"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "v2")
        .unwrap()
        .clone();
    assert_eq!(v2["last_60s"]["mirror_sent"], 7);
    let rate = v2["last_60s"]["mirror_diff_rate"].as_f64().unwrap();
    assert!((rate - 2.0 / 7.0).abs() < 1e-9, "{rate}");
    assert_eq!(v2["last_60s"]["requests"], 0, "shadows are not requests");
}

on_every_path!(
    the_shadow_gets_a_faithful_copy_marked_as_shadow,
    a_slow_or_dead_shadow_leaves_the_primary_unchanged,
    max_in_flight_drops_instead_of_queueing,
    sampling_at_50_percent_lands_within_binomial_bounds,
    answers_are_compared_json_aware_with_ignores_and_diffs_are_kept,
);
