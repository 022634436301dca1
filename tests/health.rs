//! Health-aware routing on real traffic: a pool whose backends are all down falls back to the route's
//! baseline; nothing healthy is a JSON 502; a backend that refuses connections is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::time::Duration;

fn config(v1: &str, v2: &str) -> String {
    format!(
        r#"
upstreams:
  v1:
    backends: [{v1}]
    health_check: {{path: /healthz, interval: 100ms, timeout: 500ms}}
  v2:
    backends: [{v2}]
    health_check: {{path: /healthz, interval: 100ms, timeout: 500ms}}
routes:
  - name: payments
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: beta}}}}
        to: v2
    split:
      targets: {{v1: 50, v2: 50}}
      baseline: v1
      sticky: [header:X-User-Id]
"#
    )
}

fn quoted(b: &RunningBackend) -> String {
    format!("\"{}\"", b.addr)
}

/// Users 0..n whose bucket puts them on v2 while everything is healthy.
fn v2_users(agent: &impl Requester, proxy: &ProxyProcess, n: u32) -> Vec<String> {
    (0..n)
        .map(|u| format!("user-{u}"))
        .filter(|u| get(agent, &proxy.url("/api"), &[("X-User-Id", u)]).version() == "v2")
        .collect()
}

fn a_down_pool_falls_back_to_the_baseline_and_recovers() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start(&config(&quoted(&v1), &quoted(&v2)));
    let agent = client();
    let canary_users = v2_users(&agent, &proxy, 100);
    assert!(
        canary_users.len() > 20,
        "expected about half of 100 users on v2"
    );

    v2.control.set_healthy(false);
    let fell_back = eventually(Duration::from_secs(5), || {
        get(
            &agent,
            &proxy.url("/api"),
            &[("X-User-Id", &canary_users[0])],
        )
        .version()
            == "v1"
    });
    assert!(
        fell_back,
        "v2 marked down but its users were not sent to v1"
    );
    // Every canary user and the beta rule now land on the baseline, with no error.
    for u in &canary_users {
        let r = get(&agent, &proxy.url("/api"), &[("X-User-Id", u)]);
        assert_eq!((r.status, r.version()), (200, "v1".to_string()));
    }
    let r = get(&agent, &proxy.url("/api"), &[("X-Version", "beta")]);
    assert_eq!((r.status, r.version()), (200, "v1".to_string()));

    v2.control.set_healthy(true);
    let back = eventually(Duration::from_secs(5), || {
        get(
            &agent,
            &proxy.url("/api"),
            &[("X-User-Id", &canary_users[0])],
        )
        .version()
            == "v2"
    });
    assert!(back, "v2 healthy again but its users did not return");
}

fn nothing_healthy_is_a_json_502() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start(&config(&quoted(&v1), &quoted(&v2)));
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/api"), &[]).status, 200);
    v1.control.set_healthy(false);
    v2.control.set_healthy(false);
    // Both pools are marked down by their own checks, one after the other: until the second is, a
    // request split to it is still served. All down once every user gets 502.
    let all_down = eventually(Duration::from_secs(5), || {
        (0..20).all(|u| {
            get(
                &agent,
                &proxy.url("/api"),
                &[("X-User-Id", &format!("u{u}"))],
            )
            .status
                == 502
        })
    });
    assert!(all_down, "all pools down but requests still succeed");
    let before = v1.control.requests() + v2.control.requests();
    let r = get(&agent, &proxy.url("/api"), &[("X-User-Id", "someone")]);
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "no_healthy_upstream"})
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(v1.control.requests() + v2.control.requests(), before);
}

fn dead_backends_are_found_by_health_checks() {
    // v2's only backend refuses connections from the start.
    let v1 = backend("v1");
    let dead = free_addr();
    let proxy = ProxyProcess::start(&config(&quoted(&v1), &format!("\"{dead}\"")));
    let agent = client();
    // Until the first check marks v2 down, its requests fail with 502; then all go to v1.
    let ok = eventually(Duration::from_secs(5), || {
        (0..50).all(|u| {
            let r = get(
                &agent,
                &proxy.url("/api"),
                &[("X-User-Id", &format!("u{u}"))],
            );
            r.status == 200 && r.json()["version"] == "v1"
        })
    });
    assert!(ok, "requests for a dead pool were not sent to the baseline");
}

fn a_backend_refusing_connections_is_skipped_without_health_checks() {
    let live = backend("v1");
    let dead = free_addr();
    let body = format!(
        r#"
upstreams:
  v1: {{backends: ["{dead}", "{live}"]}}
routes:
  - name: api
    split: {{targets: {{v1: 1}}}}
"#,
        live = live.addr
    );
    let proxy = ProxyProcess::start(&body);
    let agent = client();
    for _ in 0..20 {
        let r = get(&agent, &proxy.url("/x"), &[]);
        assert_eq!((r.status, r.version()), (200, "v1".to_string()));
    }
}

/// A target whose backends all refuse connections, with no health check: the request falls back to
/// the baseline (nothing was sent), and the next ones go there at once (the refusing backend is
/// passed over for a while) instead of each trying it first.
fn a_target_refusing_connections_falls_back_to_the_baseline_without_health_checks() {
    let stable = backend("v1");
    let (dead, admin) = (free_addr(), free_addr());
    let proxy = ProxyProcess::start(
        &Fixture::new()
            .admin(admin, &[("ops", "ops-token")])
            .upstream("canary", dead)
            .upstream("stable", stable.addr)
            .route("name: api\nsplit: {targets: {canary: 100, stable: 0}, baseline: stable}")
            .yaml(),
    );
    let agent = client();
    for i in 0..5 {
        let r = get(&agent, &proxy.url("/x"), &[]);
        assert_eq!(
            (r.status, r.version()),
            (200, "v1".to_string()),
            "request {i}: {}",
            r.body
        );
    }
    // Counted as fallbacks; the canary was tried once, by the first request only.
    let metrics = get(&agent, &format!("http://{admin}/metrics"), &[]).body;
    let failures: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_upstream_errors_total{") && l.contains("target=\"canary\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 1.0, "{metrics}");
}

fn a_health_check_added_by_a_reload_starts_checking() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let no_checks = format!(
        r#"
upstreams:
  v1: {{backends: [{}]}}
  v2: {{backends: [{}]}}
routes:
  - name: payments
    match: {{path_prefix: /api}}
    rules: [{{when: {{header: {{X-Version: beta}}}}, to: v2}}]
    split: {{targets: {{v1: 100}}}}
"#,
        quoted(&v1),
        quoted(&v2)
    );
    let proxy = ProxyProcess::start(&no_checks);
    let agent = client();
    // Without a health check nothing notices that v2 reports itself unhealthy.
    v2.control.set_healthy(false);
    std::thread::sleep(Duration::from_millis(1500));
    let beta = [("X-Version", "beta")];
    assert_eq!(get(&agent, &proxy.url("/api"), &beta).version(), "v2");

    proxy.rewrite_config(&no_checks.replace(
        &format!("v2: {{backends: [{}]}}", quoted(&v2)),
        &format!(
            "v2: {{backends: [{}], health_check: {{path: /healthz, interval: 100ms, timeout: 500ms}}}}",
            quoted(&v2)
        ),
    ));
    signal(proxy.child.id(), "HUP");
    let fell_back = eventually(Duration::from_secs(5), || {
        get(&agent, &proxy.url("/api"), &beta).version() == "v1"
    });
    assert!(fell_back, "the health check added by the reload never ran");
}

/// A backend going down and up again shows in `/v1/status` (up/down, since when, the probe's error),
/// in `switchyard_upstream_backend_up` and in `ctl status`, and is logged once per transition in words
/// naming the upstream and the backend.
fn backend_health_shows_in_status_metrics_and_the_log() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let admin = free_addr();
    let body = format!(
        "admin: {{listen: \"{admin}\", tokens: {{ops: {}}}}}\n{}",
        sha256_hex("ops-token"),
        config(&quoted(&v1), &quoted(&v2))
    );
    let proxy = ProxyProcess::start(&body);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let status = || {
        send_body(
            &client(),
            "GET",
            &format!("http://{admin}/v1/status"),
            &[("Authorization", "Bearer ops-token")],
            None,
        )
        .json()
    };
    let v2_backend = |s: &serde_json::Value| {
        s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "v2")
            .unwrap()["backends"][0]
            .clone()
    };
    let metric = || {
        let text = get(&client(), &format!("http://{admin}/metrics"), &[]).body;
        let series = format!(
            "switchyard_upstream_backend_up{{upstream=\"v2\",backend=\"{}\"}} ",
            v2.addr
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_string))
    };
    let up = v2_backend(&status());
    assert_eq!(
        (up["up"].as_bool(), up["checked"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(up["backend"], v2.addr.to_string());
    assert_eq!(metric().as_deref(), Some("1"));

    v2.control.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || v2_backend(&status())
        ["up"]
        == false));
    let down = v2_backend(&status());
    assert!(
        down["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{down}"
    );
    assert_ne!(down["since"], up["since"]);
    assert_eq!(metric().as_deref(), Some("0"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "ctl",
            "status",
            "--admin",
            &format!("http://{admin}"),
            "--token",
            "ops-token",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("v2 ") && l.contains(&v2.addr.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("DOWN") && row.contains("HTTP 503"), "{row}");

    v2.control.set_healthy(true);
    assert!(eventually(Duration::from_secs(5), || v2_backend(&status())
        ["up"]
        == true));
    assert_eq!(v2_backend(&status())["last_error"], serde_json::Value::Null);
    assert_eq!(metric().as_deref(), Some("1"));
    let log = proxy.log();
    let down_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("upstream v2: backend {} is down", v2.addr)))
        .collect();
    let up_lines = log
        .lines()
        .filter(|l| l.contains(&format!("upstream v2: backend {} is up again", v2.addr)))
        .count();
    assert_eq!((down_lines.len(), up_lines), (1, 1), "{log}");
    assert!(down_lines[0].contains("HTTP 503"), "{log}");
}

/// A request whose backend refuses the connection, in a pool whose other backend its health check
/// has marked down: the retry finds no healthy backend left. Both paths answer the same JSON 502
/// `upstream_unavailable` (the backend tried could not be reached), not an internal error.
fn a_retry_that_finds_no_healthy_backend_left_is_a_json_502() {
    let (a, b) = (backend("v1"), backend("v1"));
    b.control.set_healthy(false);
    let admin = free_addr();
    let body = format!(
        r#"admin: {{listen: "{admin}", tokens: {{ops: {}}}}}
upstreams:
  v1:
    backends: ["{}", "{}"]
    health_check: {{path: /healthz, interval: 30s, timeout: 500ms}}
routes:
  - name: api
    split: {{targets: {{v1: 1}}}}
"#,
        sha256_hex("ops-token"),
        a.addr,
        b.addr
    );
    let proxy = ProxyProcess::start(&body);
    wait_listening(admin);
    let up = || {
        let text = get(&client(), &format!("http://{admin}/metrics"), &[]).body;
        [&a, &b].map(|x| {
            text.contains(&format!(
                "switchyard_upstream_backend_up{{upstream=\"v1\",backend=\"{}\"}} 1",
                x.addr
            ))
        })
    };
    // The first probes mark b down and a up; the next come 30 s later.
    assert!(eventually(Duration::from_secs(10), || up() == [true, false]));
    // a stops listening: it is still up for the pool until its next probe.
    let a_addr = a.addr;
    drop(a);
    assert!(std::net::TcpStream::connect(a_addr).is_err());
    let r = get(&client(), &proxy.url("/x"), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "upstream_unavailable"})
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(b.control.requests(), 0, "b is down: never tried");
}

on_every_path!(
    a_down_pool_falls_back_to_the_baseline_and_recovers,
    nothing_healthy_is_a_json_502,
    dead_backends_are_found_by_health_checks,
    a_backend_refusing_connections_is_skipped_without_health_checks,
    a_target_refusing_connections_falls_back_to_the_baseline_without_health_checks,
    a_health_check_added_by_a_reload_starts_checking,
    backend_health_shows_in_status_metrics_and_the_log,
    a_retry_that_finds_no_healthy_backend_left_is_a_json_502,
);
