//! A request head as the front door reads it: where it ends, the one parse of it (httparse) with the
//! shared request rules (target, Host, framing), and which back end it goes to. The engine serves what
//! is [`Head::Accepted`] from this very parse; Pingora's pipeline reads the head once more with its
//! own parser, so a head it serves is parsed twice in all.

use crate::policy::headers::{self, Nominated, REQUEST_ID_HEADER};
use crate::policy::request::{self, Refusal};
use std::io::Write as _;
use std::mem::MaybeUninit;

/// The most header fields a request may have (more is refused, 431).
pub const MAX_FIELDS: usize = request::MAX_FIELDS;

/// Whether `buf` holds a whole head (up to its empty line; a bare LF ends lines too).
///
/// Called on every request head and every upstream response head: nearly all of them end with CRLF
/// CRLF, which one vectorised search finds (a line-by-line scan cost about 170 instructions a head).
/// A buffer holding CRLF CRLF anywhere has an empty line at or before it, so the head is complete.
pub fn head_complete(buf: &[u8]) -> bool {
    static CRLF_CRLF: once_cell::sync::Lazy<memchr::memmem::Finder<'static>> =
        once_cell::sync::Lazy::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    if CRLF_CRLF.find(buf).is_some() {
        return true;
    }
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

/// Where a request head goes. Returned on the stack by a plain function and taken apart at once:
/// boxing the large variant would cost every request an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Head<'b, 'h> {
    /// For the engine, read and judged.
    Accepted(Accepted<'b, 'h>),
    /// For Pingora's pipeline, with where the request ends counted from the start of the buffer (its
    /// head plus its declared length); `None` when only the pipeline can tell (a chunked body, an
    /// upgrade, CONNECT). HTTP/1.0, CONNECT, chunked bodies, `Expect`, `Upgrade`, absolute-form
    /// targets, and every head when the engine is off.
    Pipeline(Option<u64>),
    /// Refused by the shared rules, with the method and target when they could be read.
    Refused(Refusal, Option<(&'b str, &'b str)>),
}

/// A head the engine may serve: everything it needs, borrowed from the buffer it was read into.
pub struct Accepted<'b, 'h> {
    pub head_len: usize,
    pub method: &'b str,
    pub target: request::Target<'b>,
    pub fields: RequestFields<'b>,
    /// The fields, those the upstream may see first (`..fields.kept`).
    pub headers: &'h [httparse::Header<'b>],
    pub host: &'b str,
    pub length: Option<u64>,
}

impl Accepted<'_, '_> {
    /// Where the request ends in the buffer: its head and its declared body.
    pub fn ends(&self) -> u64 {
        ends(self.head_len, self.length)
    }
}

/// Parses the request head at the start of `buf` once and applies the shared request rules to it.
/// `engine`: whether the engine may take it (otherwise every head it accepts goes to the pipeline).
/// Pure: the front door routes by it, and the differential tests hold it against Pingora's parser.
pub fn classify<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
    max_head_bytes: usize,
    engine: bool,
) -> Head<'b, 'h> {
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Head::Refused(Refusal::HeadTooLarge, None),
        Ok(httparse::Status::Partial) | Err(_) => {
            return Head::Refused(Refusal::MalformedHead, None)
        }
    };
    if head_len > max_head_bytes {
        return Head::Refused(Refusal::HeadTooLarge, None);
    }
    let (Some(method), Some(raw_target), Some(version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Head::Refused(Refusal::MalformedHead, None);
    };
    if method == "CONNECT" {
        // Pingora's pipeline refuses it.
        return Head::Pipeline(None);
    }
    let seen = Some((method, raw_target));
    let target = match request::target(raw_target) {
        Ok(t) => t,
        Err(why) => return Head::Refused(why, seen),
    };
    let headers = std::mem::take(&mut parsed.headers);
    let h = RequestFields::sort(headers);
    let http10 = version == 0;
    let host = match h.host(target.authority, http10) {
        Ok(host) => host,
        Err(why) => return Head::Refused(why, seen),
    };
    let length = match h.framing() {
        Ok(length) => length,
        Err(why) => return Head::Refused(why, seen),
    };
    if h.chunked() || h.upgrade {
        return Head::Pipeline(None);
    }
    // Expect and Upgrade, absolute-form targets and HTTP/1.0 are Pingora's to relay.
    if !engine || http10 || h.hand_off || target.authority.is_some() {
        return Head::Pipeline(Some(ends(head_len, length)));
    }
    // Built where it is returned: a head built first and moved in here is copied once more.
    Head::Accepted(Accepted {
        head_len,
        method,
        target,
        fields: h,
        headers,
        host,
        length,
    })
}

/// Where a request ends, counted from the start of its head: the head and its declared body.
fn ends(head_len: usize, length: Option<u64>) -> u64 {
    (head_len as u64).saturating_add(length.unwrap_or(0))
}

/// The head of an answer Switchyard makes itself, on either path's wire: status, content type and
/// length, the request id when there is one, and `Connection: close` when the connection ends
/// after it.
pub fn answer_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    length: usize,
    request_id: Option<&str>,
    close: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n"
    );
    if let Some(id) = request_id {
        let _ = write!(out, "{REQUEST_ID_HEADER}: {id}\r\n");
    }
    out.extend_from_slice(if close {
        b"connection: close\r\n\r\n"
    } else {
        b"\r\n"
    });
}

/// Up to this many Content-Length or Transfer-Encoding fields are kept for the framing check; more
/// is refused as ambiguous.
const FRAMING_FIELDS: usize = 4;

/// The request fields the engine looks at, found in one pass. Internal `X-Switchyard-*` fields are
/// moved out of the kept range (`..kept`), so neither the decision nor the upstream sees them.
pub struct RequestFields<'a> {
    pub kept: usize,
    /// The Host fields (two at most: more is as refused as two).
    pub hosts: [&'a [u8]; 2],
    pub host_count: usize,
    pub request_id: Option<&'a [u8]>,
    lengths: [&'a [u8]; FRAMING_FIELDS],
    length_count: usize,
    codings: [&'a [u8]; FRAMING_FIELDS],
    coding_count: usize,
    pub close: bool,
    /// Fields the client's `Connection` names: hop-by-hop, never forwarded.
    pub nominated: Nominated<'a>,
    /// `Expect`, or a `Connection` naming more fields than the engine keeps track of: the request
    /// goes to Pingora's pipeline.
    pub hand_off: bool,
    /// `Upgrade`: the connection may change protocol, so where the request ends only the pipeline
    /// knows.
    pub upgrade: bool,
}

impl<'a> RequestFields<'a> {
    pub fn sort(fields: &mut [httparse::Header<'a>]) -> RequestFields<'a> {
        let mut f = RequestFields {
            kept: 0,
            hosts: [b""; 2],
            host_count: 0,
            request_id: None,
            lengths: [b""; FRAMING_FIELDS],
            length_count: 0,
            codings: [b""; FRAMING_FIELDS],
            coding_count: 0,
            close: false,
            nominated: Nominated::default(),
            hand_off: false,
            upgrade: false,
        };
        for i in 0..fields.len() {
            let h = fields[i];
            let name = h.name.as_bytes();
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    if f.host_count < 2 {
                        f.hosts[f.host_count] = h.value;
                    }
                    f.host_count += 1;
                }
                6 if name.eq_ignore_ascii_case(b"expect") => f.hand_off = true,
                7 if name.eq_ignore_ascii_case(b"upgrade") => f.upgrade = true,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    f.close |= h
                        .value
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                    f.hand_off |= !f.nominated.add(h.value);
                }
                12 if name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_bytes()) => {
                    f.request_id = Some(h.value);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    if f.length_count < FRAMING_FIELDS {
                        f.lengths[f.length_count] = h.value;
                    }
                    f.length_count += 1;
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    if f.coding_count < FRAMING_FIELDS {
                        f.codings[f.coding_count] = h.value;
                    }
                    f.coding_count += 1;
                }
                _ if headers::internal(name) => continue,
                _ => {}
            }
            fields[f.kept] = h;
            f.kept += 1;
        }
        f
    }

    /// The Host to route on, by the shared rules (exactly one, matching an absolute-form target).
    /// HTTP/1.0 may leave it out.
    pub fn host(&self, authority: Option<&'a str>, http10: bool) -> Result<&'a str, Refusal> {
        request::host(&self.hosts[..self.host_count.min(2)], authority, http10)
    }

    /// The body framing, by the shared rules: `Some(length)`, `None` for chunked (which Pingora's
    /// pipeline relays), or the refusal.
    pub fn framing(&self) -> Result<Option<u64>, Refusal> {
        if self.length_count > FRAMING_FIELDS {
            return Err(Refusal::InvalidLength);
        }
        if self.coding_count > FRAMING_FIELDS {
            return Err(Refusal::InvalidTransferEncoding);
        }
        request::framing(
            &self.lengths[..self.length_count],
            &self.codings[..self.coding_count],
        )
    }

    pub fn chunked(&self) -> bool {
        self.coding_count > 0
    }
}
