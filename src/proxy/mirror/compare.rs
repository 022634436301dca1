//! Comparing a shadow's answer with the primary's (SPEC §5): status (and a gRPC answer's `grpc-status`,
//! from its headers or trailers), then body (a gRPC answer's raw message bytes), then headers. Bodies
//! that both parse as JSON are compared as values (key order and whitespace never matter, `ignore_json`
//! pointers removed), others byte for byte. Hop-by-hop headers, `content-length`,
//! `transfer-encoding`, `date` and `ignore_headers` are left out.

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

/// The result of one comparison, with a one-line human account of the first difference.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub result: CompareResult,
    pub diff: String,
}

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

pub fn compare(primary: &Captured, shadow: &Captured, cfg: &Compare) -> Verdict {
    if primary.status != shadow.status {
        return Verdict {
            result: CompareResult::Status,
            diff: format!(
                "status: primary {} != shadow {}",
                primary.status, shadow.status
            ),
        };
    }
    if primary.grpc_status != shadow.grpc_status {
        let show = |c: Option<u8>| c.map_or("none".to_string(), |c| c.to_string());
        return Verdict {
            result: CompareResult::Status,
            diff: format!(
                "grpc-status: primary {} != shadow {}",
                show(primary.grpc_status),
                show(shadow.grpc_status)
            ),
        };
    }
    if let Some(diff) = body_diff(primary, shadow, cfg) {
        return Verdict {
            result: CompareResult::Body,
            diff,
        };
    }
    if let Some(diff) = header_diff(primary, shadow, cfg) {
        return Verdict {
            result: CompareResult::Headers,
            diff,
        };
    }
    Verdict {
        result: CompareResult::Match,
        diff: String::new(),
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

fn header_diff(primary: &Captured, shadow: &Captured, cfg: &Compare) -> Option<String> {
    let (p, s) = (kept_headers(primary, cfg), kept_headers(shadow, cfg));
    if p == s {
        return None;
    }
    let show = |v: Option<&(String, Vec<u8>)>| match v {
        Some((_, v)) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "absent".to_string(),
    };
    let mut names: Vec<&String> = p.iter().chain(s.iter()).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let diffs: Vec<String> = names
        .into_iter()
        .filter_map(|n| {
            let pv: Vec<_> = p.iter().filter(|(k, _)| k == n).collect();
            let sv: Vec<_> = s.iter().filter(|(k, _)| k == n).collect();
            (pv != sv).then(|| {
                format!(
                    "header {n}: primary {} != shadow {}",
                    show(pv.first().copied()),
                    show(sv.first().copied())
                )
            })
        })
        .collect();
    Some(diffs.join("; "))
}

fn body_diff(primary: &Captured, shadow: &Captured, cfg: &Compare) -> Option<String> {
    if !primary.truncated && !shadow.truncated {
        if let (Ok(mut a), Ok(mut b)) = (
            serde_json::from_slice::<Value>(&primary.body),
            serde_json::from_slice::<Value>(&shadow.body),
        ) {
            for pointer in &cfg.ignore_json {
                remove_pointer(&mut a, pointer);
                remove_pointer(&mut b, pointer);
            }
            return json_diff(&a, &b, &mut String::new());
        }
    }
    if primary.body == shadow.body {
        return None;
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
    Some(format!(
        "body differs at byte {at} (primary {} bytes, shadow {} bytes): primary {} shadow {}",
        primary.body.len(),
        shadow.body.len(),
        around(&primary.body),
        around(&shadow.body)
    ))
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

/// The first place two JSON values differ, as `body at /a/0/b: primary X != shadow Y`.
fn json_diff(a: &Value, b: &Value, path: &mut String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let found = match (x.get(k), y.get(k)) {
                    (Some(p), Some(s)) => json_diff(p, s, path),
                    (p, s) => Some(describe(path, p, s)),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let found = match (x.get(i), y.get(i)) {
                    (Some(p), Some(s)) => json_diff(p, s, path),
                    (p, s) => Some(describe(path, p, s)),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some(describe(path, Some(a), Some(b))),
    }
}

fn describe(path: &str, p: Option<&Value>, s: Option<&Value>) -> String {
    let show = |v: Option<&Value>| match v {
        Some(v) => {
            let t = v.to_string();
            if t.len() > 120 {
                format!("{}…", t.chars().take(120).collect::<String>())
            } else {
                t
            }
        }
        None => "absent".to_string(),
    };
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
    fn captures_keep_at_most_the_limit() {
        let mut c = Captured::default();
        c.push_body(b"abcdef", 4);
        c.push_body(b"gh", 4);
        assert_eq!(c.body, b"abcd");
        assert!(c.truncated);
    }
}
