//! HTTP/2 from real clients (the `h2` crate): with prior knowledge on plain listeners (h2c) and by
//! ALPN on TLS listeners, on both request paths. The release decision is the same as over HTTP/1.1:
//! header rules, client rules and the sticky split; HTTP/1.1 keeps working on the same listeners.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const KEY: &str = "partner-key";

struct Rig {
    proxy: ProxyProcess,
    _v1: RunningBackend,
    _v2: RunningBackend,
}

fn start() -> Rig {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start_with(
        &format!(
            r#"clients:
  keys: {{partner: {key}}}
upstreams:
  v1: {{backends: ["{}"]}}
  v2: {{backends: ["{}"]}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: beta}}}}
        to: v2
      - when: {{client_in: [partner]}}
        to: v2
    split: {{targets: {{v1: 50, v2: 50}}, baseline: v1, sticky: [header:X-User-Id]}}
"#,
            v1.addr,
            v2.addr,
            key = sha256_hex(KEY),
        ),
        "{dir}/access.log",
        std::process::Stdio::null(),
    );
    Rig {
        proxy,
        _v1: v1,
        _v2: v2,
    }
}

/// One HTTP/2 answer: status, headers and body.
struct H2Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl H2Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The `version` the backend reported (empty when not JSON).
    fn version(&self) -> String {
        self.json()["version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// A header as the upstream received it (echoed by the demo backend).
    fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/2 exchange on a new connection.
async fn exchange<S>(io: S, uri: &str, headers: &[(&str, &str)]) -> H2Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (response, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    H2Reply {
        status,
        headers,
        body: bytes,
    }
}

/// An HTTP/2 request to the rig: status and the version that answered.
fn h2_get(rig: &Rig, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let reply = h2_send(&rig.proxy, "localhost", path, headers);
    (reply.status, reply.version())
}

/// An HTTP/2 request with `:authority` AUTHORITY: h2c on the plain listener, or h2 by ALPN on the TLS
/// one.
fn h2_send(proxy: &ProxyProcess, authority: &str, path: &str, headers: &[(&str, &str)]) -> H2Reply {
    client_runtime().block_on(async {
        match proxy.tls_addr {
            None => {
                let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
                let uri = format!("http://{authority}{path}");
                exchange(tcp, &uri, headers).await
            }
            Some(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let tls = tls_connector().connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                );
                let tls = tls.await.unwrap();
                assert_eq!(
                    tls.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "ALPN chose h2"
                );
                let uri = format!("https://{authority}{path}");
                exchange(tls, &uri, headers).await
            }
        }
    })
}

fn http2_reaches_the_version_its_rules_and_sticky_bucket_say() {
    let rig = start();
    assert_eq!(
        h2_get(&rig, "/api/x", &[("x-version", "beta")]),
        (200, "v2".to_string())
    );
    assert_eq!(
        h2_get(&rig, "/api/x", &[("x-api-key", KEY)]),
        (200, "v2".to_string())
    );
    // The sticky split decides the same over HTTP/2 as over HTTP/1.1, for every user.
    let agent = client();
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let over_h1 = get(&agent, &rig.proxy.url("/api/x"), &[("X-User-Id", &user)]).version();
        let (status, over_h2) = h2_get(&rig, "/api/x", &[("x-user-id", &user)]);
        assert_eq!(status, 200);
        assert_eq!(over_h2, over_h1, "{user}");
        seen.insert(over_h2);
    }
    assert_eq!(seen.len(), 2, "both versions serve some users");
    // A path no route matches is refused the same way.
    assert_eq!(h2_get(&rig, "/nothing", &[]).0, 404);
    // The access log says which protocol each request came in.
    let log = std::path::Path::new(&rig.proxy.access_log);
    assert!(eventually(std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains("\"protocol\":\"HTTP/2.0\"") && text.contains("\"protocol\":\"HTTP/1.1\"")
    }));
}

fn http1_keeps_working_next_to_http2_on_the_same_listener() {
    let rig = start();
    let agent = client();
    for _ in 0..3 {
        assert_eq!(h2_get(&rig, "/api/x", &[("x-version", "beta")]).1, "v2");
        let r = get(&agent, &rig.proxy.url("/api/x"), &[("X-Version", "beta")]);
        assert_eq!((r.status, r.version()), (200, "v2".to_string()));
    }
}

// HTTP/2-native tests: their clients speak HTTP/2 on every path already.
on_both_paths!(
    http2_reaches_the_version_its_rules_and_sticky_bucket_say,
    every_release_feature_works_over_http2,
    http1_keeps_working_next_to_http2_on_the_same_listener,
    with_h2c_off_the_preface_is_refused_as_a_malformed_request,
    idle_http2_connections_are_closed_with_a_goaway,
    http2_connections_are_bounded_as_http1_ones_are,
    http2_streams_across_an_upgrade_are_served_or_refused_unprocessed
);
on_tls_paths!(
    http2_reaches_the_version_its_rules_and_sticky_bucket_say,
    every_release_feature_works_over_http2,
    http1_keeps_working_next_to_http2_on_the_same_listener,
    with_h2c_off_the_preface_is_refused_as_a_malformed_request,
    idle_http2_connections_are_closed_with_a_goaway,
    http2_connections_are_bounded_as_http1_ones_are,
    http2_streams_across_an_upgrade_are_served_or_refused_unprocessed
);

/// Whether a client connection ended as one the proxy closed with a GOAWAY: the h2 client ends it
/// cleanly. Over TLS the client may still be writing its acknowledgement when the proxy's side is
/// gone, which it reports as a broken pipe; the GOAWAY itself is the same code either way.
fn closed_with_goaway(
    ended: &Result<
        Result<Result<(), h2::Error>, tokio::task::JoinError>,
        tokio::time::error::Elapsed,
    >,
    proxy: &ProxyProcess,
) -> bool {
    match ended {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            proxy.tls_addr.is_some()
                && e.get_io().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    )
                })
        }
        _ => false,
    }
}

/// A proxy with one route, everything to `v1`, and more lines (`limits: ...`) in `server:`.
fn one_route(v1: &RunningBackend, server_extra: &str) -> ProxyProcess {
    ProxyProcess::start_full(
        &Fixture::new()
            .upstream("v1", v1.addr)
            .route("name: api\nmatch: {path_prefix: /}\nsplit: {targets: {v1: 100}}")
            .yaml(),
        "off",
        server_extra,
        std::process::Stdio::null(),
    )
}

/// `keepalive_timeout` closes an HTTP/2 connection with no stream open, and `header_timeout` one that
/// never sends a request, as on HTTP/1, each with a GOAWAY (a request that crossed it is known to be
/// unprocessed and can be sent again).
fn idle_http2_connections_are_closed_with_a_goaway() {
    let v1 = backend("v1");
    let proxy = one_route(
        &v1,
        "  limits: {keepalive_timeout: 1s, header_timeout: 1s}\n",
    );
    let scheme = h2_scheme(&proxy);
    client_runtime().block_on(async {
        // One request, then nothing: closed about a second after the answer.
        let (client, connection) = h2_connection(&proxy).await;
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(format!("{scheme}://localhost/a"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
        assert!(
            closed_with_goaway(&ended, &proxy),
            "an idle connection ends with a GOAWAY within keepalive_timeout: {ended:?}"
        );
        // No request at all: closed about a second after the handshake.
        let (_client, connection) = h2_connection(&proxy).await;
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
        assert!(
            closed_with_goaway(&ended, &proxy),
            "a connection that sends no request ends with a GOAWAY within header_timeout: {ended:?}"
        );
    });
    assert_eq!(v1.control.requests(), 1);
}

/// An HTTP/2 connection is bounded as an HTTP/1 one is: `max_requests_per_connection` streams, then
/// a GOAWAY; a request head over `max_head_bytes` is 431; and a client may open at most 128 streams
/// at once (its SETTINGS say so).
fn http2_connections_are_bounded_as_http1_ones_are() {
    let v1 = backend("v1");
    let proxy = one_route(
        &v1,
        "  limits: {max_requests_per_connection: 3, max_head_bytes: 4096}\n",
    );
    let scheme = h2_scheme(&proxy);
    let get = |extra: Option<&str>| {
        let mut req = http::Request::get(format!("{scheme}://localhost/a"));
        if let Some(v) = extra {
            req = req.header("x-big", v);
        }
        req.body(()).unwrap()
    };
    client_runtime().block_on(async {
        let (mut client, connection) = h2_connection(&proxy).await;
        for _ in 0..3 {
            client = client.ready().await.unwrap();
            let (response, _) = client.send_request(get(None), true).unwrap();
            assert_eq!(response.await.unwrap().status(), 200);
        }
        assert_eq!(client.current_max_send_streams(), 128);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
        assert!(
            closed_with_goaway(&ended, &proxy),
            "closed with a GOAWAY after max_requests_per_connection: {ended:?}"
        );

        let (client, _connection) = h2_connection(&proxy).await;
        let mut client = client.ready().await.unwrap();
        let big = "b".repeat(5000);
        let (response, _) = client.send_request(get(Some(&big)), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 431);
    });
    assert_eq!(v1.control.requests(), 3);
}

/// How the streams of HTTP/2 clients ended across an upgrade.
#[derive(Default, Debug)]
struct Streams {
    ok: u64,
    /// Refused unprocessed: above the GOAWAY's last stream id, or REFUSED_STREAM. A client sends
    /// them again on a new connection (as browsers do), and they count apart from failures.
    unprocessed: u64,
    failed: Vec<String>,
    /// Connections opened: one more each time the proxy ended one with a GOAWAY.
    connections: u64,
}

/// HTTP/2 clients keep 10 streams in flight each through `switchyard upgrade`: the old process sends
/// GOAWAY with the last stream it will serve and finishes those; every other stream is refused
/// unprocessed, so nothing a client sent is lost or half-done.
fn http2_streams_across_an_upgrade_are_served_or_refused_unprocessed() {
    let v1 = backend("v1");
    let proxy = one_route(&v1, "");
    let old = pid_in(&proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, tls, scheme) = (proxy.addr, proxy.tls_addr, h2_scheme(&proxy));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || client_runtime().block_on(h2_load(addr, tls, scheme, stop)))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, report) = upgrade_command(&proxy, &[]);
    assert_eq!(code, 0, "{report}\n{}", proxy.log());
    assert!(eventually(std::time::Duration::from_secs(8), || !running(
        old
    )));
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let streams = load.join().unwrap();
    signal(pid_in(&proxy), "INT");
    assert!(streams.failed.is_empty(), "{streams:?}");
    assert!(streams.ok > 100, "{streams:?}");
    assert!(
        streams.connections >= 2,
        "the old process ended its connection and a new one took over: {streams:?}"
    );
}

/// Connections of 10 streams in flight each, one after the other, until `stop`.
async fn h2_load(
    addr: std::net::SocketAddr,
    tls: Option<std::net::SocketAddr>,
    scheme: &'static str,
    stop: Arc<AtomicBool>,
) -> Streams {
    let mut streams = Streams::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
        let client = match tls {
            None => {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                h2::client::handshake(tcp).await.map(|(c, conn)| {
                    tokio::spawn(conn);
                    c
                })
            }
            Some(tls_addr) => {
                let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let io = tls_connector().connect(name, tcp).await.unwrap();
                h2::client::handshake(io).await.map(|(c, conn)| {
                    tokio::spawn(conn);
                    c
                })
            }
        };
        let Ok(client) = client else {
            continue;
        };
        streams.connections += 1;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let client = client.clone();
            let stop = stop.clone();
            calls.spawn(async move {
                let mut got = Streams::default();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut ready) = client.clone().ready().await else {
                        return got; // the connection is closing: a new one takes over
                    };
                    let req = http::Request::get(format!("{scheme}://localhost/a"))
                        .body(())
                        .unwrap();
                    let sent = match ready.send_request(req, true) {
                        Ok((response, _)) => response.await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(r) if r.status() == 200 => got.ok += 1,
                        Ok(r) => got.failed.push(format!("status {}", r.status())),
                        Err(e)
                            if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
                        {
                            got.unprocessed += 1;
                            return got;
                        }
                        Err(e) => {
                            got.failed.push(e.to_string());
                            return got;
                        }
                    }
                }
                got
            });
        }
        while let Some(Ok(got)) = calls.join_next().await {
            streams.ok += got.ok;
            streams.unprocessed += got.unprocessed;
            streams.failed.extend(got.failed);
        }
    }
    streams
}

fn with_h2c_off_the_preface_is_refused_as_a_malformed_request() {
    use std::io::{Read, Write};
    let v1 = backend("v1");
    let proxy = ProxyProcess::start_full(
        &format!(
            "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 100}}}}\n",
            v1.addr
        ),
        "off",
        "  h2c: false\n",
        std::process::Stdio::null(),
    );
    let mut tcp = std::net::TcpStream::connect(proxy.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(v1.control.requests(), 0);
}

/// The release features besides rules and the sticky split, over HTTP/2: `:authority` as the host a
/// route matches, blue/green and a flip, explain, request ids, stripped `X-Switchyard-*` headers, the
/// client header, fallback to the baseline when the canary's backends are down, and metrics.
fn every_release_feature_works_over_http2() {
    const OPS: &str = "ops-token-h2";
    let (v1, v2, blue, green) = (
        backend("v1"),
        backend("v2"),
        backend("blue"),
        backend("green"),
    );
    let admin = free_addr();
    let proxy = ProxyProcess::start(
        &Fixture::new()
            .admin(admin, &[("ops", OPS)])
            .section(&format!("clients:\n  keys: {{partner: {}}}", sha256_hex(KEY)))
            .upstream("v1", v1.addr)
            .upstream_with(
                "v2",
                &format!(
                    "backends: [\"{}\"], health_check: {{path: /healthz, interval: 100ms, timeout: 500ms}}",
                    v2.addr
                ),
            )
            .upstream("blue", blue.addr)
            .upstream("green", green.addr)
            .route("name: hosted\nmatch: {host: api.example.com}\nsplit: {targets: {green: 100}}")
            .route("name: web\nmatch: {path_prefix: /web}\nblue_green: {blue: blue, green: green, live: blue}")
            .route("name: api\nmatch: {path_prefix: /api}\nsplit: {targets: {v1: 50, v2: 50}, baseline: v1, sticky: [header:X-User-Id]}")
            .yaml(),
    );
    let ops = |method: &str, path: &str, body: Option<&str>| -> serde_json::Value {
        let req = ureq::request(method, &format!("http://{admin}{path}"))
            .set("Authorization", &format!("Bearer {OPS}"));
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let text = r.unwrap().into_string().unwrap();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    let h2 = |authority: &str, path: &str, headers: &[(&str, &str)]| {
        h2_send(&proxy, authority, path, headers)
    };

    // `:authority` is the host routes match on.
    assert_eq!(h2("api.example.com", "/api/x", &[]).version(), "green");
    assert_eq!(h2("api.example.com:443", "/web", &[]).version(), "green");
    assert_eq!(h2("localhost", "/web", &[]).version(), "blue");

    // The edge rules hold over HTTP/2 too: paths are normalised before routing, and what cannot be
    // normalised safely is refused.
    assert_eq!(
        h2("localhost", "/web/../api/x", &[]).json()["path"],
        "/api/x"
    );
    assert_eq!(h2("localhost", "/api/%2e%2e/web", &[]).version(), "blue");
    assert_eq!(h2("localhost", "/api/a%2Fb", &[]).status, 400);
    assert_eq!(h2("localhost", "/../etc/passwd", &[]).status, 400);

    // Blue/green: a flip through the admin API reaches HTTP/2 clients at once.
    ops(
        "PATCH",
        "/v1/routes/web",
        Some(r#"{"live": "green", "reason": "h2 flip"}"#),
    );
    assert_eq!(h2("localhost", "/web", &[]).version(), "green");

    // Explain says what an HTTP/2 request gets.
    for user in 0..20 {
        let user = format!("user-{user}");
        let explained = ops(
            "GET",
            &format!("/v1/routes/api/explain?header.X-User-Id={user}"),
            None,
        );
        let target = explained["target"].as_str().unwrap().to_string();
        assert_eq!(
            h2("localhost", "/api/x", &[("x-user-id", &user)]).version(),
            target,
            "{user}: {explained}"
        );
    }

    // Request ids: one is made and given to both sides; a valid one from the client is kept.
    let r = h2("localhost", "/api/x", &[]);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some(id.as_str())
    );
    let r = h2("localhost", "/api/x", &[("x-request-id", "h2-trace-0001")]);
    assert_eq!(r.header("x-request-id"), Some("h2-trace-0001"));
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("h2-trace-0001")
    );

    // Client-sent `X-Switchyard-*` headers never reach the upstream; an identified client is named.
    let r = h2(
        "localhost",
        "/api/x",
        &[
            ("x-switchyard-client", "admin"),
            ("x-switchyard-shadow", "1"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-switchyard-client"), None);
    assert_eq!(r.upstream_header("x-switchyard-shadow"), None);
    let r = h2(
        "localhost",
        "/api/x",
        &[("x-api-key", KEY), ("x-switchyard-client", "admin")],
    );
    assert_eq!(
        r.upstream_header("x-switchyard-client").as_deref(),
        Some("partner")
    );

    // Fallback: with the canary's only backend down, its users are served by the baseline.
    let canary_users: Vec<String> = (0..40)
        .map(|u| format!("user-{u}"))
        .filter(|u| h2("localhost", "/api/x", &[("x-user-id", u)]).version() == "v2")
        .collect();
    assert!(!canary_users.is_empty());
    v2.control.set_healthy(false);
    assert!(eventually(std::time::Duration::from_secs(5), || {
        h2("localhost", "/api/x", &[("x-user-id", &canary_users[0])]).version() == "v1"
    }));
    for user in &canary_users {
        let r = h2("localhost", "/api/x", &[("x-user-id", user)]);
        assert_eq!((r.status, r.version()), (200, "v1".to_string()), "{user}");
    }

    // Metrics count HTTP/2 requests by route, target and status, and the fallbacks.
    let metrics = ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let count = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        count(r#"switchyard_requests_total{route="web",target="green",code="2"#) >= 1.0,
        "{metrics}"
    );
    assert!(
        count(r#"switchyard_requests_total{route="hosted",target="green",code="2"#) >= 2.0,
        "{metrics}"
    );
    assert!(
        count(r#"switchyard_fallbacks_total{route="api",from="v2",to="v1"}"#)
            >= canary_users.len() as f64,
        "{metrics}"
    );
}
