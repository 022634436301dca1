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
//!
//! Pingora's own loop closes an idle connection without a GOAWAY and knows no deadline for the first
//! request; that is why this one exists.

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

/// Serves the HTTP/2 connection `stream` (its preface not yet read) on `app`.
pub async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
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
    let options = app.h2_options();
    let handshake = tokio::time::timeout(limits.header_timeout, handshake(stream, options));
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
    let mut requested = false;
    let mut malformed = 0usize;
    loop {
        // Before the first request, `header_timeout`; between requests, `keepalive_timeout`.
        let idle = if !requested {
            limits.header_timeout
        } else {
            limits.keepalive_timeout
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = HttpSession::from_h2_conn(
                &mut conn,
                digest.clone(),
            ) => accepted,
            _ = open.idle_for(idle) => break,
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                requested = true;
                spawn(app, session, &open, &shutdown);
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
    close(app, conn, digest, &open, &shutdown).await;
}

/// Serves one stream in a task of its own, counted as open while it runs.
fn spawn<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    session: HttpSession,
    open: &Arc<Open>,
    shutdown: &ShutdownWatch,
) {
    let serving = Serving::start(open);
    let (app, shutdown) = (app.clone(), shutdown.clone());
    pingora_runtime::current_handle().spawn(async move {
        let _serving = serving;
        app.process_new_http(ServerSession::new_http2(session), &shutdown)
            .await;
    });
}

/// Closes a connection: GOAWAY, then its open streams finish (and streams the client opened before
/// it saw the GOAWAY are still served), within [`CLOSING`].
async fn close<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
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
                Ok(Some(H2Accept::Session(session))) => spawn(app, session, open, shutdown),
                Ok(Some(H2Accept::Rejected)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSING, drain).await;
}
