//! One route × target series: everything counted for the requests a target served on a route, since
//! start and over a sliding window of the last 60 seconds.
//!
//! Recording is lock-free: relaxed atomic adds on counters the series owns. The window is a ring of 60
//! one-second slots; a slot is cleared by the first request of a new second that lands on it (other
//! requests of that instant wait the few hundred nanoseconds the clearing takes, or skip the window
//! after a bounded spin; the since-start counters are never skipped).

use super::histogram::{bucket_of, AtomicHistogram, Latencies, BUCKETS};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

/// Seconds in the sliding window.
pub const WINDOW_SECONDS: u64 = 60;
const SLOTS: usize = WINDOW_SECONDS as usize;
const CLEARING: u64 = u64::MAX;

/// Why an upstream exchange failed: the `kind` label of `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection was refused or could not be made.
    ConnectFailure,
    /// The connection was not made within `connect_timeout`.
    ConnectTimeout,
    /// The upstream did not answer (or accept the request) within `read_timeout` / `write_timeout`.
    Timeout,
    /// The upstream closed or reset the connection mid-exchange.
    Closed,
    /// The upstream's response was not valid HTTP.
    InvalidResponse,
    /// TLS to the upstream failed.
    Tls,
    /// No healthy backend was left in the pool (nor in the baseline's).
    NoHealthyUpstream,
    Other,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 8] = [
        UpstreamError::ConnectFailure,
        UpstreamError::ConnectTimeout,
        UpstreamError::Timeout,
        UpstreamError::Closed,
        UpstreamError::InvalidResponse,
        UpstreamError::Tls,
        UpstreamError::NoHealthyUpstream,
        UpstreamError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::ConnectFailure => "connect_failure",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Closed => "closed",
            UpstreamError::InvalidResponse => "invalid_response",
            UpstreamError::Tls => "tls",
            UpstreamError::NoHealthyUpstream => "no_healthy_upstream",
            UpstreamError::Other => "other",
        }
    }
}

/// What became of a shadow copy: the `outcome` label of `switchyard_mirror_total`. `Sent` counts every
/// copy started; the others count copies dropped before starting or failed after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    Sent,
    /// Not started: `max_in_flight` copies were already running (or the copy was abandoned because the
    /// primary's body had to be replayed, or never arrived whole).
    Dropped,
    /// Not started, or abandoned: the request body is larger than `max_body_bytes`.
    SkippedBody,
    /// The shadow target could not be reached or did not answer with HTTP.
    Error,
    /// The shadow did not answer within `timeout`.
    Timeout,
}

impl MirrorOutcome {
    pub const ALL: [MirrorOutcome; 5] = [
        MirrorOutcome::Sent,
        MirrorOutcome::Dropped,
        MirrorOutcome::SkippedBody,
        MirrorOutcome::Error,
        MirrorOutcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MirrorOutcome::Sent => "sent",
            MirrorOutcome::Dropped => "dropped",
            MirrorOutcome::SkippedBody => "skipped_body",
            MirrorOutcome::Error => "error",
            MirrorOutcome::Timeout => "timeout",
        }
    }
}

/// How a shadow's answer compared with the primary's: the `result` label of
/// `switchyard_mirror_compare_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    Match,
    Status,
    Headers,
    Body,
}

impl CompareResult {
    pub const ALL: [CompareResult; 4] = [
        CompareResult::Match,
        CompareResult::Status,
        CompareResult::Headers,
        CompareResult::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CompareResult::Match => "match",
            CompareResult::Status => "status",
            CompareResult::Headers => "headers",
            CompareResult::Body => "body",
        }
    }
}

/// Index 0..5 of a status code's class: 1xx … 5xx. A response never sent (the client went away) is
/// counted as 4xx, like nginx's 499.
#[inline]
pub fn class_of(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        500..=599 => 4,
        _ => 3,
    }
}

pub const CLASS_NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counts over some period: a plain value, for reading and comparing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Responses by status class, 1xx … 5xx.
    pub status: [u64; 5],
    /// Failed upstream attempts (a refused connect that was retried elsewhere counts too).
    pub upstream_errors: u64,
    /// Requests decided for this target that another target served because its pool was down.
    pub fallbacks: u64,
    /// Time from the request's arrival to the end of its response.
    pub latency: Latencies,
    /// Shadow copies of this route's traffic started towards this target.
    pub mirror_sent: u64,
    /// Shadow answers compared with their primary's and judged, and how many differed in a
    /// significant field.
    pub mirror_compared: u64,
    pub mirror_diffs: u64,
    /// Shadow copies that failed: no answer, no answer within the timeout, or a 5xx answer.
    pub mirror_errors: u64,
}

impl Stats {
    pub fn requests(&self) -> u64 {
        self.status.iter().sum()
    }

    /// Share of responses that were 5xx, 0–1 (0 with no requests).
    pub fn error_rate(&self) -> f64 {
        let n = self.requests();
        if n == 0 {
            0.0
        } else {
            self.status[4] as f64 / n as f64
        }
    }

    /// Share of compared shadow answers that differed from the primary's, 0–1 (0 with none).
    pub fn mirror_diff_rate(&self) -> f64 {
        if self.mirror_compared == 0 {
            0.0
        } else {
            self.mirror_diffs as f64 / self.mirror_compared as f64
        }
    }

    /// Latency quantile (e.g. 0.99), `None` with no requests. At most 13% off (see `histogram`).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.latency.quantile(q)
    }

    /// What happened after `earlier`, a previous reading of the same series' totals: a window of any
    /// length, for a caller that keeps readings.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            status: std::array::from_fn(|i| self.status[i].saturating_sub(earlier.status[i])),
            upstream_errors: self.upstream_errors.saturating_sub(earlier.upstream_errors),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            latency: self.latency.since(&earlier.latency),
            mirror_sent: self.mirror_sent.saturating_sub(earlier.mirror_sent),
            mirror_compared: self.mirror_compared.saturating_sub(earlier.mirror_compared),
            mirror_diffs: self.mirror_diffs.saturating_sub(earlier.mirror_diffs),
            mirror_errors: self.mirror_errors.saturating_sub(earlier.mirror_errors),
        }
    }

    /// Adds another reading's counts (e.g. another instance's): the sum of both.
    pub fn add(&mut self, other: &Stats) {
        for (a, b) in self.status.iter_mut().zip(other.status.iter()) {
            *a += b;
        }
        self.upstream_errors += other.upstream_errors;
        self.fallbacks += other.fallbacks;
        for (a, b) in self
            .latency
            .buckets
            .iter_mut()
            .zip(other.latency.buckets.iter())
        {
            *a += b;
        }
        self.latency.sum_us += other.latency.sum_us;
        self.mirror_sent += other.mirror_sent;
        self.mirror_compared += other.mirror_compared;
        self.mirror_diffs += other.mirror_diffs;
        self.mirror_errors += other.mirror_errors;
    }

    fn add_slot(&mut self, slot: &Slot) {
        for (a, c) in self.status.iter_mut().zip(slot.status.iter()) {
            *a += u64::from(c.load(Relaxed));
        }
        self.upstream_errors += u64::from(slot.upstream_errors.load(Relaxed));
        self.fallbacks += u64::from(slot.fallbacks.load(Relaxed));
        for (a, c) in self.latency.buckets.iter_mut().zip(slot.latency.iter()) {
            *a += u64::from(c.load(Relaxed));
        }
        self.latency.sum_us += slot.latency_sum_us.load(Relaxed);
        self.mirror_sent += u64::from(slot.mirror_sent.load(Relaxed));
        self.mirror_compared += u64::from(slot.mirror_compared.load(Relaxed));
        self.mirror_diffs += u64::from(slot.mirror_diffs.load(Relaxed));
        self.mirror_errors += u64::from(slot.mirror_errors.load(Relaxed));
    }
}

/// One second of the window. 32-bit counts: a second never holds 4 billion requests.
#[derive(Debug)]
struct Slot {
    /// The second this slot holds (seconds since the series' clock started, from 1), or CLEARING.
    second: AtomicU64,
    status: [AtomicU32; 5],
    upstream_errors: AtomicU32,
    fallbacks: AtomicU32,
    latency: [AtomicU32; BUCKETS],
    latency_sum_us: AtomicU64,
    mirror_sent: AtomicU32,
    mirror_compared: AtomicU32,
    mirror_diffs: AtomicU32,
    mirror_errors: AtomicU32,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            second: AtomicU64::new(0),
            status: std::array::from_fn(|_| AtomicU32::new(0)),
            upstream_errors: AtomicU32::new(0),
            fallbacks: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            latency_sum_us: AtomicU64::new(0),
            mirror_sent: AtomicU32::new(0),
            mirror_compared: AtomicU32::new(0),
            mirror_diffs: AtomicU32::new(0),
            mirror_errors: AtomicU32::new(0),
        }
    }
}

impl Slot {
    fn clear(&self) {
        for c in &self.status {
            c.store(0, Relaxed);
        }
        self.upstream_errors.store(0, Relaxed);
        self.fallbacks.store(0, Relaxed);
        for c in &self.latency {
            c.store(0, Relaxed);
        }
        self.latency_sum_us.store(0, Relaxed);
        self.mirror_sent.store(0, Relaxed);
        self.mirror_compared.store(0, Relaxed);
        self.mirror_diffs.store(0, Relaxed);
        self.mirror_errors.store(0, Relaxed);
    }
}

/// Since-start counters beyond [`Stats`]: the upstream-side detail exposed to Prometheus.
#[derive(Debug, Default)]
struct Totals {
    status: [AtomicU64; 5],
    upstream_errors: [AtomicU64; UpstreamError::ALL.len()],
    fallbacks: AtomicU64,
    latency: AtomicHistogram,
    /// Upstream time to first byte: from the connection being ready to the response header.
    ttfb: AtomicHistogram,
    /// Upstream connections used: [new, reused].
    connections: [AtomicU64; 2],
    mirror: [AtomicU64; MirrorOutcome::ALL.len()],
    compare: [AtomicU64; CompareResult::ALL.len()],
    /// Compared pairs judged, and those with a significant difference (`metrics::fields`).
    judged: AtomicU64,
    significant: AtomicU64,
    /// Shadow answers with a 5xx status.
    mirror_5xx: AtomicU64,
    /// gRPC calls by `grpc-status` (0–16) and the status class they were counted in.
    grpc: [[AtomicU64; 5]; GRPC_CODES],
    /// Requests (not gRPC calls) by exact status.
    codes: CodeCounts,
    /// Body bytes received from clients and sent to them.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Distinct statuses counted exactly per series; a series that sees more (rare: APIs answer a
/// handful) counts the others by class only.
const CODE_SLOTS: usize = 16;

/// Counts by exact status, lock-free: a slot is claimed for a status by the first request with it.
#[derive(Debug, Default)]
struct CodeCounts {
    codes: [std::sync::atomic::AtomicU16; CODE_SLOTS],
    counts: [AtomicU64; CODE_SLOTS],
}

impl CodeCounts {
    #[inline]
    fn add(&self, status: u16) {
        if status == 0 {
            return;
        }
        for (code, count) in self.codes.iter().zip(&self.counts) {
            let seen = code.load(Acquire);
            if seen == status {
                count.fetch_add(1, Relaxed);
                return;
            }
            if seen == 0 {
                match code.compare_exchange(0, status, AcqRel, Acquire) {
                    Ok(_) => {
                        count.fetch_add(1, Relaxed);
                        return;
                    }
                    Err(now) if now == status => {
                        count.fetch_add(1, Relaxed);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn read(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .codes
            .iter()
            .zip(&self.counts)
            .map(|(c, n)| (c.load(Acquire), n.load(Relaxed)))
            .filter(|(c, _)| *c != 0)
            .collect();
        out.sort_unstable();
        out
    }
}

/// gRPC status codes, 0 (OK) to 16 (UNAUTHENTICATED).
pub const GRPC_CODES: usize = 17;

/// Whether a gRPC call that ended with `code` counts as an error (SPEC §9): UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL, UNAVAILABLE and DATA_LOSS, the codes of a server that failed.
pub fn grpc_is_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// A route × target series.
#[derive(Debug)]
pub struct Series {
    /// Shadow copies towards this target now running (bounded by the route's `max_in_flight`).
    pub mirror_in_flight: AtomicU64,
    totals: Totals,
    ring: Box<[Slot; SLOTS]>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            mirror_in_flight: AtomicU64::new(0),
            totals: Totals::default(),
            ring: Box::new(std::array::from_fn(|_| Slot::default())),
        }
    }
}

/// The upstream-side detail of a series, since start.
#[derive(Debug, Clone, Default)]
pub struct UpstreamDetail {
    pub errors: [u64; UpstreamError::ALL.len()],
    pub ttfb: Latencies,
    pub connections_new: u64,
    pub connections_reused: u64,
    /// Shadow copies by outcome ([`MirrorOutcome::ALL`] order).
    pub mirror: [u64; MirrorOutcome::ALL.len()],
    /// Comparisons by result ([`CompareResult::ALL`] order).
    pub compare: [u64; CompareResult::ALL.len()],
}

impl Series {
    /// One finished request: its status and its whole duration. `now` is the current second of the
    /// metrics clock.
    #[inline]
    /// A gRPC call that ended with `grpc_status`, recorded as [`Series::record_request`] does with
    /// the status it counts as: a 5xx when the code is a server error, else its HTTP status.
    pub fn record_grpc(&self, now: u64, status: u16, grpc_status: u8, duration_us: u64) {
        let counted = if grpc_is_error(grpc_status) {
            500
        } else {
            status
        };
        if let Some(c) = self.totals.grpc.get(usize::from(grpc_status)) {
            c[class_of(counted)].fetch_add(1, Relaxed);
        }
        self.record_class(now, counted, duration_us);
    }

    /// Body bytes of one exchange: received from the client, and sent to it.
    #[inline]
    pub fn record_bytes(&self, received: u64, sent: u64) {
        if received > 0 {
            self.totals.bytes_in.fetch_add(received, Relaxed);
        }
        if sent > 0 {
            self.totals.bytes_out.fetch_add(sent, Relaxed);
        }
    }

    /// Body bytes since start: (received from clients, sent to them).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.totals.bytes_in.load(Relaxed),
            self.totals.bytes_out.load(Relaxed),
        )
    }

    /// Requests (not gRPC calls) since start by exact status, in status order. Statuses beyond the
    /// first [`CODE_SLOTS`] distinct ones are in [`Series::totals`]' classes only.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        self.totals.codes.read()
    }

    /// gRPC calls since start: `[code][class]`.
    pub fn grpc_totals(&self) -> [[u64; 5]; GRPC_CODES] {
        std::array::from_fn(|c| std::array::from_fn(|i| self.totals.grpc[c][i].load(Relaxed)))
    }

    pub fn record_request(&self, now: u64, status: u16, duration_us: u64) {
        self.totals.codes.add(status);
        self.record_class(now, status, duration_us);
    }

    fn record_class(&self, now: u64, status: u16, duration_us: u64) {
        let class = class_of(status);
        self.totals.status[class].fetch_add(1, Relaxed);
        self.totals.latency.record(duration_us);
        if let Some(slot) = self.slot(now) {
            slot.status[class].fetch_add(1, Relaxed);
            slot.latency[bucket_of(duration_us)].fetch_add(1, Relaxed);
            slot.latency_sum_us.fetch_add(duration_us, Relaxed);
        }
    }

    pub fn record_upstream_error(&self, now: u64, kind: UpstreamError) {
        self.totals.upstream_errors[kind as usize].fetch_add(1, Relaxed);
        if let Some(slot) = self.slot(now) {
            slot.upstream_errors.fetch_add(1, Relaxed);
        }
    }

    pub fn record_fallback(&self, now: u64) {
        self.totals.fallbacks.fetch_add(1, Relaxed);
        if let Some(slot) = self.slot(now) {
            slot.fallbacks.fetch_add(1, Relaxed);
        }
    }

    /// A shadow copy's outcome (on the series of the route × mirror target).
    pub fn record_mirror(&self, now: u64, outcome: MirrorOutcome) {
        self.totals.mirror[outcome as usize].fetch_add(1, Relaxed);
        if matches!(outcome, MirrorOutcome::Dropped | MirrorOutcome::SkippedBody) {
            return;
        }
        if let Some(slot) = self.slot(now) {
            let counter = match outcome {
                MirrorOutcome::Sent => &slot.mirror_sent,
                _ => &slot.mirror_errors,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    /// A shadow answered with a 5xx status (counted with the shadow errors the rollout judges).
    pub fn record_shadow_5xx(&self, now: u64) {
        self.totals.mirror_5xx.fetch_add(1, Relaxed);
        if let Some(slot) = self.slot(now) {
            slot.mirror_errors.fetch_add(1, Relaxed);
        }
    }

    /// How a shadow's answer compared with its primary's (`switchyard_mirror_compare_total`).
    pub fn record_compare(&self, result: CompareResult) {
        self.totals.compare[result as usize].fetch_add(1, Relaxed);
    }

    /// A compared pair judged: whether it differed in a significant field (what
    /// `max_mirror_diff_rate` counts). Pairs are judged once the noise is learned (`metrics::fields`).
    pub fn record_judged(&self, now: u64, significant: bool) {
        self.totals.judged.fetch_add(1, Relaxed);
        if significant {
            self.totals.significant.fetch_add(1, Relaxed);
        }
        if let Some(slot) = self.slot(now) {
            slot.mirror_compared.fetch_add(1, Relaxed);
            if significant {
                slot.mirror_diffs.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn record_connection(&self, reused: bool) {
        self.totals.connections[usize::from(reused)].fetch_add(1, Relaxed);
    }

    pub fn record_ttfb(&self, us: u64) {
        self.totals.ttfb.record(us);
    }

    /// Everything since start.
    pub fn totals(&self) -> Stats {
        let t = &self.totals;
        Stats {
            status: std::array::from_fn(|i| t.status[i].load(Relaxed)),
            upstream_errors: t.upstream_errors.iter().map(|c| c.load(Relaxed)).sum(),
            fallbacks: t.fallbacks.load(Relaxed),
            latency: t.latency.read(),
            mirror_sent: t.mirror[MirrorOutcome::Sent as usize].load(Relaxed),
            mirror_compared: t.judged.load(Relaxed),
            mirror_diffs: t.significant.load(Relaxed),
            mirror_errors: t.mirror[MirrorOutcome::Error as usize].load(Relaxed)
                + t.mirror[MirrorOutcome::Timeout as usize].load(Relaxed)
                + t.mirror_5xx.load(Relaxed),
        }
    }

    pub fn upstream_detail(&self) -> UpstreamDetail {
        let t = &self.totals;
        UpstreamDetail {
            errors: std::array::from_fn(|i| t.upstream_errors[i].load(Relaxed)),
            ttfb: t.ttfb.read(),
            connections_new: t.connections[0].load(Relaxed),
            connections_reused: t.connections[1].load(Relaxed),
            mirror: std::array::from_fn(|i| t.mirror[i].load(Relaxed)),
            compare: std::array::from_fn(|i| t.compare[i].load(Relaxed)),
        }
    }

    /// The last `seconds` seconds (at most [`WINDOW_SECONDS`]) up to and including second `now`.
    pub fn last(&self, now: u64, seconds: u64) -> Stats {
        let seconds = seconds.min(WINDOW_SECONDS);
        let oldest = now.saturating_sub(seconds - 1).max(1);
        let mut out = Stats::default();
        if seconds == 0 {
            return out;
        }
        for slot in self.ring.iter() {
            let s = slot.second.load(Acquire);
            if s != CLEARING && s >= oldest && s <= now {
                out.add_slot(slot);
            }
        }
        out
    }

    /// The slot for second `now`, cleared first if it still holds an older second. `None` when this
    /// thread is so late that a newer second owns the slot, or another thread is clearing it for longer
    /// than a bounded spin.
    #[inline]
    fn slot(&self, now: u64) -> Option<&Slot> {
        let slot = &self.ring[(now % WINDOW_SECONDS) as usize];
        let mut spins = 0u32;
        loop {
            let held = slot.second.load(Acquire);
            if held == now {
                return Some(slot);
            }
            if held == CLEARING {
                spins += 1;
                if spins > 10_000 {
                    return None;
                }
                std::hint::spin_loop();
                continue;
            }
            if held > now {
                return None;
            }
            if slot
                .second
                .compare_exchange(held, CLEARING, Acquire, Relaxed)
                .is_ok()
            {
                slot.clear();
                slot.second.store(now, Release);
                return Some(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides_and_totals_stay() {
        let s = Series::default();
        for second in 1..=100u64 {
            s.record_request(second, 200, 1_000);
        }
        s.record_request(100, 503, 2_000);
        s.record_upstream_error(100, UpstreamError::ConnectFailure);
        s.record_fallback(99);

        let total = s.totals();
        assert_eq!(total.requests(), 101);
        assert_eq!(total.status[1], 100);
        assert_eq!(total.status[4], 1);
        assert_eq!(total.upstream_errors, 1);
        assert_eq!(total.fallbacks, 1);

        let w = s.last(100, 60);
        assert_eq!(w.requests(), 61, "seconds 41..=100 plus the 503");
        assert_eq!(w.status[4], 1);
        assert!((w.error_rate() - 1.0 / 61.0).abs() < 1e-12);
        assert_eq!(w.fallbacks, 1);
        assert_eq!(s.last(100, 10).requests(), 11);
        assert_eq!(s.last(100, 1).requests(), 2);
        // Nothing recorded for 200 seconds: the window is empty, the totals are not.
        assert_eq!(s.last(300, 60).requests(), 0);
        assert_eq!(s.totals().requests(), 101);
        // A reused slot holds only its new second.
        s.record_request(160, 200, 1_000);
        assert_eq!(s.last(160, 60).requests(), 1);
    }

    #[test]
    fn since_gives_any_interval_from_two_readings() {
        let s = Series::default();
        s.record_request(1, 200, 1_000);
        let a = s.totals();
        s.record_request(2, 500, 1_000);
        s.record_request(2, 500, 1_000);
        let d = s.totals().since(&a);
        assert_eq!(d.requests(), 2);
        assert_eq!(d.error_rate(), 1.0);
    }

    #[test]
    fn classes() {
        assert_eq!(class_of(101), 0);
        assert_eq!(class_of(204), 1);
        assert_eq!(class_of(304), 2);
        assert_eq!(class_of(404), 3);
        assert_eq!(class_of(0), 3);
        assert_eq!(class_of(599), 4);
    }

    #[test]
    fn concurrent_recording_loses_nothing_in_the_totals() {
        let s = std::sync::Arc::new(Series::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        s.record_request(1 + (i + t) / 1000, 200, i % 5000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.totals().requests(), 40_000);
        assert_eq!(s.totals().latency.count(), 40_000);
    }
}
