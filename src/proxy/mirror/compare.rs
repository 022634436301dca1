//! Comparing a shadow's answer with the primary's (SPEC §5): status (and a gRPC answer's `grpc-status`,
//! from its headers or trailers), then body (a gRPC answer's raw message bytes), then headers. Bodies
//! that both parse as JSON are compared as values (key order and whitespace never matter, `ignore_json`
//! pointers removed), others byte for byte. Hop-by-hop headers, `content-length`,
//! `transfer-encoding`, `date` and `ignore_headers` are left out.

use crate::metrics::diffs::redacted;
use crate::metrics::fields::{FieldDiff, Kind, SHOWN};
use crate::metrics::CompareResult;
use crate::release::mirror::Compare;
use serde_json::Value;

/// A response as captured for comparison: status, headers (lowercase names), and the first
/// `max_body_bytes` of the body.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body was longer than what was kept.
    pub truncated: bool,
    /// A gRPC answer's `grpc-status`, from its headers or trailers.
    pub grpc_status: Option<u8>,
}

impl Captured {
    /// Appends body bytes up to `limit`; past it, marks the capture truncated.
    /// Whether this is a gRPC answer (`content-type: application/grpc...`).
    pub fn is_grpc(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with(b"application/grpc"))
    }

    /// Notes the `grpc-status` of headers or trailers, if they carry one.
    pub fn note_grpc_status(&mut self, headers: &http::HeaderMap) {
        let code = headers
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|t| t.trim().parse().ok());
        if code.is_some() {
            self.grpc_status = code;
        }
    }

    pub fn push_body(&mut self, bytes: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.body.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// The result of one comparison: its class, a one-line human account of the first difference, and
/// every difference, field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub result: CompareResult,
    pub diff: String,
    pub fields: Vec<FieldDiff>,
}

/// Distinct fields one pair reports at most (a body whose every array item differs reports each
/// generalised path once).
pub const MAX_PAIR_FIELDS: usize = 256;

const ALWAYS_IGNORED: [&str; 14] = [
    // Compared as the status of a gRPC answer, wherever it came (headers or trailers).
    "grpc-status",
    "grpc-message",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "date",
];

/// The differences of one pair, as they are found.
#[derive(Default)]
struct Found {
    fields: Vec<FieldDiff>,
    first: Option<String>,
}

impl Found {
    fn push(&mut self, d: FieldDiff) {
        let seen = self
            .fields
            .iter()
            .any(|f| f.kind == d.kind && f.path == d.path);
        if !seen && self.fields.len() < MAX_PAIR_FIELDS {
            self.fields.push(d);
        }
    }

    fn first(&mut self, text: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(text());
        }
    }
}

fn plain(path: &str, kind: Kind, primary: Option<String>, shadow: Option<String>) -> FieldDiff {
    FieldDiff {
        path: path.to_string(),
        kind,
        primary,
        shadow,
        primary_type: None,
        shadow_type: None,
    }
}

fn kind_of<T>(p: &Option<T>, s: &Option<T>) -> Kind {
    match (p, s) {
        (None, Some(_)) => Kind::Added,
        (Some(_), None) => Kind::Removed,
        _ => Kind::Value,
    }
}

pub fn compare(primary: &Captured, shadow: &Captured, cfg: &Compare) -> Verdict {
    let mut status = Found::default();
    if primary.status != shadow.status {
        status.first(|| {
            format!(
                "status: primary {} != shadow {}",
                primary.status, shadow.status
            )
        });
        let (p, s) = (primary.status.to_string(), shadow.status.to_string());
        status.push(plain("status", Kind::Value, Some(p), Some(s)));
    }
    if primary.grpc_status != shadow.grpc_status {
        let show = |c: Option<u8>| c.map_or("none".to_string(), |c| c.to_string());
        status.first(|| {
            format!(
                "grpc-status: primary {} != shadow {}",
                show(primary.grpc_status),
                show(shadow.grpc_status)
            )
        });
        let (p, s) = (
            primary.grpc_status.map(|c| c.to_string()),
            shadow.grpc_status.map(|c| c.to_string()),
        );
        status.push(plain("grpc-status", kind_of(&p, &s), p, s));
    }
    let mut body = Found::default();
    body_diffs(primary, shadow, cfg, &mut body);
    let mut headers = Found::default();
    header_diffs(primary, shadow, cfg, &mut headers);
    let (result, diff) = if let Some(d) = status.first.take() {
        (CompareResult::Status, d)
    } else if let Some(d) = body.first.take() {
        (CompareResult::Body, d)
    } else if let Some(d) = headers.first.take() {
        (CompareResult::Headers, d)
    } else {
        (CompareResult::Match, String::new())
    };
    let mut fields = status.fields;
    fields.extend(body.fields);
    fields.extend(headers.fields);
    fields.truncate(MAX_PAIR_FIELDS);
    Verdict {
        result,
        diff,
        fields,
    }
}

fn kept_headers(c: &Captured, cfg: &Compare) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = c
        .headers
        .iter()
        .filter(|(n, _)| !ALWAYS_IGNORED.contains(&n.as_str()) && !cfg.ignore_headers.contains(n))
        .cloned()
        .collect();
    out.sort();
    out
}

fn header_diffs(primary: &Captured, shadow: &Captured, cfg: &Compare, found: &mut Found) {
    let (p, s) = (kept_headers(primary, cfg), kept_headers(shadow, cfg));
    if p == s {
        return;
    }
    let mut names: Vec<&String> = p.iter().chain(s.iter()).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let mut texts = Vec::new();
    for n in names {
        let pv: Vec<_> = p.iter().filter(|(k, _)| k == n).collect();
        let sv: Vec<_> = s.iter().filter(|(k, _)| k == n).collect();
        if pv == sv {
            continue;
        }
        let show = |v: Option<&&(String, Vec<u8>)>| {
            v.map(|(_, v)| {
                if redacted(n) {
                    "[redacted]".to_string()
                } else {
                    cut(&String::from_utf8_lossy(v))
                }
            })
        };
        let (ps, ss) = (show(pv.first()), show(sv.first()));
        let quoted = |v: &Option<String>| v.as_ref().map_or("absent".into(), |v| format!("{v:?}"));
        texts.push(format!(
            "header {n}: primary {} != shadow {}",
            quoted(&ps),
            quoted(&ss)
        ));
        found.push(plain(&format!("header/{n}"), kind_of(&ps, &ss), ps, ss));
    }
    found.first(|| texts.join("; "));
}

fn body_diffs(primary: &Captured, shadow: &Captured, cfg: &Compare, found: &mut Found) {
    if primary.body == shadow.body && primary.truncated == shadow.truncated {
        // Equal bytes are equal values, whatever `ignore_json` removes: nothing to parse.
        return;
    }
    if !primary.truncated && !shadow.truncated {
        if let (Ok(mut a), Ok(mut b)) = (
            serde_json::from_slice::<Value>(&primary.body),
            serde_json::from_slice::<Value>(&shadow.body),
        ) {
            for pointer in &cfg.ignore_json {
                remove_pointer(&mut a, pointer);
                remove_pointer(&mut b, pointer);
            }
            let mut at = Path::default();
            json_diffs(&a, &b, &mut at, found);
            return;
        }
    }
    if primary.body == shadow.body {
        return;
    }
    let at = primary
        .body
        .iter()
        .zip(shadow.body.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(primary.body.len().min(shadow.body.len()));
    let around = |b: &[u8]| {
        let end = (at + 24).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[at.min(end)..end]))
    };
    found.first(|| {
        format!(
            "body differs at byte {at} (primary {} bytes, shadow {} bytes): primary {} shadow {}",
            primary.body.len(),
            shadow.body.len(),
            around(&primary.body),
            around(&shadow.body)
        )
    });
    found.push(plain(
        "body",
        Kind::Value,
        Some(around(&primary.body)),
        Some(around(&shadow.body)),
    ));
}

/// Removes the value a JSON pointer (RFC 6901) names, if present.
fn remove_pointer(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < items.len() {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// Where a walk is in a JSON body: the pointer itself (for the first difference, in words) and the
/// field it belongs to (array indexes as `*`).
#[derive(Default)]
struct Path {
    concrete: String,
    field: String,
}

impl Path {
    fn enter(&mut self, concrete: &str, field: &str) -> (usize, usize) {
        let marks = (self.concrete.len(), self.field.len());
        self.concrete.push('/');
        self.concrete.push_str(concrete);
        self.field.push('/');
        self.field.push_str(field);
        marks
    }

    fn enter_index(&mut self, i: usize) -> (usize, usize) {
        use std::fmt::Write;
        let marks = (self.concrete.len(), self.field.len());
        let _ = write!(self.concrete, "/{i}");
        self.field.push_str("/*");
        marks
    }

    fn leave(&mut self, (c, f): (usize, usize)) {
        self.concrete.truncate(c);
        self.field.truncate(f);
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every place two JSON values differ, by field; the first also in words, as
/// `body at /a/0/b: primary X != shadow Y`.
fn json_diffs(a: &Value, b: &Value, at: &mut Path, found: &mut Found) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let escaped = if k.contains(['~', '/']) {
                    std::borrow::Cow::Owned(k.replace('~', "~0").replace('/', "~1"))
                } else {
                    std::borrow::Cow::Borrowed(k.as_str())
                };
                let marks = at.enter(&escaped, &escaped);
                one(x.get(k), y.get(k), at, found);
                at.leave(marks);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let marks = at.enter_index(i);
                one(x.get(i), y.get(i), at, found);
                at.leave(marks);
            }
        }
        _ if a == b => {}
        _ => one_leaf(a, b, at, found),
    }
}

fn one(p: Option<&Value>, s: Option<&Value>, at: &mut Path, found: &mut Found) {
    match (p, s) {
        (Some(p), Some(s)) => json_diffs(p, s, at, found),
        (p, s) => {
            found.first(|| describe(&at.concrete, p, s));
            found.push(FieldDiff {
                path: at.field.clone(),
                kind: if p.is_some() {
                    Kind::Removed
                } else {
                    Kind::Added
                },
                primary: p.map(show),
                shadow: s.map(show),
                primary_type: p.map(type_name),
                shadow_type: s.map(type_name),
            });
        }
    }
}

fn one_leaf(a: &Value, b: &Value, at: &mut Path, found: &mut Found) {
    found.first(|| describe(&at.concrete, Some(a), Some(b)));
    let path = if at.field.is_empty() { "/" } else { &at.field };
    found.push(FieldDiff {
        path: path.to_string(),
        kind: if type_name(a) == type_name(b) {
            Kind::Value
        } else {
            Kind::Type
        },
        primary: Some(show(a)),
        shadow: Some(show(b)),
        primary_type: Some(type_name(a)),
        shadow_type: Some(type_name(b)),
    });
}

/// A value as shown: its JSON text, cut.
fn show(v: &Value) -> String {
    cut(&v.to_string())
}

fn cut(t: &str) -> String {
    if t.chars().count() > SHOWN {
        format!("{}…", t.chars().take(SHOWN).collect::<String>())
    } else {
        t.to_string()
    }
}

fn describe(path: &str, p: Option<&Value>, s: Option<&Value>) -> String {
    let show = |v: Option<&Value>| v.map_or("absent".to_string(), show);
    let at = if path.is_empty() { "/" } else { path };
    format!("body at {at}: primary {} != shadow {}", show(p), show(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ignore_headers: &[&str], ignore_json: &[&str]) -> Compare {
        Compare {
            ignore_headers: ignore_headers.iter().map(|s| s.to_string()).collect(),
            ignore_json: ignore_json.iter().map(|s| s.to_string()).collect(),
            max_body_bytes: 1 << 20,
            noise_per_million: 0,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Captured {
        Captured {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
            truncated: false,
            grpc_status: None,
        }
    }

    #[test]
    fn grpc_answers_compare_on_their_status_from_headers_or_trailers() {
        let grpc = [("content-type", "application/grpc")];
        let mut primary = resp(200, &grpc, "\0\0\0\0\x02hi");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        primary.note_grpc_status(&trailers);
        assert!(primary.is_grpc());
        // A shadow that failed before any message: its status is in its headers.
        let mut failed = resp(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "14")],
            "",
        );
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        failed.note_grpc_status(&h);
        let v = compare(&primary, &failed, &cfg(&[], &[]));
        assert_eq!(v.result, CompareResult::Status);
        assert_eq!(v.diff, "grpc-status: primary 0 != shadow 14");
        // Same status, different message bytes: a body difference.
        let mut other = resp(200, &grpc, "\0\0\0\0\x02ho");
        other.note_grpc_status(&trailers);
        assert_eq!(
            compare(&primary, &other, &cfg(&[], &[])).result,
            CompareResult::Body
        );
        let mut same = resp(200, &grpc, "\0\0\0\0\x02hi");
        same.note_grpc_status(&trailers);
        assert_eq!(
            compare(&primary, &same, &cfg(&[], &[])).result,
            CompareResult::Match
        );
    }

    #[test]
    fn equal_json_with_reordered_keys_and_whitespace_matches() {
        let a = resp(
            200,
            &[("content-type", "application/json"), ("date", "x")],
            r#"{"a":1,"b":[1,2,{"c":"d"}]}"#,
        );
        let b = resp(
            200,
            &[
                ("date", "y"),
                ("content-type", "application/json"),
                ("content-length", "99"),
            ],
            "{ \"b\": [1, 2, {\"c\": \"d\"}],\n  \"a\": 1 }",
        );
        assert_eq!(compare(&a, &b, &cfg(&[], &[])).result, CompareResult::Match);
    }

    #[test]
    fn a_changed_field_is_a_body_difference_that_names_it() {
        let a = resp(200, &[], r#"{"order":{"id":7,"total":10.5}}"#);
        let b = resp(200, &[], r#"{"order":{"total":11.0,"id":7}}"#);
        let v = compare(&a, &b, &cfg(&[], &[]));
        assert_eq!(v.result, CompareResult::Body);
        assert_eq!(v.diff, "body at /order/total: primary 10.5 != shadow 11.0");
        assert_eq!(
            compare(&a, &b, &cfg(&[], &["/order/total"])).result,
            CompareResult::Match
        );
        let c = resp(200, &[], r#"{"items":[1,2]}"#);
        let d = resp(200, &[], r#"{"items":[1,2,3]}"#);
        assert_eq!(
            compare(&c, &d, &cfg(&[], &[])).diff,
            "body at /items/2: primary absent != shadow 3"
        );
        assert_eq!(
            compare(&c, &d, &cfg(&[], &["/items/2"])).result,
            CompareResult::Match
        );
    }

    #[test]
    fn status_comes_first_then_body_then_headers() {
        let a = resp(200, &[("x-v", "1")], "a");
        assert_eq!(
            compare(&a, &resp(500, &[("x-v", "2")], "b"), &cfg(&[], &[])).result,
            CompareResult::Status
        );
        assert_eq!(
            compare(&a, &resp(200, &[("x-v", "2")], "b"), &cfg(&[], &[])).result,
            CompareResult::Body
        );
        let h = compare(&a, &resp(200, &[("x-v", "2")], "a"), &cfg(&[], &[]));
        assert_eq!(h.result, CompareResult::Headers);
        assert_eq!(h.diff, "header x-v: primary \"1\" != shadow \"2\"");
        assert_eq!(
            compare(&a, &resp(200, &[("x-v", "2")], "a"), &cfg(&["x-v"], &[])).result,
            CompareResult::Match
        );
        assert_eq!(
            compare(&a, &resp(200, &[], "a"), &cfg(&[], &[])).result,
            CompareResult::Headers
        );
    }

    #[test]
    fn non_json_bodies_compare_as_bytes() {
        let v = compare(
            &resp(200, &[], "hello world"),
            &resp(200, &[], "hello World"),
            &cfg(&[], &[]),
        );
        assert_eq!(v.result, CompareResult::Body);
        assert!(v.diff.starts_with("body differs at byte 6"), "{}", v.diff);
        assert_eq!(
            compare(
                &resp(200, &[], "same"),
                &resp(200, &[], "same"),
                &cfg(&[], &[])
            )
            .result,
            CompareResult::Match
        );
    }

    #[test]
    fn every_difference_is_reported_by_field_with_array_indexes_generalised() {
        let a = resp(
            200,
            &[("x-v", "1"), ("set-cookie", "a=1")],
            r#"{"order":{"id":7,"total":10.5,"legacy_id":3,"items":[{"price":1},{"price":2}]}}"#,
        );
        let b = resp(
            200,
            &[("x-v", "2"), ("set-cookie", "a=2"), ("x-new", "y")],
            r#"{"order":{"id":7,"total":"10.5","currency":"EUR","items":[{"price":1},{"price":3},{"price":4}]}}"#,
        );
        let v = compare(&a, &b, &cfg(&[], &[]));
        assert_eq!(v.result, CompareResult::Body);
        let got: Vec<(&str, Kind)> = v.fields.iter().map(|f| (f.path.as_str(), f.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("/order/currency", Kind::Added),
                ("/order/items/*/price", Kind::Value),
                ("/order/items/*", Kind::Added),
                ("/order/legacy_id", Kind::Removed),
                ("/order/total", Kind::Type),
                ("header/set-cookie", Kind::Value),
                ("header/x-new", Kind::Added),
                ("header/x-v", Kind::Value),
            ]
        );
        let total = &v.fields[4];
        assert_eq!(
            (total.primary_type, total.shadow_type),
            (Some("number"), Some("string"))
        );
        assert_eq!(total.shadow.as_deref(), Some("\"10.5\""));
        let cookie = &v.fields[5];
        assert_eq!(
            cookie.primary.as_deref(),
            Some("[redacted]"),
            "credentials are never shown"
        );
        // The first difference, in words, keeps its concrete path.
        assert_eq!(
            v.diff,
            "body at /order/currency: primary absent != shadow \"EUR\""
        );
        // Status first, and as a field of its own.
        let s = compare(&a, &resp(503, &[], "{}"), &cfg(&[], &[]));
        assert_eq!(s.result, CompareResult::Status);
        assert_eq!(
            (s.fields[0].path.as_str(), s.fields[0].kind),
            ("status", Kind::Value)
        );
        assert!(compare(&a, &a, &cfg(&[], &[])).fields.is_empty());
    }

    #[test]
    fn captures_keep_at_most_the_limit() {
        let mut c = Captured::default();
        c.push_body(b"abcdef", 4);
        c.push_body(b"gh", 4);
        assert_eq!(c.body, b"abcd");
        assert!(c.truncated);
    }
}
