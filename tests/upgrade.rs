//! Pingora's graceful upgrade through our CLI: a second instance started with `-u` takes the listening
//! socket over, the old one gets SIGQUIT, and not one request of a steady stream is lost.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn upgrade_hands_over_the_socket_without_losing_a_request() {
    let v1 = backend("v1");
    let mut old = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    ));
    let url = old.url("/api");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        std::thread::spawn(move || {
            // A new connection per request, so every request exercises the listening socket.
            let agent = ureq::AgentBuilder::new()
                .max_idle_connections(0)
                .timeout(Duration::from_secs(5))
                .build();
            let mut errors = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match agent.get(&url).call() {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{:?}", other.map(|r| r.status())));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(2));
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut new = old.spawn_upgrade();
    // The new instance waits on the upgrade socket; the old one sends its listeners on SIGQUIT.
    std::thread::sleep(Duration::from_millis(500));
    signal(old.child.id(), "QUIT");
    let old_exited = eventually(Duration::from_secs(15), || {
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
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
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
