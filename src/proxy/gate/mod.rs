//! The gate in front of Pingora's HTTP/1 pipeline. Pingora reads a request head with a timeout per
//! read, not per head, and accepts heads up to 1 MiB; its own refusals are plain-text 400s that never
//! reach the access log. So on every HTTP/1 connection Pingora serves — all of them when
//! `server.http1_engine` is false, and those the engine hands over — the gate reads each head first,
//! under the same rules as the engine:
//!
//! - the whole head must arrive within `limits.header_timeout` of its first byte (of accept, for a
//!   connection's first request), and be at most `limits.max_head_bytes` (431 above);
//! - a head the HTTP/1 parser cannot read is refused with a JSON 400, logged like any request;
//! - between requests the connection waits `limits.keepalive_timeout` holding no read buffer, during a
//!   drain too: a request may be on its way, and its answer says `Connection: close`;
//! - pipelined requests are served in order: the gate hands Pingora one request (its head and, when
//!   its length is declared, its body bytes already read) and keeps what follows for the next round;
//!   while Pingora serves it, its reads stop where the request ends ([`fence`]).
//!
//! Everything after the head — the request rules, routing, the exchange — is Pingora's pipeline with
//! Switchyard's `ProxyHttp` hooks. The gate knows no routing and no engine code.

mod fence;

use super::{drain, request_id, Answer, Ctx, Proxy, REQUEST_ID_HEADER};
use crate::config::Limits;
use crate::metrics::Rejection;
use crate::policy::request::{self, Refusal};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every connection on Pingora's pipeline, behind the gate: the app of the listeners when the
/// HTTP/1 engine is switched off (`server.http1_engine: false`).
pub struct Pipeline {
    proxy: Proxy,
    full: Arc<HttpProxy<Proxy>>,
    /// How long a connection accepted just before shutdown has to send its first request.
    first_request: Duration,
}

impl Pipeline {
    pub fn new(proxy: Proxy, full: HttpProxy<Proxy>, first_request: Duration) -> Self {
        Pipeline {
            proxy,
            full: Arc::new(full),
            first_request,
        }
    }
}

#[async_trait]
impl ServerApp for Pipeline {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = drain::admit(self.proxy.limits().max_connections)?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.full.process_new(stream, shutdown).await;
        }
        let first = Connection {
            stream,
            buf: BytesMut::new(),
            served: 0,
        };
        serve(&self.proxy, &self.full, first, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.first_request).await;
        ServerApp::cleanup(&*self.full).await
    }
}

/// A client connection as the gate takes it: the bytes already read from it, and how many requests
/// it has had answered.
pub(crate) struct Connection {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    pub(crate) served: u32,
}

/// What the gate needs of the service behind it: its limits, whether it takes h2c, and how it answers
/// a head it refuses.
#[async_trait]
pub(crate) trait Front: Send + Sync {
    fn limits(&self) -> Limits;
    fn h2c(&self) -> bool;
    async fn refuse(&self, stream: &mut Stream, why: Refused, limits: &Limits);
}

#[async_trait]
impl Front for Proxy {
    fn limits(&self) -> Limits {
        Proxy::limits(self)
    }
    fn h2c(&self) -> bool {
        Proxy::h2c(self)
    }
    async fn refuse(&self, stream: &mut Stream, why: Refused, limits: &Limits) {
        refuse(self, stream, why, limits).await
    }
}

/// Serves `c` on Pingora's HTTP server `full` (the proxy pipeline, or the admin API), request by
/// request, each head read by the gate first.
pub(crate) async fn serve<F: Front, A: HttpServerApp + Send + Sync + 'static>(
    front: &F,
    full: &Arc<A>,
    c: Connection,
    shutdown: &ShutdownWatch,
) -> Option<Stream> {
    let Connection {
        mut stream,
        mut buf,
        mut served,
    } = c;
    let limits = front.limits();
    loop {
        match read_head(&mut stream, &mut buf, &limits, served).await {
            HeadRead::Closed => return None,
            HeadRead::TooLarge => {
                front
                    .refuse(&mut stream, (Refusal::HeadTooLarge, None), &limits)
                    .await;
                return None;
            }
            HeadRead::Complete => {}
        }
        if served == 0 && front.h2c() && buf.starts_with(H2_PREFACE_HEAD) {
            // HTTP/2 with prior knowledge: the whole connection is Pingora's HTTP/2 server's.
            let rewound: Stream = Box::new(fence::Fenced::rewound(stream, buf));
            return full.process_new(rewound, shutdown).await;
        }
        let ends = match inspect(&buf, limits.max_head_bytes) {
            Ok(ends) => ends,
            Err(why) => {
                front.refuse(&mut stream, why, &limits).await;
                return None;
            }
        };
        // This request's bytes go to Pingora; what follows them is the next request's.
        let (rest, fence) = match ends {
            Some(end) if end <= buf.len() as u64 => (buf.split_off(end as usize), Some(0)),
            Some(end) => (BytesMut::new(), Some(end - buf.len() as u64)),
            None => (BytesMut::new(), None),
        };
        let fenced: Stream = Box::new(fence::Fenced::new(stream, fence));
        let mut session = ServerSession::new_http1(fenced);
        session.set_pipelined_prefix(std::mem::replace(&mut buf, rest));
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(limits.keepalive_timeout.as_secs().max(1))
        });
        // What is left of `max_requests_per_connection`, as reuses after this request: none left
        // makes Pingora answer `Connection: close`.
        let left = limits.max_requests_per_connection.saturating_sub(served);
        session.set_keepalive_reuses_remaining(Some(left.saturating_sub(1)));
        let reused = full.process_new_http(session, shutdown).await?;
        // Keep-alive and the count of requests are the gate's; the bytes of the next request are in
        // the gate's buffer, then in the fence.
        let fenced = reused
            .consume()
            .0
            .into_any()
            .downcast::<fence::Fenced>()
            .ok()?;
        let (inner, next) = fenced.into_parts();
        stream = inner;
        if !next.is_empty() {
            buf.extend_from_slice(&next);
        }
        served = served.saturating_add(1);
    }
}

/// The HTTP/2 connection preface up to its first blank line, which reads as a complete HTTP/1 head
/// (`PRI * HTTP/2.0`): a plain connection that opens with it speaks HTTP/2 (h2c, prior knowledge).
pub(crate) const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// How long a kept-alive connection waits for its next request holding a read buffer.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// What one read of a head asks for.
const READ_CHUNK: usize = 4096;

enum HeadRead {
    Complete,
    Closed,
    TooLarge,
}

/// Reads until `buf` holds a whole request head, under `limits.header_timeout` for the head and
/// `limits.keepalive_timeout` before its first byte. An idle connection holds no buffer.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &Limits,
    served: u32,
) -> HeadRead {
    let started = Instant::now();
    let mut deadline = (served == 0).then(|| started + limits.header_timeout);
    // Whether the buffer was given back during this wait (then reads take a few bytes at a time
    // until the head begins). A buffer empty for any other reason gets a head's worth of room.
    let mut released = false;
    loop {
        if head_complete(buf) {
            return HeadRead::Complete;
        }
        if buf.len() > limits.max_head_bytes {
            return HeadRead::TooLarge;
        }
        let read = if buf.is_empty() {
            // Waiting for a request, also once shutdown has begun (a request may already be on its
            // way; its answer will say `Connection: close`). After IDLE_RELEASE the buffer is given
            // back, and the wait goes on holding none (the next read takes a few bytes, then the
            // buffer grows again).
            if !released {
                buf.reserve(READ_CHUNK);
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => limits.keepalive_timeout.saturating_sub(started.elapsed()),
            };
            let release = deadline.is_none() && !released && wait > IDLE_RELEASE;
            let wait = if release { IDLE_RELEASE } else { wait };
            let r = fast_timeout(wait, stream.read_buf(buf)).await;
            if release && r.is_err() && buf.is_empty() {
                *buf = BytesMut::new();
                released = true;
                continue;
            }
            r
        } else {
            let d = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            fast_timeout(
                d.saturating_duration_since(Instant::now()),
                stream.read_buf(buf),
            )
            .await
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return HeadRead::Closed,
        }
    }
}

/// Whether `buf` holds a whole head (up to its empty line; a bare LF ends lines too).
pub(crate) fn head_complete(buf: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let at = i + p + 1;
        match buf.get(at..) {
            Some([b'\n', ..]) | Some([b'\r', b'\n', ..]) => return true,
            _ => i = at,
        }
    }
    false
}

/// The head of an answer Switchyard makes itself, on either path's wire: status, JSON content type and
/// length, request id, and `Connection: close` when the connection ends after it.
pub(crate) fn answer_head(
    out: &mut Vec<u8>,
    status: u16,
    length: usize,
    request_id: &str,
    close: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.clear();
    let close = if close { "connection: close\r\n" } else { "" };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{REQUEST_ID_HEADER}: {request_id}\r\n{close}\r\n"
    );
}

/// A head the gate refused, with the method and path for the access log when they could be read.
pub(crate) type Refused = (Refusal, Option<(http::Method, String)>);

/// Parses the complete head at the start of `buf` as Pingora will, applies the shared request rules
/// that need the head as sent (target, Host, framing: Pingora's parser would merge or drop what they
/// look at), and answers where the request ends: its head plus its declared length, counted from the
/// start of `buf`. `None` when only Pingora's pipeline can tell: a chunked body, an upgrade, or
/// CONNECT (which the pipeline refuses).
pub(crate) fn inspect(buf: &[u8], max_head_bytes: usize) -> Result<Option<u64>, Refused> {
    let mut fields = [httparse::EMPTY_HEADER; request::MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err((Refusal::HeadTooLarge, None)),
        Ok(httparse::Status::Partial) | Err(_) => return Err((Refusal::MalformedHead, None)),
    };
    if head > max_head_bytes {
        return Err((Refusal::HeadTooLarge, None));
    }
    let (Some(method), Some(raw_target)) = (req.method, req.path) else {
        return Err((Refusal::MalformedHead, None));
    };
    if method == "CONNECT" {
        return Ok(None);
    }
    let seen = || {
        http::Method::from_bytes(method.as_bytes())
            .ok()
            .map(|m| (m, raw_target.to_string()))
    };
    let target = request::target(raw_target).map_err(|why| (why, seen()))?;
    // Up to four values of each field the rules read; more are refused as such.
    let (mut hosts, mut h) = ([&b""[..]; 4], 0);
    let (mut lengths, mut l) = ([&b""[..]; 4], 0);
    let (mut codings, mut c) = ([&b""[..]; 4], 0);
    let mut upgrade = false;
    for f in req.headers.iter() {
        upgrade |= f.name.eq_ignore_ascii_case("upgrade");
        let (values, n, over) = if f.name.eq_ignore_ascii_case("host") {
            (&mut hosts, &mut h, Refusal::DuplicateHost)
        } else if f.name.eq_ignore_ascii_case("content-length") {
            (&mut lengths, &mut l, Refusal::InvalidLength)
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            (&mut codings, &mut c, Refusal::InvalidTransferEncoding)
        } else {
            continue;
        };
        *values.get_mut(*n).ok_or_else(|| (over, seen()))? = f.value;
        *n += 1;
    }
    request::host(&hosts[..h], target.authority, req.version == Some(0))
        .map_err(|why| (why, seen()))?;
    let length = request::framing(&lengths[..l], &codings[..c]).map_err(|why| (why, seen()))?;
    if c > 0 || upgrade {
        return Ok(None);
    }
    Ok(Some((head as u64).saturating_add(length.unwrap_or(0))))
}

/// Answers a head the gate refused (JSON, `Connection: close`) and logs it like any request.
async fn refuse(proxy: &Proxy, stream: &mut Stream, (why, seen): Refused, limits: &Limits) {
    let mut ctx = Ctx {
        rejected: Some(Rejection::InvalidRequest),
        request_id: request_id::settle(None),
        ..Ctx::default()
    };
    let answer = Answer::Refused(why);
    let (status, body) = (answer.status(), answer.body());
    let mut out = Vec::new();
    answer_head(&mut out, status, body.len(), &ctx.request_id, true);
    out.extend_from_slice(body.as_bytes());
    let write = async { stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok() };
    let sent = fast_timeout(limits.send_timeout, write)
        .await
        .unwrap_or(false);
    proxy.record(&mut ctx, if sent { status } else { 499 }, || {
        let (method, path) = seen.unwrap_or_default();
        super::access_log::RequestLog {
            method,
            path,
            ..Default::default()
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_takes_its_head_and_declared_body_and_leaves_the_next() {
        let one = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let two = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let both = [&one[..], &two[..]].concat();
        let end = |n: usize| Ok(Some(n as u64));
        assert_eq!(inspect(&both, 32768), end(one.len()));
        assert_eq!(inspect(two, 32768), end(two.len()));
        // Body bytes still to come.
        assert_eq!(inspect(&one[..one.len() - 1], 32768), end(one.len()));
    }

    #[test]
    fn chunked_upgrade_or_connect_end_where_pingora_says() {
        let chunked =
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET";
        assert_eq!(inspect(chunked, 32768), Ok(None));
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(inspect(upgrade, 32768), Ok(None));
        let connect = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nxyz";
        assert_eq!(inspect(connect, 32768), Ok(None));
    }

    #[test]
    fn unparsable_or_oversized_heads_are_refused() {
        let refused = |head: &[u8], max| inspect(head, max).map_err(|(why, _)| why);
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n", 32768),
            Err(Refusal::MalformedHead)
        );
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 16),
            Err(Refusal::HeadTooLarge)
        );
        let many: String = (0..=request::MAX_FIELDS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(head.as_bytes(), 32768), Err(Refusal::HeadTooLarge));
    }

    #[test]
    fn the_shared_rules_see_the_head_as_sent() {
        let refused =
            |head: &[u8]| inspect(head, 32768).map_err(|(why, seen)| (why, seen.map(|s| s.1)));
        let path = Some("/a".to_string());
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
            Err((Refusal::DuplicateHost, path.clone()))
        );
        assert_eq!(
            refused(
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            Err((Refusal::InvalidLength, path.clone()))
        );
        assert_eq!(
            refused(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err((Refusal::LengthWithTransferEncoding, path))
        );
        assert_eq!(
            refused(b"GET /a/%2e%2e/%2e%2e/b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err((Refusal::AboveRoot, Some("/a/%2e%2e/%2e%2e/b".to_string())))
        );
        // Equal lengths collapse into one.
        let same =
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(refused(same), Ok(Some(same.len() as u64)));
    }

    #[test]
    fn a_head_ends_at_its_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!head_complete(b""));
    }
}
