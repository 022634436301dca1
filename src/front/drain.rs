//! Shutdown that fits container platforms. When shutdown begins (SIGTERM, or SIGQUIT once the sockets
//! are handed to a new process), the accept loops stop and every client connection finishes what is
//! in flight; this service watches the count of open client connections and ends the process as soon
//! as none is left, instead of sleeping out the whole grace period (which still bounds the drain).

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Client connections of the proxy open now (plain and TLS).
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Requests in flight on Pingora's pipeline, its shadow copies included.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Held for as long as a client connection is open.
pub(crate) struct OpenConnection(());

impl OpenConnection {
    pub(crate) fn new() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a new client connection as open, unless that would take it past `max_connections`: then
/// `None`, and the connection is to be closed at once (as nginx does past its worker_connections), so
/// the connections already open keep being served.
pub(crate) fn admit(max_connections: usize) -> Option<OpenConnection> {
    let open = OpenConnection::new();
    (open_connections() <= max_connections).then_some(open)
}

/// Held by a request's context on Pingora's pipeline for as long as the request runs.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight(())
    }
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client connections of the proxy open now.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// What shutdown waits for: open client connections and requests in flight on Pingora's pipeline.
fn busy() -> usize {
    OPEN.load(Ordering::Relaxed) + IN_FLIGHT.load(Ordering::Relaxed)
}

/// How often the drain looks at the count.
const POLL: Duration = Duration::from_millis(10);

/// Ends the process once shutdown has begun and no client connection is left, `settle` after the
/// last one closed (time for the access log to write its last lines).
pub struct Drain {
    pub settle: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        log::info!(
            "shutting down: no longer accepting; {} client connection(s) and request(s) finishing what is in flight",
            busy()
        );
        while busy() > 0 {
            tokio::time::sleep(POLL).await;
        }
        tokio::time::sleep(self.settle).await;
        log::info!("drained: every client connection is closed; exiting");
        std::process::exit(0);
    }
}
