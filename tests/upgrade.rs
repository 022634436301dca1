//! Pingora's graceful upgrade through our CLI: a second instance started with `-u` takes the listening
//! socket over, the old one gets SIGQUIT, and not one request of a steady stream is lost; then
//! `switchyard upgrade` under load, a failing new binary, SIGQUIT without a successor, and SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[allow(unused_imports)]
use common::on_both_paths;

#[test]
fn upgrade_hands_over_the_socket_without_losing_a_request() {
    let v1 = backend("v1");
    let mut old = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    ));
    let url = old.url("/api");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    // A new connection per request, so every request exercises the listening socket.
    let load = load(url, false, stop.clone(), ok.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut new = old.spawn_upgrade();
    // The new instance waits on the upgrade socket; the old one sends its listeners on SIGQUIT
    // (and ignores it while nobody waits there).
    let sock = old.dir.join("upgrade.sock");
    assert!(eventually(Duration::from_secs(15), || sock.exists()));
    std::thread::sleep(Duration::from_millis(200));
    signal(old.child.id(), "QUIT");
    let old_exited = eventually(Duration::from_secs(30), || {
        matches!(old.child.try_wait(), Ok(Some(_)))
    });
    let served_before = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    let _ = new.kill();
    let _ = new.wait();

    assert!(old_exited, "the old instance did not exit after SIGQUIT");
    assert!(matches!(new.try_wait(), Ok(Some(_))));
    assert!(
        errors.is_empty(),
        "requests lost during the upgrade: {errors:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "the new instance served nothing after the old one left"
    );
    assert!(
        served_before > 100,
        "too little traffic to prove anything: {served_before}"
    );
}

on_both_paths!(
    switchyard_upgrade_under_load_loses_nothing_three_times_in_a_row,
    a_new_binary_that_fails_leaves_the_old_one_serving,
    sigquit_without_a_successor_keeps_serving,
);

/// A client sending GET `url` until `stop` (at most 60 s), on kept-alive connections or a new one per
/// request; counts successes in `ok` and returns what failed.
fn load(
    url: String,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections(if keep_alive { 4 } else { 0 })
            .timeout(Duration::from_secs(5))
            .build();
        let mut errors = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            match agent.get(&url).call() {
                Ok(r) if r.status() == 200 => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                other => errors.push(format!("{:?}", other.map(|r| r.status()))),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        errors
    })
}

/// The revisions of a `/v1/audit` answer's entries, oldest first.
fn audited_revisions(audit: &serde_json::Value) -> Vec<u64> {
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect()
}

/// Three upgrades in a row with `switchyard upgrade`, under keep-alive clients and a connection per
/// request at once: not one request fails, and each old process is gone within its drain (2 s here).
fn switchyard_upgrade_under_load_loses_nothing_three_times_in_a_row() {
    let (v1, slow, shadow) = (backend("v1"), backend("slow"), backend("shadow"));
    slow.control.set_delay(Duration::from_millis(300));
    let mut proxy = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\n  slow: {{backends: [\"{}\"]}}\n  shadow: {{backends: [\"{}\"]}}\nroutes:\n  - name: slow\n    match: {{path_prefix: /slow}}\n    split: {{targets: {{slow: 1}}}}\n  - name: mirrored\n    match: {{path_prefix: /mirrored}}\n    split: {{targets: {{v1: 1}}}}\n    mirror: {{to: shadow, percent: 100, compare: {{}}}}\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr, slow.addr, shadow.addr
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    // Keep-alive and a connection per request on a fast route, slow (300 ms) requests in flight, and
    // keep-alive clients on a mirrored route, all at once.
    let loads: Vec<_> = [
        ("/api", true),
        ("/api", true),
        ("/api", false),
        ("/api", false),
        ("/slow", true),
        ("/slow", true),
        ("/mirrored", true),
    ]
    .into_iter()
    .map(|(path, keep_alive)| load(proxy.url(path), keep_alive, stop.clone(), ok.clone()))
    .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![pid_in(&proxy)];
    for round in 0..3 {
        let old = *pids.last().unwrap();
        let before = ok.load(Ordering::Relaxed);
        let (code, report) = upgrade_command(&proxy, &[]);
        assert_eq!(code, 0, "round {round}: {report}\n{}", proxy.log());
        let new = pid_in(&proxy);
        assert_ne!(new, old);
        assert!(
            report.contains(&format!("pid {old} -> pid {new}")),
            "{report}"
        );
        // The old process drains and exits within its grace period (2 s) and shutdown timeout.
        let gone = eventually(Duration::from_secs(8), || !running(old));
        assert!(gone, "round {round}: pid {old} still running");
        assert!(
            ok.load(Ordering::Relaxed) > before,
            "round {round}: no traffic"
        );
        pids.push(new);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = loads.into_iter().flat_map(|l| l.join().unwrap()).collect();
    signal(*pids.last().unwrap(), "INT");
    let _ = proxy.child.wait();
    assert!(errors.is_empty(), "requests lost: {errors:?}");
    assert!(ok.load(Ordering::Relaxed) > 300);
    assert!(slow.control.requests() > 10 && shadow.control.requests() > 10);
}

/// A new binary that fails before it is ready: nothing is signalled, the command exits 3 and says
/// why, and the old process serves on.
fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let v1 = backend("v1");
    let proxy = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    ));
    let old = pid_in(&proxy);
    let (code, _) = upgrade_command(&proxy, &["--binary", "/bin/false"]);
    assert_eq!(code, 3);
    assert!(proxy.log().contains("keeps serving"), "{}", proxy.log());
    assert_eq!(pid_in(&proxy), old);
    assert_eq!(get(&client(), &proxy.url("/api"), &[]).status, 200);
}

/// SIGQUIT with no new process waiting for the sockets: the instance keeps its listeners and serves.
fn sigquit_without_a_successor_keeps_serving() {
    let v1 = backend("v1");
    let mut proxy = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    ));
    signal(proxy.child.id(), "QUIT");
    std::thread::sleep(Duration::from_millis(700));
    assert!(proxy.child.try_wait().unwrap().is_none(), "it stopped");
    for _ in 0..5 {
        assert_eq!(get(&client(), &proxy.url("/api"), &[]).status, 200);
    }
    assert!(
        proxy.log().contains("no new process waits"),
        "{}",
        proxy.log()
    );
}

/// SIGINT stops the process within a second, every time (50 tries, some of them under traffic).
#[test]
fn sigint_stops_within_a_second_every_time() {
    let v1 = backend("v1");
    let body = format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    );
    for i in 0..50 {
        let mut proxy = ProxyProcess::start(&body);
        if i % 2 == 0 {
            assert_eq!(get(&client(), &proxy.url("/api"), &[]).status, 200);
        }
        signal(proxy.child.id(), "INT");
        let start = std::time::Instant::now();
        let stopped = eventually(Duration::from_secs(1), || {
            matches!(proxy.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            stopped,
            "try {i}: still running {:?} after SIGINT",
            start.elapsed()
        );
    }
}

/// An instance with an admin API (token `ops`) and a route `api` split over v1 and v2 (baseline v1),
/// its admin address, and the backends (kept alive for the test).
fn with_admin(ops: &str) -> (ProxyProcess, std::net::SocketAddr, [RunningBackend; 2]) {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let admin = free_addr();
    let proxy = ProxyProcess::start(&format!(
        "admin:\n  listen: \"{admin}\"\n  tokens: {{ops: {}}}\nupstreams:\n  v1: {{backends: [\"{}\"]}}\n  v2: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n",
        sha256_hex(ops),
        v1.addr,
        v2.addr
    ));
    (proxy, admin, [v1, v2])
}

/// An admin API connection left idle before an upgrade is closed by the old process as the hand-over
/// begins (an end of stream, not an answer), so its client's next request goes to the new process,
/// which answers it; nothing is answered 503 after the upgrade is done.
#[test]
fn an_idle_admin_connection_is_closed_at_a_hand_over_not_answered_503_after_it() {
    use std::io::{Read, Write};
    const OPS: &str = "ops-token-for-idle";
    let (proxy, admin, backends) = with_admin(OPS);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let old = pid_in(&proxy);
    // A slow request keeps the old process draining (2 s) after the hand-over, so that the idle
    // connection's end below is its front door's doing, not the process's exit.
    backends[0].control.set_delay(Duration::from_millis(1500));
    let slow = {
        let url = proxy.url("/slow");
        std::thread::spawn(move || ureq::get(&url).call().map(|r| r.status()).ok())
    };
    let request =
        format!("GET /v1/status HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {OPS}\r\n\r\n");
    let mut idle = std::net::TcpStream::connect(admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(request.as_bytes()).unwrap();
    let (first, _) = read_message(&mut idle, &mut Vec::new()).expect("an answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    std::thread::sleep(Duration::from_millis(100));
    let (code, report) = upgrade_command(&proxy, &[]);
    assert_eq!(code, 0, "{report}\n{}", proxy.log());
    let mut rest = Vec::new();
    let read = idle.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the idle connection ends without an answer: {read:?} {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(running(old), "closed while the old process still drains");
    assert_eq!(
        slow.join().unwrap().unwrap(),
        200,
        "the slow request finished"
    );
    // The client's next connection reaches the new process.
    let mut next = std::net::TcpStream::connect(admin).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    next.write_all(request.as_bytes()).unwrap();
    let (answer, _) = read_message(&mut next, &mut Vec::new()).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    signal(pid_in(&proxy), "INT");
}

/// Admin changes at 10 per second across two upgrades: every acknowledged change has a revision of
/// its own, in order, each with one audit line, and the last one acknowledged is what serves after.
/// During a hand-over the old process answers 503 with Retry-After, retried here as `ctl` does.
#[test]
fn admin_changes_across_upgrades_keep_unique_revisions_and_lose_nothing() {
    const OPS: &str = "ops-token-for-upgrades";
    let (proxy, admin, _backends) = with_admin(OPS);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .max_idle_connections(0)
                .timeout(Duration::from_secs(5))
                .build();
            let mut acknowledged: Vec<(u64, u64)> = Vec::new();
            let mut retried = 0;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k = k % 100 + 1;
                let body = format!(
                    r#"{{"split": {{"v1": {}, "v2": {k}}}, "reason": "step {k}"}}"#,
                    100 - k
                );
                loop {
                    let r = agent
                        .request("PATCH", &format!("http://{admin}/v1/routes/api"))
                        .set("Authorization", &format!("Bearer {OPS}"))
                        .send_string(&body);
                    match r {
                        Ok(r) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&r.into_string().unwrap()).unwrap();
                            acknowledged.push((v["revision"].as_u64().unwrap(), k));
                            break;
                        }
                        Err(ureq::Error::Status(503, r)) => {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            retried += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        // Not acknowledged: the change may or may not have been made; try again.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (acknowledged, retried)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..2 {
        let (code, report) = upgrade_command(&proxy, &[]);
        assert_eq!(code, 0, "round {round}: {report}\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, _retried) = writer.join().unwrap();
    // Reads are retried on 503 too: the old process answers nothing but that once it hands over.
    let ops = |path: &str| -> serde_json::Value {
        for _ in 0..100 {
            match ureq::get(&format!("http://{admin}{path}"))
                .set("Authorization", &format!("Bearer {OPS}"))
                .call()
            {
                Ok(r) => return serde_json::from_str(&r.into_string().unwrap()).unwrap(),
                Err(ureq::Error::Status(503, _)) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("{path}: {e}"),
            }
        }
        panic!("{path}: still 503 after 10 s");
    };
    assert!(acknowledged.len() > 10, "{acknowledged:?}");
    let revisions: Vec<u64> = acknowledged.iter().map(|a| a.0).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions not unique and increasing: {revisions:?}"
    );
    let (last_revision, last_k) = *acknowledged.last().unwrap();
    let status = ops("/v1/status");
    assert_eq!(status["revision"].as_u64(), Some(last_revision), "{status}");
    let route = ops("/v1/routes/api");
    assert!(
        route.to_string().contains(&format!("\"weight\":{last_k}")),
        "the last acknowledged change (v2 = {last_k}) is not what serves: {route}"
    );
    let audited = audited_revisions(&ops("/v1/audit"));
    for r in &revisions {
        assert_eq!(
            audited.iter().filter(|a| *a == r).count(),
            1,
            "revision {r} is not audited exactly once"
        );
    }
    let pid: u32 = std::fs::read_to_string(proxy.dir.join("switchyard.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(pid, "INT");
}

/// kill -9 in the middle of bursts of admin changes, 20 times: every restart serves a consistent
/// state. The revision it serves is the last one with an audit line, no audit line is past it, every
/// change acknowledged before the kill is there, and what serves is that revision's config.
#[test]
fn kill_9_during_admin_changes_always_restarts_consistent() {
    const OPS: &str = "ops-token-for-crashes";
    let (mut proxy, admin, _backends) = with_admin(OPS);
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout(Duration::from_secs(5))
        .build();
    let call = |method: &str, path: &str, body: Option<String>| -> Option<serde_json::Value> {
        let req = agent
            .request(method, &format!("http://{admin}{path}"))
            .set("Authorization", &format!("Bearer {OPS}"));
        let r = match body {
            Some(b) => req.send_string(&b),
            None => req.call(),
        };
        r.ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
    };
    let mut acknowledged_max = 0;
    for round in 0..20u64 {
        assert!(eventually(Duration::from_secs(10), || {
            call("GET", "/healthz", None).is_some()
        }));
        // A burst of changes from another thread; the kill lands somewhere inside it.
        let stop = Arc::new(AtomicBool::new(false));
        let burst = {
            let stop = stop.clone();
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut acked = 0u64;
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k = k % 100 + 1;
                    let body = format!(r#"{{"split": {{"v1": {}, "v2": {k}}}}}"#, 100 - k);
                    let r = agent
                        .request("PATCH", &format!("http://{admin}/v1/routes/api"))
                        .set("Authorization", &format!("Bearer {OPS}"))
                        .send_string(&body);
                    match r.ok().and_then(|r| r.into_string().ok()) {
                        Some(t) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                            acked = acked.max(v["revision"].as_u64().unwrap());
                        }
                        None => break,
                    }
                }
                acked
            })
        };
        std::thread::sleep(Duration::from_millis(50 + (round * 37) % 250));
        let _ = proxy.child.kill();
        let _ = proxy.child.wait();
        stop.store(true, Ordering::Relaxed);
        acknowledged_max = acknowledged_max.max(burst.join().unwrap());
        proxy.restart();
        assert!(eventually(Duration::from_secs(10), || {
            call("GET", "/healthz", None).is_some()
        }));
        let status = call("GET", "/v1/status", None).unwrap();
        let live = status["revision"].as_u64().unwrap();
        assert!(
            live >= acknowledged_max,
            "round {round}: serving revision {live}, but {acknowledged_max} was acknowledged"
        );
        let audited = audited_revisions(&call("GET", "/v1/audit", None).unwrap());
        assert_eq!(
            audited.iter().max().copied(),
            Some(live),
            "round {round}: live revision {live} and the audit log disagree: {audited:?}"
        );
        let mut unique = audited.clone();
        unique.dedup();
        assert_eq!(unique, audited, "round {round}: an audit line twice");
        let served = std::fs::read_to_string(proxy.dir.join("state/effective.yaml")).unwrap();
        let file =
            std::fs::read_to_string(proxy.dir.join(format!("state/revisions/{live:010}.yaml")))
                .unwrap();
        assert_eq!(served, file, "round {round}");
        let leftovers = std::fs::read_dir(proxy.dir.join("state"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count();
        assert_eq!(leftovers, 0, "round {round}");
    }
}

/// Unmounts (lazily) when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A state directory on a full file system (a 1 MiB tmpfs, filled): a change is refused with 507
/// naming the full disk, nothing of it is written (no torn audit line, no temporary file, the same
/// revision serving), a restart serves the last good revision, and once there is room again changes
/// go through. Needs permission to mount a tmpfs (root); elsewhere it says so and checks nothing.
#[test]
fn a_full_state_disk_refuses_changes_cleanly_and_restarts_to_the_last_good_revision() {
    const OPS: &str = "ops-token-for-full-disks";
    let (mut proxy, admin, _backends) = with_admin(OPS);
    let patch = |k: u32| -> (u16, String) {
        let r = ureq::request("PATCH", &format!("http://{admin}/v1/routes/api"))
            .set("Authorization", &format!("Bearer {OPS}"))
            .send_string(&format!(r#"{{"split": {{"v1": {}, "v2": {k}}}}}"#, 100 - k));
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let revision = || -> u64 {
        let t = ureq::get(&format!("http://{admin}/v1/status"))
            .set("Authorization", &format!("Bearer {OPS}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&t).unwrap()["revision"]
            .as_u64()
            .unwrap()
    };
    let ready = || {
        assert!(eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(admin).is_ok()
        }))
    };
    ready();
    assert_eq!(patch(5).0, 200);

    // Move the state directory onto a small tmpfs.
    let _ = proxy.child.kill();
    let _ = proxy.child.wait();
    let state = proxy.dir.join("state");
    let saved = proxy.dir.join("state.saved");
    std::fs::rename(&state, &saved).unwrap();
    std::fs::create_dir(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): the full-disk test checks nothing");
        return;
    }
    let _mount = Mounted(state.clone());
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&state)
        .status()
        .unwrap();
    assert!(copied.success());
    proxy.restart();
    ready();
    let good = revision();
    assert_eq!(patch(6).0, 200);
    let good = good.max(revision());

    // Fill it up.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    for k in 7..10 {
        let (code, body) = patch(k);
        assert_eq!(code, 507, "{body}");
        assert!(body.contains("no space left"), "{body}");
        assert_eq!(revision(), good);
    }
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    assert!(audit.ends_with('\n'));
    for line in audit.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("a torn audit line");
    }
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .chain(std::fs::read_dir(state.join("revisions")).unwrap())
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    assert!(
        !names.contains(&format!("{:010}.yaml", good + 1)),
        "{names:?}"
    );

    // A restart on the full disk serves the last good revision.
    proxy.restart();
    ready();
    assert_eq!(revision(), good);

    // Room again: changes go through.
    std::fs::remove_file(&filler).unwrap();
    let (code, body) = patch(10);
    assert_eq!(code, 200, "{body}");
    assert_eq!(revision(), good + 1);
    let _ = proxy.child.kill();
    let _ = proxy.child.wait();
}
