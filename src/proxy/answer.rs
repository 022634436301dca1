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

/// Writes a complete response made by the proxy itself: JSON, or to a gRPC call a gRPC status.
async fn respond_json_as(
    session: &mut Session,
    status: u16,
    answer: Answer,
    ctx: &mut Ctx,
) -> Result<()> {
    if ctx.grpc {
        let code = super::grpc::status_for(status);
        return super::grpc::respond(session, code, answer.reason(), ctx).await;
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

/// The status Pingora's pipeline answers a failed request with; 0 when the client is gone.
pub(crate) fn status_for_failure(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Answers a request that failed with `e` on Pingora's pipeline (`status` from
/// [`status_for_failure`]). A response that had begun can only be ended: a gRPC call with trailers
/// naming the failure, another HTTP/2 response with a reset (an HTTP/1 one by closing).
pub(crate) async fn answer_failure(
    session: &mut Session,
    e: &Error,
    status: u16,
    ctx: &mut PipeCtx,
) -> Result<()> {
    let begun = session.response_written().is_some();
    match (ctx.grpc, begun) {
        (true, _) => {
            let (code, why) = super::grpc::failure(e, status);
            if begun {
                super::grpc::end_begun(session, code, &why, ctx);
                Ok(())
            } else {
                super::grpc::respond(session, code, &why, ctx).await
            }
        }
        (false, true) => {
            // A reset drops what of the stream is still queued: the connection's task gets a turn
            // to send the head and the body so far first (as on the engine).
            tokio::task::yield_now().await;
            super::grpc::reset_begun(session, super::grpc::reset_of(e));
            Ok(())
        }
        (false, false) => respond_json_as(session, status, Answer::for_status(status), ctx).await,
    }
}
