//! What observability costs a request: the metrics record path (series lookup through the snapshot,
//! clock, counters, latency histogram, 60 s window), the access log's request side (building an entry
//! and queueing it), and its writer side (formatting one JSON line, on the log thread).
//!
//! Run: `cargo bench --bench metrics`
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use switchyard::config::Valid;
use switchyard::proxy::access_log::{AccessLog, Destination, Entry, Timestamps};
use switchyard::release::{Decision, Reason};
use switchyard::state::State;

const CONFIG: &str = r#"
upstreams:
  v1: {backends: ["127.0.0.1:9001"]}
  v2: {backends: ["127.0.0.1:9002"]}
routes:
  - name: payments
    match: {path_prefix: /api/payments}
    split: {targets: {v1: 90, v2: 10}, baseline: v1, sticky: [header:X-User-Id]}
"#;

fn entry(snapshot: &Arc<switchyard::state::Snapshot>, decision: Decision) -> Entry {
    Entry {
        at: SystemTime::now(),
        request_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
        snapshot: Some(snapshot.clone()),
        route: Some(decision.route),
        decision: Some(decision),
        served: Some(decision.target),
        rejected: None,
        request: switchyard::proxy::access_log::RequestLog {
            method: http::Method::GET,
            path: "/api/payments/orders/12345".to_string(),
            host: Some("api.example.com".to_string()),
            user_agent: Some("okhttp/4.12.0".to_string()),
            forwarded_for: None,
            traceparent: None,
            client_addr: Some("10.0.9.14".parse().unwrap()),
            tls_version: None,
        },
        status: 200,
        upstream: Some("127.0.0.1:9002".parse().unwrap()),
        duration_us: 1234,
        mirrored: false,
        error: None,
        protocol: "HTTP/1.1",
        request_bytes: 0,
        response_bytes: 412,
        upstream_ttfb_us: Some(900),
    }
}

fn bench(c: &mut Criterion) {
    let state = State::new(Valid::load(CONFIG).unwrap()).unwrap();
    let snapshot = state.load();
    let metrics = state.metrics().clone();
    let decision = Decision {
        route: 0,
        target: 1,
        reason: Reason::Split {
            bucket: 912_345,
            sticky: Some(0),
        },
        client: None,
    };

    c.bench_function(
        "metrics: record one request (lookup + clock + counters + window)",
        |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let end = Instant::now();
                let now = metrics.second_at(end);
                let series = metrics
                    .series_in(&snapshot.series, &snapshot.table, 0, black_box(1))
                    .unwrap();
                series.record_request(now, 200, black_box(900 + i % 4000));
            })
        },
    );

    let series = metrics.series("payments", "v2");
    c.bench_function("metrics: counters + histogram + window only", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            series.record_request(black_box(7), 200, black_box(900 + i % 4000));
        })
    });

    c.bench_function(
        "metrics: /v1/stats window read (60 slots, p50/p95/p99)",
        |b| {
            b.iter(|| {
                let w = series.last(black_box(7), 60);
                black_box((w.quantile(0.5), w.quantile(0.95), w.quantile(0.99)))
            })
        },
    );

    let log = AccessLog::start(&Destination::File("/dev/null".into()), metrics.clone()).unwrap();
    c.bench_function("access log: request side (build entry + queue)", |b| {
        b.iter(|| log.log(entry(&snapshot, decision)))
    });

    let e = entry(&snapshot, decision);
    let mut buf = Vec::with_capacity(512);
    let mut ts = Timestamps::default();
    c.bench_function("access log: writer side (format one JSON line)", |b| {
        b.iter(|| {
            buf.clear();
            e.write_json(&mut buf, &mut ts, None).unwrap();
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
