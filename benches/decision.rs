//! The release decision's cost: `decide()` for a route with 5 rules and a sticky split, route lookup
//! among 10,000 routes, and compiling a 10,000-route table.
//!
//! Run: `cargo bench --bench decision`
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use switchyard::config::Valid;
use switchyard::release::{decide, FieldPairs, Headers, Outcome, ReleaseTable, RequestView};

const FIVE_RULES: &str = r#"
clients:
  api_key_header: X-Api-Key
  keys:
    acme: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
upstreams:
  v1: {backends: ["127.0.0.1:9001"]}
  v2: {backends: ["127.0.0.1:9002"]}
routes:
  - name: payments
    match: {host: api.example.com, path_prefix: /api/payments, methods: [GET, POST]}
    rules:
      - when: {header: {X-Version: beta}}
        to: v2
      - when: {header_present: X-Debug-V2}
        to: v2
      - when: {cookie: {canary: "yes"}}
        to: v2
      - when: {query: {version: "2"}}
        to: v2
      - when: {client_in: [acme], source_ip: ["10.0.0.0/8"]}
        to: v2
    split:
      targets: {v1: 90, v2: 10}
      baseline: v1
      sticky: [header:X-User-Id, cookie:uid]
  - name: web
    match: {path_prefix: /}
    split: {targets: {v1: 1}}
"#;

/// 100 hosts x 99 path prefixes + 100 wildcard-free catch-alls = 10,000 routes.
fn ten_thousand_routes() -> String {
    let mut y = String::from("upstreams:\n  v1: {backends: [\"127.0.0.1:9001\"]}\n  v2: {backends: [\"127.0.0.1:9002\"]}\nroutes:\n");
    for h in 0..100 {
        for p in 0..100 {
            let prefix = if p == 0 {
                "/".to_string()
            } else {
                format!("/svc{p}/v{}", p % 3)
            };
            y.push_str(&format!(
                "  - name: r{h}-{p}\n    match: {{host: host{h}.example.com, path_prefix: \"{prefix}\"}}\n    split: {{targets: {{v1: 95, v2: 5}}, baseline: v1, sticky: [header:X-User-Id]}}\n"
            ));
        }
    }
    y
}

fn request<'a>(headers: &'a HeaderMap, host: &'a str, path: &'a str) -> RequestView<'a> {
    RequestView {
        method: "GET",
        host,
        path,
        query: Some("page=2&sort=desc"),
        headers: headers.into(),
        client_ip: Some("192.0.2.10".parse().unwrap()),
    }
}

fn benches(c: &mut Criterion) {
    let table = ReleaseTable::compile(&Valid::load(FIVE_RULES).unwrap()).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", "api.example.com".parse().unwrap());
    headers.insert("user-agent", "bench/1.0".parse().unwrap());
    headers.insert("accept", "application/json".parse().unwrap());
    headers.insert("x-user-id", "user-4242".parse().unwrap());
    headers.insert("cookie", "session=abc; theme=dark".parse().unwrap());
    let req = request(&headers, "api.example.com", "/api/payments/123");
    assert!(matches!(
        decide(&table, &req, &mut || 0),
        Outcome::Routed(_)
    ));
    c.bench_function("decide: 5 rules miss, sticky split", |b| {
        b.iter(|| decide(black_box(&table), black_box(&req), &mut || 7))
    });

    // The same request as the HTTP/1 engine sees it: raw fields straight from the parsed head.
    let raw_head: &[u8] = b"GET /api/payments/123?page=2&sort=desc HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\nX-User-Id: user-4242\r\nCookie: session=abc; theme=dark\r\n\r\n";
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(raw_head).unwrap();
    let pairs: Vec<(&str, &[u8])> = parsed.headers.iter().map(|h| (h.name, h.value)).collect();
    let raw = RequestView {
        headers: Headers::Raw(&FieldPairs(&pairs)),
        ..request(&headers, "api.example.com", "/api/payments/123")
    };
    assert_eq!(
        decide(&table, &raw, &mut || 0),
        decide(&table, &req, &mut || 0)
    );
    c.bench_function(
        "decide over raw fields (HTTP/1 engine): 5 rules miss, sticky split",
        |b| b.iter(|| decide(black_box(&table), black_box(&raw), &mut || 7)),
    );
    c.bench_function(
        "parse request head (httparse) + decide over its fields",
        |b| {
            b.iter(|| {
                let mut fields = [httparse::EMPTY_HEADER; 16];
                let mut parsed = httparse::Request::new(&mut fields);
                parsed.parse(black_box(raw_head)).unwrap();
                let mut pairs = [("", &b""[..]); 16];
                for (slot, h) in pairs.iter_mut().zip(parsed.headers.iter()) {
                    *slot = (h.name, h.value);
                }
                let n = parsed.headers.len();
                let view = RequestView {
                    method: parsed.method.unwrap(),
                    host: "api.example.com",
                    path: "/api/payments/123",
                    query: Some("page=2&sort=desc"),
                    headers: Headers::Raw(&FieldPairs(&pairs[..n])),
                    client_ip: None,
                };
                decide(black_box(&table), &view, &mut || 7)
            })
        },
    );

    let mut with_key = headers.clone();
    with_key.insert("x-api-key", "foo".parse().unwrap());
    let req = request(&with_key, "api.example.com", "/api/payments/123");
    c.bench_function("decide: 5 rules + API key (sha256), sticky split", |b| {
        b.iter(|| decide(black_box(&table), black_box(&req), &mut || 7))
    });

    let big_yaml = ten_thousand_routes();
    let big_config = Valid::load(&big_yaml).unwrap();
    let big = ReleaseTable::compile(&big_config).unwrap();
    assert_eq!(big.routes().len(), 10_000);
    let empty = HeaderMap::new();
    let req = request(&empty, "host57.example.com", "/svc42/v0/orders/991/items");
    let Outcome::Routed(d) = decide(&big, &req, &mut || 0) else {
        panic!("no route")
    };
    assert_eq!(&*big.route(d.route).unwrap().name, "r57-42");
    c.bench_function("route lookup + decide among 10,000 routes", |b| {
        b.iter(|| decide(black_box(&big), black_box(&req), &mut || 7))
    });
    let req = request(&empty, "unknown.example.org", "/nothing/here");
    c.bench_function("no-route lookup among 10,000 routes", |b| {
        b.iter(|| decide(black_box(&big), black_box(&req), &mut || 7))
    });

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function(
        "compile a 10,000-route table (build; validated when loaded)",
        |b| b.iter(|| ReleaseTable::compile(black_box(&big_config)).unwrap()),
    );
    g.bench_function("parse + validate + compile 10,000 routes from YAML", |b| {
        b.iter(|| ReleaseTable::compile(&Valid::load(black_box(&big_yaml)).unwrap()).unwrap())
    });
    g.finish();
}

criterion_group!(decision, benches);
criterion_main!(decision);
