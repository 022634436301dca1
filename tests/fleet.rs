//! A fleet (SPEC §8): a real etcd (Debian's `etcd-server`) on loopback ports and several real
//! Switchyard processes sharing one prefix. A change on one instance is served by the others within a
//! second; two instances writing at once: one wins, the other gets 409; with etcd down every instance
//! keeps serving, refuses changes with 503 and converges once etcd is back; an instance started later,
//! or one that missed revisions past a compaction, catches up; one started with etcd down serves the
//! revision it copied; one rollout leader across the fleet, judged on the fleet's traffic, and taken
//! over mid-step without a step repeated or skipped.
//!
//! `cargo test --release --test fleet -- --ignored --nocapture` measures propagation and requests
//! lost across an etcd restart and a leader kill (perf/RESULTS-fleet.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::etcd::Etcd;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const OPS: &str = "ops-token";
/// Short leases, so that a dead leader is replaced within seconds.
const LEASE_TTL: Duration = Duration::from_secs(2);

/// One Switchyard of the fleet.
struct Instance {
    proxy: ProxyProcess,
    admin: SocketAddr,
    /// The config file's body (below its generated `server:`).
    body: String,
}

struct Backends {
    v1: RunningBackend,
    v2: RunningBackend,
}

fn backends() -> Backends {
    Backends {
        v1: backend("v1"),
        v2: backend("v2"),
    }
}

/// An instance of the fleet at `prefix`, routing `/` to v1 (and v2 at 0%); `route_extra` adds to
/// the route (e.g. a rollout), as YAML mapping entries.
fn instance(etcd: &Etcd, prefix: &str, b: &Backends, route_extra: &str) -> Instance {
    instance_with(etcd, prefix, b, route_extra, "")
}

/// As [`instance`], with more entries in `store.etcd` (e.g. `tls`, `auth`).
fn instance_with(
    etcd: &Etcd,
    prefix: &str,
    b: &Backends,
    route_extra: &str,
    store_extra: &str,
) -> Instance {
    let admin = free_addr();
    let body = format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {ops}}}
store:
  etcd: {{endpoints: ["{etcd}"], prefix: {prefix}, lease_ttl: {ttl}s, timeout: 1s{store_extra}}}
upstreams:
  v1: {{backends: ["{v1}"]}}
  v2: {{backends: ["{v2}"]}}
routes:
  - name: api
    match: {{path_prefix: /}}
    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}
{route_extra}"#,
        ops = sha256_hex(OPS),
        etcd = etcd.url(),
        ttl = LEASE_TTL.as_secs(),
        v1 = b.v1.addr,
        v2 = b.v2.addr,
    );
    let proxy = ProxyProcess::start(&body);
    wait_listening(admin);
    Instance { proxy, admin, body }
}

impl Instance {
    fn call(&self, method: &str, path: &str, body: Option<&str>, extra: &[(&str, &str)]) -> Reply {
        let url = format!("http://{}{}", self.admin, path);
        let auth = format!("Bearer {OPS}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        send_body(&client(), method, &url, &headers, body)
    }

    fn status(&self) -> Value {
        self.call("GET", "/v1/status", None, &[]).json()
    }

    fn revision(&self) -> u64 {
        self.status()["revision"].as_u64().unwrap_or(0)
    }

    fn connected(&self) -> bool {
        self.status()["fleet"]["connected"] == true
    }

    fn patch(&self, body: &str) -> Reply {
        self.call("PATCH", "/v1/routes/api", Some(body), &[])
    }

    /// The version a plain request through this instance gets.
    fn served(&self) -> String {
        get(&client(), &self.proxy.url("/x"), &[]).version()
    }

    fn audit(&self) -> Vec<Value> {
        self.call("GET", "/v1/audit", None, &[]).json()["entries"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn view(&self) -> Value {
        self.call("GET", "/v1/routes/api/rollout", None, &[]).json()
    }

    fn pid(&self) -> u32 {
        self.proxy.child.id()
    }
}

/// The status page's header line as headless Chromium shows it (tests/ui/check_ui.py --fleet).
fn status_page_meta(i: &Instance, prefix: &str) -> String {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/check_ui.py"))
        .args(["--admin", &format!("http://{}", i.admin), "--token", OPS])
        .args([
            "--ctl",
            env!("CARGO_BIN_EXE_switchyard"),
            "--screenshot",
            "/dev/null",
        ])
        .args(["--fleet", prefix])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    v["meta"].as_str().unwrap().to_string()
}

/// Waits until every instance is connected and serves the same revision; returns it.
fn converged(fleet: &[&Instance], within: Duration) -> u64 {
    let mut last = Vec::new();
    let ok = eventually(within, || {
        last = fleet
            .iter()
            .map(|i| (i.connected(), i.revision()))
            .collect::<Vec<_>>();
        last.iter().all(|(c, r)| *c && *r > 0 && *r == last[0].1)
    });
    assert!(
        ok,
        "the fleet did not converge: (connected, revision) {last:?}"
    );
    last[0].1
}

fn three(etcd: &Etcd, prefix: &str, b: &Backends, route_extra: &str) -> Vec<Instance> {
    let fleet: Vec<Instance> = (0..3)
        .map(|_| instance(etcd, prefix, b, route_extra))
        .collect();
    converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    fleet
}

/// Polls `f` every millisecond until it holds; returns how long that took (`None`: not within).
fn time_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

// What the fleet changes reaches requests on every path: the HTTP/1 engine and Pingora's pipeline,
// over plain TCP and TLS.
on_both_paths!(
    a_change_on_one_instance_is_served_by_the_others_within_a_second,
    with_etcd_down_every_instance_serves_refuses_changes_and_converges_when_it_returns,
);
on_tls_paths!(a_change_on_one_instance_is_served_by_the_others_within_a_second);

fn a_change_on_one_instance_is_served_by_the_others_within_a_second() {
    let etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/propagation", &b, "");
    // The first instance's file became the fleet's first revision; every one serves it.
    let first = fleet[0].audit();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0]["action"], "config.reload");
    assert!(fleet.iter().all(|i| i.served() == "v1"));

    let start = Instant::now();
    let r = fleet[0].patch(r#"{"split":{"v1":0,"v2":100},"reason":"all to v2"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let revision = r.json()["revision"].as_u64().unwrap();
    for other in &fleet[1..] {
        let took =
            time_until(Duration::from_secs(5), || other.served() == "v2").map(|_| start.elapsed());
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "instance {} served v2 after {took:?}",
            other.admin
        );
        assert_eq!(other.revision(), revision);
        let metrics = other.call("GET", "/metrics", None, &[]).body;
        assert!(
            metrics.contains(&format!("switchyard_config_revision {revision}")),
            "{metrics}"
        );
        assert!(metrics.contains("switchyard_fleet_connected 1"));
        assert!(
            metrics.contains(&format!("switchyard_fleet_revision {revision}")),
            "{metrics}"
        );
        // The change is in every instance's audit log, by the person who made it.
        assert!(eventually(Duration::from_secs(2), || other
            .audit()
            .last()
            .is_some_and(|e| e["revision"] == revision
                && e["actor"] == "ops"
                && e["reason"] == "all to v2")));
    }

    // `ctl status --fleet`: every instance, registered with its lease, and the revision it serves.
    assert!(eventually(Duration::from_secs(3), || {
        let v = fleet[1].call("GET", "/v1/fleet", None, &[]).json();
        v["instances"].as_array().is_some_and(|a| {
            a.len() == 3 && a.iter().all(|i| i["revision"].as_u64() == Some(revision))
        })
    }));
    let (code, out) = switchyard(&[
        "ctl",
        "--admin",
        &format!("http://{}", fleet[2].admin),
        "--token",
        OPS,
        "status",
        "--fleet",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/switchyard/propagation"), "{out}");
    assert!(out.contains("connected"), "{out}");
    for i in &fleet {
        assert!(out.contains(&i.admin.to_string()), "{out}");
    }
    // An instance that leaves (SIGTERM) deregisters at once.
    signal(fleet[2].pid(), "TERM");
    assert!(eventually(Duration::from_secs(5), || registered(&fleet[0]) == 2));
}

#[test]
fn two_operators_writing_at_once_on_two_instances_one_wins_the_other_gets_409() {
    let etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/cas", &b, "");
    for round in 0..5 {
        let base = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));
        let tag = format!("\"{base}\"");
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<Reply> = std::thread::scope(|s| {
            let calls: Vec<_> = [(0usize, 10), (1usize, 20)]
                .into_iter()
                .map(|(i, pct)| {
                    let (barrier, tag, inst) = (barrier.clone(), tag.clone(), &fleet[i]);
                    s.spawn(move || {
                        let body =
                            format!(r#"{{"split":{{"v2":"{pct}%"}},"reason":"round {round}"}}"#);
                        barrier.wait();
                        inst.call(
                            "PATCH",
                            "/v1/routes/api",
                            Some(&body),
                            &[("If-Match", &tag)],
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let mut codes: Vec<u16> = answers.iter().map(|a| a.status).collect();
        codes.sort_unstable();
        assert_eq!(
            codes,
            [200, 409],
            "{:?}",
            answers.iter().map(|a| &a.body).collect::<Vec<_>>()
        );
        let winner = answers.iter().find(|a| a.status == 200).unwrap().json();
        let loser = answers.iter().find(|a| a.status == 409).unwrap().json();
        assert_eq!(loser["code"], "conflict", "{loser:#}");
        let revision = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));
        assert_eq!(revision, base + 1, "exactly one change was made");
        assert_eq!(winner["revision"].as_u64(), Some(revision));
        // Every instance serves the winner's split.
        let share = winner["after"]["split"]["targets"][1]["share"].clone();
        for i in &fleet {
            let s = i.status();
            assert_eq!(
                s["routes"][0]["split"]["targets"][1]["share"], share,
                "{s:#}"
            );
        }
    }
}

fn with_etcd_down_every_instance_serves_refuses_changes_and_converges_when_it_returns() {
    let mut etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/outage", &b, "");
    let r = fleet[0].patch(r#"{"split":{"v1":0,"v2":100}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let before = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));

    // The status page names the fleet and the instance.
    let meta = status_page_meta(&fleet[2], "/switchyard/outage");
    assert!(
        meta.contains(&format!("fleet at revision {before}")),
        "{meta}"
    );

    etcd.stop();
    assert!(eventually(Duration::from_secs(10), || fleet
        .iter()
        .all(|i| !i.connected())));
    let meta = status_page_meta(&fleet[2], "/switchyard/outage");
    assert!(meta.contains("etcd unreachable since"), "{meta}");
    assert!(meta.contains("changes refused"), "{meta}");
    for i in &fleet {
        // Serving goes on, at the revision applied last.
        for _ in 0..20 {
            assert_eq!(i.served(), "v2");
        }
        assert_eq!(i.revision(), before);
        let refused = i.patch(r#"{"split":{"v1":100,"v2":0}}"#);
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.header("retry-after"), Some("2"));
        let p = refused.json();
        assert_eq!(p["code"], "store_unavailable");
        assert!(
            p["detail"].as_str().unwrap().contains("unreachable"),
            "{p:#}"
        );
        let metrics = i.call("GET", "/metrics", None, &[]).body;
        assert!(
            metrics.contains("switchyard_fleet_connected 0"),
            "{metrics}"
        );
    }
    assert_eq!(fleet[0].served(), "v2", "nothing changed");

    etcd.resume();
    // Whichever instance is back first takes the change; the others catch up.
    let mut answer = None;
    assert!(eventually(Duration::from_secs(20), || {
        let r = fleet[1].patch(r#"{"split":{"v1":100,"v2":0},"reason":"after the outage"}"#);
        let done = r.status == 200;
        answer = Some(r);
        done
    }));
    let after = answer.unwrap().json()["revision"].as_u64().unwrap();
    assert_eq!(after, before + 1);
    assert_eq!(
        converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(20)),
        after
    );
    for i in &fleet {
        assert_eq!(i.served(), "v1");
    }
}

#[test]
fn instances_that_missed_revisions_catch_up_even_past_a_compaction() {
    let etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/catchup", &b, "");
    for pct in [5, 10, 20] {
        let r = fleet[0].patch(&format!(r#"{{"split":{{"v2":"{pct}%"}}}}"#));
        assert_eq!(r.status, 200, "{}\n{:#?}", r.body, fleet[1].audit());
    }
    let head = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));

    // Started later, with nothing of its own: it serves the fleet's revision from its first request.
    let late = instance(&etcd, "/switchyard/catchup", &b, "");
    assert_eq!(late.revision(), head);
    let audit = late.audit();
    assert_eq!(
        audit
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );

    // One frozen past its lease while changes are made and etcd compacts its history: it comes
    // back, finds its lease gone and its watch too old, reads what it missed, and serves it.
    let frozen = &fleet[2];
    signal(frozen.pid(), "STOP");
    for body in [
        r#"{"split":{"v2":"50%"}}"#,
        r#"{"split":{"v1":0,"v2":100}}"#,
    ] {
        let r = fleet[0].patch(body);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let status = etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let etcd_revision: Value = serde_json::from_str(&status).unwrap();
    let rev = etcd_revision[0]["Status"]["header"]["revision"]
        .as_u64()
        .unwrap();
    etcd.ctl(&["compact", &rev.to_string()]);
    std::thread::sleep(LEASE_TTL + Duration::from_secs(1));
    signal(frozen.pid(), "CONT");
    let head = converged(
        &[&fleet[0], &fleet[1], frozen, &late],
        Duration::from_secs(20),
    );
    assert_eq!(frozen.served(), "v2");
    let audit = frozen.audit();
    assert_eq!(
        audit
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "every revision audited once, in order"
    );
    // Registered again under a new lease.
    assert!(eventually(Duration::from_secs(5), || registered(&fleet[0]) == 4));
}

#[test]
fn an_instance_started_with_etcd_down_serves_the_revision_it_copied_then_catches_up() {
    let mut etcd = Etcd::start();
    let b = backends();
    let mut fleet = three(&etcd, "/switchyard/cold", &b, "");
    let r = fleet[0].patch(r#"{"split":{"v1":0,"v2":100}}"#);
    assert_eq!(r.status, 200);
    let copied = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));

    etcd.stop();
    fleet[1].proxy.restart();
    wait_listening(fleet[1].admin);
    // What it copied to state_dir, not its config file (which says v1 100%).
    assert_eq!(fleet[1].revision(), copied);
    assert_eq!(fleet[1].served(), "v2");
    assert!(!fleet[1].connected());
    assert_eq!(fleet[1].patch(r#"{"split":{"v2":"1%"}}"#).status, 503);
    assert!(fleet[1]
        .proxy
        .log()
        .contains("etcd unreachable at start-up"));

    etcd.resume();
    let mut ok = false;
    assert!(eventually(Duration::from_secs(20), || {
        ok = fleet[0].patch(r#"{"split":{"v1":50,"v2":50}}"#).status == 200;
        ok
    }));
    let head = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(20));
    assert_eq!(head, copied + 1);
}

#[test]
fn a_changed_file_reloaded_on_one_instance_becomes_the_fleets_revision() {
    let etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/reload", &b, "");
    let base = fleet[0].revision();
    let conf = fleet[1].proxy.config_path();
    let conf = conf.to_str().unwrap();
    // Unchanged: nothing happens anywhere.
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(fleet[0].revision(), base);
    // Changed: a revision by actor file, served by every instance.
    fleet[1].proxy.rewrite_config(
        &fleet[1]
            .body
            .replace("{v1: 100, v2: 0}", "{v1: 0, v2: 100}"),
    );
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("now serving revision {}", base + 1)),
        "{out}"
    );
    assert_eq!(
        converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5)),
        base + 1
    );
    assert!(fleet.iter().all(|i| i.served() == "v2"));
    let last = fleet[2].audit().last().cloned().unwrap();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("file"), Some("config.reload"))
    );
    // The merge is against the fleet's live revision: a change made on another instance is kept
    // by an unrelated edit of this instance's file, and conflicts with an edit of the same setting.
    assert_eq!(fleet[0].patch(r#"{"split":{"v1":70,"v2":30}}"#).status, 200);
    let edited = fleet[1]
        .body
        .replace("{v1: 100, v2: 0}", "{v1: 0, v2: 100}");
    let extra =
        "  - name: other\n    match: {path_prefix: /other}\n    split: {targets: {v1: 100}}\n";
    fleet[1].proxy.rewrite_config(&format!("{edited}{extra}"));
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    let head = converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(5));
    let live = fleet[2].call("GET", "/v1/config", None, &[]).body;
    assert!(
        live.contains("name: other") && live.contains("v2: 30.0"),
        "{live}"
    );
    fleet[1].proxy.rewrite_config(&format!(
        "{}{extra}",
        fleet[1]
            .body
            .replace("{v1: 100, v2: 0}", "{v1: 50, v2: 50}")
    ));
    let (code, out) = switchyard(&["reload", "-c", conf]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[api].split.targets") && out.contains("route.patch"),
        "{out}"
    );
    assert_eq!(fleet[0].revision(), head);
    // A PUT may not change what is each instance's own.
    let config = fleet[0].call("GET", "/v1/config", None, &[]).body;
    let put = fleet[0].call(
        "PUT",
        "/v1/config",
        Some(&config.replace("threads: 1", "threads: 2")),
        &[],
    );
    assert_eq!(put.status, 400, "{}", put.body);
    assert!(
        put.body.contains("server is this instance's own"),
        "{}",
        put.body
    );
    let put = fleet[0].call("PUT", "/v1/config", Some(&config), &[]);
    assert_eq!(put.status, 200, "{}", put.body);
}

#[test]
fn upgrading_the_rollout_leader_loses_no_request_and_the_rollout_goes_on() {
    let etcd = Etcd::start();
    let b = backends();
    let slow = "    rollout: {canary: v2, steps: [20, 40], hold: 60s, interval: 300ms, \
                gates: {min_requests: 20, max_p99_ratio: 5}}\n";
    let fleet = three(&etcd, "/switchyard/upgrade", &b, slow);
    let all: Vec<&Instance> = fleet.iter().collect();
    let lead = wait_leader(&all);
    let old = &fleet[lead];
    assert!(eventually(Duration::from_secs(5), || old.view()["state"] == "running"));
    let traffic = load(vec![old.proxy.url("/x")], 2);
    std::thread::sleep(Duration::from_millis(500));
    let old_pid = old.pid();
    let mut new = old.proxy.spawn_upgrade();
    let sock = old.proxy.dir.join("upgrade.sock");
    assert!(eventually(Duration::from_secs(15), || sock.exists()));
    std::thread::sleep(Duration::from_millis(200));
    signal(old_pid, "QUIT");
    // The old process leaves the fleet at once (its lease revoked); the rollout is led on.
    assert!(eventually(Duration::from_secs(5), || {
        let v = all[(lead + 1) % 3]
            .call("GET", "/v1/fleet", None, &[])
            .json();
        v["instances"].as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter()
                    .all(|i| i["pid"].as_u64() != Some(u64::from(old_pid)))
                && a.iter()
                    .any(|i| i["leads"].as_array().is_some_and(|l| !l.is_empty()))
        })
    }));
    std::thread::sleep(Duration::from_millis(1000));
    let (sent, failed) = traffic.finish();
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0, "requests lost across the upgrade");
    let v = fleet[(lead + 1) % 3].view();
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["step"], 1, "{v:#}");
    let starts = fleet[(lead + 1) % 3]
        .audit()
        .iter()
        .filter(|e| e["action"] == "rollout.start")
        .count();
    assert_eq!(starts, 1, "the rollout was not started again");
    // The new process serves the fleet's revision and answers on the same admin address.
    // (The old one shares the listener while it drains, answering 503 to be retried.)
    assert!(eventually(Duration::from_secs(10), || {
        let r = old.call("GET", "/v1/status", None, &[]);
        r.status == 200 && r.json()["fleet"]["connected"] == true
    }));
    assert!(eventually(Duration::from_secs(10), || {
        let r = old.call("GET", "/v1/audit", None, &[]);
        r.status == 200
            && r.json()["entries"]
                == fleet[(lead + 1) % 3]
                    .call("GET", "/v1/audit", None, &[])
                    .json()["entries"]
    }));
    let _ = new.kill();
    let _ = new.wait();
}

/// A rollout of v2 over `steps` on every instance of the fleet.
const ROLLOUT: &str =
    "    rollout: {canary: v2, steps: [20, 40, 60, 100], hold: 4s, interval: 300ms, \
     gates: {min_requests: 20, max_p99_ratio: 5}}\n";

/// Sends requests through `targets` until dropped; counts what was sent and what failed.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn load(urls: Vec<String>, per_url: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for url in urls {
        for _ in 0..per_url {
            let (stop, sent, failed, url) =
                (stop.clone(), sent.clone(), failed.clone(), url.clone());
            threads.push(std::thread::spawn(move || {
                let agent = client();
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match agent.get(&url).call() {
                        Ok(r) if r.status() < 500 => {}
                        Ok(_) | Err(ureq::Error::Status(..)) | Err(ureq::Error::Transport(_)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            }));
        }
    }
    Load {
        stop,
        sent,
        failed,
        threads,
    }
}

impl Load {
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Waits (10 s at most) for an instance of `fleet` to lead the rollout of `api`; returns its index.
fn wait_leader(fleet: &[&Instance]) -> usize {
    let mut lead = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            lead = leader(fleet);
            lead.is_some()
        }),
        "no instance leads the rollout"
    );
    lead.unwrap()
}

/// How many instances `i` sees registered in the fleet.
fn registered(i: &Instance) -> usize {
    i.call("GET", "/v1/fleet", None, &[]).json()["instances"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The instance leading the rollout of `api`, by its admin address.
fn leader(fleet: &[&Instance]) -> Option<usize> {
    let v = fleet.iter().find_map(|i| {
        let r = i.call("GET", "/v1/fleet", None, &[]);
        (r.status == 200).then(|| r.json())
    })?;
    let id = v["instances"].as_array()?.iter().find(|i| {
        i["leads"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r == "api"))
    })?["admin"]
        .as_str()?
        .to_string();
    fleet.iter().position(|i| i.admin.to_string() == id)
}

#[test]
fn one_rollout_leader_in_the_fleet_and_a_killed_leader_is_taken_over_mid_step() {
    let etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/leader", &b, ROLLOUT);
    let all: Vec<&Instance> = fleet.iter().collect();
    let lead = wait_leader(&all);
    // Exactly one controller: one start, and the others show the leader's record.
    assert!(eventually(Duration::from_secs(5), || fleet
        .iter()
        .all(|i| i.view()["state"] == "running")));
    for (n, i) in fleet.iter().enumerate() {
        let v = i.view();
        assert_eq!(v["leader"]["admin"], fleet[lead].admin.to_string(), "{v:#}");
        let metrics = i.call("GET", "/metrics", None, &[]).body;
        let leads = if n == lead { 1 } else { 0 };
        assert!(
            metrics.contains(&format!(
                "switchyard_rollout_leader{{route=\"api\"}} {leads}"
            )),
            "{metrics}"
        );
    }
    // A control call on an instance that does not lead is handed to the leader.
    let other = (lead + 1) % 3;
    let paused = fleet[other].call(
        "POST",
        "/v1/routes/api/rollout/pause",
        Some(r#"{"reason":"look"}"#),
        &[],
    );
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["state"], "paused");
    assert_eq!(fleet[lead].view()["state"], "paused");
    let resumed = fleet[other].call("POST", "/v1/routes/api/rollout/resume", None, &[]);
    assert_eq!(resumed.status, 200, "{}", resumed.body);

    let urls: Vec<String> = fleet.iter().map(|i| i.proxy.url("/x")).collect();
    let traffic = load(urls, 2);
    // Mid-step 2: killed without a word.
    assert!(eventually(Duration::from_secs(30), || {
        let v = fleet[lead].view();
        v["step"] == 2 && v["held_seconds"].as_f64().is_some_and(|h| h >= 2.5)
    }));
    let step_at_kill = fleet[lead].view();
    let mut dead = fleet;
    let killed = dead.remove(lead);
    let mut killed = killed;
    let _ = killed.proxy.child.kill();
    let _ = killed.proxy.child.wait();
    let killed_at = Instant::now();
    let rest: Vec<&Instance> = dead.iter().collect();
    let next = wait_leader(&rest);
    let took_over = killed_at.elapsed();
    // The lease expires within its TTL of the last renewal; etcd sweeps expired leases every
    // 500 ms, and a loaded machine adds to that.
    assert!(
        took_over < LEASE_TTL + Duration::from_secs(4),
        "taken over after {took_over:?}"
    );
    let v = rest[next].view();
    assert_eq!(
        v["step"], step_at_kill["step"],
        "the same step continues: {v:#}"
    );
    // The record is saved each second (later on a loaded machine): little of the held time is
    // lost, and none of the step.
    assert!(
        v["held_seconds"].as_f64().unwrap() >= 1.0,
        "with the time it had held: {v:#}"
    );
    let done = eventually(Duration::from_secs(60), || {
        rest[0].view()["state"] == "succeeded"
    });
    // Requests to the killed instance fail; the measurement below counts those to the others.
    let (sent, _) = traffic.finish();
    assert!(done, "{:#}", rest[0].view());
    assert!(sent > 0);
    let steps: Vec<String> = rest[0]
        .audit()
        .iter()
        .filter(|e| e["actor"] == "rollout")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        steps,
        [
            "rollout.start",
            "rollout.step",
            "rollout.step",
            "rollout.step",
            "rollout.succeeded"
        ],
        "no step repeated or skipped"
    );
}

#[test]
fn the_leader_judges_on_the_whole_fleets_traffic() {
    let etcd = Etcd::start();
    let b = backends();
    let rollout = "    rollout: {canary: v2, steps: [50], hold: 60s, interval: 300ms, \
                   gates: {min_requests: 50, max_p99_ratio: 5}}\n";
    let fleet = three(&etcd, "/switchyard/judge", &b, rollout);
    let all: Vec<&Instance> = fleet.iter().collect();
    let lead = wait_leader(&all);
    b.v2.control.set_error_rate(0.2);
    // Traffic only through the two instances that do not lead.
    let urls: Vec<String> = fleet
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != lead)
        .map(|(_, i)| i.proxy.url("/x"))
        .collect();
    let traffic = load(urls, 2);
    let failed = eventually(Duration::from_secs(30), || {
        fleet[lead].view()["state"] == "failed"
    });
    traffic.finish();
    let v = fleet[lead].view();
    assert!(failed, "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("canary 5xx"), "{reason}");
    // The leader itself served none of it.
    let stats = fleet[lead]
        .call("GET", "/v1/stats?route=api", None, &[])
        .json();
    let own: u64 = stats["routes"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["since_start"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(own, 0, "{stats:#}");
    // Every instance serves the rollback.
    let revision = converged(&all, Duration::from_secs(5));
    assert!(revision > 2);
    for i in &fleet {
        assert_eq!(i.status()["routes"][0]["split"]["targets"][1]["share"], 0.0);
    }
}

#[test]
fn a_fleet_reaches_etcd_over_tls_with_a_user_and_password() {
    let etcd = Etcd::start_as(true);
    // etcd's own authentication: a user allowed only the fleet's prefix.
    etcd.ctl(&["user", "add", "root:root-secret"]);
    etcd.ctl(&["user", "add", "switchyard:sy-secret"]);
    etcd.ctl(&["role", "add", "fleet"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "fleet",
        "--prefix=true",
        "readwrite",
        "/switchyard/secure/",
    ]);
    etcd.ctl(&["user", "grant-role", "switchyard", "fleet"]);
    etcd.ctl(&["auth", "enable"]);
    let dir = std::env::temp_dir().join(format!("switchyard-etcd-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("password");
    let bad = dir.join("wrong-password");
    std::fs::write(&good, "sy-secret\n").unwrap();
    std::fs::write(&bad, "guess\n").unwrap();
    let store = |password: &std::path::Path| {
        format!(
            ", tls: {{ca: {}}}, auth: {{user: switchyard, password_file: {}}}",
            test_pki().0.display(),
            password.display()
        )
    };
    let b = backends();
    let a = instance_with(&etcd, "/switchyard/secure", &b, "", &store(&good));
    let c = instance_with(&etcd, "/switchyard/secure", &b, "", &store(&good));
    converged(&[&a, &c], Duration::from_secs(15));
    let r = a.patch(r#"{"split":{"v1":0,"v2":100}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(eventually(Duration::from_secs(2), || c.served() == "v2"));
    // A wrong password never connects, and says why.
    let locked_out = instance_with(&etcd, "/switchyard/secure", &b, "", &store(&bad));
    std::thread::sleep(Duration::from_secs(2));
    let s = locked_out.status();
    assert_eq!(s["fleet"]["connected"], false, "{s:#}");
    assert!(
        s["fleet"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("authentication failed")),
        "{s:#}"
    );
    assert_eq!(locked_out.patch(r#"{"split":{"v2":"1%"}}"#).status, 503);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Propagation over 100 changes, and requests lost across an etcd restart and a rollout leader's
/// death under load. Prints the figures (perf/RESULTS-fleet.md).
#[test]
#[ignore]
fn measure_propagation_and_requests_lost() {
    let mut etcd = Etcd::start();
    let b = backends();
    let fleet = three(&etcd, "/switchyard/measure", &b, "");
    let mut times = Vec::new();
    let mut answered = Vec::new();
    for n in 0..100u32 {
        let body = format!(r#"{{"split":{{"v2":"{}%"}}}}"#, n % 50);
        let start = Instant::now();
        let r = fleet[0].patch(&body);
        answered.push(start.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
        let revision = r.json()["revision"].as_u64().unwrap();
        for other in &fleet[1..] {
            time_until(Duration::from_secs(5), || other.revision() >= revision)
                .expect("propagated");
        }
        times.push(start.elapsed());
    }
    times.sort();
    answered.sort();
    let q = |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "propagation over {} changes (PATCH sent on A until B and C both serve it): p50 {:?}, p99 {:?}, max {:?}; the PATCH answered on A: p50 {:?}, p99 {:?}",
        times.len(),
        q(&times, 0.5),
        q(&times, 0.99),
        times.last().unwrap(),
        q(&answered, 0.5),
        q(&answered, 0.99),
    );

    // etcd killed and restarted under load on all three.
    let urls: Vec<String> = fleet.iter().map(|i| i.proxy.url("/x")).collect();
    let traffic = load(urls, 2);
    std::thread::sleep(Duration::from_secs(2));
    etcd.stop();
    std::thread::sleep(Duration::from_secs(3));
    etcd.resume();
    converged(&fleet.iter().collect::<Vec<_>>(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed) = traffic.finish();
    println!(
        "etcd killed for 3 s and restarted, load on 3 instances: {sent} requests, {failed} failed"
    );

    // The rollout leader killed under load sent to the two others.
    drop(fleet);
    let fleet = three(&etcd, "/switchyard/measure-leader", &b, ROLLOUT);
    let all: Vec<&Instance> = fleet.iter().collect();
    let lead = wait_leader(&all);
    let urls: Vec<String> = fleet
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != lead)
        .map(|(_, i)| i.proxy.url("/x"))
        .collect();
    let traffic = load(urls, 2);
    std::thread::sleep(Duration::from_secs(2));
    let mut fleet = fleet;
    let mut killed = fleet.remove(lead);
    let _ = killed.proxy.child.kill();
    let _ = killed.proxy.child.wait();
    let rest: Vec<&Instance> = fleet.iter().collect();
    let killed_wall = std::time::SystemTime::now();
    let took = time_until(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(20));
        leader(&rest).is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed) = traffic.finish();
    // When the new leader took over, by its own log line.
    let led_at = rest.iter().find_map(|i| {
        let log = i.proxy.log();
        let line = log.lines().find(|l| l.contains("now leads route api"))?;
        let stamp = line.trim_start_matches('[').split_whitespace().next()?;
        humantime::parse_rfc3339(stamp).ok()
    });
    println!(
        "rollout leader killed (SIGKILL), load on the 2 others: {sent} requests, {failed} failed; new leader after {:?} by its log, seen in /v1/fleet after {:?} (lease TTL {LEASE_TTL:?})",
        led_at.and_then(|t| t.duration_since(killed_wall).ok()),
        took
    );
}
