//! Dark releases that tell signal from noise, on a real instance with real JSON upstreams: v1 answers
//! with a fresh `ts` and `request_id` on every call; one v2 changes `/order/total` for a fifth of the
//! orders and renames `/order/customer` to `/order/client`; another v2 is v1 itself. Without any
//! `ignore_json`, the noisy fields are learned as noise and never count, the real change and the
//! rename do, the drift summary names them, and a rollout's mirror step fails on them and passes
//! on the identical v2.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "ops-token";

/// A value that differs on every call.
fn fresh() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{:016x}", t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn v1_order(id: u64) -> Value {
    json!({"order": {"id": id, "total": 10, "customer": "ann"}, "ts": fresh(), "request_id": fresh()})
}

fn v2_order(id: u64) -> Value {
    let total = if id % 5 == 0 { 11 } else { 10 };
    json!({"order": {"id": id, "total": total, "client": "ann"}, "ts": fresh(), "request_id": fresh()})
}

/// An HTTP/1.1 upstream answering `GET …/ID` with `answer(ID)` as JSON, on keep-alive connections.
struct JsonUpstream {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

type Answer = Arc<dyn Fn(u64) -> Value + Send + Sync>;

fn json_upstream(answer: Answer) -> JsonUpstream {
    let (runtime, listener) = server_runtime();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("/");
                    let id = path.rsplit('/').next().and_then(|x| x.parse().ok());
                    let body = answer(id.unwrap_or(0)).to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    JsonUpstream {
        addr,
        _runtime: runtime,
    }
}

fn admin_get(admin: SocketAddr, path: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    get(
        &h1_client(),
        &format!("http://{admin}{path}"),
        &[("Authorization", auth.as_str())],
    )
}

fn metric(admin: SocketAddr, series: &str) -> f64 {
    admin_get(admin, "/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

fn noisy_fields_are_noise_and_the_real_change_and_rename_are_significant() {
    let (v1, v2, same) = (
        json_upstream(Arc::new(v1_order)),
        json_upstream(Arc::new(v2_order)),
        json_upstream(Arc::new(v1_order)),
    );
    let admin = free_addr();
    let body = Fixture::new()
        .admin(admin, &[("ops", TOKEN)])
        .upstream("v1", v1.addr)
        .upstream("v2", v2.addr)
        .upstream("v2same", same.addr)
        .route(
            "name: changed
match: {path_prefix: /changed}
split: {targets: {v1: 100}}
mirror: {to: v2, percent: 100, compare: {noise_percent: 100}}",
        )
        .route(
            "name: same
match: {path_prefix: /same}
split: {targets: {v1: 100}}
mirror: {to: v2same, percent: 100, compare: {noise_percent: 100}}",
        )
        .route(
            "name: unlearned
match: {path_prefix: /unlearned}
split: {targets: {v1: 100}}
mirror: {to: v2, percent: 100, compare: {}}",
        )
        .yaml();
    let proxy = ProxyProcess::start(&body);
    wait_listening(admin);
    let agent = client();
    // Every copy also learns the noise: 300 pairs tell a change in a fifth of them from noise (its
    // rate at least 12%, the noise's at most 4%, by their confidence sequences).
    let n = 300;
    for i in 0..n {
        for route in ["changed", "same"] {
            let r = get(&agent, &proxy.url(&format!("/{route}/orders/{i}")), &[]);
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    get(&agent, &proxy.url("/unlearned/orders/5"), &[]);
    let report =
        |route: &str| admin_get(admin, &format!("/v1/routes/{route}/mirror/fields")).json();
    let mut changed = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            changed = report("changed");
            changed["pairs"] == n && report("same")["pairs"] == n
        }),
        "{changed:#}"
    );
    let noise_pairs = changed["noise_pairs"].as_u64().unwrap();
    assert_eq!(noise_pairs, n);
    assert_eq!(changed["noise_learned"], true);
    let field = |r: &Value, path: &str, kind: &str| {
        r["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path && f["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} field {path} in {r:#}"))
            .clone()
    };
    for noisy in ["/ts", "/request_id"] {
        let f = field(&changed, noisy, "value");
        assert_eq!(f["significant"], false, "{f:#}");
        assert_eq!(f["noisy"], true, "{f:#}");
        assert_eq!(f["shadow_diffs"], n);
        assert_eq!(f["noise_diffs"], noise_pairs);
    }
    let total = field(&changed, "/order/total", "value");
    assert_eq!(total["significant"], true, "{total:#}");
    assert_eq!(
        (total["shadow_diffs"].clone(), total["noise_diffs"].clone()),
        (json!(n / 5), json!(0))
    );
    assert_eq!(total["example"], json!({"primary": "10", "shadow": "11"}));
    assert_eq!(
        field(&changed, "/order/customer", "removed")["significant"],
        true
    );
    assert_eq!(
        field(&changed, "/order/client", "added")["significant"],
        true
    );
    assert_eq!(
        changed["drift"],
        json!(["v2 renames /order/customer to /order/client (string)"])
    );
    // Significant fields first.
    let first: Vec<bool> = changed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["significant"].as_bool().unwrap())
        .collect();
    assert_eq!(first, [true, true, true, false, false], "{changed:#}");

    // The identical v2: its noisy fields are noise, nothing is significant, no drift.
    let same_report = report("same");
    assert!(
        same_report["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["significant"] == false && f["noisy"] == true),
        "{same_report:#}"
    );
    assert_eq!(same_report["fields"].as_array().unwrap().len(), 2);
    assert_eq!(same_report["drift"], json!([]));

    // Only pairs with a significant difference count against the canary.
    let stats = admin_get(admin, "/v1/stats").json();
    let rate = |route: &str, target: &str| {
        let r = stats["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .unwrap();
        let t = r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .unwrap();
        t["last_60s"]["mirror_diff_rate"].as_f64().unwrap()
    };
    // The rename counts from the first pairs judged (100% against no noise at all is evident after
    // 20 noise pairs); the rate is of pairs judged, so near 1.
    assert!(rate("changed", "v2") > 0.9, "{}", rate("changed", "v2"));
    assert_eq!(rate("same", "v2same"), 0.0);

    // One pair, and the default 5% of noise: nothing is judged yet, and the report says so.
    let unlearned = report("unlearned");
    assert_eq!(unlearned["noise_learned"], false, "{unlearned:#}");
    assert!(unlearned["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["significant"] == false));

    // Metrics: differences by kind, significant fields per route.
    let diffs = |route: &str, kind: &str| {
        metric(
            admin,
            &format!("switchyard_mirror_field_diffs_total{{route=\"{route}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(diffs("changed", "added"), n as f64);
    assert_eq!(diffs("changed", "removed"), n as f64);
    assert_eq!(diffs("changed", "value"), (2 * n + n / 5) as f64);
    assert_eq!(diffs("changed", "type"), 0.0);
    let significant = |route: &str| {
        metric(
            admin,
            &format!("switchyard_mirror_significant_fields{{route=\"{route}\"}}"),
        )
    };
    assert_eq!(significant("changed"), 3.0);
    assert_eq!(significant("same"), 0.0);

    // `ctl diffs ROUTE --fields` in words.
    let url = format!("http://{admin}");
    let (code, out) = switchyard(&[
        "ctl", "--admin", &url, "--token", TOKEN, "diffs", "changed", "--fields",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/order/total"), "{out}");
    assert!(out.contains("no (noise)"), "{out}");
    assert!(
        out.contains("schema drift:\n  v2 renames /order/customer to /order/client (string)"),
        "{out}"
    );
    // No such route; a route that does not compare; --fields without a route.
    assert_eq!(
        admin_get(admin, "/v1/routes/nope/mirror/fields").status,
        404
    );
    let (code, out) = switchyard(&[
        "ctl", "--admin", &url, "--token", TOKEN, "diffs", "--fields",
    ]);
    assert_ne!(code, 0, "{out}");
}

/// A route `api` walks v2 through a dark step (`{mirror: 100}`) to 100%, judged on
/// `max_mirror_diff_rate: 5%`, under a steady load. v2 renames a field and changes a price: the step
/// fails and names them, never the noise. v2 is fixed (now v1's answers, with its own noise) and the
/// rollout retried: the step learns afresh, passes, and v2 reaches 100%.
fn a_dark_step_fails_on_significant_fields_and_passes_an_identical_but_noisy_v2() {
    let fixed = Arc::new(AtomicBool::new(false));
    let v2_answer: Answer = {
        let fixed = fixed.clone();
        Arc::new(move |id| {
            if fixed.load(Ordering::Relaxed) {
                v1_order(id)
            } else {
                v2_order(id)
            }
        })
    };
    let (v1, v2) = (json_upstream(Arc::new(v1_order)), json_upstream(v2_answer));
    let admin = free_addr();
    let body = Fixture::new()
        .admin(admin, &[("ops", TOKEN)])
        .upstream("v1", v1.addr)
        .upstream("v2", v2.addr)
        .route(
            "name: api
match: {path_prefix: /}
split: {targets: {v1: 100, v2: 0}, baseline: v1}
mirror: {to: v2, percent: 0, compare: {noise_percent: 100}}
rollout:
  canary: v2
  steps: [{mirror: 100}, 100]
  hold: 3s
  interval: 300ms
  gates: {min_requests: 60, max_mirror_diff_rate: 5%, max_p99_ratio: 5}",
        )
        .yaml();
    let proxy = ProxyProcess::start(&body);
    wait_listening(admin);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), proxy.url("/orders/"));
        std::thread::spawn(move || {
            let agent = client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                get(&agent, &format!("{url}{i}"), &[]);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let wait = |state: &str| {
        let mut view = Value::Null;
        let reached = eventually(Duration::from_secs(40), || {
            view = admin_get(admin, "/v1/routes/api/rollout").json();
            view["state"] == state
        });
        assert!(reached, "not {state}: {view:#}");
        view
    };
    let failed = wait("failed");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("max_mirror_diff_rate"), "{reason}");
    assert!(reason.contains("significant fields: "), "{reason}");
    assert!(reason.contains("/order/customer (removed"), "{reason}");
    assert!(!reason.contains("/ts"), "noise is never a reason: {reason}");

    fixed.store(true, Ordering::Relaxed);
    let auth = format!("Bearer {TOKEN}");
    let retried = send_body(
        &h1_client(),
        "POST",
        &format!("http://{admin}/v1/routes/api/rollout/retry"),
        &[("Authorization", auth.as_str())],
        Some("{}"),
    );
    assert_eq!(retried.status, 200, "{}", retried.body);
    let passed = wait("succeeded");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    // The retried step judged its own pairs: the failed attempt's fields are forgotten.
    let report = admin_get(admin, "/v1/routes/api/mirror/fields").json();
    assert_eq!(report["drift"], json!([]), "{report:#}\n{passed:#}");
    assert!(
        report["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["significant"] == false),
        "{report:#}"
    );
}

on_both_paths!(
    noisy_fields_are_noise_and_the_real_change_and_rename_are_significant,
    a_dark_step_fails_on_significant_fields_and_passes_an_identical_but_noisy_v2,
);
on_tls_paths!(noisy_fields_are_noise_and_the_real_change_and_rename_are_significant);
on_h2_paths!(noisy_fields_are_noise_and_the_real_change_and_rename_are_significant);
