//! `switchyard demo`: the demo backends (payments v1/v2/v3, web blue/green, gRPC greeter v1/v2) and the
//! proxy in one process, with the embedded `conf/demo.yaml`, and the commands that show each release
//! strategy.

pub mod backend;
pub mod grpc;

use crate::config::Config;
use crate::server::{self, RunOptions};
use backend::RunningBackend;

/// The demo configuration, as shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

const BACKENDS: [(&str, &str); 5] = [
    ("payments-v1", "127.0.0.1:9081"),
    ("payments-v2", "127.0.0.1:9082"),
    ("web-blue", "127.0.0.1:9083"),
    ("web-green", "127.0.0.1:9084"),
    ("payments-v3", "127.0.0.1:9085"),
];

const GREETERS: [(&str, &str); 2] = [
    ("greeter-v1", "127.0.0.1:9086"),
    ("greeter-v2", "127.0.0.1:9087"),
];

const TRY: &str = r#"
Switchyard demo: proxy on http://127.0.0.1:8080, admin API on http://127.0.0.1:9901, backends on 127.0.0.1:9081-9087.

Sticky 90/10 canary (route "payments"): each user keeps their version; about 1 in 10 get v2.
  for u in alice bob carol dave erin frank grace heidi ivan judy; do
    curl -s -H "X-User-Id: $u" http://127.0.0.1:8080/api/payments | grep -o '"version":"[^"]*"'; done

Header override (testers opt in to v2):
  curl -s -H 'X-Version: beta' http://127.0.0.1:8080/api/payments

Per-client migration (globex is on v2; acme follows the split):
  curl -s -H 'X-Api-Key: demo-key-globex' http://127.0.0.1:8080/api/payments
  curl -s -H 'X-Api-Key: demo-key-acme' -H 'X-User-Id: alice' http://127.0.0.1:8080/api/payments

Blue/green (route "web", live colour blue):
  curl -s http://127.0.0.1:8080/

No route for a host/path is a JSON 404; every response carries X-Request-Id:
  curl -si http://127.0.0.1:8080/ | grep -i x-request-id

Move traffic live through the admin API on 127.0.0.1:9901 (every change is a revision in the audit log):
  export SWITCHYARD_ADMIN=http://127.0.0.1:9901 SWITCHYARD_TOKEN=demo-token
  switchyard ctl status
  switchyard ctl set-split payments payments-v1=50 payments-v2=50
  switchyard ctl flip web
  switchyard ctl rollback payments
  switchyard ctl audit
  curl -s -H 'Authorization: Bearer demo-token' http://127.0.0.1:9901/v1/status

Dark release: payments-v3 gets a copy of every payments request; its answers are compared with the
primary's (differences are kept at /v1/mirror/diffs):
  curl -s http://127.0.0.1:9901/metrics | grep '^switchyard_mirror'
  curl -s -H 'Authorization: Bearer demo-token' http://127.0.0.1:9901/v1/mirror/diffs

Compare the versions (last 60 s and since start; Prometheus text on /metrics):
  switchyard ctl stats payments
  curl -s http://127.0.0.1:9901/metrics | grep '^switchyard_requests_total'

gRPC canary (route "greeter", HTTP/2 without TLS on the same port; grpcurl with conf/demo.proto):
  grpcurl -plaintext -proto conf/demo.proto -H 'x-user-id: alice' -d '{"name":"alice"}' 127.0.0.1:8080 demo.Greeter/Hello
  grpcurl -plaintext -proto conf/demo.proto -H 'x-version: beta' -d '{"name":"tester"}' 127.0.0.1:8080 demo.Greeter/Hello
  grpcurl -plaintext -proto conf/demo.proto -H 'x-version: beta' -d '{"name":"fail"}' 127.0.0.1:8080 demo.Greeter/Hello
  switchyard ctl stats greeter          # the UNAVAILABLE call counts as an error of greeter-v2

Stop with Ctrl-C.
"#;

/// Runs the demo until interrupted.
pub fn run() -> anyhow::Result<()> {
    let config =
        Config::load_str(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
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
    // The demo starts from its embedded config every time: drop what an earlier demo left behind.
    let _ = std::fs::remove_dir_all(&config.server.state_dir);
    println!("{TRY}");
    let file = server::ConfigFile {
        path: None,
        text: DEMO_CONFIG.to_string(),
    };
    let result = server::run(config, Some(&file), RunOptions::default());
    drop(backends);
    drop(greeters);
    result
}
