//! The `ProxyHttp` implementation. Per request: load one snapshot into the context, strip client-sent
//! `X-Switchyard-*` headers, settle the request id, call the pure decision, pick a healthy backend
//! (falling back to the route's baseline), and build the peer. Responses the proxy makes itself (no
//! route, client required, nothing healthy) are small JSON bodies.

mod drain;
mod request_id;

pub use drain::Draining;

use crate::release::{self, Decision, Outcome, RequestView, UpstreamId};
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

pub const HEADER_PREFIX: &str = "x-switchyard-";
pub const CLIENT_HEADER: &str = "x-switchyard-client";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub struct Proxy {
    state: Arc<State>,
}

impl Proxy {
    pub fn new(state: Arc<State>) -> Self {
        Proxy { state }
    }
}

/// Per-request context: the snapshot this request reads from start to end, and what was decided.
#[derive(Default)]
pub struct Ctx {
    pub snapshot: Option<Arc<Snapshot>>,
    pub decision: Option<Decision>,
    /// The pool actually used: the decision's target, or the baseline after a fallback (a fallback
    /// is exactly `target != decision.target`).
    pub target: Option<UpstreamId>,
    pub backend: Option<Backend>,
    /// Backends that failed to connect for this request; skipped on retry.
    pub failed: Vec<SocketAddr>,
    pub request_id: String,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.state.load();
        strip_internal_headers(session);
        ctx.request_id = request_id::settle(session.req_header().headers.get(REQUEST_ID_HEADER));

        let outcome = {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            let view = RequestView {
                method: req.method.as_str(),
                host,
                path: req.uri.path(),
                query: req.uri.query(),
                headers: &req.headers,
                client_ip: session
                    .client_addr()
                    .and_then(PeerAddr::as_inet)
                    .map(|a| a.ip()),
            };
            release::decide(&snapshot.table, &view, &mut random_bucket)
        };
        let decision = match outcome {
            Outcome::Routed(d) => d,
            Outcome::NoRoute => {
                respond_json(session, 404, r#"{"error":"no_route"}"#, &ctx.request_id).await?;
                return Ok(true);
            }
            Outcome::ClientRequired { .. } => {
                respond_json(
                    session,
                    401,
                    r#"{"error":"client_required"}"#,
                    &ctx.request_id,
                )
                .await?;
                return Ok(true);
            }
        };
        ctx.decision = Some(decision);
        let picked = pick_backend(&snapshot, &decision, &[]);
        ctx.snapshot = Some(snapshot);
        match picked {
            Some((target, backend)) => {
                ctx.target = Some(target);
                ctx.backend = Some(backend);
                Ok(false)
            }
            None => {
                respond_json(
                    session,
                    502,
                    r#"{"error":"no_healthy_upstream"}"#,
                    &ctx.request_id,
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(decision) = ctx.decision else {
            return Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer called without a decision",
            );
        };
        if ctx.backend.is_none() {
            // A retry after a failed connect: another healthy backend, never one that already failed.
            let picked = ctx
                .snapshot
                .as_ref()
                .and_then(|s| pick_backend(s, &decision, &ctx.failed));
            let Some((target, b)) = picked else {
                return Error::e_explain(
                    ErrorType::ConnectNoRoute,
                    "no healthy backend left to retry",
                );
            };
            ctx.target = Some(target);
            ctx.backend = Some(b);
        }
        let pool = ctx.target.and_then(|t| ctx.snapshot.as_ref()?.pools.get(t));
        match (pool, &ctx.backend) {
            (Some(pool), Some(backend)) => Ok(pool.peer(backend)),
            _ => Error::e_explain(ErrorType::InternalError, "decision names an unknown pool"),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.backend.take().and_then(|b| b.addr.as_inet().copied()) {
            ctx.failed.push(addr);
        }
        // Nothing was sent yet: trying another backend is always safe.
        let pool_size = ctx.target.and_then(|t| {
            ctx.snapshot
                .as_ref()?
                .pools
                .get(t)
                .map(|p| p.backend_count())
        });
        if pool_size.is_some_and(|n| ctx.failed.len() < n) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_request.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if let (Some(snapshot), Some(client)) = (&ctx.snapshot, ctx.decision.and_then(|d| d.client))
        {
            upstream_request.insert_header(CLIENT_HEADER, snapshot.table.client_name(client))?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let body = match code {
                502 => r#"{"error":"upstream_unavailable"}"#,
                504 => r#"{"error":"upstream_timeout"}"#,
                400 => r#"{"error":"bad_request"}"#,
                _ => r#"{"error":"internal_error"}"#,
            };
            if let Err(err) = respond_json(session, code, body, &ctx.request_id).await {
                log::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
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

fn random_bucket() -> u32 {
    rand::random::<u32>()
}

/// Removes every client-sent `X-Switchyard-*` header: only the proxy speaks in that namespace.
fn strip_internal_headers(session: &mut Session) {
    let headers = &session.req_header().headers;
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with(HEADER_PREFIX))
    {
        return;
    }
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(HEADER_PREFIX))
        .cloned()
        .collect();
    let req = session.req_header_mut();
    for name in names {
        req.remove_header(&name);
    }
}

/// Writes a complete JSON response made by the proxy itself.
pub(crate) async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &'static str,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID_HEADER, request_id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}
