//! Request and response heads on the HTTP/1 engine: which request fields matter, which are
//! hop-by-hop, and the heads as the upstream and the client get them.

use super::body::{self, Framing};
use super::MAX_RESPONSE_FIELDS;
use crate::metrics::UpstreamError;
use crate::policy::headers;
use crate::policy::headers::{hop_by_hop_request, hop_by_hop_response, Nominated};
use crate::proxy::mirror::Captured;
use crate::proxy::REQUEST_ID_HEADER;
use std::mem::MaybeUninit;

/// The fields httparse found, as the decision reads raw fields.
pub(super) struct ParsedFields<'h, 'a>(pub(super) &'h [httparse::Header<'a>]);

impl<'h, 'a: 'h> crate::release::RawFields<'h> for ParsedFields<'h, 'a> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn field(&self, i: usize) -> Option<(&'h str, &'h [u8])> {
        self.0.get(i).map(|h| (h.name, h.value))
    }
}

pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (status / 100 % 10) as u8;
    code[1] = b'0' + (status / 10 % 10) as u8;
    code[2] = b'0' + (status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request head as the upstream gets it: the client's fields without hop-by-hop ones, one
/// `Content-Length` however the client wrote it (identical fields or `5, 5` are one length), the
/// settled request id, and the identified client.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    nominated: &Nominated<'_>,
    length: Option<u64>,
    request_id: &str,
    client: Option<&str>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in fields {
        let name = h.name.as_bytes();
        if hop_by_hop_request(name)
            || name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_bytes())
            || name.eq_ignore_ascii_case(b"content-length")
            || nominated.names(name)
        {
            continue;
        }
        field(out, name, h.value);
    }
    if let Some(n) = length {
        // Writing into a Vec cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
    }
    // A shadow copy gets its mark where it is made (shadow.rs), from this head.
    for (name, value) in headers::added_upstream(request_id, client, false) {
        field(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The final response head as the client gets it, and how its body is framed.
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    pub(super) upstream_keepalive: bool,
}

/// One part of an upstream response head, in order: its status, then each field the client gets
/// (hop-by-hop fields and a length a transfer coding overrides are left out).
pub(super) enum Part<'b> {
    Status(u16, &'b str),
    Field(&'b str, &'b [u8]),
}

/// Parses the complete, final response head at the start of `up_buf`, handing its parts to `emit`,
/// and finds how its body is framed.
pub(super) fn parse_response_head<'b>(
    up_buf: &'b [u8],
    head_request: bool,
    mut emit: impl FnMut(Part<'b>),
) -> Result<ResponseHead, UpstreamError> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        up_buf,
        &mut fields,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(UpstreamError::InvalidResponse),
    };
    let status = resp.code.unwrap_or(0);
    let mut upstream_keepalive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = None;
    emit(Part::Status(status, resp.reason.unwrap_or("")));
    // Content-Length with Transfer-Encoding: the coding wins and the length is not relayed (RFC 9112
    // §6.3), so nothing in front of us can frame the body by it. Pingora's client does the same.
    let has_coding = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            upstream_keepalive &= !h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = body::parse_length(h.value).ok_or(UpstreamError::InvalidResponse)?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::InvalidResponse);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        let dropped = has_coding && name.eq_ignore_ascii_case(b"content-length");
        if !hop_by_hop_response(name) && !dropped {
            emit(Part::Field(h.name, h.value));
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if chunked.is_some() && length.is_some() {
        // Both framings: the connection cannot be trusted with another request.
        upstream_keepalive = false;
    }
    Ok(ResponseHead {
        status,
        head_len,
        framing,
        upstream_keepalive: upstream_keepalive && framing != Framing::UntilClose,
    })
}

/// The final response head as the HTTP/1 client gets it. `captured`, when given, gets the status and
/// the fields as the client sees them (names in lowercase), for a mirror's comparison.
pub(super) fn write_response_head(
    out: &mut Vec<u8>,
    up_buf: &[u8],
    head_request: bool,
    request_id: &str,
    close: bool,
    mut captured: Option<&mut Captured>,
) -> Result<ResponseHead, UpstreamError> {
    out.clear();
    let head = parse_response_head(up_buf, head_request, |part| match part {
        Part::Status(status, reason) => status_line(out, status, reason),
        Part::Field(name, value) => {
            field(out, name.as_bytes(), value);
            if let Some(c) = captured.as_mut() {
                c.headers.push((name.to_ascii_lowercase(), value.to_vec()));
            }
        }
    })?;
    field(out, REQUEST_ID_HEADER.as_bytes(), request_id.as_bytes());
    if let Some(c) = captured {
        c.status = head.status;
        c.headers.push((
            REQUEST_ID_HEADER.to_string(),
            request_id.as_bytes().to_vec(),
        ));
    }
    if close || head.framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(head)
}
