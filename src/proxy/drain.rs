//! Graceful shutdown without dropping fresh connections.
//!
//! When a Pingora service stops accepting (SIGQUIT after handing the sockets to a new process, or
//! SIGTERM), it calls the app's `cleanup()` at once, and `HttpProxy`'s cleanup aborts every session
//! still waiting in `read_request()` (pingora-proxy `HttpProxy::handle_new_request` races the read
//! against `await_shutdown`). That is meant for idle keep-alive connections, but by the code it also
//! catches a connection accepted a moment before the accept loop stopped whose request bytes have not
//! been read yet: the client would see the connection closed without an answer.
//!
//! [`Draining`] wraps the proxy app and lets such connections deliver their first request before the
//! cleanup runs. Sessions that arrive after shutdown began are already told not to keep the connection
//! alive, so the window only has to cover one request head. The race is narrow: the upgrade test
//! (tests/upgrade.rs) loses no request with or without this window once the grace period is realistic;
//! its earlier losses came from a zero grace period, which force-drops in-flight sessions.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

pub struct Draining<A> {
    inner: Arc<A>,
    window: Duration,
}

impl<A> Draining<A> {
    pub fn new(inner: A, window: Duration) -> Self {
        Draining {
            inner: Arc::new(inner),
            window,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.window).await;
        self.inner.cleanup().await;
    }
}
