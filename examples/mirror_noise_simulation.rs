//! The dark step's guarantees when the answers are noisy, measured by running pairs through the
//! proxy's own code: the field ledger that learns the noise and judges each pair
//! ([`Fields`], Diffy's rule) and the rollout's mirror check ([`judge::judge_mirror`]) on the counts it
//! produces, checked every `E` pairs.
//!
//! The answers: `/ts` differs between any two answers (v1 and v1, or v1 and v2) every time, and
//! `/items` (an unordered list) in 30% of them; both are noise. A v2 with a real change also differs
//! at `/price` in a share `d` of its answers, never between two v1 answers. `noise_percent` of the
//! pairs also bring a noise pair (v1 against v1). The step's gate: `max_mirror_diff_rate: 1%`, at the
//! step significance of a one-step plan at confidence 0.99, `min_requests: 100`.
//!
//! - A/A: v2 differs only by the noise; 20,000 pairs a run. Reported: the share of runs ever failed
//!   (the gate's bound is 1%), at several `noise_percent` and check intervals.
//! - Power: the real change at `d` = 2%, 5%, 20% and 100% (a renamed field). Reported: the share
//!   caught within 20,000 pairs and the median pairs until caught.
//!
//! How fast a change is told from noise depends on the noise pairs: a field that never differed in
//! `q` noise pairs may still be noise at a rate up to about 14/`q` (the confidence sequence's bound at
//! `FIELD_ALPHA`), so a change at rate `d` needs `q` well above 20/`d`.
//!
//! Run: `cargo run --release --example mirror_noise_simulation -- [RUNS]` (default 200). No
//! network; it stops by itself.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::config::Config;
use switchyard::metrics::fields::{FieldDiff, Fields, Kind, Rule};
use switchyard::metrics::Stats;
use switchyard::rollout::checks;
use switchyard::rollout::judge::{self, Gates, Outcome};

const PAIRS: u64 = 20_000;
/// Noisy fields and how often two answers differ there.
const NOISE: [(&str, f64); 2] = [("/ts", 1.0), ("/items", 0.3)];

fn diff(path: &str) -> FieldDiff {
    FieldDiff {
        path: path.to_string(),
        kind: Kind::Value,
        primary: None,
        shadow: None,
        primary_type: Some("string"),
        shadow_type: Some("string"),
    }
}

/// The differences of one pair: the noise, and the real change with probability `d`.
fn pair(rng: &mut SmallRng, d: f64) -> Vec<FieldDiff> {
    let mut out: Vec<FieldDiff> = NOISE
        .iter()
        .filter(|(_, p)| rng.gen::<f64>() < *p)
        .map(|(path, _)| diff(path))
        .collect();
    if d > 0.0 && rng.gen::<f64>() < d {
        out.push(diff("/price"));
    }
    out
}

/// One run: the pairs compared when a check failed the step, or `None`.
fn run(
    rng: &mut SmallRng,
    gates: &Gates,
    alpha: f64,
    noise: f64,
    d: f64,
    every: u64,
) -> Option<u64> {
    let fields = Fields::default();
    let rule = Rule {
        learns: true,
        relative: 0.2,
        absolute: 0.0003,
    };
    // Pairs judged, and those counted against v2.
    let mut tally = (0u64, 0u64);
    let count = |tally: &mut (u64, u64), js: Vec<switchyard::metrics::fields::Judged>| {
        for j in js {
            tally.0 += 1;
            tally.1 += u64::from(j.significant);
        }
    };
    let mut baseline = Stats::default();
    for n in 1..=PAIRS {
        baseline.status[1] += 1;
        if rng.gen::<f64>() < noise {
            let diffs = pair(rng, 0.0);
            count(&mut tally, fields.noise_pair("api", "v2", &diffs, &rule));
        }
        let diffs = pair(rng, d);
        count(&mut tally, fields.shadow_pair("api", "v2", &diffs, &rule));
        if n % every == 0 {
            let shadow = Stats {
                mirror_sent: n,
                mirror_compared: tally.0,
                mirror_diffs: tally.1,
                ..Stats::default()
            };
            let check = judge::judge_mirror(gates, alpha, &shadow, &baseline, "");
            if check.verdict == Outcome::Fail {
                return Some(n);
            }
        }
    }
    None
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let text = "upstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\n  v2: {backends: [\"127.0.0.1:2\"]}\nroutes:\n  - name: api\n    split: {targets: {v1: 100, v2: 0}, baseline: v1}\n    rollout: {canary: v2, steps: [{mirror: 100}], hold: 1m, gates: {min_requests: 100, max_mirror_diff_rate: 1%, confidence: 0.99}}\n";
    let config = Config::load_str(text).unwrap_or_else(|e| panic!("{e}"));
    let plan = config.routes[0]
        .rollout
        .clone()
        .unwrap_or_else(|| panic!("no rollout"));
    let gates = Gates::from_config(&plan.gates);
    let alpha = checks::step_alpha(&plan);
    println!(
        "{runs} runs of {PAIRS} pairs (mirrored safe requests); noise: /ts in every pair, /items in 30%; gate max_mirror_diff_rate 1% at significance {alpha}"
    );
    for noise_percent in [5.0, 20.0, 50.0] {
        let noise = noise_percent / 100.0;
        println!("noise_percent {noise_percent}:");
        for every in [1000u64, 100] {
            let mut rng = SmallRng::seed_from_u64(every + noise_percent as u64);
            let failed = (0..runs)
                .filter(|_| run(&mut rng, &gates, alpha, noise, 0.0, every).is_some())
                .count();
            println!(
                "  A/A, checked every {every:>4} pairs: {failed} of {runs} runs failed ({:.1}%, bound 1.0%)",
                100.0 * failed as f64 / runs as f64
            );
            for d in [0.02, 0.05, 0.2, 1.0] {
                let caught: Vec<u64> = (0..runs)
                    .filter_map(|_| run(&mut rng, &gates, alpha, noise, d, every))
                    .collect();
                println!(
                    "  /price differs in {:>3.0}% of v2's answers, checked every {every:>4}: caught in {} of {runs} ({:.1}%), median {} pairs",
                    d * 100.0,
                    caught.len(),
                    100.0 * caught.len() as f64 / runs as f64,
                    median(caught.clone())
                );
            }
        }
    }
}
