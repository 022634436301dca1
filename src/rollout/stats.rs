//! Significance tests that judge a canary against its baseline over one interval, as Kayenta does:
//! is the canary's error rate, or its latency, worse than the baseline's by more than chance explains?
//! Each answers a one-sided p-value: the probability of a difference at least this large in the
//! canary's disfavour if both versions behaved alike. A verdict compares it with `1 - confidence`,
//! so a clearly worse canary is caught after a few hundred requests and a noisy one is not rolled back
//! on chance.
//!
//! - Errors: Fisher's exact test when any expected count of the 2×2 table is below 5 (few requests,
//!   or rare errors), the two-proportion z-test otherwise.
//! - Latency: the Mann–Whitney U test over the two latency histograms (same bucket bounds), each
//!   bucket a group of ties, with the tie-corrected variance and a continuity correction.

use statrs::distribution::{ContinuousCDF, DiscreteCDF, Hypergeometric, Normal};

/// One-sided p-value that the canary's share of errors is greater than the baseline's. `None` when
/// either side has no requests (nothing to judge).
pub fn errors_worse(
    canary_errors: u64,
    canary_total: u64,
    baseline_errors: u64,
    baseline_total: u64,
) -> Option<f64> {
    if canary_total == 0 || baseline_total == 0 {
        return None;
    }
    let canary_errors = canary_errors.min(canary_total);
    let baseline_errors = baseline_errors.min(baseline_total);
    let total = canary_total + baseline_total;
    let errors = canary_errors + baseline_errors;
    // Expected counts of the four cells if both behaved alike.
    let expected_min = [canary_total, baseline_total]
        .iter()
        .flat_map(|n| {
            let n = *n as f64;
            let e = errors as f64 / total as f64;
            [n * e, n * (1.0 - e)]
        })
        .fold(f64::INFINITY, f64::min);
    if expected_min < 5.0 {
        return Some(fisher_worse(canary_errors, canary_total, errors, total));
    }
    let (p1, p2) = (
        canary_errors as f64 / canary_total as f64,
        baseline_errors as f64 / baseline_total as f64,
    );
    let pooled = errors as f64 / total as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / canary_total as f64 + 1.0 / baseline_total as f64))
        .sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    Some(standard_normal().sf((p1 - p2) / se))
}

/// Fisher's exact test, one-sided: P(X >= canary_errors) where X is the canary's count of errors
/// when the `errors` of all `total` requests fall at random between the two sides.
fn fisher_worse(canary_errors: u64, canary_total: u64, errors: u64, total: u64) -> f64 {
    if canary_errors == 0 {
        return 1.0;
    }
    match Hypergeometric::new(total, errors, canary_total) {
        Ok(h) => h.sf(canary_errors - 1).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// One-sided p-value that the canary's latencies are stochastically greater than the baseline's
/// (Mann–Whitney U over histograms with the same buckets, fastest first). `None` when either side is
/// empty or the histograms do not have the same buckets.
pub fn latency_worse(canary: &[u64], baseline: &[u64]) -> Option<f64> {
    if canary.len() != baseline.len() {
        return None;
    }
    let n1: u64 = canary.iter().sum();
    let n2: u64 = baseline.iter().sum();
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let n = n1f + n2f;
    // Ranks in the pooled sample: each bucket is a group of ties and gets the mean of its ranks.
    let mut below = 0.0;
    let mut canary_rank_sum = 0.0;
    let mut ties = 0.0;
    for (c, b) in canary.iter().zip(baseline) {
        let t = (c + b) as f64;
        if t == 0.0 {
            continue;
        }
        let mid = below + (t + 1.0) / 2.0;
        canary_rank_sum += *c as f64 * mid;
        ties += t * t * t - t;
        below += t;
    }
    let u = canary_rank_sum - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let variance = n1f * n2f / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Every request in the same bucket: no evidence either way.
        return Some(1.0);
    }
    let z = (u - mean - 0.5) / variance.sqrt();
    Some(standard_normal().sf(z).clamp(0.0, 1.0))
}

fn standard_normal() -> Normal {
    Normal::standard()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn fisher_exact_matches_the_tea_tasting_table() {
        // 3 of 4 against 1 of 4: P = (16 + 1) / 70.
        let p = errors_worse(3, 4, 1, 4).unwrap();
        assert!(close(p, 17.0 / 70.0, 1e-9), "{p}");
    }

    #[test]
    fn the_z_test_matches_a_worked_example() {
        // 6.0% against 4.0% over 1,000 each: pooled 5%, z = 2.052, one-sided p = 0.0201.
        let p = errors_worse(60, 1000, 40, 1000).unwrap();
        assert!(close(p, 0.0201, 0.0005), "{p}");
    }

    #[test]
    fn a_clearly_worse_canary_is_significant_and_an_equal_one_is_not() {
        // +5 points of errors at 1% of traffic: 300 canary requests against 30,000 baseline ones.
        assert!(errors_worse(17, 300, 300, 30_000).unwrap() < 0.001);
        // The same rate on both sides.
        assert!(errors_worse(3, 300, 300, 30_000).unwrap() > 0.3);
        // Fewer errors on the canary.
        assert!(errors_worse(0, 300, 300, 30_000).unwrap() > 0.9);
        // Rare errors, few requests: one error is not evidence.
        assert!(errors_worse(1, 20, 10, 10_000).unwrap() > 0.01);
        assert_eq!(errors_worse(0, 0, 1, 10), None);
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_case() {
        // Both canary requests slower than both baseline ones: U = 4, ties in two buckets of two,
        // variance 4/3, z = 1.299, p = 0.097.
        let p = latency_worse(&[0, 0, 2], &[2, 0, 0]).unwrap();
        assert!(close(p, 0.0970, 0.0005), "{p}");
    }

    #[test]
    fn slower_latency_is_significant_and_the_same_is_not() {
        let baseline = [500, 3000, 1200, 250, 40, 10];
        // The same shape at a hundredth of the traffic.
        let same = [5, 30, 12, 2, 1, 0];
        assert!(latency_worse(&same, &baseline).unwrap() > 0.2);
        // Shifted two buckets up.
        let slow = [0, 0, 5, 30, 12, 3];
        assert!(latency_worse(&slow, &baseline).unwrap() < 1e-6);
        // Faster.
        let fast = [30, 12, 3, 0, 0, 0];
        assert!(latency_worse(&fast, &baseline).unwrap() > 0.99);
        assert_eq!(latency_worse(&[1, 2], &[1, 2, 3]), None);
        assert_eq!(latency_worse(&[0, 0], &[1, 2]), None);
        assert_eq!(latency_worse(&[0, 3], &[0, 5]), Some(1.0));
    }
}
