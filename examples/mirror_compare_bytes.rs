//! The heap bytes one field-by-field comparison of a mirrored pair allocates, and what the route's
//! field ledger holds, on `benches/mirror.rs`'s answers (an order of 20 items, about 1.6 KB), counted
//! by dhat's allocator in its testing mode (nothing is written).
//!
//! Run: `cargo run --release --example mirror_compare_bytes`
#![allow(clippy::unwrap_used)]

use switchyard::metrics::fields::{FieldDiff, Fields, Kind, Rule, MAX_FIELDS};
use switchyard::proxy::mirror::compare::compare;

#[path = "../benches/support/mirror_fixture.rs"]
mod mirror_fixture;

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (primary, cases) = mirror_fixture::cases();
    let cfg = mirror_fixture::cfg();
    println!("body: {} bytes", primary.body.len());
    for (name, shadow) in &cases {
        let before = dhat::HeapStats::get();
        let v = compare(&primary, shadow, &cfg);
        let after = dhat::HeapStats::get();
        println!(
            "{name}: {} fields differ; one comparison allocates {} bytes in {} blocks",
            v.fields.len(),
            after.total_bytes - before.total_bytes,
            after.total_blocks - before.total_blocks
        );
    }
    // A route's ledger at its bound: MAX_FIELDS distinct fields, each with an example pair (judged at
    // once, so that no pair waits for the noise here).
    let fields = Fields::default();
    let rule = Rule {
        learns: false,
        ..Rule::of(&cfg)
    };
    let before = dhat::HeapStats::get().curr_bytes;
    for i in 0..MAX_FIELDS {
        let d = FieldDiff {
            path: format!("/order/items/*/field_{i:03}"),
            kind: Kind::Value,
            primary: Some("\"a value of twenty\"".into()),
            shadow: Some("\"another value here\"".into()),
            primary_type: Some("string"),
            shadow_type: Some("string"),
        };
        fields.shadow_pair("orders", "v2", &[d], &rule);
    }
    let held = dhat::HeapStats::get().curr_bytes - before;
    println!(
        "a route's ledger with {MAX_FIELDS} fields holds {held} bytes ({} a field)",
        held / MAX_FIELDS
    );
}
