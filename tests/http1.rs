//! HTTP/1.1 on the wire, through the real proxy: message framing in both directions, interim
//! responses, pipelining, stale upstream keep-alive connections, and the requests the engine hands
//! to Pingora's pipeline. The upstream is a scripted raw-TCP server; the client writes raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{on_both_paths, ProxyProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

use common::find;

/// Reads one request from `s` (see [`common::read_message`]).
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    common::read_message(s, buf).map(|(head, body)| Seen { head, body })
}

/// The scripted upstream: what it answers depends on the request path.
fn upstream() -> Upstream {
    upstream_answering(false)
}

/// With `plain`, `/chunked` is answered with the same content under a `Content-Length`.
fn upstream_answering(plain: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen2, conns2) = (seen.clone(), connections.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            conns2.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut on_this_connection = 0;
                while let Some(req) = read_request(&mut s, &mut buf) {
                    on_this_connection += 1;
                    seen.lock().unwrap().push(req.clone());
                    let path = req.head.split(' ').nth(1).unwrap_or("").to_string();
                    let reply: Vec<Vec<u8>> = match path.as_str() {
                        "/chunked" if plain => {
                            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
                                .to_vec()]
                        }
                        "/chunked" => vec![
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
                                .to_vec(),
                            b"lo\r\n6;x=1\r\n world\r\n".to_vec(),
                            b"0\r\nX-Trailer: t\r\n\r\n".to_vec(),
                        ],
                        "/until-close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nthe body runs ");
                            std::thread::sleep(Duration::from_millis(20));
                            let _ = s.write_all(b"until the upstream closes");
                            return;
                        }
                        "/head" => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n".to_vec()],
                        "/empty" => vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()],
                        "/early" => vec![
                            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n".to_vec(),
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                        ],
                        "/garbage" => vec![b"NOT HTTP AT ALL\r\n\r\n".to_vec()],
                        "/cut" => {
                            let _ =
                                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello");
                            return;
                        }
                        // The first request on a connection is answered and the connection kept;
                        // a later one finds it closed, as when an upstream's keep-alive ends.
                        "/drop-later" if on_this_connection > 1 => return,
                        _ => {
                            let mut body = format!("{}\n", req.body.len()).into_bytes();
                            body.extend_from_slice(req.head.as_bytes());
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\nX-Request-Id: upstream-made\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(&body);
                            vec![r]
                        }
                    };
                    for part in reply {
                        if s.write_all(&part).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        connections,
    }
}

/// The proxy with one route, `prefix` → `up`.
fn proxy_on(up: &Upstream, prefix: &str) -> ProxyProcess {
    ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: r\n    match: {{path_prefix: {prefix}}}\n    split: {{targets: {{v1: 100}}}}\n",
        up.addr
    ))
}

fn proxy_for(up: &Upstream) -> ProxyProcess {
    proxy_on(up, "/")
}

/// One response read off a client connection.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A chunked body's content and its trailer fields.
fn dechunk(raw: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut content = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&raw[at..], b"\r\n").unwrap();
        let line = String::from_utf8_lossy(&raw[at..line_end]).to_string();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            let trailers = String::from_utf8_lossy(&raw[line_end + 2..])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            return (content, trailers);
        }
        content.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        at = line_end + 2 + size + 2;
    }
}

/// A raw client connection that keeps what it read past one response for the next.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body whatever the headers say).
    fn response(&mut self, head_request: bool) -> Response {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            assert!(self.fill() > 0, "connection closed before a response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end);
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return r;
        }
        if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill() > 0, "connection closed inside a body");
            }
            r.body = self.buf.drain(..n).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            // Chunk by chunk (extensions allowed), then the trailer section up to its empty line.
            let mut at = 0;
            loop {
                let Some(line_end) = find(&self.buf[at..], b"\r\n").map(|p| at + p) else {
                    assert!(self.fill() > 0, "connection closed inside a chunked body");
                    continue;
                };
                let line = String::from_utf8_lossy(&self.buf[at..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk line {line:?}"));
                if size == 0 {
                    let end = loop {
                        if let Some(p) = find(&self.buf[line_end..], b"\r\n\r\n") {
                            break line_end + p + 4;
                        }
                        if self.buf[line_end..].starts_with(b"\r\n\r\n") {
                            break line_end + 4;
                        }
                        assert!(self.fill() > 0, "connection closed inside the trailers");
                    };
                    r.body = self.buf.drain(..end).collect();
                    break;
                }
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill() > 0, "connection closed inside a chunk");
                }
                at = line_end + 2 + size + 2;
            }
        } else {
            while self.fill() > 0 {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    /// Whether the proxy closed the connection (read returns end of stream).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n").into_bytes()
}

fn upstream_request_is_clean_and_bodies_arrive_whole() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);

    // Hop-by-hop and internal fields stay behind; the request id and every other field go on.
    c.send(
        b"GET /echo?q=1 HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Drop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Switchyard-Client: spoofed\r\nX-Request-Id: abc-123\r\nX-Custom: Mixed Case\r\n\r\n",
    );
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id").as_deref(), Some("abc-123"));
    let seen = up.seen.lock().unwrap().last().cloned().unwrap();
    let head = seen.head.to_ascii_lowercase();
    assert!(
        seen.head.starts_with("GET /echo?q=1 HTTP/1.1\r\n"),
        "{}",
        seen.head
    );
    assert!(
        seen.head.contains("X-Custom: Mixed Case\r\n"),
        "{}",
        seen.head
    );
    assert!(head.contains("host: api.test\r\n"));
    assert!(head.contains("x-request-id: abc-123\r\n"));
    for gone in ["connection:", "keep-alive:", "te:", "x-switchyard-client"] {
        assert!(!head.contains(gone), "{gone} forwarded: {}", seen.head);
    }

    // A 1 MiB body streams through on the same connection, byte for byte.
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = format!(
        "PUT /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).starts_with("1048576\n"));
    assert_eq!(up.seen.lock().unwrap().last().unwrap().body, body);

    // A chunked upload (handed to Pingora's pipeline) arrives with the same content.
    c.send(b"POST /upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(up.seen.lock().unwrap().last().unwrap().body, b"wikipedia");
}

/// Response framings reach the client intact and the connection stays usable. A chunked body's
/// content arrives whole on both paths; the engine relays the chunks as sent (extensions and
/// trailer fields included), Pingora's pipeline re-chunks them and, as nginx does, passes no chunk
/// extensions or trailer fields.
fn response_framings_pass_through_and_keep_the_connection() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);

    c.send(&get("/chunked"));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    let (content, trailers) = dechunk(&r.body);
    assert_eq!(content, b"hello world".to_vec());
    match common::request_path() {
        common::RequestPath::Engine => {
            assert_eq!(
                r.body,
                b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec()
            );
        }
        _ => assert!(trailers.is_empty(), "{trailers:?}"),
    }
    assert!(r.header("x-request-id").is_some());

    c.send(b"HEAD /head HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let r = c.response(true);
    assert_eq!(
        (r.status, r.header("content-length").as_deref()),
        (200, Some("11"))
    );

    c.send(&get("/empty"));
    assert_eq!(c.response(false).status, 204);

    // An interim response reaches the client before the final one.
    c.send(&get("/early"));
    let interim = c.response(false);
    assert_eq!(interim.status, 103);
    assert_eq!(interim.header("link").as_deref(), Some("</s.css>"));
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));

    // After all of that the same connection still serves, and the upstream's id is replaced.
    c.send(&get("/echo"));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-request-id").as_deref(), Some("upstream-made"));

    // A body that ends when the upstream closes: relayed whole. The engine relays it as it came and
    // closes the client's connection after it; Pingora's pipeline chunks it and keeps the
    // connection.
    c.send(&get("/until-close"));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    let body = if r.header("transfer-encoding").is_some() {
        dechunk(&r.body).0
    } else {
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        r.body.clone()
    };
    assert_eq!(body, b"the body runs until the upstream closes".to_vec());
}

fn pipelined_requests_are_answered_in_order() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend_from_slice(&get(&format!("/p{i}")));
    }
    c.send(&all);
    for i in 0..5 {
        let r = c.response(false);
        assert_eq!(r.status, 200, "{i}: {}", String::from_utf8_lossy(&r.body));
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains(&format!("GET /p{i} HTTP/1.1")), "{i}: {text}");
    }
    // Then `Connection: close` from the client is honoured.
    c.send(b"GET /last HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.closed());
}

/// A request the engine does not serve itself (a chunked upload) goes to Pingora's pipeline for that
/// request only: the connection comes back to the front door, and the next request is read there.
fn one_connection_serves_requests_on_both_back_ends_in_turn() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);
    let chunked = b"POST /upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let old = b"GET /old HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n";
    for round in 0..2 {
        c.send(&get(&format!("/a{round}")));
        let r = c.response(false);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains(&format!("GET /a{round} HTTP/1.1")), "{text}");
        c.send(chunked);
        let r = c.response(false);
        assert_eq!(r.status, 200);
        assert_eq!(up.seen.lock().unwrap().last().unwrap().body, b"hello");
        c.send(old);
        let r = c.response(false);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Sent at once, answered in order: the pipeline stops reading where its request ends.
    let all = [&get("/p0")[..], &old[..], &get("/p2")[..]].concat();
    c.send(&all);
    for want in ["GET /p0 HTTP/1.1", "GET /old HTTP/1.1", "GET /p2 HTTP/1.1"] {
        let r = c.response(false);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains(want), "{want}: {text}");
    }
    // And the connection serves on, by the engine again where it is on: it relays a body that
    // ends when the upstream closes as it came and closes the client's connection after it, where
    // Pingora's pipeline chunks it.
    c.send(&get("/until-close"));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    let on_engine = common::request_path() == common::RequestPath::Engine;
    assert_eq!(
        r.header("transfer-encoding").is_none(),
        on_engine,
        "{}",
        r.head
    );
}

/// Identical `Content-Length` fields, or one that says `5, 5`, are one length: the upstream gets
/// one field, and the body whole.
fn identical_lengths_go_upstream_as_one() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
    ] {
        c.send(format!("POST /len HTTP/1.1\r\nHost: api.test\r\n{lengths}\r\nhello").as_bytes());
        assert_eq!(c.response(false).status, 200);
        let seen = up.seen.lock().unwrap().last().unwrap().clone();
        let fields: Vec<&str> = seen
            .head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(fields.len(), 1, "{lengths:?}: {}", seen.head);
        assert_eq!(
            fields[0].split(':').nth(1).unwrap().trim(),
            "5",
            "{}",
            seen.head
        );
        assert_eq!(seen.body, b"hello");
    }
}

fn a_stale_upstream_connection_is_retried_for_safe_requests_only() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let mut c = Client::connect(proxy.addr);
    // First request keeps an upstream connection in the pool; the upstream then drops the next
    // request sent on it, without answering.
    c.send(&get("/drop-later"));
    assert_eq!(c.response(false).status, 200);
    let before = up.connections.load(Ordering::SeqCst);
    c.send(&get("/drop-later"));
    let r = c.response(false);
    assert_eq!(r.status, 200, "a GET is retried on a new connection");
    assert_eq!(up.connections.load(Ordering::SeqCst), before + 1);

    // A POST is not sent twice: the client gets 502.
    c.send(b"POST /drop-later HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\nhi");
    let r = c.response(false);
    assert_eq!(r.status, 502);
    assert_eq!(r.body, br#"{"error":"upstream_unavailable"}"#.to_vec());
}

fn what_the_engine_does_not_serve_itself_still_works() {
    let up = upstream();
    let proxy = proxy_for(&up);

    // HTTP/1.0 and `Expect: 100-continue`: served by Pingora's pipeline.
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /old HTTP/1.0\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response(false).status, 200);

    let mut c = Client::connect(proxy.addr);
    c.send(b"POST /expect HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.send(b"hello");
    let mut r = c.response(false);
    if r.status == 100 {
        r = c.response(false);
    }
    assert_eq!(r.status, 200);
    assert_eq!(up.seen.lock().unwrap().last().unwrap().body, b"hello");

    let mut many = String::from("GET /many HTTP/1.1\r\nHost: api.test\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-F{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    // A head with 150 fields is over the limit of 100 on both paths (HAProxy's default is 101).
    c.send(many.as_bytes());
    let r = c.response(false);
    assert_eq!(r.status, 431);

    // An upstream that does not speak HTTP: 502, and the proxy says so in JSON.
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/garbage"));
    let r = c.response(false);
    assert_eq!(r.status, 502);
    assert_eq!(r.body, br#"{"error":"upstream_unavailable"}"#.to_vec());
}

fn the_proxys_own_answers_keep_the_connection_usable() {
    let up = upstream();
    let proxy = proxy_on(&up, "/api");
    let mut c = Client::connect(proxy.addr);
    // A HEAD answer has no body, whatever its length says.
    c.send(b"HEAD /nothing HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let r = c.response(true);
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some());
    c.send(&get("/nothing"));
    let r = c.response(false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (404, &br#"{"error":"no_route"}"#[..])
    );
    // A refused request's body is not read, so the connection closes after the answer.
    c.send(b"POST /nothing HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100000\r\n\r\npartial");
    let r = c.response(false);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.closed());

    let mut c = Client::connect(proxy.addr);
    c.send(&get("/nothing"));
    assert_eq!(c.response(false).status, 404);
    c.send(&get("/api/x"));
    assert_eq!(c.response(false).status, 200);
}

/// An upstream that cannot be reached is answered with a JSON 502 that says `Connection: close` and
/// closes, on both paths (Pingora's pipeline never reuses a connection after a failed exchange, and
/// a client told keep-alive would send its next request into a closing connection). A new
/// connection is served; the refusing backend is passed over by it.
fn an_upstream_failure_answer_says_close_and_closes() {
    let up = upstream();
    let dead = common::free_addr();
    let proxy = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\n  gone: {{backends: [\"{dead}\"]}}\nroutes:\n  - name: gone\n    match: {{path_prefix: /gone}}\n    split: {{targets: {{gone: 1}}}}\n  - name: r\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 1}}}}\n",
        up.addr
    ));
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/api/x"));
    assert_eq!(c.response(false).status, 200);
    c.send(&get("/gone/x"));
    let r = c.response(false);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, br#"{"error":"upstream_unavailable"}"#.to_vec());
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert!(c.closed());
    // The backend that refused is passed over for a while: the next request tries nothing and is
    // told so, on a connection that stays usable.
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/gone/x"));
    let r = c.response(false);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, br#"{"error":"no_healthy_upstream"}"#.to_vec());
    c.send(&get("/api/x"));
    assert_eq!(c.response(false).status, 200);
}

fn mirrored_requests_are_copied_and_compared_on_the_wire() {
    let (v1, v2) = (upstream(), upstream_answering(true));
    let admin = common::free_addr();
    let proxy = ProxyProcess::start(&format!(
        "admin: {{listen: \"{admin}\"}}\nupstreams:\n  v1: {{backends: [\"{}\"]}}\n  v2: {{backends: [\"{}\"]}}\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 100}}}}\n    mirror: {{to: v2, percent: 100, methods: [GET, POST], compare: {{}}}}\n",
        v1.addr, v2.addr
    ));
    let metric = |outcome: &str| -> f64 {
        let m = common::get(&common::client(), &format!("http://{admin}/metrics"), &[]).body;
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{outcome} "))?.parse().ok())
            .unwrap_or(0.0)
    };
    let compared = |result: &str| {
        metric(&format!(
            "switchyard_mirror_compare_total{{route=\"r\",target=\"v2\",result=\"{result}\"}}"
        ))
    };
    assert!(common::eventually(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    }));

    // The same content, chunked from the primary and with a length from the shadow: a match.
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/chunked"));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(r
        .head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert!(common::eventually(Duration::from_secs(5), || compared(
        "match"
    ) == 1.0));

    // A body that comes after the head, in pieces: the shadow gets it whole, marked as a shadow,
    // with the primary's request id; the client's own marker is not passed on.
    c.send(b"POST /echo HTTP/1.1\r\nHost: api.test\r\nX-Request-Id: mirrored-1\r\nX-Switchyard-Shadow: 0\r\nContent-Length: 10\r\n\r\nhello");
    std::thread::sleep(Duration::from_millis(30));
    c.send(b" body");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(common::eventually(Duration::from_secs(5), || {
        v2.seen.lock().unwrap().len() == 2
    }));
    let primary = v1.seen.lock().unwrap().last().unwrap().clone();
    let copy = v2.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(primary.body, b"hello body");
    assert_eq!(copy.body, b"hello body");
    let marker = |head: &str| {
        head.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-switchyard-shadow:"))
            .count()
    };
    assert_eq!(marker(&primary.head), 0);
    assert_eq!(marker(&copy.head), 1);
    assert!(copy.head.contains("x-switchyard-shadow: 1\r\n"));
    assert!(
        copy.head.contains("X-Request-Id: mirrored-1\r\n")
            || copy.head.contains("x-request-id: mirrored-1\r\n")
    );
    // The echoed heads differ (the marker), so the answers' bodies differ.
    assert!(common::eventually(Duration::from_secs(5), || compared(
        "body"
    ) == 1.0));

    // A client that leaves before sending its whole body: nothing reaches the shadow, and the copy
    // is counted as dropped.
    let mut gone = Client::connect(proxy.addr);
    gone.send(b"POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\npart");
    std::thread::sleep(Duration::from_millis(50));
    drop(gone);
    let dropped = "switchyard_mirror_total{route=\"r\",target=\"v2\",outcome=\"dropped\"}";
    assert!(
        common::eventually(Duration::from_secs(5), || metric(dropped) == 1.0),
        "{}",
        common::get(&common::client(), &format!("http://{admin}/metrics"), &[])
            .body
            .lines()
            .filter(|l| l.contains("mirror"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(v2.seen.lock().unwrap().len(), 2);
    let sent = "switchyard_mirror_total{route=\"r\",target=\"v2\",outcome=\"sent\"}";
    assert_eq!(metric(sent), 3.0);
}

on_both_paths!(
    upstream_request_is_clean_and_bodies_arrive_whole,
    a_stale_upstream_connection_is_retried_for_safe_requests_only,
    what_the_engine_does_not_serve_itself_still_works,
    the_proxys_own_answers_keep_the_connection_usable,
    pipelined_requests_are_answered_in_order,
    one_connection_serves_requests_on_both_back_ends_in_turn,
    identical_lengths_go_upstream_as_one,
    an_upstream_failure_answer_says_close_and_closes,
    response_framings_pass_through_and_keep_the_connection,
    mirrored_requests_are_copied_and_compared_on_the_wire,
);
// An HTTP/2 client in front of the same HTTP/1.1 upstream.
common::on_h2_paths!(http2_streams_reach_an_http1_upstream_whole_and_get_each_framing,);

/// Over HTTP/2 the response's HTTP/1 framing is taken off and the body comes as DATA frames (a
/// chunked body, one that runs until the upstream closes, none for HEAD and 204, a 103 before the
/// final answer left out); the request goes upstream as HTTP/1.1 with its body framed (chunked when
/// the client sent no length) and its cookies in one field (RFC 9113 §8.2.3); an answer the upstream
/// cuts short resets the stream.
fn http2_streams_reach_an_http1_upstream_whole_and_get_each_framing() {
    let up = upstream();
    let proxy = proxy_for(&up);
    let client = common::client();
    let get = |path: &str| common::get(&client, &proxy.url(path), &[]);
    let r = get("/chunked");
    assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
    assert!(r.header("x-request-id").is_some());
    let r = common::send(&client, "HEAD", &proxy.url("/head"), &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("11")));
    assert_eq!(r.body, "");
    assert_eq!(get("/empty").status, 204);
    let r = get("/early");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = get("/until-close");
    assert_eq!(r.body, "the body runs until the upstream closes");
    let r = get("/garbage");
    assert_eq!(r.status, 502, "{}", r.body);

    let r = common::send_body(
        &client,
        "POST",
        &proxy.url("/echo"),
        &[("cookie", "a=1"), ("cookie", "b=2"), ("x-other", "kept")],
        Some("abc"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(r.header("x-request-id"), Some("upstream-made"));
    let (length, head) = r.body.split_once('\n').unwrap();
    assert_eq!(length, "3", "the body arrived whole: {head}");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("post /echo http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\ncookie: a=1; b=2\r\n"), "{head}");
    assert!(head.contains("\r\nx-other: kept\r\n"), "{head}");
    assert!(head.contains("\r\nhost: "), "{head}");
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n") || head.contains("content-length: 3"),
        "{head}"
    );

    // Cut short by the upstream: the client's stream is reset, not ended as if complete.
    let rt = common::client_runtime();
    rt.block_on(async {
        let (mut h2, _conn) = common::h2_connection(&proxy).await;
        let req = http::Request::builder()
            .uri(format!("{}://api.test/cut", common::h2_scheme(&proxy)))
            .body(())
            .unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let ended = loop {
            match body.data().await {
                Some(Ok(d)) => got.extend_from_slice(&d),
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        assert!(
            ended.is_err(),
            "{:?}: ended cleanly after {got:?}",
            common::request_path()
        );
    });
}
