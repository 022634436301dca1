//! The `/v1/*` endpoints. Each handler either answers from the live snapshot or makes exactly one
//! change through [`State::change`]; every refusal is a 4xx with a JSON body naming the problem.

use super::body::{
    AuditBody, ChangeResult, ConfigProblem, DiffsBody, ListedRoute, RevisionItem, RevisionsBody,
    RouteChange, RouteDetail, RouteView, RoutesBody, StatusBody, UpstreamView,
};
use super::{error, json, respond, Request};
use crate::config::{Config, PercentValue, RouteConfig};
use crate::rollout::Rollouts;
use crate::state::{Change, ChangeError, Snapshot, State};
use http::{Method, Response, StatusCode};
use serde_json::Value;

pub(crate) fn handle(
    state: &State,
    rollouts: &Rollouts,
    actor: &str,
    req: &Request,
) -> Response<Vec<u8>> {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let reason = match req.method {
        Method::GET => None,
        _ => match reason(req) {
            Ok(r) => r,
            Err(m) => return error(StatusCode::BAD_REQUEST, &m),
        },
    };
    let w = Writer {
        state,
        actor,
        reason,
        if_match: req.if_match.as_deref(),
    };
    match (&req.method, segments.as_slice()) {
        (&Method::GET, ["v1", "stats" | "mirror" | "audit" | "revisions", ..])
            if unknown_param(req.query.as_deref(), &LIST_PARAMS).is_some() =>
        {
            let name = unknown_param(req.query.as_deref(), &LIST_PARAMS);
            error(
                StatusCode::BAD_REQUEST,
                &format!("unknown query parameter {:?}", name.unwrap_or_default()),
            )
        }
        (&Method::GET, ["v1", "status"]) => {
            let live = state.load();
            let body = StatusBody {
                revision: live.revision,
                routes: listed_routes(state, rollouts, &live),
                upstreams: upstreams(&live),
                fleet: crate::fleet::of(state).map(|f| f.status()),
            };
            with_etag(json(StatusCode::OK, &body), live.revision)
        }
        (&Method::GET, ["v1", "fleet"]) => fleet(state),
        (&Method::GET, ["v1", "routes"]) => {
            let live = state.load();
            let body = RoutesBody {
                routes: listed_routes(state, rollouts, &live),
                revision: live.revision,
            };
            with_etag(json(StatusCode::OK, &body), live.revision)
        }
        (&Method::GET, ["v1", "routes", route]) => route_detail(state, rollouts, route),
        (&Method::GET, ["v1", "config"]) => get_config(&state.load()),
        (&Method::PUT, ["v1", "config"]) => put_config(&w, req),
        (&Method::PATCH, ["v1", "routes", route]) => patch_route(&w, route, &req.body),
        (&Method::POST, ["v1", "routes", route, "rollback"]) => rollback(&w, route),
        (&Method::GET, ["v1", "routes", route, "rollout"]) => match rollouts.view(state, route) {
            Some(v) => json(StatusCode::OK, &v),
            None => no_rollout(&state.load(), route),
        },
        (&Method::POST, ["v1", "routes", route, "rollout", action]) => {
            control_rollout(&w, rollouts, req, route, action)
        }
        (&Method::GET, ["v1", "revisions"]) => revisions(state, req.query.as_deref()),
        (&Method::GET, ["v1", "openapi.json"]) => super::respond(
            StatusCode::OK,
            "application/json",
            super::openapi::document().to_vec(),
        ),
        (&Method::POST, ["v1", "revisions", n, "restore"]) => restore(&w, n),
        (&Method::GET, ["v1", "routes", route, "explain"]) => {
            super::explain::explain(&state.load(), route, req.query.as_deref())
        }
        (&Method::GET, ["v1", "stats"]) => stats(state, req),
        (&Method::GET, ["v1", "mirror", "diffs"]) => {
            let route = super::query_param(req.query.as_deref(), "route");
            let diffs = state.metrics().mirror_diffs.list(route.as_deref());
            json(StatusCode::OK, &DiffsBody { diffs })
        }
        (&Method::GET, ["v1", "routes", route, "mirror", "fields"]) => {
            super::mirror::fields(&state.load(), state.metrics(), route)
        }
        (&Method::GET, ["v1", "audit"]) => audit(state, req),
        (_, path) => not_here(req, path),
    }
}

/// A path this API has, with a method it does not take (405), or a path it does not have (404).
fn not_here(req: &Request, path: &[&str]) -> Response<Vec<u8>> {
    let known = matches!(
        path,
        [
            "v1",
            "status"
                | "config"
                | "revisions"
                | "audit"
                | "stats"
                | "routes"
                | "openapi.json"
                | "fleet"
        ] | ["v1", "mirror", "diffs"]
            | ["v1", "routes", _]
            | ["v1", "routes", _, "rollback" | "explain" | "rollout"]
            | ["v1", "routes", _, "rollout", _]
            | ["v1", "routes", _, "mirror", "fields"]
            | ["v1", "revisions", _, "restore"]
    );
    if known {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {}", req.method, req.path),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {} {}", req.method, req.path),
        )
    }
}

/// `GET /v1/routes/{name}`: the route as status shows it, with its rollout in full.
fn route_detail(state: &State, rollouts: &Rollouts, route: &str) -> Response<Vec<u8>> {
    let live = state.load();
    match route_status(&live, route) {
        Some(r) => {
            let body = RouteDetail {
                route: r,
                rollout_state: rollouts.view(state, route),
            };
            with_etag(json(StatusCode::OK, &body), live.revision)
        }
        None => error(StatusCode::NOT_FOUND, &live.config.no_such_route(route)),
    }
}

/// `POST /v1/routes/{name}/rollout/{action}`: here, or handed to the rollout's leader in a fleet.
fn control_rollout(
    w: &Writer<'_>,
    rollouts: &Rollouts,
    req: &Request,
    route: &str,
    action: &str,
) -> Response<Vec<u8>> {
    match rollouts.control(w.state, route, action, w.actor, w.reason.as_deref()) {
        Ok(v) => {
            let revision = w.state.load().revision;
            with_etag(json(StatusCode::OK, &v), revision)
        }
        Err(crate::rollout::ControlError::NotFound(m)) => error(StatusCode::NOT_FOUND, &m),
        Err(crate::rollout::ControlError::Conflict(m)) => error(StatusCode::CONFLICT, &m),
        Err(crate::rollout::ControlError::Change(e)) => change_refused(e),
        Err(e @ crate::rollout::ControlError::Elsewhere { .. }) => to_leader(req, e),
    }
}

/// `GET /v1/stats`.
fn stats(state: &State, req: &Request) -> Response<Vec<u8>> {
    let live = state.load();
    match super::stats::stats(state.metrics(), &live, req.query.as_deref()) {
        Some(v) => json(StatusCode::OK, &v),
        None => {
            let route = super::query_param(req.query.as_deref(), "route").unwrap_or_default();
            error(StatusCode::NOT_FOUND, &live.config.no_such_route(&route))
        }
    }
}

/// `GET /v1/audit`.
fn audit(state: &State, req: &Request) -> Response<Vec<u8>> {
    match Page::from_query(req.query.as_deref()) {
        Ok(page) => {
            let (entries, next_after) = page.take(state.audit(), |e| e.revision);
            json(
                StatusCode::OK,
                &AuditBody {
                    entries,
                    next_after,
                },
            )
        }
        Err(m) => error(StatusCode::BAD_REQUEST, &m),
    }
}

/// Every route as status shows it, each with its rollout's state in one line.
fn listed_routes(state: &State, rollouts: &Rollouts, s: &Snapshot) -> Vec<ListedRoute> {
    s.config
        .routes
        .iter()
        .map(|r| ListedRoute {
            route: RouteView::of(r),
            rollout_state: rollouts.view(state, &r.name).map(|v| v.summary()),
        })
        .collect()
}

fn no_rollout(s: &Snapshot, route: &str) -> Response<Vec<u8>> {
    if s.config.routes.iter().any(|r| r.name == route) {
        error(
            StatusCode::NOT_FOUND,
            &format!("route {route:?} has no rollout configured"),
        )
    } else {
        error(StatusCode::NOT_FOUND, &s.config.no_such_route(route))
    }
}

/// 503 with `Retry-After: SECONDS`: nothing was done, the same call may succeed shortly (`ctl`
/// retries it).
fn unavailable(code: &str, detail: &str, seconds: &'static str) -> Response<Vec<u8>> {
    let mut r = super::problem(StatusCode::SERVICE_UNAVAILABLE, code, detail, None);
    r.headers_mut()
        .insert("retry-after", http::HeaderValue::from_static(seconds));
    r
}

/// Marks a rollout control call one instance of a fleet hands to the route's leader.
pub(crate) const FORWARDED_HEADER: &str = "x-switchyard-forwarded";

/// A rollout control call made on an instance that does not lead the route's rollout: handed to
/// the leader's admin API with the caller's credentials, and its answer returned as it is. A call
/// already handed over once, or with no leader known, is refused (503, retried by `ctl`).
fn to_leader(req: &Request, e: crate::rollout::ControlError) -> Response<Vec<u8>> {
    let unavailable = |m: &str| unavailable("not_leader", m, "1");
    let crate::rollout::ControlError::Elsewhere {
        admin: Some(admin), ..
    } = &e
    else {
        return unavailable(&e.to_string());
    };
    if req.forwarded {
        return unavailable(&format!(
            "{e} (this call was already handed over once: leadership is moving)"
        ));
    }
    let url = match &req.query {
        Some(q) => format!("http://{admin}{}?{q}", req.path),
        None => format!("http://{admin}{}", req.path),
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    let mut call = agent
        .request(req.method.as_str(), &url)
        .set(FORWARDED_HEADER, "1")
        .set("content-type", "application/json");
    if let Some(a) = &req.authorization {
        call = call.set("authorization", a);
    }
    if let Some(m) = &req.if_match {
        call = call.set("if-match", m);
    }
    let answer = match call.send_bytes(&req.body) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => {
            return unavailable(&format!("{e}; it cannot be reached: {t}"));
        }
    };
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = match answer.header("content-type") {
        Some(t) if t.starts_with("application/problem+json") => "application/problem+json",
        _ => "application/json",
    };
    let etag = answer.header("etag").map(str::to_string);
    let mut body = Vec::new();
    if let Err(err) = std::io::Read::read_to_end(&mut answer.into_reader(), &mut body) {
        return unavailable(&format!("{e}; its answer could not be read: {err}"));
    }
    let mut r = super::respond(status, content_type, body);
    if let Some(tag) = etag.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(http::header::ETAG, tag);
    }
    r
}

/// `GET /v1/fleet`: this instance in its fleet, and every live instance with the revision it serves
/// and the rollouts it leads.
fn fleet(state: &State) -> Response<Vec<u8>> {
    let Some(fleet) = crate::fleet::of(state) else {
        return super::problem(
            StatusCode::NOT_FOUND,
            "not_in_a_fleet",
            "this instance is not in a fleet: its config has no store.etcd",
            None,
        );
    };
    match fleet.instances() {
        Ok(instances) => json(
            StatusCode::OK,
            &crate::fleet::FleetView {
                status: fleet.status(),
                revision: state.load().revision,
                instances,
            },
        ),
        Err(e) => unavailable(
            "store_unavailable",
            &format!("the fleet's instances cannot be read from etcd: {e}"),
            "2",
        ),
    }
}

/// Every upstream with its backends' health.
fn upstreams(s: &Snapshot) -> Vec<UpstreamView> {
    s.pools
        .iter()
        .map(|p| {
            let backends = p.backend_health();
            UpstreamView {
                name: p.name.to_string(),
                health_check: backends.first().is_some_and(|b| b.checked),
                backends,
            }
        })
        .collect()
}

fn route_status(s: &Snapshot, name: &str) -> Option<RouteView> {
    s.config
        .routes
        .iter()
        .find(|r| r.name == name)
        .map(RouteView::of)
}

fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

fn with_etag(mut r: Response<Vec<u8>>, revision: u64) -> Response<Vec<u8>> {
    if let Ok(v) = http::HeaderValue::from_str(&etag(revision)) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

/// Longest `reason` kept in the audit log.
const MAX_REASON: usize = 1024;

/// The `reason` of a change: the `reason` field of a JSON body, or the `reason` query parameter (for a
/// YAML body). A reason that is not text, or too long, refuses the call.
fn reason(req: &Request) -> Result<Option<String>, String> {
    let from_body = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("reason").cloned());
    let reason = match from_body {
        Some(Value::String(r)) => Some(r),
        Some(Value::Null) | None => super::query_param(req.query.as_deref(), "reason"),
        Some(other) => return Err(format!("reason must be text, got {other}")),
    };
    match reason {
        Some(r) if r.chars().count() > MAX_REASON => {
            Err(format!("reason is longer than {MAX_REASON} characters"))
        }
        Some(r) if r.trim().is_empty() => Ok(None),
        r => Ok(r),
    }
}

/// The first query parameter not in `known`, if any (an empty name counts as unknown).
fn unknown_param(query: Option<&str>, known: &[&str]) -> Option<String> {
    query?
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .find(|k| !known.contains(k))
        .map(str::to_string)
}

/// Who makes an API change, why, and the revision the caller based it on (`If-Match`).
struct Writer<'a> {
    state: &'a State,
    actor: &'a str,
    reason: Option<String>,
    if_match: Option<&'a str>,
}

impl Writer<'_> {
    /// Makes one change. `If-Match` is checked under the writer lock, so no other change can slip in
    /// between the check and the swap. The answer carries the new revision, its `ETag`, and the route
    /// as status showed it before and shows it after.
    fn apply(
        &self,
        action: &str,
        route: Option<&str>,
        edit: impl FnOnce(&Snapshot) -> Result<Config, ChangeError>,
    ) -> Response<Vec<u8>> {
        let change = Change {
            actor: self.actor,
            action,
            route,
            reason: self.reason.as_deref(),
        };
        let mut before = None;
        let result = self.state.change(change, |live| {
            if let Some(tag) = self.if_match.map(str::trim) {
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                if tag != "*" && tag.trim_matches('"') != live.revision.to_string() {
                    return Err(ChangeError::Conflict(format!(
                        "If-Match {tag} does not match the live revision {}: someone else changed the config since; read it again and retry",
                        etag(live.revision)
                    )));
                }
            }
            if let Some(name) = route {
                before = route_status(live, name);
            }
            edit(live)
        });
        match result {
            Ok(s) => {
                let body = ChangeResult {
                    revision: s.revision,
                    route: route.map(|name| RouteChange {
                        route: name.to_string(),
                        before,
                        after: route_status(&s, name),
                    }),
                };
                with_etag(json(StatusCode::OK, &body), s.revision)
            }
            Err(e) => change_refused(e),
        }
    }
}

fn get_config(s: &Snapshot) -> Response<Vec<u8>> {
    let yaml = s.config.to_yaml().into_bytes();
    with_etag(
        respond(StatusCode::OK, "application/yaml", yaml),
        s.revision,
    )
}

fn put_config(w: &Writer<'_>, req: &Request) -> Response<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(&req.body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8 text");
    };
    let config = match Config::load_str(text) {
        Ok(c) => c,
        Err(errors) => return invalid(&errors.0),
    };
    w.apply("config.put", None, |live| {
        // What would lock the operator out cannot be undone through the API: refused.
        match (&live.config.admin, &config.admin) {
            (Some(_), None) => Err(refused(
                "the config has no admin section: applying it would remove this admin API after a restart, with no way to undo it remotely; keep the admin section".to_string(),
            )),
            (Some(before), Some(after)) if !before.tokens.is_empty() && after.tokens.is_empty() => {
                Err(refused(
                    "the config has no admin token left: applying it would open the admin API to anyone who reaches it; keep at least one token".to_string(),
                ))
            }
            _ => Ok(config),
        }
    })
}

/// `{"split":{..}}`, `{"live":"green"}` or `{"mirror":{"percent":N}}`.
fn patch_route(w: &Writer<'_>, route: &str, body: &[u8]) -> Response<Vec<u8>> {
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body is not valid JSON: {e}"),
            )
        }
    };
    let Some(fields) = patch
        .as_object()
        .filter(|o| o.keys().any(|k| k != "reason"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object with split, live or mirror (and an optional reason)",
        );
    };
    w.apply("route.patch", Some(route), |live| {
        let mut config = live.config.clone();
        let r = route_mut(&mut config, route)?;
        for (key, value) in fields {
            match key.as_str() {
                "reason" => {}
                "split" => patch_split(r, value)?,
                "live" => patch_live(r, value)?,
                "mirror" => patch_mirror(r, value)?,
                other => {
                    return Err(refused(format!(
                        "unknown field {other:?} (expected split, live, mirror or reason)"
                    )))
                }
            }
        }
        Ok(config)
    })
}

/// Weights (`{"v2": 5}`: shares are weight / total) and exact percentages (`{"v2": "5%"}`: that target
/// gets exactly 5%, the other non-baseline targets keep their shares and the baseline takes the
/// difference). Plain weights are applied first.
fn patch_split(r: &mut RouteConfig, value: &Value) -> Result<(), ChangeError> {
    let split = r
        .split
        .as_mut()
        .ok_or_else(|| refused(format!("route {:?} has no split", r.name)))?;
    let weights = value
        .as_object()
        .ok_or_else(|| refused("split must be an object of target: weight or \"N%\"".into()))?;
    let mut percents = Vec::new();
    for (target, w) in weights {
        match w {
            Value::Number(n) => {
                let w = n.as_f64().unwrap_or(f64::NAN);
                split.targets.insert(target.as_str(), w);
            }
            Value::String(t) if t.trim().ends_with('%') => {
                let p = crate::config::parse::percent(&PercentValue::Text(t.clone()))
                    .map_err(|m| refused(format!("split.{target}: {m}")))?;
                percents.push((target.as_str(), p));
            }
            other => {
                return Err(refused(format!(
                    "split.{target}: expected a weight (a number) or a percentage like \"5%\", got {other}"
                )))
            }
        }
    }
    if percents.is_empty() {
        return Ok(());
    }
    split.set_shares(&percents).map_err(refused)
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
            ("percent", Some(p)) => m.percent = crate::config::Percent::from(p),
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

/// All non-rule traffic back to the baseline: split → `baseline` 100%; blue/green → the other colour.
fn rollback(w: &Writer<'_>, route: &str) -> Response<Vec<u8>> {
    w.apply("route.rollback", Some(route), |live| {
        let mut config = live.config.clone();
        let r = route_mut(&mut config, route)?;
        if let Some(split) = r.split.as_mut() {
            let baseline = split.baseline_name().map(str::to_string);
            let names: Vec<String> = split.targets.keys().map(str::to_string).collect();
            for name in names {
                let w = if Some(&name) == baseline.as_ref() {
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
    })
}

/// `?after=REV&limit=N` on the audit log and the revisions: the items past revision REV, oldest first,
/// at most N of them (default and most: 1,000), and the `after` of the next page when there is one.
struct Page {
    after: u64,
    limit: usize,
}

impl Page {
    const MAX: usize = 1000;

    /// The page asked for, or why the query is refused.
    fn from_query(query: Option<&str>) -> Result<Page, String> {
        let number = |name: &str| -> Result<Option<u64>, String> {
            super::query_param(query, name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name} must be a whole number, got {v:?}"))
                })
                .transpose()
        };
        let after = number("after")?.unwrap_or(0);
        let limit = number("limit")?.map_or(Self::MAX, |n| n as usize);
        if limit == 0 || limit > Self::MAX {
            return Err(format!("limit must be 1 to {}", Self::MAX));
        }
        Ok(Page { after, limit })
    }

    fn take<T>(&self, items: Vec<T>, revision: impl Fn(&T) -> u64) -> (Vec<T>, Option<u64>) {
        let mut page: Vec<T> = items
            .into_iter()
            .filter(|i| revision(i) > self.after)
            .take(self.limit + 1)
            .collect();
        let more = page.len() > self.limit;
        page.truncate(self.limit);
        let next = more.then(|| page.last().map(&revision)).flatten();
        (page, next)
    }
}

fn revisions(state: &State, query: Option<&str>) -> Response<Vec<u8>> {
    let page = match Page::from_query(query) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let live = state.load().revision;
    let audit = state.audit();
    let (numbers, next_after) = page.take(state.revisions(), |n| *n);
    let revisions = numbers
        .into_iter()
        .map(|n| {
            let entry = audit.iter().rev().find(|e| e.revision == n);
            RevisionItem {
                revision: n,
                live: n == live,
                at: entry.map(|e| e.at.clone()),
                actor: entry.map(|e| e.actor.clone()),
                action: entry.map(|e| e.action.clone()),
                route: entry.and_then(|e| e.route.clone()),
            }
        })
        .collect();
    json(
        StatusCode::OK,
        &RevisionsBody {
            live,
            revisions,
            next_after,
        },
    )
}

fn restore(w: &Writer<'_>, n: &str) -> Response<Vec<u8>> {
    let Ok(n) = n.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("revision must be a number, got {n:?}"),
        );
    };
    let Some(text) = w.state.revision_config(n) else {
        return error(StatusCode::NOT_FOUND, &format!("no revision {n} is kept"));
    };
    let config = match Config::parse_str(&text) {
        Ok(c) => c,
        Err(errors) => return invalid(&errors.0),
    };
    let reason = match &w.reason {
        Some(r) => format!("restore of revision {n}: {r}"),
        None => format!("restore of revision {n}"),
    };
    let w = Writer {
        reason: Some(reason),
        ..*w
    };
    w.apply("revision.restore", None, |_| Ok(config))
}

/// The query parameters of the listing calls (stats, mirror diffs, audit, revisions).
const LIST_PARAMS: [&str; 4] = ["route", "after", "limit", "series"];

fn route_mut<'a>(config: &'a mut Config, name: &str) -> Result<&'a mut RouteConfig, ChangeError> {
    let missing = config.no_such_route(name);
    config
        .routes
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or(ChangeError::NotFound(missing))
}

fn refused(message: String) -> ChangeError {
    ChangeError::Refused(message)
}

fn invalid(errors: &[crate::config::ConfigError]) -> Response<Vec<u8>> {
    let detail = match errors {
        [one] => one.to_string(),
        _ => format!("{} problems in the configuration", errors.len()),
    };
    let listed = errors
        .iter()
        .map(|e| ConfigProblem {
            path: e.path.clone(),
            message: e.message.clone(),
            text: e.to_string(),
        })
        .collect();
    super::problem(
        StatusCode::BAD_REQUEST,
        "invalid_config",
        &detail,
        Some(listed),
    )
}

/// Why a change made nothing.
pub(super) fn change_refused(e: ChangeError) -> Response<Vec<u8>> {
    match e {
        ChangeError::Invalid(errors) => invalid(&errors.0),
        ChangeError::NotFound(m) => super::problem(StatusCode::NOT_FOUND, "not_found", &m, None),
        ChangeError::Conflict(m) => super::problem(StatusCode::CONFLICT, "conflict", &m, None),
        ChangeError::Refused(m) => super::problem(StatusCode::BAD_REQUEST, "refused", &m, None),
        ChangeError::Storage(m) => {
            super::problem(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", &m, None)
        }
        ChangeError::NoSpace(m) => {
            super::problem(StatusCode::INSUFFICIENT_STORAGE, "no_space", &m, None)
        }
        ChangeError::Unavailable(m) => unavailable("store_unavailable", &m, "2"),
        e @ ChangeError::HandingOver => unavailable("handing_over", &e.to_string(), "1"),
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
