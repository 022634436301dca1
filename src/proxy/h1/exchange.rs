//! The engine's exchange with an upstream: connecting, sending the request and its body, reading
//! the response head, and relaying the response body to the client.

use super::body::{self, Chunked, Framing};
use super::head::ResponseHead;
use super::pool;
use super::shadow::{ShadowCopy, Tap};
use super::{write_client, Conn, MAX_HEAD, MAX_RESPONSE_FIELDS, READ_CHUNK};
use crate::front::head_complete;
use crate::metrics::UpstreamError;
use crate::proxy::{pick_backend, Answer, Ctx, Proxy};
use crate::release::{Decision, UpstreamId};
use crate::state::Snapshot;
use crate::upstream::Timeouts;
use bytes::{Buf, BytesMut};
use pingora::lb::Backend;
use pingora::time::fast_timeout::fast_timeout;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why an upstream exchange failed.
pub(super) struct Failed {
    pub(super) kind: UpstreamError,
    /// Nothing reached the client yet and retrying on a fresh connection is safe.
    pub(super) retry: bool,
}

/// Opens a new upstream connection.
pub(super) async fn connect(
    addr: SocketAddr,
    timeout: Option<Duration>,
) -> Result<TcpStream, UpstreamError> {
    let conn = match timeout {
        Some(t) => match fast_timeout(t, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => return Err(UpstreamError::ConnectTimeout),
        },
        None => TcpStream::connect(addr).await,
    };
    let conn = conn.map_err(|_| UpstreamError::ConnectFailure)?;
    // Heads go out in one write each; small ones must not wait for an ACK.
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

/// An upstream connection for a request, and where it goes.
pub(super) struct Connected {
    pub(super) up: TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) target: UpstreamId,
    pub(super) timeouts: Timeouts,
    pub(super) reused: bool,
    /// When it was ready: the upstream's time to first byte counts from here.
    pub(super) ready: Instant,
}

/// A connection to `picked`, the backend chosen for the request: a kept-alive one of this thread's
/// pool unless `fresh_only`, else a new one. After a connect failure the backend is passed over (by
/// the next requests too) and another not tried yet is taken, of the target's pool or else the
/// baseline's (policy::retry); nothing was sent yet. Counts the connection, new or reused.
pub(super) async fn connect_for(
    proxy: &Proxy,
    ctx: &mut Ctx,
    snapshot: &Snapshot,
    decision: &Decision,
    picked: &mut Option<(UpstreamId, Backend)>,
    fresh_only: bool,
) -> Result<Connected, Answer> {
    loop {
        let Some((target, backend)) = picked.take() else {
            proxy.record_upstream_error(ctx, UpstreamError::NoHealthyUpstream);
            return Err(if ctx.failed.is_empty() {
                Answer::NoHealthyUpstream
            } else {
                Answer::UpstreamUnavailable
            });
        };
        ctx.target = Some(target);
        let (Some(pool), Some(addr)) = (snapshot.pools.get(target), backend.addr.as_inet()) else {
            return Err(Answer::InternalError);
        };
        let addr = *addr;
        ctx.backend = Some(backend);
        let timeouts = pool.timeouts();
        let pooled = (!fresh_only)
            .then(|| pool::take(addr, timeouts.idle.unwrap_or(pool::DEFAULT_IDLE)))
            .flatten();
        let reused = pooled.is_some();
        let up = match pooled {
            Some(up) => up,
            None => match connect(addr, timeouts.connect).await {
                Ok(up) => up,
                Err(kind) => {
                    proxy.record_upstream_error(ctx, kind);
                    pool.connect_failed(addr);
                    ctx.failed.push(addr);
                    ctx.backend = None;
                    *picked = pick_backend(snapshot, decision, &ctx.failed);
                    if picked.is_some() {
                        continue;
                    }
                    return Err(Answer::for_upstream(kind));
                }
            },
        };
        if let Some(series) = proxy.series(ctx, target) {
            series.record_connection(reused);
        }
        return Ok(Connected {
            up,
            addr,
            target,
            timeouts,
            reused,
            ready: Instant::now(),
        });
    }
}

/// Counts the upstream's time to its response head, from when its connection was ready.
pub(super) fn record_ttfb(proxy: &Proxy, ctx: &mut Ctx, target: UpstreamId, ready: Instant) {
    let us = ready.elapsed().as_micros() as u64;
    ctx.upstream_ttfb_us = Some(us);
    if let Some(series) = proxy.series(ctx, target) {
        series.record_ttfb(us);
    }
}

/// Runs `io` under an optional timeout; a timeout reads as `TimedOut`.
pub(super) async fn within<T>(
    timeout: Option<Duration>,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match timeout {
        Some(t) => fast_timeout(t, io)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => io.await,
    }
}

pub(super) fn upstream_failure(e: &std::io::Error, nothing_received: bool) -> Failed {
    use std::io::ErrorKind::*;
    let kind = match e.kind() {
        TimedOut => UpstreamError::Timeout,
        _ => UpstreamError::Closed,
    };
    Failed {
        kind,
        retry: nothing_received && kind == UpstreamError::Closed,
    }
}

/// Sends the upstream head (with the body part read so far), then the rest of the body from the
/// client, copied to the shadow copy if there is one; the copy is sent once the body is complete.
/// `Err(None)`: the client went away.
pub(super) async fn send_request(
    c: &mut Conn,
    up: &mut TcpStream,
    body_left: &mut u64,
    shadow: &mut Option<ShadowCopy>,
    timeout: Option<Duration>,
) -> Result<(), Option<Failed>> {
    within(timeout, up.write_all(&c.req_out))
        .await
        .map_err(|e| Some(upstream_failure(&e, true)))?;
    while *body_left > 0 {
        if c.buf.is_empty() {
            c.buf.reserve(READ_CHUNK);
            // A client that stops sending its body for `body_timeout` is taken as gone.
            match fast_timeout(c.limits.body_timeout, c.stream.read_buf(&mut c.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(None),
            }
        }
        let n = (c.buf.len() as u64).min(*body_left) as usize;
        within(timeout, up.write_all(&c.buf[..n]))
            .await
            .map_err(|e| Some(upstream_failure(&e, false)))?;
        if let Some(s) = shadow.as_mut() {
            s.push_body(&c.buf[..n]);
        }
        c.buf.advance(n);
        *body_left -= n as u64;
        if *body_left == 0 {
            if let Some(s) = shadow.take() {
                s.send();
            }
        }
    }
    Ok(())
}

/// Reads until `c.up_buf` holds a whole response head, relaying 1xx interim responses (other than
/// 101) to the client as they come.
pub(super) async fn read_response_head(
    c: &mut Conn,
    up: &mut TcpStream,
    timeout: Option<Duration>,
) -> Result<(), Option<Failed>> {
    c.up_buf.clear();
    let mut received = false;
    loop {
        read_head(&mut c.up_buf, up, timeout, &mut received).await?;
        let n = match interim_len(&c.up_buf) {
            None => return Ok(()),
            Some(Ok(n)) => n,
            Some(Err(())) => return Err(Some(invalid())),
        };
        if !write_client(&mut c.stream, &c.up_buf[..n], false, c.limits.send_timeout).await {
            return Err(None);
        }
        c.up_buf.advance(n);
    }
}

/// Reads until `up_buf` holds a whole head (interim or final); `received` tells whether anything
/// came from the upstream for this request yet.
pub(super) async fn read_head(
    up_buf: &mut BytesMut,
    up: &mut TcpStream,
    timeout: Option<Duration>,
    received: &mut bool,
) -> Result<(), Failed> {
    while !head_complete(up_buf) {
        if up_buf.len() > MAX_HEAD {
            return Err(invalid());
        }
        up_buf.reserve(READ_CHUNK);
        match within(timeout, up.read_buf(up_buf)).await {
            Ok(0) => {
                return Err(Failed {
                    kind: UpstreamError::Closed,
                    retry: !*received,
                })
            }
            Ok(_) => *received = true,
            Err(e) => return Err(upstream_failure(&e, !*received)),
        }
    }
    Ok(())
}

/// For a buffer holding a whole response head: `None` when it is a final response (parsed once,
/// later, by `write_response_head`), else the length of the interim 1xx response at its start.
pub(super) fn interim_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    // An interim response is found by its status line.
    if !matches!(
        buf.get(..10),
        Some([b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', b'1'])
    ) {
        return None;
    }
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    Some(
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) if resp.code != Some(101) => Ok(n),
            _ => Err(()),
        },
    )
}

pub(super) fn invalid() -> Failed {
    Failed {
        kind: UpstreamError::InvalidResponse,
        retry: false,
    }
}

/// How relaying a response went.
pub(super) struct Relayed {
    pub(super) status: u16,
    pub(super) upstream_error: Option<UpstreamError>,
    pub(super) upstream_reusable: bool,
    pub(super) client_ok: bool,
    pub(super) client_close: bool,
    /// Body bytes relayed to the client (content, without chunked framing).
    pub(super) body_bytes: u64,
}

/// Relays the response whose head is in `c.resp_out` (and whose bytes are in `c.up_buf`), and its
/// body, to the client; `tap` keeps the start of the body for a mirror's comparison.
pub(super) async fn relay_response(
    c: &mut Conn,
    up: &mut TcpStream,
    head: ResponseHead,
    close: bool,
    timeout: Option<Duration>,
    mut tap: Option<&mut Tap>,
) -> Relayed {
    let mut body_bytes = 0u64;
    let mut payload = |d: &[u8]| {
        body_bytes += d.len() as u64;
        if let Some(t) = tap.as_mut() {
            t.push(d);
        }
    };
    let mut relayed = Relayed {
        status: head.status,
        upstream_error: None,
        upstream_reusable: false,
        client_ok: true,
        client_close: close || head.framing == Framing::UntilClose,
        body_bytes: 0,
    };
    c.up_buf.advance(head.head_len);
    let mut body = BodyReader::new(head.framing);
    // What of the body came with the head goes out with it, in one write.
    let mut done = body.part(&c.up_buf, Some(&mut c.resp_out), &mut payload);
    loop {
        let extra = match done {
            Ok(Some(used)) => c.up_buf.len() > used,
            Ok(None) => false,
            Err(_) => {
                relayed.upstream_error = Some(UpstreamError::InvalidResponse);
                false
            }
        };
        let last = !matches!(done, Ok(None)) && relayed.client_close;
        if !write_client(&mut c.stream, &c.resp_out, last, c.limits.send_timeout).await {
            relayed.client_ok = false;
            relayed.body_bytes = body_bytes;
            return relayed;
        }
        if !matches!(done, Ok(None)) {
            relayed.upstream_reusable = done.is_ok() && !extra && head.upstream_keepalive;
            break;
        }
        c.up_buf.clear();
        c.up_buf.reserve(READ_CHUNK);
        match within(timeout, up.read_buf(&mut c.up_buf)).await {
            Ok(0) if head.framing == Framing::UntilClose => break,
            Ok(0) => {
                relayed.upstream_error = Some(UpstreamError::Closed);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                relayed.upstream_error = Some(upstream_failure(&e, false).kind);
                break;
            }
        }
        c.resp_out.clear();
        done = body.part(&c.up_buf, Some(&mut c.resp_out), &mut payload);
    }
    if relayed.upstream_error.is_some() {
        // The client has a head and part of a body: only closing tells it the body is cut short.
        relayed.client_close = true;
    }
    relayed.body_bytes = body_bytes;
    relayed
}

/// Where a message body stands as it is read piece by piece.
pub(super) struct BodyReader {
    framing: Framing,
    /// Bytes still to come under `Framing::Length`.
    left: u64,
    chunked: Chunked,
}

impl BodyReader {
    pub(super) fn new(framing: Framing) -> Self {
        BodyReader {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: Chunked::default(),
        }
    }

    /// Takes the part of `data` that belongs to the body, appending it to `out` when given, and
    /// handing its content (chunked framing removed) to `payload`. `Ok(Some(used))` once the body is
    /// complete, with how many bytes of `data` it took.
    pub(super) fn part(
        &mut self,
        data: &[u8],
        mut out: Option<&mut Vec<u8>>,
        payload: &mut impl FnMut(&[u8]),
    ) -> Result<Option<usize>, body::BadChunk> {
        let mut keep = |d: &[u8]| {
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(d);
            }
        };
        Ok(match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(_) => {
                let n = (data.len() as u64).min(self.left) as usize;
                keep(&data[..n]);
                payload(&data[..n]);
                self.left -= n as u64;
                (self.left == 0).then_some(n)
            }
            Framing::Chunked => {
                let n = self.chunked.advance_with(data, &mut *payload)?;
                keep(&data[..n]);
                self.chunked.done().then_some(n)
            }
            Framing::UntilClose => {
                keep(data);
                payload(data);
                None
            }
        })
    }
}
