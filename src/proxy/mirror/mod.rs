//! Dark releases (SPEC §5): a sampled copy of a routed request goes to the route's `mirror.to`,
//! marked `X-Switchyard-Shadow: 1`. [`admit`] and [`judge`] are shared by both paths; the HTTP/1
//! engine sends its copies itself (`proxy::h1::shadow`), and this module runs them on Pingora's path
//! (HTTP/2, chunked uploads and the other requests the front door gives it) as a Pingora subrequest.
//! The subrequest re-runs our `ProxyHttp` with a [`ShadowTag`] in its user context: that sends it to
//! the mirror target's pool, keeps it out of the metrics and the access log, and forbids it to spawn
//! mirrors of its own.
//!
//! The client never waits for the shadow. The subrequest runs in its own task; the request body is
//! teed chunk by chunk into an unbounded queue (bounded in bytes by `max_body_bytes`) that a forwarder
//! feeds to the subrequest, so the primary never waits for the shadow's pace. Copies above
//! `max_in_flight` are dropped, never queued. With `compare`, the primary's response (status, headers,
//! first bytes of the body) is handed to the shadow's task, which compares the two once both are in.

pub mod compare;

pub use compare::{Captured, Verdict};

use crate::metrics::diffs::{DiffSample, Side};
use crate::metrics::fields::Rule;
use crate::metrics::{Metrics, MirrorOutcome, Series};
use crate::release::mirror::Compare;
use crate::release::{Mirror, RouteId, UpstreamId};
use crate::state::Snapshot;
use bytes::Bytes;
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::{BodyMode, Ctx as SubCtx};
use pingora::proxy::Session;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Marks a subrequest as the shadow copy of a primary request.
#[derive(Clone)]
pub struct ShadowTag {
    pub snapshot: Arc<Snapshot>,
    pub route: RouteId,
    pub target: UpstreamId,
    pub request_id: String,
    pub client: Option<String>,
}

/// The shadow tag of this session, if it is a mirror subrequest.
pub fn shadow_tag(session: &Session) -> Option<&ShadowTag> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<ShadowTag>()
}

/// The primary's side of a running mirror.
pub struct MirrorCtx {
    /// Request body chunks for the shadow; `None` once the body is complete or the copy abandoned.
    body: Option<mpsc::UnboundedSender<HttpTask>>,
    body_bytes: u64,
    max_body_bytes: u64,
    /// The primary's response, for the comparison; `None` without `compare`, or once handed over.
    capture: Option<(Captured, usize, oneshot::Sender<Captured>)>,
    task: tokio::task::AbortHandle,
    series: Arc<Series>,
    metrics: Arc<Metrics>,
}

impl MirrorCtx {
    /// Stops the copy: the shadow task is cancelled and counted with `outcome` instead of its result.
    fn abandon(&mut self, outcome: MirrorOutcome) {
        if self.task.is_finished() {
            return;
        }
        self.task.abort();
        self.body = None;
        self.capture = None;
        self.series.record_mirror(self.metrics.now(), outcome);
    }

    /// A chunk of the primary's request body, as the primary reads it.
    /// Returns false when the body outgrew `max_body_bytes` here (one without a declared length): the
    /// copy is abandoned and counted as skipped, and the request is not a mirrored one.
    pub fn tee_body(&mut self, body: &Option<Bytes>, end: bool) -> bool {
        let Some(tx) = &self.body else {
            return true;
        };
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        self.body_bytes += len;
        if self.body_bytes > self.max_body_bytes {
            self.abandon(MirrorOutcome::SkippedBody);
            return false;
        }
        if tx.send(HttpTask::Body(body.clone(), end)).is_err() || end {
            self.body = None;
        }
        true
    }

    /// The primary is done. A copy still waiting for body bytes the primary never read (its client
    /// left mid-body, or it failed before reading the body) can never be completed: it is dropped,
    /// as on the engine, instead of running into its timeout.
    pub fn primary_ended(&mut self) {
        if self.body.is_some() {
            self.abandon(MirrorOutcome::Dropped);
        }
    }

    /// The primary is about to try another upstream. Before any body was read (a failed connect)
    /// nothing changes; once the whole body was copied, the replay is not copied again. In between,
    /// the shadow would get the start of the body twice, so the copy is abandoned.
    pub fn on_retry(&mut self) {
        if self.body.is_some() && self.body_bytes > 0 {
            self.abandon(MirrorOutcome::Dropped);
        }
    }

    pub fn capture_header(&mut self, status: u16, headers: &http::HeaderMap) {
        if let Some((c, _, _)) = &mut self.capture {
            c.status = status;
            c.headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            c.note_grpc_status(headers);
        }
    }

    /// The primary's trailers (a gRPC answer's status is there).
    pub fn capture_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some((c, _, _)) = &mut self.capture {
            c.note_grpc_status(trailers);
        }
        self.finish_capture();
    }

    pub fn capture_body(&mut self, body: &Option<Bytes>, end: bool) {
        if let (Some((c, limit, _)), Some(b)) = (&mut self.capture, body) {
            c.push_body(b, *limit);
        }
        // A gRPC answer's status comes after its body, in the trailers.
        if end && !self.capture.as_ref().is_some_and(|(c, _, _)| c.is_grpc()) {
            self.finish_capture();
        }
    }

    /// Hands the primary's response to the shadow's task (if it was seen at all).
    pub fn finish_capture(&mut self) {
        if let Some((c, _, tx)) = self.capture.take() {
            if c.status != 0 {
                let _ = tx.send(c);
            }
        }
    }
}

/// What a request needs to know to start its mirror.
pub struct Start<'a> {
    pub metrics: &'a Arc<Metrics>,
    pub snapshot: &'a Arc<Snapshot>,
    pub mirror: &'a Mirror,
    pub route: RouteId,
    /// The upstream the primary goes to: where a noise copy goes.
    pub served_by: UpstreamId,
    pub request_id: &'a str,
    pub client: Option<&'a str>,
}

/// Admits a shadow copy of a request whose body declares `declared` bytes: the copy is counted as
/// sent and holds one of `max_in_flight` until it ends. `None` (counted as skipped or dropped) when
/// the body is over `max_body_bytes` or `max_in_flight` copies already run. Shared by both paths.
pub fn admit(
    metrics: &Metrics,
    snapshot: &Snapshot,
    mirror: &Mirror,
    route: RouteId,
    declared: Option<u64>,
) -> Option<InFlight> {
    let series = metrics.series_in(&snapshot.series, &snapshot.table, route, mirror.to)?;
    let now = metrics.now();
    if declared.is_some_and(|n| n > mirror.max_body_bytes) {
        series.record_mirror(now, MirrorOutcome::SkippedBody);
        return None;
    }
    if series.mirror_in_flight.fetch_add(1, Relaxed) >= mirror.max_in_flight {
        series.mirror_in_flight.fetch_sub(1, Relaxed);
        series.record_mirror(now, MirrorOutcome::Dropped);
        return None;
    }
    series.record_mirror(now, MirrorOutcome::Sent);
    Some(InFlight(series.clone()))
}

/// How a request's body is framed.
struct Framing {
    /// Its Content-Length.
    declared: Option<u64>,
    chunked: bool,
    h2: bool,
    has_body: bool,
}

impl Framing {
    fn of(session: &mut Session) -> Framing {
        let headers = &session.req_header().headers;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
        // HTTP/2 frames a body without either header (a gRPC call's message, say): its stream says
        // whether one follows.
        let h2 = session.req_header().version == http::Version::HTTP_2;
        let has_body = chunked
            || declared.is_some_and(|n| n > 0)
            || (h2 && declared.is_none() && !session.as_downstream_mut().is_body_empty());
        Framing {
            declared,
            chunked,
            h2,
            has_body,
        }
    }
}

/// Starts the shadow copy of this request, or counts why it was not started.
pub fn start(session: &mut Session, s: Start<'_>) -> Option<MirrorCtx> {
    let Start {
        metrics,
        snapshot,
        mirror,
        route,
        served_by,
        request_id,
        client,
    } = s;
    let Framing {
        declared,
        chunked,
        h2,
        has_body,
    } = Framing::of(session);
    session.subrequest_spawner.as_ref()?;
    let in_flight = admit(metrics, snapshot, mirror, route, declared)?;
    let series = in_flight.0.clone();
    let tag = ShadowTag {
        snapshot: snapshot.clone(),
        route,
        target: mirror.to,
        request_id: request_id.to_string(),
        client: client.map(str::to_string),
    };
    // The noise copy's tag: the same request, to the primary's upstream.
    let tag_base = ShadowTag {
        target: served_by,
        ..tag.clone()
    };
    let sub = SubCtx::builder()
        .user_ctx(Box::new(tag))
        .body_mode(if has_body {
            BodyMode::ExpectBody
        } else {
            BodyMode::NoBody
        })
        .build();
    let (prepared, handle) = spawn_in_http1_form(session, sub, h2, has_body, declared, chunked)?;

    let pingora::protocols::http::subrequest::server::SubrequestHandle {
        tx: shadow_tx,
        rx: shadow_rx,
        subreq_proxy_error,
        ..
    } = handle;
    // The subrequest's input must stay open until it ends: once its body is complete it watches the
    // input as an idle client connection, and a closed input reads as the client going away.
    let keep_input = shadow_tx.clone();
    let body = has_body.then(|| forward_body(shadow_tx));
    let (capture, primary_rx) = match &mirror.compare {
        Some(c) => {
            let (tx, rx) = oneshot::channel();
            (
                Some((Captured::default(), c.max_body_bytes, tx)),
                Some((rx, c.clone())),
            )
        }
        None => (None, None),
    };
    let req = session.req_header();
    let meta = Meta::new(
        snapshot,
        mirror,
        route,
        request_id,
        req.method.as_str(),
        req.uri
            .path_and_query()
            .map_or_else(|| req.uri.path(), |p| p.as_str()),
    );
    let noise = match &mirror.compare {
        Some(c) if c.learns_noise_from(&meta.method, has_body, &mut || rand::random()) => {
            noise_copy(session, &tag_base, h2)
        }
        _ => None,
    };
    let shadow = Sub {
        prepared,
        channels: Channels {
            rx: shadow_rx,
            _input: keep_input,
            proxy_error: subreq_proxy_error,
        },
    };
    let task = tokio::spawn(run_shadow(
        shadow,
        noise,
        primary_rx,
        meta,
        metrics.clone(),
        in_flight,
    ));
    Some(MirrorCtx {
        body,
        body_bytes: 0,
        max_body_bytes: mirror.max_body_bytes,
        capture,
        task: task.abort_handle(),
        series,
        metrics: metrics.clone(),
    })
}

/// The noise copy of a request without a body: a subrequest to the primary's upstream.
fn noise_copy(session: &mut Session, tag: &ShadowTag, h2: bool) -> Option<Sub> {
    let sub = SubCtx::builder()
        .user_ctx(Box::new(tag.clone()))
        .body_mode(BodyMode::NoBody)
        .build();
    let (prepared, handle) = spawn_in_http1_form(session, sub, h2, false, None, false)?;
    Some(Sub {
        prepared,
        channels: Channels {
            rx: handle.rx,
            _input: handle.tx,
            proxy_error: handle.subreq_proxy_error,
        },
    })
}

/// Creates the subrequest from the request's HTTP/1 form: an HTTP/2 request is written as HTTP/1.1
/// for it (its `:authority` as Host, a body without a length as chunked), and put back as it was.
fn spawn_in_http1_form(
    session: &mut Session,
    sub: SubCtx,
    h2: bool,
    has_body: bool,
    declared: Option<u64>,
    chunked: bool,
) -> Option<(
    pingora::proxy::PreparedSubrequest,
    pingora::protocols::http::subrequest::server::SubrequestHandle,
)> {
    let unframed = h2 && has_body && declared.is_none() && !chunked;
    let mut added_host = false;
    if h2 {
        let req = session.req_header_mut();
        req.set_version(http::Version::HTTP_11);
        if unframed {
            let _ = req.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        // HTTP/2's :authority becomes the Host line the HTTP/1 form needs.
        if !req.headers.contains_key(http::header::HOST) {
            if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
                added_host = req.insert_header(http::header::HOST, authority).is_ok();
            }
        }
    }
    let spawner = session.subrequest_spawner.as_ref()?;
    let (prepared, handle) = spawner.create_subrequest(session.as_downstream(), sub);
    if h2 {
        let req = session.req_header_mut();
        req.set_version(http::Version::HTTP_2);
        if unframed {
            req.remove_header(&http::header::TRANSFER_ENCODING);
        }
        if added_host {
            req.remove_header(&http::header::HOST);
        }
    }

    Some((prepared, handle))
}

/// The task that passes the request's body on to the shadow copy, and its input.
fn forward_body(shadow_tx: mpsc::Sender<HttpTask>) -> mpsc::UnboundedSender<HttpTask> {
    let (tx, mut rx) = mpsc::unbounded_channel::<HttpTask>();
    tokio::spawn(async move {
        while let Some(task) = rx.recv().await {
            if shadow_tx.send(task).await.is_err() {
                break;
            }
        }
    });
    tx
}

/// Holds one of `max_in_flight` until the shadow task ends, however it ends.
pub struct InFlight(Arc<Series>);

impl InFlight {
    /// Counts how the copy ended, when it ended without a comparison.
    pub fn record(&self, metrics: &Metrics, outcome: MirrorOutcome) {
        self.0.record_mirror(metrics.now(), outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mirror_in_flight.fetch_sub(1, Relaxed);
    }
}

/// The subrequest's ends that the shadow task holds.
struct Channels {
    /// The shadow's response.
    rx: mpsc::Receiver<HttpTask>,
    /// Kept open while the subrequest runs (see `start`).
    _input: mpsc::Sender<HttpTask>,
    /// The subrequest's final error, if any.
    proxy_error: oneshot::Receiver<Box<pingora::Error>>,
}

/// What a shadow's task keeps of its request, for the diff sample.
pub struct Meta {
    pub timeout: Duration,
    route: String,
    target: String,
    request_id: String,
    method: String,
    path: String,
}

impl Meta {
    pub fn new(
        snapshot: &Snapshot,
        mirror: &Mirror,
        route: RouteId,
        request_id: &str,
        method: &str,
        path: &str,
    ) -> Meta {
        Meta {
            timeout: mirror.timeout,
            route: snapshot
                .table
                .route(route)
                .map(|r| r.name.to_string())
                .unwrap_or_default(),
            target: snapshot.table.upstream_name(mirror.to).to_string(),
            request_id: request_id.to_string(),
            method: method.to_string(),
            path: path.to_string(),
        }
    }
}

/// A subrequest to run and read whole: the shadow copy, or the noise copy.
struct Sub {
    prepared: pingora::proxy::PreparedSubrequest,
    channels: Channels,
}

/// Runs a subrequest and reads its whole answer, keeping the first `limit` body bytes; `Err` (with
/// the subrequest's error, if it told one) when no complete answer came.
async fn read_whole(sub: Sub, limit: usize) -> Result<Captured, Option<Box<pingora::Error>>> {
    let Sub {
        prepared,
        channels:
            Channels {
                mut rx,
                _input,
                mut proxy_error,
            },
    } = sub;
    let collect = async move {
        let mut answer = Captured::default();
        let mut complete = false;
        while let Some(task) = rx.recv().await {
            match task {
                HttpTask::Header(h, end) => {
                    answer.status = h.status.as_u16();
                    answer.headers = h
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect();
                    answer.note_grpc_status(&h.headers);
                    complete = end;
                }
                HttpTask::Body(b, end) | HttpTask::UpgradedBody(b, end) => {
                    if let Some(b) = b {
                        answer.push_body(&b, limit);
                    }
                    complete = end;
                }
                HttpTask::Trailer(t) => {
                    if let Some(t) = t {
                        answer.note_grpc_status(&t);
                    }
                    complete = true;
                }
                HttpTask::Done => complete = true,
                HttpTask::Failed(_) => {
                    complete = false;
                    break;
                }
            }
            if complete {
                break;
            }
        }
        (answer, complete)
    };
    let (_, (answer, complete)) = tokio::join!(prepared.run(), collect);
    if answer.status == 0 || !complete {
        return Err(proxy_error.try_recv().ok());
    }
    Ok(answer)
}

/// Runs the shadow's subrequest (and the noise copy's), reads the answers, and compares them with
/// the primary's.
async fn run_shadow(
    shadow: Sub,
    noise: Option<Sub>,
    primary: Option<(oneshot::Receiver<Captured>, Compare)>,
    meta: Meta,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
) {
    let series = in_flight.0.clone();
    let limit = primary.as_ref().map_or(0, |(_, c)| c.max_body_bytes);
    let noise = async {
        let n = noise?;
        let answer = tokio::time::timeout(meta.timeout, read_whole(n, limit)).await;
        answer.ok()?.ok()
    };
    let (shadow, noise) = tokio::join!(
        tokio::time::timeout(meta.timeout, read_whole(shadow, limit)),
        noise
    );
    let now = metrics.now();
    let shadow = match shadow {
        Err(_) => {
            series.record_mirror(now, MirrorOutcome::Timeout);
            return;
        }
        Ok(Err(e)) => {
            series.record_mirror(now, MirrorOutcome::Error);
            if let Some(e) = e {
                log::debug!(
                    "mirror of {} {} to {}: {e}",
                    meta.method,
                    meta.path,
                    meta.target
                );
            }
            return;
        }
        Ok(Ok(shadow)) => shadow,
    };
    if shadow.status >= 500 {
        series.record_shadow_5xx(now);
    }
    let Some((primary_rx, cfg)) = primary else {
        return;
    };
    // The primary may still be sending its body; it always ends, but do not wait forever.
    let Ok(Ok(primary)) = tokio::time::timeout(Duration::from_secs(300), primary_rx).await else {
        return;
    };
    let answers = Answers {
        primary: &primary,
        shadow: &shadow,
        noise: noise.as_ref(),
    };
    judge(answers, &cfg, meta, &metrics, &in_flight);
    drop(in_flight);
}

/// Compares a shadow's answer with the primary's (and, for a noise pair, a second answer of the
/// primary's upstream with the primary's), counts the fields that differ and the pairs judged, and
/// keeps a differing pair.
pub fn judge(
    answers: Answers<'_>,
    cfg: &Compare,
    meta: Meta,
    metrics: &Metrics,
    in_flight: &InFlight,
) {
    let Answers {
        primary,
        shadow,
        noise,
    } = answers;
    let series = &in_flight.0;
    let rule = Rule::of(cfg);
    let fields = &metrics.mirror_fields;
    let mut judged = Vec::new();
    if let Some(noise) = noise {
        let n = compare::compare(primary, noise, cfg);
        judged.extend(fields.noise_pair(&meta.route, &meta.target, &n.fields, &rule));
    }
    let verdict = compare::compare(primary, shadow, cfg);
    judged.extend(fields.shadow_pair(&meta.route, &meta.target, &verdict.fields, &rule));
    series.record_compare(verdict.result);
    let now = metrics.now();
    for j in judged {
        series.record_judged(now, j.significant);
    }
    if verdict.result != crate::metrics::CompareResult::Match {
        metrics.mirror_diffs.push(DiffSample {
            at: crate::time::rfc3339(SystemTime::now()),
            route: meta.route,
            target: meta.target,
            request_id: meta.request_id,
            method: meta.method,
            path: meta.path,
            result: verdict.result,
            diff: verdict.diff,
            primary: Side::new(
                primary.status,
                &primary.headers,
                &primary.body,
                primary.truncated,
            ),
            shadow: Side::new(
                shadow.status,
                &shadow.headers,
                &shadow.body,
                shadow.truncated,
            ),
        });
    }
}

/// The answers a comparison reads.
pub struct Answers<'a> {
    pub primary: &'a Captured,
    pub shadow: &'a Captured,
    /// A second answer of the primary's upstream to the same request, when it was asked for one.
    pub noise: Option<&'a Captured>,
}
