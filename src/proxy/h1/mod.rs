//! The HTTP/1.1 engine: Switchyard's own request path for plain HTTP/1.1 traffic, beside Pingora's
//! proxy pipeline, both behind the front door.
//!
//! Pingora's `HttpProxy` runs every request through a general pipeline (header maps built twice,
//! downstream and upstream halves joined by channels, a shared connection pool behind locks, a task
//! per idle connection); on a small request that is most of the CPU a request costs. The engine
//! serves the common case directly: it takes the head the front door parsed in place (httparse),
//! makes the same release decision over the raw header fields,
//! writes the upstream request in one write, and passes the response and both bodies through byte for
//! byte, with an upstream connection pool per worker thread (see [`pool`]). Counting, the access log,
//! request ids, fallback, retries and error answers are the ones the Pingora path uses; so are the
//! admission, counting and comparison of dark-release shadow copies, which the engine sends itself
//! (see [`shadow`]).
//!
//! The front door ([`crate::front`]) reads and classifies every head; what the engine does not serve
//! (TLS connections that negotiated h2, HTTP/1.0, `CONNECT`, absolute-form targets, requests with
//! `Transfer-Encoding`, `Upgrade` or `Expect`, a request whose upstream speaks HTTP/2 or TLS) goes to
//! Pingora's `HttpProxy` for that request, with the bytes already read.

mod body;
#[cfg(test)]
mod differential;
mod exchange;
mod head;
mod pool;
mod shadow;
mod stream;

use super::access_log::{self, RequestLog};
use super::{pick_backend, random_bucket, request_id, Answer, Ctx, Proxy};
use crate::front::{self, answer_head, last_request, linger, write_client, Accepted, Conn, Next};
use crate::metrics::Rejection;
use crate::policy::request::Refusal;
use crate::policy::retry;
use crate::release::{self, Decision, Headers, Outcome, RequestView};
use crate::state::Snapshot;
use async_trait::async_trait;
use bytes::Buf;
use exchange::{
    connect_for, read_response_head, record_ttfb, relay_response, send_request, Connected,
};
use head::{write_request_head, write_response_head, ParsedFields};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use shadow::{PrimaryTap, ShadowCopy};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// Header fields an upstream response may have.
const MAX_RESPONSE_FIELDS: usize = 200;
/// Longest response head the engine reads.
const MAX_HEAD: usize = 64 * 1024;
use front::READ_CHUNK;

/// The proxy behind the front door: the engine serves what it admits, Pingora's pipeline the rest.
pub struct Engine {
    proxy: Proxy,
    /// `server.http1_engine`: false hands every request to Pingora's pipeline.
    on: bool,
}

impl Engine {
    pub fn new(proxy: Proxy, on: bool) -> Self {
        Engine { proxy, on }
    }
}

#[async_trait]
impl front::Service for Engine {
    type Pipeline = HttpProxy<Proxy>;
    type Request = Admitted;
    const COUNTED: bool = true;
    const CLOSES_IDLE_AT_SHUTDOWN: bool = false;

    fn limits(&self) -> crate::config::Limits {
        self.proxy.limits()
    }

    fn h2c(&self) -> bool {
        self.proxy.h2c()
    }

    fn engine(&self) -> bool {
        self.on
    }

    #[inline]
    fn admit(&self, c: &mut Conn, head: &Accepted<'_, '_>) -> Option<Admitted> {
        let snapshot = self.proxy.snapshot();
        if c.client_ip.is_none() && (snapshot.table.reads_client_ip() || self.proxy.logs_requests())
        {
            c.client_ip = Some(
                c.stream
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            );
        }
        let started = Instant::now();
        let (req, outcome) = self.parse_request(c, head, &snapshot)?;
        Some(Admitted {
            started,
            req,
            outcome,
            snapshot,
        })
    }

    fn serve<'a>(
        &'a self,
        c: &'a mut Conn,
        a: Admitted,
        shutdown: &'a ShutdownWatch,
    ) -> front::Serving<'a> {
        Box::pin(self.serve_admitted(c, a.started, a.req, a.outcome, a.snapshot, shutdown))
    }

    #[allow(clippy::result_large_err)]
    fn take_stream(
        self: &Arc<Self>,
        stream: front::H2Stream,
    ) -> Result<front::StreamServing, front::H2Stream> {
        Engine::take_stream(self, stream)
    }

    fn refusal(&self, why: Refusal) -> front::Refusing {
        let answer = Answer::Refused(why);
        front::Refusing {
            status: answer.status(),
            content_type: "application/json",
            body: Cow::Borrowed(answer.body().as_bytes()),
            request_id: Some(request_id::settle(None)),
        }
    }

    fn refused(&self, refusing: front::Refusing, seen: Option<front::Seen>, status: u16) {
        let mut ctx = Ctx::default();
        ctx.rejected = Some(Rejection::InvalidRequest);
        ctx.request_id = refusing.request_id.unwrap_or_default();
        self.proxy.record(&mut ctx, status, || {
            let (method, path) = seen.unwrap_or_default();
            RequestLog {
                method,
                path,
                ..Default::default()
            }
        });
    }
}

/// A request the engine admitted: when it began, what the engine needs of it, the decision, and the
/// snapshot it was decided on. Its context is made in the future that serves it: moving a request
/// here costs a copy of this, not of a context.
pub struct Admitted {
    started: Instant,
    req: Request,
    outcome: Outcome,
    snapshot: Arc<Snapshot>,
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
    request_id: String,
    /// A shadow copy of it was started.
    mirrored: bool,
}

impl Engine {
    /// Serves the request whose head `admit` took: its body, the decision, the exchange.
    async fn serve_admitted(
        &self,
        c: &mut Conn,
        started: Instant,
        mut req: Request,
        outcome: Outcome,
        snapshot: Arc<Snapshot>,
        shutdown: &ShutdownWatch,
    ) -> Next {
        let mut ctx = Ctx::starting_at(started);
        ctx.request_id = std::mem::take(&mut req.request_id);
        ctx.mirrored = req.mirrored;
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

    /// Decides where an accepted head goes and writes its upstream head; `None` when Pingora's
    /// pipeline is to serve it (an upstream the engine does not speak to).
    #[inline]
    fn parse_request(
        &self,
        c: &mut Conn,
        head: &Accepted<'_, '_>,
        snapshot: &Snapshot,
    ) -> Option<(Request, Outcome)> {
        let Accepted {
            head_len,
            method,
            ref target,
            fields: ref h,
            headers,
            host,
            length,
        } = *head;
        let parsed_headers = headers;
        let path = &*target.route_path;
        let query = target.query;
        let target = &*target.forward;
        let request_id = request_id::settle(h.request_id);
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
            if !snapshot.pools.all_plain_http1() && !speaks_plain_http1(snapshot, d) {
                // An HTTP/2 or TLS upstream: Pingora's pipeline connects to it.
                return None;
            }
            write_request_head(
                &mut c.req_out,
                method,
                target,
                &parsed_headers[..h.kept],
                &h.nominated,
                length,
                &request_id,
                d.client.map(|id| snapshot.table.client_name(id)),
            );
            if let Some(m) = m {
                let primary = shadow::Primary {
                    head: &c.req_out,
                    method,
                    target,
                    body_len: length,
                    idempotent,
                    request_id: &request_id,
                    served_by: d.target,
                };
                (shadow, tap) =
                    match ShadowCopy::start(self.proxy.metrics(), snapshot, m, d.route, primary) {
                        Some((s, t)) => (Some(s), t),
                        None => (None, None),
                    };
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
                .logs_requests()
                .then(|| request_log(c, method, path, host, &parsed_headers[..h.kept])),
            mirrored: shadow.is_some(),
            shadow,
            tap,
            request_id,
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
            } = match connected {
                Ok(c) => c,
                Err(answer) => return Exchanged::Answer(answer),
            };
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
                    record_ttfb(&self.proxy, ctx, target, ready);
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
        answer_head(
            out,
            status,
            "application/json",
            body.len(),
            Some(&ctx.request_id),
            close,
        );
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

/// Whether the engine serves this request itself: its target, the baseline it falls back to, and
/// every upstream the route's draws can pick (split targets, the mirror's target) speak HTTP/1.1
/// without TLS. A request the engine gives up is decided again by Pingora's pipeline, so the answer
/// must not depend on how this request's draw fell: were only the drawn target looked at, a split
/// between an HTTP/1.1 and an HTTP/2 pool would send the HTTP/2 pool `w × w` of unkeyed traffic
/// instead of `w`, and a mirror to an HTTP/2 pool would sample `p × p`.
fn speaks_plain_http1(snapshot: &Snapshot, d: &Decision) -> bool {
    let plain = |id| snapshot.pools.get(id).is_some_and(|p| p.plain_http1());
    plain(d.target)
        && snapshot
            .table
            .route(d.route)
            .is_none_or(|r| plain(r.baseline()) && r.all_drawn(plain))
}

/// What an idle keep-alive connection's task holds: the state of waiting for a head, not a request's.
#[cfg(test)]
mod idle_state {
    use super::*;
    use crate::state::State;
    use pingora::apps::ServerApp;

    #[tokio::test(flavor = "current_thread")]
    async fn a_connections_task_holds_no_request_state() {
        let config = crate::config::Valid::load(
            "server: {listen: [\"127.0.0.1:0\"]}\nupstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\nroutes:\n  - name: r\n    split: {targets: {v1: 1}}\n",
        )
        .unwrap();
        let proxy = Proxy::new(Arc::new(State::new(config).unwrap()), None);
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let full = pingora::proxy::http_proxy(&conf, proxy.clone());
        let door = Arc::new(front::Door::new(
            Engine::new(proxy, true),
            full,
            std::time::Duration::from_secs(1),
        ));
        let (tcp, _client) = front::PlainTcp::accepted().await;
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let task = door.process_new(Box::new(tcp), &shutdown);
        let task = std::mem::size_of_val(&*task);
        // A request's context alone is larger than what is left once the request's handling is boxed
        // (about 500 bytes in all, against 2.2 KB with it inline).
        assert!(task < 1024, "a connection's task holds {task} bytes");
        assert!(std::mem::size_of::<Ctx>() > 256);
    }
}
