//! A real instance with a rollout on route `api` (split v1 100 / v2 0, baseline v1), and the calls
//! the rollout tests make of it.

use super::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const OPS: &str = "ops-token";

pub struct Rollout {
    pub proxy: ProxyProcess,
    pub admin: SocketAddr,
    pub v1: RunningBackend,
    pub v2: RunningBackend,
    pub hooks: RunningBackend,
}

/// An instance whose route `api` (split v1 100 / v2 0, baseline v1) has `rollout` (YAML flow
/// mapping body, `{hooks}` replaced by the hook receiver's address).
pub fn start(rollout: &str) -> Rollout {
    start_with(rollout, "")
}

/// Like [`start`], with more top-level config before `upstreams` (e.g. `clients`).
pub fn start_with(rollout: &str, preamble: &str) -> Rollout {
    let (v1, v2, hooks) = (backend("v1"), backend("v2"), backend("hooks"));
    let admin = free_addr();
    let rollout = rollout.replace("{hooks}", &hooks.addr.to_string());
    // A canary's first requests open its upstream connections, which on a busy test machine makes
    // its p99 visibly (and significantly) slower than a warm baseline's: tests that are not about
    // latency give that gate room unless they set it.
    let rollout = if rollout.contains("max_p99_ratio") {
        rollout
    } else if rollout.contains("gates: {") {
        rollout.replace("gates: {", "gates: {max_p99_ratio: 5, ")
    } else {
        format!("{rollout}, gates: {{max_p99_ratio: 5}}")
    };
    let body = format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {ops}}}
{preamble}upstreams:
  v1: {{backends: ["{}"]}}
  v2: {{backends: ["{}"]}}
routes:
  - name: api
    match: {{path_prefix: /}}
    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}
    rollout: {{canary: v2, {rollout}}}
"#,
        v1.addr,
        v2.addr,
        ops = sha256_hex(OPS),
    );
    let proxy = ProxyProcess::start(&body);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok()
    }));
    let r = Rollout {
        proxy,
        admin,
        v1,
        v2,
        hooks,
    };
    // The controller starts the rollout within its first turn.
    assert!(eventually(Duration::from_secs(5), || r.view()["state"] != "pending"));
    r
}

impl Rollout {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let url = format!("http://{}{}", self.admin, path);
        let auth = format!("Bearer {OPS}");
        send_body(
            &client(),
            method,
            &url,
            &[("Authorization", auth.as_str())],
            body,
        )
    }
    pub fn view(&self) -> Value {
        self.call("GET", "/v1/routes/api/rollout", None).json()
    }
    pub fn control(&self, action: &str) -> Reply {
        self.call(
            "POST",
            &format!("/v1/routes/api/rollout/{action}"),
            Some(r#"{"reason":"test"}"#),
        )
    }
    pub fn wait_state(&self, state: &str, within: Duration) -> Value {
        let mut last = Value::Null;
        let ok = eventually(within, || {
            last = self.view();
            last["state"] == state
        });
        assert!(ok, "rollout did not become {state}: {last:#}");
        last
    }
    pub fn share(&self, target: &str) -> f64 {
        let r = self.call("GET", "/v1/routes/api", None).json();
        r["split"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .map(|t| t["share"].as_f64().unwrap())
            .unwrap()
    }
    pub fn audit(&self) -> Vec<Value> {
        self.call("GET", "/v1/audit", None).json()["entries"]
            .as_array()
            .unwrap()
            .clone()
    }
    /// Sends requests until dropped; every `beta_every`-th carries `X-Version: beta` (0: none).
    pub fn load(&self, beta_every: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let url = self.proxy.url("/api/thing");
        let threads = (0..2)
            .map(|_| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
                std::thread::spawn(move || {
                    let agent = client();
                    while !stop.load(Ordering::Relaxed) {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        let beta = beta_every > 0 && n % beta_every == 0;
                        let headers: &[(&str, &str)] =
                            if beta { &[("X-Version", "beta")] } else { &[] };
                        // A refused connection (the instance restarting) is not this load's concern.
                        let mut req = agent.get(&url);
                        for (k, v) in headers {
                            req = req.set(k, v);
                        }
                        if req.call().is_err() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn actions_by(audit: &[Value], actor: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e["actor"] == actor)
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

/// The JSON bodies the hook receiver got, oldest first.
pub fn hook_bodies(hooks: &RunningBackend) -> Vec<Value> {
    hooks
        .control
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}
