//! Per-version observability: what each target served on each route, counted once per request in the
//! proxy's logging phase, and read two ways — Prometheus text on `/metrics` ([`prometheus`]), live
//! windows on `/v1/stats` and for the rollout controller ([`Metrics::stats`], [`Series::last`],
//! [`Stats::since`]). The JSON access log is `proxy::access_log`; its counters live here.
//!
//! Hot path: a request finds its series through the snapshot it already holds ([`SeriesCells`], one
//! `OnceLock` per route × target of that snapshot), then does relaxed atomic adds. The registry's mutex
//! is taken only the first time a snapshot sees a pair, so at most once per pair per config change.

pub mod diffs;
pub mod fields;
mod histogram;
pub mod series;

pub use histogram::{bucket_of, Latencies, BUCKETS, EDGES_US, PROMETHEUS_LE_US};
pub use series::{
    class_of, CompareResult, MirrorOutcome, Series, Stats, UpstreamDetail, UpstreamError,
    WINDOW_SECONDS,
};

use crate::release::{ReleaseTable, RouteId, UpstreamId};
use ahash::AHashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Why a request was answered before any target was chosen: the `reason` label of
/// `switchyard_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    NoRoute,
    ClientRequired,
    /// Refused before routing: malformed, ambiguous or oversized (SPEC §3 step 0).
    InvalidRequest,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::ClientRequired => "client_required",
            Rejection::InvalidRequest => "invalid_request",
        }
    }
}

/// Counters of the access log writer.
#[derive(Debug, Default)]
pub struct AccessLogCounters {
    pub written: AtomicU64,
    /// Lines dropped because the writer's queue was full (the log's destination is too slow).
    pub dropped_queue_full: AtomicU64,
    /// Lines dropped because writing them failed (full disk, closed stdout...).
    pub dropped_write_error: AtomicU64,
}

/// Requests being answered now, on both request paths (shadow copies included): held by each
/// request's context from its creation to its end.
static REQUESTS_IN_FLIGHT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Counts one request in flight for as long as it lives.
#[derive(Debug)]
pub struct RequestInFlight(());

impl RequestInFlight {
    pub fn new() -> RequestInFlight {
        REQUESTS_IN_FLIGHT.fetch_add(1, Relaxed);
        RequestInFlight(())
    }
}

impl Default for RequestInFlight {
    fn default() -> Self {
        RequestInFlight::new()
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, Relaxed);
    }
}

/// Requests being answered now.
pub fn requests_in_flight() -> i64 {
    REQUESTS_IN_FLIGHT.load(Relaxed).max(0)
}

type PairKey = (Box<str>, Box<str>);
type FallbackKey = (Box<str>, Box<str>, Box<str>);

/// Every series since start, and the process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    series: Mutex<AHashMap<PairKey, Arc<Series>>>,
    fallbacks: Mutex<AHashMap<FallbackKey, Arc<AtomicU64>>>,
    rejected: [AtomicU64; 3],
    reloads: [AtomicU64; 2],
    /// Whether the last reload was applied (1 until one is refused, as the load at start was).
    last_reload_ok: std::sync::atomic::AtomicBool,
    /// When the config was last loaded successfully (at start, or by a reload): Unix seconds.
    last_reload_success_unix: AtomicU64,
    pub access_log: AccessLogCounters,
    /// Differing shadow/primary pairs, newest last.
    pub mirror_diffs: diffs::Diffs,
    /// Per-field differences of each mirroring route.
    pub mirror_fields: fields::Fields,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            series: Mutex::default(),
            fallbacks: Mutex::default(),
            rejected: Default::default(),
            reloads: Default::default(),
            last_reload_ok: std::sync::atomic::AtomicBool::new(true),
            last_reload_success_unix: AtomicU64::new(unix_now()),
            access_log: AccessLogCounters::default(),
            mirror_diffs: diffs::Diffs::default(),
            mirror_fields: fields::Fields::default(),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The current second of the metrics clock (monotonic, from 1 at start).
    #[inline]
    pub fn second_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() + 1
    }

    pub fn now(&self) -> u64 {
        self.second_at(Instant::now())
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Seconds since start, to the millisecond.
    pub fn uptime(&self) -> f64 {
        (self.started.elapsed().as_millis() as f64) / 1000.0
    }

    /// The series of `route` × `target`, created on first use.
    pub fn series(&self, route: &str, target: &str) -> Arc<Series> {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((route.into(), target.into()))
            .or_insert_with(|| Arc::new(Series::default()))
            .clone()
    }

    /// The series of `route` × `target` if it has recorded anything.
    pub fn find(&self, route: &str, target: &str) -> Option<Arc<Series>> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(Box::from(route), Box::from(target))).cloned()
    }

    /// Every series, sorted by route then target.
    pub fn all_series(&self) -> Vec<(String, String, Arc<Series>)> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|((r, t), s)| (r.to_string(), t.to_string(), s.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// `(last 60 s, since start)` of a route × target; zeros if it never served anything.
    pub fn stats(&self, route: &str, target: &str) -> (Stats, Stats) {
        match self.find(route, target) {
            Some(s) => (s.last(self.now(), WINDOW_SECONDS), s.totals()),
            None => (Stats::default(), Stats::default()),
        }
    }

    /// The last `seconds` seconds (at most 60) of `route` × `target`; zeros if it never served.
    /// For a judge of canaries: compare `window(route, canary, 30)` with `window(route, baseline, 30)`.
    /// For intervals longer than the window, keep [`Metrics::totals`] readings and use [`Stats::since`].
    pub fn window(&self, route: &str, target: &str, seconds: u64) -> Stats {
        self.find(route, target)
            .map(|s| s.last(self.now(), seconds))
            .unwrap_or_default()
    }

    /// Each of the last `seconds` whole seconds (at most 60, the current one left out) of `route` ×
    /// `target`, oldest first: what a plot of the last minute starts from.
    pub fn per_second(&self, route: &str, target: &str, seconds: u64) -> Vec<Stats> {
        let now = self.now();
        let Some(series) = self.find(route, target) else {
            return Vec::new();
        };
        (1..=seconds.min(WINDOW_SECONDS - 1))
            .rev()
            .filter(|k| *k < now)
            .map(|k| series.last(now - k, 1))
            .collect()
    }

    /// Everything `route` × `target` served since start.
    pub fn totals(&self, route: &str, target: &str) -> Stats {
        self.find(route, target)
            .map(|s| s.totals())
            .unwrap_or_default()
    }

    fn fallback_counter(&self, route: &str, from: &str, to: &str) -> Arc<AtomicU64> {
        let mut map = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((route.into(), from.into(), to.into()))
            .or_default()
            .clone()
    }

    /// `(route, from, to, count)` of every fallback seen, sorted.
    pub fn fallbacks(&self) -> Vec<(String, String, String, u64)> {
        let map = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|((r, f, t), c)| (r.to_string(), f.to_string(), t.to_string(), c.load(Relaxed)))
            .collect();
        out.sort();
        out
    }

    pub fn record_rejection(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize].load(Relaxed)
    }

    /// A reload of the config file: applied (`ok`) or refused.
    pub fn record_reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
        self.last_reload_ok.store(ok, Relaxed);
        if ok {
            self.last_reload_success_unix.store(unix_now(), Relaxed);
        }
    }

    /// Whether the last reload was applied, and when the config was last loaded successfully (Unix
    /// seconds).
    pub fn last_reload(&self) -> (bool, u64) {
        (
            self.last_reload_ok.load(Relaxed),
            self.last_reload_success_unix.load(Relaxed),
        )
    }

    /// `(applied, refused)` reloads.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads[0].load(Relaxed), self.reloads[1].load(Relaxed))
    }

    /// The series for a request of `snapshot`: found through the snapshot's cells, lock-free once the
    /// pair has been seen under this snapshot.
    #[inline]
    pub fn series_in<'a>(
        &self,
        cells: &'a SeriesCells,
        table: &ReleaseTable,
        route: RouteId,
        target: UpstreamId,
    ) -> Option<&'a Arc<Series>> {
        let cell = cells.cell(route, target)?;
        let series = cell.series.get_or_init(|| {
            let name = table.route(route).map(|r| &*r.name).unwrap_or("");
            self.series(name, table.upstream_name(target))
        });
        Some(series)
    }

    /// Counts one fallback on `route` from `from` to `to` (the route's baseline in this snapshot).
    pub fn record_fallback(
        &self,
        cells: &SeriesCells,
        table: &ReleaseTable,
        route: RouteId,
        from: UpstreamId,
        to: UpstreamId,
        now: u64,
    ) {
        let Some(cell) = cells.cell(route, from) else {
            return;
        };
        let counter = cell.fallback.get_or_init(|| {
            let name = table.route(route).map(|r| &*r.name).unwrap_or("");
            (
                to,
                self.fallback_counter(name, table.upstream_name(from), table.upstream_name(to)),
            )
        });
        if counter.0 == to {
            counter.1.fetch_add(1, Relaxed);
        } else {
            // Not the baseline this snapshot was built with: count it the slow way.
            let name = table.route(route).map(|r| &*r.name).unwrap_or("");
            self.fallback_counter(name, table.upstream_name(from), table.upstream_name(to))
                .fetch_add(1, Relaxed);
        }
        if let Some(series) = self.series_in(cells, table, route, from) {
            series.record_fallback(now);
        }
    }
}

/// One route × target of a snapshot: its series and its fallback counter, resolved on first use.
#[derive(Debug, Default)]
pub struct Cell {
    series: OnceLock<Arc<Series>>,
    fallback: OnceLock<(UpstreamId, Arc<AtomicU64>)>,
}

/// The cells of a snapshot: per route, one per target the route can use. Built with the table,
/// filled as traffic arrives.
#[derive(Debug, Default)]
pub struct SeriesCells {
    routes: Vec<Box<[(UpstreamId, Cell)]>>,
}

impl SeriesCells {
    pub fn new(table: &ReleaseTable) -> SeriesCells {
        SeriesCells {
            routes: table
                .routes()
                .iter()
                .map(|r| {
                    r.targets()
                        .into_iter()
                        .map(|t| (t, Cell::default()))
                        .collect()
                })
                .collect(),
        }
    }

    #[inline]
    fn cell(&self, route: RouteId, target: UpstreamId) -> Option<&Cell> {
        self.routes
            .get(route as usize)?
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_find_their_series_through_the_snapshot_cells_and_keep_it_across_tables() {
        let config = crate::config::Valid::load(
            "upstreams:\n  v1: {backends: [\"127.0.0.1:1\"]}\n  v2: {backends: [\"127.0.0.1:2\"]}\nroutes:\n  - name: api\n    split: {targets: {v1: 90, v2: 10}, baseline: v1}\n",
        )
        .unwrap();
        let table = ReleaseTable::compile(&config).unwrap();
        let metrics = Metrics::new();
        let cells = SeriesCells::new(&table);
        let now = metrics.now();
        for _ in 0..3 {
            let s = metrics.series_in(&cells, &table, 0, 1).unwrap();
            s.record_request(now, 503, 2_000);
        }
        metrics.record_fallback(&cells, &table, 0, 1, 0, now);
        assert!(
            metrics.series_in(&cells, &table, 0, 7).is_none(),
            "not a target of the route"
        );
        // A new table (a config change) finds the same series.
        let cells2 = SeriesCells::new(&table);
        metrics
            .series_in(&cells2, &table, 0, 1)
            .unwrap()
            .record_request(now, 200, 1_000);
        let w = metrics.window("api", "v2", 60);
        assert_eq!(w.requests(), 4);
        assert_eq!(w.status[4], 3);
        assert_eq!(w.fallbacks, 1);
        assert_eq!(metrics.totals("api", "v2").requests(), 4);
        assert_eq!(metrics.window("api", "v1", 60), Stats::default());
        assert_eq!(
            metrics.fallbacks(),
            vec![("api".into(), "v2".into(), "v1".into(), 1)]
        );
    }
}
