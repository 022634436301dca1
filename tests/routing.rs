//! Release decisions on real traffic: splits, stickiness, the monotone ramp, agreement between
//! instances, every rule kind, blue/green, clients, header hygiene and request ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::collections::HashMap;

fn split_config(v1: &RunningBackend, v2: &RunningBackend, canary: u32) -> String {
    format!(
        r#"
upstreams:
  v1: {{backends: ["{a}"]}}
  v2: {{backends: ["{b}"]}}
routes:
  - name: payments
    match: {{path_prefix: /api}}
    split:
      targets: {{v1: {w1}, v2: {canary}}}
      baseline: v1
      sticky: [header:X-User-Id]
"#,
        a = v1.addr,
        b = v2.addr,
        w1 = 100 - canary
    )
}

/// Which version each of `users` gets from one proxy.
fn assignments(proxy: &ProxyProcess, users: std::ops::Range<u32>) -> Vec<String> {
    let agent = client();
    let url = proxy.url("/api/pay");
    users
        .map(|u| get(&agent, &url, &[("X-User-Id", &format!("user-{u}"))]).version())
        .collect()
}

fn split_shares_are_within_one_percent_and_users_stay_put() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start(&split_config(&v1, &v2, 10));
    let first = assignments(&proxy, 0..10_000);
    let on_v2 = first.iter().filter(|v| *v == "v2").count() as f64 / 100.0;
    assert!(
        (on_v2 - 10.0).abs() <= 1.0,
        "v2 share {on_v2}% for a 10% canary"
    );
    // The same user always gets the same version.
    let again = assignments(&proxy, 0..2_000);
    assert_eq!(&first[..2_000], &again[..]);
}

fn two_instances_agree_and_raising_the_canary_never_moves_users_back() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let users = 0..3_000;
    let at_5 = ProxyProcess::start(&split_config(&v1, &v2, 5));
    let at_5_again = ProxyProcess::start(&split_config(&v1, &v2, 5));
    let a = assignments(&at_5, users.clone());
    let b = assignments(&at_5_again, users.clone());
    assert_eq!(a, b, "two instances with the same config disagree");
    drop((at_5, at_5_again));

    let mut previous = a;
    for canary in [20, 50] {
        let proxy = ProxyProcess::start(&split_config(&v1, &v2, canary));
        let now = assignments(&proxy, users.clone());
        for (u, (was, is)) in previous.iter().zip(&now).enumerate() {
            assert!(
                !(was == "v2" && is == "v1"),
                "user-{u} moved back to v1 when the canary rose to {canary}%"
            );
        }
        let share = now.iter().filter(|v| *v == "v2").count() as f64 / 30.0;
        assert!(
            (share - canary as f64).abs() <= 2.5,
            "share {share}% at {canary}%"
        );
        previous = now;
    }
}

fn requests_without_a_sticky_key_are_spread_by_weight() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start(&split_config(&v1, &v2, 50));
    let agent = client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..2_000 {
        *counts
            .entry(get(&agent, &proxy.url("/api"), &[]).version())
            .or_default() += 1;
    }
    // Binomial(2000, 0.5): 6 standard deviations is about ±134.
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert!((866..=1134).contains(&v2), "{counts:?}");
}

const KEY_ACME: &str = "key-acme";
const KEY_GLOBEX: &str = "key-globex";

fn rules_config(
    v1: &RunningBackend,
    v2: &RunningBackend,
    blue: &RunningBackend,
    green: &RunningBackend,
) -> String {
    format!(
        r#"
clients:
  api_key_header: X-Api-Key
  keys:
    acme: {acme}
    globex: {globex}
upstreams:
  v1: {{backends: ["{v1}"]}}
  v2: {{backends: ["{v2}"]}}
  blue: {{backends: ["{blue}"]}}
  green: {{backends: ["{green}"]}}
routes:
  - name: payments
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: beta}}}}
        to: v2
      - when: {{header_present: X-Debug-V2}}
        to: v2
      - when: {{cookie: {{canary: "yes"}}}}
        to: v2
      - when: {{query: {{version: "2"}}}}
        to: v2
      - when: {{client_in: [globex]}}
        to: v2
      - when: {{method: [DELETE]}}
        to: v2
      - when: {{source_ip: ["10.0.0.0/8"], header: {{X-Net: test}}}}
        to: v2
      - when: {{source_ip: ["127.0.0.0/8"], header: {{X-Net: loop}}}}
        to: v2
    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}
  - name: partners
    match: {{path_prefix: /partners}}
    require_client: true
    split: {{targets: {{v1: 1}}}}
  - name: web
    match: {{host: www.example.com}}
    blue_green: {{blue: blue, green: green, live: green}}
"#,
        acme = sha256_hex(KEY_ACME),
        globex = sha256_hex(KEY_GLOBEX),
        v1 = v1.addr,
        v2 = v2.addr,
        blue = blue.addr,
        green = green.addr,
    )
}

struct Fleet {
    v1: RunningBackend,
    v2: RunningBackend,
    _blue: RunningBackend,
    _green: RunningBackend,
    proxy: ProxyProcess,
}

fn fleet() -> Fleet {
    let (v1, v2, blue, green) = (
        backend("v1"),
        backend("v2"),
        backend("blue"),
        backend("green"),
    );
    let proxy = ProxyProcess::start(&rules_config(&v1, &v2, &blue, &green));
    Fleet {
        v1,
        v2,
        _blue: blue,
        _green: green,
        proxy,
    }
}

/// Method, headers, path.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn every_rule_kind_overrides_the_split() {
    let f = fleet();
    let agent = client();
    let url = f.proxy.url("/api/x");
    let hits: [Case; 9] = [
        ("GET", vec![("X-Version", "beta")], "/api/x"),
        ("GET", vec![("x-version", "beta")], "/api/x"),
        ("GET", vec![("X-DEBUG-V2", "1")], "/api/x"),
        ("GET", vec![("Cookie", "a=1; canary=yes")], "/api/x"),
        ("GET", vec![], "/api/x?a=b&version=2"),
        ("GET", vec![("X-Api-Key", KEY_GLOBEX)], "/api/x"),
        ("DELETE", vec![], "/api/x"),
        ("GET", vec![("X-Net", "loop")], "/api/x"),
        ("POST", vec![("X-Version", "beta")], "/api/x"),
    ];
    for (method, headers, path) in &hits {
        let r = send(&agent, method, &f.proxy.url(path), headers);
        assert_eq!(
            (r.status, r.version()),
            (200, "v2".to_string()),
            "{method} {path} {headers:?}"
        );
    }
    let misses: [Case; 7] = [
        ("GET", vec![("X-Version", "BETA")], "/api/x"),
        ("GET", vec![("Cookie", "canary=no")], "/api/x"),
        ("GET", vec![], "/api/x?version=3"),
        ("GET", vec![("X-Api-Key", KEY_ACME)], "/api/x"),
        ("GET", vec![("X-Api-Key", "not-a-key")], "/api/x"),
        ("GET", vec![("X-Net", "test")], "/api/x"),
        ("PUT", vec![], "/api/x"),
    ];
    for (method, headers, path) in &misses {
        let r = send(&agent, method, &f.proxy.url(path), headers);
        assert_eq!(
            (r.status, r.version()),
            (200, "v1".to_string()),
            "{method} {path} {headers:?}"
        );
    }
    assert_eq!(get(&agent, &url, &[]).version(), "v1");
}

fn blue_green_serves_the_live_colour_for_its_host() {
    let f = fleet();
    let agent = client();
    let r = get(
        &agent,
        &f.proxy.url("/anything"),
        &[("Host", "WWW.example.com:8080")],
    );
    assert_eq!(r.version(), "green");
    // Another host has no route at all: a JSON 404.
    let r = get(
        &agent,
        &f.proxy.url("/anything"),
        &[("Host", "other.example.com")],
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({"error": "no_route"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

fn require_client_answers_401_without_touching_an_upstream() {
    let f = fleet();
    let agent = client();
    let before = f.v1.control.requests() + f.v2.control.requests();
    for headers in [
        vec![],
        vec![("X-Api-Key", "wrong")],
        vec![("X-Api-Key", "")],
    ] {
        let r = get(&agent, &f.proxy.url("/partners/orders"), &headers);
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.json(), serde_json::json!({"error": "client_required"}));
    }
    assert_eq!(
        f.v1.control.requests() + f.v2.control.requests(),
        before,
        "a refused request reached an upstream"
    );
    let r = get(
        &agent,
        &f.proxy.url("/partners/orders"),
        &[("X-Api-Key", KEY_ACME)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("X-Switchyard-Client").as_deref(),
        Some("acme")
    );
}

fn client_sent_switchyard_headers_never_reach_upstream() {
    let f = fleet();
    let agent = client();
    let r = get(
        &agent,
        &f.proxy.url("/api/x"),
        &[
            ("X-Switchyard-Client", "globex"),
            ("X-Switchyard-Shadow", "1"),
            ("x-switchyard-anything", "x"),
            // The bare prefix is in the namespace too.
            ("X-Switchyard-", "bare"),
        ],
    );
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].as_object().unwrap().clone();
    assert!(
        headers.keys().all(|k| !k.starts_with("x-switchyard-")),
        "{headers:?}"
    );
    // A spoofed client id is neither forwarded nor used for routing (globex would go to v2).
    assert_eq!(r.version(), "v1");
    // With a real key, the proxy's own header is sent.
    let r = get(
        &agent,
        &f.proxy.url("/api/x"),
        &[("X-Api-Key", KEY_GLOBEX), ("X-Switchyard-Client", "acme")],
    );
    assert_eq!(
        r.upstream_header("x-switchyard-client").as_deref(),
        Some("globex")
    );
}

fn request_ids_are_kept_when_sane_and_generated_otherwise() {
    let f = fleet();
    let agent = client();
    let sane = "3f2b8c1e-7a6d-4c2b-9f10-1234567890ab";
    let r = get(&agent, &f.proxy.url("/api/x"), &[("X-Request-Id", sane)]);
    assert_eq!(r.header("x-request-id"), Some(sane));
    assert_eq!(r.upstream_header("x-request-id").as_deref(), Some(sane));

    let mut seen = std::collections::HashSet::new();
    for bad in [
        None,
        Some("has spaces in it"),
        Some("<script>"),
        Some(&*"x".repeat(200)),
    ] {
        let headers: Vec<(&str, &str)> = bad.map(|b| vec![("X-Request-Id", b)]).unwrap_or_default();
        let r = get(&agent, &f.proxy.url("/api/x"), &headers);
        let id = r.header("x-request-id").unwrap().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            r.upstream_header("x-request-id").as_deref(),
            Some(id.as_str())
        );
        assert!(seen.insert(id), "request ids repeat");
    }
    // The proxy's own responses carry one too.
    let r = get(
        &agent,
        &f.proxy.url("/partners"),
        &[("X-Request-Id", "abc-1")],
    );
    assert_eq!((r.status, r.header("x-request-id")), (401, Some("abc-1")));
}

on_both_paths!(
    each_variant_speaks_the_protocol_it_names,
    split_shares_are_within_one_percent_and_users_stay_put,
    two_instances_agree_and_raising_the_canary_never_moves_users_back,
    requests_without_a_sticky_key_are_spread_by_weight,
    every_rule_kind_overrides_the_split,
    blue_green_serves_the_live_colour_for_its_host,
    require_client_answers_401_without_touching_an_upstream,
    client_sent_switchyard_headers_never_reach_upstream,
    request_ids_are_kept_when_sane_and_generated_otherwise,
);

// Behind TLS too. The statistical tests of the split (thousands of requests, where TLS changes no
// decision) run on the plain listeners only.
on_tls_paths!(
    each_variant_speaks_the_protocol_it_names,
    every_rule_kind_overrides_the_split,
    blue_green_serves_the_live_colour_for_its_host,
    require_client_answers_401_without_touching_an_upstream,
    client_sent_switchyard_headers_never_reach_upstream,
    request_ids_are_kept_when_sane_and_generated_otherwise,
);
on_h2_paths!(
    each_variant_speaks_the_protocol_it_names,
    every_rule_kind_overrides_the_split,
    blue_green_serves_the_live_colour_for_its_host,
    require_client_answers_401_without_touching_an_upstream,
    client_sent_switchyard_headers_never_reach_upstream,
    request_ids_are_kept_when_sane_and_generated_otherwise,
);

/// The guard of the TLS and HTTP/2 variants: they really reach the proxy over TLS and over HTTP/2, on
/// the path they name.
fn each_variant_speaks_the_protocol_it_names() {
    let v1 = backend("v1");
    let proxy = ProxyProcess::start_full(
        &format!(
            "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: a\n    split: {{targets: {{v1: 1}}}}\n",
            v1.addr
        ),
        "{dir}/access.log",
        "",
        std::process::Stdio::null(),
    );
    let path = request_path();
    assert_eq!(proxy.url("/").starts_with("https://localhost:"), path.tls());
    if path.tls() {
        assert!(eventually(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(proxy.tls_addr.unwrap()).is_ok()
        }));
    }
    assert_eq!(get(&client(), &proxy.url("/x"), &[]).status, 200);
    let pipeline = proxy.log().contains("server.http1_engine is false");
    assert_eq!(pipeline, !path.engine());
    let log = proxy.dir.join("access.log");
    let mut line = String::new();
    assert!(eventually(std::time::Duration::from_secs(5), || {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        !line.is_empty()
    }));
    let entry: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let protocol = if path.http2() { "HTTP/2.0" } else { "HTTP/1.1" };
    assert_eq!(entry["protocol"], protocol, "{path:?}: {entry}");
    assert_eq!(
        entry["tls_version"].is_string(),
        path.tls(),
        "{path:?}: {entry}"
    );
}
