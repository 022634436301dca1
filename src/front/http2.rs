//! An HTTP/2 connection at the front door, bounded as an HTTP/1 one is: its streams are served by
//! Pingora's pipeline (each in a task of its own), and the connection loop is the front door's.
//!
//! - The connection preface and the first request must arrive within `limits.header_timeout` of the
//!   handshake; after that the connection may sit idle, with no stream open, for
//!   `limits.keepalive_timeout`. Either way it is then closed as HTTP/2 closes a connection: a GOAWAY
//!   (so that a client whose request crossed it knows the request was not processed and sends it
//!   again), then the end of the connection once its streams are done.
//! - Shutdown (an upgrade, SIGTERM) sends the same GOAWAY; streams already open finish.
//! - A connection whose client sends stream after malformed stream is closed past
//!   [`MALFORMED_STREAMS`].
//! - After `limits.max_requests_per_connection` streams the connection is closed the same way, as
//!   an HTTP/1 connection is after as many requests.
//! - Its memory is bounded ([`options`]): at most [`MAX_STREAMS`] streams at once, a request head
//!   (its header list) of at most `limits.max_head_bytes` as over HTTP/1, request bodies by HTTP/2's
//!   flow-control windows, and what waits to be sent to a slow client by [`SEND_BUFFER`] a stream.
//!
//! Pingora's own loop closes an idle connection without a GOAWAY and knows no deadline for the first
//! request; that is why this one exists.

use super::Service;
use crate::config::Limits;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Malformed streams a connection may open before it is closed (as Pingora's own loop allows).
pub const MALFORMED_STREAMS: usize = 32;
/// Streams a client may have open at once on one connection (nginx's `http2_max_concurrent_streams`).
pub const MAX_STREAMS: u32 = 128;
/// What waits to be sent to the client, per stream; a slow reader holds its response's upstream
/// reads back beyond it (the h2 crate's default is 400 KB).
pub const SEND_BUFFER: usize = 64 * 1024;
/// The flow-control window a stream and the connection open to a client's request bodies: what
/// the client may send before it is read (HTTP/2's default).
const RECV_WINDOW: u32 = 65_535;

/// The HTTP/2 settings of a connection under `limits`: the bounds above.
pub fn options(limits: &Limits) -> h2::server::Builder {
    let mut options = h2::server::Builder::new();
    options
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_send_buffer_size(SEND_BUFFER)
        .initial_window_size(RECV_WINDOW)
        .initial_connection_window_size(RECV_WINDOW);
    options
}
/// The longest a closing connection waits for its open streams to finish and its GOAWAY to go out.
const CLOSING: Duration = Duration::from_secs(30);

/// Streams of one connection being served now.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    none: Notify,
}

/// Held by a stream's task while it is served.
struct Serving(Arc<Open>);

impl Serving {
    fn start(open: &Arc<Open>) -> Serving {
        open.count.fetch_add(1, Ordering::AcqRel);
        Serving(open.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_one();
        }
    }
}

impl Open {
    /// Returns once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            while self.count.load(Ordering::Acquire) > 0 {
                self.none.notified().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if self.count.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                _ = self.none.notified() => {}
            }
        }
    }
}

/// Serves the HTTP/2 connection `stream` (its preface not yet read): each stream on the service's
/// engine when it takes it, else on `app`, Pingora's pipeline.
pub async fn serve<S: Service>(
    service: &Arc<S>,
    app: &Arc<S::Pipeline>,
    stream: Stream,
    limits: &Limits,
    shutdown: &ShutdownWatch,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    // The handshake's and each accept's states are boxed while they run, not kept in this future:
    // an idle connection's task then holds little beyond the connection itself.
    let handshake = handshake(stream, Some(options(limits)));
    let handshake = Box::pin(tokio::time::timeout(limits.header_timeout, handshake));
    let mut conn = match handshake.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            log::debug!("HTTP/2 handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    let open = Arc::new(Open::default());
    let mut shutdown = shutdown.clone();
    let mut served = 0u32;
    let mut malformed = 0usize;
    loop {
        // Before the first request, `header_timeout`; between requests, `keepalive_timeout`.
        let idle = if served == 0 {
            limits.header_timeout
        } else {
            limits.keepalive_timeout
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = Box::pin(HttpSession::from_h2_conn(
                &mut conn,
                digest.clone(),
            )) => accepted,
            _ = open.idle_for(idle) => break,
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                served = served.saturating_add(1);
                spawn(service, app, session, &open, &shutdown);
                if served >= limits.max_requests_per_connection {
                    break;
                }
            }
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MALFORMED_STREAMS {
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    break;
                }
            }
            // The client closed the connection, or broke it.
            Ok(None) | Err(_) => return,
        }
    }
    Box::pin(close(service, app, conn, digest, &open, &shutdown)).await;
}

/// Serves one stream in a task of its own, counted as open while it runs: on the engine when it
/// takes it, else on Pingora's pipeline.
fn spawn<S: Service>(
    service: &Arc<S>,
    app: &Arc<S::Pipeline>,
    session: HttpSession,
    open: &Arc<Open>,
    shutdown: &ShutdownWatch,
) {
    let serving = Serving::start(open);
    match service.take_stream(session) {
        Ok(served) => {
            // On this connection's thread: the engine's upstream pool is the thread's.
            tokio::runtime::Handle::current().spawn(async move {
                let _serving = serving;
                served.await;
            });
        }
        Err(session) => {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            pingora_runtime::current_handle().spawn(async move {
                let _serving = serving;
                app.process_new_http(ServerSession::new_http2(session), &shutdown)
                    .await;
            });
        }
    }
}

/// Closes a connection: GOAWAY, then its open streams finish (and streams the client opened before
/// it saw the GOAWAY are still served), within [`CLOSING`].
async fn close<S: Service>(
    service: &Arc<S>,
    app: &Arc<S::Pipeline>,
    mut conn: h2::server::Connection<Stream, bytes::Bytes>,
    digest: Arc<Digest>,
    open: &Arc<Open>,
    shutdown: &ShutdownWatch,
) {
    conn.graceful_shutdown();
    let drain = async {
        loop {
            let accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()).await;
            match accepted {
                Ok(Some(H2Accept::Session(session))) => {
                    spawn(service, app, session, open, shutdown)
                }
                Ok(Some(H2Accept::Rejected)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSING, drain).await;
}
