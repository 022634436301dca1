//! Rule conditions (`when`), compiled once: header names pre-parsed, client sets as ids, CIDRs parsed.
//! Also the request accessors they share with sticky keys: cookies and query parameters.

use super::{ClientId, RequestView};
use crate::config::parse::Cidr;
use http::HeaderName;
use std::borrow::Cow;

#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Header(HeaderName, Box<[u8]>),
    HeaderPresent(HeaderName),
    Cookie(Box<str>, Box<str>),
    Query(Box<str>, Box<str>),
    ClientIn(Box<[ClientId]>),
    Method(Box<[Box<str>]>),
    SourceIp(Box<[Cidr]>),
}

impl Cond {
    fn holds(&self, req: &RequestView<'_>, client: Option<ClientId>) -> bool {
        match self {
            Cond::Header(name, value) => req.headers.values(name).any(|v| v == &**value),
            Cond::HeaderPresent(name) => req.headers.contains(name),
            Cond::Cookie(name, value) => cookie(req, name).is_some_and(|v| *v == **value),
            Cond::Query(name, value) => query_param(req.query, name).is_some_and(|v| *v == **value),
            Cond::ClientIn(ids) => client.is_some_and(|c| ids.contains(&c)),
            Cond::Method(methods) => methods.iter().any(|m| m.eq_ignore_ascii_case(req.method)),
            Cond::SourceIp(cidrs) => req
                .client_ip
                .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip))),
        }
    }
}

/// All conditions of one `when`.
#[derive(Debug, Clone)]
pub(crate) struct When(pub(crate) Box<[Cond]>);

impl When {
    pub(crate) fn holds(&self, req: &RequestView<'_>, client: Option<ClientId>) -> bool {
        self.0.iter().all(|c| c.holds(req, client))
    }

    pub(crate) fn reads_client_ip(&self) -> bool {
        self.0.iter().any(|c| matches!(c, Cond::SourceIp(_)))
    }
}

/// The value of cookie `name`, from any `Cookie` header. Scans bytes: this runs on every request
/// of a route with a cookie rule or sticky key.
pub(crate) fn cookie<'a>(req: &RequestView<'a>, name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    req.headers.values(&http::header::COOKIE).find_map(|h| {
        h.split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name)?;
            let value = rest.trim_ascii_start().strip_prefix(b"=")?.trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            std::str::from_utf8(value).ok()
        })
    })
}

/// The (percent-decoded) value of query parameter `name`; the first one wins.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let matches = if k.bytes().any(|b| b == b'%' || b == b'+') {
            percent_decode(k) == name
        } else {
            k.as_bytes() == name.as_bytes()
        };
        matches.then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as written.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn view<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "GET",
            host: "h",
            path: "/",
            query,
            headers: headers.into(),
            client_ip: None,
        }
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; uid=42 ; q=\"x\"".parse().unwrap());
        h.append("cookie", "late=9".parse().unwrap());
        let v = view(&h, None);
        assert_eq!(cookie(&v, "uid"), Some("42"));
        assert_eq!(cookie(&v, "q"), Some("x"));
        assert_eq!(cookie(&v, "late"), Some("9"));
        assert_eq!(cookie(&v, "u"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&version=beta"), "version").as_deref(),
            Some("beta")
        );
        assert_eq!(
            query_param(Some("v=a%20b+c"), "v").as_deref(),
            Some("a b c")
        );
        assert_eq!(query_param(Some("flag&x=1"), "flag").as_deref(), Some(""));
        assert_eq!(query_param(Some("x=%zz%4"), "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("x=1"), "y"), None);
        assert_eq!(query_param(None, "y"), None);
    }
}
