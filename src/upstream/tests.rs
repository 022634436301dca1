#![allow(clippy::unwrap_used)]

use super::*;

fn config(upstreams: &str) -> Config {
    Config::load_str(&format!(
        "upstreams:\n{upstreams}\nroutes:\n  - name: r\n    split: {{targets: {{v1: 1}}}}\n"
    ))
    .unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn round_robin_by_weight_skipping_the_backends_that_failed() {
    let c =
        config("  v1:\n    backends: [\"127.0.0.1:9001\", {addr: \"127.0.0.1:9002\", weight: 3}]");
    let pools = Pools::build(&c, None).unwrap();
    let pool = pools.get(0).unwrap();
    assert_eq!(pool.backend_count(), 2);
    let picks: Vec<SocketAddr> = (0..400)
        .map(|_| *pool.select(&[]).unwrap().addr.as_inet().unwrap())
        .collect();
    let heavy = picks
        .iter()
        .filter(|a| **a == addr("127.0.0.1:9002"))
        .count();
    assert_eq!(heavy, 300, "weight 3 of 4");
    // A backend that failed for this request is never picked again for it.
    for _ in 0..20 {
        let b = pool.select(&[addr("127.0.0.1:9002")]).unwrap();
        assert_eq!(*b.addr.as_inet().unwrap(), addr("127.0.0.1:9001"));
    }
    assert!(pool
        .select(&[addr("127.0.0.1:9001"), addr("127.0.0.1:9002")])
        .is_none());
}

#[test]
fn a_sole_backend_is_picked_until_it_failed() {
    let c = config("  v1: {backends: [\"127.0.0.1:9001\"]}");
    let pools = Pools::build(&c, None).unwrap();
    let pool = pools.get(0).unwrap();
    assert!(pool.select(&[]).is_some());
    assert!(pool.select(&[addr("127.0.0.1:9001")]).is_none());
    assert!(pool.select(&[addr("127.0.0.1:9009")]).is_some());
}

#[test]
fn timeouts_default_as_nginx_does_and_take_what_is_set() {
    let c = config(
        "  v1: {backends: [\"127.0.0.1:9001\"]}\n  v2:\n    backends: [\"127.0.0.1:9002\"]\n    timeouts: {connect: 250ms, read: 2s, idle: 30s}",
    );
    let pools = Pools::build(&c, None).unwrap();
    let t = pools.get(0).unwrap().timeouts();
    assert_eq!(
        (t.connect, t.read, t.write, t.idle),
        (
            Some(DEFAULT_CONNECT_TIMEOUT),
            Some(DEFAULT_READ_TIMEOUT),
            Some(DEFAULT_READ_TIMEOUT),
            None
        )
    );
    let t = pools.get(1).unwrap().timeouts();
    assert_eq!(
        (t.connect, t.read, t.idle),
        (
            Some(Duration::from_millis(250)),
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(30))
        )
    );
    let peer = pools
        .get(1)
        .unwrap()
        .peer(&pools.get(1).unwrap().select(&[]).unwrap());
    assert_eq!(
        peer.options.connection_timeout,
        Some(Duration::from_millis(250))
    );
}

#[test]
fn unchanged_pools_are_carried_over_and_changed_ones_rebuilt() {
    let before =
        config("  v1: {backends: [\"127.0.0.1:9001\"]}\n  v2: {backends: [\"127.0.0.1:9002\"]}");
    let after =
        config("  v1: {backends: [\"127.0.0.1:9001\"]}\n  v2: {backends: [\"127.0.0.1:9003\"]}");
    let old = Pools::build(&before, None).unwrap();
    let new = Pools::build(&after, Some(&old)).unwrap();
    assert!(Arc::ptr_eq(old.get(0).unwrap(), new.get(0).unwrap()));
    assert!(!Arc::ptr_eq(old.get(1).unwrap(), new.get(1).unwrap()));
}

#[test]
fn the_protocol_decides_which_path_reaches_a_pool() {
    let c = config(
        "  v1: {backends: [\"127.0.0.1:9001\"]}\n  v2: {backends: [\"127.0.0.1:9002\"], protocol: h2c}",
    );
    let pools = Pools::build(&c, None).unwrap();
    assert!(pools.get(0).unwrap().plain_http1() && !pools.get(0).unwrap().http2());
    assert!(!pools.get(1).unwrap().plain_http1() && pools.get(1).unwrap().http2());
    assert!(!pools.all_plain_http1());
}

#[test]
fn a_health_checked_pool_reports_every_backend_up_until_probed() {
    let c = config(
        "  v1:\n    backends: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n    health_check: {path: /healthz, interval: 1s}",
    );
    let pools = Pools::build(&c, None).unwrap();
    let health = pools.get(0).unwrap().backend_health();
    assert_eq!(health.len(), 2);
    assert!(health
        .iter()
        .all(|b| b.up && b.checked && b.last_error.is_none()));
    assert_eq!(health[0].backend, "127.0.0.1:9001");
    // Its first check is due at once; a pool without a health check is never due.
    let pool = pools.get(0).unwrap();
    assert_eq!(pool.health_check_due_in(monotonic_ms()), Some(0));
    let unchecked = Pools::build(&config("  v1: {backends: [\"127.0.0.1:9001\"]}"), None).unwrap();
    assert_eq!(
        unchecked
            .get(0)
            .unwrap()
            .health_check_due_in(monotonic_ms()),
        None
    );
}
