//! gRPC calls on Pingora's pipeline (gRPC runs over HTTP/2, which the engine does not serve), as a
//! gRPC client expects them to end:
//!
//! - Switchyard's own answers are trailers-only responses: one HEADERS frame carrying `grpc-status`
//!   and `grpc-message` that ends the stream (Pingora's session writes a response head without
//!   ending an HTTP/2 stream, and the stream then ends in RST_STREAM(CANCEL): CANCELLED to a client);
//! - a call whose upstream failed after its response began ends with trailers naming the failure;
//! - an upstream's RST_STREAM is told as the gRPC status its reason maps to (gRPC's HTTP/2 transport
//!   mapping: REFUSED_STREAM is UNAVAILABLE, CANCEL is CANCELLED, INTERNAL_ERROR and the other
//!   protocol errors are INTERNAL, ...);
//! - `grpc-timeout` is a deadline: the upstream exchange is bounded by what is left of it, and
//!   the upstream is sent what is left (DEADLINE_EXCEEDED when it runs out first).

use super::answer::Answer;
use super::ctx::{Ctx, PipeCtx};
use crate::policy::headers::REQUEST_ID_HEADER;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::time::{Duration, Instant};

pub(crate) const CANCELLED: u8 = 1;
pub(crate) const UNKNOWN: u8 = 2;
pub(crate) const DEADLINE_EXCEEDED: u8 = 4;
pub(crate) const PERMISSION_DENIED: u8 = 7;
pub(crate) const RESOURCE_EXHAUSTED: u8 = 8;
pub(crate) const UNIMPLEMENTED: u8 = 12;
pub(crate) const INTERNAL: u8 = 13;
pub(crate) const UNAVAILABLE: u8 = 14;
pub(crate) const UNAUTHENTICATED: u8 = 16;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Whether a request is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
pub(crate) fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a response's headers or trailers.
pub(crate) fn status_in(headers: &http::HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// The gRPC status a client is told for an HTTP error status of the proxy's own (gRPC's HTTP to
/// gRPC status mapping; a timeout is DEADLINE_EXCEEDED).
pub(crate) fn status_for(status: u16) -> u8 {
    match status {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        408 | 504 => DEADLINE_EXCEEDED,
        413 | 414 | 431 => RESOURCE_EXHAUSTED,
        429 | 502 | 503 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The gRPC status a stream reset with `reason` means (gRPC's HTTP/2 transport spec).
pub(crate) fn status_for_reset(reason: h2::Reason) -> u8 {
    match reason {
        h2::Reason::REFUSED_STREAM => UNAVAILABLE,
        h2::Reason::CANCEL => CANCELLED,
        h2::Reason::ENHANCE_YOUR_CALM => RESOURCE_EXHAUSTED,
        h2::Reason::INADEQUATE_SECURITY => PERMISSION_DENIED,
        _ => INTERNAL,
    }
}

/// The reason of the HTTP/2 stream reset or GOAWAY behind an error, when the peer sent one.
pub(crate) fn reset_of(e: &Error) -> Option<h2::Reason> {
    let h2 = e.root_cause().downcast_ref::<h2::Error>()?;
    if h2.is_remote() && (h2.is_reset() || h2.is_go_away()) {
        h2.reason()
    } else {
        None
    }
}

/// Reads a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value: the finest unit whose count fits in 8 digits, rounded
/// down, so the upstream never gets more time than is left.
pub(crate) fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        if nanos / per <= MAX {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{MAX}H")
}

/// The call's deadline, from its `grpc-timeout` (counted from when the request began). A value
/// that does not read is passed on as it came and sets none: the upstream judges it as it would
/// without a proxy.
pub(crate) fn deadline(req: &RequestHeader, started: Instant) -> Option<Instant> {
    let timeout = parse_timeout(req.headers.get(GRPC_TIMEOUT)?.as_bytes())?;
    started.checked_add(timeout)
}

/// Bounds the upstream exchange of a call by what is left of its deadline (its connect and read
/// timeouts); an error when nothing is left.
pub(crate) fn bound_peer(
    peer: &mut pingora::upstreams::peer::HttpPeer,
    until: Instant,
) -> Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Error::e_explain(pingora::ErrorType::ReadTimedout, "grpc-timeout passed")
            .map_err(|e| e.into_up());
    }
    let o = &mut peer.options;
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
        &mut o.write_timeout,
    ] {
        *t = Some(t.map_or(left, |t| t.min(left)));
    }
    Ok(())
}

/// Sends the upstream what is left of the call's deadline.
pub(crate) fn pass_on_timeout(req: &mut RequestHeader, until: Instant) -> Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    req.insert_header(GRPC_TIMEOUT, format_timeout(left))
}

/// A gRPC error made by the proxy itself, before any response: a trailers-only response (HTTP 200,
/// `grpc-status`, and `grpc-message` naming the reason, e.g. `switchyard: no_healthy_upstream`) in
/// one HEADERS frame that ends the stream, as gRPC servers send a call that fails before any
/// message.
pub(crate) async fn respond(
    session: &mut Session,
    code: u8,
    why: &str,
    ctx: &mut Ctx,
) -> Result<()> {
    ctx.grpc_status = Some(code);
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", code.to_string())?;
    resp.insert_header("grpc-message", message(why))?;
    if !ctx.request_id.is_empty() {
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    }
    match session.as_downstream_mut() {
        // Pingora's `Session::write_response_header` never ends an HTTP/2 stream.
        ServerSession::H2(h2) => h2.write_response_header(Box::new(resp), true),
        _ => {
            resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(resp), true).await
        }
    }
}

/// Ends a call whose response had begun when its upstream failed: trailers with the status the
/// failure means, so the client reads a status, not a reset.
pub(crate) fn end_begun(session: &mut Session, code: u8, why: &str, ctx: &mut PipeCtx) {
    ctx.grpc_status = Some(code);
    let ServerSession::H2(h2) = session.as_downstream_mut() else {
        return; // HTTP/1: the connection closes, as for any response cut short
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(u16::from(code)));
    if let Ok(v) = http::HeaderValue::from_str(&message(why)) {
        trailers.insert("grpc-message", v);
    }
    if let Err(e) = h2.write_trailers(trailers) {
        log::debug!("could not end a gRPC call: {e}");
    }
}

/// Ends an HTTP/2 response (not a gRPC call) that had begun when its upstream failed: a reset with
/// the upstream's own reason, else INTERNAL_ERROR, rather than the CANCEL of a dropped stream.
pub(crate) fn reset_begun(session: &mut Session, reason: Option<h2::Reason>) {
    if let ServerSession::H2(h2) = session.as_downstream_mut() {
        h2.shutdown_with_reason(reason.unwrap_or(h2::Reason::INTERNAL_ERROR));
    }
}

/// A `grpc-message`: why, in the words of [`Answer::reason`], or the upstream's reset.
fn message(why: &str) -> String {
    format!("switchyard: {why}")
}

/// Why a call failed, as its `grpc-message` says after `switchyard: `, and its status: the
/// upstream's reset when there was one, else what the proxy's own answer for `status` means.
pub(crate) fn failure(e: &Error, status: u16) -> (u8, std::borrow::Cow<'static, str>) {
    let reset = reset_of(e).filter(|_| *e.esource() == pingora::ErrorSource::Upstream);
    match reset {
        Some(reason) => (
            status_for_reset(reason),
            format!("upstream_reset ({reason:?})").into(),
        ),
        None => (
            status_for(status),
            Answer::for_status(status).reason().into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_read_as_the_spec_writes_them() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"123456789m",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_timeout_passed_on_is_never_longer_than_what_is_left() {
        assert_eq!(format_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(format_timeout(Duration::from_secs(3)), "3000000u");
        assert_eq!(format_timeout(Duration::from_secs(100_000)), "100000S");
        assert_eq!(format_timeout(Duration::from_secs(u64::MAX)), "99999999H");
        for d in [
            1u64,
            999,
            123_456_789,
            86_400_000_000_000,
            3_600_000_000_000_000,
        ] {
            let d = Duration::from_nanos(d);
            let back = parse_timeout(format_timeout(d).as_bytes()).unwrap();
            // Rounded down by less than one unit, of a count of at least 100,000.
            assert!(back <= d, "{d:?} -> {back:?}");
            assert!(
                back.as_secs_f64() >= d.as_secs_f64() * (1.0 - 1e-5),
                "{d:?} -> {back:?}"
            );
        }
    }

    #[test]
    fn resets_map_to_the_status_grpc_gives_them() {
        assert_eq!(status_for_reset(h2::Reason::REFUSED_STREAM), UNAVAILABLE);
        assert_eq!(status_for_reset(h2::Reason::INTERNAL_ERROR), INTERNAL);
        assert_eq!(status_for_reset(h2::Reason::PROTOCOL_ERROR), INTERNAL);
        assert_eq!(status_for_reset(h2::Reason::CANCEL), CANCELLED);
        assert_eq!(
            status_for_reset(h2::Reason::ENHANCE_YOUR_CALM),
            RESOURCE_EXHAUSTED
        );
        assert_eq!(status_for(502), UNAVAILABLE);
        assert_eq!(status_for(504), DEADLINE_EXCEEDED);
    }
}
