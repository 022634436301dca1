//! What a live change costs requests in flight: p50/p99/max latency of a steady paced load through
//! Switchyard, first with no changes, then while the split is changed 10 times a second through the
//! admin API; and how long a PATCH takes to return with the new split serving.
//!
//! Run: `cargo build --release && cargo run --release --example swap_cost`
//! (loopback only; bounded: two 10-second phases.)

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::demo::backend::RunningBackend;

const CLIENTS: usize = 4;
const RATE_PER_CLIENT: u64 = 250; // requests/s, 1,000/s in all
const PHASE: Duration = Duration::from_secs(10);
const TOKEN: &str = "swap-cost";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sha(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the paced load for one phase; returns every latency and the error count.
fn load(url: &str, changing: Option<SocketAddr>) -> (Vec<Duration>, usize, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let (stop, latencies, errors, url) = (
            stop.clone(),
            latencies.clone(),
            errors.clone(),
            url.to_string(),
        );
        threads.push(std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build();
            let gap = Duration::from_micros(1_000_000 / RATE_PER_CLIENT);
            let mut next = Instant::now();
            let mut mine = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                next += gap;
                let t = Instant::now();
                let user = format!("user-{c}-{n}");
                match agent.get(&url).set("X-User-Id", &user).call() {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_string();
                        mine.push(t.elapsed());
                    }
                    _ => *errors.lock().unwrap_or_else(|p| p.into_inner()) += 1,
                }
                n += 1;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
        }));
    }
    let mut patches = Vec::new();
    let started = Instant::now();
    if let Some(admin) = changing {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let mut i = 0u32;
        while started.elapsed() < PHASE {
            let canary = if i % 2 == 0 { 10 } else { 20 };
            let t = Instant::now();
            let ok = agent
                .request("PATCH", &format!("http://{admin}/v1/routes/api"))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .send_string(&format!(
                    r#"{{"split":{{"v1":{},"v2":{canary}}}}}"#,
                    100 - canary
                ))
                .is_ok();
            if ok {
                patches.push(t.elapsed());
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
    } else {
        std::thread::sleep(PHASE);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    all.sort();
    patches.sort();
    let errors = *errors.lock().unwrap_or_else(|p| p.into_inner());
    (all, errors, patches)
}

fn main() {
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/switchyard");
    assert!(
        std::path::Path::new(binary).exists(),
        "build it first: cargo build --release"
    );
    let (v1, v2) = (
        RunningBackend::start("v1", "127.0.0.1:0"),
        RunningBackend::start("v2", "127.0.0.1:0"),
    );
    let (v1, v2) = (
        v1.unwrap_or_else(|e| panic!("{e}")),
        v2.unwrap_or_else(|e| panic!("{e}")),
    );
    let (proxy, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("switchyard-swap-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        "server:\n  listen: [\"{proxy}\"]\n  threads: 1\n  pid_file: {d}/pid\n  upgrade_sock: {d}/up.sock\n  state_dir: {d}/state\n  access_log: off\nadmin:\n  listen: \"{admin}\"\n  tokens: {{bench: {}}}\nupstreams:\n  v1: {{backends: [\"{}\"]}}\n  v2: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 90, v2: 10}}, baseline: v1, sticky: [header:X-User-Id]}}\n",
        sha(TOKEN),
        v1.addr,
        v2.addr,
        d = dir.display()
    );
    std::fs::write(dir.join("c.yaml"), config).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(binary)
        .args(["run", "-c"])
        .arg(dir.join("c.yaml"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(admin).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://{proxy}/api");
    let _ = load(&url, None); // warm-up phase, discarded
    let (steady, steady_errors, _) = load(&url, None);
    let (changing, changing_errors, patches) = load(&url, Some(admin));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let row = |name: &str, l: &[Duration], errors: usize| {
        println!(
            "| {name} | {} | {errors} | {:.2} | {:.2} | {:.2} |",
            l.len(),
            percentile(l, 0.5).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3,
            l.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        )
    };
    println!(
        "load: {CLIENTS} clients x {RATE_PER_CLIENT} req/s, keep-alive, {}s per phase",
        PHASE.as_secs()
    );
    println!("| phase | requests | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    row("no changes", &steady, steady_errors);
    row("split changed 10x/s", &changing, changing_errors);
    println!(
        "PATCH returned with the new split live: {} changes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        patches.len(),
        percentile(&patches, 0.5).as_secs_f64() * 1e3,
        percentile(&patches, 0.99).as_secs_f64() * 1e3,
        patches.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
