//! A request as Pingora parsed it (an HTTP/2 stream the engine reads, or any request on Pingora's
//! pipeline): its release decision, its fields as the access log keeps them, and the rewrites of its
//! head both paths make before it goes upstream.

use super::access_log;
use crate::policy::headers;
use crate::release::{self, Outcome, RequestView};
use crate::state::Snapshot;
use pingora::http::RequestHeader;
use pingora::Result;
use std::sync::Arc;

/// The release decision for a request Pingora parsed (routed on `route_path` when the request rules
/// normalised it), and whether it is mirrored.
pub(super) fn decide(
    req: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    snapshot: &Snapshot,
    route_path: Option<&str>,
) -> (Outcome, bool) {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let view = RequestView {
        method: req.method.as_str(),
        host,
        path: route_path.unwrap_or(req.uri.path()),
        query: req.uri.query(),
        headers: (&req.headers).into(),
        client_ip,
    };
    let outcome = release::decide(&snapshot.table, &view, &mut random_bucket);
    let mirrored = match &outcome {
        Outcome::Routed(d) => {
            release::mirror_for(&snapshot.table, d, &view, &mut random_bucket).is_some()
        }
        _ => false,
    };
    (outcome, mirrored)
}

/// A decision made before the request reached Pingora's pipeline (by the engine, for an HTTP/2
/// stream it gave back), kept in the request's extensions: the pipeline follows it rather than
/// drawing a second time.
#[derive(Clone)]
pub(crate) struct Decided {
    /// The snapshot it was decided on, which the request reads to its end.
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) outcome: Outcome,
    pub(crate) mirrored: bool,
}

/// The method, path and fields of a request Pingora parsed, as the access log keeps them.
pub(super) fn logged_request(
    req: &RequestHeader,
    client_addr: Option<std::net::IpAddr>,
    tls_version: Option<String>,
) -> access_log::RequestLog {
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| access_log::logged_value(v.as_bytes()))
    };
    access_log::RequestLog {
        method: req.method.clone(),
        path: req.uri.path().to_string(),
        host: req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header(http::header::HOST)),
        user_agent: header(http::header::USER_AGENT),
        forwarded_for: header(http::HeaderName::from_static("x-forwarded-for")),
        traceparent: req
            .headers
            .get("traceparent")
            .and_then(|v| access_log::valid_traceparent(v.as_bytes())),
        client_addr,
        tls_version,
    }
}

pub(super) fn random_bucket() -> u32 {
    rand::random::<u32>()
}

/// Removes every client-sent `X-Switchyard-*` header: only the proxy speaks in that namespace.
pub(super) fn strip_internal_headers(req: &mut RequestHeader) {
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| headers::internal(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

/// Sends an HTTP/1.1 upstream the cookies of an HTTP/2 request, which may come as a field each, in one
/// field (RFC 9113 §8.2.3), as the engine does.
pub(super) fn one_cookie_field(req: &mut RequestHeader) -> Result<()> {
    let mut all = req.headers.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for more in req.headers.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    req.remove_header(&http::header::COOKIE);
    req.insert_header(http::header::COOKIE, joined)?;
    Ok(())
}

/// Sends one `Content-Length` upstream however the client wrote it: identical fields, or `5, 5` in
/// one, are one length (the front door refused any that differ).
pub(super) fn one_content_length(req: &mut RequestHeader) -> Result<()> {
    let length = {
        let mut all = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
        let Some(first) = all.next() else {
            return Ok(());
        };
        if all.next().is_none() && !first.as_bytes().contains(&b',') {
            return Ok(());
        }
        first
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
    };
    req.remove_header(&http::header::CONTENT_LENGTH);
    if let Some(length) = length {
        req.insert_header(http::header::CONTENT_LENGTH, length)?;
    }
    Ok(())
}
