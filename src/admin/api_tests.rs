#![allow(clippy::unwrap_used)]

use super::*;

const CONFIG: &str = r#"
admin: {listen: "127.0.0.1:0", tokens: {ops: "0000000000000000000000000000000000000000000000000000000000000000"}}
upstreams:
  v1: {backends: ["127.0.0.1:9001"]}
  v2: {backends: ["127.0.0.1:9002"]}
  v3: {backends: ["127.0.0.1:9003"]}
routes:
  - name: api
    match: {path_prefix: /api}
    split: {targets: {v1: 90, v2: 10, v3: 0}, baseline: v1}
    mirror: {to: v3, percent: 0}
  - name: web
    match: {path_prefix: /}
    blue_green: {blue: v1, green: v2, live: blue}
"#;

fn state() -> State {
    State::new(crate::config::Valid::load(CONFIG).unwrap()).unwrap()
}

fn call(method: http::Method, path: &str, query: Option<&str>, body: &str) -> Request {
    Request {
        method,
        path: path.into(),
        query: query.map(str::to_string),
        if_match: None,
        body: body.as_bytes().to_vec(),
        authorization: None,
        forwarded: false,
    }
}

fn answer(state: &State, req: &Request) -> (u16, Value) {
    let r = handle(state, &Rollouts::default(), "ops", req);
    let body = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
    (r.status().as_u16(), body)
}

#[test]
fn a_page_takes_what_follows_after_up_to_limit_and_says_where_the_next_begins() {
    let page = Page::from_query(Some("after=2&limit=2")).unwrap();
    let (items, next) = page.take(vec![1u64, 2, 3, 4, 5], |n| *n);
    assert_eq!((items, next), (vec![3, 4], Some(4)));
    let (items, next) = Page::from_query(None).unwrap().take(vec![1u64, 2], |n| *n);
    assert_eq!((items, next), (vec![1, 2], None));
    for bad in ["limit=0", "limit=1001", "after=x", "limit=-1"] {
        assert!(Page::from_query(Some(bad)).is_err(), "{bad}");
    }
}

#[test]
fn unknown_query_parameters_are_named() {
    assert_eq!(unknown_param(Some("route=a&limit=3"), &LIST_PARAMS), None);
    assert_eq!(
        unknown_param(Some("route=a&rout=b"), &LIST_PARAMS),
        Some("rout".into())
    );
    assert_eq!(unknown_param(Some("=x"), &LIST_PARAMS), Some(String::new()));
    let (status, body) = answer(
        &state(),
        &call(http::Method::GET, "/v1/stats", Some("sries=1"), ""),
    );
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("\"sries\""),
        "{body}"
    );
}

#[test]
fn a_reason_is_text_of_at_most_1024_characters_from_the_body_or_the_query() {
    let r = call(
        http::Method::POST,
        "/x",
        None,
        r#"{"reason": "canary looks bad"}"#,
    );
    assert_eq!(reason(&r).unwrap().as_deref(), Some("canary looks bad"));
    let r = call(
        http::Method::PUT,
        "/x",
        Some("reason=from%20the%20query"),
        "a: b",
    );
    assert_eq!(reason(&r).unwrap().as_deref(), Some("from the query"));
    let r = call(http::Method::POST, "/x", None, r#"{"reason": 7}"#);
    assert!(reason(&r).is_err());
    let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(1025));
    assert!(reason(&call(http::Method::POST, "/x", None, &long)).is_err());
    let r = call(http::Method::POST, "/x", None, r#"{"reason": "   "}"#);
    assert_eq!(reason(&r).unwrap(), None);
}

#[test]
fn a_percentage_sets_that_share_and_the_baseline_takes_the_difference() {
    let s = state();
    let (status, body) = answer(
        &s,
        &call(
            http::Method::PATCH,
            "/v1/routes/api",
            None,
            r#"{"split": {"v2": "25%"}}"#,
        ),
    );
    assert_eq!(status, 200, "{body}");
    let split = s.load().config.routes[0].split.clone().unwrap();
    assert_eq!(split.share("v2"), 25.0);
    assert_eq!(split.share("v1"), 75.0);
    assert_eq!(body["after"]["split"]["targets"][1]["share"], 25.0);
    assert_eq!(body["before"]["split"]["targets"][1]["share"], 10.0);
}

#[test]
fn a_bad_patch_is_refused_naming_what_was_wrong_and_changes_nothing() {
    let s = state();
    let before = s.load().revision;
    for (body, says) in [
        (r#"{"live": "purple"}"#, "is not blue/green"),
        (r#"{"split": {"v2": true}}"#, "expected a weight"),
        (
            r#"{"mirror": {"percent": "x"}}"#,
            "mirror.percent must be a number",
        ),
        (r#"{"mirror": {"to": "v2"}}"#, "cannot be patched"),
        (r#"{"colour": "blue"}"#, "unknown field \"colour\""),
        (
            r#"{"reason": "only a reason"}"#,
            "body must be a JSON object",
        ),
        ("not json", "not valid JSON"),
    ] {
        let (status, answer) = answer(&s, &call(http::Method::PATCH, "/v1/routes/api", None, body));
        assert_eq!(status, 400, "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let (status, answer) = answer(
        &s,
        &call(
            http::Method::PATCH,
            "/v1/routes/apx",
            None,
            r#"{"split": {"v2": 1}}"#,
        ),
    );
    assert_eq!(status, 404);
    assert!(
        answer["detail"].as_str().unwrap().contains("api"),
        "{answer}"
    );
    assert_eq!(s.load().revision, before);
}

#[test]
fn rollback_sends_everything_to_the_baseline_or_flips_the_colour() {
    let s = state();
    let (status, _) = answer(
        &s,
        &call(http::Method::POST, "/v1/routes/api/rollback", None, ""),
    );
    assert_eq!(status, 200);
    assert_eq!(
        s.load().config.routes[0]
            .split
            .as_ref()
            .unwrap()
            .share("v1"),
        100.0
    );
    let (status, body) = answer(
        &s,
        &call(http::Method::POST, "/v1/routes/web/rollback", None, ""),
    );
    assert_eq!(status, 200);
    assert_eq!(body["after"]["blue_green"]["live"], "green");
}

#[test]
fn paths_it_has_refuse_other_methods_and_others_are_not_found() {
    let s = state();
    assert_eq!(
        answer(&s, &call(http::Method::DELETE, "/v1/status", None, "")).0,
        405
    );
    assert_eq!(
        answer(
            &s,
            &call(http::Method::GET, "/v1/routes/api/rollback", None, "")
        )
        .0,
        405
    );
    assert_eq!(
        answer(&s, &call(http::Method::GET, "/v1/nothing", None, "")).0,
        404
    );
    assert_eq!(
        answer(
            &s,
            &call(http::Method::GET, "/v1/routes/api/rollout", None, "")
        )
        .0,
        404
    );
}

/// The documented body of a route patch (`body::RoutePatch`, in the OpenAPI document) takes what
/// the handler takes and refuses what it refuses.
#[test]
fn the_documented_patch_body_is_the_one_the_handler_takes() {
    use super::super::body::RoutePatch;
    let s = state();
    for (route, body) in [
        ("api", r#"{"split": {"v2": 5}}"#),
        (
            "api",
            r#"{"split": {"v2": "25%", "v3": 0}, "reason": "ramp"}"#,
        ),
        ("api", r#"{"mirror": {"percent": 10}}"#),
        ("web", r#"{"live": "green"}"#),
    ] {
        assert!(serde_json::from_str::<RoutePatch>(body).is_ok(), "{body}");
        let path = format!("/v1/routes/{route}");
        let (status, answer) = answer(&s, &call(http::Method::PATCH, &path, None, body));
        assert_eq!(status, 200, "{body}: {answer}");
    }
    for (route, body) in [
        ("api", r#"{"colour": "blue"}"#),
        ("api", r#"{"mirror": {"to": "v2"}}"#),
        ("api", r#"{"split": {"v2": true}}"#),
        ("web", r#"{"live": "purple"}"#),
    ] {
        assert!(serde_json::from_str::<RoutePatch>(body).is_err(), "{body}");
        let path = format!("/v1/routes/{route}");
        let (status, answer) = answer(&s, &call(http::Method::PATCH, &path, None, body));
        assert_eq!(status, 400, "{body}: {answer}");
    }
}
