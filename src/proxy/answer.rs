//! Switchyard's own answers, the same on both request paths: what each is (status, body, reason),
//! which answer an upstream failure gets, and how Pingora's pipeline writes one (JSON, or to a gRPC
//! call a trailers-only gRPC status).

use super::*;

/// The responses Switchyard makes itself, the same on the HTTP/1 engine and on Pingora's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    NoRoute,
    ClientRequired,
    NoHealthyUpstream,
    UpstreamUnavailable,
    UpstreamTimeout,
    BadRequest,
    InternalError,
    /// Refused by the shared request rules (SPEC §3 step 0).
    Refused(crate::policy::request::Refusal),
}

impl Answer {
    /// What a request whose upstream exchange failed with `kind` is told.
    pub(crate) fn for_upstream(kind: UpstreamError) -> Answer {
        match kind {
            UpstreamError::ConnectTimeout | UpstreamError::Timeout => Answer::UpstreamTimeout,
            _ => Answer::UpstreamUnavailable,
        }
    }

    /// The answer whose body goes with an error status some other part decided.
    pub(crate) fn for_status(status: u16) -> Answer {
        match status {
            502 => Answer::UpstreamUnavailable,
            504 => Answer::UpstreamTimeout,
            400 => Answer::BadRequest,
            _ => Answer::InternalError,
        }
    }

    /// Whether the client's connection closes after this answer: after a failed upstream exchange
    /// it does, on both paths (Pingora's pipeline never reuses it), so the answer says so.
    pub(crate) fn closes_connection(self) -> bool {
        matches!(
            self,
            Answer::UpstreamUnavailable | Answer::UpstreamTimeout | Answer::InternalError
        )
    }

    pub(crate) fn status(self) -> u16 {
        match self {
            Answer::NoRoute => 404,
            Answer::ClientRequired => 401,
            Answer::NoHealthyUpstream | Answer::UpstreamUnavailable => 502,
            Answer::UpstreamTimeout => 504,
            Answer::BadRequest => 400,
            Answer::InternalError => 500,
            Answer::Refused(why) => why.status(),
        }
    }

    /// Why, in one word: the body's `error` (the rule, for a refusal), and a gRPC answer's message.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Answer::NoRoute => "no_route",
            Answer::ClientRequired => "client_required",
            Answer::NoHealthyUpstream => "no_healthy_upstream",
            Answer::UpstreamUnavailable => "upstream_unavailable",
            Answer::UpstreamTimeout => "upstream_timeout",
            Answer::BadRequest => "bad_request",
            Answer::InternalError => "internal_error",
            Answer::Refused(why) => why.code(),
        }
    }

    /// The JSON body.
    pub(crate) fn body(self) -> &'static str {
        match self {
            Answer::NoRoute => r#"{"error":"no_route"}"#,
            Answer::ClientRequired => r#"{"error":"client_required"}"#,
            Answer::NoHealthyUpstream => r#"{"error":"no_healthy_upstream"}"#,
            Answer::UpstreamUnavailable => r#"{"error":"upstream_unavailable"}"#,
            Answer::UpstreamTimeout => r#"{"error":"upstream_timeout"}"#,
            Answer::BadRequest => r#"{"error":"bad_request"}"#,
            Answer::InternalError => r#"{"error":"internal_error"}"#,
            Answer::Refused(why) => why.body(),
        }
    }
}

/// The `kind` label of an upstream error.
pub(crate) fn upstream_error_kind(e: &Error) -> UpstreamError {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout => UpstreamError::ConnectTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
        | ConnectProxyFailure => UpstreamError::ConnectFailure,
        TLSWantX509Lookup | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
        | HandshakeError => UpstreamError::Tls,
        ReadTimedout | WriteTimedout => UpstreamError::Timeout,
        ReadError | WriteError | ConnectionClosed => UpstreamError::Closed,
        InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2 => {
            UpstreamError::InvalidResponse
        }
        _ => UpstreamError::Other,
    }
}

/// Writes one of the proxy's own answers.
pub(crate) async fn respond_json(
    session: &mut Session,
    answer: Answer,
    ctx: &mut Ctx,
) -> Result<()> {
    respond_json_as(session, answer.status(), answer, ctx).await
}

/// The gRPC status a client is told for an HTTP error status of the proxy's own (gRPC's HTTP to
/// gRPC status mapping; a timeout is DEADLINE_EXCEEDED).
pub(crate) fn grpc_status_for(status: u16) -> u8 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 414 | 431 => 8,  // RESOURCE_EXHAUSTED
        429 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A gRPC error made by the proxy itself: HTTP 200 with only headers (`grpc-status`, and
/// `grpc-message` naming the reason, e.g. `switchyard: no_healthy_upstream`), as gRPC servers send a
/// call that fails before any message.
pub(crate) async fn respond_grpc(
    session: &mut Session,
    status: u16,
    answer: Answer,
    ctx: &mut Ctx,
) -> Result<()> {
    let code = grpc_status_for(status);
    ctx.grpc_status = Some(code);
    let reason = answer.reason();
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", code.to_string())?;
    resp.insert_header("grpc-message", format!("switchyard: {reason}"))?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    if !ctx.request_id.is_empty() {
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    }
    session.write_response_header(Box::new(resp), true).await
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
pub(crate) fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a response's headers or trailers.
pub(crate) fn grpc_status_in(headers: &http::HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// Writes a complete response made by the proxy itself: JSON, or to a gRPC call a gRPC status.
pub(crate) async fn respond_json_as(
    session: &mut Session,
    status: u16,
    answer: Answer,
    ctx: &mut Ctx,
) -> Result<()> {
    if ctx.grpc {
        return respond_grpc(session, status, answer, ctx).await;
    }
    let body = answer.body();
    let request_id = ctx.request_id.as_str();
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID_HEADER, request_id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}
