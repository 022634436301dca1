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
fn diffys_thresholds_on_rates() {
    // Always different in both: noise, not significant.
    assert!(!RULE.holds(1.0, 1.0));
    // Different in 20% of shadow pairs, never between two baseline answers.
    assert!(RULE.holds(0.2, 0.0));
    // 30% against 25% noise: (0.05 / 0.55) = 9% relative, under 20%.
    assert!(!RULE.holds(0.3, 0.25));
    // 60% against 25%: 41% relative and 35 points absolute.
    assert!(RULE.holds(0.6, 0.25));
    // Above the noise but by less than the absolute threshold (0.03% of pairs).
    assert!(!RULE.holds(0.0002, 0.0));
    assert!(RULE.holds(0.0004, 0.0));
}

#[test]
fn significance_needs_the_evidence_of_both_rates() {
    // 20% of 1,000 pairs against none of 200 noise pairs: the shadow rate is at least 14.7% and the
    // noise at most 5.9% (confidence sequences at FIELD_ALPHA).
    assert!(RULE.significant(200, 1000, 0, 200));
    // The same rates on 100 and 20: the noise could still be 39%.
    assert!(!RULE.significant(20, 100, 0, 20));
    // 30% against 30% noise.
    assert!(!RULE.significant(300, 1000, 60, 200));
    // Without noise learning, what is observed counts.
    let plain = Rule {
        learns: false,
        ..RULE
    };
    assert!(plain.significant(1, 1, 0, 0));
    assert!(!plain.significant(0, 1, 0, 0));
}

#[test]
fn pairs_wait_for_the_noise_then_only_significant_fields_count() {
    let fields = Fields::default();
    let ts = diff("/ts", Kind::Value, (Some("string"), Some("string")));
    let price = diff("/price", Kind::Value, (Some("number"), Some("number")));
    let pair = |i: usize| {
        let mut d = vec![ts.clone()];
        if i % 5 == 0 {
            d.push(price.clone());
        }
        d
    };
    let mut judged = Vec::new();
    for i in 0..5 {
        judged.extend(fields.shadow_pair("api", "v2", &pair(i), &RULE));
    }
    assert!(
        judged.is_empty(),
        "nothing is judged before the noise is learned"
    );
    // Noise pairs: /ts differs between two baseline answers too.
    for _ in 0..MIN_NOISE_PAIRS {
        judged.extend(fields.noise_pair("api", "v2", std::slice::from_ref(&ts), &RULE));
    }
    assert_eq!(judged.len(), 5, "the waiting pairs are judged once it is");
    for _ in MIN_NOISE_PAIRS..200 {
        fields.noise_pair("api", "v2", std::slice::from_ref(&ts), &RULE);
    }
    // 1,000 pairs, /price in one of five: it becomes significant once its evidence is in.
    for i in 5..1005 {
        judged.extend(fields.shadow_pair("api", "v2", &pair(i), &RULE));
    }
    assert_eq!(judged.len(), 1005);
    let counted = judged.iter().filter(|j| j.significant).count();
    assert!((120..=200).contains(&counted), "{counted}");
    let report = fields.report("api", &RULE).unwrap();
    assert_eq!((report.pairs, report.noise_pairs), (1005, 200));
    assert!(report.noise_learned);
    let by_path = |p: &str| report.fields.iter().find(|f| f.path == p).unwrap();
    assert!(by_path("/price").significant && !by_path("/price").noisy);
    assert!(!by_path("/ts").significant && by_path("/ts").noisy);
    assert_eq!(report.fields[0].path, "/price", "significant fields first");
    // A pair with only noise is judged at once, and does not count.
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
fn a_reset_forgets_the_route() {
    let fields = Fields::default();
    let d = [diff("/a", Kind::Value, (None, None))];
    fields.shadow_pair("api", "v2", &d, &RULE);
    fields.shadow_pair("web", "v2", &d, &RULE);
    fields.reset("api");
    assert!(fields.report("api", &RULE).is_none());
    assert_eq!(fields.report("web", &RULE).unwrap().pairs, 1);
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
