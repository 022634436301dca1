//! How fast the rollout controller catches a bad canary at 10% of traffic, and how often it rolls back
//! a good one — measured on the real binary with real upstreams and real HTTP on loopback.
//!
//! Each scenario runs several times on a fresh instance. Baseline v1 answers 1% 500s after 10 ms; the
//! route's rollout puts v2 at 10%, checked every 250 ms with `min_requests: 100`, `max_p99_ratio: 1.25`
//! and the default increase (0.5 points) and confidence (0.99):
//!
//! - `errors +2` / `errors +5`: v2 answers 3% / 6% 500s. Reported: canary requests (and all requests)
//!   served until the rollout failed, median over the runs.
//! - `latency 1.5x`: v2 answers after 15 ms. `tail`: 3% of v2's answers come 500 ms later.
//! - `equal`: v2 is exactly like v1, walked through 10% → 50% with a 3 s hold each (about 25 checks per
//!   rollout). Reported: how many rollouts ended other than `succeeded` (false rollbacks).
//!
//! Run: `cargo build --release && cargo run --release --example rollout_detection -- [RUNS] [EQUAL_RUNS]`
//! (defaults 9 and 40; loopback only; each run stops by itself within 60 s.)

use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::demo::backend::RunningBackend;

const CLIENTS: usize = 32;
const BASE_DELAY: Duration = Duration::from_millis(10);
/// The admin token `test`, and its SHA-256 as the config lists it.
const TOKEN: &str = "test";
const TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
}

struct Instance {
    child: Child,
    admin: SocketAddr,
    listen: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(binary: &str, v1: SocketAddr, v2: SocketAddr, rollout: &str, n: usize) -> Instance {
    let (listen, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("switchyard-detect-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        "server:\n  listen: [\"{listen}\"]\n  threads: 1\n  pid_file: {d}/pid\n  upgrade_sock: {d}/upgrade.sock\n  state_dir: {d}/state\n  access_log: off\nadmin:\n  listen: \"{admin}\"\n  tokens: {{ops: {token}}}\nupstreams:\n  v1: {{backends: [\"{v1}\"]}}\n  v2: {{backends: [\"{v2}\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n    rollout: {{canary: v2, {rollout}, interval: 250ms, gates: {{min_requests: 100, max_p99_ratio: 1.25}}}}\n",
        d = dir.display(),
        token = TOKEN_SHA256
    );
    let path = dir.join("switchyard.yaml");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(binary)
        .args(["run", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    let instance = Instance {
        child,
        admin,
        listen,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if get(&instance, "/v1/routes/api/rollout").is_some_and(|v| v["state"] == "running") {
            return instance;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("switchyard did not start its rollout");
}

fn get(i: &Instance, path: &str) -> Option<Value> {
    ureq::get(&format!("http://{}{path}", i.admin))
        .timeout(Duration::from_secs(2))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .ok()?
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Requests of `target` on route api since start, from `/v1/stats`.
fn served(i: &Instance, target: &str) -> u64 {
    get(i, "/v1/stats?route=api")
        .and_then(|v| {
            v["routes"][0]["targets"]
                .as_array()?
                .iter()
                .find(|t| t["target"] == target)
                .and_then(|t| t["since_start"]["requests"].as_u64())
        })
        .unwrap_or(0)
}

/// Load on the instance until it is dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(i: &Instance) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let url = format!("http://{}/x", i.listen);
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(5))
                        .build();
                    while !stop.load(Ordering::Relaxed) {
                        let _ = agent.get(&url).call().map(|r| r.into_string());
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs one rollout until it ends or `limit` passes; returns its final state and the requests v2 and
/// v1 served.
fn run(
    binary: &str,
    n: usize,
    rollout: &str,
    v2: &Canary,
    limit: Duration,
) -> (String, String, u64, u64) {
    let canary = v2;
    let (v1, v2) = (
        RunningBackend::start("v1", "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}")),
        RunningBackend::start("v2", "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}")),
    );
    v1.control.set_error_rate(0.01);
    v1.control.set_delay(BASE_DELAY);
    v2.control.set_error_rate(canary.errors);
    v2.control.set_delay(canary.delay);
    v2.control.set_tail(canary.tail, Duration::from_millis(500));
    let instance = start(binary, v1.addr, v2.addr, rollout, n);
    let load = Load::start(&instance);
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(v) = get(&instance, "/v1/routes/api/rollout") {
            last = v;
            if matches!(last["state"].as_str(), Some("failed" | "succeeded")) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(load);
    // A rollout still running says why through its last check.
    let reason = match last["reason"].as_str() {
        Some(r) => r.to_string(),
        None => last["history"]
            .as_array()
            .and_then(|h| h.last())
            .and_then(|e| e["reason"].as_str())
            .unwrap_or("")
            .to_string(),
    };
    (
        last["state"].as_str().unwrap_or("?").to_string(),
        reason,
        served(&instance, "v2"),
        served(&instance, "v1"),
    )
}

/// How v2 differs from v1.
struct Canary {
    errors: f64,
    delay: Duration,
    /// Share of answers 500 ms later.
    tail: f64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(9);
    let equal_runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let binary = std::env::var("SWITCHYARD").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/switchyard").into()
    });
    let mut n = 0;
    let same = |errors, delay, tail| Canary {
        errors,
        delay,
        tail,
    };
    for (name, canary) in [
        ("errors +2 points (3% vs 1%)", same(0.03, BASE_DELAY, 0.0)),
        ("errors +5 points (6% vs 1%)", same(0.06, BASE_DELAY, 0.0)),
        ("latency 1.5x", same(0.01, BASE_DELAY * 3 / 2, 0.0)),
        ("tail: 3% of answers +500 ms", same(0.01, BASE_DELAY, 0.03)),
    ] {
        let (mut canary_n, mut total, mut caught) = (Vec::new(), Vec::new(), 0);
        for _ in 0..runs {
            n += 1;
            let (state, reason, v2, v1) = run(
                &binary,
                n,
                "steps: [10], hold: 10m",
                &canary,
                Duration::from_secs(60),
            );
            println!(
                "  {name}: {state} after {v2} canary / {} requests: {reason}",
                v1 + v2
            );
            if state == "failed" {
                caught += 1;
                canary_n.push(v2);
                total.push(v1 + v2);
            }
        }
        println!(
            "{name}: caught in {caught} of {runs} runs; median {} canary requests ({} requests in all) at 10%",
            median(canary_n),
            median(total)
        );
    }
    let mut false_rollbacks = 0;
    for _ in 0..equal_runs {
        n += 1;
        let (state, reason, v2, v1) = run(
            &binary,
            n,
            "steps: [10, 50], hold: 3s",
            &same(0.01, BASE_DELAY, 0.0),
            Duration::from_secs(60),
        );
        println!(
            "  equal canary: {state} ({v2} canary / {} requests) {reason}",
            v1 + v2
        );
        if state != "succeeded" {
            false_rollbacks += 1;
        }
    }
    println!("equal canary: {false_rollbacks} of {equal_runs} rollouts rolled back");
}
