//! The HTTP/1.1 engine: Switchyard's own request loop for plain HTTP/1.1 traffic, in front of
//! Pingora's proxy pipeline.
//!
//! Pingora's `HttpProxy` runs every request through a general pipeline (header maps built twice,
//! downstream and upstream halves joined by channels, a shared connection pool behind locks, a task
//! per idle connection); on a small request that is most of the CPU a request costs. This engine is a
//! Pingora `ServerApp` (the plain-TCP listeners of `proxy::listener` give it every accepted
//! connection, Pingora's listening service the TLS ones) that serves the common case directly: it parses the
//! request head in place (httparse), makes the same release decision over the raw header fields,
//! writes the upstream request in one write, and passes the response and both bodies through byte for
//! byte, with an upstream connection pool per worker thread (see [`pool`]). Counting, the access log,
//! request ids, fallback, retries and error answers are the ones the Pingora path uses; so are the
//! admission, counting and comparison of dark-release shadow copies, which the engine sends itself
//! (see [`shadow`]).
//!
//! Whatever it does not handle itself it hands to Pingora's `HttpProxy` with the bytes already read,
//! and the connection stays there: TLS connections that negotiated h2, HTTP/1.0, `CONNECT`,
//! absolute-form or `*` targets, requests with `Transfer-Encoding`, `Upgrade` or `Expect`, heads over
//! 64 KiB or with more than 100 fields, and anything httparse refuses.
//!
//! Graceful shutdown without dropping fresh connections: when a Pingora service stops accepting
//! (SIGQUIT after handing the sockets to a new process, or SIGTERM), it calls the app's `cleanup()` at
//! once, and `HttpProxy`'s cleanup aborts every session still waiting in `read_request()`. That is
//! meant for idle keep-alive connections, but it also catches a connection accepted a moment before the
//! accept loop stopped whose request bytes have not been read yet. So the engine closes only
//! connections that have served a request when shutdown begins, gives a fresh one `first_request`
//! to send its first request, and lets Pingora's cleanup run only after that window.

mod body;
mod conn;
#[cfg(test)]
mod differential;
mod exchange;
mod head;
mod pool;
mod shadow;
use conn::{last_request, linger, nodelay, read_head, write_client, Conn, HeadRead};

use super::access_log::{self, RequestLog};
use super::gate::{self, answer_head};
use super::listener::PlainTcp;
use super::{pick_backend, random_bucket, request_id, Answer, Ctx, Proxy};
use crate::config::Limits;
use crate::metrics::{Rejection, UpstreamError};
use crate::policy::request::{self, Refusal};
use crate::policy::retry;
use crate::release::{self, Decision, Headers, Outcome, RequestView};
use crate::state::Snapshot;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use exchange::{connect, read_response_head, relay_response, send_request};
use head::{head_complete, write_request_head, write_response_head, ParsedFields, RequestFields};
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use shadow::{PrimaryTap, ShadowCopy};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header fields a request may have and stay on the engine.
const MAX_FIELDS: usize = 100;
/// Header fields an upstream response may have.
const MAX_RESPONSE_FIELDS: usize = 200;
/// Longest request or response head the engine reads.
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Room for an upstream request head or a response head with the part of its body that came with
/// it, so that a typical head is written without growing its buffer.
const OUT_CAPACITY: usize = 1024;

/// The engine: serves what it can, hands the rest to `full`.
#[derive(Clone)]
pub struct Engine {
    proxy: Proxy,
    full: Arc<HttpProxy<Proxy>>,
    /// How long a connection accepted just before shutdown has to send its first request.
    first_request: Duration,
}

impl Engine {
    pub fn new(proxy: Proxy, full: HttpProxy<Proxy>, first_request: Duration) -> Self {
        Engine {
            proxy,
            full: Arc::new(full),
            first_request,
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
        let limits = self.proxy.limits();
        let _open = super::drain::admit(limits.max_connections)?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.full.process_new(stream, shutdown).await;
        }
        let mut c = Conn::new(stream, limits);
        let mut shutdown = shutdown.clone();
        loop {
            match self.serve_one(&mut c, &mut shutdown).await {
                Next::KeepAlive => c.served += 1,
                Next::Close => return None,
                Next::HandOff => return Box::pin(self.hand_off(c, &shutdown)).await,
            }
        }
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.first_request).await;
        ServerApp::cleanup(&*self.full).await
    }
}

// How long an idle keep-alive connection keeps its buffers before giving them back, as nginx frees
// an idle connection's buffers: a busy connection never allocates them again, and an edge with many
// idle clients holds little per connection. The same on both paths.
use gate::IDLE_RELEASE;

enum Next {
    KeepAlive,
    Close,
    HandOff,
}

/// A request head read by the engine's parser and judged by the shared request rules. Returned on the
/// stack by a plain function and taken apart at once: boxing the large variant would cost every
/// request an allocation.
#[allow(clippy::large_enum_variant)]
enum Head<'b, 'h> {
    Accepted(Accepted<'b, 'h>),
    /// For Pingora's pipeline: what httparse refuses, HTTP/1.0, CONNECT, chunked bodies, Expect,
    /// Upgrade, absolute-form targets.
    HandOff,
    /// Refused, with the method and target when they could be read.
    Refused(Refusal, Option<(&'b str, &'b str)>),
}

struct Accepted<'b, 'h> {
    head_len: usize,
    method: &'b str,
    target: request::Target<'b>,
    fields: RequestFields<'b>,
    headers: &'h [httparse::Header<'b>],
    host: &'b str,
    length: Option<u64>,
}

/// Parses the request head at the start of `buf` and applies the shared request rules to it. Pure:
/// the engine serves by it, and the differential tests hold it against Pingora's parser.
fn classify<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
    max_head_bytes: usize,
) -> Head<'b, 'h> {
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Head::Refused(Refusal::HeadTooLarge, None),
        _ => return Head::HandOff,
    };
    if head_len > max_head_bytes {
        return Head::Refused(Refusal::HeadTooLarge, None);
    }
    let (Some(method), Some(raw_target), Some(1)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Head::HandOff;
    };
    if method == "CONNECT" {
        return Head::HandOff;
    }
    let seen = Some((method, raw_target));
    let target = match request::target(raw_target) {
        Ok(t) => t,
        Err(why) => return Head::Refused(why, seen),
    };
    let headers = std::mem::take(&mut parsed.headers);
    let h = RequestFields::sort(headers);
    let host = match h.host(target.authority) {
        Ok(host) => host,
        Err(why) => return Head::Refused(why, seen),
    };
    let length = match h.framing() {
        Ok(length) => length,
        Err(why) => return Head::Refused(why, seen),
    };
    // Chunked bodies, Expect and Upgrade, and absolute-form targets are Pingora's to relay.
    if h.chunked() || h.hand_off || target.authority.is_some() {
        return Head::HandOff;
    }
    Head::Accepted(Accepted {
        head_len,
        method,
        target,
        fields: h,
        headers,
        host,
        length,
    })
}

/// A request head as the engine takes it.
enum Parsed {
    Request(Request, Outcome),
    /// For Pingora's pipeline.
    HandOff,
    /// Refused by the shared request rules, with the method and path for the access log.
    Refused(Refusal, Option<(http::Method, String)>),
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
    logged: Option<Box<RequestLog>>,
    /// The shadow copy of a mirrored request, until its body is complete and it is sent.
    shadow: Option<ShadowCopy>,
    /// The primary's answer, captured for the shadow's comparison.
    tap: Option<Box<PrimaryTap>>,
}

impl Engine {
    /// Reads, decides and proxies one request.
    async fn serve_one(&self, c: &mut Conn, shutdown: &mut ShutdownWatch) -> Next {
        match read_head(c).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return Next::Close,
            HeadRead::TooLarge => {
                // The head did not fit in `limits.max_head_bytes`: 431, as nginx and HAProxy do.
                return Box::pin(self.refuse(c, Ctx::default(), Refusal::HeadTooLarge, None)).await;
            }
        }
        if c.served == 0 && self.proxy.h2c() && c.buf.starts_with(gate::H2_PREFACE_HEAD) {
            // HTTP/2 with prior knowledge: the gate hands the whole connection to Pingora's HTTP/2.
            return Next::HandOff;
        }
        // Everything after the head runs in a boxed future: an idle keep-alive connection's task then
        // holds only what waiting for a head needs, none of a request's state.
        Box::pin(self.serve_head(c, shutdown)).await
    }

    /// Serves the request whose complete head is in `c.buf`.
    async fn serve_head(&self, c: &mut Conn, shutdown: &mut ShutdownWatch) -> Next {
        let mut ctx = Ctx::default();
        let snapshot = self.proxy.state.load();
        if c.client_ip.is_none()
            && (snapshot.table.reads_client_ip() || self.proxy.access_log.is_some())
        {
            c.client_ip = Some(
                c.stream
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            );
        }
        let (req, outcome) = match self.parse_request(c, &snapshot, &mut ctx) {
            Parsed::Request(req, outcome) => (req, outcome),
            Parsed::HandOff => return Next::HandOff,
            Parsed::Refused(why, logged) => return self.refuse(c, ctx, why, logged).await,
        };
        let mut req = req;
        c.buf.advance(req.head_len);
        // The part of the body that came with the head goes out with the upstream head.
        let in_buf = (c.buf.len() as u64).min(req.body_len) as usize;
        if matches!(outcome, Outcome::Routed(_)) {
            c.req_out.extend_from_slice(&c.buf[..in_buf]);
        }
        if let Some(s) = req.shadow.as_mut() {
            s.push_body(&c.buf[..in_buf]);
        }
        c.buf.advance(in_buf);
        req.body_unread = req.body_len - in_buf as u64;
        if req.body_unread == 0 {
            if let Some(s) = req.shadow.take() {
                s.send();
            }
        }
        let decision = match outcome {
            Outcome::Routed(d) => d,
            Outcome::NoRoute => {
                ctx.rejected = Some(Rejection::NoRoute);
                return self.answer(c, ctx, req, shutdown, Answer::NoRoute).await;
            }
            Outcome::ClientRequired { route } => {
                ctx.rejected = Some(Rejection::ClientRequired);
                ctx.route = Some(route);
                ctx.snapshot = Some(snapshot);
                return self
                    .answer(c, ctx, req, shutdown, Answer::ClientRequired)
                    .await;
            }
        };
        ctx.decision = Some(decision);
        ctx.route = Some(decision.route);
        ctx.snapshot = Some(snapshot.clone());
        self.proxy_request(c, ctx, req, &snapshot, decision, shutdown)
            .await
    }

    /// Parses the request head in `c.buf`, applies the shared request rules and decides where it
    /// goes. Not async, so the field array lives on the stack, never in a future.
    fn parse_request(&self, c: &mut Conn, snapshot: &Snapshot, ctx: &mut Ctx) -> Parsed {
        // Left uninitialised: httparse writes only the fields it finds.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let head = match classify(&c.buf, &mut fields, c.limits.max_head_bytes) {
            Head::Accepted(head) => head,
            Head::HandOff => return Parsed::HandOff,
            Head::Refused(why, seen) => {
                let logged = seen.and_then(|(method, raw_target)| {
                    self.proxy.access_log.as_ref().map(|_| {
                        let m = http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
                        // The query string is never logged (it may carry secrets).
                        (m, raw_target.split('?').next().unwrap_or("").to_string())
                    })
                });
                return Parsed::Refused(why, logged);
            }
        };
        let Accepted {
            head_len,
            method,
            target,
            fields: h,
            headers,
            host,
            length,
        } = head;
        let parsed_headers = headers;
        let path = &*target.route_path;
        let query = target.query;
        let target = &*target.forward;
        ctx.request_id = request_id::settle(h.request_id);
        let kept_fields = ParsedFields(&parsed_headers[..h.kept]);
        let view = RequestView {
            method,
            host,
            path,
            query,
            headers: Headers::Raw(&kept_fields),
            client_ip: c.client_ip.flatten(),
        };
        let outcome = release::decide(&snapshot.table, &view, &mut random_bucket);
        let idempotent = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        let mut shadow = None;
        let mut tap = None;
        if let Outcome::Routed(d) = &outcome {
            let m = release::mirror_for(&snapshot.table, d, &view, &mut random_bucket);
            if !snapshot.pools.all_plain_http1() && !speaks_plain_http1(snapshot, d, m) {
                // An HTTP/2 or TLS upstream: Pingora's pipeline connects to it.
                return Parsed::HandOff;
            }
            write_request_head(
                &mut c.req_out,
                method,
                target,
                &parsed_headers[..h.kept],
                &h.nominated,
                &ctx.request_id,
                d.client.map(|id| snapshot.table.client_name(id)),
            );
            if let Some(m) = m {
                let primary = shadow::Primary {
                    head: &c.req_out,
                    method,
                    target,
                    body_len: length,
                    idempotent,
                    request_id: &ctx.request_id,
                };
                (shadow, tap) =
                    match ShadowCopy::start(&self.proxy.metrics, snapshot, m, d.route, primary) {
                        Some((s, t)) => (Some(s), t),
                        None => (None, None),
                    };
                ctx.mirrored = shadow.is_some();
            }
        }
        let req = Request {
            head_len,
            body_len: length.unwrap_or(0),
            body_unread: 0,
            head: method == "HEAD",
            idempotent,
            client_close: h.close,
            logged: self
                .proxy
                .access_log
                .as_ref()
                .map(|_| request_log(c, method, path, host, &parsed_headers[..h.kept])),
            shadow,
            tap,
        };
        Parsed::Request(req, outcome)
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
        let (mut up, addr, timeouts) = match self
            .exchange(c, &mut ctx, &mut req, snapshot, &decision)
            .await
        {
            Exchanged::Ready(up, addr, timeouts) => (up, addr, timeouts),
            Exchanged::Answer(answer) => return self.answer(c, ctx, req, shutdown, answer).await,
            Exchanged::ClientGone => {
                // The client went away while its body was being sent.
                self.proxy.record(&mut ctx, 499, || {
                    req.logged.take().map(|l| *l).unwrap_or_default()
                });
                return Next::Close;
            }
        };

        // `up_buf` holds a complete, final response head.
        let close = req.client_close || *shutdown.borrow() || last_request(c);
        let head = write_response_head(
            &mut c.resp_out,
            &c.up_buf,
            req.head,
            &ctx.request_id,
            close,
            req.tap.as_mut().map(|t| &mut t.tap.captured),
        );
        let head = match head {
            Ok(head) => head,
            Err(kind) => {
                self.proxy.record_upstream_error(&mut ctx, kind);
                let answer = Answer::for_upstream(kind);
                return self.answer(c, ctx, req, shutdown, answer).await;
            }
        };
        let tap = req.tap.as_mut().map(|t| &mut t.tap);
        let relay = relay_response(c, &mut up, head, close, timeouts.read, tap).await;
        if relay.client_ok && relay.upstream_error.is_none() {
            if let Some(t) = req.tap.take() {
                t.finish();
            }
        }
        let status = relay.status;
        if let Some(kind) = relay.upstream_error {
            self.proxy.record_upstream_error(&mut ctx, kind);
        }
        if relay.upstream_reusable {
            pool::put(addr, up);
        }
        ctx.request_bytes = req.body_len - req.body_unread;
        ctx.response_bytes = relay.body_bytes;
        self.proxy.record(&mut ctx, status, || {
            req.logged.take().map(|l| *l).unwrap_or_default()
        });
        if relay.client_ok && !relay.client_close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Connects (another backend after a connect failure; a new connection once after a kept-alive
    /// one the upstream had closed), sends the request and reads the response head.
    async fn exchange(
        &self,
        c: &mut Conn,
        ctx: &mut Ctx,
        req: &mut Request,
        snapshot: &Snapshot,
        decision: &Decision,
    ) -> Exchanged {
        let mut picked = pick_backend(snapshot, decision, &[]);
        let mut fresh_only = false;
        loop {
            let Some((target, backend)) = picked.take() else {
                self.proxy
                    .record_upstream_error(ctx, UpstreamError::NoHealthyUpstream);
                return Exchanged::Answer(if ctx.failed.is_empty() {
                    Answer::NoHealthyUpstream
                } else {
                    Answer::UpstreamUnavailable
                });
            };
            ctx.target = Some(target);
            let (Some(pool), Some(addr)) = (snapshot.pools.get(target), backend.addr.as_inet())
            else {
                return Exchanged::Answer(Answer::InternalError);
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
                        self.proxy.record_upstream_error(ctx, kind);
                        ctx.failed.push(addr);
                        ctx.backend = None;
                        if retry::after_connect_failure(ctx.failed.len(), pool.backend_count()) {
                            picked = pick_backend(snapshot, decision, &ctx.failed);
                            continue;
                        }
                        return Exchanged::Answer(Answer::for_upstream(kind));
                    }
                },
            };
            let ready = Instant::now();
            if let Some(series) = self.proxy.series(ctx, target) {
                series.record_connection(reused);
            }
            let sent = send_request(
                c,
                &mut up,
                &mut req.body_unread,
                &mut req.shadow,
                timeouts.write,
            )
            .await;
            let head = match sent {
                Ok(()) => read_response_head(c, &mut up, timeouts.read).await,
                Err(e) => Err(e),
            };
            match head {
                Ok(()) => {
                    let us = ready.elapsed().as_micros() as u64;
                    ctx.upstream_ttfb_us = Some(us);
                    if let Some(series) = self.proxy.series(ctx, target) {
                        series.record_ttfb(us);
                    }
                    return Exchanged::Ready(up, addr, timeouts);
                }
                Err(Some(f)) => {
                    self.proxy.record_upstream_error(ctx, f.kind);
                    if reused
                        && retry::after_reused_connection_failure(
                            f.retry,
                            req.idempotent,
                            req.body_unread == 0,
                            fresh_only,
                        )
                    {
                        // A kept-alive connection the upstream had closed: once more, on a new one.
                        fresh_only = true;
                        picked = ctx.backend.take().map(|b| (target, b));
                        continue;
                    }
                    return Exchanged::Answer(Answer::for_upstream(f.kind));
                }
                Err(None) => return Exchanged::ClientGone,
            }
        }
    }

    /// A response Switchyard makes itself: a small JSON error.
    async fn answer(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        mut req: Request,
        shutdown: &ShutdownWatch,
        answer: Answer,
    ) -> Next {
        // A body still in flight is not read: the connection closes after the answer.
        let close = answer.closes_connection()
            || req.client_close
            || req.body_unread > 0
            || *shutdown.borrow()
            || last_request(c);
        let (status, body) = (answer.status(), answer.body());
        let out = &mut c.resp_out;
        answer_head(out, status, body.len(), &ctx.request_id, close);
        if !req.head {
            out.extend_from_slice(body.as_bytes());
        }
        let sent = write_client(&mut c.stream, &c.resp_out, close, c.limits.send_timeout).await;
        let status = if sent { status } else { 499 };
        if sent && !req.head {
            ctx.response_bytes = body.len() as u64;
        }
        self.proxy.record(&mut ctx, status, || {
            req.logged.take().map(|l| *l).unwrap_or_default()
        });
        if sent && req.body_unread > 0 {
            linger(c, req.body_unread).await;
        }
        if sent && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Answers a request the shared rules refuse (400, 414, 431 with a JSON body), counts and logs it,
    /// and closes the connection: what follows a malformed head cannot be trusted to be a request.
    async fn refuse(
        &self,
        c: &mut Conn,
        mut ctx: Ctx,
        why: Refusal,
        logged: Option<(http::Method, String)>,
    ) -> Next {
        ctx.rejected = Some(Rejection::InvalidRequest);
        if ctx.request_id.is_empty() {
            ctx.request_id = request_id::settle(None);
        }
        let answer = Answer::Refused(why);
        let (status, body) = (answer.status(), answer.body());
        let out = &mut c.resp_out;
        answer_head(out, status, body.len(), &ctx.request_id, true);
        out.extend_from_slice(body.as_bytes());
        let sent = write_client(&mut c.stream, &c.resp_out, true, c.limits.send_timeout).await;
        let status = if sent { status } else { 499 };
        self.proxy.record(&mut ctx, status, || {
            let (method, path) = logged.unwrap_or_default();
            RequestLog {
                method,
                path,
                ..Default::default()
            }
        });
        Next::Close
    }

    /// Hands the connection, with the bytes already read, to Pingora's pipeline (behind the gate)
    /// for good.
    async fn hand_off(&self, c: Conn, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Pingora writes a response head and its body separately.
        nodelay(&c.stream);
        let c = gate::Connection {
            stream: c.stream,
            buf: c.buf,
            served: c.served,
        };
        gate::serve(&self.proxy, &self.full, c, shutdown).await
    }
}

/// How an upstream exchange went: a response head is in, or the answer the client gets, or the
/// client went away.
enum Exchanged {
    Ready(
        tokio::net::TcpStream,
        std::net::SocketAddr,
        crate::upstream::Timeouts,
    ),
    Answer(Answer),
    ClientGone,
}

/// What the access log keeps of a request the engine parsed (never its query string).
fn request_log(
    c: &Conn,
    method: &str,
    path: &str,
    host: &str,
    fields: &[httparse::Header<'_>],
) -> Box<RequestLog> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    Box::new(RequestLog {
        method: http::Method::from_bytes(method.as_bytes()).unwrap_or_default(),
        path: path.to_string(),
        host: Some(host.to_string()),
        user_agent: field("user-agent").and_then(access_log::logged_value),
        forwarded_for: field("x-forwarded-for").and_then(access_log::logged_value),
        traceparent: field("traceparent").and_then(access_log::valid_traceparent),
        client_addr: c.client_ip.flatten(),
        tls_version: c.stream.get_ssl_digest().map(|d| d.version.to_string()),
    })
}

/// Whether every upstream this request may reach (its target, the baseline it falls back to, its
/// shadow target) is one the engine speaks to itself: HTTP/1.1 without TLS.
fn speaks_plain_http1(snapshot: &Snapshot, d: &Decision, m: Option<&release::Mirror>) -> bool {
    let plain = |id| snapshot.pools.get(id).is_some_and(|p| p.plain_http1());
    let baseline = snapshot.table.route(d.route).map(|r| r.baseline());
    plain(d.target) && baseline.is_none_or(plain) && m.is_none_or(|m| plain(m.to))
}

/// What an idle keep-alive connection's task holds: the state of waiting for a head, not a request's.
#[cfg(test)]
mod idle_state {
    use super::*;
    use crate::config::Config;
    use crate::state::State;

    #[tokio::test(flavor = "current_thread")]
    async fn a_connections_task_holds_no_request_state() {
        let config = Config::load_str(
            "server: {listen: [\"127.0.0.1:0\"]}\nupstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\nroutes:\n  - name: r\n    split: {targets: {v1: 1}}\n",
        )
        .unwrap();
        let proxy = Proxy::new(Arc::new(State::new(config).unwrap()), None);
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let full = pingora::proxy::http_proxy(&conf, proxy.clone());
        let engine = Arc::new(Engine::new(proxy, full, Duration::from_secs(1)));
        let (tcp, _client) = PlainTcp::accepted().await;
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let task = engine.process_new(Box::new(tcp), &shutdown);
        let task = std::mem::size_of_val(&*task);
        // A request's context alone is larger than what is left once the request's handling is boxed
        // (about 700 bytes in all, against 2.2 KB with it inline).
        assert!(task < 1024, "a connection's task holds {task} bytes");
        assert!(std::mem::size_of::<Ctx>() > 256);
    }
}
