//! Reading a config file's structure so that every problem is found in one pass.
//!
//! serde stops at the first unknown key or wrong type. Here the YAML is read into a tree first (a syntax
//! error is reported with its line and column), then deserialised; each structural error is recorded in
//! plain words with its path, and the offending node is taken out of the tree before trying again. What
//! is left deserialises, so semantic validation still runs over every part that was well formed.
//! Semantic errors under a node that was taken out are not reported: they would only repeat it.

use super::{Config, ConfigError};
use serde_path_to_error::Segment;
use serde_yaml::Value;

/// More structural errors than this in one file are not worth listing one by one.
const MAX_STRUCTURAL: usize = 100;

/// The structure of a config file: the config that could be read (what was malformed taken out), the
/// structural errors, and the paths whose semantic errors they make redundant.
pub(super) struct Read {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub removed: Vec<String>,
}

pub(super) fn read(text: &str) -> Read {
    let mut out = Read {
        config: None,
        errors: Vec::new(),
        removed: Vec::new(),
    };
    let mut tree: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.errors.push(syntax_error(&e));
            return out;
        }
    };
    if matches!(tree, Value::Null) {
        out.errors.push(ConfigError::new(
            "",
            "the file is empty: a config needs at least upstreams and routes",
        ));
        return out;
    }
    while out.errors.len() < MAX_STRUCTURAL {
        let error = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => {
                out.config = Some(config);
                return out;
            }
            Err(e) => e,
        };
        let segments: Vec<Segment> = error.path().iter().cloned().collect();
        let message = error.into_inner().to_string();
        let (mut at, unknown) = match unknown_field(&message) {
            Some((key, expected)) => {
                // The key itself is the offending node, whether or not serde's path names it yet.
                let mut at = segments;
                if !matches!(at.last(), Some(Segment::Map { key: k }) if *k == key) {
                    at.push(Segment::Map { key: key.clone() });
                }
                (at, Some((key, expected)))
            }
            None => (segments, None),
        };
        let path = display(&at);
        let message = match unknown {
            Some((key, expected)) => unknown_message(&key, &expected),
            None => with_hint(plain(&message), at.last()),
        };
        out.errors.push(ConfigError::new(path, message));
        match take_out(&mut tree, &mut at) {
            Some(removed) => out.removed.push(removed),
            None => return out,
        }
    }
    out.errors
        .push(ConfigError::new("", "too many errors; fix these first"));
    out
}

fn syntax_error(e: &serde_yaml::Error) -> ConfigError {
    let message = e.to_string();
    match e.location() {
        Some(at) => {
            // serde_yaml appends " at line L column C"; say it once, first.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            ConfigError::new(
                "",
                format!(
                    "YAML syntax error at line {}, column {}: {message}",
                    at.line(),
                    at.column()
                ),
            )
        }
        None => ConfigError::new("", format!("YAML syntax error: {message}")),
    }
}

/// Takes the node at `at` out of `tree` so the next attempt gets past it; returns its path. A route
/// (an element of the top-level `routes`) is replaced by an empty one so the other routes keep their
/// indices; any other list element takes its whole list out. `None` when nothing can be taken out.
fn take_out(tree: &mut Value, at: &mut Vec<Segment>) -> Option<String> {
    loop {
        let last = at.last()?.clone();
        let parent = node_mut(tree, &at[..at.len() - 1])?;
        match (last, parent) {
            (Segment::Map { key }, Value::Mapping(m)) => {
                m.remove(key.as_str())?;
                return Some(display(at));
            }
            (Segment::Seq { index }, Value::Sequence(items)) if is_routes(&at[..at.len() - 1]) => {
                let item = items.get_mut(index)?;
                if matches!(item, Value::Mapping(m) if m.is_empty()) {
                    return None;
                }
                *item = Value::Mapping(serde_yaml::Mapping::new());
                return Some(display(at));
            }
            (Segment::Seq { index }, Value::Sequence(items)) if is_steps(&at[..at.len() - 1]) => {
                // A malformed rollout step is replaced by a pause, which deserialises and has no
                // semantic errors of its own, so that the other steps are still read and checked.
                let item = items.get_mut(index)?;
                let mut pause = serde_yaml::Mapping::new();
                pause.insert("pause".into(), Value::Mapping(serde_yaml::Mapping::new()));
                let pause = Value::Mapping(pause);
                if *item == pause {
                    return None;
                }
                *item = pause;
                return Some(display(at));
            }
            (Segment::Seq { .. }, Value::Sequence(_)) => {
                at.pop();
            }
            _ => return None,
        }
    }
}

fn is_steps(path: &[Segment]) -> bool {
    matches!(path, [.., Segment::Map { key }] if key == "steps")
}

fn is_routes(path: &[Segment]) -> bool {
    matches!(path, [Segment::Map { key }] if key == "routes")
}

fn node_mut<'a>(tree: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    let mut node = tree;
    for segment in path {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Mapping(m)) => m.get_mut(key.as_str())?,
            (Segment::Seq { index }, Value::Sequence(s)) => s.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(node)
}

/// `routes[0].match.host`, as every other error of a config names its place.
fn display(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// serde's "unknown field `hots`, expected one of `host`, `path_prefix`": the key and the expected ones.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key.to_string(), expected))
}

fn unknown_message(key: &str, expected: &[String]) -> String {
    let closest = expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(key, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min_by_key(|(d, _)| *d);
    match (closest, expected.is_empty()) {
        (Some((_, e)), _) => format!("unknown key {key:?}; did you mean {e:?}?"),
        (None, true) => format!("unknown key {key:?}: nothing may be set here"),
        (None, false) => format!(
            "unknown key {key:?}; expected one of: {}",
            expected.join(", ")
        ),
    }
}

/// Keys whose value is a duration written with its unit (`2s`, `250ms`, `1m30s`).
const DURATION_KEYS: [&str; 15] = [
    "grace_period",
    "shutdown_timeout",
    "lease_ttl",
    "timeout",
    "interval",
    "hold",
    "step_timeout",
    "header_timeout",
    "body_timeout",
    "send_timeout",
    "keepalive_timeout",
    "connect",
    "read",
    "write",
    "idle",
];

/// What to do, where the plain message alone does not say: a duration given as a bare number needs
/// its unit.
fn with_hint(message: String, at: Option<&Segment>) -> String {
    let key = match at {
        Some(Segment::Map { key }) => key.as_str(),
        _ => return message,
    };
    match message.strip_prefix("expected text, got the number ") {
        Some(n) if DURATION_KEYS.contains(&key) => format!(
            "a duration needs its unit: write \"{n}s\" (or ms, m, h; e.g. 250ms, 1m30s), got the number {n}"
        ),
        _ => message,
    }
}

/// serde's wording in plain words: "invalid type: string \"x\", expected usize" becomes "expected a
/// whole number, got the text \"x\"".
fn plain(message: &str) -> String {
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        if let Some((got, expected)) = rest.rsplit_once(", expected ") {
            return format!("expected {}, got {}", kind(expected), value(got));
        }
    }
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        return match name.trim() {
            "BackendConfig" => {
                "expected an address \"IP:PORT\" or a mapping {addr, weight}".to_string()
            }
            "PercentValue" => "expected a percentage: a number or text like \"5%\"".to_string(),
            _ => "not one of the accepted forms".to_string(),
        };
    }
    message.to_string()
}

/// What serde expected, in words.
fn kind(expected: &str) -> String {
    let e = expected.trim();
    let words = match e {
        "a string" => "text",
        "a boolean" => "true or false",
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "a whole number",
        "f64" | "f32" => "a number",
        "a sequence" => "a list",
        "a mapping" | "a map" => "a mapping (key: value)",
        _ if e.starts_with("struct ") => "a mapping (key: value)",
        _ => e,
    };
    words.to_string()
}

/// What serde got, in words.
fn value(got: &str) -> String {
    let g = got.trim();
    let inner = |p: &str| g.strip_prefix(p).map(|v| v.trim_matches('`').to_string());
    if let Some(s) = g.strip_prefix("string ") {
        format!("the text {s}")
    } else if let Some(n) = inner("integer ").or_else(|| inner("floating point ")) {
        format!("the number {n}")
    } else if let Some(b) = inner("boolean ") {
        b
    } else {
        match g {
            "sequence" => "a list".into(),
            "map" => "a mapping".into(),
            "unit value" => "nothing (an empty value)".into(),
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        read(text).errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_duration_without_its_unit_says_what_to_write_and_access_log_false_is_off() {
        let text = "server: {grace_period: 2, access_log: false}\nupstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\nroutes:\n  - name: a\n    split: {targets: {v1: 1}}\n    rollout: {canary: v1, steps: [10], hold: 30}\n";
        assert_eq!(
            errors(text),
            [
                "server.grace_period: a duration needs its unit: write \"2s\" (or ms, m, h; e.g. 250ms, 1m30s), got the number 2",
                "routes[0].rollout.hold: a duration needs its unit: write \"30s\" (or ms, m, h; e.g. 250ms, 1m30s), got the number 30",
            ]
        );
        let text = "server: {access_log: false}\nupstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\nroutes:\n  - name: a\n    split: {targets: {v1: 1}}\n";
        assert_eq!(read(text).config.unwrap().server.access_log, "off");
        let text = text.replace("false", "true");
        assert_eq!(read(&text).config.unwrap().server.access_log, "stdout");
    }

    #[test]
    fn every_structural_error_with_its_path_in_plain_words() {
        let text = "server:\n  threads: two\n  listn: [\"127.0.0.1:1\"]\nupstreams:\n  v1: {backends: 5}\nroutes:\n  - name: a\n    match: {hots: x}\n    split: {targets: {v1: 1}}\n  - name: b\n    split: {targets: {v1: 1}}\n    frobnicate: 1\n";
        let r = read(text);
        let got: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "server.threads: expected a whole number, got the text \"two\"",
                "server.listn: unknown key \"listn\"; did you mean \"listen\"?",
                "upstreams.v1.backends: expected a list, got the number 5",
                "routes[0].match.hots: unknown key \"hots\"; did you mean \"host\"?",
                "routes[1].frobnicate: unknown key \"frobnicate\"; expected one of: name, match, require_client, rules, split, blue_green, mirror, rollout",
            ]
        );
        // What was left is read: both routes, in place.
        let config = r.config.unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[1].name, "b");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let got = errors("routes:\n  - name: a\n    split: {targets: {v1: 1}\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("YAML syntax error at line "), "{got:?}");
        assert!(got[0].contains(", column "), "{got:?}");
    }

    #[test]
    fn an_empty_file_is_refused() {
        for text in ["", "\n# nothing\n"] {
            assert_eq!(
                errors(text),
                ["the file is empty: a config needs at least upstreams and routes"]
            );
        }
    }

    #[test]
    fn a_malformed_route_keeps_the_others_in_place() {
        let r = read("routes:\n  - 5\n  - name: b\n    split: {targets: {v1: 1}}\n");
        assert_eq!(
            r.errors[0].to_string(),
            "routes[0]: expected a mapping (key: value), got the number 5"
        );
        assert_eq!(r.removed, ["routes[0]"]);
        assert_eq!(r.config.unwrap().routes[1].name, "b");
    }

    #[test]
    fn a_malformed_list_element_takes_its_list_out() {
        let r = read("upstreams:\n  v1: {backends: [\"127.0.0.1:1\", [1]]}\nroutes: []\n");
        assert_eq!(
            r.errors[0].to_string(),
            "upstreams.v1.backends[1]: expected an address \"IP:PORT\" or a mapping {addr, weight}"
        );
        assert_eq!(r.removed, ["upstreams.v1.backends"]);
    }
}
