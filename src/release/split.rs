//! Weighted, sticky splits (SPEC §3 step 4).
//!
//! bucket = xxh3_64(`salt` + ":" + key) mod 1,000,000. Targets own consecutive bucket ranges, each sized
//! weight / total: the baseline's range first, then the other targets in byte order of their names (the
//! caller lays them out so; see `SplitConfig::ordered_targets`), so the order a file lists them in never
//! matters. The formula is stable across processes, machines and versions, so every instance sends a
//! user to the same version, and raising a canary at the baseline's expense only adds users to it (the
//! monotone ramp).

use super::matcher::{cookie, query_param};
use super::{RequestView, UpstreamId};
use crate::config::parse::StickyKey;
use std::io::Write;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Number of buckets of a split.
pub const BUCKETS: u32 = 1_000_000;

/// The bucket of `key` under `salt`: xxh3_64(salt ":" key) mod 1,000,000.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let len = salt.len() + 1 + key.len();
    let h = if len <= 256 {
        let mut buf = [0u8; 256];
        buf[..salt.len()].copy_from_slice(salt.as_bytes());
        buf[salt.len()] = b':';
        buf[salt.len() + 1..len].copy_from_slice(key);
        xxh3_64(&buf[..len])
    } else {
        let mut h = Xxh3::new();
        h.update(salt.as_bytes());
        h.update(b":");
        h.update(key);
        h.digest()
    };
    (h % u64::from(BUCKETS)) as u32
}

#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// (exclusive end of range, target), baseline first; the last end is `BUCKETS`.
    ranges: Box<[(u32, UpstreamId)]>,
    sticky: Box<[Sticky]>,
    pub(crate) salt: Box<str>,
}

impl Split {
    pub(crate) fn reads_client_ip(&self) -> bool {
        self.sticky.iter().any(|k| matches!(k, Sticky::Ip))
    }

    /// `targets` in bucket order, baseline first, with their weights (validated: finite, >= 0, positive
    /// sum).
    pub(crate) fn new(
        targets: &[(UpstreamId, f64)],
        sticky: Vec<StickyKey>,
        salt: String,
    ) -> Split {
        let total: f64 = targets.iter().map(|(_, w)| w).sum();
        let mut cum = 0.0;
        let ranges = targets
            .iter()
            .map(|(t, w)| {
                cum += w;
                let end = ((cum / total) * f64::from(BUCKETS)).round() as u32;
                (end.min(BUCKETS), *t)
            })
            .collect::<Vec<_>>();
        let mut ranges = ranges;
        if let Some(last) = ranges.last_mut() {
            last.0 = BUCKETS;
        }
        Split {
            ranges: ranges.into(),
            sticky: sticky.into_iter().filter_map(Sticky::compile).collect(),
            salt: salt.into(),
        }
    }

    /// The sticky keys, as written in a config.
    pub(crate) fn sticky_names(&self) -> Vec<String> {
        self.sticky.iter().map(|k| k.key().to_string()).collect()
    }

    /// The target owning `bucket`.
    pub(crate) fn target(&self, bucket: u32) -> UpstreamId {
        self.ranges
            .iter()
            .find(|(end, _)| bucket < *end)
            .or(self.ranges.last())
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// Every target, baseline first.
    pub(crate) fn targets(&self) -> impl Iterator<Item = UpstreamId> + '_ {
        self.ranges.iter().map(|(_, t)| *t)
    }

    /// The route's baseline (laid out first).
    pub(crate) fn baseline(&self) -> UpstreamId {
        self.ranges.first().map(|(_, t)| *t).unwrap_or_default()
    }

    /// The bucket for this request and the index of the sticky key that gave it (None: random).
    pub(crate) fn bucket_for(
        &self,
        req: &RequestView<'_>,
        client: Option<&str>,
        random: &mut dyn FnMut() -> u32,
    ) -> (u32, Option<u8>) {
        for (i, key) in self.sticky.iter().enumerate() {
            if let Some(b) = self.sticky_bucket(key, req, client) {
                return (b, Some(i as u8));
            }
        }
        (random() % BUCKETS, None)
    }

    fn sticky_bucket(
        &self,
        key: &Sticky,
        req: &RequestView<'_>,
        client: Option<&str>,
    ) -> Option<u32> {
        let b = match key {
            Sticky::Header(name) => {
                let v = req.headers.get(name)?;
                (!v.is_empty()).then(|| bucket(&self.salt, v))?
            }
            Sticky::Cookie(name) => {
                let v = cookie(req, name)?;
                (!v.is_empty()).then(|| bucket(&self.salt, v.as_bytes()))?
            }
            Sticky::Query(name) => {
                let v = query_param(req.query, name)?;
                (!v.is_empty()).then(|| bucket(&self.salt, v.as_bytes()))?
            }
            Sticky::Client => bucket(&self.salt, client?.as_bytes()),
            Sticky::Ip => {
                let ip = req.client_ip?;
                let mut buf = [0u8; 64];
                let mut cur = std::io::Cursor::new(&mut buf[..]);
                write!(cur, "{ip}").ok()?;
                let n = cur.position() as usize;
                bucket(&self.salt, &buf[..n])
            }
        };
        Some(b)
    }
}

/// A sticky key ready for lookup: header names parsed once, not per request.
#[derive(Debug, Clone)]
enum Sticky {
    Header(http::HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
    Client,
    Ip,
}

impl Sticky {
    fn key(&self) -> StickyKey {
        match self {
            Sticky::Header(n) => StickyKey::Header(n.as_str().to_string()),
            Sticky::Cookie(n) => StickyKey::Cookie(n.to_string()),
            Sticky::Query(n) => StickyKey::Query(n.to_string()),
            Sticky::Client => StickyKey::Client,
            Sticky::Ip => StickyKey::Ip,
        }
    }

    /// Validated keys always compile; a header name that does not parse is dropped.
    fn compile(key: StickyKey) -> Option<Sticky> {
        Some(match key {
            StickyKey::Header(n) => {
                Sticky::Header(http::HeaderName::from_bytes(n.as_bytes()).ok()?)
            }
            StickyKey::Cookie(n) => Sticky::Cookie(n.into()),
            StickyKey::Query(n) => Sticky::Query(n.into()),
            StickyKey::Client => Sticky::Client,
            StickyKey::Ip => Sticky::Ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_matches_the_documented_formula() {
        // Anyone can reproduce a user's bucket from the SPEC formula with a stock xxh3 implementation.
        let expect = (xxh3_64(b"payments:user-42") % 1_000_000) as u32;
        assert_eq!(bucket("payments", b"user-42"), expect);
        let long_key = vec![b'k'; 400];
        let mut joined = b"payments:".to_vec();
        joined.extend_from_slice(&long_key);
        assert_eq!(
            bucket("payments", &long_key),
            (xxh3_64(&joined) % 1_000_000) as u32
        );
    }

    #[test]
    fn ranges_follow_the_given_order_and_weights() {
        let s = Split::new(&[(0, 99.0), (1, 1.0)], vec![], "r".into());
        assert_eq!(s.target(0), 0);
        assert_eq!(s.target(989_999), 0);
        assert_eq!(s.target(990_000), 1);
        assert_eq!(s.target(999_999), 1);
    }

    #[test]
    fn zero_weight_owns_nothing() {
        let s = Split::new(&[(0, 100.0), (1, 0.0)], vec![], "r".into());
        assert_eq!(s.target(999_999), 0);
        let s = Split::new(&[(0, 0.0), (1, 5.0)], vec![], "r".into());
        assert_eq!(s.target(0), 1);
    }

    #[test]
    fn three_way_split_with_fractions() {
        let s = Split::new(&[(0, 1.0), (1, 1.0), (2, 1.0)], vec![], "r".into());
        assert_eq!((s.target(333_332), s.target(333_333)), (0, 1));
        assert_eq!((s.target(666_666), s.target(666_667)), (1, 2));
        assert_eq!(s.target(BUCKETS - 1), 2);
    }
}
