//! `server.limits` against clients that stall: a head sent a byte at a time, a body that never comes,
//! an idle keep-alive connection, a connection that keeps asking. Short limits here; the defaults are
//! nginx's and HAProxy's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const LIMITS: &str = "  limits: {header_timeout: 600ms, body_timeout: 600ms, send_timeout: 600ms, keepalive_timeout: 1s, max_requests_per_connection: 3, max_connections: 50}\n";

fn start() -> (ProxyProcess, RunningBackend) {
    let v1 = backend("v1");
    let body = format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    );
    let proxy = ProxyProcess::start_full(&body, "off", LIMITS, std::process::Stdio::null());
    (proxy, v1)
}

/// A kept-alive connection that has had one request answered (200).
fn served_connection(proxy: &ProxyProcess) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    s
}

/// Waits until the proxy closes `s` (EOF or reset), reading and discarding what it sends; returns how
/// long that took. Panics after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (start.elapsed(), seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (start.elapsed(), seen),
        }
    }
    panic!(
        "still open after {limit:?}; got {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// Slowloris: a head trickling in a byte every 100 ms is cut off at `header_timeout`, however long
/// each pause is; on a kept-alive connection's later requests too.
fn a_head_sent_a_byte_at_a_time_is_closed_at_header_timeout() {
    let (proxy, v1) = start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n").unwrap();
    let start = Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let eof = matches!(s.read(&mut probe), Ok(0));
        s.set_nonblocking(false).unwrap();
        if eof {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling head was still open after 4 s");
    let took = start.elapsed();
    assert!(took < Duration::from_millis(2000), "closed after {took:?}");
    assert_eq!(v1.control.requests(), 0);
    // A connection that sends nothing at all is closed the same way.
    let mut idle = TcpStream::connect(proxy.addr).unwrap();
    let (took, _) = closed_within(&mut idle, Duration::from_secs(4));
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    // A second request trickled on a connection that has been served once.
    let mut s = served_connection(&proxy);
    let start = Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: a.test\r\n"
        .iter()
        .cycle()
        .take(40)
    {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[*b]).is_err() {
            break;
        }
    }
    let (_, _) = closed_within(&mut s, Duration::from_secs(1));
    let took = start.elapsed();
    assert!(took < Duration::from_millis(4500), "closed after {took:?}");
    assert_eq!(v1.control.requests(), 1);
}

/// Past `max_connections` open client connections, a new one is closed at once; those open keep
/// being served, and once they close new ones are taken again.
fn connections_past_max_connections_are_closed_at_once() {
    let (proxy, _v1) = start();
    let open: Vec<TcpStream> = (0..50).map(|_| served_connection(&proxy)).collect();
    let mut over = TcpStream::connect(proxy.addr).unwrap();
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let (took, seen) = closed_within(&mut over, Duration::from_secs(2));
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    assert!(took < Duration::from_millis(500), "closed after {took:?}");
    drop(open);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&client(), &proxy.url("/"), &[]).status, 200);
}

/// A body declared and never sent: the client is let go after `body_timeout`, and the upstream
/// connection with it.
fn a_body_that_stalls_is_cut_off_at_body_timeout() {
    let (proxy, _v1) = start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    let (took, _) = closed_within(&mut s, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // The proxy still serves.
    assert_eq!(get(&client(), &proxy.url("/"), &[]).status, 200);
}

/// An idle keep-alive connection is closed after `keepalive_timeout`.
fn an_idle_keepalive_connection_is_closed_at_keepalive_timeout() {
    let (proxy, _v1) = start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 65536];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (took, _) = closed_within(&mut s, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

/// After `max_requests_per_connection` requests the last answer says `Connection: close` and the
/// connection ends.
fn a_connection_serves_at_most_max_requests() {
    let (proxy, _v1) = start();
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "closed early");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        answers.push(head);
    }
    assert!(!answers[1].contains("connection: close"), "{}", answers[1]);
    assert!(answers[2].contains("connection: close"), "{}", answers[2]);
    let (took, _) = closed_within(&mut s, Duration::from_secs(3));
    assert!(took < Duration::from_secs(1));
}

on_both_paths!(
    a_silent_backend_gets_a_504_from_the_default_read_timeout,
    a_head_sent_a_byte_at_a_time_is_closed_at_header_timeout,
    connections_past_max_connections_are_closed_at_once,
    a_body_that_stalls_is_cut_off_at_body_timeout,
    an_idle_keepalive_connection_is_closed_at_keepalive_timeout,
    a_connection_serves_at_most_max_requests,
    a_connection_idle_past_the_buffer_release_serves_on,
);

/// A keep-alive connection idle long enough to give its buffers back serves its next requests as
/// before, a large head included.
fn a_connection_idle_past_the_buffer_release_serves_on() {
    let v1 = backend("v1");
    let body = format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    );
    let proxy = ProxyProcess::start(&body);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = "b".repeat(6000);
    for round in 0..3 {
        let request = format!("GET /r{round} HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "closed in round {round}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        assert!(String::from_utf8_lossy(&body).contains(&format!("/r{round}")));
        std::thread::sleep(Duration::from_millis(1300));
    }
}

/// A backend that accepts, reads the request and never answers, with no timeouts configured: the
/// default read timeout (60 s) answers 504, on either path.
fn a_silent_backend_gets_a_504_from_the_default_read_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn); // read by the kernel, never answered
        }
    });
    let body = format!(
        "upstreams:\n  quiet: {{backends: [\"{addr}\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{quiet: 1}}}}\n"
    );
    let proxy = ProxyProcess::start(&body);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(90))
        .build();
    let started = Instant::now();
    let r = get(&agent, &proxy.url("/"), &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(took >= Duration::from_secs(59), "answered after {took:?}");
}

// The same limits over HTTP/2, on both paths (the connection-level ones, idle and header timeouts,
// streams and requests per connection, are tests/h2.rs's).
on_h2_paths!(
    an_http2_body_that_stalls_is_cut_off_at_body_timeout,
    a_silent_backend_gets_a_504_over_http2,
);

/// An HTTP/2 upload that stops short of its declared length: its stream is ended (reset, or
/// answered), its connection and the proxy serve on. The engine ends it at `body_timeout`. Pingora's
/// HTTP/2 session has no read timeout (its `set_read_timeout` ignores HTTP/2), so on the pipeline the
/// stall lasts until the upstream's read timeout ends the exchange.
fn an_http2_body_that_stalls_is_cut_off_at_body_timeout() {
    let v1 = backend("v1");
    let body = format!(
        "upstreams:\n  v1: {{backends: [\"{}\"], timeouts: {{read: 2s}}}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 1}}}}\n",
        v1.addr
    );
    let proxy = ProxyProcess::start_full(&body, "off", LIMITS, std::process::Stdio::null());
    let bound = if request_path().engine() {
        Duration::from_millis(1500)
    } else {
        Duration::from_millis(3500)
    };
    let rt = client_runtime();
    rt.block_on(async {
        let (mut client, _conn) = h2_connection(&proxy).await;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("{}://a.test/upload", h2_scheme(&proxy)))
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"abc"), false)
            .unwrap();
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), resp).await;
        let took = started.elapsed();
        assert!(
            ended.is_ok(),
            "{:?}: the stream still waits",
            request_path()
        );
        assert!(took < bound, "{:?}: ended after {took:?}", request_path());
        // The connection serves the next stream.
        let client = client.ready().await.unwrap();
        let mut client = client;
        let req = http::Request::builder()
            .uri(format!("{}://a.test/", h2_scheme(&proxy)))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
    });
}

/// An upstream that accepts and never answers: the HTTP/2 client gets the JSON 504 at the pool's read
/// timeout.
fn a_silent_backend_gets_a_504_over_http2() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let body = format!(
        "upstreams:\n  quiet: {{backends: [\"{addr}\"], timeouts: {{read: 1s}}}}\nroutes:\n  - name: api\n    split: {{targets: {{quiet: 1}}}}\n"
    );
    let proxy = ProxyProcess::start(&body);
    let started = Instant::now();
    let r = get(&client(), &proxy.url("/"), &[]);
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(r.header("x-request-id").is_some());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
}
