//! One definition of a valid request (SPEC §3 step 0), applied before routing on both request paths
//! (the HTTP/1 engine and Pingora's pipeline), so that no spelling of a path routes around a rule.
//!
//! The target is normalised the way nginx normalises a URI before matching locations: percent-escapes
//! of unreserved characters are decoded, `.` and `..` segments resolved, repeated slashes merged.
//! Routing and rules see that path with any `;parameters` of a segment left out (a servlet container
//! reads `/internal;x/a` as `/internal/a`); the upstream gets the normalised path with them. What
//! cannot be normalised safely is refused: an encoded `/`, `\` or NUL, `..` above the root, a dot
//! segment spelled with parameters, control bytes, a target that is not origin-form.

use std::borrow::Cow;
use std::fmt;

/// Longest request target accepted (nginx's default large_client_header_buffers line is 8 KiB).
pub const MAX_TARGET: usize = 8192;
/// Most header fields a request may have (431 above).
pub const MAX_FIELDS: usize = 100;

/// Why a request is refused before routing. Each has a status and a stable code for the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target is not `/path` (or an absolute `http://host/path`).
    InvalidTarget,
    /// Control bytes, a fragment or a bad percent-escape in the target.
    InvalidCharacter,
    /// `%2F`, `%5C` or `%00` in the path: it cannot be normalised without changing its meaning.
    EncodedSeparator,
    /// `..` above the root.
    AboveRoot,
    /// A `.` or `..` segment spelled with `;parameters`.
    AmbiguousSegment,
    TargetTooLong,
    /// HTTP/1.1 without a Host field, or an empty one.
    MissingHost,
    DuplicateHost,
    InvalidHost,
    /// An absolute-form target whose authority differs from the Host field.
    HostMismatch,
    /// Content-Length that is not a number, or several that differ.
    InvalidLength,
    /// Content-Length together with Transfer-Encoding: the framing is ambiguous.
    LengthWithTransferEncoding,
    /// A Transfer-Encoding other than chunked last.
    InvalidTransferEncoding,
    /// The head is larger than `limits.max_head_bytes`, or has too many fields.
    HeadTooLarge,
    /// The head is not HTTP/1: the parser cannot read its request line or a field.
    MalformedHead,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::TargetTooLong => 414,
            Refusal::HeadTooLarge => 431,
            _ => 400,
        }
    }

    /// The rule, as the JSON body's `detail` (or `error`) names it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidTarget => "invalid_target",
            Refusal::MalformedHead => "malformed_head",
            Refusal::InvalidCharacter => "invalid_character",
            Refusal::EncodedSeparator => "encoded_separator",
            Refusal::AboveRoot => "path_above_root",
            Refusal::AmbiguousSegment => "ambiguous_segment",
            Refusal::TargetTooLong => "uri_too_long",
            Refusal::MissingHost => "missing_host",
            Refusal::DuplicateHost => "duplicate_host",
            Refusal::InvalidHost => "invalid_host",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::InvalidLength => "invalid_content_length",
            Refusal::LengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Refusal::InvalidTransferEncoding => "invalid_transfer_encoding",
            Refusal::HeadTooLarge => "request_header_fields_too_large",
        }
    }

    /// The JSON body: `error` as for every other 4xx, `detail` naming the rule.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::InvalidTarget => r#"{"error":"bad_request","detail":"invalid_target"}"#,
            Refusal::MalformedHead => r#"{"error":"bad_request","detail":"malformed_head"}"#,
            Refusal::InvalidCharacter => r#"{"error":"bad_request","detail":"invalid_character"}"#,
            Refusal::EncodedSeparator => r#"{"error":"bad_request","detail":"encoded_separator"}"#,
            Refusal::AboveRoot => r#"{"error":"bad_request","detail":"path_above_root"}"#,
            Refusal::AmbiguousSegment => r#"{"error":"bad_request","detail":"ambiguous_segment"}"#,
            Refusal::TargetTooLong => r#"{"error":"uri_too_long"}"#,
            Refusal::MissingHost => r#"{"error":"bad_request","detail":"missing_host"}"#,
            Refusal::DuplicateHost => r#"{"error":"bad_request","detail":"duplicate_host"}"#,
            Refusal::InvalidHost => r#"{"error":"bad_request","detail":"invalid_host"}"#,
            Refusal::HostMismatch => r#"{"error":"bad_request","detail":"host_mismatch"}"#,
            Refusal::InvalidLength => {
                r#"{"error":"bad_request","detail":"invalid_content_length"}"#
            }
            Refusal::LengthWithTransferEncoding => {
                r#"{"error":"bad_request","detail":"content_length_with_transfer_encoding"}"#
            }
            Refusal::InvalidTransferEncoding => {
                r#"{"error":"bad_request","detail":"invalid_transfer_encoding"}"#
            }
            Refusal::HeadTooLarge => r#"{"error":"request_header_fields_too_large"}"#,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}

/// A request target after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// What routing and rules see: normalised, without `;parameters`.
    pub route_path: Cow<'a, str>,
    /// What the upstream gets: the normalised path, then `?query` if any.
    pub forward: Cow<'a, str>,
    /// The query string, as sent.
    pub query: Option<&'a str>,
    /// The authority of an absolute-form target (`http://host/...`).
    pub authority: Option<&'a str>,
}

impl Target<'_> {
    /// Whether the upstream gets the target exactly as the client sent it.
    pub fn unchanged(&self) -> bool {
        matches!(self.forward, Cow::Borrowed(_))
    }
}

/// Normalises a request target (origin-form `/path?query`, or absolute-form `http://host/path?query`).
pub fn target(raw: &str) -> Result<Target<'_>, Refusal> {
    if raw.len() > MAX_TARGET {
        return Err(Refusal::TargetTooLong);
    }
    if raw.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(Refusal::InvalidCharacter);
    }
    let (authority, origin) = match split_absolute(raw)? {
        Some((authority, rest)) => (Some(authority), rest),
        None => (None, raw),
    };
    if !origin.starts_with('/') {
        return Err(Refusal::InvalidTarget);
    }
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    let clean = !path.contains(['%', ';']) && !path.contains("//") && !path.contains("/.");
    if clean {
        let forward = if authority.is_some() {
            Cow::Owned(origin.to_string())
        } else {
            Cow::Borrowed(origin)
        };
        return Ok(Target {
            route_path: Cow::Borrowed(path),
            forward,
            query,
            authority,
        });
    }
    let decoded = decode_unreserved(path)?;
    let (forward_path, route_path) = resolve(&decoded)?;
    let forward = match query {
        Some(q) => format!("{forward_path}?{q}"),
        None => forward_path,
    };
    Ok(Target {
        route_path: Cow::Owned(route_path),
        forward: Cow::Owned(forward),
        query,
        authority,
    })
}

/// `http://host[:port]/rest` → (`host[:port]`, `/rest`); `None` for an origin-form target.
fn split_absolute(raw: &str) -> Result<Option<(&str, &str)>, Refusal> {
    let lower = raw
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &raw[7..]
    } else if lower.starts_with("https://") {
        &raw[8..]
    } else {
        return Ok(None);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, origin) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Refusal::InvalidTarget);
    }
    if origin.is_empty() {
        return Ok(Some((authority, "/")));
    }
    Ok(Some((authority, origin)))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters; keeps every other escape, in upper case. An encoded `/`,
/// `\` or NUL, or a malformed escape, is refused.
fn decode_unreserved(path: &str) -> Result<String, Refusal> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Refusal::InvalidCharacter);
        };
        let c = hi << 4 | lo;
        match c {
            b'/' | b'\\' | 0 => return Err(Refusal::EncodedSeparator),
            // Pingora escapes raw control bytes of a request line into %XX: refused either way.
            1..=0x1f | 0x7f => return Err(Refusal::InvalidCharacter),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(c as char)
            }
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Merges repeated slashes and resolves dot segments; returns the path to forward and the path to
/// route on (segments without `;parameters`). The trailing slash is kept.
fn resolve(path: &str) -> Result<(String, String), Refusal> {
    let mut forward: Vec<&str> = Vec::new();
    let mut route: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or("");
        let dot = matches!(bare, "." | "..");
        if dot && bare != *seg {
            return Err(Refusal::AmbiguousSegment);
        }
        match *seg {
            "" => trailing = i == last,
            "." => trailing = i == last,
            ".." => {
                if forward.pop().is_none() {
                    return Err(Refusal::AboveRoot);
                }
                route.pop();
                trailing = i == last;
            }
            _ => {
                forward.push(seg);
                route.push(bare);
                trailing = false;
            }
        }
    }
    let join = |parts: &[&str]| {
        let mut s = String::with_capacity(path.len());
        for p in parts {
            s.push('/');
            s.push_str(p);
        }
        if trailing || s.is_empty() {
            s.push('/');
        }
        s
    };
    Ok((join(&forward), join(&route)))
}

/// Checks the Host field(s) of a request, with the absolute-form authority if any. HTTP/1.0 may go
/// without a Host. Returns the host to route on.
pub fn host<'a>(
    hosts: &[&'a [u8]],
    authority: Option<&'a str>,
    http10: bool,
) -> Result<&'a str, Refusal> {
    let field = match hosts {
        [] => None,
        [one] => Some(std::str::from_utf8(one).map_err(|_| Refusal::InvalidHost)?),
        _ => return Err(Refusal::DuplicateHost),
    };
    if let Some(h) = field {
        if h.is_empty() {
            return Err(Refusal::MissingHost);
        }
        if !valid_host(h) {
            return Err(Refusal::InvalidHost);
        }
    }
    match (field, authority) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => Err(Refusal::HostMismatch),
        (_, Some(a)) if !valid_host(a) => Err(Refusal::InvalidHost),
        (_, Some(a)) => Ok(a),
        (Some(h), None) => Ok(h),
        (None, None) if http10 => Ok(""),
        (None, None) => Err(Refusal::MissingHost),
    }
}

/// `name`, `name:port`, `[v6]:port`: letters, digits, `-._:[]`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// The body framing a request declares: Content-Length values (equal duplicates collapse) and
/// Transfer-Encoding, refused when ambiguous. Returns the length, if one was given.
pub fn framing(lengths: &[&[u8]], transfer_encodings: &[&[u8]]) -> Result<Option<u64>, Refusal> {
    let mut length = None;
    for value in lengths {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::InvalidLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Refusal::InvalidLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::InvalidLength);
            }
            length = Some(n);
        }
    }
    if transfer_encodings.is_empty() {
        return Ok(length);
    }
    if length.is_some() {
        return Err(Refusal::LengthWithTransferEncoding);
    }
    let codings: Vec<&[u8]> = transfer_encodings
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    match codings.last() {
        Some(last) if last.eq_ignore_ascii_case(b"chunked") => {
            let chunked = codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count();
            if chunked == 1 {
                Ok(None)
            } else {
                Err(Refusal::InvalidTransferEncoding)
            }
        }
        _ => Err(Refusal::InvalidTransferEncoding),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(raw: &str) -> Result<String, Refusal> {
        target(raw).map(|t| t.route_path.into_owned())
    }

    #[test]
    fn every_spelling_of_a_path_routes_as_the_path() {
        for (raw, want) in [
            ("/api/internal/a", "/api/internal/a"),
            ("/api/x/../internal/a", "/api/internal/a"),
            ("/api/%69nternal/a", "/api/internal/a"),
            ("/api/%69%6E%74ernal/a", "/api/internal/a"),
            ("//api//internal///a", "/api/internal/a"),
            ("/api/./internal/./a", "/api/internal/a"),
            ("/api/internal;jsessionid=1/a", "/api/internal/a"),
            ("/api/internal/", "/api/internal/"),
            ("/api/internal/.", "/api/internal/"),
            ("/api/internal/x/..", "/api/internal/"),
            ("/", "/"),
            ("/..%2e", "/..."),
        ] {
            assert_eq!(route(raw).as_deref(), Ok(want), "{raw}");
        }
        // `/..%2e` decodes to the segment `...`, an ordinary name; `/%2e%2e/` is `..`.
        assert_eq!(route("/a/%2e%2e/b").as_deref(), Ok("/b"));
        assert_eq!(route("/a/%2E/b").as_deref(), Ok("/a/b"));
    }

    #[test]
    fn what_cannot_be_normalised_is_refused() {
        for (raw, why) in [
            ("/api/a%2Finternal", Refusal::EncodedSeparator),
            ("/api/a%2finternal", Refusal::EncodedSeparator),
            ("/api/a%5Cinternal", Refusal::EncodedSeparator),
            ("/api/a%00", Refusal::EncodedSeparator),
            ("/..", Refusal::AboveRoot),
            ("/a/../../b", Refusal::AboveRoot),
            ("/%2e%2e/etc", Refusal::AboveRoot),
            ("/api/..;/internal", Refusal::AmbiguousSegment),
            ("/api/.;x/internal", Refusal::AmbiguousSegment),
            ("api/internal", Refusal::InvalidTarget),
            ("*", Refusal::InvalidTarget),
            ("/a b", Refusal::InvalidCharacter),
            ("/a\tb", Refusal::InvalidCharacter),
            ("/a\x01b", Refusal::InvalidCharacter),
            ("/a#frag", Refusal::InvalidCharacter),
            ("/a%zz", Refusal::InvalidCharacter),
            ("/a%4", Refusal::InvalidCharacter),
            ("/a%01b", Refusal::InvalidCharacter),
            ("/a%7f", Refusal::InvalidCharacter),
            ("http:///a", Refusal::InvalidTarget),
            ("http://user@host/a", Refusal::InvalidTarget),
        ] {
            assert_eq!(route(raw), Err(why), "{raw}");
        }
        assert_eq!(
            route(&format!("/{}", "a".repeat(MAX_TARGET))),
            Err(Refusal::TargetTooLong)
        );
    }

    #[test]
    fn the_upstream_gets_the_normalised_path_with_its_parameters_and_query() {
        let t = target("/api//x/../a;v=1/%7Euser?q=%2F&b").unwrap();
        assert_eq!(t.forward, "/api/a;v=1/~user?q=%2F&b");
        assert_eq!(t.route_path, "/api/a/~user");
        assert_eq!(t.query, Some("q=%2F&b"));
        // Escapes of reserved characters stay escaped (in upper case).
        assert_eq!(target("/a%3fb%2c").unwrap().forward, "/a%3Fb%2C");
        // A clean target is not copied.
        let t = target("/api/a?x=1").unwrap();
        assert!(t.unchanged());
        assert_eq!((t.route_path.as_ref(), t.query), ("/api/a", Some("x=1")));
    }

    #[test]
    fn absolute_form_gives_the_authority() {
        let t = target("http://API.example.com:8080/a/../b?x").unwrap();
        assert_eq!(t.authority, Some("API.example.com:8080"));
        assert_eq!((t.route_path.as_ref(), t.forward.as_ref()), ("/b", "/b?x"));
        assert_eq!(target("http://h").unwrap().forward, "/");
    }

    #[test]
    fn exactly_one_host() {
        assert_eq!(host(&[b"a.example"], None, false), Ok("a.example"));
        assert_eq!(host(&[], None, false), Err(Refusal::MissingHost));
        assert_eq!(host(&[], None, true), Ok(""));
        assert_eq!(host(&[b""], None, false), Err(Refusal::MissingHost));
        assert_eq!(
            host(&[b"a", b"b"], None, false),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(
            host(&[b"a", b"a"], None, false),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(host(&[b"a b"], None, false), Err(Refusal::InvalidHost));
        assert_eq!(host(&[b"a/b"], None, false), Err(Refusal::InvalidHost));
        assert_eq!(
            host(&[b"A.example"], Some("a.example"), false),
            Ok("a.example")
        );
        assert_eq!(
            host(&[b"b.example"], Some("a.example"), false),
            Err(Refusal::HostMismatch)
        );
        assert_eq!(host(&[], Some("a.example"), false), Ok("a.example"));
        assert_eq!(host(&[b"[::1]:8080"], None, false), Ok("[::1]:8080"));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert_eq!(framing(&[b"5"], &[]), Ok(Some(5)));
        assert_eq!(framing(&[b"5", b"5"], &[]), Ok(Some(5)));
        assert_eq!(framing(&[b"5, 5"], &[]), Ok(Some(5)));
        assert_eq!(framing(&[b"5", b"6"], &[]), Err(Refusal::InvalidLength));
        assert_eq!(framing(&[b"5, 6"], &[]), Err(Refusal::InvalidLength));
        assert_eq!(framing(&[b"-1"], &[]), Err(Refusal::InvalidLength));
        assert_eq!(framing(&[b"+5"], &[]), Err(Refusal::InvalidLength));
        assert_eq!(framing(&[b"0x5"], &[]), Err(Refusal::InvalidLength));
        assert_eq!(framing(&[b""], &[]), Err(Refusal::InvalidLength));
        assert_eq!(
            framing(&[b"99999999999999999999"], &[]),
            Err(Refusal::InvalidLength)
        );
        assert_eq!(framing(&[], &[b"chunked"]), Ok(None));
        assert_eq!(framing(&[], &[b"gzip, chunked"]), Ok(None));
        assert_eq!(
            framing(&[b"5"], &[b"chunked"]),
            Err(Refusal::LengthWithTransferEncoding)
        );
        assert_eq!(
            framing(&[], &[b"chunked, gzip"]),
            Err(Refusal::InvalidTransferEncoding)
        );
        assert_eq!(
            framing(&[], &[b"chunked", b"chunked"]),
            Err(Refusal::InvalidTransferEncoding)
        );
        assert_eq!(
            framing(&[], &[b"identity"]),
            Err(Refusal::InvalidTransferEncoding)
        );
    }
}
