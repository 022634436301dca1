//! The admin API (SPEC §4): a Pingora HTTP service on `admin.listen`. `/healthz` and `/metrics`
//! (Prometheus text) are open; every `/v1/*`
//! call needs `Authorization: Bearer <token>`, whose SHA-256 must match one of `admin.tokens`; the
//! token's name is the actor of every change it makes. Bodies are bounded. Every change goes through
//! [`State::change`], so it is validated, persisted, audited, and refused whole on any error.

mod api;
pub mod body;
mod explain;
mod mirror;
pub mod openapi;
pub mod prometheus;
mod stats;

use crate::rollout::Rollouts;
use crate::state::State;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Largest request body accepted (a whole config for PUT /v1/config).
pub const MAX_BODY: usize = 4 << 20;

pub struct AdminApi {
    state: Arc<State>,
    rollouts: Arc<Rollouts>,
}

impl AdminApi {
    pub fn new(state: Arc<State>, rollouts: Arc<Rollouts>) -> Self {
        AdminApi { state, rollouts }
    }

    /// The name of the admin token presented, if it is one of the configured tokens. Every configured
    /// digest is compared, in constant time, whatever matches first.
    fn actor(&self, authorization: Option<&[u8]>) -> Option<String> {
        let token = authorization?.strip_prefix(b"Bearer ")?;
        let presented: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        let snapshot = self.state.load();
        let admin = snapshot.config.admin.as_ref()?;
        let mut found = None;
        for (name, digest) in admin.tokens.iter() {
            let Some(stored) = digest.value() else {
                continue;
            };
            let equal = bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &presented[..]));
            if equal && found.is_none() {
                found = Some(name.to_string());
            }
        }
        found
    }
}

/// An admin request, read whole.
pub(crate) struct Request {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub if_match: Option<String>,
    pub body: Vec<u8>,
    /// The caller's `Authorization`, for a rollout control call handed to the fleet's leader.
    pub authorization: Option<String>,
    /// Whether another instance of the fleet handed this call over (it is not handed on again).
    pub forwarded: bool,
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let method = head.method.clone();
        let path = head.uri.path().to_string();
        let query = head.uri.query().map(str::to_string);
        let if_match = head
            .headers
            .get(http::header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());

        if let Some(r) = open_endpoint(&self.state, &self.rollouts, session) {
            return r;
        }
        if path == "/ui" || path == "/ui/" {
            return status_page(&method);
        }
        if self.state.is_handing_over() {
            // The admin listener is shared with the new process for a few seconds: what this one
            // would answer is no longer current, so the client is sent to try again, and lands there.
            return api::change_refused(crate::state::ChangeError::HandingOver);
        }
        let Some(actor) = self.actor(authorization.as_deref()) else {
            // A missing token and a wrong one are told apart (never which tokens exist).
            let why = match authorization.as_deref().map(<[u8]>::trim_ascii) {
                None | Some(b"Bearer") => "unauthorized: no token; send Authorization: Bearer <admin token> (ctl: --token or SWITCHYARD_TOKEN)",
                Some(a) if !a.starts_with(b"Bearer ") => {
                    "unauthorized: the Authorization header is not \"Bearer <admin token>\""
                }
                Some(_) => "unauthorized: unknown token (its sha256 is not listed under admin.tokens)",
            };
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        };
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let forwarded = session
            .req_header()
            .headers
            .contains_key(api::FORWARDED_HEADER);
        let req = Request {
            method,
            path,
            query,
            if_match,
            body,
            authorization: authorization
                .as_deref()
                .and_then(|a| std::str::from_utf8(a).ok())
                .map(str::to_string),
            forwarded,
        };
        // Off the service's threads: a slow call (stats over thousands of routes, a large config)
        // never holds up /healthz or /metrics, which are answered above without waiting.
        let (state, rollouts) = (self.state.clone(), self.rollouts.clone());
        match tokio::task::spawn_blocking(move || api::handle(&state, &rollouts, &actor, &req))
            .await
        {
            Ok(response) => response,
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the admin call failed: {e}"),
            ),
        }
    }
}

/// `/metrics` and `/healthz`, open on the admin listener and on `metrics.listen`; `None` for any
/// other path.
fn open_endpoint(
    state: &State,
    rollouts: &Rollouts,
    session: &ServerSession,
) -> Option<Response<Vec<u8>>> {
    let head = session.req_header();
    match head.uri.path() {
        "/metrics" => {
            if head.method != http::Method::GET {
                return Some(error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET is allowed on /metrics",
                ));
            }
            let live = state.load();
            let text = match prometheus::render(
                state.metrics(),
                live.revision,
                &live.config,
                &live.pools,
                rollouts,
                crate::fleet::of(state),
            ) {
                Ok(text) => text,
                Err(e) => return Some(error(StatusCode::INTERNAL_SERVER_ERROR, &e)),
            };
            let gzip = head
                .headers
                .get_all(http::header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|coding| accepts(coding, "gzip"));
            let zipped = gzip
                .then(|| {
                    use std::io::Write;
                    let mut z =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    z.write_all(&text).and_then(|()| z.finish()).ok()
                })
                .flatten();
            let is_zipped = zipped.is_some();
            let mut r = respond(
                StatusCode::OK,
                prometheus::CONTENT_TYPE,
                zipped.unwrap_or(text),
            );
            if is_zipped {
                r.headers_mut().insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
            }
            r.headers_mut().insert(
                http::header::VARY,
                http::HeaderValue::from_static("Accept-Encoding"),
            );
            Some(r)
        }
        "/healthz" => Some(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "revision": state.load().revision}),
        )),
        _ => None,
    }
}

/// Whether one element of Accept-Encoding (`gzip`, `gzip;q=0.5`) accepts `coding` (not at q=0).
fn accepts(element: &str, coding: &str) -> bool {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next().is_some_and(|c| c.eq_ignore_ascii_case(coding)) {
        return false;
    }
    parts
        .filter_map(|p| p.strip_prefix("q="))
        .all(|q| q.trim().parse::<f64>().map_or(true, |q| q > 0.0))
}

/// The status page (`GET /ui`): one self-contained HTML file embedded in the binary. It holds no data:
/// it asks for an admin token, keeps it in the tab's session storage, and reads and changes everything
/// through the same `/v1` API with it.
const STATUS_PAGE: &str = include_str!("ui/index.html");

fn status_page(method: &http::Method) -> Response<Vec<u8>> {
    if method != http::Method::GET && method != http::Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed on /ui");
    }
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        STATUS_PAGE.as_bytes().to_vec(),
    );
    let headers = r.headers_mut();
    for (name, value) in [
        // Its own inline script and style, and calls to this API: nothing else, and not in a frame.
        (
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    r
}

/// The admin API (or the metrics endpoint) behind the front door: the same head reader and rules as
/// the proxy's, so a head Pingora's parser cannot read (a control byte in a field, a bare CR...) or
/// one too large gets a 400 (431, 414) problem answer instead of a connection closed without a
/// word. It has no engine: every head the front door accepts goes to the app's Pingora server.
pub struct AdminFront<A> {
    state: Arc<State>,
    app: std::marker::PhantomData<fn() -> A>,
}

impl<A: ServeHttp + Send + Sync + 'static> AdminFront<A> {
    /// The front door of a listener serving `app`.
    pub fn door(state: Arc<State>, app: A) -> crate::front::Door<AdminFront<A>> {
        let server = pingora::apps::http_app::HttpServer::new_app(app);
        let front = AdminFront {
            state,
            app: std::marker::PhantomData,
        };
        crate::front::Door::new(front, server, std::time::Duration::ZERO)
    }
}

#[async_trait]
impl<A: ServeHttp + Send + Sync + 'static> crate::front::Service for AdminFront<A> {
    type Pipeline = pingora::apps::http_app::HttpServer<A>;
    type Request = std::convert::Infallible;
    const COUNTED: bool = false;
    const CLOSES_IDLE_AT_SHUTDOWN: bool = true;

    fn limits(&self) -> crate::config::Limits {
        crate::config::Limits::from_config(&self.state.load().config.server.limits)
            .unwrap_or_default()
    }

    fn h2c(&self) -> bool {
        false
    }

    fn engine(&self) -> bool {
        false
    }

    fn admit(
        &self,
        _c: &mut crate::front::Conn,
        _head: &crate::front::Accepted<'_, '_>,
    ) -> Option<Self::Request> {
        None
    }

    fn serve<'a>(
        &'a self,
        _c: &'a mut crate::front::Conn,
        req: Self::Request,
        _shutdown: &'a pingora::server::ShutdownWatch,
    ) -> crate::front::Serving<'a> {
        match req {}
    }

    fn refusal(&self, why: crate::policy::request::Refusal) -> crate::front::Refusing {
        let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let detail = format!("the request was refused: {}", why.code());
        let r = problem(status, "bad_request", &detail, None);
        crate::front::Refusing {
            status: status.as_u16(),
            content_type: "application/problem+json",
            body: std::borrow::Cow::Owned(r.into_body()),
            request_id: None,
        }
    }

    fn refused(
        &self,
        _refusing: crate::front::Refusing,
        _seen: Option<crate::front::Seen>,
        _status: u16,
    ) {
        // The admin API counts and logs no requests of its own.
    }
}

/// `metrics.listen`: `/metrics` and `/healthz` only, no token.
pub struct MetricsEndpoint {
    state: Arc<State>,
    rollouts: Arc<Rollouts>,
}

impl MetricsEndpoint {
    pub fn new(state: Arc<State>, rollouts: Arc<Rollouts>) -> Self {
        MetricsEndpoint { state, rollouts }
    }
}

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        open_endpoint(&self.state, &self.rollouts, session).unwrap_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "this listener serves /metrics and /healthz only",
            )
        })
    }
}

/// Bytes of an oversized body read and discarded before answering 413, so that a client still sending
/// it can read the answer instead of having its connection reset.
const DISCARD_LIMIT: usize = 4 * MAX_BODY;

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    let mut discarded = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if discarded > 0 || body.len() + chunk.len() > MAX_BODY {
                    discarded += body.len() + chunk.len();
                    body = Vec::new();
                    if discarded > DISCARD_LIMIT {
                        return Err(too_large());
                    }
                    continue;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) if discarded > 0 => return Err(too_large()),
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read body: {e}"),
                ))
            }
        }
    }
}

/// The decoded value of query parameter `name`, if present.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| crate::release::percent_decode(v).into_owned())
}

fn too_large() -> Response<Vec<u8>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than {MAX_BODY} bytes"),
    )
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(status, "application/json", body)
}

/// A refusal as RFC 9457 problem details, with a `code` named after its status (see [`problem`]).
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        503 => "unavailable",
        507 => "no_space",
        _ => "internal_error",
    };
    problem(status, code, message, None)
}

/// Every refusal of the admin API: `application/problem+json` (RFC 9457) with `type`, `title`,
/// `status`, `detail`, a stable `code` scripts can match on, and `errors` (each with its `path`)
/// where there are several.
pub(crate) fn problem(
    status: StatusCode,
    code: &str,
    detail: &str,
    errors: Option<Vec<body::ConfigProblem>>,
) -> Response<Vec<u8>> {
    let body = body::Problem {
        kind: format!("urn:switchyard:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
        code: code.to_string(),
        errors,
    };
    let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
    respond(status, "application/problem+json", body)
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}
