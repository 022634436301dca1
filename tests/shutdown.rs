//! Shutdown as container platforms expect it: SIGTERM stops accepting, lets what is in flight finish,
//! and exits as soon as nothing is left (an idle instance well under a second); SIGINT stops at once.
//! Start-up says in one line what serves where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::time::{Duration, Instant};

fn body(v1: &RunningBackend) -> String {
    format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    )
}

/// Waits for the process to exit; returns how long it took.
fn exit_time(proxy: &mut ProxyProcess, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if proxy.child.try_wait().unwrap().is_some() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("still running {limit:?} after the signal");
}

fn sigterm_on_an_idle_instance_exits_well_under_a_second() {
    let v1 = backend("v1");
    for _ in 0..3 {
        let mut proxy = ProxyProcess::start(&body(&v1));
        assert_eq!(get(&client(), &proxy.url("/"), &[]).status, 200);
        let log = proxy.log();
        assert!(
            log.contains(&format!(
                "serving revision 1 (1 routes) on http://{}",
                proxy.addr
            )),
            "{log}"
        );
        signal(proxy.child.id(), "TERM");
        // grace_period is 2 s in the test config: an early exit is the drain's doing.
        let took = exit_time(&mut proxy, Duration::from_secs(5));
        assert!(took < Duration::from_secs(1), "exited after {took:?}");
        assert_eq!(
            proxy.child.try_wait().unwrap().and_then(|s| s.code()),
            Some(0)
        );
    }
}

fn sigterm_under_load_finishes_every_request_in_flight() {
    let v1 = backend("v1");
    v1.control.set_delay(Duration::from_millis(400));
    let mut proxy = ProxyProcess::start(&body(&v1));
    let url = proxy.url("/slow");
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&client(), &url, &[]).status)
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || v1.control.requests() >= 20));
    let sent = Instant::now();
    signal(proxy.child.id(), "TERM");
    let statuses: Vec<u16> = in_flight.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 20]);
    let took = exit_time(&mut proxy, Duration::from_secs(5));
    // It waited for the slow requests, and not for the whole 2 s grace period.
    assert!(sent.elapsed() >= Duration::from_millis(200));
    assert!(
        took < Duration::from_millis(1500),
        "exited {took:?} after the last answer"
    );
    // New connections are refused once it stopped accepting.
    assert!(std::net::TcpStream::connect(proxy.addr).is_err());
}

fn sigint_stops_at_once() {
    let v1 = backend("v1");
    v1.control.set_delay(Duration::from_secs(3));
    let mut proxy = ProxyProcess::start(&body(&v1));
    let url = proxy.url("/slow");
    let _pending = std::thread::spawn(move || get(&client(), &url, &[]).status);
    assert!(eventually(Duration::from_secs(5), || v1.control.requests() >= 1));
    signal(proxy.child.id(), "INT");
    let took = exit_time(&mut proxy, Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "exited after {took:?}");
}

on_both_paths!(
    sigterm_on_an_idle_instance_exits_well_under_a_second,
    sigterm_under_load_finishes_every_request_in_flight,
    sigint_stops_at_once,
);
on_h2_paths!(
    sigterm_on_an_idle_instance_exits_well_under_a_second,
    sigterm_under_load_finishes_every_request_in_flight,
    sigint_stops_at_once,
);
