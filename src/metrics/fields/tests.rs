#![allow(clippy::unwrap_used)]
use super::*;

const RULE: Rule = Rule {
    learns: true,
    relative: 0.2,
    absolute: 0.0003,
};

fn diff(path: &str, kind: Kind, types: (Option<&'static str>, Option<&'static str>)) -> FieldDiff {
    FieldDiff {
        path: path.into(),
        kind,
        primary: Some("1".into()),
        shadow: Some("2".into()),
        primary_type: types.0,
        shadow_type: types.1,
    }
}

#[test]
fn diffys_rule_on_its_own_terms() {
    // Always different in both: noise, not significant.
    assert!(!RULE.significant(100, 100, 20, 20));
    // Different in 20% of shadow pairs, never between two baseline answers.
    assert!(RULE.significant(20, 100, 0, 20));
    // 30% against 25% noise: (0.05 / 0.55) = 9% relative, under 20%.
    assert!(!RULE.significant(30, 100, 5, 20));
    // 60% against 25%: 41% relative and 35 points absolute.
    assert!(RULE.significant(60, 100, 5, 20));
    // Above the noise but by less than the absolute threshold (0.03% of pairs).
    assert!(!RULE.significant(2, 10_000, 0, 20));
    assert!(RULE.significant(4, 10_000, 0, 20));
    assert!(!RULE.significant(0, 100, 0, 20));
}

#[test]
fn pairs_wait_for_the_noise_then_only_significant_fields_count() {
    let fields = Fields::default();
    let ts = diff("/ts", Kind::Value, (Some("string"), Some("string")));
    let price = diff("/price", Kind::Value, (Some("number"), Some("number")));
    let mut judged = Vec::new();
    // 100 shadow pairs: /ts always differs, /price in one pair of five.
    for i in 0..100 {
        let mut d = vec![ts.clone()];
        if i % 5 == 0 {
            d.push(price.clone());
        }
        judged.extend(fields.shadow_pair("api", "v2", &d, &RULE));
    }
    assert!(
        judged.is_empty(),
        "nothing is judged before the noise is learned"
    );
    // Noise pairs: /ts differs between two baseline answers too.
    for _ in 0..MIN_NOISE_PAIRS {
        judged.extend(fields.noise_pair("api", "v2", std::slice::from_ref(&ts), &RULE));
    }
    assert_eq!(judged.len(), 100, "the waiting pairs are judged once it is");
    assert_eq!(judged.iter().filter(|j| j.significant).count(), 20);
    let report = fields.report("api", &RULE).unwrap();
    assert_eq!((report.pairs, report.noise_pairs), (100, 20));
    assert!(report.noise_learned);
    let by_path = |p: &str| report.fields.iter().find(|f| f.path == p).unwrap();
    assert!(by_path("/price").significant && !by_path("/price").noisy);
    assert!(!by_path("/ts").significant && by_path("/ts").noisy);
    assert_eq!(report.fields[0].path, "/price", "significant fields first");
    // A pair compared now is judged at once.
    let now = fields.shadow_pair("api", "v2", &[ts], &RULE);
    assert_eq!(now, vec![Judged { significant: false }]);
}

#[test]
fn without_noise_learning_every_difference_counts_at_once() {
    let rule = Rule {
        learns: false,
        ..RULE
    };
    let fields = Fields::default();
    let d = [diff("status", Kind::Value, (None, None))];
    let j = fields.shadow_pair("api", "v2", &d, &rule);
    assert_eq!(j.len(), 1);
    assert!(j[0].significant);
}

#[test]
fn waiting_pairs_are_bounded() {
    let fields = Fields::default();
    let d = [diff("/a", Kind::Value, (None, None))];
    let mut judged = 0;
    for _ in 0..(MAX_PENDING + 10) {
        judged += fields.shadow_pair("api", "v2", &d, &RULE).len();
    }
    assert_eq!(judged, 10, "the oldest are judged when too many wait");
}

#[test]
fn distinct_fields_are_bounded_and_the_rest_counted_as_overflow() {
    let fields = Fields::default();
    let rule = Rule {
        learns: false,
        ..RULE
    };
    for i in 0..(MAX_FIELDS + 44) {
        let d = [diff(&format!("/f{i}"), Kind::Added, (None, Some("number")))];
        fields.shadow_pair("api", "v2", &d, &rule);
    }
    let report = fields.report("api", &rule).unwrap();
    assert_eq!(report.fields.len(), MAX_FIELDS);
    assert_eq!(report.overflow.shadow_diffs, 44);
    let totals = fields.totals(&|_| Some(rule));
    assert_eq!(totals[0].1[Kind::Added as usize], (MAX_FIELDS + 44) as u64);
}

#[test]
fn another_target_starts_a_new_ledger() {
    let fields = Fields::default();
    let d = [diff("/a", Kind::Value, (None, None))];
    fields.shadow_pair("api", "v2", &d, &RULE);
    fields.shadow_pair("api", "v3", &d, &RULE);
    let report = fields.report("api", &RULE).unwrap();
    assert_eq!((report.target.as_str(), report.pairs), ("v3", 1));
}

#[test]
fn drift_names_additions_removals_renames_and_type_changes() {
    let fields = Fields::default();
    let rule = Rule {
        learns: false,
        ..RULE
    };
    let pair = [
        diff("/order/currency", Kind::Added, (None, Some("string"))),
        diff("/order/legacy_id", Kind::Removed, (Some("number"), None)),
        diff("/order/total", Kind::Type, (Some("number"), Some("string"))),
        diff("/order/customer", Kind::Removed, (Some("string"), None)),
        diff("/order/client", Kind::Added, (None, Some("string"))),
        diff("header/x-v", Kind::Value, (None, None)),
    ];
    for _ in 0..10 {
        fields.shadow_pair("api", "v2", &pair, &rule);
    }
    let mut drift = fields.report("api", &rule).unwrap().drift;
    drift.sort();
    assert_eq!(
        drift,
        vec![
            "v2 adds /order/currency (string)",
            "v2 changes /order/total from number to string",
            "v2 removes /order/legacy_id",
            "v2 renames /order/customer to /order/client (string)",
        ]
    );
}
