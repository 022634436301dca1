//! What comparing a shadow's answer with the primary's costs a mirrored request: the field-by-field
//! comparison of two captured JSON answers (parse both, walk both, list every difference) and the
//! ledger's count of it (`metrics::fields`), on an order of 20 items (about 1.6 KB): identical
//! answers, answers that differ only in their noisy `ts` and `request_id`, and a v2 that also renames
//! a field and changes a price. With the binary's allocator (mimalloc); the heap bytes one comparison
//! allocates are printed by `cargo run --release --example mirror_compare_bytes`.
//!
//! Run: `cargo bench --bench mirror`
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard::metrics::fields::{Fields, Rule};
use switchyard::proxy::mirror::compare::compare;

#[path = "support/mirror_fixture.rs"]
mod mirror_fixture;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let (primary, cases) = mirror_fixture::cases();
    let cfg = mirror_fixture::cfg();
    let rule = Rule::of(&cfg);
    let mut group = c.benchmark_group("mirror compare");
    for (name, shadow) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| black_box(compare(black_box(&primary), black_box(shadow), &cfg)))
        });
    }
    group.bench_function("parse both bodies only", |b| {
        b.iter(|| {
            let a: serde_json::Value = serde_json::from_slice(black_box(&primary.body)).unwrap();
            let s: serde_json::Value = serde_json::from_slice(black_box(&cases[0].1.body)).unwrap();
            black_box((a, s))
        })
    });
    let fields = Fields::default();
    let shadow = &cases[2].1;
    group.bench_function("rename and price, compared and counted", |b| {
        b.iter(|| {
            let v = compare(black_box(&primary), black_box(shadow), &cfg);
            black_box(fields.shadow_pair("orders", "v2", &v.fields, &rule))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
