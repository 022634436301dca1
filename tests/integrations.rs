//! The calls docs/argo-rollouts-and-flagger.md has Argo Rollouts and Flagger make, against a live
//! instance: `/v1/stats?route=` answers the route first with each target's `last_60s` numbers where the
//! documented JSONPath selects them, a PATCH with a share moves traffic, and a rollback sends all of it
//! back to the baseline.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

const OPS: &str = "ops-token-for-integrations";

#[test]
fn the_documented_argo_and_flagger_calls_work() {
    let (v1, v2) = (backend("payments-v1"), backend("payments-v2"));
    v2.control.set_error_rate(0.5);
    let admin = free_addr();
    let proxy = ProxyProcess::start(
        &Fixture::new()
            .admin(admin, &[("ops", OPS)])
            .upstream("payments-v1", v1.addr)
            .upstream("payments-v2", v2.addr)
            .route("name: other\nmatch: {path_prefix: /other}\nsplit: {targets: {payments-v1: 100}}")
            .route("name: payments\nmatch: {path_prefix: /api/payments}\nsplit: {targets: {payments-v1: 50, payments-v2: 50}, baseline: payments-v1, sticky: [header:X-User-Id]}")
            .yaml(),
    );
    wait_listening(admin);
    let agent = client();
    let auth = format!("Bearer {OPS}");
    for u in 0..200 {
        get(
            &agent,
            &proxy.url("/api/payments/x"),
            &[("X-User-Id", &format!("user-{u}"))],
        );
    }
    // `$.routes[0].targets[?(@.target=='payments-v2')].last_60s.error_rate`, and `.p99_ms`.
    let stats = get(
        &agent,
        &format!("http://{admin}/v1/stats?route=payments"),
        &[("Authorization", &auth)],
    )
    .json();
    assert_eq!(stats["routes"][0]["route"], "payments", "{stats}");
    let canary = stats["routes"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "payments-v2")
        .unwrap_or_else(|| panic!("{stats}"));
    let error_rate = canary["last_60s"]["error_rate"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&error_rate), "{error_rate}");
    assert!(canary["last_60s"]["p99_ms"].as_f64().unwrap() > 0.0);

    // The share step (the Job's curl): exactly 10% to the canary.
    let patch = send_body(
        &agent,
        "PATCH",
        &format!("http://{admin}/v1/routes/payments"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"split": {"payments-v2": "10%"}, "reason": "argo rollouts step"}"#),
    );
    assert_eq!(patch.status, 200, "{}", patch.body);
    let route = get(
        &agent,
        &format!("http://{admin}/v1/routes/payments"),
        &[("Authorization", &auth)],
    )
    .json();
    let share = |name: &str| {
        route["split"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .unwrap()["share"]
            .as_f64()
            .unwrap()
    };
    assert_eq!((share("payments-v1"), share("payments-v2")), (90.0, 10.0));

    // Flagger's rollback hook: `switchyard ctl rollback`.
    let (code, out) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["ctl", "--admin", &format!("http://{admin}"), "--token", OPS])
            .args(["rollback", "payments", "--reason", "flagger rollback"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    let served = (0..50)
        .filter(|u| {
            get(
                &agent,
                &proxy.url("/api/payments/x"),
                &[("X-User-Id", &format!("user-{u}"))],
            )
            .version()
                == "payments-v1"
        })
        .count();
    assert_eq!(served, 50);
}
