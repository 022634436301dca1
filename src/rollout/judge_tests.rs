use super::*;
use crate::metrics::{BUCKETS, EDGES_US};

/// `ok` 2xx and `errors` 5xx answers, all at about `latency_us`.
fn interval(ok: u64, errors: u64, latency_us: u64) -> Stats {
    let mut s = Stats::default();
    s.status[1] = ok;
    s.status[4] = errors;
    add_latency(&mut s, ok + errors, latency_us);
    s
}

fn add_latency(s: &mut Stats, n: u64, us: u64) {
    let bucket = EDGES_US
        .iter()
        .position(|e| *e >= us)
        .unwrap_or(BUCKETS - 1);
    s.latency.buckets[bucket] += n;
    s.latency.sum_us += n * us;
}

fn gates() -> Gates {
    Gates::from_config(&GatesConfig::default())
}

const ALPHA: f64 = 0.01;

/// A check with the default gates at significance `ALPHA`.
fn check(canary: &Stats, baseline: &Stats) -> Check {
    judge(&gates(), ALPHA, canary, baseline, "")
}

#[test]
fn too_few_requests_is_inconclusive_and_says_what_the_step_needs() {
    let c = judge(
        &gates(),
        ALPHA,
        &interval(10, 3, 1000),
        &interval(10_000, 10, 1000),
        "only requests with X-Version: beta reach the canary",
    );
    assert_eq!(c.verdict, Outcome::Inconclusive);
    assert_eq!(
        c.needs.as_deref(),
        Some("87 more canary requests; only requests with X-Version: beta reach the canary")
    );
    assert_eq!((c.canary.requests, c.baseline.requests), (13, 10_010));
}

#[test]
fn a_canary_with_many_more_errors_fails_with_every_figure() {
    let c = check(&interval(264, 36, 1000), &interval(29_880, 120, 1000));
    assert_eq!(c.verdict, Outcome::Fail);
    assert_eq!(c.gate.as_deref(), Some("max_error_rate_increase"));
    let t = c.tests.iter().find(|t| t.test == "errors").unwrap();
    assert_eq!(t.outcome, Outcome::Fail);
    assert!((t.canary - 0.12).abs() < 1e-9 && (t.baseline - 0.004).abs() < 1e-9);
    assert!(t.interval[0] > 0.005 && t.interval[1] > t.effect, "{t:?}");
    assert!(t.bayes_factor >= t.threshold, "{t:?}");
    // Three tests (errors, tail, shift) share the step's significance.
    assert!((t.alpha - ALPHA / 3.0).abs() < 1e-6, "{t:?}");
    assert!(c.summary.starts_with("max_error_rate_increase: canary 5xx 12.00% (36/300) vs baseline 0.40% (120/30000): +11.60 points"), "{}", c.summary);
}

#[test]
fn an_equal_noisy_canary_passes() {
    // 2% errors on both sides: the canary's 7 of 300 is chance, not a regression.
    let c = check(&interval(293, 7, 1000), &interval(29_400, 600, 1000));
    assert_eq!(c.verdict, Outcome::Pass, "{c:?}");
    assert!(c.tests.iter().all(|t| t.bayes_factor < t.threshold));
}

#[test]
fn a_significant_difference_within_the_tolerated_increase_passes() {
    // 1.3% against 1.0% over 200,000 and 2,000,000: clear evidence, but only +0.3 points.
    let c = check(
        &interval(197_400, 2_600, 1000),
        &interval(1_980_000, 20_000, 1000),
    );
    assert_eq!(c.verdict, Outcome::Pass, "{}", c.summary);
    let t = c.tests.iter().find(|t| t.test == "errors").unwrap();
    assert!(t.bayes_factor >= t.threshold && t.words.contains("within the tolerance"));
}

#[test]
fn a_uniformly_slower_canary_fails_the_shift_test() {
    let c = check(&interval(300, 0, 5000), &interval(30_000, 0, 1000));
    assert_eq!(c.gate.as_deref(), Some("max_p99_ratio"));
    assert!(c
        .tests
        .iter()
        .any(|t| t.test == "latency_shift" && t.outcome == Outcome::Fail));
}

#[test]
fn a_tail_only_regression_fails_the_tail_test() {
    // Baseline: all at 10 ms except 1% at 20 ms. Canary: the same, but 4% of it at 500 ms.
    let mut baseline = interval(29_700, 0, 10_000);
    add_latency(&mut baseline, 300, 20_000);
    baseline.status[1] += 300;
    let mut canary = interval(960, 0, 10_000);
    add_latency(&mut canary, 40, 510_000);
    canary.status[1] += 40;
    let c = check(&canary, &baseline);
    assert_eq!(c.verdict, Outcome::Fail, "{}", c.summary);
    let tail = c.tests.iter().find(|t| t.test == "latency_tail").unwrap();
    assert_eq!(tail.outcome, Outcome::Fail);
    let shift = c.tests.iter().find(|t| t.test == "latency_shift").unwrap();
    assert_eq!(shift.outcome, Outcome::Pass, "the median did not move");
}

#[test]
fn an_absolute_ceiling_needs_evidence_too() {
    let mut g = gates();
    g.max_error_rate = Some(0.01);
    // 1.7% of 300: above the ceiling, but not surely.
    let c = judge(
        &g,
        ALPHA,
        &interval(295, 5, 1000),
        &interval(29_500, 500, 1000),
        "",
    );
    assert_eq!(c.verdict, Outcome::Pass, "{}", c.summary);
    // 6% of 1,000: surely above.
    let c = judge(
        &g,
        ALPHA,
        &interval(940, 60, 1000),
        &interval(29_400, 600, 1000),
        "",
    );
    assert_eq!(c.gate.as_deref(), Some("max_error_rate"), "{}", c.summary);
    assert_eq!(g.tests(false), 4);
}

#[test]
fn a_mirror_step_is_judged_on_shadow_errors_and_differences() {
    let mut g = gates();
    g.max_mirror_diff_rate = Some(0.01);
    let baseline = interval(10_000, 10, 1000);
    let mut shadow = Stats {
        mirror_sent: 50,
        ..Stats::default()
    };
    let c = judge_mirror(
        &g,
        ALPHA,
        &shadow,
        &baseline,
        "10% of requests are copied to the canary",
    );
    assert_eq!(c.verdict, Outcome::Inconclusive);
    assert_eq!(
        c.needs.as_deref(),
        Some("50 more shadow copies; 10% of requests are copied to the canary")
    );
    shadow.mirror_sent = 400;
    shadow.mirror_compared = 400;
    assert_eq!(
        judge_mirror(&g, ALPHA, &shadow, &baseline, "").verdict,
        Outcome::Pass
    );
    shadow.mirror_errors = 40;
    let c = judge_mirror(&g, ALPHA, &shadow, &baseline, "");
    assert_eq!(
        c.gate.as_deref(),
        Some("max_error_rate_increase"),
        "{}",
        c.summary
    );
    shadow.mirror_errors = 0;
    shadow.mirror_diffs = 40;
    let c = judge_mirror(&g, ALPHA, &shadow, &baseline, "");
    assert_eq!(
        c.gate.as_deref(),
        Some("max_mirror_diff_rate"),
        "{}",
        c.summary
    );
}

#[test]
fn a_check_serialises_with_every_figure() {
    let c = check(&interval(264, 36, 1000), &interval(29_880, 120, 1000));
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["verdict"], "fail");
    assert_eq!(v["canary"]["requests"], 300);
    assert_eq!(v["baseline"]["errors"], 120);
    for key in [
        "effect",
        "interval",
        "bayes_factor",
        "threshold",
        "p",
        "alpha",
    ] {
        assert!(!v["tests"][0][key].is_null(), "{key}: {v}");
    }
    let again: Check = serde_json::from_value(v).unwrap();
    assert_eq!(again, c);
}
