//! The HTTP/1.1 engine: Switchyard's own request loop for plain HTTP/1.1 traffic, in front of
//! Pingora's proxy pipeline.
//!
//! Pingora's `HttpProxy` runs every request through a general pipeline (header maps built twice,
//! downstream and upstream halves joined by channels, a shared connection pool behind locks, a task
//! per idle connection); on a small request that is most of the CPU a request costs. This engine is a
//! Pingora `ServerApp` on the same listeners that serves the common case directly: it parses the
//! request head in place (httparse), makes the same release decision over the raw header fields,
//! writes the upstream request in one write, and passes the response and both bodies through byte for
//! byte, with an upstream connection pool per worker thread (see [`pool`]). Counting, the access log,
//! request ids, fallback, retries and error answers are the ones the Pingora path uses.
//!
//! Whatever it does not handle itself it hands to Pingora's `HttpProxy` with the bytes already read,
//! and the connection stays there: TLS connections that negotiated h2, HTTP/1.0, `CONNECT`,
//! absolute-form or `*` targets, requests with `Transfer-Encoding`, `Upgrade` or `Expect`, heads over
//! 64 KiB or with more than 100 fields, anything httparse refuses, and requests to a route that mirrors
//! (shadow copies are Pingora subrequests).

mod body;
mod pool;

use super::{
    pick_backend, random_bucket, request_id, Ctx, Proxy, CLIENT_HEADER, REQUEST_ID_HEADER,
};
use crate::metrics::{Rejection, UpstreamError};
use crate::release::{self, Decision, Headers, Outcome, RequestView};
use crate::state::Snapshot;
use async_trait::async_trait;
use body::{Chunked, Framing};
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header fields a request may have and stay on the engine.
const MAX_FIELDS: usize = 100;
/// Header fields an upstream response may have.
const MAX_RESPONSE_FIELDS: usize = 200;
/// Longest request or response head the engine reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long an idle client connection is kept open for its next request (Pingora's default too).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a connection accepted just before shutdown has to send its first request.
const FIRST_REQUEST_WINDOW: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 16 * 1024;

/// The engine: serves what it can, hands the rest to `full`.
pub struct Engine {
    proxy: Proxy,
    full: Arc<HttpProxy<Proxy>>,
}

impl Engine {
    pub fn new(proxy: Proxy, full: HttpProxy<Proxy>) -> Self {
        Engine {
            proxy,
            full: Arc::new(full),
        }
    }
}

#[async_trait]
impl ServerApp for Engine {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.full.process_new(stream, shutdown).await;
        }
        let mut c = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            up_buf: BytesMut::new(),
            req_out: Vec::new(),
            resp_out: Vec::new(),
            client_ip: None,
            served: 0,
        };
        let mut shutdown = shutdown.clone();
        loop {
            match self.serve_one(&mut c, &mut shutdown).await {
                Next::KeepAlive => c.served += 1,
                Next::Close => return None,
                Next::HandOff => return self.hand_off(c, &shutdown).await,
            }
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.full).await
    }
}

/// One client connection on the engine.
struct Conn {
    stream: Stream,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes read from the upstream.
    up_buf: BytesMut,
    /// The upstream request head (and the part of the body that came with it).
    req_out: Vec<u8>,
    /// The response head (and the part of the body that came with it).
    resp_out: Vec<u8>,
    /// The client's address, looked up (`getpeername`) the first time a decision needs it.
    client_ip: Option<Option<IpAddr>>,
    served: u32,
}

enum Next {
    KeepAlive,
    Close,
    HandOff,
}

/// What the engine needs of a request after its head is parsed.
struct Request {
    /// Head length in `buf`.
    head_len: usize,
    body_len: u64,
    /// Body bytes still to be read from the client.
    body_unread: u64,
    head: bool,
    idempotent: bool,
    client_close: bool,
    /// Method and path for the access log, when there is one.
    logged: Option<(http::Method, String)>,
}

/// Why an upstream exchange failed.
struct Failed {
    kind: UpstreamError,
    /// Nothing reached the client yet and retrying on a fresh connection is safe.
    retry: bool,
}

impl Engine {
    /// Reads, decides and proxies one request.
    async fn serve_one(&self, c: &mut Conn, shutdown: &mut ShutdownWatch) -> Next {
        match read_head(c, shutdown).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return Next::Close,
            HeadRead::HandOff => return Next::HandOff,
        }
        let mut ctx = Ctx::default();
        let snapshot = self.proxy.state.load();
        if c.client_ip.is_none() && snapshot.table.reads_client_ip() {
            c.client_ip = Some(
                c.stream
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            );
        }
        let Some((req, outcome)) = self.parse_request(c, &snapshot, &mut ctx) else {
            return Next::HandOff;
        };
        let mut req = req;
        c.buf.advance(req.head_len);
        // The part of the body that came with the head goes out with the upstream head.
        let in_buf = (c.buf.len() as u64).min(req.body_len) as usize;
        if matches!(outcome, Outcome::Routed(_)) {
            c.req_out.extend_from_slice(&c.buf[..in_buf]);
        }
        c.buf.advance(in_buf);
        req.body_unread = req.body_len - in_buf as u64;
        let decision = match outcome {
            Outcome::Routed(d) => d,
            Outcome::NoRoute => {
                ctx.rejected = Some(Rejection::NoRoute);
                return self.answer(c, ctx, req, shutdown, 404, "no_route").await;
            }
            Outcome::ClientRequired { route } => {
                ctx.rejected = Some(Rejection::ClientRequired);
                ctx.route = Some(route);
                ctx.snapshot = Some(snapshot);
                return self
                    .answer(c, ctx, req, shutdown, 401, "client_required")
                    .await;
            }
        };
        ctx.decision = Some(decision);
        ctx.route = Some(decision.route);
        ctx.snapshot = Some(snapshot.clone());
        self.proxy_request(c, ctx, req, &snapshot, decision, shutdown)
            .await
    }

    /// Parses the request head in `c.buf` and decides where it goes; `None` when the request is for
    /// Pingora's pipeline. Not async, so the field array lives on the stack, never in a future.
    fn parse_request(
        &self,
        c: &mut Conn,
        snapshot: &Snapshot,
        ctx: &mut Ctx,
    ) -> Option<(Request, Outcome)> {
        // Left uninitialised: httparse writes only the fields it finds.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(&c.buf, &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        };
        let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version)
        else {
            return None;
        };
        if method == "CONNECT" || !target.starts_with('/') {
            return None;
        }
        let h = RequestFields::sort(parsed.headers)?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        ctx.request_id = request_id::settle(h.request_id);
        let view = RequestView {
            method,
            host: h.host,
            path,
            query,
            headers: Headers::Raw(&parsed.headers[..h.kept]),
            client_ip: c.client_ip.flatten(),
        };
        let outcome = release::decide(&snapshot.table, &view, &mut random_bucket);
        if let Outcome::Routed(d) = &outcome {
            let mirrored = snapshot
                .table
                .route(d.route)
                .is_some_and(|r| r.mirror.is_some());
            if mirrored {
                return None;
            }
            write_request_head(
                &mut c.req_out,
                method,
                target,
                &parsed.headers[..h.kept],
                &ctx.request_id,
                d.client.map(|id| snapshot.table.client_name(id)),
            );
        }
        let req = Request {
            head_len,
            body_len: h.length.unwrap_or(0),
            body_unread: 0,
            head: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            client_close: h.close,
            logged: self.proxy.access_log.as_ref().map(|_| {
                (
                    http::Method::from_bytes(method.as_bytes()).unwrap_or_default(),
                    path.to_string(),
                )
            }),
        };
        Some((req, outcome))
    }

    /// Proxies a routed request: connect (retrying other backends), send, relay the response.
    async fn proxy_request(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        mut req: Request,
        snapshot: &Snapshot,
        decision: Decision,
        shutdown: &ShutdownWatch,
    ) -> Next {
        let replayable = req.body_unread == 0 && req.idempotent;

        let mut picked = pick_backend(snapshot, &decision, &[]);
        let mut fresh_only = false;
        let (mut up, addr, timeouts) = loop {
            let Some((target, backend)) = picked.take() else {
                self.proxy
                    .record_upstream_error(&mut ctx, UpstreamError::NoHealthyUpstream);
                let answer = if ctx.failed.is_empty() {
                    "no_healthy_upstream"
                } else {
                    "upstream_unavailable"
                };
                return self.answer(c, ctx, req, shutdown, 502, answer).await;
            };
            ctx.target = Some(target);
            let (Some(pool), Some(addr)) = (snapshot.pools.get(target), backend.addr.as_inet())
            else {
                return self
                    .answer(c, ctx, req, shutdown, 500, "internal_error")
                    .await;
            };
            let addr = *addr;
            ctx.backend = Some(backend);
            let timeouts = pool.timeouts();
            let idle = timeouts.idle.unwrap_or(pool::DEFAULT_IDLE);
            let pooled = if fresh_only {
                None
            } else {
                pool::take(addr, idle)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match connect(addr, timeouts.connect).await {
                    Ok(up) => up,
                    Err(kind) => {
                        self.proxy.record_upstream_error(&mut ctx, kind);
                        ctx.failed.push(addr);
                        ctx.backend = None;
                        if ctx.failed.len() < pool.backend_count() {
                            picked = pick_backend(snapshot, &decision, &ctx.failed);
                            continue;
                        }
                        let (code, answer) = match kind {
                            UpstreamError::ConnectTimeout => (504, "upstream_timeout"),
                            _ => (502, "upstream_unavailable"),
                        };
                        return self.answer(c, ctx, req, shutdown, code, answer).await;
                    }
                },
            };
            let ready = Instant::now();
            if let Some(series) = self.proxy.series(&ctx, target) {
                series.record_connection(reused);
            }
            let sent = send_request(c, &mut up, &mut req.body_unread, timeouts.write).await;
            let head = match sent {
                Ok(()) => read_response_head(c, &mut up, timeouts.read).await,
                Err(e) => Err(e),
            };
            match head {
                Ok(()) => {
                    if let Some(series) = self.proxy.series(&ctx, target) {
                        series.record_ttfb(ready.elapsed().as_micros() as u64);
                    }
                    break (up, addr, timeouts);
                }
                Err(Some(f)) => {
                    self.proxy.record_upstream_error(&mut ctx, f.kind);
                    if f.retry && reused && replayable && !fresh_only {
                        // A kept-alive connection the upstream had closed: once more, on a new one.
                        fresh_only = true;
                        picked = ctx.backend.take().map(|b| (target, b));
                        continue;
                    }
                    let (code, answer) = match f.kind {
                        UpstreamError::Timeout => (504, "upstream_timeout"),
                        _ => (502, "upstream_unavailable"),
                    };
                    return self.answer(c, ctx, req, shutdown, code, answer).await;
                }
                Err(None) => {
                    // The client went away while its body was being sent.
                    self.proxy
                        .record(&mut ctx, 499, || req.logged.take().unwrap_or_default());
                    return Next::Close;
                }
            }
        };

        // `up_buf` holds a complete, final response head.
        let close = req.client_close || *shutdown.borrow();
        let head =
            match write_response_head(&mut c.resp_out, &c.up_buf, req.head, &ctx.request_id, close)
            {
                Ok(head) => head,
                Err(kind) => {
                    self.proxy.record_upstream_error(&mut ctx, kind);
                    return self
                        .answer(c, ctx, req, shutdown, 502, "upstream_unavailable")
                        .await;
                }
            };
        let relay = relay_response(c, &mut up, head, close, timeouts.read).await;
        let status = relay.status;
        if let Some(kind) = relay.upstream_error {
            self.proxy.record_upstream_error(&mut ctx, kind);
        }
        if relay.upstream_reusable {
            pool::put(addr, up);
        }
        self.proxy
            .record(&mut ctx, status, || req.logged.take().unwrap_or_default());
        if relay.client_ok && !relay.client_close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// A response Switchyard makes itself: a small JSON error.
    async fn answer(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        mut req: Request,
        shutdown: &ShutdownWatch,
        status: u16,
        error: &str,
    ) -> Next {
        // A body still in flight is not read: the connection closes after the answer.
        let close = req.client_close || req.body_unread > 0 || *shutdown.borrow();
        let body = format!(r#"{{"error":"{error}"}}"#);
        let out = &mut c.resp_out;
        out.clear();
        status_line(out, status, reason(status));
        out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        field(out, REQUEST_ID_HEADER.as_bytes(), ctx.request_id.as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !req.head {
            out.extend_from_slice(body.as_bytes());
        }
        let sent = write_client(&mut c.stream, &c.resp_out).await;
        let status = if sent { status } else { 499 };
        self.proxy
            .record(&mut ctx, status, || req.logged.take().unwrap_or_default());
        if sent && req.body_unread > 0 {
            linger(c, req.body_unread).await;
        }
        if sent && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Hands the connection, with the bytes already read, to Pingora's pipeline for good.
    async fn hand_off(&self, c: Conn, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut session = ServerSession::new_http1(c.stream);
        if !c.buf.is_empty() {
            session.set_pipelined_prefix(c.buf);
        }
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE.as_secs())
        });
        let mut result = self.full.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.full.process_new_http(session, shutdown).await;
        }
        None
    }
}

/// The request fields the engine looks at, found in one pass. Internal `X-Switchyard-*` fields are
/// moved out of the kept range (`..kept`), so neither the decision nor the upstream sees them.
struct RequestFields<'a> {
    kept: usize,
    host: &'a str,
    request_id: Option<&'a [u8]>,
    length: Option<u64>,
    close: bool,
}

impl<'a> RequestFields<'a> {
    /// `None` when the request has to go to Pingora's pipeline.
    fn sort(fields: &mut [httparse::Header<'a>]) -> Option<RequestFields<'a>> {
        let mut f = RequestFields {
            kept: 0,
            host: "",
            request_id: None,
            length: None,
            close: false,
        };
        for i in 0..fields.len() {
            let h = fields[i];
            let name = h.name.as_bytes();
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    f.host = std::str::from_utf8(h.value).ok()?;
                }
                6 if name.eq_ignore_ascii_case(b"expect") => return None,
                7 if name.eq_ignore_ascii_case(b"upgrade") => return None,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    f.close |= h
                        .value
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                }
                12 if name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_bytes()) => {
                    f.request_id = Some(h.value);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let n = body::parse_length(h.value)?;
                    if f.length.is_some_and(|l| l != n) {
                        return None;
                    }
                    f.length = Some(n);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return None,
                n if n > super::HEADER_PREFIX.len()
                    && name[..super::HEADER_PREFIX.len()]
                        .eq_ignore_ascii_case(super::HEADER_PREFIX.as_bytes()) =>
                {
                    continue;
                }
                _ => {}
            }
            fields[f.kept] = h;
            f.kept += 1;
        }
        Some(f)
    }
}

/// Request fields that are the proxy's own business and never forwarded (Pingora strips the same).
fn hop_by_hop_request(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 10] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Response fields the proxy sets itself or that describe only the upstream connection.
fn hop_by_hop_response(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"trailer",
        b"x-request-id",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (status / 100 % 10) as u8;
    code[1] = b'0' + (status / 10 % 10) as u8;
    code[2] = b'0' + (status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The request head as the upstream gets it: the client's fields without hop-by-hop ones, the
/// settled request id, and the identified client.
fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    request_id: &str,
    client: Option<&str>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in fields {
        let name = h.name.as_bytes();
        if hop_by_hop_request(name) || name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_bytes()) {
            continue;
        }
        field(out, name, h.value);
    }
    field(out, REQUEST_ID_HEADER.as_bytes(), request_id.as_bytes());
    if let Some(client) = client {
        field(out, CLIENT_HEADER.as_bytes(), client.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

enum HeadRead {
    Complete,
    Closed,
    HandOff,
}

/// Whether `buf` holds a whole head (up to its empty line; a bare LF ends lines too).
fn head_complete(buf: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let at = i + p + 1;
        match buf.get(at..) {
            Some([b'\n', ..]) | Some([b'\r', b'\n', ..]) => return true,
            _ => i = at,
        }
    }
    false
}

/// Reads until `c.buf` holds a whole request head. An idle connection waits up to [`KEEPALIVE`]
/// for its next request and closes at shutdown; one accepted just before shutdown still gets
/// [`FIRST_REQUEST_WINDOW`] for its first.
async fn read_head(c: &mut Conn, shutdown: &mut ShutdownWatch) -> HeadRead {
    loop {
        if !c.buf.is_empty() && head_complete(&c.buf) {
            return HeadRead::Complete;
        }
        if c.buf.len() > MAX_HEAD {
            return HeadRead::HandOff;
        }
        if c.buf.capacity() - c.buf.len() < 1024 {
            c.buf.reserve(4096);
        }
        let idle = c.buf.is_empty();
        let read = if !idle {
            fast_timeout(KEEPALIVE, c.stream.read_buf(&mut c.buf)).await
        } else if *shutdown.borrow() {
            if c.served > 0 {
                return HeadRead::Closed;
            }
            fast_timeout(FIRST_REQUEST_WINDOW, c.stream.read_buf(&mut c.buf)).await
        } else {
            let served = c.served;
            let stream = &mut c.stream;
            let buf = &mut c.buf;
            let wait = fast_timeout(KEEPALIVE, stream.read_buf(buf));
            tokio::pin!(wait);
            tokio::select! {
                r = &mut wait => r,
                changed = shutdown.changed() => {
                    if changed.is_ok() && served > 0 {
                        return HeadRead::Closed;
                    }
                    fast_timeout(FIRST_REQUEST_WINDOW, wait).await.unwrap_or_else(Err)
                }
            }
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return HeadRead::Closed,
        }
    }
}

/// Opens a new upstream connection.
async fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, UpstreamError> {
    let conn = match timeout {
        Some(t) => match fast_timeout(t, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => return Err(UpstreamError::ConnectTimeout),
        },
        None => TcpStream::connect(addr).await,
    };
    let conn = conn.map_err(|_| UpstreamError::ConnectFailure)?;
    // Heads go out in one write each; small ones must not wait for an ACK.
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

/// Runs `io` under an optional timeout; a timeout reads as `TimedOut`.
async fn within<T>(
    timeout: Option<Duration>,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match timeout {
        Some(t) => fast_timeout(t, io)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => io.await,
    }
}

fn upstream_failure(e: &std::io::Error, nothing_received: bool) -> Failed {
    use std::io::ErrorKind::*;
    let kind = match e.kind() {
        TimedOut => UpstreamError::Timeout,
        _ => UpstreamError::Closed,
    };
    Failed {
        kind,
        retry: nothing_received && kind == UpstreamError::Closed,
    }
}

/// Sends the upstream head (with the body part read so far), then the rest of the body from the
/// client. `Err(None)`: the client went away.
async fn send_request(
    c: &mut Conn,
    up: &mut TcpStream,
    body_left: &mut u64,
    timeout: Option<Duration>,
) -> Result<(), Option<Failed>> {
    within(timeout, up.write_all(&c.req_out))
        .await
        .map_err(|e| Some(upstream_failure(&e, true)))?;
    while *body_left > 0 {
        if c.buf.is_empty() {
            c.buf.reserve(READ_CHUNK);
            match c.stream.read_buf(&mut c.buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(None),
            }
        }
        let n = (c.buf.len() as u64).min(*body_left) as usize;
        within(timeout, up.write_all(&c.buf[..n]))
            .await
            .map_err(|e| Some(upstream_failure(&e, false)))?;
        c.buf.advance(n);
        *body_left -= n as u64;
    }
    Ok(())
}

/// Reads until `c.up_buf` holds a whole response head, relaying 1xx interim responses (other than
/// 101) to the client as they come.
async fn read_response_head(
    c: &mut Conn,
    up: &mut TcpStream,
    timeout: Option<Duration>,
) -> Result<(), Option<Failed>> {
    c.up_buf.clear();
    let mut received = false;
    loop {
        if head_complete(&c.up_buf) {
            // A final response is parsed once, by `write_response_head`; an interim one is found
            // by its status line.
            if !matches!(
                c.up_buf.get(..10),
                Some([b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', b'1'])
            ) {
                return Ok(());
            }
            // Parsed in a block of its own: the field array must not live across the write below,
            // or it would be part of every request's future.
            let interim = {
                let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut resp,
                    &c.up_buf,
                    &mut fields,
                ) {
                    Ok(httparse::Status::Complete(n)) if resp.code != Some(101) => Some(n),
                    _ => None,
                }
            };
            let Some(n) = interim else {
                return Err(Some(invalid()));
            };
            if !write_client(&mut c.stream, &c.up_buf[..n]).await {
                return Err(None);
            }
            c.up_buf.advance(n);
            continue;
        }
        if c.up_buf.len() > MAX_HEAD {
            return Err(Some(invalid()));
        }
        c.up_buf.reserve(READ_CHUNK);
        match within(timeout, up.read_buf(&mut c.up_buf)).await {
            Ok(0) => {
                return Err(Some(Failed {
                    kind: UpstreamError::Closed,
                    retry: !received,
                }))
            }
            Ok(_) => received = true,
            Err(e) => return Err(Some(upstream_failure(&e, !received))),
        }
    }
}

fn invalid() -> Failed {
    Failed {
        kind: UpstreamError::InvalidResponse,
        retry: false,
    }
}

/// How relaying a response went.
struct Relayed {
    status: u16,
    upstream_error: Option<UpstreamError>,
    upstream_reusable: bool,
    client_ok: bool,
    client_close: bool,
}

/// The final response head as the client gets it, and how its body is framed.
struct ResponseHead {
    status: u16,
    head_len: usize,
    framing: Framing,
    upstream_keepalive: bool,
}

fn write_response_head(
    out: &mut Vec<u8>,
    up_buf: &[u8],
    head_request: bool,
    request_id: &str,
    close: bool,
) -> Result<ResponseHead, UpstreamError> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        up_buf,
        &mut fields,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(UpstreamError::InvalidResponse),
    };
    let status = resp.code.unwrap_or(0);
    let mut upstream_keepalive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = None;
    out.clear();
    status_line(out, status, resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            upstream_keepalive &= !h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = body::parse_length(h.value).ok_or(UpstreamError::InvalidResponse)?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::InvalidResponse);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        if !hop_by_hop_response(name) {
            field(out, name, h.value);
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if chunked.is_some() && length.is_some() {
        // Both framings: the connection cannot be trusted with another request.
        upstream_keepalive = false;
    }
    field(out, REQUEST_ID_HEADER.as_bytes(), request_id.as_bytes());
    if close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHead {
        status,
        head_len,
        framing,
        upstream_keepalive: upstream_keepalive && framing != Framing::UntilClose,
    })
}

/// Relays the response whose head is in `c.resp_out` (and whose bytes are in `c.up_buf`), and its
/// body, to the client.
async fn relay_response(
    c: &mut Conn,
    up: &mut TcpStream,
    head: ResponseHead,
    close: bool,
    timeout: Option<Duration>,
) -> Relayed {
    let mut relayed = Relayed {
        status: head.status,
        upstream_error: None,
        upstream_reusable: false,
        client_ok: true,
        client_close: close || head.framing == Framing::UntilClose,
    };
    c.up_buf.advance(head.head_len);
    let mut chunked = Chunked::default();
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    // What of the body came with the head goes out with it, in one write.
    let mut done = body_part(
        &mut c.resp_out,
        &c.up_buf,
        head.framing,
        &mut left,
        &mut chunked,
    );
    loop {
        let extra = match done {
            Ok(Some(used)) => c.up_buf.len() > used,
            Ok(None) => false,
            Err(_) => {
                relayed.upstream_error = Some(UpstreamError::InvalidResponse);
                false
            }
        };
        if !write_client(&mut c.stream, &c.resp_out).await {
            relayed.client_ok = false;
            return relayed;
        }
        if !matches!(done, Ok(None)) {
            relayed.upstream_reusable = done.is_ok() && !extra && head.upstream_keepalive;
            break;
        }
        c.up_buf.clear();
        c.up_buf.reserve(READ_CHUNK);
        match within(timeout, up.read_buf(&mut c.up_buf)).await {
            Ok(0) if head.framing == Framing::UntilClose => break,
            Ok(0) => {
                relayed.upstream_error = Some(UpstreamError::Closed);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                relayed.upstream_error = Some(upstream_failure(&e, false).kind);
                break;
            }
        }
        c.resp_out.clear();
        done = body_part(
            &mut c.resp_out,
            &c.up_buf,
            head.framing,
            &mut left,
            &mut chunked,
        );
    }
    if relayed.upstream_error.is_some() {
        // The client has a head and part of a body: only closing tells it the body is cut short.
        relayed.client_close = true;
    }
    relayed
}

/// Appends to `out` the part of `data` that belongs to the body. `Ok(Some(used))` once the body is
/// complete, with how many bytes of `data` it took.
fn body_part(
    out: &mut Vec<u8>,
    data: &[u8],
    framing: Framing,
    left: &mut u64,
    chunked: &mut Chunked,
) -> Result<Option<usize>, body::BadChunk> {
    Ok(match framing {
        Framing::Empty => Some(0),
        Framing::Length(_) => {
            let n = (data.len() as u64).min(*left) as usize;
            out.extend_from_slice(&data[..n]);
            *left -= n as u64;
            (*left == 0).then_some(n)
        }
        Framing::Chunked => {
            let n = chunked.advance(data)?;
            out.extend_from_slice(&data[..n]);
            chunked.done().then_some(n)
        }
        Framing::UntilClose => {
            out.extend_from_slice(data);
            None
        }
    })
}

/// Closes our side of a connection whose request body is still arriving, then reads and discards
/// the rest of it for a while: closing with unread bytes would reset the connection, and a reset can
/// destroy the answer before the client has read it. Bounded by the body's length, [`LINGER_IDLE`]
/// without data and [`LINGER_TOTAL`] in all.
async fn linger(c: &mut Conn, mut unread: u64) {
    const LINGER_IDLE: Duration = Duration::from_secs(1);
    const LINGER_TOTAL: Duration = Duration::from_secs(5);
    if c.stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER_TOTAL;
    // The connection's own buffer is the sink: an array here would be part of every request's
    // future.
    while unread > 0 && Instant::now() < until {
        c.buf.clear();
        c.buf.reserve(READ_CHUNK);
        match fast_timeout(LINGER_IDLE, c.stream.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => unread = unread.saturating_sub(n as u64),
            _ => return,
        }
    }
    c.buf.clear();
}

/// Writes all of `data` to the client; false when the client is gone.
async fn write_client(stream: &mut Stream, data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    stream.write_all(data).await.is_ok() && stream.flush().await.is_ok()
}
