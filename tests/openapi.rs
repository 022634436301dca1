//! `GET /v1/openapi.json` is kept true by schemathesis (PyPI) run against a live instance: every
//! operation it describes is called with generated input, valid and invalid, and every answer must be
//! documented (status, content type, headers, body schema), no input may cause a 5xx, and no call may
//! succeed without the token. Run on a lone instance and on one in a fleet (a real etcd), so the
//! fleet's answers are checked too. `.ci/run` installs schemathesis; without it this test fails.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::Duration;

const OPS: &str = "ops-token-for-schemathesis";

#[test]
fn schemathesis_finds_every_answer_documented_and_no_server_error() {
    schemathesis("");
}

#[test]
fn schemathesis_finds_every_answer_of_a_fleet_instance_documented() {
    let etcd = common::etcd::Etcd::start();
    schemathesis(&format!(
        "store:\n  etcd: {{endpoints: [\"{}\"], prefix: /openapi, lease_ttl: 2s, timeout: 1s}}\n",
        etcd.url()
    ));
}

/// Starts an instance with `extra` config and runs schemathesis against it.
fn schemathesis(extra: &str) {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let admin = free_addr();
    let proxy = ProxyProcess::start(
        &Fixture::new()
            .admin(admin, &[("ops", OPS)])
            .section(extra)
            .upstream("v1", v1.addr)
            .upstream("v2", v2.addr)
            .route(
                "name: api
match: {path_prefix: /api}
rules:
  - when: {header: {X-Version: beta}}
    to: v2
split: {targets: {v1: 100, v2: 0}, baseline: v1}
mirror: {to: v2, percent: 0}
rollout: {canary: v2, steps: [{pause: {}}, 10], hold: 1m}",
            )
            .route(
                "name: web\nmatch: {path_prefix: /}\nblue_green: {blue: v1, green: v2, live: blue}",
            )
            .yaml(),
    );
    wait_listening(admin);
    let auth = format!("Bearer {OPS}");
    if !extra.is_empty() {
        // In a fleet, rollout control calls need a leader: wait until this instance leads.
        let fleet = format!("http://{admin}/v1/fleet");
        assert!(
            eventually(Duration::from_secs(15), || get(
                &client(),
                &fleet,
                &[("Authorization", &auth)]
            )
            .json()["leads"]
                == serde_json::json!(["api"])),
            "the instance never led the rollout"
        );
    }
    let spec = get(
        &client(),
        &format!("http://{admin}/v1/openapi.json"),
        &[("Authorization", &format!("Bearer {OPS}"))],
    );
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], "3.1.0");
    let file = proxy.dir.join("openapi.json");
    std::fs::write(&file, &spec.body).unwrap();
    // As a module: a console script pip just installed may not be on PATH yet (pyenv shims).
    let out = std::process::Command::new("python3")
        // Hypothesis keeps its database in the working directory: the instance's temporary one.
        .current_dir(&proxy.dir)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(&file)
        .args(["--experimental=openapi-3.1"])
        .args(["--base-url", &format!("http://{admin}")])
        .args(["-H", &format!("Authorization: Bearer {OPS}")])
        // Every check but negative_data_rejection, whose verdicts on query strings are guesses
        // (`?after=0` taken for invalid); invalid input is still generated, and must get no 5xx.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection",
        ])
        .args(["--data-generation-method", "all"])
        .args([
            "--hypothesis-max-examples",
            "30",
            "--hypothesis-seed",
            "20261203",
        ])
        .args(["--hypothesis-deadline", "None", "--no-color"])
        .output()
        .unwrap_or_else(|e| panic!("schemathesis (pip install 'schemathesis<4'): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" passed") || l.contains("failed") || l.contains("errored"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("not_a_server_error"), "{text}");
    assert!(text.contains("response_schema_conformance"), "{text}");
}
