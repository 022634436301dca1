//! One check of a canary against its baseline over an interval (SPEC §6): the gates as Argo Rollouts
//! and Flagger users know them, each backed by a significance test where chance could explain the
//! difference ([`super::stats`]). Pure: the controller feeds it the interval's [`Stats`] of both.
//!
//! - Too few canary requests (`min_requests`) is inconclusive: neither pass nor fail.
//! - `max_error_rate`: the canary's 5xx share above it fails (an absolute ceiling).
//! - `max_error_rate_increase` (default 0.5 points): the canary's 5xx share above the baseline's by
//!   more than this fails only when the excess is significant at `confidence`.
//! - `max_p99_ratio` (default 1.5): the canary's p99 above the baseline's by more than this ratio fails
//!   only when its latencies are significantly slower (Mann–Whitney U) at `confidence`.
//! - `max_mirror_diff_rate`: in a mirror phase, the share of shadow answers that differed above it
//!   fails (with at least `min_requests` compared).
//! - `confidence` (default 0.99) sets how sure a significance test must be.

use super::stats;
use crate::config::{parse, GatesConfig};
use crate::metrics::Stats;

/// The gates of a rollout, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub min_requests: u64,
    /// Fractions 0–1.
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    pub max_mirror_diff_rate: Option<f64>,
    /// 0–1: a difference counts when its one-sided p-value is below `1 - confidence`.
    pub confidence: f64,
}

pub const DEFAULT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.005;
pub const DEFAULT_MAX_P99_RATIO: f64 = 1.5;
pub const DEFAULT_CONFIDENCE: f64 = 0.99;

impl Gates {
    /// From the config's `gates` (already validated: a percentage that does not parse is left out).
    pub fn from_config(g: &GatesConfig) -> Gates {
        let fraction = |v: &Option<crate::config::PercentValue>| {
            v.as_ref()
                .and_then(|p| parse::percent(p).ok())
                .map(|p| p / 100.0)
        };
        Gates {
            min_requests: g.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            max_error_rate: fraction(&g.max_error_rate),
            max_error_rate_increase: fraction(&g.max_error_rate_increase)
                .unwrap_or(DEFAULT_MAX_ERROR_RATE_INCREASE),
            max_p99_ratio: g.max_p99_ratio.unwrap_or(DEFAULT_MAX_P99_RATIO),
            max_mirror_diff_rate: fraction(&g.max_mirror_diff_rate),
            confidence: g.confidence.unwrap_or(DEFAULT_CONFIDENCE),
        }
    }
}

/// The outcome of one check, with the figures it rests on in words.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass(String),
    Fail { gate: &'static str, reason: String },
    Inconclusive(String),
}

/// The significance the `k`-th conclusive check of a rollout (from 1) requires: `1 - confidence`
/// spent over all checks, `6 / (π² k²)` of it to check `k` (the shares add up to 1). However many
/// times a rollout looks at a canary that is no worse than its baseline, each gate fails it by chance
/// at most `1 - confidence` of the time; the first checks, which matter most, get the largest shares.
pub fn alpha_for_check(gates: &Gates, k: u64) -> f64 {
    let k = k.max(1) as f64;
    (1.0 - gates.confidence) * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
}

/// Judges `canary` against `baseline` over the same interval, at significance `1 - confidence`.
pub fn judge(gates: &Gates, canary: &Stats, baseline: &Stats) -> Verdict {
    judge_at(gates, 1.0 - gates.confidence, canary, baseline)
}

/// Like [`judge`], at significance `alpha` (see [`alpha_for_check`]).
pub fn judge_at(gates: &Gates, alpha: f64, canary: &Stats, baseline: &Stats) -> Verdict {
    let n = canary.requests();
    if n < gates.min_requests {
        return Verdict::Inconclusive(format!(
            "canary served {n} requests, fewer than min_requests {}",
            gates.min_requests
        ));
    }
    let (c_rate, b_rate) = (canary.error_rate(), baseline.error_rate());
    if let Some(max) = gates.max_error_rate {
        if c_rate > max {
            return Verdict::Fail {
                gate: "max_error_rate",
                reason: format!("canary 5xx {} > max_error_rate {}", pct(c_rate), pct(max)),
            };
        }
    }
    let errors_p =
        stats::errors_worse(canary.status[4], n, baseline.status[4], baseline.requests());
    if let Some(p) = errors_p {
        if c_rate - b_rate > gates.max_error_rate_increase && p < alpha {
            return Verdict::Fail {
                gate: "max_error_rate_increase",
                reason: format!(
                    "canary 5xx {} vs baseline {} ({}) > max increase {}",
                    pct(c_rate),
                    pct(b_rate),
                    p_value(p),
                    points(gates.max_error_rate_increase)
                ),
            };
        }
    }
    let latency_p = stats::latency_worse(&canary.latency.buckets, &baseline.latency.buckets);
    let (c_p99, b_p99) = (canary.quantile(0.99), baseline.quantile(0.99));
    if let (Some(p), Some(c99), Some(b99)) = (latency_p, c_p99, b_p99) {
        let ratio = c99.as_secs_f64() / b99.as_secs_f64().max(1e-6);
        if ratio > gates.max_p99_ratio && p < alpha {
            return Verdict::Fail {
                gate: "max_p99_ratio",
                reason: format!(
                    "canary p99 {} vs baseline {} = {ratio:.2}x ({}) > max_p99_ratio {}",
                    ms(c99),
                    ms(b99),
                    p_value(p),
                    gates.max_p99_ratio
                ),
            };
        }
    }
    if let Some(max) = gates.max_mirror_diff_rate {
        if canary.mirror_compared >= gates.min_requests && canary.mirror_diff_rate() > max {
            return Verdict::Fail {
                gate: "max_mirror_diff_rate",
                reason: format!(
                    "shadow answers differing {} of {} compared > max_mirror_diff_rate {}",
                    pct(canary.mirror_diff_rate()),
                    canary.mirror_compared,
                    pct(max)
                ),
            };
        }
    }
    Verdict::Pass(format!(
        "canary {n} requests, 5xx {} vs baseline {}{}; p99 {} vs {}",
        pct(c_rate),
        pct(b_rate),
        errors_p
            .map(|p| format!(" ({})", p_value(p)))
            .unwrap_or_default(),
        c_p99.map(ms).unwrap_or_else(|| "-".into()),
        b_p99.map(ms).unwrap_or_else(|| "-".into()),
    ))
}

/// Judges a dark (mirror) phase: the canary serves nobody, so it is judged on its shadow answers
/// only: the share that failed (no answer, a timeout or a 5xx) against the baseline's 5xx share, with
/// the same ceiling and significance test as live traffic, and the share that differed from the
/// primary's answer (`max_mirror_diff_rate`).
pub fn judge_mirror(gates: &Gates, alpha: f64, canary: &Stats, baseline: &Stats) -> Verdict {
    let n = canary.mirror_sent;
    if n < gates.min_requests {
        return Verdict::Inconclusive(format!(
            "{n} shadow copies sent to the canary, fewer than min_requests {}",
            gates.min_requests
        ));
    }
    let errors = canary.mirror_errors.min(n);
    let c_rate = errors as f64 / n as f64;
    let b_rate = baseline.error_rate();
    if let Some(max) = gates.max_error_rate {
        if c_rate > max {
            return Verdict::Fail {
                gate: "max_error_rate",
                reason: format!(
                    "shadow errors {} of {n} copies > max_error_rate {}",
                    pct(c_rate),
                    pct(max)
                ),
            };
        }
    }
    let errors_p = stats::errors_worse(errors, n, baseline.status[4], baseline.requests());
    if let Some(p) = errors_p {
        if c_rate - b_rate > gates.max_error_rate_increase && p < alpha {
            return Verdict::Fail {
                gate: "max_error_rate_increase",
                reason: format!(
                    "shadow errors {} vs baseline 5xx {} ({}) > max increase {}",
                    pct(c_rate),
                    pct(b_rate),
                    p_value(p),
                    points(gates.max_error_rate_increase)
                ),
            };
        }
    }
    let diff = canary.mirror_diff_rate();
    if let Some(max) = gates.max_mirror_diff_rate {
        if canary.mirror_compared > 0 && diff > max {
            return Verdict::Fail {
                gate: "max_mirror_diff_rate",
                reason: format!(
                    "shadow answers differing {} of {} compared > max_mirror_diff_rate {}",
                    pct(diff),
                    canary.mirror_compared,
                    pct(max)
                ),
            };
        }
    }
    Verdict::Pass(format!(
        "{n} shadow copies, errors {} vs baseline 5xx {}; differing {} of {} compared",
        pct(c_rate),
        pct(b_rate),
        pct(diff),
        canary.mirror_compared
    ))
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

fn points(f: f64) -> String {
    format!("{:.1} points", f * 100.0)
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn p_value(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BUCKETS, EDGES_US};

    /// `ok` 2xx and `errors` 5xx answers, all at about `latency_us`.
    fn interval(ok: u64, errors: u64, latency_us: u64) -> Stats {
        let mut s = Stats::default();
        s.status[1] = ok;
        s.status[4] = errors;
        let bucket = EDGES_US
            .iter()
            .position(|e| *e >= latency_us)
            .unwrap_or(BUCKETS - 1);
        s.latency.buckets[bucket] = ok + errors;
        s.latency.sum_us = (ok + errors) * latency_us;
        s
    }

    fn gates() -> Gates {
        Gates::from_config(&GatesConfig::default())
    }

    #[test]
    fn too_few_requests_is_inconclusive() {
        let v = judge(
            &gates(),
            &interval(50, 20, 1000),
            &interval(10_000, 10, 1000),
        );
        assert!(matches!(v, Verdict::Inconclusive(_)), "{v:?}");
    }

    #[test]
    fn a_canary_with_many_more_errors_fails_naming_the_gate_and_figures() {
        let v = judge(
            &gates(),
            &interval(264, 36, 1000),
            &interval(29_880, 120, 1000),
        );
        match v {
            Verdict::Fail { gate, reason } => {
                assert_eq!(gate, "max_error_rate_increase");
                assert_eq!(
                    reason,
                    "canary 5xx 12.0% vs baseline 0.4% (p < 0.001) > max increase 0.5 points"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_mirror_phase_is_judged_on_shadow_errors_and_differences() {
        let mut g = gates();
        g.max_mirror_diff_rate = Some(0.01);
        let baseline = interval(10_000, 10, 1000);
        let mut shadow = Stats {
            mirror_sent: 50,
            ..Stats::default()
        };
        assert!(matches!(
            judge_mirror(&g, 0.01, &shadow, &baseline),
            Verdict::Inconclusive(_)
        ));
        shadow.mirror_sent = 400;
        shadow.mirror_compared = 400;
        assert!(matches!(
            judge_mirror(&g, 0.01, &shadow, &baseline),
            Verdict::Pass(_)
        ));
        shadow.mirror_errors = 40;
        match judge_mirror(&g, 0.01, &shadow, &baseline) {
            Verdict::Fail { gate, reason } => {
                assert_eq!(gate, "max_error_rate_increase");
                assert_eq!(
                    reason,
                    "shadow errors 10.0% vs baseline 5xx 0.1% (p < 0.001) > max increase 0.5 points"
                );
            }
            other => panic!("{other:?}"),
        }
        shadow.mirror_errors = 0;
        shadow.mirror_diffs = 12;
        assert!(matches!(
            judge_mirror(&g, 0.01, &shadow, &baseline),
            Verdict::Fail {
                gate: "max_mirror_diff_rate",
                ..
            }
        ));
    }

    #[test]
    fn the_significance_is_spent_over_a_rollouts_checks() {
        let g = gates();
        let total: f64 = (1..100_000).map(|k| alpha_for_check(&g, k)).sum();
        assert!(total < 0.01 && total > 0.0099, "{total}");
        assert!((alpha_for_check(&g, 1) - 0.00608).abs() < 1e-5);
        assert!(alpha_for_check(&g, 10) < alpha_for_check(&g, 9));
    }

    #[test]
    fn an_equal_noisy_canary_passes() {
        // 2% errors on both sides: the canary's 7 of 300 is chance, not a regression.
        let v = judge(
            &gates(),
            &interval(293, 7, 1000),
            &interval(29_400, 600, 1000),
        );
        assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
    }

    #[test]
    fn a_slower_canary_fails_the_latency_gate() {
        let v = judge(
            &gates(),
            &interval(300, 0, 5000),
            &interval(30_000, 0, 1000),
        );
        match v {
            Verdict::Fail { gate, reason } => {
                assert_eq!(gate, "max_p99_ratio");
                assert!(reason.contains("p < 0.001"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_confidence_decides_a_borderline_difference() {
        // 6.0% against 4.0% over 1,000 each: p = 0.02.
        let (canary, baseline) = (interval(940, 60, 1000), interval(960, 40, 1000));
        assert!(matches!(
            judge(&gates(), &canary, &baseline),
            Verdict::Pass(_)
        ));
        let lenient = Gates::from_config(&GatesConfig {
            confidence: Some(0.9),
            ..GatesConfig::default()
        });
        assert_eq!(lenient.confidence, 0.9);
        assert!(matches!(
            judge(&lenient, &canary, &baseline),
            Verdict::Fail {
                gate: "max_error_rate_increase",
                ..
            }
        ));
    }

    #[test]
    fn an_absolute_ceiling_and_the_mirror_gate() {
        let mut g = gates();
        g.max_error_rate = Some(0.01);
        let v = judge(&g, &interval(295, 5, 1000), &interval(29_500, 500, 1000));
        assert!(
            matches!(
                v,
                Verdict::Fail {
                    gate: "max_error_rate",
                    ..
                }
            ),
            "{v:?}"
        );
        let mut g = gates();
        g.max_mirror_diff_rate = Some(0.05);
        let mut canary = interval(300, 0, 1000);
        canary.mirror_compared = 200;
        canary.mirror_diffs = 30;
        let v = judge(&g, &canary, &interval(30_000, 0, 1000));
        assert!(
            matches!(
                v,
                Verdict::Fail {
                    gate: "max_mirror_diff_rate",
                    ..
                }
            ),
            "{v:?}"
        );
    }
}
