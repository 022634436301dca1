//! The `ProxyHttp` implementation. Per request: load one snapshot into the context, strip client-sent
//! `X-Switchyard-*` headers, settle the request id, call the pure decision, pick a healthy backend
//! (falling back to the route's baseline), and build the peer. Responses the proxy makes itself (no
//! route, client required, nothing healthy) are small JSON bodies.
//!
//! Observability: upstream-side events are counted as they happen (failed attempts, connection reuse,
//! time to first byte); the request itself is counted once, in the logging phase, against the target
//! that served it, and handed to the access log.

pub mod access_log;
mod answer;
mod checked;
mod ctx;
mod grpc;
mod h1;
pub mod mirror;
mod parsed;
mod request_id;

pub use access_log::AccessLog;
pub use ctx::{Ctx, PipeCtx};
pub use h1::{Admitted, Engine};

use crate::config::Limits;
use crate::metrics::{Metrics, Rejection, Series, UpstreamError};
use crate::policy::headers;
use crate::policy::request::{self, Refusal};
use crate::policy::retry;
use crate::release::{Decision, Outcome, RouteId, UpstreamId};
use crate::state::{Snapshot, State};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::FailToProxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub(crate) use answer::{respond_json, upstream_error_kind, Answer};
pub(crate) use checked::check_request;
use parsed::{
    decide, logged_request, one_content_length, one_cookie_field, random_bucket,
    strip_internal_headers, Decided,
};

pub use crate::policy::headers::{CLIENT_HEADER, REQUEST_ID_HEADER, SHADOW_HEADER};

#[derive(Clone)]
pub struct Proxy {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    /// `server.limits` (server settings take effect at start-up).
    limits: Limits,
    /// `server.h2c`: a plain connection that opens with the HTTP/2 preface is served as HTTP/2.
    h2c: bool,
}

impl Proxy {
    pub fn new(state: Arc<State>, access_log: Option<Arc<AccessLog>>) -> Self {
        let metrics = state.metrics().clone();
        let limits = Limits::from_config(&state.load().config.server.limits).unwrap_or_default();
        let h2c = state.load().config.server.h2c;
        Proxy {
            state,
            metrics,
            access_log,
            limits,
            h2c,
        }
    }

    /// The per-connection limits both request paths apply.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether plain listeners take HTTP/2 with prior knowledge (`server.h2c`).
    pub fn h2c(&self) -> bool {
        self.h2c
    }

    /// The live snapshot, which a request reads from start to end.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load()
    }

    /// Whether requests are written to an access log.
    fn logs_requests(&self) -> bool {
        self.access_log.is_some()
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The series of `target` on this request's route, if a route was decided.
    fn series<'a>(&self, ctx: &'a Ctx, target: UpstreamId) -> Option<&'a Series> {
        let snapshot = ctx.snapshot.as_ref()?;
        let route = ctx.decision?.route;
        self.metrics
            .series_in(&snapshot.series, &snapshot.table, route, target)
            .map(|s| &**s)
    }

    /// Starts the shadow copy of a routed request (the route mirrors and sampled it).
    fn start_mirror(&self, session: &mut Session, ctx: &mut PipeCtx, decision: &Decision) {
        let Some(snapshot) = ctx.snapshot.clone() else {
            return;
        };
        let Some(m) = snapshot
            .table
            .route(decision.route)
            .and_then(|r| r.mirror.as_ref())
        else {
            return;
        };
        ctx.mirror = mirror::start(
            session,
            mirror::Start {
                metrics: &self.metrics,
                snapshot: &snapshot,
                mirror: m,
                route: decision.route,
                served_by: decision.target,
                request_id: &ctx.request_id,
                client: decision.client.map(|c| snapshot.table.client_name(c)),
            },
        );
        ctx.mirrored = ctx.mirror.is_some();
    }

    fn record_upstream_error(&self, ctx: &mut Ctx, kind: UpstreamError) {
        ctx.error = Some(kind.as_str());
        let target = ctx.target.or(ctx.decision.map(|d| d.target));
        if let Some(series) = target.and_then(|t| self.series(ctx, t)) {
            series.record_upstream_error(self.metrics.now(), kind);
        }
    }

    /// Counts a finished request against the target that served it and hands it to the access log.
    /// `request` gives the method and path, asked for only when there is an access log.
    fn record(&self, ctx: &mut Ctx, status: u16, request: impl FnOnce() -> access_log::RequestLog) {
        let end = Instant::now();
        let duration_us = end.saturating_duration_since(ctx.started).as_micros() as u64;
        if let Some(why) = ctx.rejected {
            self.metrics.record_rejection(why);
        } else if let (Some(snapshot), Some(d)) = (&ctx.snapshot, ctx.decision) {
            let now = self.metrics.second_at(end);
            let served = ctx.target.unwrap_or(d.target);
            if served != d.target {
                self.metrics.record_fallback(
                    &snapshot.series,
                    &snapshot.table,
                    d.route,
                    d.target,
                    served,
                    now,
                );
            }
            if let Some(series) = self.series(ctx, served) {
                match (ctx.grpc, ctx.grpc_status) {
                    // A gRPC call proper: HTTP 200 with a grpc-status. Any other HTTP status is a
                    // failure of the transport, counted as such.
                    (true, Some(code)) if status == 200 => {
                        series.record_grpc(now, status, code, duration_us)
                    }
                    _ => series.record_request(now, status, duration_us),
                }
                series.record_bytes(ctx.request_bytes, ctx.response_bytes);
            }
        }
        if let Some(log) = &self.access_log {
            log.log(access_log::Entry {
                at: SystemTime::now(),
                request_id: std::mem::take(&mut ctx.request_id),
                snapshot: ctx.snapshot.take(),
                route: ctx.route,
                decision: ctx.decision,
                served: ctx.target,
                rejected: ctx.rejected,
                request: request(),
                status,
                upstream: ctx.backend.as_ref().and_then(|b| b.addr.as_inet().copied()),
                duration_us,
                mirrored: ctx.mirrored,
                error: ctx.error,
                protocol: ctx.protocol,
                request_bytes: ctx.request_bytes,
                response_bytes: ctx.response_bytes,
                upstream_ttfb_us: ctx.upstream_ttfb_us,
            });
        }
    }
}

/// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`, as access logs write it.
fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = PipeCtx;

    fn new_ctx(&self) -> PipeCtx {
        PipeCtx::new()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default adds a response-compression module, disabled, that still runs on every
        // request. Switchyard passes bodies through untouched, so no module is installed.
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &PipeCtx) -> bool {
        // Only primaries spawn shadows: a shadow never mirrors again.
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut PipeCtx) -> Result<bool> {
        if let Some(tag) = mirror::shadow_tag(session) {
            // Its fields go to the context; the tag stays with the subrequest.
            let tag = mirror::ShadowTag::clone(tag);
            return shadow_request(session, ctx, tag);
        }
        let decided = session
            .req_header_mut()
            .extensions_mut()
            .remove::<Decided>();
        let snapshot = match &decided {
            Some(d) => d.snapshot.clone(),
            None => self.state.load(),
        };
        strip_internal_headers(session.req_header_mut());
        ctx.grpc = grpc::is_grpc(session.req_header());
        if ctx.grpc {
            ctx.grpc_deadline = grpc::deadline(session.req_header(), ctx.started);
        }
        let id_name = const { http::HeaderName::from_static(REQUEST_ID_HEADER) };
        ctx.request_id = request_id::settle(
            session
                .req_header()
                .headers
                .get(&id_name)
                .map(|v| v.as_bytes()),
        );
        // The client side of the exchange under `server.limits`: a stalled body or an unread response
        // never pins an upstream connection past them.
        session.set_read_timeout(Some(self.limits.body_timeout));
        session.set_write_timeout(Some(self.limits.send_timeout));
        session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
        // The shared request rules, before anything is decided (SPEC §3 step 0). The rules that need
        // an HTTP/1 head as sent (Pingora's parser drops a Content-Length sent with
        // Transfer-Encoding) were applied by the front door, which reads every such head first.
        let checked = check_request(session.req_header(), self.limits.max_head_bytes);
        let route_path = match checked {
            Ok(checked) => {
                if let Some(uri) = checked.uri {
                    session.req_header_mut().set_uri(uri);
                }
                checked.route_path
            }
            Err(why) => {
                ctx.rejected = Some(Rejection::InvalidRequest);
                session.set_keepalive(None);
                respond_json(session, Answer::Refused(why), ctx).await?;
                return Ok(true);
            }
        };

        let (outcome, mirror_wanted) = match decided {
            Some(d) => (d.outcome, d.mirrored),
            None => decide(
                session.req_header(),
                session
                    .client_addr()
                    .and_then(PeerAddr::as_inet)
                    .map(|a| a.ip()),
                &snapshot,
                route_path.as_deref(),
            ),
        };
        let decision = match outcome {
            Outcome::Routed(d) => d,
            Outcome::NoRoute => {
                ctx.rejected = Some(Rejection::NoRoute);
                respond_json(session, Answer::NoRoute, ctx).await?;
                return Ok(true);
            }
            Outcome::ClientRequired { route } => {
                ctx.rejected = Some(Rejection::ClientRequired);
                ctx.route = Some(route);
                ctx.snapshot = Some(snapshot);
                respond_json(session, Answer::ClientRequired, ctx).await?;
                return Ok(true);
            }
        };
        ctx.decision = Some(decision);
        ctx.route = Some(decision.route);
        let picked = pick_backend(&snapshot, &decision, &[]);
        ctx.snapshot = Some(snapshot);
        match picked {
            Some((target, backend)) => {
                ctx.target = Some(target);
                ctx.backend = Some(backend);
                if mirror_wanted {
                    self.start_mirror(session, ctx, &decision);
                }
                Ok(false)
            }
            None => {
                self.record_upstream_error(ctx, UpstreamError::NoHealthyUpstream);
                respond_json(session, Answer::NoHealthyUpstream, ctx).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut PipeCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.backend.is_none() {
            // A retry: another healthy backend, never one that already failed. A shadow copy that
            // already has part of the body is abandoned rather than sent a second copy.
            if let Some(m) = ctx.mirror.as_mut() {
                m.on_retry();
            }
            let picked = match (ctx.decision, ctx.shadow, &ctx.snapshot) {
                (Some(decision), false, Some(s)) => pick_backend(s, &decision, &ctx.failed),
                (None, true, Some(s)) => ctx
                    .target
                    .and_then(|t| Some((t, s.pools.get(t)?.select(&ctx.failed)?))),
                _ => None,
            };
            let Some((target, b)) = picked else {
                // The upstream side failed (the backends tried could not be reached, the rest are
                // down): the same 502 the engine gives.
                self.record_upstream_error(ctx, UpstreamError::NoHealthyUpstream);
                return Error::explain(
                    ErrorType::ConnectNoRoute,
                    "no healthy backend left to retry",
                )
                .into_up()
                .into_err();
            };
            ctx.target = Some(target);
            ctx.backend = Some(b);
        }
        let pool = ctx.target.and_then(|t| ctx.snapshot.as_ref()?.pools.get(t));
        let mut peer = match (pool, &ctx.backend) {
            (Some(pool), Some(backend)) => pool.peer(backend),
            _ => {
                return Error::e_explain(ErrorType::InternalError, "decision names an unknown pool")
            }
        };
        if let Some(until) = ctx.grpc_deadline {
            grpc::bound_peer(&mut peer, until)?;
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut PipeCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.record_upstream_error(ctx, upstream_error_kind(&e));
        if let Some(addr) = ctx.backend.take().and_then(|b| b.addr.as_inet().copied()) {
            // Passed over by the next requests too (passive health), as on the engine.
            let pool = ctx
                .target
                .and_then(|t| ctx.snapshot.as_ref()?.pools.get(t).cloned());
            if let Some(pool) = pool {
                pool.connect_failed(addr);
            }
            ctx.failed.push(addr);
        }
        // Nothing was sent yet: another backend not tried yet, of the target's pool or else the
        // baseline's (policy::retry), as on the engine.
        let another = match (ctx.decision, ctx.shadow, &ctx.snapshot) {
            (Some(decision), false, Some(s)) => pick_backend(s, &decision, &ctx.failed).is_some(),
            (None, true, Some(s)) => ctx
                .target
                .and_then(|t| s.pools.get(t)?.select(&ctx.failed))
                .is_some(),
            _ => false,
        };
        if another {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut PipeCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if *e.esource() == ErrorSource::Upstream {
            self.record_upstream_error(ctx, upstream_error_kind(&e));
        }
        // The shared policy: a reused connection that failed is tried once more, for an idempotent
        // request whose body can be sent again whole; nothing else is sent twice.
        let mut e = e.more_context(format!("Peer: {peer}"));
        let again = client_reused
            && retry::after_reused_connection_failure(
                // ReusedOnly: retryable because the connection was a reused one (never `retry()`
                // it undecided: that panics).
                matches!(
                    e.retry,
                    pingora::RetryType::Decided(true) | pingora::RetryType::ReusedOnly
                ),
                session.req_header().method.is_idempotent(),
                !session.as_ref().retry_buffer_truncated(),
                ctx.retried_reused,
            );
        if again {
            ctx.retried_reused = true;
        }
        e.set_retry(again);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        ctx.upstream_ready = Some(Instant::now());
        if let Some(series) = ctx.target.and_then(|t| self.series(ctx, t)) {
            series.record_connection(reused);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        if ctx.grpc {
            // A call that fails before any message ends with its status in the headers.
            ctx.grpc_status = grpc::status_in(&resp.headers);
        }
        if let Some(ready) = ctx.upstream_ready.take() {
            let us = ready.elapsed().as_micros() as u64;
            ctx.upstream_ttfb_us = Some(us);
            if let Some(series) = ctx.target.and_then(|t| self.series(ctx, t)) {
                series.record_ttfb(us);
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        if let Some(m) = ctx.mirror.as_mut() {
            if !m.tee_body(body, end_of_stream) {
                ctx.mirrored = false;
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        if ctx.shadow {
            let h2 = ctx
                .snapshot
                .as_ref()
                .zip(ctx.target)
                .and_then(|(s, t)| s.pools.get(t))
                .is_some_and(|p| p.http2());
            if h2 {
                // The copy's own framing (see mirror::start); HTTP/2 frames the body itself.
                upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            }
        }
        let client = match (&ctx.snapshot, ctx.decision.and_then(|d| d.client)) {
            (Some(snapshot), Some(id)) => Some(snapshot.table.client_name(id)),
            _ => ctx.shadow_client.as_deref(),
        };
        for (name, value) in headers::added_upstream(&ctx.request_id, client, ctx.shadow) {
            upstream_request.insert_header(name, value)?;
        }
        if let Some(until) = ctx.grpc_deadline {
            grpc::pass_on_timeout(upstream_request, until)?;
        }
        let h1_upstream = !ctx
            .snapshot
            .as_ref()
            .zip(ctx.target)
            .and_then(|(s, t)| s.pools.get(t))
            .is_some_and(|p| p.http2());
        if h1_upstream {
            one_cookie_field(upstream_request)?;
        }
        one_content_length(upstream_request)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        if ctx.grpc {
            if let Some(code) = grpc::status_in(trailers) {
                ctx.grpc_status = Some(code);
            }
        }
        if let Some(m) = ctx.mirror.as_mut() {
            m.capture_trailers(trailers);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut PipeCtx,
    ) -> Result<()> {
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if let Some(m) = ctx.mirror.as_mut() {
            m.capture_header(resp.status.as_u16(), &resp.headers);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut PipeCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(m) = ctx.mirror.as_mut() {
            m.capture_body(body, end_of_stream);
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &PipeCtx, _error: &Error) -> bool {
        // A failing shadow is counted (switchyard_mirror_total), not logged per request.
        ctx.shadow
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut PipeCtx) {
        if ctx.shadow {
            return; // shadows are not traffic: their outcome is counted by the primary's mirror task
        }
        if let Some(m) = ctx.mirror.as_mut() {
            if e.is_none() {
                m.finish_capture();
            }
            m.primary_ended();
        }
        // No response at all: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        ctx.request_bytes = session.body_bytes_read() as u64;
        ctx.response_bytes = session.body_bytes_sent() as u64;
        let req = session.req_header();
        ctx.protocol = protocol_name(req.version);
        let request = || {
            logged_request(
                req,
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .map(|t| t.version.to_string()),
            )
        };
        self.record(ctx, status, request);
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut PipeCtx,
    ) -> FailToProxy {
        if ctx.shadow {
            // Nobody reads a shadow's error page: its task sees no response and counts an error.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = answer::status_for_failure(e);
        // Pingora's pipeline does not reuse a client connection after a failed exchange, so the answer
        // says `Connection: close` and means it (a client told keep-alive would send its next request
        // into a closing connection). The engine closes after the same answers.
        session.set_keepalive(None);
        if code > 0 {
            if let Err(err) = answer::answer_failure(session, e, code, ctx).await {
                log::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// A shadow copy's own request (a subrequest): its route, target and request id come with it; it
/// goes to a healthy backend of the mirror's target.
fn shadow_request(
    session: &mut Session,
    ctx: &mut PipeCtx,
    tag: mirror::ShadowTag,
) -> Result<bool> {
    let mirror::ShadowTag {
        snapshot,
        route,
        target,
        request_id,
        client,
    } = tag;
    ctx.shadow = true;
    ctx.route = Some(route);
    ctx.target = Some(target);
    ctx.request_id = request_id;
    ctx.shadow_client = client;
    let backend = snapshot.pools.get(target).and_then(|p| p.select(&[]));
    strip_internal_headers(session.req_header_mut());
    ctx.snapshot = Some(snapshot);
    match backend {
        Some(b) => {
            ctx.backend = Some(b);
            Ok(false)
        }
        None => Error::e_explain(
            ErrorType::ConnectNoRoute,
            "mirror target has no healthy backend",
        ),
    }
}

/// A healthy backend for the decision's target, or for the route's baseline when the target's pool is
/// entirely down. Returns the pool actually used.
fn pick_backend(
    snapshot: &Snapshot,
    decision: &Decision,
    exclude: &[SocketAddr],
) -> Option<(UpstreamId, Backend)> {
    let pool = snapshot.pools.get(decision.target)?;
    if let Some(b) = pool.select(exclude) {
        return Some((decision.target, b));
    }
    let baseline = snapshot.table.route(decision.route)?.baseline();
    if baseline == decision.target {
        return None;
    }
    let b = snapshot.pools.get(baseline)?.select(exclude)?;
    Some((baseline, b))
}
