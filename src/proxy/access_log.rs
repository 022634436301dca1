//! The JSON access log (SPEC §7): one object a line, to stdout or a file, written by its own thread.
//!
//! A request only moves its entry into a bounded queue (`try_send`, never waiting). The writer thread
//! formats the lines and writes them in batches. When the destination is slow or broken — a full disk,
//! a closed or stalled stdout — lines are dropped and counted (`switchyard_access_log_dropped_total`),
//! and requests go on exactly as before. SIGHUP reopens a log file, for logrotate.

use crate::metrics::{Metrics, Rejection};
use crate::release::{Decision, RouteId, UpstreamId};
use crate::state::store::rfc3339;
use crate::state::Snapshot;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 8192;
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
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub duration_us: u64,
    pub mirrored: bool,
    pub error: Option<&'static str>,
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
    status: u16,
    upstream: Option<String>,
    duration_ms: f64,
    mirrored: bool,
    fallback_from: Option<&'a str>,
    error: Option<&'a str>,
}

impl Entry {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
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
            ts: rfc3339(self.at),
            request_id: &self.request_id,
            route: table.and_then(|t| Some(&*t.route(self.route?)?.name)),
            target: name(served),
            reason,
            client: table.and_then(|t| Some(t.client_name(d?.client?))),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            upstream: self.upstream.map(|a| a.to_string()),
            duration_ms: (self.duration_us as f64) / 1000.0,
            mirrored: self.mirrored,
            fallback_from,
            error: self.error,
        };
        serde_json::to_writer(&mut *out, &line)?;
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
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut failing = false;
        while let Ok(first) = self.rx.recv() {
            let mut lines = 0u64;
            let mut next = Some(first);
            while let Some(entry) = next {
                if entry.write_json(&mut batch).is_ok() {
                    lines += 1;
                }
                drop(entry);
                next = if batch.len() < BATCH_BYTES {
                    self.rx.try_recv().ok()
                } else {
                    None
                };
            }
            if self.reopen.swap(false, Relaxed) {
                self.sink.reopen();
            }
            let counters = &self.metrics.access_log;
            match self.sink.write_all(&batch) {
                Ok(()) => {
                    counters.written.fetch_add(lines, Relaxed);
                    if std::mem::take(&mut failing) {
                        log::info!("access log: writing again");
                    }
                }
                Err(e) => {
                    counters.dropped_write_error.fetch_add(lines, Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        log::error!("access log: cannot write ({e}); dropping and counting lines until it recovers");
                    }
                }
            }
            batch.clear();
        }
    }
}
