//! Dark releases on the engine (SPEC §5): the shadow copy of a sampled request, sent to the route's
//! `mirror.to` from a task of its own, and the capture of both answers for the comparison.
//!
//! The copy is the primary's upstream head, marked `X-Switchyard-Shadow: 1`, plus its body, which is
//! copied as the primary reads it (the body is at most `max_body_bytes`: longer ones are never
//! admitted). A request without a body is sent to the shadow at once, before the primary's upstream
//! is even connected; one with a body once the body is complete. The client never waits for the
//! shadow: its task reads the shadow's whole answer under `mirror.timeout`, on the same per-thread
//! connection pool as the primary, then compares it with the primary's answer when `compare` is set.
//! Admission, counting and the comparison are the ones the Pingora path uses (`proxy::mirror`).

use super::body::Framing;
use super::exchange::{connect, interim_len, within, BodyReader};
use super::head::write_response_head;
use super::{pool, MAX_HEAD, READ_CHUNK};
use crate::front::head_complete;
use crate::metrics::{Metrics, MirrorOutcome};
use crate::proxy::mirror::{self, Captured, InFlight, Meta};
use crate::proxy::SHADOW_HEADER;
use crate::release::mirror::Compare;
use crate::release::{Mirror, RouteId, UpstreamId};
use crate::state::Snapshot;
use crate::upstream::Timeouts;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The start of a response body, kept for the comparison.
pub(super) struct Tap {
    pub(super) captured: Captured,
    limit: usize,
}

impl Tap {
    pub(super) fn push(&mut self, data: &[u8]) {
        self.captured.push_body(data, self.limit);
    }
}

/// The primary's answer as it is relayed, handed to the shadow's task once complete.
pub(super) struct PrimaryTap {
    pub(super) tap: Tap,
    to_shadow: oneshot::Sender<Captured>,
}

impl PrimaryTap {
    /// The primary's answer was relayed whole: the shadow's task may compare.
    pub(super) fn finish(self) {
        let _ = self.to_shadow.send(self.tap.captured);
    }
}

/// A shadow copy being assembled while the primary reads its request.
pub(super) struct ShadowCopy {
    bytes: Vec<u8>,
    job: Option<Box<Job>>,
}

/// What the shadow's task needs besides the request bytes.
struct Job {
    /// `None` when the mirror target has no healthy backend.
    addr: Option<SocketAddr>,
    timeouts: Timeouts,
    /// Where the same request goes a second time to learn the noise (the primary's upstream).
    noise: Option<(SocketAddr, Timeouts)>,
    head_request: bool,
    replayable: bool,
    request_id: String,
    compare: Option<(oneshot::Receiver<Captured>, Compare)>,
    meta: Meta,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
}

/// The primary's request as the shadow copy starts from it.
pub(super) struct Primary<'a> {
    /// The upstream head the primary sends, ending with its empty line.
    pub(super) head: &'a [u8],
    pub(super) method: &'a str,
    pub(super) target: &'a str,
    pub(super) body_len: Option<u64>,
    pub(super) idempotent: bool,
    pub(super) request_id: &'a str,
    /// The upstream the primary goes to.
    pub(super) served_by: UpstreamId,
}

impl ShadowCopy {
    /// Admits a copy of `primary` (or counts why not) and starts it with its head.
    pub(super) fn start(
        metrics: &Arc<Metrics>,
        snapshot: &Snapshot,
        m: &Mirror,
        route: RouteId,
        primary: Primary<'_>,
    ) -> Option<(ShadowCopy, Option<Box<PrimaryTap>>)> {
        let in_flight = mirror::admit(metrics, snapshot, m, route, primary.body_len)?;
        let pool = snapshot.pools.get(m.to);
        let addr = pool
            .and_then(|p| p.select(&[]))
            .and_then(|b| b.addr.as_inet().copied());
        let body = primary.body_len.is_some_and(|n| n > 0);
        let noise = m
            .compare
            .as_ref()
            .filter(|c| c.learns_noise_from(primary.method, body, &mut || rand::random()))
            .and_then(|_| {
                let pool = snapshot.pools.get(primary.served_by)?;
                let addr = pool.select(&[])?.addr.as_inet().copied()?;
                Some((addr, pool.timeouts()))
            });
        let (compare, tap) = match &m.compare {
            Some(c) => {
                let (tx, rx) = oneshot::channel();
                let tap = PrimaryTap {
                    tap: Tap {
                        captured: Captured::default(),
                        limit: c.max_body_bytes,
                    },
                    to_shadow: tx,
                };
                (Some((rx, c.clone())), Some(Box::new(tap)))
            }
            None => (None, None),
        };
        let head = primary.head;
        let mut bytes = Vec::with_capacity(
            head.len() + SHADOW_HEADER.len() + 4 + primary.body_len.unwrap_or(0) as usize,
        );
        // The head ends with "\r\n\r\n": the marker goes before the empty line.
        bytes.extend_from_slice(&head[..head.len().saturating_sub(2)]);
        bytes.extend_from_slice(SHADOW_HEADER.as_bytes());
        bytes.extend_from_slice(b": 1\r\n\r\n");
        let job = Job {
            addr,
            timeouts: pool.map(|p| p.timeouts()).unwrap_or_default(),
            noise,
            head_request: primary.method == "HEAD",
            replayable: primary.idempotent,
            request_id: primary.request_id.to_string(),
            compare,
            meta: Meta::new(
                snapshot,
                m,
                route,
                primary.request_id,
                primary.method,
                primary.target,
            ),
            metrics: metrics.clone(),
            in_flight,
        };
        Some((
            ShadowCopy {
                bytes,
                job: Some(Box::new(job)),
            },
            tap,
        ))
    }

    /// More of the primary's request body.
    pub(super) fn push_body(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// The request is complete: the shadow's task takes it from here.
    pub(super) fn send(mut self) {
        if let Some(job) = self.job.take() {
            tokio::spawn(run(std::mem::take(&mut self.bytes), job));
        }
    }
}

impl Drop for ShadowCopy {
    /// A copy never sent (the primary's body never arrived whole) is counted as dropped.
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.in_flight.record(&job.metrics, MirrorOutcome::Dropped);
        }
    }
}

async fn run(bytes: Vec<u8>, job: Box<Job>) {
    let Job {
        addr,
        timeouts,
        noise,
        head_request,
        replayable,
        request_id,
        compare,
        meta,
        metrics,
        in_flight,
    } = *job;
    let limit = compare.as_ref().map_or(0, |(_, c)| c.max_body_bytes);
    let call = |timeouts| Call {
        bytes: &bytes,
        timeouts,
        head_request,
        request_id: &request_id,
        limit,
    };
    let shadow = async {
        let addr = addr.ok_or(())?;
        let mut shadow = Captured::default();
        exchange(call(timeouts), addr, replayable, &mut shadow).await?;
        Ok::<_, ()>(shadow)
    };
    let noise = async {
        let (addr, timeouts) = noise?;
        let mut answer = Captured::default();
        let got = exchange(call(timeouts), addr, replayable, &mut answer);
        tokio::time::timeout(meta.timeout, got).await.ok()?.ok()?;
        Some(answer)
    };
    let (exchanged, noise) = tokio::join!(tokio::time::timeout(meta.timeout, shadow), noise);
    let shadow = match exchanged {
        Err(_) => return in_flight.record(&metrics, MirrorOutcome::Timeout),
        Ok(Err(())) => return in_flight.record(&metrics, MirrorOutcome::Error),
        Ok(Ok(shadow)) => shadow,
    };
    let Some((primary, cfg)) = compare else {
        return;
    };
    // The primary may still be relaying its body; it always ends, but do not wait forever.
    let Ok(Ok(primary)) = tokio::time::timeout(Duration::from_secs(300), primary).await else {
        return;
    };
    let answers = mirror::Answers {
        primary: &primary,
        shadow: &shadow,
        noise: noise.as_ref(),
    };
    mirror::judge(answers, &cfg, meta, &metrics, &in_flight);
}

/// One shadow request, as sent.
struct Call<'a> {
    bytes: &'a [u8],
    timeouts: Timeouts,
    head_request: bool,
    request_id: &'a str,
    /// Body bytes kept for the comparison.
    limit: usize,
}

/// Sends the copy and reads the shadow's whole answer into `shadow`. A kept-alive connection found
/// closed before any answer is replaced by a new one once, when the request is safe to repeat.
async fn exchange(
    call: Call<'_>,
    addr: SocketAddr,
    replayable: bool,
    shadow: &mut Captured,
) -> Result<(), ()> {
    let t = call.timeouts;
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            pool::take(addr, t.idle.unwrap_or(pool::DEFAULT_IDLE))
        };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(up) => up,
            None => connect(addr, t.connect).await.map_err(|_| ())?,
        };
        match once(&call, &mut up, shadow).await {
            Ok(reusable) => {
                if reusable {
                    pool::put(addr, up);
                }
                return Ok(());
            }
            Err(Stale) if reused && replayable => {
                fresh_only = true;
                *shadow = Captured::default();
            }
            Err(_) => return Err(()),
        }
    }
}

/// Why a shadow exchange failed: `Stale` when the connection closed before any answer.
enum Failure {
    Stale,
    Other,
}
use Failure::{Other, Stale};

/// One try on one connection; `Ok(reusable)` once the whole answer is in.
async fn once(call: &Call<'_>, up: &mut TcpStream, shadow: &mut Captured) -> Result<bool, Failure> {
    let t = call.timeouts;
    within(t.write, up.write_all(call.bytes))
        .await
        .map_err(|_| Stale)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut received = false;
    loop {
        if head_complete(&buf) {
            match interim_len(&buf) {
                None => break,
                Some(Ok(n)) => {
                    buf.advance(n);
                    continue;
                }
                Some(Err(())) => return Err(Other),
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(Other);
        }
        buf.reserve(READ_CHUNK);
        match within(t.read, up.read_buf(&mut buf)).await {
            Ok(n) if n > 0 => received = true,
            _ if received => return Err(Other),
            _ => return Err(Stale),
        }
    }
    // Only the head's parse is wanted: the client of a shadow is nobody.
    let mut out = Vec::new();
    let head = write_response_head(
        &mut out,
        &buf,
        call.head_request,
        call.request_id,
        false,
        Some(shadow),
    )
    .map_err(|_| Other)?;
    buf.advance(head.head_len);
    let mut body = BodyReader::new(head.framing);
    let limit = call.limit;
    let mut payload = |d: &[u8]| shadow.push_body(d, limit);
    loop {
        match body.part(&buf, None, &mut payload) {
            Ok(Some(used)) => return Ok(head.upstream_keepalive && buf.len() == used),
            Ok(None) => {}
            Err(_) => return Err(Other),
        }
        buf.clear();
        buf.reserve(READ_CHUNK);
        match within(t.read, up.read_buf(&mut buf)).await {
            Ok(0) if head.framing == Framing::UntilClose => return Ok(false),
            Ok(n) if n > 0 => {}
            _ => return Err(Other),
        }
    }
}
