//! `switchyard demo`: the demo backends (payments v1/v2/v3, orders v1/v2, web blue/green, gRPC greeter
//! v1/v2) and the proxy in one process, with the embedded `conf/demo.yaml`, a little traffic of its own
//! (so the orders rollout walks and the status page moves), and the commands that show each release
//! strategy, printed with this binary's real path so that they run as printed.

pub mod backend;
pub mod grpc;

use crate::config::Valid;
use crate::server::{self, RunOptions};
use backend::RunningBackend;

/// The demo configuration, as shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

const BACKENDS: [(&str, &str); 7] = [
    ("payments-v1", "127.0.0.1:9081"),
    ("payments-v2", "127.0.0.1:9082"),
    ("web-blue", "127.0.0.1:9083"),
    ("web-green", "127.0.0.1:9084"),
    ("payments-v3", "127.0.0.1:9085"),
    ("orders-v1", "127.0.0.1:9088"),
    ("orders-v2", "127.0.0.1:9089"),
];

const GREETERS: [(&str, &str); 2] = [
    ("greeter-v1", "127.0.0.1:9086"),
    ("greeter-v2", "127.0.0.1:9087"),
];

/// What to try, with `SWITCHYARD` standing for this binary's path.
const TRY: &str = r#"
Switchyard demo: proxy on http://127.0.0.1:8080, admin API on http://127.0.0.1:9901, backends on 127.0.0.1:9081-9089.

Status page (live split, per-version errors and latency, the rollout, mirror differences):
  http://127.0.0.1:9901/ui   (sign in with the token demo-token)

A progressive rollout (route "orders"): orders-v2 walks 10% -> 50% -> 100% on the demo's own traffic,
judged against v1 every second. Watch it (add --watch to follow it until it ends):
  export SWITCHYARD_ADMIN=http://127.0.0.1:9901 SWITCHYARD_TOKEN=demo-token
  SWITCHYARD ctl rollout orders
Make v2 fail (30% 500s) and see it rolled back on its own, with the figures of the check that failed it:
  curl -s 'http://127.0.0.1:9089/_demo/errors?share=0.3'
  SWITCHYARD ctl rollout orders
Heal it and try again:
  curl -s 'http://127.0.0.1:9089/_demo/errors?share=0'
  SWITCHYARD ctl rollout orders retry

Sticky 90/10 canary (route "payments"): each user keeps their version; about 1 in 10 get v2.
  for u in alice bob carol dave erin frank grace heidi ivan judy; do curl -s -H "X-User-Id: $u" http://127.0.0.1:8080/api/payments | grep -o '"version":"[^"]*"'; done

Header override (testers opt in to v2):
  curl -s -H 'X-Version: beta' http://127.0.0.1:8080/api/payments

Per-client migration (globex is on v2; acme follows the split):
  curl -s -H 'X-Api-Key: demo-key-globex' http://127.0.0.1:8080/api/payments
  curl -s -H 'X-Api-Key: demo-key-acme' -H 'X-User-Id: alice' http://127.0.0.1:8080/api/payments

Blue/green (route "web", live colour blue; flip it to green):
  curl -s http://127.0.0.1:8080/web/
  SWITCHYARD ctl flip web

A path no route matches is a JSON 404; every response carries X-Request-Id:
  curl -si http://127.0.0.1:8080/nothing-here | grep -i -e '^HTTP' -e '^x-request-id'

Move traffic live (every change is a revision in the audit log):
  SWITCHYARD ctl status
  SWITCHYARD ctl set-split payments payments-v1=50 payments-v2=50
  SWITCHYARD ctl rollback payments
  SWITCHYARD ctl audit

Dark release: payments-v3 gets a copy of every payments request and its answers are compared with the
primary's; v3 answers the order's total as a string, so every pair differs there. Field by field,
against the noise of v1 answering the same request twice, with the schema drift in words:
  SWITCHYARD ctl diffs payments
  SWITCHYARD ctl diffs payments --fields

Compare the versions (last 60 s and since start; Prometheus text on /metrics):
  SWITCHYARD ctl stats payments
  curl -s http://127.0.0.1:9901/metrics | grep '^switchyard_requests_total' | head -5

gRPC canary (route "greeter", HTTP/2 without TLS on the same port; grpcurl with conf/demo.proto):
  grpcurl -plaintext -proto conf/demo.proto -H 'x-user-id: alice' -d '{"name":"alice"}' 127.0.0.1:8080 demo.Greeter/Hello
  grpcurl -plaintext -proto conf/demo.proto -H 'x-version: beta' -d '{"name":"fail"}' 127.0.0.1:8080 demo.Greeter/Hello

Stop with Ctrl-C.
"#;

/// What to try, with the commands naming this binary by its real path.
pub fn instructions() -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "switchyard".into());
    TRY.replace("SWITCHYARD ctl", &format!("{exe} ctl"))
}

/// Sends the demo's own traffic until the process ends: users u0..u199 on orders (so its rollout is
/// judged) and on payments (so the mirror compares), about 50 requests a second.
fn traffic() {
    std::thread::spawn(|| {
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(2))
            .build();
        for i in 0u64.. {
            let user = format!("u{}", i % 200);
            let path = if i % 4 == 0 { "payments" } else { "orders" };
            let _ = agent
                .get(&format!("http://127.0.0.1:8080/api/{path}"))
                .set("X-User-Id", &user)
                .call();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}

/// Runs the demo until interrupted.
pub fn run() -> anyhow::Result<()> {
    let config =
        Valid::load(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let mut backends = Vec::new();
    for (name, addr) in BACKENDS {
        let b = RunningBackend::start(name, addr)
            .map_err(|e| anyhow::anyhow!("demo backend {name} cannot listen on {addr}: {e}"))?;
        backends.push(b);
    }
    let mut greeters = Vec::new();
    for (name, addr) in GREETERS {
        let g = grpc::RunningGrpc::start(name, addr).map_err(|e| {
            anyhow::anyhow!("demo gRPC backend {name} cannot listen on {addr}: {e}")
        })?;
        greeters.push(g);
    }
    // An order as each version answers it: v3 (the dark release) gives the total as a string.
    for b in &backends {
        let total = if b.control.version == "payments-v3" {
            serde_json::json!({"total": "12.50", "currency": "EUR"})
        } else {
            serde_json::json!({"total": 12.5, "currency": "EUR"})
        };
        b.control.set_fields(serde_json::json!({ "order": total }));
        b.control.enable_knobs();
    }
    // The demo starts from its embedded config every time: drop what an earlier demo left behind.
    let _ = std::fs::remove_dir_all(&config.server.state_dir);
    println!("{}", instructions());
    traffic();
    let file = server::ConfigFile {
        path: None,
        text: DEMO_CONFIG.to_string(),
    };
    let result = server::run(config, Some(&file), RunOptions::default());
    drop(backends);
    drop(greeters);
    result
}
