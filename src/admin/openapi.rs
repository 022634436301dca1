//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of the admin API. The operations are the
//! table below; every body is the JSON Schema (2020-12, as OpenAPI 3.1 uses) that schemars derives
//! from the Rust type the handler serialises or reads, so the API and its description cannot drift
//! apart. A schemathesis run against a live instance checks every answer against it
//! (tests/openapi.rs).

use super::body::{
    AuditBody, ChangeResult, DiffsBody, ExplainBody, Problem, Reason, RouteDetail, RoutePatch,
    RoutesBody, StatusBody,
};
use super::stats::StatsBody;
use crate::fleet::FleetView;
use crate::rollout::view::RolloutView;
use once_cell::sync::Lazy;
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The document, built once.
pub fn document() -> &'static [u8] {
    static DOCUMENT: Lazy<Vec<u8>> =
        Lazy::new(|| serde_json::to_vec_pretty(&build()).unwrap_or_default());
    &DOCUMENT
}

/// The OpenAPI document itself.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "OpenApi")]
pub struct Document {
    /// `3.1.0`.
    pub openapi: String,
    pub info: Info,
    /// Path → method → operation.
    pub paths: BTreeMap<String, BTreeMap<String, Value>>,
    pub components: Components,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Info {
    pub title: String,
    pub version: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Components {
    /// Every body's JSON Schema, by type name.
    pub schemas: Map<String, Value>,
    #[serde(rename = "securitySchemes")]
    pub security_schemes: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub responses: Map<String, Value>,
}

/// A schema of one body, registered with a generator.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What an operation takes in its body.
#[derive(Clone, Copy)]
enum Body {
    None,
    /// JSON of this type; `true` when it must be there.
    Json(SchemaOf, bool),
    /// A whole config as YAML.
    Yaml,
}

/// What an operation answers with on success.
#[derive(Clone, Copy)]
enum Answer {
    Json(SchemaOf),
    Yaml,
}

/// A parameter's values.
#[derive(Clone, Copy)]
enum Values {
    Text,
    NonEmpty,
    /// A whole number from `min` to `max`.
    Count(u64, u64),
    OneOf(&'static [&'static str]),
}

#[derive(Clone, Copy)]
struct Param {
    name: &'static str,
    /// `path`, `query` or `header`.
    at: &'static str,
    values: Values,
    description: &'static str,
}

const fn path(name: &'static str, values: Values, description: &'static str) -> Param {
    Param {
        name,
        at: "path",
        values,
        description,
    }
}

const fn query(name: &'static str, values: Values, description: &'static str) -> Param {
    Param {
        name,
        at: "query",
        values,
        description,
    }
}

const ROUTE: Param = path("name", Values::Text, "Route name.");
const ROUTE_FILTER: Param = query("route", Values::NonEmpty, "Only this route.");
const AFTER: Param = query(
    "after",
    Values::Count(0, u64::MAX),
    "Only items past this revision (the `next_after` of the previous page).",
);
const LIMIT: Param = query(
    "limit",
    Values::Count(1, 1000),
    "At most this many (1,000).",
);

struct Operation {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    params: &'static [Param],
    body: Body,
    answer: Answer,
    /// A change: takes `If-Match` and a reason, answers the new `ETag`, and can be refused.
    change: bool,
    /// The answer carries the live revision as `ETag`.
    etag: bool,
    /// Its own refusals, beyond those every call or change can get.
    refusals: &'static [(u16, &'static str)],
}

const NO_ROUTE: (u16, &str) = (404, "No such route.");

const OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/v1/status",
        summary: "Routes, backends and the live revision",
        description: Some("In a fleet, also this instance's place in it (`fleet`)."),
        params: &[],
        body: Body::None,
        answer: Answer::Json(schema::<StatusBody>),
        change: false,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/routes",
        summary: "Every route as status shows it",
        description: None,
        params: &[],
        body: Body::None,
        answer: Answer::Json(schema::<RoutesBody>),
        change: false,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/routes/{name}",
        summary: "One route as status shows it, with its rollout in full",
        description: None,
        params: &[ROUTE],
        body: Body::None,
        answer: Answer::Json(schema::<RouteDetail>),
        change: false,
        etag: true,
        refusals: &[NO_ROUTE],
    },
    Operation {
        method: "patch",
        path: "/v1/routes/{name}",
        summary: "Change a route's split, live colour or mirror",
        description: Some("`split` sets weights (`\"5%\"`: exactly that share, the baseline takes the difference); `live` flips blue/green; `mirror.percent` sets the mirrored share."),
        params: &[ROUTE],
        body: Body::Json(schema::<RoutePatch>, true),
        answer: Answer::Json(schema::<ChangeResult>),
        change: true,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "post",
        path: "/v1/routes/{name}/rollback",
        summary: "All non-rule traffic back to the baseline (or the previous live colour); aborts a rollout",
        description: None,
        params: &[ROUTE],
        body: Body::Json(schema::<Reason>, false),
        answer: Answer::Json(schema::<ChangeResult>),
        change: true,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/routes/{name}/explain",
        summary: "Which target a request with these headers, cookies, query or client gets, and why",
        description: Some("Also takes `header.NAME=VALUE`, `cookie.NAME=VALUE` and `query.NAME=VALUE` parameters."),
        params: &[
            ROUTE,
            query("client", Values::Text, "A client id."),
            query("ip", Values::Text, "The client's address."),
            query("method", Values::Text, "The request's method (default GET)."),
        ],
        body: Body::None,
        answer: Answer::Json(schema::<ExplainBody>),
        change: false,
        etag: false,
        refusals: &[(400, "A malformed parameter."), NO_ROUTE],
    },
    Operation {
        method: "get",
        path: "/v1/routes/{name}/rollout",
        summary: "A route's rollout: state, step, plan, time held and left, the newest events and the last check",
        description: None,
        params: &[ROUTE],
        body: Body::None,
        answer: Answer::Json(schema::<RolloutView>),
        change: false,
        etag: false,
        refusals: &[(404, "No such route, or it has no rollout.")],
    },
    Operation {
        method: "post",
        path: "/v1/routes/{name}/rollout/{action}",
        summary: "Control a rollout",
        description: Some("In a fleet, a call made on an instance that does not lead the rollout is handed to the leader."),
        params: &[
            ROUTE,
            path(
                "action",
                Values::OneOf(&["start", "pause", "resume", "abort", "promote", "retry"]),
                "What to do.",
            ),
        ],
        body: Body::Json(schema::<Reason>, false),
        answer: Answer::Json(schema::<RolloutView>),
        change: true,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/config",
        summary: "The effective config (file and API changes) as YAML",
        description: None,
        params: &[],
        body: Body::None,
        answer: Answer::Yaml,
        change: false,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "put",
        path: "/v1/config",
        summary: "Replace the whole config",
        description: Some("The reason goes in the `reason` query parameter."),
        params: &[query("reason", Values::Text, "Why; kept in the audit log.")],
        body: Body::Yaml,
        answer: Answer::Json(schema::<ChangeResult>),
        change: true,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/revisions",
        summary: "Revisions kept in state_dir, oldest first",
        description: None,
        params: &[AFTER, LIMIT],
        body: Body::None,
        answer: Answer::Json(schema::<super::body::RevisionsBody>),
        change: false,
        etag: false,
        refusals: &[(400, "A bad after or limit.")],
    },
    Operation {
        method: "post",
        path: "/v1/revisions/{n}/restore",
        summary: "Make a new revision equal to revision n",
        description: None,
        params: &[path("n", Values::Text, "A kept revision.")],
        body: Body::Json(schema::<Reason>, false),
        answer: Answer::Json(schema::<ChangeResult>),
        change: true,
        etag: true,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/audit",
        summary: "The audit log, oldest first",
        description: None,
        params: &[AFTER, LIMIT],
        body: Body::None,
        answer: Answer::Json(schema::<AuditBody>),
        change: false,
        etag: false,
        refusals: &[(400, "A bad after or limit.")],
    },
    Operation {
        method: "get",
        path: "/v1/stats",
        summary: "Per route x target: the last 60 s and since start",
        description: None,
        params: &[
            ROUTE_FILTER,
            query(
                "series",
                Values::OneOf(&["0", "1"]),
                "1: each target's last minute second by second (per_second, oldest first).",
            ),
        ],
        body: Body::None,
        answer: Answer::Json(schema::<StatsBody>),
        change: false,
        etag: false,
        refusals: &[NO_ROUTE],
    },
    Operation {
        method: "get",
        path: "/v1/mirror/diffs",
        summary: "The newest shadow/primary pairs that differed",
        description: None,
        params: &[ROUTE_FILTER],
        body: Body::None,
        answer: Answer::Json(schema::<DiffsBody>),
        change: false,
        etag: false,
        refusals: &[],
    },
    Operation {
        method: "get",
        path: "/v1/routes/{name}/mirror/fields",
        summary: "Per field: how often the shadow's answers differ from the primary's, against the noise of the primary's upstream; and the schema drift",
        description: None,
        params: &[ROUTE],
        body: Body::None,
        answer: Answer::Json(schema::<crate::metrics::fields::Report>),
        change: false,
        etag: false,
        refusals: &[(404, "No such route, or the route does not compare mirrored answers.")],
    },
    Operation {
        method: "get",
        path: "/v1/fleet",
        summary: "The fleet: this instance, and every live instance with the revision it serves and the rollouts it leads",
        description: None,
        params: &[],
        body: Body::None,
        answer: Answer::Json(schema::<FleetView>),
        change: false,
        etag: false,
        refusals: &[(404, "This instance is not in a fleet (no store.etcd).")],
    },
    Operation {
        method: "get",
        path: "/v1/openapi.json",
        summary: "This description",
        description: None,
        params: &[],
        body: Body::None,
        answer: Answer::Json(schema::<Document>),
        change: false,
        etag: false,
        refusals: &[],
    },
];

/// What any change can be refused with; nothing changed in each case.
const CHANGE_REFUSALS: [(u16, &str); 6] = [
    (400, "The change is refused (invalid result, bad value); nothing changed."),
    (404, "No such route (or revision)."),
    (409, "If-Match does not match the live revision, or the call does not fit the rollout's state; nothing changed."),
    (413, "The body is larger than 4 MiB."),
    (500, "The change could not be persisted; nothing changed."),
    (507, "The state directory's device is full; nothing changed."),
];

const BAD_REQUEST: &str = "The request is malformed or has an unknown parameter; nothing changed.";

/// The whole document.
pub fn build() -> Document {
    // Answers as they are serialised; request bodies as they are read.
    let mut answers = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = Contract::Serialize;
        })
        .into_generator();
    let mut requests = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = Contract::Deserialize;
        })
        .into_generator();
    let problem = answers.subschema_for::<Problem>().to_value();
    let mut paths: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for op in OPERATIONS {
        let item = operation(op, &mut answers, &mut requests, &problem);
        paths
            .entry(op.path.to_string())
            .or_default()
            .insert(op.method.to_string(), item);
    }
    let mut schemas = answers.take_definitions(true);
    for (name, s) in requests.take_definitions(true) {
        schemas.entry(name).or_insert(s);
    }
    Document {
        openapi: "3.1.0".into(),
        info: Info {
            title: "Switchyard admin API".into(),
            version: "1".into(),
            description: "Live control of a Switchyard instance (SPEC §4). Every /v1 call needs `Authorization: Bearer <admin token>`; every change takes a `reason`, honours `If-Match` and answers the new `ETag`. Refusals are RFC 9457 problem details. `/healthz` and `/metrics` are open.".into(),
        },
        paths,
        components: Components {
            schemas,
            security_schemes: object(json!({"bearer": {"type": "http", "scheme": "bearer"}})),
            headers: object(json!({
                "ETag": {"description": "The live revision, quoted: \"7\".", "schema": {"type": "string"}},
            })),
            responses: object(json!({
                "Unauthorized": {
                    "description": "No token, a malformed Authorization header, or a token that is not one of admin.tokens.",
                    "content": {"application/problem+json": {"schema": problem}},
                },
                "HandingOver": {
                    "description": "The instance is handing over to its successor (upgrade, code handing_over), or, in a fleet, cannot reach etcd (code store_unavailable) or a rollout's leader (code not_leader); nothing changed; retry after Retry-After.",
                    "headers": {"Retry-After": {"schema": {"type": "string"}}},
                    "content": {"application/problem+json": {"schema": problem}},
                },
            })),
        },
    }
}

/// One operation: parameters, body, and every answer it can give.
fn operation(
    op: &Operation,
    answers: &mut SchemaGenerator,
    requests: &mut SchemaGenerator,
    problem: &Value,
) -> Value {
    let mut params: Vec<Value> = op.params.iter().map(parameter).collect();
    if op.change {
        params.push(json!({
            "name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"},
            "description": "The revision the change is based on, as the ETag gave it (\"7\"); 409 when another change came first.",
        }));
    }
    let refusal = |description: &str| json!({"description": description, "content": {"application/problem+json": {"schema": problem}}});
    let mut responses = Map::new();
    let ok = match op.answer {
        Answer::Json(of) => json!({"application/json": {"schema": of(answers).to_value()}}),
        Answer::Yaml => json!({"application/yaml": {"schema": {"type": "string"}}}),
    };
    let mut ok = json!({"description": "OK", "content": ok});
    if op.etag {
        ok["headers"] = json!({"ETag": {"$ref": "#/components/headers/ETag"}});
    }
    responses.insert("200".into(), ok);
    let common = if op.change {
        &CHANGE_REFUSALS[..]
    } else {
        &[(400, BAD_REQUEST)][..]
    };
    for (status, description) in op.refusals.iter().chain(common) {
        responses
            .entry(status.to_string())
            .or_insert_with(|| refusal(description));
    }
    responses.insert(
        "401".into(),
        json!({"$ref": "#/components/responses/Unauthorized"}),
    );
    responses.insert(
        "503".into(),
        json!({"$ref": "#/components/responses/HandingOver"}),
    );
    let mut item = json!({
        "summary": op.summary,
        "security": [{"bearer": []}],
        "parameters": params,
        "responses": responses,
    });
    if let Some(d) = op.description {
        item["description"] = d.into();
    }
    match op.body {
        Body::None => {}
        Body::Json(of, required) => {
            item["requestBody"] = json!({
                "required": required,
                "content": {"application/json": {"schema": of(requests).to_value()}},
            });
        }
        Body::Yaml => {
            item["requestBody"] = json!({
                "required": true,
                "content": {"application/yaml": {"schema": {"type": "string", "description": "A whole config (SPEC §3)."}}},
            });
        }
    }
    item
}

fn parameter(p: &Param) -> Value {
    let schema = match p.values {
        Values::Text => json!({"type": "string"}),
        Values::NonEmpty => json!({"type": "string", "minLength": 1}),
        Values::Count(min, u64::MAX) => json!({"type": "integer", "minimum": min}),
        Values::Count(min, max) => json!({"type": "integer", "minimum": min, "maximum": max}),
        Values::OneOf(values) => json!({"type": "string", "enum": values}),
    };
    json!({
        "name": p.name,
        "in": p.at,
        "required": p.at == "path",
        "schema": schema,
        "description": p.description,
    })
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
