//! The admin API on a real instance: auth, every endpoint's success and refusal, ETag/If-Match,
//! rollback, revisions and restore, concurrent changes, and how fast a PATCH starts serving.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const OPS: &str = "ops-token";
const CI: &str = "ci-token";

struct Admin {
    proxy: ProxyProcess,
    admin: SocketAddr,
    _v1: RunningBackend,
    _v2: RunningBackend,
    _blue: RunningBackend,
    _green: RunningBackend,
}

fn start() -> Admin {
    let (v1, v2, blue, green) = (
        backend("v1"),
        backend("v2"),
        backend("blue"),
        backend("green"),
    );
    let admin = free_addr();
    let body = Fixture::new()
        .admin(admin, &[("ops", OPS), ("ci", CI)])
        .upstream("v1", v1.addr)
        .upstream("v2", v2.addr)
        .upstream("blue", blue.addr)
        .upstream("green", green.addr)
        .route("name: api\nmatch: {path_prefix: /api}\nsplit: {targets: {v1: 100, v2: 0}, baseline: v1, sticky: [header:X-User-Id]}")
        .route("name: web\nmatch: {path_prefix: /}\nblue_green: {blue: blue, green: green, live: blue}")
        .yaml();
    let proxy = ProxyProcess::start(&body);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    Admin {
        proxy,
        admin,
        _v1: v1,
        _v2: v2,
        _blue: blue,
        _green: green,
    }
}

impl Admin {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let url = format!("http://{}{}", self.admin, path);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        send_body(&client(), method, &url, &headers, body)
    }
    fn ops(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call(method, path, Some(OPS), body)
    }
    fn revision(&self) -> u64 {
        self.ops("GET", "/v1/status", None).json()["revision"]
            .as_u64()
            .unwrap()
    }
}

#[test]
fn auth_healthz_and_tokens() {
    let a = start();
    assert_eq!(a.call("GET", "/healthz", None, None).status, 200);
    for (token, says) in [
        (None, "no token"),
        (Some("wrong"), "unknown token"),
        (Some(""), "no token"),
    ] {
        let r = a.call("GET", "/v1/status", token, None);
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(
            r.json()["detail"].as_str().unwrap().contains(says),
            "{token:?}: {}",
            r.body
        );
    }
    for token in [OPS, CI] {
        assert_eq!(a.call("GET", "/v1/status", Some(token), None).status, 200);
    }
    // The token's name is the actor.
    a.call(
        "PATCH",
        "/v1/routes/api",
        Some(CI),
        Some(r#"{"split":{"v2":5}}"#),
    );
    let audit = a.ops("GET", "/v1/audit", None).json();
    let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["actor"].as_str(),
            last["action"].as_str(),
            last["route"].as_str()
        ),
        (Some("ci"), Some("route.patch"), Some("api"))
    );
}

#[test]
fn patch_split_live_and_refusals() {
    let a = start();
    let agent = client();
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v1");
    let started = a.revision();
    let r = a.ops(
        "PATCH",
        "/v1/routes/api",
        Some(r#"{"split":{"v1":0,"v2":100}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["revision"].as_u64(), Some(started + 1));
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v2");
    // Status lists the baseline first, marked, whatever the weights.
    let status = a.ops("GET", "/v1/status", None).json();
    let split = &status["routes"][0]["split"];
    assert_eq!(split["baseline"], "v1");
    let targets: Vec<(String, bool, f64)> = split["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["target"].as_str().unwrap().to_string();
            (name, t["baseline"] == true, t["share"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(
        targets,
        [("v1".into(), true, 0.0), ("v2".into(), false, 100.0)]
    );

    assert_eq!(
        a.ops("PATCH", "/v1/routes/web", Some(r#"{"live":"green"}"#))
            .status,
        200
    );
    assert_eq!(get(&agent, &a.proxy.url("/"), &[]).version(), "green");

    let refusals: [(&str, &str, u16, &str); 8] = [
        (
            "/v1/routes/nope",
            r#"{"split":{"v1":1}}"#,
            404,
            "no such route",
        ),
        (
            "/v1/routes/api",
            r#"{"split":{"v9":5}}"#,
            400,
            "no such upstream",
        ),
        (
            "/v1/routes/api",
            r#"{"split":{"v1":0,"v2":0}}"#,
            400,
            "weights sum to 0",
        ),
        (
            "/v1/routes/api",
            r#"{"split":{"v1":-1}}"#,
            400,
            "weight must be a number >= 0",
        ),
        ("/v1/routes/api", "not json", 400, "not valid JSON"),
        (
            "/v1/routes/api",
            r#"{"colour":"red"}"#,
            400,
            "unknown field",
        ),
        (
            "/v1/routes/web",
            r#"{"live":"purple"}"#,
            400,
            "live must be",
        ),
        (
            "/v1/routes/api",
            r#"{"live":"green"}"#,
            400,
            "not blue/green",
        ),
    ];
    let before = a.revision();
    for (path, body, code, message) in refusals {
        let r = a.ops("PATCH", path, Some(body));
        assert_eq!(r.status, code, "{path} {body}: {}", r.body);
        assert!(r.body.contains(message), "{path} {body}: {}", r.body);
    }
    assert_eq!(a.revision(), before, "a refused change made a revision");
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v2");
}

#[test]
fn config_etag_put_rollback_and_restore() {
    let a = start();
    let agent = client();
    let r = a.ops("GET", "/v1/config", None);
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", a.revision()));
    let yaml = r.body.clone();
    assert!(yaml.contains("routes:"));

    // If-Match on another revision: 409, nothing changes.
    let agent2 = client();
    let put = |if_match: &str, body: &str| {
        let resp = agent2
            .put(&format!("http://{}/v1/config", a.admin))
            .set("Authorization", &format!("Bearer {OPS}"))
            .set("If-Match", if_match)
            .send_string(body);
        match resp {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let (code, body) = put("\"999\"", &yaml);
    assert_eq!(code, 409, "{body}");
    let (code, body) = put(&etag, "routes: [{name: x}]\n");
    assert_eq!(code, 400);
    assert!(body.contains("\"errors\""), "{body}");
    // A config without the admin section, or without a token, would lock the operator out: refused.
    let mut without_admin = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            skipping = line.starts_with("admin:");
        }
        if !skipping {
            without_admin.push_str(line);
            without_admin.push('\n');
        }
    }
    let (code, body) = put(&etag, &without_admin);
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("no admin section"), "{body}");
    assert_eq!(
        format!("\"{}\"", a.revision()),
        etag,
        "a refused PUT made a revision"
    );
    let v2_everywhere = yaml.replace("v1: 100", "v1: 0").replace("v2: 0", "v2: 100");
    let (code, body) = put(&etag, &v2_everywhere);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v2");
    let put_revision = a.revision();

    // Rollback: all split traffic to the baseline.
    assert_eq!(a.ops("POST", "/v1/routes/api/rollback", None).status, 200);
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v1");
    assert_eq!(a.ops("POST", "/v1/routes/web/rollback", None).status, 200);
    assert_eq!(get(&agent, &a.proxy.url("/"), &[]).version(), "green");

    // Restore the PUT revision: a new revision equal to it.
    let list = a.ops("GET", "/v1/revisions", None).json();
    assert!(list["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["revision"].as_u64() == Some(put_revision)));
    let r = a.ops(
        "POST",
        &format!("/v1/revisions/{put_revision}/restore"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&agent, &a.proxy.url("/api"), &[]).version(), "v2");
    assert_eq!(
        a.ops("POST", "/v1/revisions/9999/restore", None).status,
        404
    );
    assert_eq!(a.ops("POST", "/v1/revisions/abc/restore", None).status, 400);
    assert_eq!(a.ops("DELETE", "/v1/config", None).status, 405);
    assert_eq!(a.ops("GET", "/v1/nothing", None).status, 404);
}

#[test]
fn oversized_bodies_are_refused() {
    let a = start();
    let huge = "x".repeat(5 << 20);
    let r = a.ops("PUT", "/v1/config", Some(&huge));
    assert_eq!(r.status, 413);
}

#[test]
fn forty_concurrent_patches_all_apply_once() {
    let a = start();
    let before = a.revision();
    let admin = a.admin;
    let threads: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                let r = client()
                    .request("PATCH", &format!("http://{admin}/v1/routes/api"))
                    .set("Authorization", &format!("Bearer {OPS}"))
                    .send_string(&format!(r#"{{"split":{{"v2":{i}}}}}"#))
                    .unwrap();
                serde_json::from_str::<serde_json::Value>(&r.into_string().unwrap()).unwrap()
                    ["revision"]
                    .as_u64()
                    .unwrap()
            })
        })
        .collect();
    let mut revisions: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        ((before + 1)..=(before + 40)).collect::<Vec<_>>()
    );
    let entries = a.ops("GET", "/v1/audit", None).json()["entries"]
        .as_array()
        .unwrap()
        .clone();
    let patches = entries
        .iter()
        .filter(|e| e["action"] == "route.patch")
        .count();
    assert_eq!(patches, 40);
}

/// Not an assertion on time: prints how long a PATCH takes to start serving, for the record.
#[test]
fn patch_to_serving_latency_is_reported() {
    let a = start();
    let agent = client();
    let mut samples = Vec::new();
    for i in 0..20 {
        let (target, weights) = if i % 2 == 0 {
            ("v2", r#"{"split":{"v1":0,"v2":100}}"#)
        } else {
            ("v1", r#"{"split":{"v1":100,"v2":0}}"#)
        };
        let t = Instant::now();
        assert_eq!(a.ops("PATCH", "/v1/routes/api", Some(weights)).status, 200);
        let returned = t.elapsed();
        assert_eq!(
            get(&agent, &a.proxy.url("/api"), &[]).version(),
            target,
            "the PATCH was not serving once it returned"
        );
        samples.push(returned);
    }
    samples.sort();
    eprintln!(
        "PATCH round trip (returns with the new split live): median {:?}, max {:?}",
        samples[10], samples[19]
    );
}

/// `switchyard ctl` against the running instance, with the environment it documents.
fn ctl(a: &Admin, token: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(args)
        .env("SWITCHYARD_ADMIN", format!("http://{}", a.admin))
        .env("SWITCHYARD_TOKEN", token)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn ctl_drives_a_running_instance() {
    let a = start();
    let agent = client();
    let (code, out) = ctl(&a, OPS, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("api") && out.contains("v1 100.0%") && out.contains("live blue"),
        "{out}"
    );

    let (code, out) = ctl(&a, OPS, &["set-split", "api", "v1=90", "v2=10"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("now serving revision"), "{out}");
    let (_, out) = ctl(&a, OPS, &["status"]);
    assert!(out.contains("v1 90.0% (baseline), v2 10.0%"), "{out}");

    assert_eq!(ctl(&a, OPS, &["flip", "web"]).0, 0);
    assert_eq!(get(&agent, &a.proxy.url("/"), &[]).version(), "green");
    assert_eq!(ctl(&a, OPS, &["rollback", "api"]).0, 0);
    let (code, out) = ctl(&a, OPS, &["--json", "status"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["routes"][0]["split"]["targets"][1]["weight"], 0.0);

    let (code, out) = ctl(&a, OPS, &["revisions"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("(live)") && out.contains("route.rollback"),
        "{out}"
    );
    let (code, out) = ctl(&a, OPS, &["audit"]);
    assert!(
        code == 0 && out.contains("route.patch") && out.contains("ops"),
        "{out}"
    );
    assert_eq!(ctl(&a, OPS, &["restore", "2"]).0, 0);

    // Refused as invalid: exit 1 with the reason; not allowed or not reachable: exit 3; usage: 2.
    let (code, out) = ctl(&a, OPS, &["set-split", "api", "v9=5"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no such upstream"), "{out}");
    assert_eq!(ctl(&a, OPS, &["flip", "api"]).0, 1);
    assert_eq!(ctl(&a, OPS, &["set-split", "api", "v2"]).0, 2);
    assert_eq!(ctl(&a, OPS, &["set-split", "api", "v2=five%"]).0, 2);
    assert_eq!(ctl(&a, "wrong", &["status"]).0, 3);
    assert_eq!(ctl(&a, OPS, &["frobnicate"]).0, 2);
}

#[test]
fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let a = start();
    a._v1.control.set_delay(Duration::from_millis(800));
    let url = a.proxy.url("/api");
    let slow = std::thread::spawn(move || get(&client(), &url, &[]));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        a.ops(
            "PATCH",
            "/v1/routes/api",
            Some(r#"{"split":{"v1":0,"v2":100}}"#)
        )
        .status,
        200
    );
    // New requests see the change at once; the slow one completes normally on v1.
    assert_eq!(get(&client(), &a.proxy.url("/api"), &[]).version(), "v2");
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.version()), (200, "v1".to_string()));
}

#[test]
fn a_restart_serves_the_api_made_split_and_an_edit_while_stopped_changes_only_what_it_edits() {
    let mut a = start();
    let agent = client();
    assert_eq!(
        a.ops(
            "PATCH",
            "/v1/routes/api",
            Some(r#"{"split":{"v1":0,"v2":100}}"#)
        )
        .status,
        200
    );
    let revision = a.revision();
    a.proxy.restart();
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(a.admin).is_ok()
    }));
    assert_eq!(
        get(&agent, &a.proxy.url("/api"), &[]).version(),
        "v2",
        "the API-made split was lost by a restart"
    );
    assert_eq!(a.revision(), revision);

    // Editing the file while stopped: its edit is merged onto the state left behind, as a new
    // revision by actor `file`; the API-made split, which the edit did not touch, stays.
    let text = std::fs::read_to_string(a.proxy.config_path()).unwrap();
    std::fs::write(
        a.proxy.config_path(),
        text.replace(
            "blue_green: {blue: blue, green: green, live: blue}",
            "blue_green: {blue: blue, green: green, live: green}",
        ),
    )
    .unwrap();
    a.proxy.restart();
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(a.admin).is_ok()
    }));
    assert_eq!(get(&agent, &a.proxy.url("/"), &[]).version(), "green");
    assert_eq!(
        get(&agent, &a.proxy.url("/api"), &[]).version(),
        "v2",
        "the API-made split stays"
    );
    assert_eq!(a.revision(), revision + 1);
    let audit = a.ops("GET", "/v1/audit", None).json();
    let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["reason"].as_str()),
        (
            Some("file"),
            Some("config file changed while stopped: routes[web].blue_green.live")
        )
    );
}

#[test]
fn explain_agrees_with_what_the_proxy_serves() {
    let a = start();
    let agent = client();
    assert_eq!(
        a.ops(
            "PATCH",
            "/v1/routes/api",
            Some(r#"{"split":{"v1":50,"v2":50}}"#)
        )
        .status,
        200
    );
    for u in 0..30 {
        let user = format!("user-{u}");
        let e = a
            .ops(
                "GET",
                &format!("/v1/routes/api/explain?header.X-User-Id={user}"),
                None,
            )
            .json();
        let served = get(&agent, &a.proxy.url("/api"), &[("X-User-Id", &user)]).version();
        assert_eq!(e["target"].as_str(), Some(served.as_str()), "{e}");
        assert!(
            e["explanation"]
                .as_str()
                .unwrap()
                .contains("sticky key header:x-user-id"),
            "{e}"
        );
    }
    let e = a.ops("GET", "/v1/routes/web/explain", None).json();
    assert_eq!(
        (e["target"].as_str(), e["reason"].as_str()),
        (Some("blue"), Some("live:blue"))
    );
    let e = a.ops("GET", "/v1/routes/api/explain", None).json();
    assert_eq!(e["reason"], "split:random");
    assert_eq!(a.ops("GET", "/v1/routes/nope/explain", None).status, 404);
    // An unknown route is named with the closest one and the list.
    let missing = a.ops("GET", "/v1/routes/apj", None);
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json()["detail"],
        "no such route \"apj\"; did you mean \"api\"? (routes: api, web)"
    );
    assert_eq!(
        a.ops("GET", "/v1/routes/api/explain?client=nobody", None)
            .status,
        400
    );
    assert_eq!(
        a.ops("GET", "/v1/routes/api/explain?colour=red", None)
            .status,
        400
    );

    let (code, out) = ctl(&a, OPS, &["explain", "api", "--header", "X-User-Id=user-7"]);
    let served = get(&agent, &a.proxy.url("/api"), &[("X-User-Id", "user-7")]).version();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("api -> {served} "))
            && out.contains("(bucket ")
            && out.contains(if served == "v1" { "(baseline)" } else { "" }),
        "{out}"
    );
}

/// A file rendered by a tool that sorts keys lists the canary first; rollback still lands on the
/// declared baseline, and re-rendering the file in another order moves no user.
#[test]
fn a_sorted_key_file_rolls_back_to_its_declared_baseline() {
    let (stable, canary) = (backend("stable"), backend("canary"));
    let admin = free_addr();
    let body = |targets: &str| {
        Fixture::new()
            .admin(admin, &[("ops", OPS)])
            .upstream("canary", canary.addr)
            .upstream("stable", stable.addr)
            .route(&format!(
                "name: api\nsplit: {{targets: {targets}, baseline: stable, sticky: [header:X-User-Id]}}"
            ))
            .yaml()
    };
    let proxy = ProxyProcess::start(&body("{canary: 30, stable: 70}"));
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let agent = client();
    let versions = |n: usize| -> Vec<String> {
        (0..n)
            .map(|u| {
                let user = format!("user-{u}");
                get(&agent, &proxy.url("/"), &[("X-User-Id", &user)]).version()
            })
            .collect()
    };
    let before = versions(300);
    let on_canary = before.iter().filter(|v| *v == "canary").count();
    assert!(
        (50..130).contains(&on_canary),
        "{on_canary} of 300 on the canary"
    );

    // The same split rendered in the other order: every user keeps its version.
    let ops = |method: &str, path: &str, body: Option<&str>| {
        let url = format!("http://{admin}{path}");
        let auth = format!("Bearer {OPS}");
        send_body(&client(), method, &url, &[("Authorization", &auth)], body)
    };
    let config = ops("GET", "/v1/config", None).body;
    let reordered = config.replace(
        "    targets:\n      canary: 30.0\n      stable: 70.0\n",
        "    targets:\n      stable: 70.0\n      canary: 30.0\n",
    );
    assert_ne!(reordered, config, "{config}");
    assert_eq!(ops("PUT", "/v1/config", Some(&reordered)).status, 200);
    assert_eq!(versions(300), before);

    // Rollback sends every user to the baseline, not to the target listed first.
    let r = ops("POST", "/v1/routes/api/rollback", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(versions(200).iter().all(|v| v == "stable"));
    let status = ops("GET", "/v1/status", None).json();
    let split = &status["routes"][0]["split"];
    assert_eq!(
        (
            split["targets"][0]["target"].as_str(),
            split["targets"][0]["share"].as_f64()
        ),
        (Some("stable"), Some(100.0))
    );
}

/// `TARGET=5%` sets exactly 5% (the baseline takes the difference), the change is printed before →
/// after with its reason in the audit, and flags win over the environment.
#[test]
fn ctl_sets_an_exact_percentage_and_records_why() {
    let a = start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "ctl",
            "set-split",
            "api",
            "v2=5%",
            "--reason",
            "ramp to 5% (CHG-1234)",
        ])
        .args(["--admin", &format!("http://{}", a.admin), "--token", OPS])
        .env("SWITCHYARD_ADMIN", "http://127.0.0.1:1")
        .env("SWITCHYARD_TOKEN", "wrong")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "api: split v1 100.0% (baseline), v2 0.0% → split v1 95.0% (baseline), v2 5.0%"
        ),
        "{text}"
    );
    let status = a.ops("GET", "/v1/status", None).json();
    let targets = &status["routes"][0]["split"]["targets"];
    assert_eq!(
        (targets[0]["share"].as_f64(), targets[1]["share"].as_f64()),
        (Some(95.0), Some(5.0))
    );
    let audit = a.ops("GET", "/v1/audit", None).json();
    let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "ramp to 5% (CHG-1234)");
    assert_eq!(last["actor"], "ops");

    // 5.00% of 20,000 sticky users, by the documented bucket formula over the live ranges...
    let on_v2 = (0..20_000)
        .filter(|u| {
            switchyard::release::split::bucket("api", format!("user-{u}").as_bytes()) >= 950_000
        })
        .count();
    assert!((900..1100).contains(&on_v2), "{on_v2} of 20,000");
    // ...and through the proxy for a sample of them: each gets the version its bucket says.
    let agent = client();
    for u in 0..400 {
        let user = format!("user-{u}");
        let want = if switchyard::release::split::bucket("api", user.as_bytes()) >= 950_000 {
            "v2"
        } else {
            "v1"
        };
        assert_eq!(
            get(&agent, &a.proxy.url("/api"), &[("X-User-Id", &user)]).version(),
            want,
            "{user}"
        );
    }

    // Refusals change nothing: the baseline takes the difference and cannot be set; over 100% in all.
    let (code, out) = ctl(&a, OPS, &["set-split", "api", "v1=50%"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("baseline"), "{out}");
    let r = a.ops(
        "PATCH",
        "/v1/routes/api",
        Some(r#"{"split":{"v2":"101%"}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        a.ops("GET", "/v1/status", None).json()["revision"],
        status["revision"]
    );
}

/// Two operators flip the same route at once from the same read: one wins, the other gets 409 and
/// nothing of it applies.
#[test]
fn concurrent_flips_with_if_match_never_both_apply() {
    let a = start();
    let read = a.ops("GET", "/v1/routes/web", None);
    let tag = read.header("etag").unwrap().to_string();
    assert_eq!(read.json()["blue_green"]["live"], "blue");
    let admin = a.admin;
    let flips: Vec<_> = (0..2)
        .map(|_| {
            let tag = tag.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer {OPS}");
                send_body(
                    &client(),
                    "PATCH",
                    &format!("http://{admin}/v1/routes/web"),
                    &[("Authorization", &auth), ("If-Match", &tag)],
                    Some(r#"{"live":"green","reason":"flip"}"#),
                )
            })
        })
        .collect();
    let mut codes: Vec<u16> = flips
        .into_iter()
        .map(|t| t.join().unwrap().status)
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [200, 409]);
    // Every action endpoint honours If-Match too, and answers the new ETag.
    let stale = [
        ("Authorization", format!("Bearer {OPS}")),
        ("If-Match", tag.clone()),
    ];
    let stale: Vec<(&str, &str)> = stale.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("http://{}/v1/routes/web/rollback", a.admin);
    assert_eq!(send_body(&client(), "POST", &url, &stale, None).status, 409);
    let live = a.revision();
    let fresh = format!("\"{live}\"");
    let r = send_body(
        &client(),
        "POST",
        &url,
        &[
            ("Authorization", &format!("Bearer {OPS}")),
            ("If-Match", &fresh),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("etag"), Some(format!("\"{}\"", live + 1).as_str()));
}

/// `ctl … | head`: a reader that goes away is not a crash.
#[test]
fn ctl_output_to_a_closed_pipe_is_not_a_crash() {
    let a = start();
    for i in 0..30 {
        a.ops(
            "PATCH",
            "/v1/routes/api",
            Some(&format!(r#"{{"split":{{"v2":{i}}}}}"#)),
        );
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "ctl",
            "audit",
            "--admin",
            &format!("http://{}", a.admin),
            "--token",
            OPS,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `ctl` over HTTPS, trusting a private CA: here the admin API is published on a TLS listener of the
/// proxy itself.
#[test]
fn ctl_speaks_https() {
    // The harness's test CA and its `localhost` certificate.
    let (ca_path, cert, key) = test_pki();
    let admin = free_addr();
    let tls = free_addr();
    let body = format!(
        "admin: {{listen: \"{admin}\", tokens: {{ops: {}}}}}\nupstreams:\n  admin: {{backends: [\"{admin}\"]}}\nroutes:\n  - name: admin\n    split: {{targets: {{admin: 1}}}}\n",
        sha256_hex(OPS)
    );
    let extra = format!(
        "  tls: [{{listen: \"{tls}\", cert: {}, key: {}}}]\n",
        cert.display(),
        key.display()
    );
    let _proxy = ProxyProcess::start_full(&body, "off", &extra, std::process::Stdio::null());
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(tls).is_ok()
    }));
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["ctl", "status", "--token", OPS])
            .args(["--admin", &format!("https://localhost:{}", tls.port())])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, out) = run(&["--cacert", ca_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("admin") && out.contains("revision 1"), "{out}");
    // Without the CA the certificate is not trusted: could not reach (3), never a silent downgrade.
    let (code, out) = run(&[]);
    assert_eq!(code, 3, "{out}");
}

/// A slow admin call (stats over 3,000 routes) does not hold up `/healthz`: a health check sent while
/// it runs is answered before it ends.
#[test]
fn healthz_answers_while_a_slow_admin_call_runs() {
    let v1 = backend("v1");
    let admin = free_addr();
    let mut body = Fixture::new()
        .admin(admin, &[("ops", OPS)])
        .upstream("v1", v1.addr)
        .yaml()
        + "routes:\n";
    for i in 0..3000 {
        body.push_str(&format!(
            "  - name: r{i}\n    match: {{path_prefix: /r{i}/}}\n    split: {{targets: {{v1: 1}}}}\n"
        ));
    }
    let _proxy = ProxyProcess::start(&body);
    assert!(eventually(Duration::from_secs(30), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = {
        let done = done.clone();
        std::thread::spawn(move || {
            let r = send_body(
                &client(),
                "GET",
                &format!("http://{admin}/v1/stats"),
                &[("Authorization", &format!("Bearer {OPS}"))],
                None,
            );
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r.status
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut answered_during = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let r = get(&client(), &format!("http://{admin}/healthz"), &[]);
        assert_eq!(r.status, 200);
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            answered_during += 1;
        }
    }
    assert_eq!(slow.join().unwrap(), 200);
    assert!(
        answered_during > 0,
        "/healthz was not answered while /v1/stats ran"
    );
}

/// Every refusal is RFC 9457 problem details: `application/problem+json` with type, title, status,
/// detail and a stable code; an invalid config lists each problem with its path.
#[test]
fn every_refusal_is_problem_details_with_a_stable_code() {
    let a = start();
    let check = |r: &Reply, status: u16, code: &str| -> serde_json::Value {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{}",
            r.body
        );
        let p = r.json();
        assert_eq!(p["status"], status);
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["type"], format!("urn:switchyard:problem:{code}"));
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        p
    };
    check(
        &a.call("GET", "/v1/status", None, None),
        401,
        "unauthorized",
    );
    check(&a.ops("GET", "/v1/routes/nope", None), 404, "not_found");
    check(
        &a.ops("PATCH", "/v1/routes/api", Some(r#"{"split":{"v2":-5}}"#)),
        400,
        "invalid_config",
    );
    let stale = send_body(
        &client(),
        "PATCH",
        &format!("http://{}/v1/routes/api", a.admin),
        &[
            ("Authorization", &format!("Bearer {OPS}")),
            ("If-Match", "\"1000\""),
        ],
        Some(r#"{"split":{"v2":5}}"#),
    );
    check(&stale, 409, "conflict");
    let p = check(
        &a.ops(
            "PUT",
            "/v1/config",
            Some("admin: {listen: \"127.0.0.1:1\", tokens: {ops: nothex}}\nroutes:\n  - name: r\n    split: {targets: {ghost: 1}}\n"),
        ),
        400,
        "invalid_config",
    );
    let errors = p["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "{p}");
    assert!(
        errors
            .iter()
            .all(|e| e["path"].is_string() && e["message"].is_string()),
        "{p}"
    );
    assert!(
        errors.iter().any(|e| e["path"] == "admin.tokens.ops"),
        "{p}"
    );
}

/// `?after=REV&limit=N` pages through the audit log and the revisions, oldest first, with the `after`
/// of the next page; a bad value is refused as a problem.
#[test]
fn audit_and_revisions_page_by_revision() {
    let a = start();
    for w in 1..=5 {
        let r = a.ops(
            "PATCH",
            "/v1/routes/api",
            Some(&format!(r#"{{"split":{{"v2":{w}}}}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let all = a.ops("GET", "/v1/audit", None).json();
    let count = all["entries"].as_array().unwrap().len();
    assert!(count >= 6, "{all}");
    assert_eq!(all["next_after"], serde_json::Value::Null);
    for what in ["audit", "revisions"] {
        let key = if what == "audit" {
            "entries"
        } else {
            "revisions"
        };
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = a
                .ops("GET", &format!("/v1/{what}?after={after}&limit=2"), None)
                .json();
            let items = page[key].as_array().unwrap();
            assert!(items.len() <= 2, "{page}");
            seen.extend(items.iter().map(|i| i["revision"].as_u64().unwrap()));
            match page["next_after"].as_u64() {
                Some(next) => after = next,
                None => break,
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{what}: {seen:?}");
        assert!(seen.len() >= 6, "{what}: {seen:?}");
    }
    assert_eq!(a.ops("GET", "/v1/audit?limit=0", None).status, 400);
    assert_eq!(
        a.ops("GET", "/v1/revisions?after=x", None).json()["code"],
        "bad_request"
    );
}

/// The admin listener reads every head through the same gate as the proxy: a head the HTTP parser
/// cannot read (a control byte in a field) gets a 400 problem, not a connection closed in silence.
#[test]
fn a_malformed_head_on_the_admin_listener_gets_a_400_problem() {
    use std::io::{Read, Write};
    let a = start();
    let mut tcp = std::net::TcpStream::connect(a.admin).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    tcp.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nIf-Match: \x08\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\": \"bad_request\""), "{answer}");
    assert!(answer.contains("malformed_head"), "{answer}");
}

/// The fixture builder writes the YAML the tests would write out by hand.
#[test]
fn a_fixture_is_the_yaml_a_test_would_write() {
    let yaml = Fixture::new()
        .admin("127.0.0.1:9", &[("ops", "t")])
        .section("clients:\n  keys: {a: b}")
        .upstream("v1", "127.0.0.1:1")
        .upstream_with("v2", "backends: [\"127.0.0.1:2\"], protocol: h2c")
        .route("name: api\nmatch: {path_prefix: /api}\nsplit: {targets: {v1: 100}}")
        .yaml();
    assert_eq!(
        yaml,
        format!(
            "admin:\n  listen: \"127.0.0.1:9\"\n  tokens: {{ops: {}}}\nclients:\n  keys: {{a: b}}\nupstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"], protocol: h2c}}\nroutes:\n  - name: api\n    match: {{path_prefix: /api}}\n    split: {{targets: {{v1: 100}}}}\n",
            sha256_hex("t")
        )
    );
}
