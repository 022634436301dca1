//! What Switchyard keeps of a request while it runs: the request core both paths share ([`Ctx`],
//! which the recorder reads), and on Pingora's pipeline what only the pipeline needs ([`PipeCtx`]).

use super::*;
use std::ops::{Deref, DerefMut};

/// A request as both paths keep it: the snapshot it reads from start to end, what was decided, and
/// what the recorder counts and logs of it.
pub struct Ctx {
    pub started: Instant,
    pub snapshot: Option<Arc<Snapshot>>,
    pub decision: Option<Decision>,
    /// The pool actually used: the decision's target, or the baseline after a fallback (a fallback
    /// is exactly `target != decision.target`).
    pub target: Option<UpstreamId>,
    pub backend: Option<Backend>,
    /// Backends that failed to connect for this request; skipped on retry.
    pub failed: Vec<SocketAddr>,
    pub request_id: String,
    /// The route, once known (also for a request refused for want of a client).
    pub route: Option<RouteId>,
    /// Answered before a target was chosen, and why.
    pub rejected: Option<Rejection>,
    /// The last upstream error's kind, for the access log.
    pub error: Option<&'static str>,
    /// A shadow copy of this request was started (for the access log).
    pub mirrored: bool,
    /// The client's protocol, for the access log (the engine serves HTTP/1.1 only).
    pub protocol: &'static str,
    /// A gRPC call, and the `grpc-status` it ended with (from the upstream's headers or trailers, or
    /// the proxy's own answer).
    pub grpc: bool,
    pub grpc_status: Option<u8>,
    /// Counts this request in `switchyard_requests_in_flight` while it lives.
    _counted: crate::metrics::RequestInFlight,
    /// Body bytes received from the client and sent to it, for metrics and the access log.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From the upstream connection being ready to its response header.
    pub upstream_ttfb_us: Option<u64>,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::starting_at(Instant::now())
    }
}

impl Ctx {
    /// A request that began at `started`.
    pub fn starting_at(started: Instant) -> Self {
        Ctx {
            started,
            snapshot: None,
            decision: None,
            target: None,
            backend: None,
            failed: Vec::new(),
            request_id: String::new(),
            route: None,
            rejected: None,
            error: None,
            mirrored: false,
            protocol: "HTTP/1.1",
            grpc: false,
            grpc_status: None,
            _counted: crate::metrics::RequestInFlight::new(),
            request_bytes: 0,
            response_bytes: 0,
            upstream_ttfb_us: None,
        }
    }
}

/// A request on Pingora's pipeline: the request core, and what only the pipeline needs (its shadow
/// subrequest, timing read across its hooks, the count the drain waits on).
pub struct PipeCtx {
    core: Ctx,
    /// When the upstream connection was ready; taken when its response header arrives.
    pub upstream_ready: Option<Instant>,
    /// This request's shadow copy, while it runs.
    pub mirror: Option<mirror::MirrorCtx>,
    /// This is a shadow copy (a mirror subrequest), not a client's request.
    pub shadow: bool,
    /// The primary's client id, sent upstream with the shadow copy too.
    pub shadow_client: Option<String>,
    /// A failed kept-alive upstream connection was already retried once for this request.
    pub retried_reused: bool,
    /// A gRPC call's deadline, from its `grpc-timeout`.
    pub grpc_deadline: Option<Instant>,
    /// Counts this request as in flight until it is done (shutdown waits for it; the front door
    /// counts connections, and a shadow copy outlives its primary's).
    _in_flight: crate::front::InFlight,
}

impl PipeCtx {
    pub(super) fn new() -> PipeCtx {
        PipeCtx {
            core: Ctx::default(),
            upstream_ready: None,
            mirror: None,
            shadow: false,
            shadow_client: None,
            retried_reused: false,
            grpc_deadline: None,
            _in_flight: crate::front::InFlight::new(),
        }
    }
}

impl Deref for PipeCtx {
    type Target = Ctx;

    fn deref(&self) -> &Ctx {
        &self.core
    }
}

impl DerefMut for PipeCtx {
    fn deref_mut(&mut self) -> &mut Ctx {
        &mut self.core
    }
}
