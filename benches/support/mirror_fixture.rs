//! The pair of answers `benches/mirror.rs` and `examples/mirror_compare_bytes.rs` compare: an order
//! of 20 items (about 1.6 KB of JSON) as v1 answers it, and as answers that differ from it.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Value};
use switchyard::proxy::mirror::compare::Captured;
use switchyard::release::mirror::Compare;

pub fn order(ts: &str, request_id: &str, v2: bool) -> Value {
    let items: Vec<Value> = (0..20)
        .map(|i| {
            let price = if v2 && i == 3 { 11.5 } else { 10.5 };
            json!({"sku": format!("SKU-{i:05}"), "name": "A thing of some length", "qty": i % 4 + 1, "price": price})
        })
        .collect();
    let mut order = json!({
        "order": {"id": 123_456, "currency": "EUR", "items": items, "status": "paid"},
        "ts": ts,
        "request_id": request_id,
    });
    let o = order["order"].as_object_mut().unwrap();
    if v2 {
        o.insert("client".into(), json!("ann"));
    } else {
        o.insert("customer".into(), json!("ann"));
    }
    order
}

pub fn captured(body: &Value) -> Captured {
    Captured {
        status: 200,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("cache-control".into(), b"no-store".to_vec()),
        ],
        body: body.to_string().into_bytes(),
        truncated: false,
        grpc_status: None,
    }
}

pub fn cfg() -> Compare {
    Compare {
        ignore_headers: Vec::new(),
        ignore_json: Vec::new(),
        max_body_bytes: 1 << 20,
        noise_per_million: 50_000,
        noise_relative: 0.2,
        noise_absolute: 0.0003,
    }
}

/// The primary's answer, and the shadows it is compared with.
pub fn cases() -> (Captured, [(&'static str, Captured); 3]) {
    (
        captured(&order("10:00:00.001", "a1", false)),
        [
            ("identical", captured(&order("10:00:00.001", "a1", false))),
            ("noise only", captured(&order("10:00:00.002", "b2", false))),
            (
                "rename and price",
                captured(&order("10:00:00.002", "b2", true)),
            ),
        ],
    )
}
