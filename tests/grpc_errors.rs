//! How gRPC calls end when something fails, read frame by frame from a real HTTP/2 client (the `h2`
//! crate), over h2c and over TLS h2, on both request paths:
//!
//! - Switchyard's own answers are trailers-only: one HEADERS frame with `grpc-status` that ends the
//!   stream, not a head followed by RST_STREAM(CANCEL) (which gRPC clients report as CANCELLED);
//! - an upstream's RST_STREAM becomes the status its reason means (INTERNAL_ERROR → INTERNAL,
//!   REFUSED_STREAM → UNAVAILABLE), and a call whose response had begun ends with trailers;
//! - a plain HTTP/2 response cut by an upstream reset is reset with the upstream's reason;
//! - `grpc-timeout` is a deadline (DEADLINE_EXCEEDED from Switchyard when it passes) and reaches the
//!   upstream reduced by the time already spent.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// How one call ended, as the client saw it.
struct Ended {
    status: u16,
    headers: http::HeaderMap,
    /// The stream ended with the response head (a trailers-only response).
    ended_with_head: bool,
    data: Vec<u8>,
    /// The stream was reset after the head, with this reason.
    reset: Option<h2::Reason>,
    trailers: Option<http::HeaderMap>,
}

impl Ended {
    /// The gRPC status, from the trailers or a trailers-only head.
    fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
    fn grpc_message(&self) -> &str {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// One call on a new connection: a gRPC call (one empty message) when `grpc`, else a plain GET.
fn call(proxy: &ProxyProcess, path: &str, grpc: bool, headers: &[(&str, &str)]) -> Ended {
    client_runtime().block_on(async {
        let (client, _connection) = h2_connection(proxy).await;
        let mut client = client.ready().await.unwrap();
        let uri = format!("{}://localhost{path}", h2_scheme(proxy));
        let mut req = if grpc {
            http::Request::post(uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
        } else {
            http::Request::get(uri)
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (response, mut send) = client.send_request(req.body(()).unwrap(), !grpc).unwrap();
        if grpc {
            send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
                .unwrap();
        }
        let response = response.await.unwrap();
        let ended_with_head = response.body().is_end_stream();
        let (head, mut body) = response.into_parts();
        let (mut data, mut reset) = (Vec::new(), None);
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                Err(e) => {
                    reset = Some(e.reason().unwrap());
                    break;
                }
            }
        }
        let trailers = match reset {
            None => body.trailers().await.unwrap(),
            Some(_) => None,
        };
        Ended {
            status: head.status.as_u16(),
            headers: head.headers,
            ended_with_head,
            data,
            reset,
            trailers,
        }
    })
}

fn start(upstream: &EdgeUpstream, extra: &str) -> ProxyProcess {
    let body = format!(
        r#"upstreams:
  edge: {{protocol: h2c, backends: ["{}"]}}
  dead: {{protocol: h2c, backends: ["{}"]}}
routes:
  - name: edge
    match: {{path_prefix: /t.Edge}}
    split: {{targets: {{edge: 100}}}}
  - name: plain
    match: {{path_prefix: /plain}}
    split: {{targets: {{edge: 100}}}}
  - name: dead
    match: {{path_prefix: /t.Dead}}
    split: {{targets: {{dead: 100}}}}
"#,
        upstream.addr,
        free_addr()
    );
    ProxyProcess::start_full(&body, "off", extra, std::process::Stdio::null())
}

/// A trailers-only answer: status 200, the stream ended by its only HEADERS frame, nothing else.
fn assert_trailers_only(ended: &Ended, grpc_status: &str, message: &str) {
    assert_eq!(ended.status, 200);
    assert!(
        ended.ended_with_head,
        "the head must end the stream (trailers-only)"
    );
    assert_eq!(ended.reset, None, "ended cleanly, not reset");
    assert!(ended.data.is_empty() && ended.trailers.is_none());
    assert_eq!(
        ended.grpc_status(),
        Some(grpc_status),
        "{:?}",
        ended.headers
    );
    assert_eq!(ended.grpc_message(), message);
}

fn switchyards_own_answers_are_trailers_only() {
    let upstream = edge_upstream();
    let proxy = start(&upstream, "");
    let dead = call(&proxy, "/t.Dead/Call", true, &[]);
    assert_trailers_only(&dead, "14", "switchyard: upstream_unavailable");
    assert!(dead.headers.contains_key("x-request-id"));
    let nowhere = call(&proxy, "/nowhere/Call", true, &[]);
    assert_trailers_only(&nowhere, "12", "switchyard: no_route");
    // A call that succeeds still ends with its upstream's trailers.
    let ok = call(&proxy, "/t.Edge/Fine", true, &[]);
    assert_eq!((ok.grpc_status(), ok.reset), (Some("0"), None));
    assert!(!ok.ended_with_head && ok.trailers.is_some());
}

fn upstream_resets_become_the_status_they_mean() {
    let upstream = edge_upstream();
    let proxy = start(&upstream, "");
    let internal = call(&proxy, "/t.Edge/ResetBefore", true, &[]);
    assert_trailers_only(
        &internal,
        "13",
        "switchyard: upstream_reset (INTERNAL_ERROR)",
    );
    let refused = call(&proxy, "/t.Edge/Refuse", true, &[]);
    assert_trailers_only(
        &refused,
        "14",
        "switchyard: upstream_reset (REFUSED_STREAM)",
    );
    // Reset after its response began: the message that came is relayed, then trailers end it.
    let after = call(&proxy, "/t.Edge/ResetAfter", true, &[]);
    assert_eq!(after.data, [0, 0, 0, 0, 0]);
    assert_eq!(after.reset, None, "ended with trailers, not a reset");
    assert_eq!(after.grpc_status(), Some("13"));
    assert_eq!(
        after.grpc_message(),
        "switchyard: upstream_reset (INTERNAL_ERROR)"
    );
    // Not gRPC: the client's stream is reset with the upstream's reason, not CANCEL.
    let plain = call(&proxy, "/plain/reset-after", false, &[]);
    assert_eq!(plain.data, b"partial");
    assert_eq!(plain.reset, Some(h2::Reason::INTERNAL_ERROR));
}

fn grpc_timeout_is_a_deadline_passed_on_reduced() {
    let upstream = edge_upstream();
    let proxy = start(&upstream, "");
    let began = Instant::now();
    let late = call(&proxy, "/t.Edge/Slow", true, &[("grpc-timeout", "300m")]);
    let took = began.elapsed();
    assert_trailers_only(&late, "4", "switchyard: upstream_timeout");
    // The upstream answers after 2 s; the deadline ended the call before.
    assert!(took < Duration::from_millis(1800), "{took:?}");
    let sent = upstream.timeouts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let nanos = grpc_timeout_nanos(&sent[0]);
    assert!(
        nanos > 0 && nanos <= 300_000_000,
        "the upstream was sent what was left of 300m: {sent:?}"
    );
    // A value that does not read sets no deadline and goes upstream as it came.
    let began = Instant::now();
    let unread = call(&proxy, "/t.Edge/Slow", true, &[("grpc-timeout", "soon")]);
    assert_eq!(unread.grpc_status(), Some("0"));
    assert!(began.elapsed() >= Duration::from_secs(2));
    assert_eq!(upstream.timeouts.lock().unwrap()[1], "soon");
}

/// A `grpc-timeout` value in nanoseconds (panics when it does not read).
fn grpc_timeout_nanos(v: &str) -> u128 {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u128 = n.parse().unwrap();
    n * match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => panic!("unit of {v}"),
    }
}

// HTTP/2-native tests: their clients speak HTTP/2 on every path already.
on_both_paths!(
    switchyards_own_answers_are_trailers_only,
    upstream_resets_become_the_status_they_mean,
    grpc_timeout_is_a_deadline_passed_on_reduced
);
on_tls_paths!(
    switchyards_own_answers_are_trailers_only,
    upstream_resets_become_the_status_they_mean,
    grpc_timeout_is_a_deadline_passed_on_reduced
);
