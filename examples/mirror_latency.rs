//! What mirroring costs the primary: p50/p99/max latency of a paced keep-alive load (4 clients x 50
//! req/s, 10 s per variant) with no mirror, a 100% mirror to a fast shadow, and a 100% mirror to a
//! shadow that answers after 500 ms — through Switchyard, and through nginx's `mirror` directive when
//! nginx is installed (same upstreams, one worker each). Latency is measured from the moment each
//! request was due, so a client connection held back by its shadow shows up; requests that could not
//! even be sent within the phase are reported as missing (2,000 are due per variant).
//!
//! Run: `cargo build --release && cargo run --release --example mirror_latency`
//! (loopback only; bounded: 6 phases of 10 s plus warm-ups.)

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::demo::backend::RunningBackend;

const CLIENTS: usize = 4;
const RATE_PER_CLIENT: u64 = 50;
const PHASE: Duration = Duration::from_secs(10);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Paced load on `url` for `phase`; latencies from each request's due time, and the error count.
fn load(url: &str, phase: Duration) -> (Vec<Duration>, usize) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (latencies, errors, url) = (latencies.clone(), errors.clone(), url.to_string());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let gap = Duration::from_micros(1_000_000 / RATE_PER_CLIENT);
                let start = Instant::now();
                let mut due = start;
                let mut mine = Vec::new();
                // Requests still due when the phase is over are not sent, and show as missing.
                while due < start + phase && Instant::now() < start + phase {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match agent.get(&url).call() {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_string();
                            mine.push(due.elapsed());
                        }
                        _ => *errors.lock().unwrap_or_else(|p| p.into_inner()) += 1,
                    }
                    due += gap;
                }
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    all.sort();
    let errors = *errors.lock().unwrap_or_else(|p| p.into_inner());
    (all, errors)
}

fn due_per_variant() -> usize {
    CLIENTS * (RATE_PER_CLIENT * PHASE.as_secs()) as usize
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(proxy: &str, addr: SocketAddr) {
    for (variant, path) in [
        ("no mirror", "/plain"),
        ("100% mirror, fast shadow", "/fast"),
        ("100% mirror, 500 ms shadow", "/slow"),
    ] {
        let url = format!("http://{addr}{path}");
        let _ = load(&url, Duration::from_secs(2)); // warm-up, discarded
        let (l, errors) = load(&url, PHASE);
        println!(
            "| {proxy} | {variant} | {} | {} | {errors} | {:.2} | {:.2} | {:.2} |",
            l.len(),
            due_per_variant().saturating_sub(l.len() + errors),
            percentile(&l, 0.5).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3,
            l.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/switchyard");
    assert!(
        std::path::Path::new(binary).exists(),
        "build it first: cargo build --release"
    );
    let start = |v: &str| RunningBackend::start(v, "127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let (primary, fast, slow) = (start("v1"), start("shadow-fast"), start("shadow-slow"));
    slow.control.set_delay(Duration::from_millis(500));
    let dir =
        std::env::temp_dir().join(format!("switchyard-mirror-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));

    println!(
        "load: {CLIENTS} keep-alive clients x {RATE_PER_CLIENT} req/s, {}s per variant; latency from each request's due time",
        PHASE.as_secs()
    );
    println!("| proxy | variant | answered | missing | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|");

    let sy = free_addr();
    let config = format!(
        "server:\n  listen: [\"{sy}\"]\n  threads: 1\n  pid_file: {d}/pid\n  upgrade_sock: {d}/up.sock\n  state_dir: {d}/state\n  access_log: off\nupstreams:\n  v1: {{backends: [\"{p}\"]}}\n  fast: {{backends: [\"{f}\"]}}\n  slow: {{backends: [\"{s}\"]}}\nroutes:\n  - name: plain\n    match: {{path_prefix: /plain}}\n    split: {{targets: {{v1: 100}}}}\n  - name: fast\n    match: {{path_prefix: /fast}}\n    split: {{targets: {{v1: 100}}}}\n    mirror: {{to: fast, percent: 100, timeout: 2s, max_in_flight: 10000}}\n  - name: slow\n    match: {{path_prefix: /slow}}\n    split: {{targets: {{v1: 100}}}}\n    mirror: {{to: slow, percent: 100, timeout: 2s, max_in_flight: 10000}}\n",
        p = primary.addr,
        f = fast.addr,
        s = slow.addr,
        d = dir.display()
    );
    std::fs::write(dir.join("sy.yaml"), config).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(binary)
        .args(["run", "-c"])
        .arg(dir.join("sy.yaml"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_listening(sy);
    measure("switchyard", sy);
    stop(child);

    let ngx = free_addr();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx.err error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 100000;
  upstream primary {{ server {p}; keepalive 64; }}
  upstream mirror_fast {{ server {f}; keepalive 16; }}
  upstream mirror_slow {{ server {s}; keepalive 16; }}
  server {{
    listen {ngx};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /plain {{ proxy_pass http://primary; }}
    location /fast {{ mirror /__mf; proxy_pass http://primary; }}
    location /slow {{ mirror /__ms; proxy_pass http://primary; }}
    location = /__mf {{ internal; proxy_pass http://mirror_fast$request_uri; proxy_read_timeout 2s; }}
    location = /__ms {{ internal; proxy_pass http://mirror_slow$request_uri; proxy_read_timeout 2s; }}
  }}
}}
"#,
        p = primary.addr,
        f = fast.addr,
        s = slow.addr,
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap_or_else(|e| panic!("{e}"));
    match Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => {
            wait_listening(ngx);
            measure("nginx", ngx);
            stop(child);
        }
        Err(e) => println!("(nginx not run: {e})"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
