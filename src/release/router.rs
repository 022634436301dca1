//! Route lookup: exact host > wildcard host (longest suffix first) > any host; within a host, the longest
//! matching path prefix. Prefixes match whole path segments (`/api` matches `/api` and `/api/x`, never
//! `/apix`). Lookup costs one hash probe per path segment, whatever the number of routes.

use super::RouteId;
use ahash::AHashMap;
use std::borrow::Cow;

/// Routes of one host tier, keyed by normalised prefix (no trailing slash; `""` is the root).
#[derive(Debug, Default)]
struct PathTable {
    prefixes: AHashMap<Box<str>, RouteId>,
    /// Longest prefix in bytes: longer candidates are skipped without probing.
    longest: usize,
}

impl PathTable {
    fn insert(&mut self, prefix: &str, route: RouteId) {
        self.longest = self.longest.max(prefix.len());
        self.prefixes.insert(prefix.into(), route);
    }

    /// Routes whose prefix matches `path`, longest first.
    fn candidates<'a>(&'a self, path: &'a str) -> impl Iterator<Item = RouteId> + 'a {
        // Start at the longest segment boundary no longer than the longest prefix: nothing longer
        // can match. Cutting at a '/' always lands on a char boundary.
        let bytes = path.as_bytes();
        let mut end = if path.len() <= self.longest {
            Some(path.len())
        } else if bytes.get(self.longest) == Some(&b'/') {
            Some(self.longest)
        } else {
            Some(
                bytes[..self.longest]
                    .iter()
                    .rposition(|b| *b == b'/')
                    .unwrap_or(0),
            )
        };
        std::iter::from_fn(move || {
            while let Some(e) = end {
                let candidate = &path[..e];
                end = if e == 0 {
                    None
                } else {
                    Some(candidate.rfind('/').unwrap_or(0))
                };
                if let Some(r) = self.prefixes.get(candidate) {
                    return Some(*r);
                }
            }
            None
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Router {
    exact: AHashMap<Box<str>, PathTable>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: AHashMap<Box<str>, PathTable>,
    any: PathTable,
}

impl Router {
    /// `host` is a normalised pattern (`""` for any host); `prefix` a normalised prefix.
    pub(crate) fn insert(&mut self, host: &str, prefix: &str, route: RouteId) {
        if host.is_empty() {
            self.any.insert(prefix, route);
        } else if let Some(suffix) = host.strip_prefix("*.") {
            self.wildcard
                .entry(suffix.into())
                .or_default()
                .insert(prefix, route);
        } else {
            self.exact
                .entry(host.into())
                .or_default()
                .insert(prefix, route);
        }
    }

    /// Every route that matches `host` and `path`, most specific first.
    /// `host` may carry a port and any case; `path` excludes the query.
    pub(crate) fn candidates<'a>(
        &'a self,
        host: &'a str,
        path: &'a str,
    ) -> impl Iterator<Item = RouteId> + 'a {
        let host = normalize_request_host(host);
        let exact = self.exact.get(host.as_ref()).map(|t| t.candidates(path));
        let mut wild: Vec<&PathTable> = Vec::new();
        if !self.wildcard.is_empty() {
            let mut rest: &str = host.as_ref();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(t) = self.wildcard.get(parent) {
                    wild.push(t);
                }
                rest = parent;
            }
        }
        exact
            .into_iter()
            .flatten()
            .chain(wild.into_iter().flat_map(move |t| t.candidates(path)))
            .chain(self.any.candidates(path))
    }
}

/// Strips the port and a trailing dot, lowercases (borrowing when already lowercase).
fn normalize_request_host(host: &str) -> Cow<'_, str> {
    let b = host.as_bytes();
    let end = if b.first() == Some(&b'[') {
        // [v6]:port
        b.iter().position(|c| *c == b']').map_or(b.len(), |i| i + 1)
    } else {
        b.iter().rposition(|c| *c == b':').unwrap_or(b.len())
    };
    let mut h = &b[..end];
    while let [rest @ .., b'.'] = h {
        h = rest;
    }
    // Cutting at ASCII bytes keeps `h` valid UTF-8.
    let h = &host[..h.len()];
    if h.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(entries: &[(&str, &str)]) -> Router {
        let mut r = Router::default();
        for (i, (h, p)) in entries.iter().enumerate() {
            r.insert(h, p, i as RouteId);
        }
        r
    }

    fn first(r: &Router, host: &str, path: &str) -> Option<RouteId> {
        r.candidates(host, path).next()
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let r = router(&[("", ""), ("", "/api"), ("", "/api/payments")]);
        assert_eq!(first(&r, "x", "/api/payments/12"), Some(2));
        assert_eq!(first(&r, "x", "/api/payments"), Some(2));
        assert_eq!(first(&r, "x", "/api/payments/"), Some(2));
        assert_eq!(first(&r, "x", "/api/paymentsX"), Some(1));
        assert_eq!(first(&r, "x", "/apix"), Some(0));
        assert_eq!(first(&r, "x", "/"), Some(0));
        assert_eq!(first(&r, "x", ""), Some(0));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let r = router(&[
            ("", "/api/payments/long"),
            ("*.example.com", "/api"),
            ("api.example.com", ""),
        ]);
        assert_eq!(first(&r, "api.example.com", "/api/payments/long"), Some(2));
        assert_eq!(first(&r, "API.Example.com:8443", "/api"), Some(2));
        assert_eq!(first(&r, "api.example.com.", "/api"), Some(2));
        assert_eq!(normalize_request_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_request_host("Host"), "host");
        assert_eq!(first(&r, "www.example.com", "/api/x"), Some(1));
        assert_eq!(first(&r, "a.b.example.com", "/api/x"), Some(1));
        assert_eq!(first(&r, "example.com", "/api/payments/long"), Some(0));
        assert_eq!(first(&r, "other.org", "/nothing"), None);
        // Falls through tiers in order of specificity.
        let all: Vec<_> = r
            .candidates("www.example.com", "/api/payments/long/1")
            .collect();
        assert_eq!(all, vec![1, 0]);
    }

    #[test]
    fn no_route() {
        let r = router(&[("", "/api")]);
        assert_eq!(first(&r, "h", "/web"), None);
    }
}
