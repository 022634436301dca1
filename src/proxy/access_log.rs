//! The JSON access log (SPEC §7): one object a line, to stdout or a file, written by its own thread.
//!
//! A request only moves its entry into a bounded queue (`try_send`, never waiting, never waking
//! anyone). The writer thread drains it every 20 ms, formats the lines and writes them in batches. When the destination is slow or broken — a full disk,
//! a closed or stalled stdout — lines are dropped and counted (`switchyard_access_log_dropped_total`),
//! and requests go on exactly as before. SIGHUP reopens a log file, for logrotate.

use crate::metrics::{Metrics, Rejection};
use crate::release::{Decision, RouteId, UpstreamId};
use crate::state::Snapshot;
use crate::time::rfc3339;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 8192;
/// How often the writer drains the queue: a line reaches its destination within this.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes gathered before a write, under load.
const BATCH_BYTES: usize = 64 * 1024;

/// What one request leaves for the log. Formatting waits for the writer thread.
#[derive(Debug)]
pub struct Entry {
    pub at: SystemTime,
    pub request_id: String,
    /// The snapshot the request was decided with: names of route, target and client come from it.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<RouteId>,
    pub decision: Option<Decision>,
    /// The target that served (differs from the decision's after a fallback).
    pub served: Option<UpstreamId>,
    pub rejected: Option<Rejection>,
    /// What the request said of itself, and where it came from.
    pub request: RequestLog,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub duration_us: u64,
    pub mirrored: bool,
    pub error: Option<&'static str>,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: &'static str,
    /// Body bytes received from the client and sent to it.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From the upstream connection being ready to the upstream's response header.
    pub upstream_ttfb_us: Option<u64>,
}

/// The request's side of an access log line, gathered only when there is an access log.
#[derive(Debug, Default, Clone)]
pub struct RequestLog {
    pub method: http::Method,
    /// The path, without its query (which may carry secrets).
    pub path: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub forwarded_for: Option<String>,
    /// A valid W3C `traceparent` the client sent (passed on to the upstream unchanged).
    pub traceparent: Option<String>,
    pub client_addr: Option<std::net::IpAddr>,
    /// `TLSv1.3`..., on a TLS listener.
    pub tls_version: Option<String>,
}

/// Longest header value copied into a log line; longer ones are cut (a log line stays small).
const LOGGED_VALUE_MAX: usize = 256;

/// A header value for the log: valid UTF-8, at most [`LOGGED_VALUE_MAX`] bytes.
pub fn logged_value(v: &[u8]) -> Option<String> {
    let v = &v[..v.len().min(LOGGED_VALUE_MAX)];
    Some(String::from_utf8_lossy(v).into_owned())
}

/// `traceparent` when it is a valid W3C trace context (version 00 form, ids not all zero).
pub fn valid_traceparent(v: &[u8]) -> Option<String> {
    let parts: Vec<&[u8]> = v.trim_ascii().split(|b| *b == b'-').collect();
    let hex = |p: &[u8], n: usize| {
        p.len() == n
            && p.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let ok = parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != b"ff"
        && hex(parts[1], 32)
        && parts[1].iter().any(|b| *b != b'0')
        && hex(parts[2], 16)
        && parts[2].iter().any(|b| *b != b'0')
        && hex(parts[3], 2)
        && (parts.len() == 4 || parts[0] != b"00");
    ok.then(|| String::from_utf8_lossy(v.trim_ascii()).into_owned())
}

/// RFC 3339 timestamps with milliseconds, formatted once per second: lines of the same second reuse
/// the date and time and only write their milliseconds.
#[derive(Debug, Default)]
pub struct Timestamps {
    second: u64,
    prefix: String,
}

impl Timestamps {
    fn format(&mut self, at: SystemTime) -> String {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let full = rfc3339(UNIX_EPOCH + Duration::from_secs(since.as_secs()));
            // "YYYY-MM-DDTHH:MM:SS" then ".000Z"
            self.prefix = full.get(..19).unwrap_or(&full).to_string();
        }
        let mut out = String::with_capacity(24);
        out.push_str(&self.prefix);
        let ms = since.subsec_millis();
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push('Z');
        out
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    route: Option<&'a str>,
    target: Option<&'a str>,
    reason: String,
    client: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    status: u16,
    upstream: Option<SocketAddr>,
    duration_ms: f64,
    mirrored: bool,
    fallback_from: Option<&'a str>,
    error: Option<&'a str>,
    client_addr: Option<std::net::IpAddr>,
    x_forwarded_for: Option<&'a str>,
    host: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_bytes: u64,
    response_bytes: u64,
    upstream_ttfb_ms: Option<f64>,
    tls_version: Option<&'a str>,
    traceparent: Option<&'a str>,
}

impl Entry {
    /// Appends this entry as one JSON line (done by the writer thread).
    /// Only the `fields` named are written when given (`server.access_log_fields`).
    pub fn write_json(
        &self,
        out: &mut Vec<u8>,
        ts: &mut Timestamps,
        fields: Option<&[String]>,
    ) -> serde_json::Result<()> {
        let table = self.snapshot.as_ref().map(|s| &s.table);
        let name = |id: Option<UpstreamId>| Some(table?.upstream_name(id?));
        let d = self.decision;
        let reason = match (&self.rejected, d.map(|d| d.reason)) {
            (Some(r), _) => r.as_str().to_string(),
            (None, Some(r)) => r.to_string(),
            (None, None) => String::new(),
        };
        let served = self.served.or(d.map(|d| d.target));
        let fallback_from = match (d, self.served) {
            (Some(d), Some(s)) if s != d.target => name(Some(d.target)),
            _ => None,
        };
        let line = Line {
            ts: ts.format(self.at),
            request_id: &self.request_id,
            route: table.and_then(|t| Some(&*t.route(self.route?)?.name)),
            target: name(served),
            reason,
            client: table.and_then(|t| Some(t.client_name(d?.client?))),
            method: self.request.method.as_str(),
            path: &self.request.path,
            protocol: self.protocol,
            status: self.status,
            upstream: self.upstream,
            duration_ms: (self.duration_us as f64) / 1000.0,
            mirrored: self.mirrored,
            fallback_from,
            error: self.error,
            client_addr: self.request.client_addr,
            x_forwarded_for: self.request.forwarded_for.as_deref(),
            host: self.request.host.as_deref(),
            user_agent: self.request.user_agent.as_deref(),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            upstream_ttfb_ms: self.upstream_ttfb_us.map(|us| us as f64 / 1000.0),
            tls_version: self.request.tls_version.as_deref(),
            traceparent: self.request.traceparent.as_deref(),
        };
        match fields {
            None => serde_json::to_writer(&mut *out, &line)?,
            Some(fields) => {
                let serde_json::Value::Object(mut all) = serde_json::to_value(&line)? else {
                    return Ok(());
                };
                let mut kept = serde_json::Map::new();
                for f in fields {
                    if let Some(v) = all.remove(f.as_str()) {
                        kept.insert(f.clone(), v);
                    }
                }
                serde_json::to_writer(&mut *out, &kept)?;
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// From `server.access_log`: `stdout`, `off` (None) or a path.
    pub fn from_setting(s: &str) -> Option<Destination> {
        match s {
            "off" => None,
            "stdout" => Some(Destination::Stdout),
            path => Some(Destination::File(PathBuf::from(path))),
        }
    }
}

enum Sink {
    Stdout,
    File(File, PathBuf),
}

impl Sink {
    fn open(dest: &Destination) -> io::Result<Sink> {
        Ok(match dest {
            Destination::Stdout => Sink::Stdout,
            Destination::File(p) => Sink::File(open_append(p)?, p.clone()),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(f, _) => f.write_all(bytes),
        }
    }

    fn reopen(&mut self) {
        if let Sink::File(f, p) = self {
            match open_append(p) {
                Ok(new) => *f = new,
                Err(e) => log::error!(
                    "access log {}: cannot reopen, still writing to the old file: {e}",
                    p.display()
                ),
            }
        }
    }
}

fn open_append(p: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// The request side of the log: cheap to call, never waits.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens the destination (an error names it) and starts the writer thread.
    pub fn start(dest: &Destination, metrics: Arc<Metrics>) -> io::Result<AccessLog> {
        let sink = Sink::open(dest).map_err(|e| match dest {
            Destination::File(p) => {
                io::Error::new(e.kind(), format!("access log {}: {e}", p.display()))
            }
            Destination::Stdout => e,
        })?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            rx,
            sink,
            reopen: reopen.clone(),
            metrics: metrics.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())?;
        Ok(AccessLog {
            tx,
            reopen,
            metrics,
        })
    }

    /// Queues one entry; drops and counts it when the queue is full.
    #[inline]
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics
                    .access_log
                    .dropped_queue_full
                    .fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .access_log
                    .dropped_write_error
                    .fetch_add(1, Relaxed);
            }
        }
    }

    /// Asks the writer to reopen a log file before its next write (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
    }
}

struct Writer {
    rx: Receiver<Entry>,
    sink: Sink,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl Writer {
    /// Drains the queue every [`FLUSH_INTERVAL`] instead of waiting on it: a request queueing an entry
    /// then never has to wake this thread (no syscall on the request path), and lines go out in
    /// batches.
    fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut lines = 0u64;
        let mut ts = Timestamps::default();
        loop {
            match self.rx.try_recv() {
                Ok(entry) => {
                    // The selection of the config the request was served under.
                    let fields = entry
                        .snapshot
                        .as_ref()
                        .map(|s| s.config.server.access_log_fields.as_slice())
                        .filter(|f| !f.is_empty());
                    if entry.write_json(&mut batch, &mut ts, fields).is_ok() {
                        lines += 1;
                    }
                    if batch.len() >= BATCH_BYTES {
                        self.flush(&mut batch, &mut lines);
                    }
                }
                Err(TryRecvError::Empty) => {
                    if lines > 0 {
                        self.flush(&mut batch, &mut lines);
                    }
                    std::thread::sleep(FLUSH_INTERVAL);
                }
                Err(TryRecvError::Disconnected) => {
                    self.flush(&mut batch, &mut lines);
                    return;
                }
            }
        }
    }

    fn flush(&mut self, batch: &mut Vec<u8>, lines: &mut u64) {
        if self.reopen.swap(false, Relaxed) {
            self.sink.reopen();
        }
        let counters = &self.metrics.access_log;
        match self.sink.write_all(batch) {
            Ok(()) => {
                counters.written.fetch_add(*lines, Relaxed);
                if std::mem::take(&mut self.failing) {
                    log::info!("access log: writing again");
                }
            }
            Err(e) => {
                counters.dropped_write_error.fetch_add(*lines, Relaxed);
                if !std::mem::replace(&mut self.failing, true) {
                    log::error!(
                        "access log: cannot write ({e}); dropping and counting lines until it recovers"
                    );
                }
            }
        }
        batch.clear();
        *lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_timestamps_equal_full_formatting() {
        let mut ts = Timestamps::default();
        let base = UNIX_EPOCH + Duration::from_millis(1_795_000_000_000);
        for ms in [0u64, 7, 45, 999, 1000, 1001, 61_234, 86_400_000 + 5] {
            let at = base + Duration::from_millis(ms);
            assert_eq!(ts.format(at), rfc3339(at));
        }
    }

    fn entry() -> Entry {
        Entry {
            at: UNIX_EPOCH,
            request_id: "abc".into(),
            snapshot: None,
            route: None,
            decision: None,
            served: None,
            rejected: None,
            request: RequestLog {
                method: http::Method::GET,
                path: "/x".into(),
                user_agent: Some("curl/8".into()),
                ..Default::default()
            },
            status: 200,
            upstream: None,
            duration_us: 1500,
            mirrored: false,
            error: None,
            protocol: "HTTP/1.1",
            request_bytes: 0,
            response_bytes: 12,
            upstream_ttfb_us: Some(700),
        }
    }

    #[test]
    fn a_field_selection_keeps_only_those_fields() {
        let mut out = Vec::new();
        let fields = [
            "status".to_string(),
            "user_agent".into(),
            "duration_ms".into(),
        ];
        entry()
            .write_json(&mut out, &mut Timestamps::default(), Some(&fields))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": 200, "user_agent": "curl/8", "duration_ms": 1.5})
        );
        out.clear();
        entry()
            .write_json(&mut out, &mut Timestamps::default(), None)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for f in crate::config::ACCESS_LOG_FIELDS {
            assert!(v.get(f).is_some(), "{f} missing in {v}");
        }
        assert_eq!(v["upstream_ttfb_ms"], 0.7);
    }

    #[test]
    fn only_a_valid_traceparent_is_logged() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good.as_bytes()).as_deref(), Some(good));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "\"><script>",
        ] {
            assert_eq!(valid_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }
}
