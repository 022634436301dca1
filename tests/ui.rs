//! The status page (`GET /ui`) in a real headless Chromium, driven by Playwright
//! (`tests/ui/check_ui.py`): it renders every route, shows a split change made with `ctl`, and a
//! rollback clicked in the page reaches the proxy and is audited. `.ci/run` installs Debian's
//! chromium and Playwright from PyPI; without them this test fails, it does not skip.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::Duration;

const OPS: &str = "ops-token-for-the-ui";

#[test]
fn the_status_page_shows_changes_and_its_rollback_reaches_the_proxy() {
    let (v1, v2, blue, green) = (
        backend("v1"),
        backend("v2"),
        backend("blue"),
        backend("green"),
    );
    let admin = free_addr();
    let proxy = ProxyProcess::start(
        &Fixture::new()
            .admin(admin, &[("ops", OPS)])
            .upstream("v1", v1.addr)
            .upstream("v2", v2.addr)
            .upstream("blue", blue.addr)
            .upstream("green", green.addr)
            .route(
                "name: api
match: {path_prefix: /api}
rules:
  - when: {header: {X-Version: beta}}
    to: v2
split: {targets: {v1: 100, v2: 0}, baseline: v1, sticky: [header:X-User-Id]}
mirror: {to: v2, percent: 10, compare: {noise_percent: 100}}",
            )
            .route(
                "name: pay
match: {path_prefix: /pay}
split: {targets: {v1: 100, v2: 0}, baseline: v1}
rollout: {canary: v2, steps: [{header: {X-Canary: yes}}, 10], hold: 1h, interval: 200ms, step_timeout: 2s}",
            )
            .route("name: web\nmatch: {path_prefix: /}\nblue_green: {blue: blue, green: green, live: blue}")
            .yaml(),
    );
    wait_listening(admin);
    // v2 fails half its requests: the page colours it against the baseline once it gets traffic.
    v2.control.set_error_rate(0.5);
    // Traffic while the page watches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), proxy.url("/api/x"));
        std::thread::spawn(move || {
            let agent = client();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let _ = get(&agent, &url, &[("X-User-Id", &format!("user-{}", i % 50))]);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Kept after the test, to look at: target/tmp/status-page.png.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/check_ui.py"))
        .args(["--admin", &format!("http://{admin}"), "--token", OPS])
        .args(["--ctl", env!("CARGO_BIN_EXE_switchyard")])
        .arg("--screenshot")
        .arg(&screenshot)
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let measures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        measures["page_bytes"].as_u64().unwrap() > 1000,
        "{measures}"
    );
    println!("status page: {measures}");
    // The load the page watched went through the proxy.
    assert!(v1.control.requests() > 0);
}
