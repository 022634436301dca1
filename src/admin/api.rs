//! The `/v1/*` endpoints. Each handler either answers from the live snapshot or makes exactly one
//! change through [`State::change`]; every refusal is a 4xx with a JSON body naming the problem.

use super::{error, json, respond, Request};
use crate::config::{Config, PercentValue, RouteConfig};
use crate::release::{self, percent_decode, Outcome, Reason, RequestView};
use crate::state::{Change, ChangeError, Snapshot, State};
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) fn handle(state: &State, actor: &str, req: &Request) -> Response<Vec<u8>> {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (&req.method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => json(StatusCode::OK, &status(&state.load())),
        (&Method::GET, ["v1", "config"]) => get_config(&state.load()),
        (&Method::PUT, ["v1", "config"]) => put_config(state, actor, req),
        (&Method::PATCH, ["v1", "routes", route]) => patch_route(state, actor, route, &req.body),
        (&Method::POST, ["v1", "routes", route, "rollback"]) => rollback(state, actor, route),
        (&Method::GET, ["v1", "revisions"]) => revisions(state),
        (&Method::POST, ["v1", "revisions", n, "restore"]) => restore(state, actor, n),
        (&Method::GET, ["v1", "routes", route, "explain"]) => {
            explain(&state.load(), route, req.query.as_deref())
        }
        (&Method::GET, ["v1", "stats"]) => {
            match super::stats::stats(state.metrics(), &state.load(), req.query.as_deref()) {
                Some(v) => json(StatusCode::OK, &v),
                None => error(StatusCode::NOT_FOUND, "no such route"),
            }
        }
        (&Method::GET, ["v1", "mirror", "diffs"]) => {
            let route = super::query_param(req.query.as_deref(), "route");
            let diffs = state.metrics().mirror_diffs.list(route.as_deref());
            json(StatusCode::OK, &json!({ "diffs": diffs }))
        }
        (&Method::GET, ["v1", "audit"]) => {
            json(StatusCode::OK, &json!({ "entries": state.audit() }))
        }
        (_, ["v1", "status" | "config" | "revisions" | "audit" | "stats"])
        | (_, ["v1", "mirror", "diffs"])
        | (_, ["v1", "routes", _])
        | (_, ["v1", "routes", _, "rollback" | "explain"])
        | (_, ["v1", "revisions", _, "restore"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {} {}", req.method, req.path),
        ),
    }
}

/// Routes with their current split / live colour / mirror / rollout, and the revision.
fn status(s: &Snapshot) -> Value {
    let routes: Vec<Value> = s
        .config
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "match": r.matcher,
                "rules": r.rules.len(),
                "split": r.split.as_ref().map(|sp| &sp.targets),
                "blue_green": r.blue_green,
                "mirror": r.mirror,
                "rollout": r.rollout,
            })
        })
        .collect();
    json!({ "revision": s.revision, "routes": routes })
}

fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

fn get_config(s: &Snapshot) -> Response<Vec<u8>> {
    let mut r = respond(
        StatusCode::OK,
        "application/yaml",
        s.config.to_yaml().into_bytes(),
    );
    if let Ok(v) = http::HeaderValue::from_str(&etag(s.revision)) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

fn put_config(state: &State, actor: &str, req: &Request) -> Response<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(&req.body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8 text");
    };
    // Parsed only: the change compiles it, and compiling validates.
    let config = match Config::parse_str(text) {
        Ok(c) => c,
        Err(errors) => {
            return invalid(&errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        }
    };
    let if_match = req.if_match.as_deref().map(str::trim);
    let change = Change {
        actor,
        action: "config.put",
        route: None,
        reason: None,
    };
    changed(state.change(change, |live| {
        // Checked under the writer lock, so no change can slip in between the check and the swap.
        match if_match {
            Some(tag) if tag != "*" && tag != etag(live.revision) => {
                Err(ChangeError::Conflict(format!(
                    "If-Match {tag} does not match the live revision {}",
                    etag(live.revision)
                )))
            }
            _ => Ok(config),
        }
    }))
}

/// `{"split":{..}}`, `{"live":"green"}` or `{"mirror":{"percent":N}}`.
fn patch_route(state: &State, actor: &str, route: &str, body: &[u8]) -> Response<Vec<u8>> {
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body is not valid JSON: {e}"),
            )
        }
    };
    let Some(fields) = patch.as_object().filter(|o| !o.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object with split, live or mirror",
        );
    };
    let change = Change {
        actor,
        action: "route.patch",
        route: Some(route),
        reason: None,
    };
    changed(state.change(change, |live| {
        let mut config = live.config.clone();
        let r = route_mut(&mut config, route)?;
        for (key, value) in fields {
            match key.as_str() {
                "split" => patch_split(r, value)?,
                "live" => patch_live(r, value)?,
                "mirror" => patch_mirror(r, value)?,
                other => {
                    return Err(refused(format!(
                        "unknown field {other:?} (expected split, live or mirror)"
                    )))
                }
            }
        }
        Ok(config)
    }))
}

fn patch_split(r: &mut RouteConfig, value: &Value) -> Result<(), ChangeError> {
    let split = r
        .split
        .as_mut()
        .ok_or_else(|| refused(format!("route {:?} has no split", r.name)))?;
    let weights = value
        .as_object()
        .ok_or_else(|| refused("split must be an object of target: weight".into()))?;
    for (target, w) in weights {
        let w = w
            .as_f64()
            .ok_or_else(|| refused(format!("split.{target}: weight must be a number, got {w}")))?;
        // Known targets keep their place (so bucket ranges do not reshuffle users); new ones go last.
        split.targets.insert(target.as_str(), w);
    }
    Ok(())
}

fn patch_live(r: &mut RouteConfig, value: &Value) -> Result<(), ChangeError> {
    let bg = r
        .blue_green
        .as_mut()
        .ok_or_else(|| refused(format!("route {:?} is not blue/green", r.name)))?;
    match value.as_str() {
        Some(c @ ("blue" | "green")) => bg.live = c.to_string(),
        _ => {
            return Err(refused(format!(
                "live must be \"blue\" or \"green\", got {value}"
            )))
        }
    }
    Ok(())
}

fn patch_mirror(r: &mut RouteConfig, value: &Value) -> Result<(), ChangeError> {
    let m = r
        .mirror
        .as_mut()
        .ok_or_else(|| refused(format!("route {:?} has no mirror", r.name)))?;
    let fields = value
        .as_object()
        .ok_or_else(|| refused("mirror must be an object like {\"percent\": 10}".into()))?;
    for (key, v) in fields {
        match (key.as_str(), v.as_f64()) {
            ("percent", Some(p)) => m.percent = PercentValue::Number(p),
            ("percent", None) => {
                return Err(refused(format!("mirror.percent must be a number, got {v}")))
            }
            (other, _) => {
                return Err(refused(format!(
                    "mirror.{other} cannot be patched (only percent)"
                )))
            }
        }
    }
    Ok(())
}

/// All non-rule traffic back to the baseline: split → first target 100%; blue/green → the other colour.
fn rollback(state: &State, actor: &str, route: &str) -> Response<Vec<u8>> {
    let change = Change {
        actor,
        action: "route.rollback",
        route: Some(route),
        reason: None,
    };
    changed(state.change(change, |live| {
        let mut config = live.config.clone();
        let r = route_mut(&mut config, route)?;
        if let Some(split) = r.split.as_mut() {
            let first = split.targets.keys().next().map(str::to_string);
            let names: Vec<String> = split.targets.keys().map(str::to_string).collect();
            for name in names {
                let w = if Some(&name) == first.as_ref() {
                    100.0
                } else {
                    0.0
                };
                split.targets.insert(name, w);
            }
        } else if let Some(bg) = r.blue_green.as_mut() {
            bg.live = if bg.live == "blue" {
                "green".into()
            } else {
                "blue".into()
            };
        }
        Ok(config)
    }))
}

fn revisions(state: &State) -> Response<Vec<u8>> {
    let live = state.load().revision;
    let audit = state.audit();
    let list: Vec<Value> = state
        .revisions()
        .into_iter()
        .map(|n| {
            let entry = audit.iter().rev().find(|e| e.revision == n);
            json!({
                "revision": n,
                "live": n == live,
                "at": entry.map(|e| e.at.clone()),
                "actor": entry.map(|e| e.actor.clone()),
                "action": entry.map(|e| e.action.clone()),
                "route": entry.and_then(|e| e.route.clone()),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "live": live, "revisions": list }))
}

fn restore(state: &State, actor: &str, n: &str) -> Response<Vec<u8>> {
    let Ok(n) = n.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("revision must be a number, got {n:?}"),
        );
    };
    let Some(text) = state.revision_config(n) else {
        return error(StatusCode::NOT_FOUND, &format!("no revision {n} is kept"));
    };
    let config = match Config::parse_str(&text) {
        Ok(c) => c,
        Err(errors) => {
            return invalid(&errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        }
    };
    let reason = format!("restore of revision {n}");
    let change = Change {
        actor,
        action: "revision.restore",
        route: None,
        reason: Some(&reason),
    };
    changed(state.change(change, |_| Ok(config)))
}

/// Which target a request with the given attributes gets on `route`, and why. Query parameters:
/// `header.NAME=V`, `cookie.NAME=V`, `query.NAME=V`, `client=ID`, `ip=ADDR`, `method=M`.
fn explain(s: &Snapshot, route: &str, query: Option<&str>) -> Response<Vec<u8>> {
    let table = &s.table;
    let Some(route_id) = table.route_id(route) else {
        return error(StatusCode::NOT_FOUND, &format!("no such route {route:?}"));
    };
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
                return error(StatusCode::BAD_REQUEST, &format!("invalid header {name:?}"));
            };
            headers.append(n, v);
        } else if let Some(name) = k.strip_prefix("cookie.") {
            cookies.push(format!("{name}={v}"));
        } else if let Some(name) = k.strip_prefix("query.") {
            params.push(format!("{name}={v}"));
        } else {
            match k.as_ref() {
                "client" => match table.client_id(&v) {
                    Some(id) => client = Some(id),
                    None => {
                        return error(StatusCode::BAD_REQUEST, &format!("no such client {v:?}"))
                    }
                },
                "ip" => match v.parse() {
                    Ok(addr) => ip = Some(addr),
                    Err(_) => return error(StatusCode::BAD_REQUEST, &format!("invalid ip {v:?}")),
                },
                "method" => method = v.to_ascii_uppercase(),
                other => {
                    let hint = "use header.NAME, cookie.NAME, query.NAME, client, ip or method";
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown parameter {other:?}: {hint}"),
                    );
                }
            }
        }
    }
    if !cookies.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&cookies.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
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
            json(
                StatusCode::OK,
                &json!({
                    "route": route,
                    "target": if random { Value::Null } else { json!(table.upstream_name(d.target)) },
                    "reason": if random { "split:random".to_string() } else { d.reason.to_string() },
                    "explanation": why,
                    "revision": s.revision,
                }),
            )
        }
        Outcome::ClientRequired { .. } => json(
            StatusCode::OK,
            &json!({"route": route, "target": null, "reason": "client_required", "explanation": "the route requires a known API client (401)", "revision": s.revision}),
        ),
        Outcome::NoRoute => error(StatusCode::NOT_FOUND, &format!("no such route {route:?}")),
    }
}

fn route_mut<'a>(config: &'a mut Config, name: &str) -> Result<&'a mut RouteConfig, ChangeError> {
    config
        .routes
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| ChangeError::NotFound(format!("no such route {name:?}")))
}

fn refused(message: String) -> ChangeError {
    ChangeError::Refused(message)
}

fn invalid(errors: &[String]) -> Response<Vec<u8>> {
    json(StatusCode::BAD_REQUEST, &json!({ "errors": errors }))
}

/// The answer to a change: the new revision, or why nothing changed.
fn changed(result: Result<Arc<Snapshot>, ChangeError>) -> Response<Vec<u8>> {
    match result {
        Ok(s) => json(StatusCode::OK, &json!({ "revision": s.revision })),
        Err(ChangeError::Invalid(errors)) => {
            invalid(&errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        }
        Err(ChangeError::NotFound(m)) => error(StatusCode::NOT_FOUND, &m),
        Err(ChangeError::Conflict(m)) => error(StatusCode::CONFLICT, &m),
        Err(ChangeError::Refused(m)) => error(StatusCode::BAD_REQUEST, &m),
        Err(ChangeError::Storage(m)) => error(StatusCode::INTERNAL_SERVER_ERROR, &m),
    }
}
