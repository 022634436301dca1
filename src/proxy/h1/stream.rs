//! HTTP/2 streams on the engine: a request that came over HTTP/2 (h2c, or TLS with ALPN h2) to an
//! HTTP/1.1 upstream, proxied by the engine's own exchange (its per-thread upstream pool, one write
//! of the upstream head, the response head parsed in place) instead of Pingora's pipeline.
//!
//! The front door's HTTP/2 connection loop ([`crate::front`]) accepts each stream through Pingora's
//! HTTP/2 session (the `h2` crate, which validates the request) and offers it here first. The engine
//! serves the common case: a routed request whose upstream, and the baseline it may fall back to,
//! speak plain HTTP/1.1, and that is not mirrored. Everything else (gRPC, `CONNECT`, `Expect`,
//! a request the shared rules refuse, an HTTP/2 or TLS upstream, a mirrored request) goes to Pingora's
//! pipeline, with the decision made here, so that a request is never decided twice.
//!
//! Over HTTP/2 the request body is framed by the stream: an upstream gets the client's
//! `Content-Length` when it sent one, else a chunked body. The response body is passed on as DATA
//! frames, its HTTP/1 framing removed; interim 1xx responses are not passed on (an HTTP/2 stream has
//! one response head here, as on Pingora's pipeline).

use super::body::Framing;
use super::exchange::{
    connect_for, read_head, record_ttfb, upstream_failure, within, BodyReader, Connected, Failed,
};
use super::head::{field, parse_response_head, Part};
use super::{pool, Engine};
use crate::front::StreamServing;
use crate::metrics::UpstreamError;
use crate::policy::headers::{self, hop_by_hop_request};
use crate::policy::retry;
use crate::proxy::access_log::RequestLog;
use crate::proxy::{
    check_request, decide, grpc, logged_request, pick_backend, request_id, strip_internal_headers,
    Answer, Ctx, Decided, REQUEST_ID_HEADER,
};
use crate::release::{Decision, Outcome};
use crate::state::Snapshot;
use bytes::{Buf, Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v2::server::HttpSession;
use pingora::time::fast_timeout::fast_timeout;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

impl Engine {
    /// Takes an HTTP/2 stream the engine serves, or gives it back for Pingora's pipeline (moved, not
    /// boxed: a stream taken costs no allocation for it).
    #[allow(clippy::result_large_err)]
    pub(super) fn take_stream(
        self: &Arc<Self>,
        mut s: HttpSession,
    ) -> Result<StreamServing, HttpSession> {
        if !self.on || !engine_speaks(s.req_header()) {
            return Err(s);
        }
        let started = Instant::now();
        let snapshot = self.proxy.snapshot();
        let client_ip = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let req = s.req_header_mut();
        strip_internal_headers(req);
        let route_path = match check_request(req, self.proxy.limits().max_head_bytes) {
            Ok(checked) => {
                if let Some(uri) = checked.uri {
                    req.set_uri(uri);
                }
                checked.route_path
            }
            // The pipeline refuses it, by the same rules.
            Err(_) => return Err(s),
        };
        let (outcome, mirrored) = decide(req, client_ip, &snapshot, route_path.as_deref());
        let decision = match outcome {
            Outcome::Routed(d) if !mirrored && plain_http1(&snapshot, &d) => d,
            outcome => {
                req.extensions_mut().insert(Decided {
                    snapshot,
                    outcome,
                    mirrored,
                });
                return Err(s);
            }
        };
        let engine = self.clone();
        Ok(Box::pin(async move {
            engine.serve_stream(s, started, decision, snapshot).await
        }))
    }

    /// Serves a routed stream: the upstream exchange, the response, the count and the access log.
    async fn serve_stream(
        &self,
        mut s: HttpSession,
        started: Instant,
        decision: Decision,
        snapshot: Arc<Snapshot>,
    ) {
        let limits = self.proxy.limits();
        s.set_write_timeout(Some(limits.send_timeout));
        let mut ctx = Ctx::starting_at(started);
        ctx.protocol = "HTTP/2.0";
        ctx.request_id = request_id::settle(
            s.req_header()
                .headers
                .get(REQUEST_ID_HEADER)
                .map(|v| v.as_bytes()),
        );
        ctx.decision = Some(decision);
        ctx.route = Some(decision.route);
        ctx.snapshot = Some(snapshot.clone());
        let client = decision.client.map(|id| snapshot.table.client_name(id));
        let framing = request_framing(&s);
        let head = upstream_head(s.req_header(), &ctx.request_id, client, framing);
        let status = match self
            .stream_exchange(&mut s, &mut ctx, &snapshot, &decision, &head, framing)
            .await
        {
            Ok(up) => relay_to_stream(&self.proxy, &mut s, &mut ctx, up).await,
            Err(Some(answer)) => answer_stream(&mut s, &mut ctx, answer).await,
            Err(None) => 499,
        };
        ctx.request_bytes = s.body_bytes_read() as u64;
        ctx.response_bytes = s.body_bytes_sent() as u64;
        let logs = self.proxy.logs_requests();
        self.proxy.record(&mut ctx, status, || {
            if logs {
                stream_log(&s)
            } else {
                RequestLog::default()
            }
        });
    }

    /// Connects (another backend after a connect failure; a new connection once after a kept-alive
    /// one the upstream had closed, for a request without a body), sends the request and its body,
    /// and reads the final response head. `Err(None)`: the client went away.
    async fn stream_exchange(
        &self,
        s: &mut HttpSession,
        ctx: &mut Ctx,
        snapshot: &Snapshot,
        decision: &Decision,
        head: &[u8],
        framing: BodyFraming,
    ) -> Result<Upstream, Option<Answer>> {
        let mut picked = pick_backend(snapshot, decision, &[]);
        let mut fresh_only = false;
        let idempotent = s.req_header().method.is_idempotent();
        let head_request = s.req_header().method == http::Method::HEAD;
        loop {
            let connected = connect_for(
                &self.proxy,
                ctx,
                snapshot,
                decision,
                &mut picked,
                fresh_only,
            )
            .await;
            let Connected {
                mut up,
                addr,
                target,
                timeouts,
                reused,
                ready,
            } = connected.map_err(Some)?;
            let limits = self.proxy.limits();
            let sent = send_stream_body(
                s,
                &mut up,
                head,
                framing,
                timeouts.write,
                limits.body_timeout,
            )
            .await;
            let mut up_buf = BytesMut::new();
            let read = match sent {
                Ok(()) => read_final_head(&mut up_buf, &mut up, timeouts.read).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(()) => {
                    record_ttfb(&self.proxy, ctx, target, ready);
                    return Ok(Upstream {
                        conn: up,
                        addr,
                        read_timeout: timeouts.read,
                        buf: up_buf,
                        head_request,
                    });
                }
                Err(Some(f)) => {
                    self.proxy.record_upstream_error(ctx, f.kind);
                    if reused
                        && retry::after_reused_connection_failure(
                            f.retry,
                            idempotent,
                            framing == BodyFraming::None,
                            fresh_only,
                        )
                    {
                        fresh_only = true;
                        picked = ctx.backend.take().map(|b| (target, b));
                        continue;
                    }
                    return Err(Some(Answer::for_upstream(f.kind)));
                }
                Err(None) => return Err(None),
            }
        }
    }
}

/// Whether the engine may serve a stream with this head at all: not gRPC (its calls go to HTTP/2
/// upstreams, and their errors are gRPC statuses), not `CONNECT`, no `Expect`.
fn engine_speaks(req: &RequestHeader) -> bool {
    !grpc::is_grpc(req)
        && req.method != http::Method::CONNECT
        && req.extensions.get::<h2::ext::Protocol>().is_none()
        && !req.headers.contains_key(http::header::EXPECT)
}

/// Whether the decided target and the baseline it may fall back to speak plain HTTP/1.1.
fn plain_http1(snapshot: &Snapshot, d: &Decision) -> bool {
    if snapshot.pools.all_plain_http1() {
        return true;
    }
    let plain = |id| snapshot.pools.get(id).is_some_and(|p| p.plain_http1());
    plain(d.target)
        && snapshot
            .table
            .route(d.route)
            .is_none_or(|r| plain(r.baseline()))
}

/// How the request body goes upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// The stream ended with its head.
    None,
    /// With the client's `Content-Length`.
    Length(u64),
    /// Chunked: the client sent no length.
    Chunked,
}

fn request_framing(s: &HttpSession) -> BodyFraming {
    if s.is_body_done() {
        return BodyFraming::None;
    }
    let length = s
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Chunked,
    }
}

/// The HTTP/1.1 request head the upstream gets: the request line, `Host` (the client's, or the
/// stream's `:authority`), the client's fields without hop-by-hop ones and with its cookies in one
/// field (RFC 9113 §8.2.3), the body's framing, and the settled request id and identified client.
fn upstream_head(
    req: &RequestHeader,
    request_id: &str,
    client: Option<&str>,
    framing: BodyFraming,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(authority) = req.uri.authority() {
            field(&mut out, b"host", authority.as_str().as_bytes());
        }
    }
    let mut cookies = req.headers.get_all(http::header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &req.headers {
        let n = name.as_str().as_bytes();
        if hop_by_hop_request(n)
            || *name == http::header::COOKIE
            || *name == http::header::CONTENT_LENGTH
            || n == REQUEST_ID_HEADER.as_bytes()
        {
            continue;
        }
        field(&mut out, n, value.as_bytes());
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            // Writing into a Vec cannot fail.
            let _ = std::io::Write::write_fmt(&mut out, format_args!("content-length: {n}\r\n"));
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    for (name, value) in headers::added_upstream(request_id, client, false) {
        field(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends the upstream head, then the request body as the client's DATA frames come (each within
/// `body_timeout`). `Err(None)`: the client went away or broke its stream.
async fn send_stream_body(
    s: &mut HttpSession,
    up: &mut TcpStream,
    head: &[u8],
    framing: BodyFraming,
    timeout: Option<Duration>,
    body_timeout: Duration,
) -> Result<(), Option<Failed>> {
    within(timeout, up.write_all(head))
        .await
        .map_err(|e| Some(upstream_failure(&e, true)))?;
    if framing == BodyFraming::None {
        return Ok(());
    }
    let chunked = framing == BodyFraming::Chunked;
    loop {
        let data = match fast_timeout(body_timeout, s.read_body_bytes()).await {
            Ok(Ok(data)) => data,
            _ => return Err(None),
        };
        let Some(data) = data else {
            break;
        };
        if data.is_empty() {
            continue;
        }
        let write = async {
            if chunked {
                let size = format!("{:x}\r\n", data.len());
                up.write_all(size.as_bytes()).await?;
                up.write_all(&data).await?;
                up.write_all(b"\r\n").await
            } else {
                up.write_all(&data).await
            }
        };
        within(timeout, write)
            .await
            .map_err(|e| Some(upstream_failure(&e, false)))?;
    }
    if chunked {
        within(timeout, up.write_all(b"0\r\n\r\n"))
            .await
            .map_err(|e| Some(upstream_failure(&e, false)))?;
    }
    Ok(())
}

/// Reads until `up_buf` holds the final response head, dropping interim 1xx responses.
async fn read_final_head(
    up_buf: &mut BytesMut,
    up: &mut TcpStream,
    timeout: Option<Duration>,
) -> Result<(), Option<Failed>> {
    let mut received = false;
    loop {
        read_head(up_buf, up, timeout, &mut received).await?;
        match super::exchange::interim_len(up_buf) {
            None => return Ok(()),
            Some(Ok(n)) => up_buf.advance(n),
            Some(Err(())) => return Err(Some(super::exchange::invalid())),
        }
    }
}

/// An upstream connection whose final response head is at the start of `buf`.
struct Upstream {
    conn: TcpStream,
    addr: SocketAddr,
    read_timeout: Option<Duration>,
    buf: BytesMut,
    head_request: bool,
}

/// Passes the upstream's response to the client's stream; returns the status to count (the
/// upstream's, or 502 for a head that does not parse).
async fn relay_to_stream(
    proxy: &crate::proxy::Proxy,
    s: &mut HttpSession,
    ctx: &mut Ctx,
    mut up: Upstream,
) -> u16 {
    let resp = stream_response(&up.buf, up.head_request, &ctx.request_id);
    let (resp, head) = match resp {
        Ok(r) => r,
        Err(kind) => {
            proxy.record_upstream_error(ctx, kind);
            return answer_stream(s, ctx, Answer::for_upstream(kind)).await;
        }
    };
    let status = head.status;
    up.buf.advance(head.head_len);
    let empty = head.framing == Framing::Empty;
    if s.write_response_header(Box::new(resp), empty).is_err() {
        return status;
    }
    if empty {
        if up.buf.is_empty() && head.upstream_keepalive {
            pool::put(up.addr, up.conn);
        }
        return status;
    }
    match relay_body(s, &mut up, head.framing).await {
        Ok(reusable) => {
            if reusable && head.upstream_keepalive {
                pool::put(up.addr, up.conn);
            }
        }
        Err(Some(kind)) => {
            proxy.record_upstream_error(ctx, kind);
            // The client has a head and part of a body: a reset tells it the body is cut short. A
            // reset drops what of the stream is still queued, so the connection's task (on this
            // thread, woken by the queued frames) first gets a turn to send the head and the body.
            tokio::task::yield_now().await;
            s.shutdown();
        }
        Err(None) => {}
    }
    status
}

/// The response head as the client's stream gets it, and how the upstream frames its body.
fn stream_response(
    up_buf: &[u8],
    head_request: bool,
    request_id: &str,
) -> Result<(ResponseHeader, super::head::ResponseHead), UpstreamError> {
    let mut resp = None;
    let mut bad = false;
    let head = parse_response_head(up_buf, head_request, |part| match part {
        Part::Status(status, _) => resp = ResponseHeader::build_no_case(status, Some(16)).ok(),
        Part::Field(name, value) => {
            if let Some(r) = resp.as_mut() {
                bad |= r.append_header(name.to_string(), value).is_err();
            }
        }
    })?;
    let mut resp = resp.ok_or(UpstreamError::InvalidResponse)?;
    if bad || head.status < 200 {
        return Err(UpstreamError::InvalidResponse);
    }
    resp.insert_header(REQUEST_ID_HEADER, request_id)
        .map_err(|_| UpstreamError::InvalidResponse)?;
    Ok((resp, head))
}

/// Relays the response body as DATA frames. `Ok(reusable)` once it is complete; `Err(Some(kind))`
/// when the upstream failed it, `Err(None)` when the client went away.
async fn relay_body(
    s: &mut HttpSession,
    up: &mut Upstream,
    framing: Framing,
) -> Result<bool, Option<UpstreamError>> {
    let mut body = BodyReader::new(framing);
    loop {
        let mut data = BytesMut::new();
        let done = body
            .part(&up.buf, None, &mut |d| data.extend_from_slice(d))
            .map_err(|_| Some(UpstreamError::InvalidResponse))?;
        if let Some(used) = done {
            s.write_body(data.freeze(), true).await.map_err(|_| None)?;
            return Ok(up.buf.len() == used);
        }
        if !data.is_empty() {
            s.write_body(data.freeze(), false).await.map_err(|_| None)?;
        }
        up.buf.clear();
        up.buf.reserve(super::READ_CHUNK);
        match within(up.read_timeout, up.conn.read_buf(&mut up.buf)).await {
            Ok(0) if framing == Framing::UntilClose => {
                s.finish().map_err(|_| None)?;
                return Ok(false);
            }
            Ok(0) => return Err(Some(UpstreamError::Closed)),
            Ok(_) => {}
            Err(e) => return Err(Some(upstream_failure(&e, false).kind)),
        }
    }
}

/// One of Switchyard's own answers on a stream; returns the status counted (499 when it could not
/// be sent).
async fn answer_stream(s: &mut HttpSession, ctx: &mut Ctx, answer: Answer) -> u16 {
    let (status, body) = (answer.status(), answer.body());
    let head_request = s.req_header().method == http::Method::HEAD;
    let resp = ResponseHeader::build_no_case(status, Some(3)).and_then(|mut r| {
        r.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        r.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        r.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        Ok(r)
    });
    let Ok(resp) = resp else {
        return 499;
    };
    if s.write_response_header(Box::new(resp), head_request)
        .is_err()
    {
        return 499;
    }
    if !head_request {
        if s.write_body(Bytes::from_static(body.as_bytes()), true)
            .await
            .is_err()
        {
            return 499;
        }
        ctx.response_bytes = body.len() as u64;
    }
    status
}

/// What the access log keeps of a stream's request.
fn stream_log(s: &HttpSession) -> RequestLog {
    logged_request(
        s.req_header(),
        s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        s.digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|t| t.version.to_string()),
    )
}
