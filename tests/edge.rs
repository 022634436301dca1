//! Hostile and ambiguous requests at the edge, sent as raw bytes, on both request paths: the HTTP/1
//! engine and Pingora's pipeline (`server.http1_engine: false`). `on_both_paths!` instantiates every
//! test for each, so a behaviour is never fixed on one only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use RequestPath as Path;

on_both_paths!(
    no_spelling_of_a_path_routes_around_a_locked_route,
    what_cannot_be_normalised_is_refused,
    the_upstream_gets_the_normalised_path,
    exactly_one_host,
    ambiguous_framing_is_refused,
    oversized_heads_are_refused_with_431,
    refusals_are_counted_and_logged,
    a_response_with_both_framings_keeps_only_the_coding,
    each_test_runs_on_the_path_it_names,
    fields_named_by_connection_are_hop_by_hop,
    heads_the_parser_cannot_read_get_a_json_400_and_a_log_line,
);
// What an HTTP/2 request can spell: its `:path`, its fields and its head's size.
on_h2_paths!(
    no_spelling_of_a_path_routes_around_a_locked_route,
    what_cannot_be_normalised_is_refused,
    the_upstream_gets_the_normalised_path,
    oversized_heads_are_refused_with_431,
    refusals_are_counted_and_logged,
    each_test_runs_on_the_path_it_names,
    authority_and_host_must_agree_over_http2,
);

/// What the HTTP/1 parser cannot read at all (a space in a field name, a bare CR, a NUL in the
/// request line) is answered with Switchyard's JSON 400 and logged, on either path; nothing is
/// forwarded.
fn heads_the_parser_cannot_read_get_a_json_400_and_a_log_line() {
    let path = request_path();
    let edge = start();
    let heads: [&[u8]; 3] = [
        b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nBad Name: v\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a.test\rX: v\r\n\r\n",
        b"GET /api/\0x HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ];
    for head in heads {
        let (status, text) = raw(&edge, head);
        assert_eq!(status, 400, "{path:?}: {text}");
        assert!(
            text.contains(r#""error":"bad_request""#),
            "{path:?}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("x-request-id:"),
            "{path:?}: {text}"
        );
    }
    assert_eq!(edge.open.control.requests(), 0);
    let log = edge.proxy.dir.join("access.log");
    let lines = (0..250)
        .find_map(|_| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() < heads.len() {
                std::thread::sleep(Duration::from_millis(20));
                return None;
            }
            Some(text)
        })
        .unwrap_or_else(|| panic!("{path:?}: not every refusal was logged"));
    for line in lines.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (entry["status"].as_u64(), entry["reason"].as_str()),
            (Some(400), Some("invalid_request")),
            "{path:?}: {entry}"
        );
    }
}

/// A field the client's `Connection` names is hop-by-hop (RFC 9110 §7.6.1): not forwarded, on either
/// path; other fields are.
fn fields_named_by_connection_are_hop_by_hop() {
    let edge = start();
    let (status, text) = raw(
        &edge,
        b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nX-Other: 2\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    let headers = body["headers"].as_object().unwrap();
    let has = |name: &str| headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    let path = request_path();
    assert!(!has("x-secret-hop"), "{path:?}: {headers:?}");
    assert!(!has("te") && !has("connection"), "{path:?}: {headers:?}");
    assert!(has("x-other"), "{path:?}: {headers:?}");
}

/// The guard of this suite: a test instantiated for Pingora's pipeline really runs without the engine.
fn each_test_runs_on_the_path_it_names() {
    let edge = start();
    let log = edge.proxy.log();
    let off = log.contains("server.http1_engine is false");
    assert_eq!(off, !request_path().engine(), "{log}");
}

struct Edge {
    proxy: ProxyProcess,
    open: RunningBackend,
    locked: RunningBackend,
}

/// `/api` is open; `/api/internal` needs a known API client.
fn start() -> Edge {
    let (open, locked) = (backend("open"), backend("locked"));
    let body = format!(
        "clients:\n  keys: {{acme: {}}}\nupstreams:\n  open: {{backends: [\"{}\"]}}\n  locked: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: /api}}\n    split: {{targets: {{open: 1}}}}\n  - name: internal\n    match: {{path_prefix: /api/internal}}\n    require_client: true\n    split: {{targets: {{locked: 1}}}}\n",
        sha256_hex("acme-key"),
        open.addr,
        locked.addr
    );
    let proxy =
        ProxyProcess::start_full(&body, "{dir}/access.log", "", std::process::Stdio::null());
    Edge {
        proxy,
        open,
        locked,
    }
}

/// Sends `request` as raw bytes on a new connection; returns the status and the whole answer.
fn raw(edge: &Edge, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(edge.proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
        // One answer is enough: stop once its body is complete.
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if body.len() >= length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A refusal naming `detail` in Switchyard's JSON, on either path: nothing reaches Pingora's own
/// parser that it would answer in its own words.
fn assert_refused(path: Path, text: &str, detail: &str) {
    assert!(
        text.contains(&format!(r#""detail":"{detail}""#)),
        "{path:?}: expected {detail}: {text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{path:?}: {text}"
    );
}

fn get_path(edge: &Edge, target: &str) -> (u16, String) {
    get_path_with(edge, target, &[])
}

/// `GET target` with these fields, over HTTP/1.1 as raw bytes, or over HTTP/2 on the HTTP/2 paths
/// (the answer then written out as an HTTP/1 message would be, so the same checks read it).
fn get_path_with(edge: &Edge, target: &str, fields: &[(&str, &str)]) -> (u16, String) {
    if request_path().http2() {
        let mut headers = vec![("Host", "edge.test")];
        headers.extend_from_slice(fields);
        let r = get(&client(), &edge.proxy.url(target), &headers);
        let mut text = format!("HTTP/2 {}\r\n", r.status);
        for (name, value) in &r.headers {
            text += &format!("{name}: {value}\r\n");
        }
        return (r.status, text + "\r\n" + &r.body);
    }
    let fields: String = fields
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    raw(
        edge,
        format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\n{fields}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// HTTP/2's `:authority` and a `Host` field that names another host: refused (RFC 9113 §8.3.1),
/// never routed by either.
fn authority_and_host_must_agree_over_http2() {
    let edge = start();
    let proxy = &edge.proxy;
    let rt = client_runtime();
    let status = rt.block_on(async {
        let (mut client, _conn) = h2_connection(proxy).await;
        let req = http::Request::builder()
            .uri(format!("{}://a.test/api/x", h2_scheme(proxy)))
            .header("host", "b.test")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        resp.await.map(|r| r.status().as_u16())
    });
    match status {
        Ok(s) => assert_eq!(s, 400, "{:?}", request_path()),
        // Reset as malformed: refused too.
        Err(e) => assert!(e.is_reset(), "{e}"),
    }
    assert_eq!(edge.open.control.requests(), 0);
}

fn no_spelling_of_a_path_routes_around_a_locked_route() {
    let path = request_path();
    let edge = start();
    assert_eq!(get_path(&edge, "/api/x").0, 200);
    for spelling in [
        "/api/internal/a",
        "/api/x/../internal/a",
        "/api/%69nternal/a",
        "/api/%69%6e%74%65%72%6e%61%6c/a",
        "//api//internal/a",
        "/api/./internal/a",
        "/api/internal;jsessionid=1/a",
        "/api/internal",
        "/api/internal/",
    ] {
        let (status, text) = get_path(&edge, spelling);
        assert_eq!(status, 401, "{path:?} {spelling}: {text}");
        assert!(text.contains(r#"{"error":"client_required"}"#), "{text}");
    }
    assert_eq!(edge.locked.control.requests(), 0);
    // With the key, the normalised spelling reaches the locked route.
    let (status, text) = get_path_with(&edge, "/api/x/../internal/a", &[("X-Api-Key", "acme-key")]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""version":"locked""#), "{text}");
}

fn what_cannot_be_normalised_is_refused() {
    let path = request_path();
    let edge = start();
    for (target, detail) in [
        ("/api/a%2Finternal", "encoded_separator"),
        ("/api/a%5cinternal", "encoded_separator"),
        ("/api/a%00", "encoded_separator"),
        ("/api/..;/internal/a", "ambiguous_segment"),
        ("/../api", "path_above_root"),
        ("/api/%2e%2e/%2e%2e/x", "path_above_root"),
        ("/api/%zz", "invalid_character"),
    ] {
        let (status, text) = get_path(&edge, target);
        assert_eq!(status, 400, "{path:?} {target}: {text}");
        assert!(
            text.contains(&format!(r#""detail":"{detail}""#)),
            "{target}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("x-request-id: "),
            "{text}"
        );
    }
    if request_path().http2() {
        // HTTP/2's `:path` cannot carry what follows (the client refuses to send it).
        return;
    }
    // Not origin-form, or with control bytes: refused, whoever answers.
    for request in [
        &b"GET api/internal/a HTTP/1.1\r\nHost: edge.test\r\n\r\n"[..],
        b"GET /api/\x01x HTTP/1.1\r\nHost: edge.test\r\n\r\n",
        b"GET /api/internal/\x7fx HTTP/1.1\r\nHost: edge.test\r\n\r\n",
    ] {
        let (status, text) = raw(&edge, request);
        assert_eq!(
            status,
            400,
            "{path:?} {:?}: {text}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(
        edge.open.control.requests() + edge.locked.control.requests(),
        0
    );
    // A raw space in the target is refused (as HAProxy does), never read as another path.
    let (status, text) = raw(
        &edge,
        b"GET /api/a b HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{path:?}: {text}");
    assert_refused(path, &text, "malformed_head");
    assert_eq!(
        edge.open.control.requests() + edge.locked.control.requests(),
        0
    );
}

fn the_upstream_gets_the_normalised_path() {
    let path = request_path();
    let edge = start();
    let (status, text) = get_path(&edge, "/api//v1/./users/../items;v=2/%7Ebob?q=%2F");
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["path"], "/api/v1/items;v=2/~bob", "{path:?}: {body}");
    assert_eq!(body["query"], "q=%2F");
}

fn exactly_one_host() {
    let path = request_path();
    let edge = start();
    for (request, detail) in [
        (
            &b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
            "duplicate_host",
        ),
        (
            b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n",
            "duplicate_host",
        ),
        (b"GET /api/x HTTP/1.1\r\n\r\n", "missing_host"),
        (b"GET /api/x HTTP/1.1\r\nHost:\r\n\r\n", "missing_host"),
        (b"GET /api/x HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid_host"),
        (
            b"GET http://a.test/api/x HTTP/1.1\r\nHost: b.test\r\n\r\n",
            "host_mismatch",
        ),
    ] {
        let (status, text) = raw(&edge, request);
        assert_eq!(
            status,
            400,
            "{path:?} {:?}: {text}",
            String::from_utf8_lossy(request)
        );
        assert_refused(path, &text, detail);
    }
    assert_eq!(edge.open.control.requests(), 0);
    // One Host, or an absolute-form target that agrees with it, is served.
    let (status, _) = raw(
        &edge,
        b"GET http://a.test/api/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
}

fn ambiguous_framing_is_refused() {
    let path = request_path();
    let edge = start();
    for (request, detail) in [
        (
            &b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            "content_length_with_transfer_encoding",
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "invalid_content_length",
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
            "invalid_content_length",
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "invalid_transfer_encoding",
        ),
    ] {
        let (status, text) = raw(&edge, request);
        assert_eq!(status, 400, "{path:?} {:?}: {text}", String::from_utf8_lossy(request));
        assert_refused(path, &text, detail);
    }
    assert_eq!(edge.open.control.requests(), 0);
    // Equal duplicates are one length.
    let (status, text) = raw(
        &edge,
        b"POST /api/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""body_bytes":5"#), "{text}");
}

fn oversized_heads_are_refused_with_431() {
    let path = request_path();
    let edge = start();
    let big = "a".repeat(40 * 1024);
    let (status, text) = get_path_with(&edge, "/api/x", &[("X-Big", &big)]);
    assert_eq!(status, 431, "{path:?}: {text}");
    let names: Vec<String> = (0..150).map(|i| format!("X-F{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let (status, text) = get_path_with(&edge, "/api/x", &many);
    assert_eq!(status, 431, "{path:?}: {text}");
    let long = format!("/api/{}", "x".repeat(9000));
    let (status, text) = get_path(&edge, &long);
    assert_eq!(status, 414, "{path:?}: {text}");
    assert_eq!(edge.open.control.requests(), 0);
}

fn refusals_are_counted_and_logged() {
    let path = request_path();
    let edge = start();
    assert_eq!(get_path(&edge, "/api/a%2Fb").0, 400);
    let log = edge.proxy.dir.join("access.log");
    let line = (0..250)
        .find_map(|_| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
                return None;
            }
            Some(text)
        })
        .unwrap_or_else(|| panic!("{path:?}: nothing logged"));
    let entry: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(entry["status"], 400, "{entry}");
    assert_eq!(entry["reason"], "invalid_request", "{entry}");
}

/// An upstream that answers with both Content-Length and Transfer-Encoding: the client gets the
/// chunked body and no Content-Length (RFC 9112 §6.3), so no intermediary in front can be split.
fn a_response_with_both_framings_keeps_only_the_coding() {
    let path = request_path();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in upstream.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            );
        }
    });
    let body = format!(
        "upstreams:\n  odd: {{backends: [\"{addr}\"]}}\nroutes:\n  - name: odd\n    split: {{targets: {{odd: 1}}}}\n"
    );
    let proxy = ProxyProcess::start(&body);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 200"), "{path:?}: {text}");
    assert!(!head.contains("content-length"), "{path:?}: {head}");
    assert!(
        head.contains("transfer-encoding: chunked"),
        "{path:?}: {head}"
    );
    assert!(
        rest.starts_with("5\r\nhello\r\n0\r\n\r\n"),
        "{path:?}: {rest:?}"
    );
}
