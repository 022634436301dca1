//! A bounded sample of shadow answers that differed from their primary's, for `GET /v1/mirror/diffs`:
//! the newest [`KEPT`] pairs, bodies cut to [`BODY_SHOWN`] bytes, credentials redacted.

use super::CompareResult;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Differing pairs kept (oldest dropped first).
pub const KEPT: usize = 100;
/// Bytes of each body shown.
pub const BODY_SHOWN: usize = 2048;
/// Headers whose values are never shown.
const REDACTED: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
];

/// Whether a header's values are never shown (credentials).
pub fn redacted(name: &str) -> bool {
    REDACTED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// One response of a differing pair, as shown.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "DiffSide")]
pub struct Side {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The body shown is cut (it was longer than what was captured or shown).
    pub body_truncated: bool,
}

impl Side {
    pub fn new(status: u16, headers: &[(String, Vec<u8>)], body: &[u8], truncated: bool) -> Side {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let shown = if redacted(k) {
                    "[redacted]".to_string()
                } else {
                    String::from_utf8_lossy(v).into_owned()
                };
                (k.clone(), shown)
            })
            .collect();
        let cut = body.len().min(BODY_SHOWN);
        Side {
            status,
            headers,
            body: String::from_utf8_lossy(&body[..cut]).into_owned(),
            body_truncated: truncated || body.len() > cut,
        }
    }
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Diff")]
pub struct DiffSample {
    pub at: String,
    pub route: String,
    pub target: String,
    pub request_id: String,
    pub method: String,
    /// Path and query of the request.
    pub path: String,
    pub result: CompareResult,
    /// The first difference, in words.
    pub diff: String,
    pub primary: Side,
    pub shadow: Side,
}

#[derive(Debug, Default)]
pub struct Diffs {
    kept: Mutex<VecDeque<DiffSample>>,
}

impl Diffs {
    pub fn push(&self, d: DiffSample) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(d);
    }

    /// The samples kept, oldest first; only `route`'s if given.
    pub fn list(&self, route: Option<&str>) -> Vec<DiffSample> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .filter(|d| route.is_none_or(|r| d.route == r))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_redacts_credentials() {
        let diffs = Diffs::default();
        let side = Side::new(
            200,
            &[
                ("set-cookie".into(), b"sid=secret".to_vec()),
                ("x-v".into(), b"2".to_vec()),
            ],
            &vec![b'a'; 5000],
            false,
        );
        assert_eq!(side.headers["set-cookie"], "[redacted]");
        assert_eq!(side.headers["x-v"], "2");
        assert_eq!(side.body.len(), BODY_SHOWN);
        assert!(side.body_truncated);
        for i in 0..(KEPT + 5) {
            diffs.push(DiffSample {
                at: String::new(),
                route: if i % 2 == 0 { "a" } else { "b" }.into(),
                target: "v2".into(),
                request_id: i.to_string(),
                method: "GET".into(),
                path: "/".into(),
                result: CompareResult::Body,
                diff: String::new(),
                primary: side.clone(),
                shadow: side.clone(),
            });
        }
        let all = diffs.list(None);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].request_id, "5");
        assert!(diffs.list(Some("a")).iter().all(|d| d.route == "a"));
    }
}
