#![allow(clippy::unwrap_used)]

use super::*;

fn doc() -> Value {
    serde_json::from_slice(document()).unwrap()
}

/// Every place in `v` that accepts anything or an object of unknown shape, with its path.
fn untyped(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Bool(true) => out.push(at.to_string()),
        Value::Object(o) => {
            let shaped = [
                "properties",
                "additionalProperties",
                "$ref",
                "oneOf",
                "anyOf",
                "allOf",
            ];
            if o.get("type") == Some(&json!("object")) && !shaped.iter().any(|k| o.contains_key(*k))
            {
                out.push(at.to_string());
            }
            if o.is_empty() {
                out.push(at.to_string());
            }
            for (k, child) in o {
                // `default` and `examples` are values, not schemas.
                if k != "default" && k != "examples" && k != "const" && k != "enum" {
                    untyped(child, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                untyped(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The schemas of an operation (its bodies' and parameters'), checked with [`untyped`].
fn schemas_in(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "schema" {
                    untyped(child, &format!("{at}/schema"), out);
                } else {
                    schemas_in(child, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                schemas_in(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_body_the_api_sends_or_reads_is_typed() {
    let d = doc();
    let mut out = Vec::new();
    for (name, s) in d["components"]["schemas"].as_object().unwrap() {
        // The document's own operations are free-form OpenAPI objects.
        if ["OpenApi", "Components"].contains(&name.as_str()) {
            continue;
        }
        untyped(s, &format!("#/components/schemas/{name}"), &mut out);
    }
    for (path, item) in d["paths"].as_object().unwrap() {
        schemas_in(item, path, &mut out);
    }
    assert!(out.is_empty(), "untyped schemas:\n{}", out.join("\n"));
}

#[test]
fn every_reference_resolves() {
    let d = doc();
    let text = serde_json::to_string(&d).unwrap();
    let mut missing = Vec::new();
    for piece in text.split("\"$ref\":\"").skip(1) {
        let target = &piece[..piece.find('"').unwrap()];
        let pointer = target.trim_start_matches('#');
        if d.pointer(pointer).is_none() {
            missing.push(target.to_string());
        }
    }
    assert!(missing.is_empty(), "{missing:?}");
}

#[test]
fn every_operation_is_described_with_its_answers() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    let mut n = 0;
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            n += 1;
            let r = &op["responses"];
            for status in ["200", "400", "401", "503"] {
                assert!(r.get(status).is_some(), "{method} {path}: no {status}");
            }
            let segments = path.matches('{').count();
            let in_path = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .count();
            assert_eq!(segments, in_path, "{method} {path}");
        }
    }
    assert_eq!(n, OPERATIONS.len());
}

#[test]
fn request_and_answer_schemas_do_not_share_a_name_with_different_shapes() {
    let mut answers = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = Contract::Serialize;
        })
        .into_generator();
    let mut requests = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = Contract::Deserialize;
        })
        .into_generator();
    for op in OPERATIONS {
        if let Answer::Json(of) = op.answer {
            of(&mut answers);
        }
        if let Body::Json(of, _) = op.body {
            of(&mut requests);
        }
    }
    let answers = answers.take_definitions(true);
    for (name, s) in requests.take_definitions(true) {
        if let Some(a) = answers.get(&name) {
            assert_eq!(a, &s, "{name} differs between requests and answers");
        }
    }
}
