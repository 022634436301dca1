//! Latency histograms with fixed bucket edges, shared by the Prometheus exposition and the live
//! percentile windows, so one atomic increment per request feeds both.
//!
//! The edges follow the Renard R20 series of preferred numbers, with 1.5 added (1, 1.12, 1.25, 1.4,
//! 1.5, 1.6, 1.8, 2, 2.24, 2.5, …, 8, 9 per decade) from 100 µs to 10 s: 106 edges, each at most 12.7%
//! above the one before. They include every decade's 1, 2.5 and 5, so the Prometheus buckets
//! (100 µs … 10 s) are exact sums of these, never approximations.
//!
//! Percentiles are estimated by linear interpolation inside the bucket holding the wanted rank. The
//! true value lies in the same bucket, so the error is at most the bucket's width: **at most 13% of
//! the value** between 100 µs and 10 s, at most 100 µs below that. Above 10 s the estimate is 10 s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Mantissas of one decade, scaled to start at 100.
const MANTISSAS: [u64; 21] = [
    100, 112, 125, 140, 150, 160, 180, 200, 224, 250, 280, 315, 355, 400, 450, 500, 560, 630, 710,
    800, 900,
];

/// Number of finite edges: 100 µs … 10 s.
pub const EDGES: usize = 5 * MANTISSAS.len() + 1;
/// Buckets: one per finite edge (values up to and including it) plus one above the last.
pub const BUCKETS: usize = EDGES + 1;

/// Upper edges of the buckets, in microseconds.
pub static EDGES_US: [u64; EDGES] = edges();

const fn edges() -> [u64; EDGES] {
    let mut out = [0u64; EDGES];
    let mut decade = 1u64;
    let mut i = 0;
    while i < EDGES - 1 {
        out[i] = MANTISSAS[i % MANTISSAS.len()] * decade;
        if i % MANTISSAS.len() == MANTISSAS.len() - 1 {
            decade *= 10;
        }
        i += 1;
    }
    out[EDGES - 1] = 10_000_000;
    out
}

/// Edges, in seconds, of the buckets exposed to Prometheus (`le` labels); each is one of [`EDGES_US`].
pub const PROMETHEUS_LE_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The bucket a value in microseconds falls in: the first edge not below it.
#[inline]
pub fn bucket_of(us: u64) -> usize {
    EDGES_US.partition_point(|&edge| edge < us)
}

/// Lower and upper bound of bucket `b`, in microseconds (the overflow bucket is `[10 s, 10 s]`).
fn bounds(b: usize) -> (u64, u64) {
    let lo = if b == 0 { 0 } else { EDGES_US[b - 1] };
    let hi = EDGES_US.get(b).copied().unwrap_or(lo);
    (lo, hi)
}

/// A histogram of latencies, updated with relaxed atomics: safe and lock-free from any thread.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    #[inline]
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn read(&self) -> Latencies {
        Latencies {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A plain copy of a histogram: counts per bucket and the sum of all values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latencies {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: [0; BUCKETS],
            sum_us: 0,
        }
    }
}

impl Latencies {
    /// Number of values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Values up to and including `le_us` (which must be one of the edges to be exact).
    pub fn count_le(&self, le_us: u64) -> u64 {
        self.buckets[..=bucket_of(le_us).min(BUCKETS - 1)]
            .iter()
            .sum()
    }

    /// Values surely above `us`: those in buckets whose lower edge is at or above it (a bucket that
    /// straddles `us` is not counted).
    pub fn count_above(&self, us: u64) -> u64 {
        let first = EDGES_US.partition_point(|&edge| edge < us) + 1;
        self.buckets.get(first..).map_or(0, |b| b.iter().sum())
    }

    /// The `q` quantile (0 < q ≤ 1) by nearest rank, interpolated inside its bucket; `None` when empty.
    /// Error bound: see the module documentation.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut below = 0u64;
        for (b, &count) in self.buckets.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if below + count >= rank {
                let (lo, hi) = bounds(b);
                let within = (rank - below) as f64 / count as f64;
                let us = lo as f64 + (hi - lo) as f64 * within;
                return Some(Duration::from_nanos((us * 1000.0).round() as u64));
            }
            below += count;
        }
        None
    }

    pub fn add(&mut self, other: &Latencies) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// What was recorded after `earlier` (a previous read of the same histogram).
    pub fn since(&self, earlier: &Latencies) -> Latencies {
        Latencies {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn count_above_counts_only_buckets_wholly_above() {
        let mut l = super::Latencies::default();
        for us in [50, 900, 1_000, 1_001, 1_200, 5_000] {
            l.buckets[super::bucket_of(us)] += 1;
        }
        // 1,001 and 1,200 lie in buckets above the 1,000 edge; 5,000 too.
        assert_eq!(l.count_above(1_000), 3);
        // 1,050 is inside the bucket (1,000, 1,120]: that bucket is not counted.
        assert_eq!(l.count_above(1_050), 2);
        assert_eq!(l.count_above(0), 5);
        assert_eq!(l.count_above(20_000_000), 0);
    }

    use super::*;

    #[test]
    fn edges_rise_by_at_most_12_7_percent_and_hold_the_prometheus_buckets() {
        assert_eq!(EDGES_US[0], 100);
        assert_eq!(EDGES_US[21], 1_000);
        assert_eq!(EDGES_US[EDGES - 1], 10_000_000);
        for w in EDGES_US.windows(2) {
            assert!(w[1] > w[0]);
            assert!(w[1] * 1000 <= w[0] * 1127, "{} -> {}", w[0], w[1]);
        }
        for le in PROMETHEUS_LE_US {
            assert!(EDGES_US.contains(&le), "{le}");
        }
    }

    #[test]
    fn values_land_in_the_first_bucket_not_below_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100), 0);
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(112), 1);
        assert_eq!(bucket_of(10_000_000), EDGES - 1);
        assert_eq!(bucket_of(10_000_001), EDGES);
        assert_eq!(bucket_of(u64::MAX), EDGES);
    }

    #[test]
    fn quantiles_stay_within_the_documented_bound() {
        // Every value from 50 µs to 12 s on a geometric grid, alone and in a crowd.
        let mut v = 50u64;
        while v < 12_000_000 {
            let h = AtomicHistogram::default();
            for _ in 0..10 {
                h.record(v);
            }
            let est = h.read().quantile(0.99).unwrap().as_secs_f64() * 1e6;
            let truth = v as f64;
            if v <= 100 {
                assert!(est <= 100.0, "{v}: {est}");
            } else if v <= 10_000_000 {
                assert!((est - truth).abs() <= truth * 0.127, "{v}: {est}");
            } else {
                assert_eq!(est, 10_000_000.0);
            }
            v = v * 21 / 20 + 1;
        }
    }

    #[test]
    fn percentiles_of_a_mix_pick_the_right_population() {
        let h = AtomicHistogram::default();
        for _ in 0..98 {
            h.record(2_000); // 2 ms
        }
        for _ in 0..2 {
            h.record(200_000); // 200 ms
        }
        let l = h.read();
        assert_eq!(l.count(), 100);
        assert_eq!(l.sum_us, 98 * 2_000 + 2 * 200_000);
        let p50 = l.quantile(0.5).unwrap().as_secs_f64();
        let p99 = l.quantile(0.99).unwrap().as_secs_f64();
        assert!((0.00175..=0.002).contains(&p50), "{p50}");
        assert!((0.18..=0.2).contains(&p99), "{p99}");
        assert_eq!(l.count_le(100_000), 98);
        assert_eq!(l.count_le(250_000), 100);
        assert!(Latencies::default().quantile(0.5).is_none());
    }

    #[test]
    fn since_subtracts_an_earlier_read() {
        let h = AtomicHistogram::default();
        h.record(1_000);
        let before = h.read();
        h.record(5_000);
        h.record(5_000);
        let d = h.read().since(&before);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum_us, 10_000);
    }
}
