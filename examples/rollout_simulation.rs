//! The rollout gates' guarantees, measured by simulating traffic through the controller's own
//! decision code: the step's significance ([`checks::step_alpha`]) and the check itself
//! ([`judge::judge`]) on both arms' counts since the step began, checked every `E` requests.
//!
//! Traffic: each request reaches the canary with probability `w`; the baseline fails 1% of requests
//! and answers in a log-normal time (median 10 ms, σ = 0.3, so p99 ≈ 20 ms). Gates: min_requests
//! 100, max_error_rate_increase 0.5 points, max_p99_ratio 1.25, confidence 0.99.
//!
//! - A/A: the canary is identical; a rollout of three weight steps (1%, 10%, 50%), each judged until
//!   200,000 requests have passed. Reported: the share of rollouts ever failed (must be ≤ 1%).
//! - Power: one step at `w`, judged until the canary has served 10,000 requests. Reported: the share
//!   caught and the median canary requests until caught.
//! - A/A with rare errors and very unequal arms: 0.1% errors on both, the canary at 1%, one step judged
//!   until 500,000 requests (where a two-proportion z-test fires too often).
//! - All at several check intervals: detection must not fall as checks get more frequent.
//!
//! Run: `cargo run --release --example rollout_simulation -- [AA_RUNS] [POWER_RUNS]` (defaults 200
//! and 200). No network; it stops by itself.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::config::Config;
use switchyard::metrics::{bucket_of, Stats};
use switchyard::rollout::checks;
use switchyard::rollout::judge::{self, Gates, Outcome};

const BASE_ERRORS: f64 = 0.01;
const MEDIAN_US: f64 = 10_000.0;
const SIGMA: f64 = 0.3;

/// How the canary differs from the baseline (and the baseline's error rate).
#[derive(Clone, Copy)]
struct Canary {
    base_errors: f64,
    extra_errors: f64,
    slower: f64,
    /// Share of canary requests made `tail_us` slower.
    tail_share: f64,
    tail_us: f64,
}

const SAME: Canary = Canary {
    base_errors: BASE_ERRORS,
    extra_errors: 0.0,
    slower: 1.0,
    tail_share: 0.0,
    tail_us: 0.0,
};

fn rollout(steps: &str) -> switchyard::config::RolloutConfig {
    let text = format!(
        "upstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 100, v2: 0}}, baseline: v1}}\n    rollout: {{canary: v2, steps: {steps}, hold: 1m, gates: {{min_requests: 100, max_p99_ratio: 1.25}}}}\n"
    );
    let config = Config::load_str(&text).unwrap_or_else(|e| panic!("{e}"));
    config.routes[0]
        .rollout
        .clone()
        .unwrap_or_else(|| panic!("no rollout"))
}

fn record(s: &mut Stats, rng: &mut SmallRng, error_rate: f64, c: &Canary) {
    let error = rng.gen::<f64>() < error_rate;
    s.status[if error { 4 } else { 1 }] += 1;
    // Box–Muller: one standard normal.
    let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let mut us = MEDIAN_US * (SIGMA * z).exp() * c.slower;
    if c.tail_share > 0.0 && rng.gen::<f64>() < c.tail_share {
        us += c.tail_us;
    }
    let us = us as u64;
    s.latency.buckets[bucket_of(us)] += 1;
    s.latency.sum_us += us;
}

/// One step at weight `w`: the canary requests served when a check failed it, or `None`.
fn step(
    rng: &mut SmallRng,
    gates: &Gates,
    alpha: f64,
    w: f64,
    c: &Canary,
    every: u64,
    stop: impl Fn(u64, u64) -> bool,
) -> Option<u64> {
    let (mut canary, mut baseline) = (Stats::default(), Stats::default());
    let mut total = 0u64;
    loop {
        total += 1;
        if rng.gen::<f64>() < w {
            record(&mut canary, rng, c.base_errors + c.extra_errors, c);
        } else {
            record(&mut baseline, rng, c.base_errors, &SAME);
        }
        if total % every == 0 {
            let check = judge::judge(gates, alpha, &canary, &baseline, "");
            if check.verdict == Outcome::Fail {
                return Some(canary.requests());
            }
        }
        if stop(total, canary.requests()) {
            return None;
        }
    }
}

/// One line of an A/A: how many identical canaries were failed, against the bound.
fn false_alarms(every: u64, failed: usize, runs: u64, gates: &Gates) {
    println!(
        "  checked every {every:>5} requests: {failed} of {runs} rollouts failed ({:.1}%, bound {:.1}%)",
        100.0 * failed as f64 / runs as f64,
        100.0 * (1.0 - gates.confidence)
    );
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let aa_runs = args.first().copied().unwrap_or(200);
    let power_runs = args.get(1).copied().unwrap_or(200);
    let intervals = [1_000u64, 100, 10];

    let plan = rollout("[1, 10, 50]");
    let gates = Gates::from_config(&plan.gates);
    let alpha = checks::step_alpha(&plan);
    println!("A/A: an identical canary through 1% -> 10% -> 50%, 200,000 requests a step, {aa_runs} rollouts; step significance {alpha:.5}");
    for every in intervals {
        let mut rng = SmallRng::seed_from_u64(every);
        let failed = (0..aa_runs)
            .filter(|_| {
                [0.01, 0.10, 0.50].iter().any(|w| {
                    step(&mut rng, &gates, alpha, *w, &SAME, every, |t, _| {
                        t >= 200_000
                    })
                    .is_some()
                })
            })
            .count();
        false_alarms(every, failed, aa_runs, &gates);
    }

    let rare = Canary {
        base_errors: 0.001,
        ..SAME
    };
    let one = rollout("[1]");
    let alpha = checks::step_alpha(&one);
    println!("\nA/A with rare errors and very unequal arms: both arms 0.1% errors, the canary at 1%, one step judged until 500,000 requests, {aa_runs} runs; step significance {alpha:.4}");
    for every in intervals {
        let mut rng = SmallRng::seed_from_u64(every + 99);
        let failed = (0..aa_runs)
            .filter(|_| {
                step(&mut rng, &gates, alpha, 0.01, &rare, every, |t, _| {
                    t >= 500_000
                })
                .is_some()
            })
            .count();
        false_alarms(every, failed, aa_runs, &gates);
    }

    let one = rollout("[10]");
    let alpha = checks::step_alpha(&one);
    let scenarios = [
        (
            "errors +1 point",
            0.10,
            Canary {
                extra_errors: 0.01,
                ..SAME
            },
        ),
        (
            "errors +2 points",
            0.10,
            Canary {
                extra_errors: 0.02,
                ..SAME
            },
        ),
        (
            "errors +5 points",
            0.10,
            Canary {
                extra_errors: 0.05,
                ..SAME
            },
        ),
        (
            "errors +2 points at 1%",
            0.01,
            Canary {
                extra_errors: 0.02,
                ..SAME
            },
        ),
        (
            "latency 1.2x",
            0.10,
            Canary {
                slower: 1.2,
                ..SAME
            },
        ),
        (
            "latency 1.5x",
            0.10,
            Canary {
                slower: 1.5,
                ..SAME
            },
        ),
        (
            "latency 2x",
            0.10,
            Canary {
                slower: 2.0,
                ..SAME
            },
        ),
        (
            "tail: 3% of canary +500 ms",
            0.10,
            Canary {
                tail_share: 0.03,
                tail_us: 500_000.0,
                ..SAME
            },
        ),
    ];
    println!("\nPower: one step, judged until the canary has served 10,000 requests, {power_runs} runs each; step significance {alpha:.4}");
    for (name, w, canary) in scenarios {
        for every in intervals {
            let mut rng = SmallRng::seed_from_u64(every * 7 + (w * 1000.0) as u64);
            let caught: Vec<u64> = (0..power_runs)
                .filter_map(|_| {
                    step(&mut rng, &gates, alpha, w, &canary, every, |_, n| {
                        n >= 10_000
                    })
                })
                .collect();
            println!(
                "  {name:<28} at {:>4.0}%, checked every {every:>5} requests: caught {:>3} of {power_runs} ({:>5.1}%), median {} canary requests",
                w * 100.0,
                caught.len(),
                100.0 * caught.len() as f64 / power_runs as f64,
                median(caught.clone())
            );
        }
    }
}
