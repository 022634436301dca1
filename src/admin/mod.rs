//! The admin API (SPEC §4): a Pingora HTTP service on `admin.listen`. `/healthz` and `/metrics`
//! (Prometheus text) are open; every `/v1/*`
//! call needs `Authorization: Bearer <token>`, whose SHA-256 must match one of `admin.tokens`; the
//! token's name is the actor of every change it makes. Bodies are bounded. Every change goes through
//! [`State::change`], so it is validated, persisted, audited, and refused whole on any error.

mod api;
mod stats;

use crate::config::parse;
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
}

impl AdminApi {
    pub fn new(state: Arc<State>) -> Self {
        AdminApi { state }
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
            let Ok(stored) = parse::sha256_hex(digest) else {
                continue;
            };
            let diff = stored
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(diff) == 0 && found.is_none() {
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

        if path == "/metrics" {
            if method != http::Method::GET {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET is allowed on /metrics",
                );
            }
            let live = self.state.load();
            return match crate::metrics::prometheus::render(
                self.state.metrics(),
                live.revision,
                &live.config,
                &live.pools,
                &self.state.rollouts,
            ) {
                Ok(text) => respond(
                    StatusCode::OK,
                    crate::metrics::prometheus::CONTENT_TYPE,
                    text,
                ),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
            };
        }
        if path == "/healthz" {
            return json(
                StatusCode::OK,
                &serde_json::json!({"status": "ok", "revision": self.state.load().revision}),
            );
        }
        if self.state.is_handing_over() {
            // The admin listener is shared with the new process for a few seconds: what this one
            // would answer is no longer current, so the client is sent to try again, and lands there.
            return api::change_refused(crate::state::ChangeError::HandingOver);
        }
        let Some(actor) = self.actor(authorization.as_deref()) else {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <admin token>",
            );
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
        let req = Request {
            method,
            path,
            query,
            if_match,
            body,
        };
        // Off the service's threads: a slow call (stats over thousands of routes, a large config)
        // never holds up /healthz or /metrics, which are answered above without waiting.
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || api::handle(&state, &actor, &req)).await {
            Ok(response) => response,
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the admin call failed: {e}"),
            ),
        }
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

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(status, "application/json", body)
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message }))
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
