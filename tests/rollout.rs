//! The rollout controller on a real instance with real upstreams and second-scale holds: a healthy
//! canary succeeds, a canary with more errors or more latency is rolled back with its reason audited,
//! an equally noisy one is not, low traffic waits, header and mirror phases route and judge, every
//! control call, webhooks and notifications, and a restart and an upgrade in the middle of a step.
#![allow(clippy::unwrap_used)]

mod common;
use common::rollout::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_healthy_canary_walks_every_step_and_succeeds_at_100_percent() {
    let r = start(
        "steps: [{header: {X-Version: beta}}, 20, 50], hold: 1s, interval: 300ms, \
         gates: {min_requests: 20}, notify: \"http://{hooks}/notify\", \
         webhooks: [{when: post_rollout, url: \"http://{hooks}/done\"}]",
    );
    let v = r.view();
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["step"], 1);
    assert_eq!(v["phase"], "header X-Version: beta");
    let agent = client();
    let beta = send(&agent, "GET", &r.proxy.url("/x"), &[("X-Version", "beta")]);
    let plain = send(&agent, "GET", &r.proxy.url("/x"), &[]);
    assert_eq!(
        (beta.version(), plain.version()),
        ("v2".into(), "v1".into())
    );

    let load = r.load(3);
    let done = r.wait_state("succeeded", Duration::from_secs(40));
    drop(load);
    assert_eq!(done["step"], 3);
    assert_eq!(r.share("v2"), 100.0);
    assert_eq!(r.share("v1"), 0.0);
    let route = r.call("GET", "/v1/routes/api", None).json();
    assert_eq!(route["rules"], 0, "the header phase's rule is taken back");
    let audit = r.audit();
    assert_eq!(
        actions_by(&audit, "rollout"),
        [
            "rollout.start",
            "rollout.step",
            "rollout.step",
            "rollout.succeeded"
        ]
    );
    let last = audit.last().unwrap();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("all 3 steps done: v2 at 100%"),
        "{last:#}"
    );
    let metrics = r.call("GET", "/metrics", None).body;
    assert!(
        metrics.contains("switchyard_rollout_state{route=\"api\",state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_rollout_step{route=\"api\"} 3"));
    assert!(metrics.contains("switchyard_rollout_checks_total{route=\"api\",verdict=\"pass\"}"));
    // Verdicts reach notify; post_rollout is called once.
    assert!(eventually(Duration::from_secs(5), || {
        let bodies = hook_bodies(&r.hooks);
        bodies.iter().any(|b| b["what"] == "succeeded")
            && bodies
                .iter()
                .any(|b| b["event"]["event"] == "check" && b["event"]["verdict"] == "pass")
    }));
    // A restart after success changes nothing.
    let before = r.audit().len();
    let mut r = r;
    r.proxy.restart();
    let admin = r.admin;
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(r.view()["state"], "succeeded");
    assert_eq!(r.audit().len(), before);
}

#[test]
fn a_canary_answering_10_percent_500s_is_rolled_back_with_its_reason_audited() {
    let r = start(
        "steps: [50, 100], hold: 60s, interval: 300ms, gates: {min_requests: 50}, \
         webhooks: [{when: rollback, url: \"http://{hooks}/rollback\"}]",
    );
    r.v2.control.set_error_rate(0.10);
    let load = r.load(0);
    let failed = r.wait_state("failed", Duration::from_secs(30));
    drop(load);
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step 1/2 (weight 50%): max_error_rate_increase: canary 5xx "),
        "{reason}"
    );
    assert!(reason.contains("vs baseline 0.00% (0/"), "{reason}");
    assert!(
        reason.contains("Bayes factor ") && reason.contains("(check "),
        "{reason}"
    );
    assert_eq!(r.share("v2"), 0.0);
    let audit = r.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["action"], "rollout.failed");
    assert_eq!(last["actor"], "rollout");
    assert_eq!(last["reason"].as_str().unwrap(), reason);
    assert!(eventually(Duration::from_secs(5), || hook_bodies(&r.hooks)
        .iter()
        .any(|b| b["what"] == "failed")));
    let metrics = r.call("GET", "/metrics", None).body;
    assert!(metrics.contains("switchyard_rollout_state{route=\"api\",state=\"failed\"} 1"));
}

#[test]
fn a_canary_with_5x_the_latency_is_rolled_back_on_the_latency_gate() {
    let r = start(
        "steps: [50], hold: 60s, interval: 300ms, gates: {min_requests: 50, max_p99_ratio: 1.5}",
    );
    // Delays that dominate the latency even when the machine is busy (queueing adds to both).
    r.v1.control.set_delay(Duration::from_millis(20));
    r.v2.control.set_delay(Duration::from_millis(100));
    let load = r.load(0);
    let failed = r.wait_state("failed", Duration::from_secs(30));
    drop(load);
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("max_p99_ratio: canary p99 "), "{reason}");
    assert_eq!(r.share("v2"), 0.0);
}

#[test]
fn a_canary_as_noisy_as_its_baseline_is_not_rolled_back() {
    let r = start("steps: [30, 60], hold: 2s, interval: 300ms, gates: {min_requests: 50}");
    r.v1.control.set_error_rate(0.05);
    r.v2.control.set_error_rate(0.05);
    let load = r.load(0);
    let done = r.wait_state("succeeded", Duration::from_secs(40));
    drop(load);
    assert!(done["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["verdict"] != "fail"));
    assert_eq!(r.share("v2"), 100.0);
}

#[test]
fn low_traffic_is_inconclusive_and_waits() {
    let r = start("steps: [50], hold: 500ms, interval: 200ms, gates: {min_requests: 100}");
    std::thread::sleep(Duration::from_secs(2));
    let v = r.view();
    assert_eq!(v["state"], "running");
    assert_eq!(v["step"], 1);
    assert_eq!(v["checks"]["pass"], 0);
    assert!(v["checks"]["inconclusive"].as_u64().unwrap() >= 3, "{v:#}");
    assert_eq!(
        v["last_check"]["needs"],
        "100 more canary requests; the canary gets 50% of the split's traffic",
        "{v:#}"
    );
    let load = r.load(0);
    r.wait_state("succeeded", Duration::from_secs(30));
    drop(load);
}

fn header_and_mirror_phases_route_and_judge_as_described() {
    let r = start(
        "steps: [{header: {X-Version: beta}}, {mirror: 50}, {pause: {}}, 10], hold: 1s, \
         interval: 300ms, gates: {min_requests: 20, max_mirror_diff_rate: 100%}",
    );
    let agent = client();
    let url = r.proxy.url("/x");
    for _ in 0..10 {
        assert_eq!(
            send(&agent, "GET", &url, &[("X-Version", "beta")]).version(),
            "v2"
        );
        assert_eq!(
            send(&agent, "GET", &url, &[("X-Version", "other")]).version(),
            "v1"
        );
    }
    let load = r.load(4);
    let mut seen = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            seen = r.view();
            seen["step"] == 2
        }),
        "{seen:#}"
    );
    assert_eq!(seen["phase"], "mirror 50%");
    // A dark phase: everyone is answered by v1, and v2 gets copies.
    let copies_before = r.v2.control.requests();
    for _ in 0..20 {
        assert_eq!(send(&agent, "GET", &url, &[]).version(), "v1");
    }
    assert!(eventually(Duration::from_secs(5), || r
        .v2
        .control
        .requests()
        > copies_before + 5));
    let paused = r.wait_state("paused", Duration::from_secs(20));
    drop(load);
    assert_eq!(paused["step"], 3);
    assert!(paused["reason"]
        .as_str()
        .unwrap()
        .contains("waiting for promote"));
    let judged_mirror = paused["history"].as_array().unwrap().iter().any(|e| {
        e["step"] == 2
            && e["verdict"] == "pass"
            && e["reason"].as_str().unwrap().contains("shadow copies")
    });
    assert!(judged_mirror, "{paused:#}");
    let route = r.call("GET", "/v1/routes/api", None).json();
    assert!(
        route["mirror"].is_null(),
        "the mirror phase ended: {route:#}"
    );
    assert_eq!(r.share("v2"), 0.0);
    // Still in the internal phase: beta testers keep v2.
    assert_eq!(
        send(&agent, "GET", &url, &[("X-Version", "beta")]).version(),
        "v2"
    );
    // `resume` does not skip a pause; `promote` does.
    assert_eq!(r.control("resume").status, 409);
    let promoted = r.control("promote");
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    assert_eq!(promoted.json()["step"], 4);
    assert_eq!(r.share("v2"), 10.0);
}

#[test]
fn pause_resume_abort_retry_start_promote_and_a_persons_change() {
    let r = start("steps: [10, 20, 30], hold: 60s, interval: 300ms, gates: {min_requests: 5}");
    assert_eq!(r.share("v2"), 10.0);
    assert_eq!(r.control("start").status, 409, "already running");
    assert_eq!(r.control("resume").status, 409, "not paused");
    let paused = r.control("pause");
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["state"], "paused");
    assert!(paused.json()["reason"]
        .as_str()
        .unwrap()
        .contains("paused by ops: test"));
    assert_eq!(r.control("resume").json()["state"], "running");
    let promoted = r.control("promote").json();
    assert_eq!(
        (promoted["step"].as_u64(), promoted["state"].as_str()),
        (Some(2), Some("running"))
    );
    assert_eq!(r.share("v2"), 20.0);
    let aborted = r.control("abort").json();
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(r.share("v2"), 0.0);
    assert_eq!(r.control("abort").status, 409);
    let admin = format!("http://{}", r.admin);
    let (code, out) = switchyard(&[
        "ctl", "--admin", &admin, "--token", OPS, "rollout", "api", "--watch",
    ]);
    assert_eq!(code, 1, "--watch ends with 1 on an aborted rollout: {out}");
    assert!(out.contains("ABORTED"), "{out}");
    let retried = r.control("retry").json();
    assert_eq!(
        (retried["step"].as_u64(), retried["state"].as_str()),
        (Some(2), Some("running"))
    );
    assert_eq!(r.share("v2"), 20.0);
    assert_eq!(r.control("frobnicate").status, 404);
    // `ctl rollout` shows it in words.
    let (code, out) = switchyard(&["ctl", "--admin", &admin, "--token", OPS, "rollout", "api"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("api: rollout of v2 — RUNNING, step 2/3 (weight 20%), canary at 20%"),
        "{out}"
    );
    assert!(
        out.contains("plan: weight 10% → [weight 20%] → weight 30%"),
        "{out}"
    );
    assert!(out.contains("left;"), "{out}");

    // A person's change pauses the rollout and says who made it.
    let patch = r.call(
        "PATCH",
        "/v1/routes/api",
        Some(r#"{"split":{"v2":"15%"},"reason":"hand"}"#),
    );
    assert_eq!(patch.status, 200, "{}", patch.body);
    let paused = r.wait_state("paused", Duration::from_secs(5));
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("route changed by ops (route.patch, revision "),
        "{reason}"
    );
    assert_eq!(
        r.share("v2"),
        15.0,
        "the controller does not fight a person"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(r.share("v2"), 15.0);
    // Resuming puts the step's routing back.
    let (code, out) = switchyard(&[
        "ctl", "--admin", &admin, "--token", OPS, "--reason", "ok", "rollout", "api", "resume",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(r.share("v2"), 20.0);
    // A person's rollback aborts it.
    assert_eq!(
        r.call("POST", "/v1/routes/api/rollback", Some("{}")).status,
        200
    );
    let aborted = r.wait_state("aborted", Duration::from_secs(5));
    assert!(aborted["reason"]
        .as_str()
        .unwrap()
        .starts_with("route rolled back by ops"));
    let started = r.control("start").json();
    assert_eq!(
        (started["step"].as_u64(), started["state"].as_str()),
        (Some(1), Some("running"))
    );
    let audit = r.audit();
    let ops = actions_by(&audit, "ops");
    for action in [
        "rollout.pause",
        "rollout.resume",
        "rollout.promote",
        "rollout.abort",
        "rollout.start",
        "route.patch",
        "route.rollback",
    ] {
        assert!(
            ops.iter().any(|a| a == action),
            "{action} missing in {ops:?}"
        );
    }
}

#[test]
fn a_pre_step_webhook_that_refuses_fails_the_step() {
    let r = start(
        "steps: [50, 100], hold: 60s, interval: 200ms, gates: {min_requests: 5}, \
         webhooks: [{when: pre_step, url: \"http://{hooks}/acceptance\", timeout: 2s}]",
    );
    r.hooks.control.set_status(503);
    let failed = r.wait_state("failed", Duration::from_secs(15));
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("pre_step: pre_step webhook http://")
            && reason.contains("answered HTTP 503"),
        "{reason}"
    );
    assert_eq!(r.share("v2"), 0.0);
    let called = hook_bodies(&r.hooks);
    assert!(called
        .iter()
        .any(|b| b["what"] == "pre_step" && b["step"] == 1));
    // Once the acceptance test passes, a retried step is judged on traffic again.
    r.hooks.control.set_status(200);
    assert_eq!(r.control("retry").status, 200);
    let load = r.load(0);
    assert!(eventually(Duration::from_secs(15), || r.view()["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "check" && e["verdict"] == "pass")));
    drop(load);
}

#[test]
fn a_restart_and_an_upgrade_in_the_middle_continue_the_same_step_with_its_held_time() {
    let mut r = start("steps: [20, 40], hold: 8s, interval: 300ms, gates: {min_requests: 5}");
    let _load = r.load(0);
    assert!(eventually(Duration::from_secs(10), || r.view()
        ["held_seconds"]
        .as_f64()
        .unwrap()
        >= 3.0));
    r.proxy.restart();
    let admin = r.admin;
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    // The new process takes the rollout up within its controller's first turn.
    let mut after = r.view();
    assert!(eventually(Duration::from_secs(5), || {
        after = r.view();
        after["state"] != "pending"
    }));
    assert_eq!(
        (after["step"].as_u64(), after["state"].as_str()),
        (Some(1), Some("running")),
        "{after:#}"
    );
    let held = after["held_seconds"].as_f64().unwrap();
    assert!(held >= 2.0, "held time was lost on restart: {after:#}");
    assert_eq!(r.share("v2"), 20.0);

    // An upgrade: the new process takes the sockets over and the step goes on from where it was.
    let held_before = r.view()["held_seconds"].as_f64().unwrap();
    let mut new = r.proxy.spawn_upgrade();
    // The old instance hands over only once the new one waits on the upgrade socket.
    let sock = r.proxy.dir.join("upgrade.sock");
    assert!(eventually(Duration::from_secs(15), || sock.exists()));
    std::thread::sleep(Duration::from_millis(200));
    signal(r.proxy.child.id(), "QUIT");
    assert!(eventually(Duration::from_secs(30), || matches!(
        r.proxy.child.try_wait(),
        Ok(Some(_))
    )));
    assert!(eventually(Duration::from_secs(5), || {
        after = r.view();
        after["state"] != "pending"
    }));
    assert_eq!(after["step"], 1, "{after:#}");
    assert!(
        after["held_seconds"].as_f64().unwrap() >= held_before,
        "{after:#}"
    );
    r.wait_state("succeeded", Duration::from_secs(30));
    let audit = r.audit();
    assert_eq!(
        actions_by(&audit, "rollout"),
        ["rollout.start", "rollout.step", "rollout.succeeded"],
        "no step was started twice"
    );
    let _ = new.kill();
    let _ = new.wait();
}

#[test]
fn a_reload_that_leaves_the_route_alone_keeps_the_step_and_a_changed_rollout_starts_again() {
    let r = start("steps: [{header: {X-Version: beta}}, 20, 40], hold: 60s, interval: 300ms");
    assert_eq!(r.control("promote").json()["step"], 2);
    assert_eq!(r.share("v2"), 20.0);
    // The file gains a route: the reload applies only that, so the rollout's step and routing stay
    // as they are, with nothing to put back.
    let config = std::fs::read_to_string(r.proxy.config_path()).unwrap();
    let extra =
        "  - name: other\n    match: {path_prefix: /other}\n    split: {targets: {v1: 100}}\n";
    std::fs::write(r.proxy.config_path(), format!("{config}{extra}")).unwrap();
    let (code, out) = switchyard(&["reload", "-c", r.proxy.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("from the file: routes (their list and order)"),
        "{out}"
    );
    let v = r.view();
    assert_eq!(
        (v["state"].as_str(), v["step"].as_u64()),
        (Some("running"), Some(2)),
        "{v:#}"
    );
    assert!(v["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"] != "pause"));
    assert_eq!(r.share("v2"), 20.0);
    let agent = client();
    assert_eq!(
        send(&agent, "GET", &r.proxy.url("/x"), &[("X-Version", "beta")]).version(),
        "v2",
        "the header phase's rule stays"
    );
    // A changed rollout block starts the rollout again from its first step.
    let config = std::fs::read_to_string(r.proxy.config_path()).unwrap();
    std::fs::write(r.proxy.config_path(), config.replace("20, 40]", "30, 60]")).unwrap();
    signal(r.proxy.child.id(), "HUP");
    let mut v = Value::Null;
    assert!(eventually(Duration::from_secs(5), || {
        v = r.view();
        // A pending rollout shows its plan too: wait until the controller has taken it up.
        v["plan"][1] == "weight 30%" && v["state"] != "pending"
    }));
    assert_eq!(
        (v["state"].as_str(), v["step"].as_u64()),
        (Some("running"), Some(1))
    );
    assert_eq!(r.share("v2"), 0.0);
    let audit = r.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["action"], "rollout.start");
    assert!(last["reason"]
        .as_str()
        .unwrap()
        .starts_with("rollout block changed"));
}

on_both_paths!(header_and_mirror_phases_route_and_judge_as_described);
on_h2_paths!(header_and_mirror_phases_route_and_judge_as_described);
