//! The front door: every client connection of the proxy and of the admin API comes in here, plain
//! (the accept loops of [`TcpListeners`]) or after its TLS handshake (Pingora's listening service).
//! One connection loop serves it request by request:
//!
//! - a TLS connection that negotiated h2, or a plain one that opens with the HTTP/2 preface when the
//!   service takes h2c, is served as HTTP/2 ([`http2`]): its streams by Pingora's pipeline, the
//!   connection bounded by the same limits;
//! - each HTTP/1 head is read under the limits ([`conn::read_head`]: the whole head within
//!   `limits.header_timeout` of its first byte, at most `limits.max_head_bytes`, an idle connection
//!   waiting `limits.keepalive_timeout` holding no buffer, during a drain too);
//! - the head is parsed once and classified ([`head::classify`]): refused with the service's answer
//!   (the connection then closes), served by the engine (Switchyard's own HTTP/1 request loop), or
//!   handed to Pingora's pipeline for this one request. The pipeline gets the head and, when its
//!   length is declared, the body bytes already read; its reads stop where the request ends
//!   ([`fence`]), so what follows stays for the next round of this loop;
//! - keep-alive, the count of requests per connection and the drain are the loop's, whichever back end
//!   served the request before.
//!
//! `server.http1_engine: false` only means the classifier never picks the engine. The admin API has
//! no engine: every head it accepts goes to its Pingora server.
//!
//! Graceful shutdown without dropping fresh connections: when a Pingora service stops accepting
//! (SIGQUIT after handing the sockets to a new process, or SIGTERM), it calls the app's `cleanup()` at
//! once, and `HttpProxy`'s cleanup aborts every session still waiting in `read_request()`. That is
//! meant for idle keep-alive connections, but it also catches a connection accepted a moment before the
//! accept loop stopped whose request bytes have not been read yet. So the front door gives a fresh
//! connection `first_request` to send its first request and lets Pingora's cleanup run only after
//! that window.

mod conn;
mod drain;
mod fence;
mod head;
mod http2;
mod listener;

pub use conn::{
    give_back_memory_with, last_request, linger, nodelay, write_client, Conn, OUT_CAPACITY,
    READ_CHUNK,
};
pub use drain::{open_connections, Drain, InFlight};
pub use head::{answer_head, classify, head_complete, Accepted, Head, RequestFields, MAX_FIELDS};
pub use http2::options as http2_settings;
pub use listener::{PlainTcp, TcpListeners};

use crate::config::Limits;
use crate::policy::request::Refusal;
use async_trait::async_trait;
use bytes::BytesMut;
use conn::{read_head, HeadRead};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP/2 connection preface up to its first blank line, which reads as a complete HTTP/1 head
/// (`PRI * HTTP/2.0`): a plain connection that opens with it speaks HTTP/2 (h2c, prior knowledge).
pub const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// What serves the requests the front door takes in: the proxy (its engine and Pingora's proxy
/// pipeline) or the admin API (its Pingora server only).
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Pingora's HTTP server for what the engine does not serve.
    type Pipeline: HttpServerApp + ServerApp + Send + Sync + 'static;
    /// A request the engine admitted: decided, its upstream head written, ready to be served.
    type Request: Send + 'static;
    /// Whether a connection counts towards `limits.max_connections` and holds up the drain.
    const COUNTED: bool;
    /// Whether a connection waiting for its next request is closed as soon as shutdown begins. The
    /// admin API's are: after a hand-over its next request belongs to the new process, and a closed
    /// idle connection sends the client there. The proxy keeps its own open (a request may be on its
    /// way) and answers the next request with `Connection: close`.
    const CLOSES_IDLE_AT_SHUTDOWN: bool;

    fn limits(&self) -> Limits;
    /// Whether a plain connection may speak HTTP/2 with prior knowledge.
    fn h2c(&self) -> bool;
    /// Whether the classifier may pick the engine.
    fn engine(&self) -> bool;
    /// Takes a head the classifier gave the engine; `None` hands it to the pipeline instead. Not
    /// async: the head's fields are on the stack.
    fn admit(&self, c: &mut Conn, head: &Accepted<'_, '_>) -> Option<Self::Request>;
    /// Serves an admitted request on the engine: a boxed future, so that a connection's task holds
    /// none of a request's state while it waits for the next head.
    fn serve<'a>(
        &'a self,
        c: &'a mut Conn,
        req: Self::Request,
        shutdown: &'a ShutdownWatch,
    ) -> Serving<'a>;
    /// Takes an HTTP/2 stream for the engine, or gives it back for the pipeline.
    #[allow(clippy::result_large_err)]
    fn take_stream(self: &Arc<Self>, stream: H2Stream) -> Result<StreamServing, H2Stream> {
        Err(stream)
    }
    /// How a refused head is answered.
    fn refusal(&self, why: Refusal) -> Refusing;
    /// Counts and logs a refused head once its answer went out (`status`, 499 when it could not).
    fn refused(&self, refusing: Refusing, seen: Option<Seen>, status: u16);
}

/// What a refused head is answered.
pub struct Refusing {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Cow<'static, [u8]>,
    pub request_id: Option<String>,
}

/// The method and path (without its query) of a refused head, when they could be read.
pub type Seen = (http::Method, String);

/// After a request the engine served: keep the connection for the next one, or close it.
pub enum Next {
    KeepAlive,
    Close,
}

/// Where a head goes, once classified and (for the engine) admitted.
enum Judged<'a> {
    /// The engine serving it, boxed: the request's state lives there, not in the connection's task.
    Engine(Serving<'a>),
    Pipeline(Option<u64>),
    Refused(Refusal, Option<Seen>),
}

/// An HTTP/2 stream, accepted and validated by Pingora's HTTP/2 session.
pub type H2Stream = pingora::protocols::http::v2::server::HttpSession;

/// The engine serving one HTTP/2 stream, in a task of its own.
pub type StreamServing = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The engine serving one request.
pub type Serving<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Next> + Send + 'a>>;

/// The front door of one listening service: a Pingora `ServerApp`.
pub struct Door<S: Service> {
    service: Arc<S>,
    pipeline: Arc<S::Pipeline>,
    /// How long a connection accepted just before shutdown has to send its first request.
    first_request: Duration,
}

impl<S: Service> Clone for Door<S> {
    fn clone(&self) -> Self {
        Door {
            service: self.service.clone(),
            pipeline: self.pipeline.clone(),
            first_request: self.first_request,
        }
    }
}

impl<S: Service> Door<S> {
    pub fn new(service: S, pipeline: S::Pipeline, first_request: Duration) -> Self {
        Door {
            service: Arc::new(service),
            pipeline: Arc::new(pipeline),
            first_request,
        }
    }

    /// Classifies the complete head at the start of `c.buf` (one parse) and, for the engine, admits
    /// it and starts serving it. Not async, so the field array lives on the stack, never in a future.
    fn judge<'a>(&'a self, c: &'a mut Conn, shutdown: &'a ShutdownWatch) -> Judged<'a> {
        // Left uninitialised: httparse writes only the fields it finds.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        // The head borrows the buffer while the service writes into the connection's others; the
        // buffer is put back before returning (taking an empty `BytesMut` allocates nothing).
        let buf = std::mem::take(&mut c.buf);
        let engine = self.service.engine();
        let admitted = match classify(&buf, &mut fields, c.limits.max_head_bytes, engine) {
            Head::Accepted(head) => match self.service.admit(c, &head) {
                Some(req) => Ok(req),
                None => Err(Judged::Pipeline(Some(head.ends()))),
            },
            Head::Pipeline(ends) => Err(Judged::Pipeline(ends)),
            Head::Refused(why, seen) => Err(Judged::Refused(why, seen.map(seen_for_log))),
        };
        c.buf = buf;
        match admitted {
            Ok(req) => Judged::Engine(self.service.serve(c, req, shutdown)),
            Err(other) => other,
        }
    }

    /// Answers a refused head (the service's answer, `Connection: close`), counts and logs it.
    async fn refuse(&self, c: &mut Conn, why: Refusal, seen: Option<Seen>) {
        let refusing = self.service.refusal(why);
        answer_head(
            &mut c.resp_out,
            refusing.status,
            refusing.content_type,
            refusing.body.len(),
            refusing.request_id.as_deref(),
            true,
        );
        c.resp_out.extend_from_slice(&refusing.body);
        let sent = write_client(&mut c.stream, &c.resp_out, true, c.limits.send_timeout).await;
        let status = if sent { refusing.status } else { 499 };
        self.service.refused(refusing, seen, status);
    }

    /// Hands one request to Pingora's pipeline: the head and what was read of its body, its reads
    /// fenced where it ends (`ends`, counted from the start of `c.buf`). The connection comes back
    /// when the pipeline would keep it alive, with what was read of the next request.
    async fn pipeline_one(
        &self,
        c: Conn,
        ends: Option<u64>,
        shutdown: &ShutdownWatch,
    ) -> Option<Conn> {
        let Conn {
            stream,
            mut buf,
            up_buf,
            req_out,
            resp_out,
            client_ip,
            served,
            limits,
            lean,
            giving_back,
        } = c;
        // Pingora writes a response head and its body separately.
        nodelay(&stream);
        // This request's bytes go to Pingora; what follows them is the next request's.
        let (rest, fence) = match ends {
            Some(end) if end <= buf.len() as u64 => (buf.split_off(end as usize), Some(0)),
            Some(end) => (BytesMut::new(), Some(end - buf.len() as u64)),
            None => (BytesMut::new(), None),
        };
        let fenced: Stream = Box::new(fence::Fenced::new(stream, fence));
        let mut session = ServerSession::new_http1(fenced);
        session.set_pipelined_prefix(buf);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(limits.keepalive_timeout.as_secs().max(1))
        });
        // What is left of `max_requests_per_connection`, as reuses after this request: none left
        // makes Pingora answer `Connection: close`.
        let left = limits.max_requests_per_connection.saturating_sub(served);
        session.set_keepalive_reuses_remaining(Some(left.saturating_sub(1)));
        let reused = self.pipeline.process_new_http(session, shutdown).await?;
        let fenced = reused
            .consume()
            .0
            .into_any()
            .downcast::<fence::Fenced>()
            .ok()?;
        let (stream, next) = fenced.into_parts();
        let mut buf = rest;
        buf.extend_from_slice(&next);
        Some(Conn {
            stream,
            buf,
            up_buf,
            req_out,
            resp_out,
            client_ip,
            served,
            limits,
            lean,
            giving_back,
        })
    }
}

/// Reads the connection's next request head; for a service that closes idle connections at
/// shutdown, `Closed` once shutdown begins while nothing of a next request has come.
async fn next_head<S: Service>(c: &mut Conn, shutdown: &ShutdownWatch) -> HeadRead {
    if S::CLOSES_IDLE_AT_SHUTDOWN && c.buf.is_empty() {
        let mut watch = shutdown.clone();
        if *watch.borrow() {
            return HeadRead::Closed;
        }
        tokio::select! {
            biased;
            read = read_head(c) => return read,
            _ = watch.changed() => {}
        }
        if c.buf.is_empty() {
            return HeadRead::Closed;
        }
    }
    read_head(c).await
}

/// A refused head's method and path as the access log keeps them: never the query string (it may
/// carry secrets).
fn seen_for_log((method, target): (&str, &str)) -> Seen {
    let method = http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
    (method, target.split('?').next().unwrap_or("").to_string())
}

#[async_trait]
impl<S: Service> ServerApp for Door<S> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.service.limits();
        let _open = if S::COUNTED {
            Some(drain::admit(limits.max_connections)?)
        } else {
            None
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            Box::pin(http2::serve(
                &self.service,
                &self.pipeline,
                stream,
                &limits,
                shutdown,
            ))
            .await;
            return None;
        }
        let mut c = Conn::new(stream, limits);
        loop {
            match next_head::<S>(&mut c, shutdown).await {
                HeadRead::Complete => {}
                HeadRead::Closed => return None,
                HeadRead::TooLarge => {
                    // The head did not fit in `limits.max_head_bytes`: 431, as nginx and HAProxy do.
                    Box::pin(self.refuse(&mut c, Refusal::HeadTooLarge, None)).await;
                    return None;
                }
            }
            if c.served == 0 && self.service.h2c() && c.buf.starts_with(H2_PREFACE_HEAD) {
                // HTTP/2 with prior knowledge: the whole connection is HTTP/2's. The HTTP/1
                // buffers are dropped here, not held for the life of the connection.
                let Conn { stream, buf, .. } = c;
                let rewound: Stream = Box::new(fence::Fenced::rewound(stream, buf));
                Box::pin(http2::serve(
                    &self.service,
                    &self.pipeline,
                    rewound,
                    &limits,
                    shutdown,
                ))
                .await;
                return None;
            }
            // Everything after the head runs in a boxed future: an idle keep-alive connection's task
            // then holds only what waiting for a head needs, none of a request's state.
            let other = match self.judge(&mut c, shutdown) {
                Judged::Engine(serving) => match serving.await {
                    Next::KeepAlive => None,
                    Next::Close => return None,
                },
                Judged::Pipeline(ends) => Some(Ok(ends)),
                Judged::Refused(why, seen) => Some(Err((why, seen))),
            };
            match other {
                None => {}
                Some(Ok(ends)) => c = Box::pin(self.pipeline_one(c, ends, shutdown)).await?,
                Some(Err((why, seen))) => {
                    // What follows a malformed head cannot be trusted to be a request.
                    Box::pin(self.refuse(&mut c, why, seen)).await;
                    return None;
                }
            }
            c.served = c.served.saturating_add(1);
        }
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.first_request).await;
        ServerApp::cleanup(&*self.pipeline).await
    }
}

#[cfg(test)]
mod tests;
