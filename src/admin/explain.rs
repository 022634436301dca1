//! `GET /v1/routes/{name}/explain`: which target a request with given attributes gets, and why —
//! the pure decision the proxy makes, run on a request described by query parameters.

use super::body::ExplainBody;
use super::{error, json};
use crate::release::{self, percent_decode, Outcome, Reason, RequestView};
use crate::state::Snapshot;
use http::{Response, StatusCode};

/// Which target a request with the given attributes gets on `route`, and why. Query parameters:
/// `header.NAME=V`, `cookie.NAME=V`, `query.NAME=V`, `client=ID`, `ip=ADDR`, `method=M`.
pub(crate) fn explain(s: &Snapshot, route: &str, query: Option<&str>) -> Response<Vec<u8>> {
    let table = &s.table;
    let Some(route_id) = table.route_id(route) else {
        return error(StatusCode::NOT_FOUND, &s.config.no_such_route(route));
    };
    let Described {
        headers,
        params,
        client,
        ip,
        method,
    } = match Described::from_query(s, query) {
        Ok(d) => d,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let query_string = params.join("&");
    let view = RequestView {
        method: &method,
        host: "",
        path: "/",
        query: (!query_string.is_empty()).then_some(query_string.as_str()),
        headers: (&headers).into(),
        client_ip: ip,
    };
    let mut random = || 0u32;
    let baseline = table
        .route(route_id)
        .map(|r| table.upstream_name(r.baseline()).to_string());
    match release::decide_for_client(table, route_id, &view, client, &mut random) {
        Outcome::Routed(d) => {
            let why = match d.reason {
                Reason::Rule(n) => format!("rule {n} matched"),
                Reason::Split { bucket, sticky: Some(k) } => {
                    let key = table.sticky_keys(route_id).get(usize::from(k)).cloned().unwrap_or_default();
                    format!("bucket {bucket} of the split, from sticky key {key}")
                }
                Reason::Split { sticky: None, .. } => {
                    "no sticky key present: each such request gets a random bucket, so the target follows the weights".to_string()
                }
                Reason::Live(c) => format!("live colour {}", c.as_str()),
            };
            let random = matches!(d.reason, Reason::Split { sticky: None, .. });
            let body = ExplainBody {
                route: route.to_string(),
                target: (!random).then(|| table.upstream_name(d.target).to_string()),
                reason: if random {
                    "split:random".to_string()
                } else {
                    d.reason.to_string()
                },
                explanation: why,
                baseline,
                revision: s.revision,
            };
            json(StatusCode::OK, &body)
        }
        Outcome::ClientRequired { .. } => json(
            StatusCode::OK,
            &ExplainBody {
                route: route.to_string(),
                target: None,
                reason: "client_required".into(),
                explanation: "the route requires a known API client (401)".into(),
                baseline,
                revision: s.revision,
            },
        ),
        Outcome::NoRoute => error(StatusCode::NOT_FOUND, &s.config.no_such_route(route)),
    }
}

/// The request `explain` is asked about, from its query parameters.
struct Described {
    headers: http::HeaderMap,
    params: Vec<String>,
    client: Option<crate::release::ClientId>,
    ip: Option<std::net::IpAddr>,
    method: String,
}

impl Described {
    fn from_query(s: &Snapshot, query: Option<&str>) -> Result<Described, String> {
        let mut headers = http::HeaderMap::new();
        let (mut cookies, mut params) = (Vec::new(), Vec::new());
        let (mut client, mut ip, mut method) = (None, None, "GET".to_string());
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            if let Some(name) = k.strip_prefix("header.") {
                let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) else {
                    return Err(format!("invalid header {name:?}"));
                };
                headers.append(n, v);
            } else if let Some(name) = k.strip_prefix("cookie.") {
                cookies.push(format!("{name}={v}"));
            } else if let Some(name) = k.strip_prefix("query.") {
                params.push(format!("{name}={v}"));
            } else {
                match k.as_ref() {
                    "client" => match s.table.client_id(&v) {
                        Some(id) => client = Some(id),
                        None => return Err(format!("no such client {v:?}")),
                    },
                    "ip" => match v.parse() {
                        Ok(addr) => ip = Some(addr),
                        Err(_) => return Err(format!("invalid ip {v:?}")),
                    },
                    "method" => method = v.to_ascii_uppercase(),
                    other => {
                        let hint = "use header.NAME, cookie.NAME, query.NAME, client, ip or method";
                        return Err(format!("unknown parameter {other:?}: {hint}"));
                    }
                }
            }
        }
        if !cookies.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&cookies.join("; ")) {
                headers.insert(http::header::COOKIE, v);
            }
        }
        Ok(Described {
            headers,
            params,
            client,
            ip,
            method,
        })
    }
}
