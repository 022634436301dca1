//! Anytime-valid tests for the rollout's gates (SPEC §6) and the mirror's fields (SPEC §5): each is a test martingale, so it may be
//! looked at after every request and still fails an identical canary with probability at most
//! `alpha` over the whole step (Ville's inequality: P(sup_n Λ_n ≥ 1/alpha) ≤ alpha).
//!
//! Every test here is a one-sided Beta-mixture Bayes factor for a binomial proportion `p` against a
//! point null `p0` (the mixture sequential probability ratio test, mSPRT; Robbins 1970; Johari,
//! Pekelis & Walsh 2017). With `k` successes in `n` trials and a Beta(a, b) prior restricted to
//! `p > p0`:
//!
//! ```text
//! Λ = B(a + k, b + n − k) · (1 − I_p0(a + k, b + n − k))
//!     ─────────────────────────────────────────────────────
//!     B(a, b) · (1 − I_p0(a, b)) · p0^k · (1 − p0)^(n − k)
//! ```
//!
//! (`B` the Beta function, `I_x` the regularized incomplete Beta.) Under `p ≤ p0` it is a
//! nonnegative supermartingale with Λ_0 = 1, so the null `p ≤ p0` is covered, not only `p = p0`.
//!
//! - Errors of canary against baseline ([`error_share`]): if each request reaches the canary with
//!   probability `w` whatever its outcome, and both versions fail at the same rate, each *error* comes
//!   from the canary with probability `w`; among `m` errors the canary's `k` is Binomial(m, w) (Lindon
//!   & Malek 2022, as Netflix judges canaries). Exact for small counts and very unequal arms, no
//!   variance estimate.
//! - Tail and shift of latency ([`proportion_above`]): the canary's share of requests slower than a
//!   reference (r × the baseline's p99) against 1%, and (r × its median) against 50%.
//! - Ceilings (`max_error_rate`, `max_mirror_diff_rate`): a share against its limit, the same way.
//!
//! [`rate_interval`] is the matching confidence sequence for a rate: every value of `p` whose
//! two-sided Bayes factor stays below 1/alpha, so it covers the true rate at all times with
//! probability at least 1 − alpha.

use statrs::function::beta::{beta_reg, ln_beta};

/// A Beta(a, b) prior on the proportion under the alternative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    pub a: f64,
    pub b: f64,
}

impl Prior {
    /// A prior with mean `p0` and `a = 1`: restricted to `p > p0`, it puts most of its weight on
    /// odds ratios between 1 and about 4 over `p0` (the regressions a canary gate is for), and
    /// still lets a larger one show within a few dozen events.
    pub fn centred_on(p0: f64) -> Prior {
        let p0 = p0.clamp(1e-9, 1.0 - 1e-9);
        Prior {
            a: 1.0,
            b: (1.0 - p0) / p0,
        }
    }
}

/// ln Λ of the one-sided mixture test of `p > p0` after `k` of `n` (see the module's formula).
/// 0 (no evidence) when `n` is 0; `-inf` is possible when the data lie far below `p0`.
pub fn ln_bayes_factor_above(k: u64, n: u64, p0: f64, prior: Prior) -> f64 {
    if n == 0 || !(0.0..1.0).contains(&p0) || p0 <= 0.0 {
        return 0.0;
    }
    let k = k.min(n);
    let (s, f) = (k as f64, (n - k) as f64);
    let (a, b) = (prior.a, prior.b);
    // 1 − I_p0(x, y) = I_{1−p0}(y, x): the upper tail without cancellation.
    let upper = |x: f64, y: f64| beta_reg(y, x, 1.0 - p0).max(0.0).ln();
    let numerator = ln_beta(a + s, b + f) + upper(a + s, b + f);
    let denominator = ln_beta(a, b) + upper(a, b) + s * p0.ln() + f * (1.0 - p0).ln();
    numerator - denominator
}

/// ln of the two-sided mixture Bayes factor against the point `p` (the prior unrestricted).
fn ln_bayes_factor_at(k: u64, n: u64, p: f64, prior: Prior) -> f64 {
    let (s, f) = (k as f64, (n - k) as f64);
    let ln_lik = |x: f64, c: f64| if c == 0.0 { 0.0 } else { c * x.ln() };
    ln_beta(prior.a + s, prior.b + f)
        - ln_beta(prior.a, prior.b)
        - ln_lik(p, s)
        - ln_lik(1.0 - p, f)
}

/// The confidence sequence for a rate after `k` of `n`: every `p` whose two-sided Bayes factor
/// (uniform prior) is below 1/alpha. `(0, 1)` with no data.
pub fn rate_interval(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let k = k.min(n);
    let prior = Prior { a: 1.0, b: 1.0 };
    let bound = (1.0 / alpha).ln();
    let inside = |p: f64| ln_bayes_factor_at(k, n, p, prior) < bound;
    let centre = k as f64 / n as f64;
    // The Bayes factor is convex in ln-likelihood terms and below 1 at the maximum likelihood
    // estimate, so each side has one crossing: bisection finds it.
    let crossing = |mut inner: f64, mut outer: f64| {
        if inside(outer) {
            return outer;
        }
        for _ in 0..60 {
            let mid = (inner + outer) / 2.0;
            if inside(mid) {
                inner = mid;
            } else {
                outer = mid;
            }
        }
        inner
    };
    (crossing(centre, 0.0), crossing(centre, 1.0))
}

/// The outcome of one anytime-valid test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// The Bayes factor Λ against the null (an e-value), capped at 1e300.
    pub bayes_factor: f64,
    /// 1/alpha: the test fails when Λ reaches it.
    pub threshold: f64,
}

impl Evidence {
    fn new(ln_bf: f64, alpha: f64) -> Evidence {
        let bayes_factor = if ln_bf.is_nan() {
            0.0
        } else {
            ln_bf.min(690.0).exp()
        };
        Evidence {
            bayes_factor,
            threshold: 1.0 / alpha,
        }
    }

    /// The anytime-valid p-value 1/Λ (at most 1).
    pub fn p(&self) -> f64 {
        if self.bayes_factor <= 1.0 {
            1.0
        } else {
            1.0 / self.bayes_factor
        }
    }

    pub fn rejects(&self) -> bool {
        self.bayes_factor >= self.threshold
    }
}

/// Is the canary's error rate above the baseline's? `canary_errors` of all `errors` came from the
/// canary, which served the share `w` of the requests (0 < w < 1). `None` when `w` is not strictly
/// between 0 and 1 (one arm served nothing: no comparison).
pub fn error_share(canary_errors: u64, errors: u64, w: f64, alpha: f64) -> Option<Evidence> {
    if !(w > 0.0 && w < 1.0) {
        return None;
    }
    let ln_bf = ln_bayes_factor_above(canary_errors, errors, w, Prior::centred_on(w));
    Some(Evidence::new(ln_bf, alpha))
}

/// Is the share of `k` in `n` above `p0`? (Tail and shift of latency against 1% and 50%, and the
/// ceilings.) `None` for a `p0` outside (0, 1).
pub fn proportion_above(k: u64, n: u64, p0: f64, alpha: f64) -> Option<Evidence> {
    if !(p0 > 0.0 && p0 < 1.0) {
        return None;
    }
    let ln_bf = ln_bayes_factor_above(k, n, p0, Prior::centred_on(p0));
    Some(Evidence::new(ln_bf, alpha))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    /// Reference values from scipy 1.x (`scipy.special.betaln`, `betainc`), computed by the same
    /// formula: `betaln(a+k, b+n-k) + log(betainc(b+n-k, a+k, 1-p0)) - betaln(a, b)
    /// - log(betainc(b, a, 1-p0)) - k log p0 - (n-k) log(1-p0)`.
    #[test]
    fn the_bayes_factor_matches_scipy() {
        let cases = [
            // (k, n, p0, a, b, ln Λ from scipy)
            (30, 120, 0.1, 1.0, 9.0, 9.637496235276936),
            (12, 120, 0.1, 1.0, 9.0, -1.167196525657591),
            (5, 5, 0.1, 1.0, 9.0, 4.8577930042626285),
            (0, 50, 0.1, 1.0, 9.0, -1.8803128665694997),
            (40, 1000, 0.01, 1.0, 99.0, 23.432949489659535),
            (8, 1000, 0.01, 1.0, 99.0, -1.4435778843780973),
            (560, 1000, 0.5, 1.0, 1.0, 4.674371021708453),
        ];
        for (k, n, p0, a, b, want) in cases {
            let got = ln_bayes_factor_above(k, n, p0, Prior { a, b });
            assert!(
                close(got, want, 1e-9) || (got - want).abs() < 1e-9,
                "k={k} n={n} p0={p0}: {got} vs scipy {want}"
            );
        }
    }

    #[test]
    fn the_prior_is_centred_on_the_null() {
        let p = Prior::centred_on(0.1);
        assert!(close(p.a / (p.a + p.b), 0.1, 1e-12));
        assert_eq!(Prior::centred_on(0.5), Prior { a: 1.0, b: 1.0 });
    }

    #[test]
    fn evidence_grows_with_a_real_difference_and_not_without_one() {
        // +2 points over 1% at 10% weight: 10,000 canary requests (300 errors), 90,000 baseline
        // (900 errors): 1,200 errors, 300 from the canary where 120 were expected.
        let e = error_share(300, 1200, 0.1, 0.001).unwrap();
        assert!(e.rejects() && e.p() < 1e-20, "{e:?}");
        // As expected under the null.
        let e = error_share(120, 1200, 0.1, 0.001).unwrap();
        assert!(!e.rejects() && e.bayes_factor < 1.0, "{e:?}");
        assert_eq!(error_share(1, 2, 0.0, 0.01), None);
        assert_eq!(error_share(1, 2, 1.0, 0.01), None);
        // No errors at all: no evidence.
        assert_eq!(error_share(0, 0, 0.1, 0.01).unwrap().bayes_factor, 1.0);
    }

    /// The same set computed with scipy: the roots of `betaln(1+k, 1+n-k) - k log p - (n-k) log(1-p)
    /// = log(1/alpha)` by `scipy.optimize.brentq`.
    #[test]
    fn the_rate_interval_matches_scipy() {
        let cases = [
            (30, 1000, 0.01, 0.012509325453425863, 0.05852829764352349),
            (300, 10_000, 0.01, 0.0229688189055377, 0.03829038563225326),
            (0, 500, 0.01, 0.0, 0.021411011582711737),
            (36, 300, 0.0016667, 0.05451707282719558, 0.2167027041221421),
        ];
        for (k, n, alpha, lo, hi) in cases {
            let got = rate_interval(k, n, alpha);
            assert!(
                (got.0 - lo).abs() < 1e-9 && (got.1 - hi).abs() < 1e-9,
                "{k}/{n}: {got:?} vs scipy ({lo}, {hi})"
            );
        }
    }

    #[test]
    fn the_rate_interval_covers_the_estimate_and_narrows() {
        let (lo, hi) = rate_interval(30, 1000, 0.01);
        assert!(
            lo < 0.03 && hi > 0.03 && lo > 0.01 && hi < 0.06,
            "{lo} {hi}"
        );
        let (lo2, hi2) = rate_interval(300, 10_000, 0.01);
        assert!(hi2 - lo2 < hi - lo);
        assert_eq!(rate_interval(0, 0, 0.01), (0.0, 1.0));
        let (lo, hi) = rate_interval(0, 500, 0.01);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.0 && hi < 0.03, "{hi}");
    }
}
