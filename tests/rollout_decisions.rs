//! Release decisions on a real instance: anytime-valid gates checked every 250 ms (an erroring canary
//! at 10% is rolled back every time, an identical one promoted, a tail-only regression caught by the
//! p99 gate), every check's figures, a starved step, a clients step, `on_failure: pause`, and the
//! file and the live state agreeing (a finished rollout survives an unrelated edit and reload, and
//! the exported live config reloads as a no-op).
#![allow(clippy::unwrap_used)]

mod common;
use common::rollout::*;
use common::*;
use std::time::Duration;

const STEPS_AT_10: &str = "steps: [10, 100], hold: 3s, interval: 250ms, gates: {min_requests: 100}";

#[test]
fn an_erroring_canary_at_10_percent_checked_every_250ms_is_rolled_back_every_time() {
    for run in 0..3 {
        let r = start(STEPS_AT_10);
        r.v1.control.set_error_rate(0.01);
        r.v2.control.set_error_rate(0.08);
        let load = r.load(0);
        let failed = r.wait_state("failed", Duration::from_secs(40));
        drop(load);
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("step 1/2 (weight 10%): max_error_rate_increase: canary 5xx "),
            "run {run}: {reason}"
        );
        assert_eq!(r.share("v2"), 0.0);
        // The failing check, with every figure.
        let check = &failed["last_check"];
        assert_eq!(check["verdict"], "fail", "{failed:#}");
        assert!(check["number"].as_u64().unwrap() >= 1);
        assert!(check["canary"]["requests"].as_u64().unwrap() >= 100);
        assert!(
            check["baseline"]["requests"].as_u64().unwrap()
                > check["canary"]["requests"].as_u64().unwrap()
        );
        let test = check["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["test"] == "errors")
            .unwrap();
        for key in [
            "canary",
            "baseline",
            "effect",
            "interval",
            "bayes_factor",
            "threshold",
            "p",
            "alpha",
        ] {
            assert!(!test[key].is_null(), "{key}: {test:#}");
        }
        assert!(test["bayes_factor"].as_f64().unwrap() >= test["threshold"].as_f64().unwrap());
        // The audit entry carries the same figures.
        let last = r.audit().last().cloned().unwrap();
        assert_eq!(last["action"], "rollout.failed");
        assert!(last["reason"].as_str().unwrap().contains("Bayes factor"));
    }
}

#[test]
fn an_identical_canary_checked_every_250ms_is_promoted() {
    let r = start(STEPS_AT_10);
    r.v1.control.set_error_rate(0.02);
    r.v2.control.set_error_rate(0.02);
    let load = r.load(0);
    let done = r.wait_state("succeeded", Duration::from_secs(40));
    drop(load);
    assert_eq!(r.share("v2"), 100.0);
    assert!(done["checks"]["pass"].as_u64().unwrap() >= 2, "{done:#}");
    assert_eq!(done["checks"]["fail"], 0);
}

#[test]
fn a_tail_only_regression_fails_the_p99_gate() {
    let r = start(
        "steps: [50], hold: 60s, interval: 250ms, gates: {min_requests: 100, max_p99_ratio: 1.5}",
    );
    // Both answer after 5 ms; 4% of the canary's answers come 300 ms later. Its median is unchanged.
    r.v1.control.set_delay(Duration::from_millis(5));
    r.v2.control.set_delay(Duration::from_millis(5));
    r.v2.control.set_tail(0.04, Duration::from_millis(300));
    let load = r.load(0);
    let failed = r.wait_state("failed", Duration::from_secs(60));
    drop(load);
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("max_p99_ratio: canary p99 "), "{reason}");
    let tail = failed["last_check"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["test"] == "latency_tail")
        .cloned()
        .unwrap();
    assert_eq!(tail["outcome"], "fail", "{failed:#}");
}

#[test]
fn a_header_step_nobody_reaches_pauses_as_starved_saying_what_it_needs() {
    let r = start(
        "steps: [{header: {X-Version: beta}}, 10], hold: 1s, interval: 250ms, step_timeout: 2s, \
         gates: {min_requests: 100}, notify: \"http://{hooks}/notify\"",
    );
    let load = r.load(0);
    let paused = r.wait_state("paused", Duration::from_secs(15));
    drop(load);
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("starved: step 1/2 (header X-Version: beta) was not judged within step_timeout 2s: 100 more canary requests; only requests with X-Version: beta reach the canary"),
        "{reason}"
    );
    assert_eq!(paused["step"], 1);
    assert!(eventually(Duration::from_secs(5), || {
        r.hooks.control.received().iter().any(|q| {
            serde_json::from_slice::<serde_json::Value>(&q.body)
                .is_ok_and(|b| b["event"]["verdict"] == "starved")
        })
    }));
    // Resumed with traffic that reaches the canary, it is judged and goes on.
    assert_eq!(r.control("resume").status, 200);
    let load = r.load(2);
    assert!(eventually(Duration::from_secs(20), || r.view()["step"] == 2));
    drop(load);
}

#[test]
fn a_clients_step_moves_exactly_those_clients_and_on_failure_pause_holds_the_step() {
    let keys = ["acme-key", "globex-key", "initech-key"];
    let preamble = format!(
        "clients:\n  keys: {{acme: {}, globex: {}, initech: {}}}\n",
        sha256_hex(keys[0]),
        sha256_hex(keys[1]),
        sha256_hex(keys[2])
    );
    let r = start_with(
        "steps: [{clients: [globex]}, {clients: [initech]}, 50], hold: 1h, interval: 250ms, \
         on_failure: pause, gates: {min_requests: 20}",
        &preamble,
    );
    let agent = client();
    let version =
        |key: &str| send(&agent, "GET", &r.proxy.url("/x"), &[("X-Api-Key", key)]).version();
    assert_eq!(version(keys[1]), "v2", "globex moved");
    assert_eq!(version(keys[0]), "v1");
    assert_eq!(version(keys[2]), "v1");
    assert_eq!(send(&agent, "GET", &r.proxy.url("/x"), &[]).version(), "v1");
    assert_eq!(r.control("promote").status, 200);
    assert_eq!(version(keys[1]), "v2", "cumulative: globex stays");
    assert_eq!(version(keys[2]), "v2", "initech moved");
    assert_eq!(version(keys[0]), "v1");
    // The gates judge the clients' traffic: a failing canary pauses the step (on_failure: pause).
    r.v2.control.set_error_rate(0.5);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, url) = (stop.clone(), r.proxy.url("/x"));
        std::thread::spawn(move || {
            let agent = client();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = if n % 2 == 0 {
                    "initech-key"
                } else {
                    "acme-key"
                };
                let _ = agent.get(&url).set("X-Api-Key", key).call();
            }
        })
    };
    let paused = r.wait_state("paused", Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.contains("max_error_rate_increase") && reason.contains("on_failure: pause"),
        "{reason}"
    );
    assert_eq!(paused["step"], 2);
    assert_eq!(version(keys[2]), "v2", "the step is held, not rolled back");
}

#[test]
fn a_finished_rollout_survives_an_unrelated_edit_and_the_exported_config_reloads_as_a_no_op() {
    let r = start("steps: [50, 100], hold: 500ms, interval: 250ms, gates: {min_requests: 20}");
    let load = r.load(0);
    r.wait_state("succeeded", Duration::from_secs(30));
    drop(load);
    assert_eq!(r.share("v2"), 100.0);
    let conf = r.proxy.config_path();
    let conf = conf.to_str().unwrap();
    // An unrelated edit of the file: a new route.
    let text = std::fs::read_to_string(conf).unwrap();
    let extra =
        "  - name: other\n    match: {path_prefix: /other}\n    split: {targets: {v1: 100}}\n";
    std::fs::write(conf, format!("{text}{extra}")).unwrap();
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(r.share("v2"), 100.0, "the release stays: {out}");
    assert_eq!(r.view()["state"], "succeeded");
    // A conflicting edit (the split the rollout changed) is refused; --force applies it.
    let text = std::fs::read_to_string(conf).unwrap();
    std::fs::write(conf, text.replace("v1: 100, v2: 0}", "v1: 90, v2: 10}")).unwrap();
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[api].split.targets") && out.contains("changed live by rollout"),
        "{out}"
    );
    assert_eq!(r.share("v2"), 100.0);
    let (code, out) = switchyard(&["reload", "-c", conf, "--force"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(r.share("v2"), 10.0);
    // The live config exported to the file and reloaded: no new revision, no traffic change.
    let admin = format!("http://{}", r.admin);
    let env = [
        ("SWITCHYARD_ADMIN", admin.as_str()),
        ("SWITCHYARD_TOKEN", OPS),
    ];
    let exported = switchyard_env(&["ctl", "export"], &env);
    assert_eq!(exported.0, 0, "{}", exported.1);
    let before = r.audit().len();
    std::fs::write(conf, &exported.1).unwrap();
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(r.audit().len(), before);
    assert_eq!(r.share("v2"), 10.0);
}

#[test]
fn ctl_status_shows_each_rollout_and_watch_redraws_in_place_on_a_terminal() {
    let r = start("steps: [50], hold: 2s, interval: 250ms, gates: {min_requests: 20}");
    let admin = format!("http://{}", r.admin);
    let env = [
        ("SWITCHYARD_ADMIN", admin.as_str()),
        ("SWITCHYARD_TOKEN", OPS),
    ];
    let (code, out) = switchyard_env(&["ctl", "status"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ROLLOUT") && out.contains("running 1/1 (weight 50%)"),
        "{out}"
    );
    // On a terminal (a pseudo-terminal from util-linux's `script`) the view is redrawn in place.
    let load = r.load(0);
    let watch = std::process::Command::new("script")
        .args([
            "-qefc",
            &format!(
                "{} ctl rollout api --watch",
                env!("CARGO_BIN_EXE_switchyard")
            ),
            "/dev/null",
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    drop(load);
    let shown = String::from_utf8_lossy(&watch.stdout);
    assert!(watch.status.success(), "{shown}");
    assert!(shown.contains("\u{1b}[H\u{1b}[2J"), "not redrawn: {shown}");
    assert!(shown.contains("SUCCEEDED"), "{shown}");
    // Piped, it appends instead.
    let (code, piped) = switchyard_env(&["ctl", "rollout", "api", "--watch"], &env);
    assert_eq!(code, 0, "{piped}");
    assert!(!piped.contains('\u{1b}'), "{piped}");
}
