//! The shared request rules ([`crate::policy::request`]) over a head Pingora's pipeline parsed.

use super::*;

/// A request that passed the shared rules: the path to route on when normalisation changed it, and the
/// URI to send upstream instead of the client's.
pub(crate) struct Checked {
    pub(crate) route_path: Option<String>,
    pub(crate) uri: Option<http::Uri>,
}

/// The shared request rules ([`crate::policy::request`]) over a head Pingora parsed: the target
/// (origin-form, or absolute-form and HTTP/2's scheme and authority), the Host, the framing, and the
/// head's size.
pub(crate) fn check_request(
    req: &pingora::http::RequestHeader,
    max_head_bytes: usize,
) -> std::result::Result<Checked, Refusal> {
    let headers = &req.headers;
    if headers.len() > request::MAX_FIELDS {
        return Err(Refusal::HeadTooLarge);
    }
    let head_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.raw_path().len();
    if head_bytes > max_head_bytes {
        return Err(Refusal::HeadTooLarge);
    }
    let raw = std::str::from_utf8(req.raw_path()).map_err(|_| Refusal::InvalidCharacter)?;
    let absolute;
    let raw = match (req.uri.scheme_str(), req.uri.authority()) {
        (Some(scheme), Some(authority)) if raw.starts_with('/') => {
            absolute = format!("{scheme}://{authority}{raw}");
            absolute.as_str()
        }
        _ => raw,
    };
    let target = request::target(raw)?;
    // Up to four values of a field, on the stack (more Host or framing fields than that are refused
    // anyway); `None` when there are more.
    fn values(
        headers: &http::HeaderMap,
        name: http::header::HeaderName,
    ) -> Option<([&[u8]; 4], usize)> {
        let mut out: [&[u8]; 4] = [b""; 4];
        let mut n = 0;
        for v in headers.get_all(name) {
            *out.get_mut(n)? = v.as_bytes();
            n += 1;
        }
        Some((out, n))
    }
    let http10 = req.version == http::Version::HTTP_10;
    let (hosts, n) = values(headers, http::header::HOST).ok_or(Refusal::DuplicateHost)?;
    request::host(&hosts[..n], target.authority, http10)?;
    let (lengths, l) =
        values(headers, http::header::CONTENT_LENGTH).ok_or(Refusal::InvalidLength)?;
    let (codings, c) =
        values(headers, http::header::TRANSFER_ENCODING).ok_or(Refusal::InvalidTransferEncoding)?;
    request::framing(&lengths[..l], &codings[..c])?;
    if target.unchanged() {
        return Ok(Checked {
            route_path: None,
            uri: None,
        });
    }
    let uri = match target.authority {
        Some(authority) => {
            let scheme = req.uri.scheme_str().unwrap_or("http");
            format!("{scheme}://{authority}{}", target.forward)
        }
        None => target.forward.to_string(),
    };
    let uri = uri
        .parse::<http::Uri>()
        .map_err(|_| Refusal::InvalidTarget)?;
    Ok(Checked {
        route_path: Some(target.route_path.into_owned()),
        uri: Some(uri),
    })
}
