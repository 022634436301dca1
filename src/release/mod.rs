//! The release decision (SPEC §3): a pure function over an immutable, compiled [`ReleaseTable`].
//!
//! Nothing here is async or knows about Pingora: the proxy hands in a [`RequestView`] and gets back an
//! [`Outcome`]. Health-aware fallback happens after the decision, in the proxy, because it depends on
//! live pool health rather than on the table.

mod matcher;
pub mod mirror;
mod router;
pub mod split;
mod table;

pub use mirror::{mirror_for, Mirror};
pub use table::{ReleaseTable, Route};

pub(crate) use matcher::percent_decode;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;

/// Index of a route in its table.
pub type RouteId = u32;
/// Index of an upstream (a deployed version) in its table.
pub type UpstreamId = u32;
/// Index of an identified API client in its table.
pub type ClientId = u32;

/// What the decision needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `Host` (or `:authority`), possibly with a port.
    pub host: &'a str,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Headers<'a>,
    pub client_ip: Option<IpAddr>,
}

/// A request's header fields as the decision reads them: Pingora's parsed map, or the raw fields a
/// wire parser left (Switchyard's HTTP/1 engine: names as sent, in any case). Either way, client-sent
/// `X-Switchyard-*` fields are already left out. The decision knows no parser's types.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a HeaderMap),
    Raw(&'a dyn RawFields<'a>),
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Headers::Map(m) => f.debug_tuple("Map").field(m).finish(),
            Headers::Raw(r) => f.debug_tuple("Raw").field(&r.count()).finish(),
        }
    }
}

/// Header fields in the order a parser found them: (name as sent, value).
pub trait RawFields<'a> {
    fn count(&self) -> usize;
    fn field(&self, i: usize) -> Option<(&'a str, &'a [u8])>;
}

/// Fields given as (name, value) pairs (tests, benches, the admin API's explain).
pub struct FieldPairs<'s, 'a>(pub &'s [(&'a str, &'a [u8])]);

impl<'s, 'a: 's> RawFields<'s> for FieldPairs<'s, 'a> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn field(&self, i: usize) -> Option<(&'s str, &'s [u8])> {
        self.0.get(i).copied()
    }
}

impl<'a> From<&'a HeaderMap> for Headers<'a> {
    fn from(map: &'a HeaderMap) -> Self {
        Headers::Map(map)
    }
}

impl<'a> Headers<'a> {
    /// The first value of `name`.
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    pub fn contains(self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every value of `name`, in the order sent.
    pub fn values<'n>(self, name: &'n HeaderName) -> Values<'a, 'n> {
        match self {
            Headers::Map(m) => Values::Map(m.get_all(name).iter()),
            Headers::Raw(fields) => Values::Raw(fields, 0, name.as_str()),
        }
    }
}

/// The values of one header name (see [`Headers::values`]).
pub enum Values<'a, 'n> {
    Map(http::header::ValueIter<'a, http::HeaderValue>),
    Raw(&'a dyn RawFields<'a>, usize, &'n str),
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(it) => it.next().map(|v| v.as_bytes()),
            // `HeaderName`s are lowercase; the raw names are compared without regard to case.
            Values::Raw(fields, next, name) => {
                while let Some((n, v)) = fields.field(*next) {
                    *next += 1;
                    if n.eq_ignore_ascii_case(name) {
                        return Some(v);
                    }
                }
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }
}

/// Why a request got its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rule n (0-based, in written order) matched.
    Rule(u16),
    /// The split placed the request in `bucket`; `sticky` is the index of the sticky key used, or
    /// `None` when no key was present and the bucket was random.
    Split { bucket: u32, sticky: Option<u8> },
    /// The blue/green route's live colour.
    Live(Colour),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(n) => write!(f, "rule:{n}"),
            Reason::Split {
                bucket,
                sticky: Some(_),
            } => write!(f, "split:{bucket}"),
            Reason::Split {
                bucket,
                sticky: None,
            } => write!(f, "split:{bucket}:random"),
            Reason::Live(c) => write!(f, "live:{}", c.as_str()),
        }
    }
}

/// A routed request: which route, which version, why, and who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: RouteId,
    pub target: UpstreamId,
    pub reason: Reason,
    pub client: Option<ClientId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Routed(Decision),
    /// No route matches: 404 `{"error":"no_route"}`.
    NoRoute,
    /// The route requires a known API client and none was identified: 401.
    ClientRequired {
        route: RouteId,
    },
}

/// Decides where a request goes (SPEC §3). Pure: same table + same request = same answer, except for
/// the random bucket of a split request with no sticky key, drawn from `random`.
pub fn decide(
    table: &ReleaseTable,
    req: &RequestView<'_>,
    random: &mut dyn FnMut() -> u32,
) -> Outcome {
    match table.find_route(req.host, req.path, req.method) {
        Some(route) => decide_route(table, route, req, random),
        None => Outcome::NoRoute,
    }
}

/// The decision for a request already matched to `route`.
pub fn decide_route(
    table: &ReleaseTable,
    route_id: RouteId,
    req: &RequestView<'_>,
    random: &mut dyn FnMut() -> u32,
) -> Outcome {
    let client = identify_client(table, req);
    decide_for_client(table, route_id, req, client, random)
}

/// The decision for a request already matched to `route`, from a known client (or none). Explaining a
/// route uses this directly: it knows the client id, not the client's secret key.
pub fn decide_for_client(
    table: &ReleaseTable,
    route_id: RouteId,
    req: &RequestView<'_>,
    client: Option<ClientId>,
    random: &mut dyn FnMut() -> u32,
) -> Outcome {
    let Some(route) = table.route(route_id) else {
        return Outcome::NoRoute;
    };
    if route.require_client && client.is_none() {
        return Outcome::ClientRequired { route: route_id };
    }
    for (i, rule) in route.rules.iter().enumerate() {
        if rule.when.holds(req, client) {
            return Outcome::Routed(Decision {
                route: route_id,
                target: rule.to,
                reason: Reason::Rule(i as u16),
                client,
            });
        }
    }
    let (target, reason) = match &route.strategy {
        table::Strategy::Split(split) => {
            let client_name = client.map(|c| table.client_name(c));
            let (bucket, sticky) = split.bucket_for(req, client_name, random);
            (split.target(bucket), Reason::Split { bucket, sticky })
        }
        table::Strategy::BlueGreen { .. } => {
            let live = route_live(route);
            (route.baseline(), Reason::Live(live))
        }
    };
    Outcome::Routed(Decision {
        route: route_id,
        target,
        reason,
        client,
    })
}

fn route_live(route: &Route) -> Colour {
    match &route.strategy {
        table::Strategy::BlueGreen { live, .. } => *live,
        table::Strategy::Split(_) => Colour::Blue,
    }
}

/// The client whose API key the request carries, if any. The key is hashed with SHA-256 and looked up
/// by digest; the stored digest is then compared in constant time, so response timing reveals nothing
/// about stored keys.
fn identify_client(table: &ReleaseTable, req: &RequestView<'_>) -> Option<ClientId> {
    let header = table.clients.header.as_ref()?;
    let key = req.headers.get(header)?;
    if key.is_empty() {
        return None;
    }
    let digest: [u8; 32] = Sha256::digest(key).into();
    let (stored, id) = table.clients.by_digest.get_key_value(&digest)?;
    constant_time_eq(stored, &digest).then_some(*id)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests;
