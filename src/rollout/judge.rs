//! One check of a canary against its baseline (SPEC §6): the gates as Argo Rollouts and Flagger
//! users know them, each backed by an anytime-valid test ([`super::stats`]) so that checking every
//! second costs no power and never makes a false rollback likelier. Pure: the controller feeds it
//! both arms' counts since the step began and the significance the step may spend.
//!
//! - Too few canary requests (`min_requests`) is inconclusive, and says what the step needs.
//! - `max_error_rate` (a ceiling): the canary's 5xx share is above it, by a sequential test of the
//!   share against the limit.
//! - `max_error_rate_increase` (default 0.5 points): the canary's errors are more than its share of
//!   requests explains (conditional binomial mSPRT) *and* its 5xx share is above the baseline's by
//!   more than the tolerated increase (an effect floor, so that a huge sample does not fail a
//!   trivial difference).
//! - `max_p99_ratio` (default 1.5), two tests: the tail (more than 1% of canary requests slower than
//!   ratio × the baseline's p99, so a tail-only regression is caught) and the shift (more than half of
//!   them slower than ratio × the baseline's median).
//! - `max_mirror_diff_rate`: the share of shadow answers that differed is above it.
//!
//! The step's significance is split evenly over the tests its gates configure ([`Gates::tests`], the
//! same at every check of the step; Bonferroni), so the chance that any gate ever fails an identical
//! canary within the step stays below the step's share.

use crate::config::GatesConfig;
use crate::metrics::Stats;
use crate::stats::{self, Evidence};
use serde::{Deserialize, Serialize};

/// The gates of a rollout, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub min_requests: u64,
    /// Fractions 0–1.
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    pub max_mirror_diff_rate: Option<f64>,
    /// 0–1: the chance that an identical canary is ever failed stays below `1 - confidence`.
    pub confidence: f64,
}

pub const DEFAULT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.005;
pub const DEFAULT_MAX_P99_RATIO: f64 = 1.5;
pub const DEFAULT_CONFIDENCE: f64 = 0.99;
/// The tail the p99 test looks at, and the share of requests expected in it.
const TAIL: f64 = 0.01;
/// Baseline requests needed before its p99 (and median) is a reference to judge against.
const MIN_BASELINE_FOR_P99: u64 = 200;
const MIN_BASELINE_FOR_MEDIAN: u64 = 20;

impl Gates {
    /// From the config's `gates` (already validated: a percentage that does not parse is left out).
    pub fn from_config(g: &GatesConfig) -> Gates {
        let fraction = |v: &Option<crate::config::Percent>| v.as_ref().map(|p| p.get() / 100.0);
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

    /// How many tests a check of a live step (or, with `mirror`, of a dark step) runs: the step's
    /// significance is split over them.
    pub fn tests(&self, mirror: bool) -> usize {
        let base = if mirror { 1 } else { 3 };
        base + usize::from(self.max_error_rate.is_some())
            + usize::from(self.max_mirror_diff_rate.is_some())
    }
}

/// A check's (or one test's) outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Verdict")]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

/// What one arm served since the step began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "RolloutArm")]
pub struct Arm {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl Arm {
    fn of(s: &Stats) -> Arm {
        let ms = |d: std::time::Duration| round(d.as_secs_f64() * 1000.0, 3);
        Arm {
            requests: s.requests(),
            errors: s.status[4],
            error_rate: round(s.error_rate(), 6),
            p50_ms: s.quantile(0.5).map(ms),
            p99_ms: s.quantile(0.99).map(ms),
        }
    }
}

/// One test of a check, with every figure it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "RolloutTest")]
pub struct Test {
    /// The gate (config key) this test enforces.
    pub gate: String,
    /// `errors`, `error_ceiling`, `latency_tail`, `latency_shift`, `mirror_diffs`.
    pub test: String,
    pub outcome: Outcome,
    /// The canary's figure and what it is held against (a rate, a share, or the baseline's).
    pub canary: f64,
    pub baseline: f64,
    /// The effect (canary minus reference) and its anytime-valid confidence interval.
    pub effect: f64,
    pub interval: [f64; 2],
    /// The tolerated effect (e.g. +0.5 points, or 1% of requests in the tail).
    pub limit: f64,
    /// The sequential test's Bayes factor (e-value) and the value it must reach to fail.
    pub bayes_factor: f64,
    pub threshold: f64,
    /// The anytime-valid p-value (1 / Bayes factor) and the significance it must fall below.
    pub p: f64,
    pub alpha: f64,
    pub words: String,
}

/// One check: the verdict, both arms, every test, and what an inconclusive step needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "RolloutCheck")]
pub struct Check {
    /// Its number in the rollout (from 1); set by the controller.
    #[serde(default)]
    pub number: u64,
    pub verdict: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    pub canary: Arm,
    pub baseline: Arm,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<Test>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<String>,
    /// The whole check in one line.
    pub summary: String,
}

impl Check {
    /// A check decided without the gates (the step's window begins, a webhook, etcd unreachable).
    pub fn plain(verdict: Outcome, gate: Option<&str>, words: String) -> Check {
        let summary = match gate {
            Some(g) => format!("{g}: {words}"),
            None => words,
        };
        Check {
            number: 0,
            verdict,
            gate: gate.map(str::to_string),
            canary: Arm::default(),
            baseline: Arm::default(),
            tests: Vec::new(),
            needs: None,
            summary,
        }
    }
}

/// Judges `canary` against `baseline` (both counted since the step began) at the step's
/// significance `alpha`. `reach` says in words who reaches the canary in this step, for an
/// inconclusive check's needs ("only requests with X-Version: beta reach the canary").
pub fn judge(gates: &Gates, alpha: f64, canary: &Stats, baseline: &Stats, reach: &str) -> Check {
    let (c, b) = (Arm::of(canary), Arm::of(baseline));
    if c.requests < gates.min_requests {
        return starved(gates, c, b, "canary requests", reach);
    }
    let a = alpha / gates.tests(false) as f64;
    let mut tests = error_tests(gates, &c, &b, a, "canary 5xx");
    if b.requests >= MIN_BASELINE_FOR_P99 {
        tests.extend(latency(gates, canary, baseline, a));
    }
    if canary.mirror_compared > 0 {
        tests.extend(diff_test(gates, canary, a));
    }
    conclude(c, b, tests, alpha, "canary requests")
}

/// Judges a dark (mirror) step: the canary serves nobody, so it is judged on its shadow answers: the
/// share that failed (no answer, a timeout or a 5xx) against the baseline's 5xx share, the ceiling,
/// and the share that differed from the primary's answer.
pub fn judge_mirror(
    gates: &Gates,
    alpha: f64,
    canary: &Stats,
    baseline: &Stats,
    reach: &str,
) -> Check {
    let n = canary.mirror_sent;
    let errors_n = canary.mirror_errors.min(n);
    let c = Arm {
        requests: n,
        errors: errors_n,
        error_rate: if n == 0 {
            0.0
        } else {
            round(errors_n as f64 / n as f64, 6)
        },
        p50_ms: None,
        p99_ms: None,
    };
    let b = Arm::of(baseline);
    if n < gates.min_requests {
        return starved(gates, c, b, "shadow copies", reach);
    }
    let a = alpha / gates.tests(true) as f64;
    let mut tests = error_tests(gates, &c, &b, a, "shadow errors");
    tests.extend(diff_test(gates, canary, a));
    conclude(c, b, tests, alpha, "shadow copies")
}

/// The error gates both kinds of step run: the ceiling (if set) and the increase over the baseline
/// (when the baseline served anything).
fn error_tests(gates: &Gates, c: &Arm, b: &Arm, alpha: f64, label: &str) -> Vec<Test> {
    let mut tests = Vec::new();
    if let Some(max) = gates.max_error_rate {
        tests.push(ceiling(
            "max_error_rate",
            "error_ceiling",
            c.errors,
            c.requests,
            max,
            alpha,
        ));
    }
    if b.requests > 0 {
        tests.push(errors(gates, c, b, alpha, label));
    }
    tests
}

/// `max_mirror_diff_rate` on the shadow answers compared, if set.
fn diff_test(gates: &Gates, canary: &Stats, alpha: f64) -> Option<Test> {
    let max = gates.max_mirror_diff_rate?;
    Some(ceiling(
        "max_mirror_diff_rate",
        "mirror_diffs",
        canary.mirror_diffs,
        canary.mirror_compared,
        max,
        alpha,
    ))
}

fn starved(gates: &Gates, c: Arm, b: Arm, what: &str, reach: &str) -> Check {
    let more = gates.min_requests - c.requests.min(gates.min_requests);
    let needs = format!("{more} more {what}; {reach}");
    let summary = format!(
        "{} {what} of min_requests {}: {needs}",
        c.requests, gates.min_requests
    );
    Check {
        number: 0,
        verdict: Outcome::Inconclusive,
        gate: None,
        canary: c,
        baseline: b,
        tests: Vec::new(),
        needs: Some(needs),
        summary,
    }
}

fn conclude(c: Arm, b: Arm, tests: Vec<Test>, alpha: f64, what: &str) -> Check {
    let failed = tests.iter().find(|t| t.outcome == Outcome::Fail);
    let verdict = if failed.is_some() {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    let summary = match failed {
        Some(t) => format!("{}: {}", t.gate, t.words),
        None => format!(
            "{} {what}, 5xx {} vs baseline {} of {}; p99 {} vs {}; no gate's evidence reached its threshold (step significance {})",
            c.requests,
            pct(c.error_rate),
            pct(b.error_rate),
            b.requests,
            opt_ms(c.p99_ms),
            opt_ms(b.p99_ms),
            short(alpha)
        ),
    };
    Check {
        number: 0,
        verdict,
        gate: failed.map(|t| t.gate.clone()),
        canary: c,
        baseline: b,
        tests,
        needs: None,
        summary,
    }
}

/// `max_error_rate_increase`: the canary's share of errors against its share of requests, and the
/// difference of the rates against the tolerated increase.
fn errors(gates: &Gates, c: &Arm, b: &Arm, alpha: f64, label: &str) -> Test {
    let w = c.requests as f64 / (c.requests + b.requests) as f64;
    let m = c.errors + b.errors;
    let evidence = stats::error_share(c.errors, m, w, alpha).unwrap_or(Evidence {
        bayes_factor: 1.0,
        threshold: 1.0 / alpha,
    });
    let (rc, rb) = (c.error_rate, b.error_rate);
    let effect = rc - rb;
    let (cl, ch) = stats::rate_interval(c.errors, c.requests, alpha / 2.0);
    let (bl, bh) = stats::rate_interval(b.errors, b.requests, alpha / 2.0);
    let interval = [cl - bh, ch - bl];
    let limit = gates.max_error_rate_increase;
    let fail = evidence.rejects() && effect > limit;
    let outcome = if fail { Outcome::Fail } else { Outcome::Pass };
    let words = format!(
        "{label} {} ({}/{}) vs baseline {} ({}/{}): {} points, CS [{}, {}]; {} of {} errors from the canary where its {} share of requests expects {:.1}: {} (tolerated increase {} points)",
        pct(rc),
        c.errors,
        c.requests,
        pct(rb),
        b.errors,
        b.requests,
        signed_points(effect),
        signed_points(interval[0]),
        signed_points(interval[1]),
        c.errors,
        m,
        pct(w),
        w * m as f64,
        evidence_words(&evidence, fail),
        signed_points(limit),
    );
    test(
        "max_error_rate_increase",
        "errors",
        outcome,
        (rc, rb),
        (effect, interval),
        limit,
        &evidence,
        words,
    )
}

/// A share (`k` of `n`) against a ceiling: `max_error_rate`, `max_mirror_diff_rate`.
fn ceiling(gate: &str, name: &str, k: u64, n: u64, max: f64, alpha: f64) -> Test {
    let k = k.min(n);
    let rate = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let (lo, hi) = stats::rate_interval(k, n, alpha);
    let evidence = stats::proportion_above(k, n, max, alpha).unwrap_or(Evidence {
        // A ceiling of 0% or 100%: above 0% is any; nothing is above 100%.
        bayes_factor: if max <= 0.0 && k > 0 {
            f64::INFINITY
        } else {
            1.0
        },
        threshold: 1.0 / alpha,
    });
    let fail = evidence.rejects();
    let what = if name == "mirror_diffs" {
        "shadow answers differing in a significant field"
    } else {
        "5xx"
    };
    let words = format!(
        "{what} {} ({k}/{n}), CS [{}, {}], against {gate} {}: {}",
        pct(rate),
        pct(lo),
        pct(hi),
        pct(max),
        evidence_words(&evidence, fail)
    );
    test(
        gate,
        name,
        if fail { Outcome::Fail } else { Outcome::Pass },
        (rate, max),
        (rate - max, [lo - max, hi - max]),
        0.0,
        &evidence,
        words,
    )
}

/// `max_p99_ratio`: the tail (share of canary requests slower than ratio × the baseline's p99,
/// against 1%) and, when the baseline has enough requests for a median, the shift (share slower than
/// ratio × its median, against 50%).
fn latency(gates: &Gates, canary: &Stats, baseline: &Stats, alpha: f64) -> Vec<Test> {
    let r = gates.max_p99_ratio;
    let n = canary.requests();
    let mut out = Vec::new();
    let references = [
        ("latency_tail", 0.99, TAIL, MIN_BASELINE_FOR_P99),
        ("latency_shift", 0.5, 0.5, MIN_BASELINE_FOR_MEDIAN),
    ];
    for (name, q, expected, min_baseline) in references {
        if baseline.requests() < min_baseline {
            continue;
        }
        let Some(reference) = baseline.quantile(q) else {
            continue;
        };
        let bound_us = (reference.as_secs_f64() * 1e6 * r).ceil() as u64;
        let k = canary.latency.count_above(bound_us).min(n);
        let share = k as f64 / n.max(1) as f64;
        let (lo, hi) = stats::rate_interval(k, n, alpha);
        let evidence = stats::proportion_above(k, n, expected, alpha).unwrap_or(Evidence {
            bayes_factor: 1.0,
            threshold: 1.0 / alpha,
        });
        let fail = evidence.rejects();
        let (label, figure) = if q > 0.9 {
            ("p99", canary.quantile(0.99))
        } else {
            ("median", canary.quantile(0.5))
        };
        let words = format!(
            "canary {label} {} vs baseline {} ({:.2}x); {} ({k}/{n}) of canary requests slower than {r} x the baseline's {label} ({}), CS [{}, {}], where at most {} may be: {}",
            opt_ms(figure.map(|d| d.as_secs_f64() * 1000.0)),
            ms_text(reference.as_secs_f64() * 1000.0),
            figure.map_or(0.0, |d| d.as_secs_f64() / reference.as_secs_f64().max(1e-9)),
            pct(share),
            ms_text(bound_us as f64 / 1000.0),
            pct(lo),
            pct(hi),
            pct(expected),
            evidence_words(&evidence, fail),
        );
        out.push(test(
            "max_p99_ratio",
            name,
            if fail { Outcome::Fail } else { Outcome::Pass },
            (
                figure.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                reference.as_secs_f64() * 1000.0,
            ),
            (share - expected, [lo - expected, hi - expected]),
            expected,
            &evidence,
            words,
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn test(
    gate: &str,
    name: &str,
    outcome: Outcome,
    (canary, baseline): (f64, f64),
    (effect, interval): (f64, [f64; 2]),
    limit: f64,
    e: &Evidence,
    words: String,
) -> Test {
    Test {
        gate: gate.to_string(),
        test: name.to_string(),
        outcome,
        canary: round(canary, 6),
        baseline: round(baseline, 6),
        effect: round(effect, 6),
        interval: [round(interval[0], 6), round(interval[1], 6)],
        limit,
        bayes_factor: sci(e.bayes_factor.min(1e300)),
        threshold: sci(e.threshold),
        p: sci(e.p()),
        alpha: sci(1.0 / e.threshold),
        words,
    }
}

fn evidence_words(e: &Evidence, fail: bool) -> String {
    let verb = if e.rejects() { "≥" } else { "<" };
    let tail = if e.rejects() && !fail {
        ", but within the tolerance"
    } else {
        ""
    };
    format!(
        "Bayes factor {} {verb} {} (anytime p = {} vs α {}){tail}",
        short(e.bayes_factor),
        short(e.threshold),
        short(e.p()),
        short(1.0 / e.threshold)
    )
}

/// Four significant digits, for JSON.
fn sci(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return if x.is_finite() { 0.0 } else { 1e300 };
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    if scale.is_finite() && scale > 0.0 {
        (x * scale).round() / scale
    } else {
        x
    }
}

fn round(x: f64, places: i32) -> f64 {
    let s = 10f64.powi(places);
    (x * s).round() / s
}

fn short(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&x.abs()) {
        format!("{x:.2e}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

fn pct(f: f64) -> String {
    format!("{:.2}%", f * 100.0)
}

fn signed_points(f: f64) -> String {
    format!("{:+.2}", f * 100.0)
}

fn ms_text(ms: f64) -> String {
    format!("{ms:.1} ms")
}

fn opt_ms(ms: Option<f64>) -> String {
    ms.map(ms_text).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
