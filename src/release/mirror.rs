//! A route's compiled `mirror:`: which requests get a shadow copy, and where it goes. The sampling is
//! part of the pure decision: random, or sticky (the same users are mirrored on every instance), with
//! its own salt so mirrored users are not the split's canary users.

use super::split::{Split, BUCKETS};
use super::{Decision, ReleaseTable, RequestView, UpstreamId};
use crate::config::{ConfigError, ConfigErrors, MirrorConfig};
use std::time::Duration;

/// Methods mirrored when `methods` is not given: the ones without side effects.
pub const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

#[derive(Debug, Clone)]
pub struct Compare {
    /// Lowercase names of headers left out of the comparison (beyond the always-ignored ones).
    pub ignore_headers: Vec<String>,
    /// JSON pointers removed from both bodies before comparing.
    pub ignore_json: Vec<String>,
    /// Bytes of each body captured for the comparison.
    pub max_body_bytes: usize,
    /// Mirrored safe requests also sent a second time to the primary's upstream, to learn the
    /// noise (per million).
    pub noise_per_million: u32,
    /// Diffy's thresholds, 0–1: relative and absolute difference of a field's shadow and noise rates.
    pub noise_relative: f64,
    pub noise_absolute: f64,
}

impl Compare {
    /// Whether a copy of this request also goes to the primary's upstream, to learn the noise:
    /// sampled among safe requests without a body.
    pub fn learns_noise_from(
        &self,
        method: &str,
        body: bool,
        random: &mut dyn FnMut() -> u32,
    ) -> bool {
        self.noise_per_million > 0
            && !body
            && matches!(method, "GET" | "HEAD" | "OPTIONS")
            && random() % 1_000_000 < self.noise_per_million
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub to: UpstreamId,
    /// Buckets below this are mirrored (percent of 1,000,000).
    threshold: u32,
    /// Only its sticky keys and salt are used.
    sampler: Split,
    methods: Box<[Box<str>]>,
    pub max_body_bytes: u64,
    pub timeout: Duration,
    pub max_in_flight: u64,
    pub compare: Option<Compare>,
}

impl Mirror {
    pub(crate) fn reads_client_ip(&self) -> bool {
        self.sampler.reads_client_ip()
    }

    pub(crate) fn compile(
        path: &str,
        route: &str,
        m: &MirrorConfig,
        to: UpstreamId,
    ) -> Result<Mirror, ConfigErrors> {
        let err = |at: &str, msg: String| {
            ConfigErrors::from(ConfigError::new(format!("{path}.{at}"), msg))
        };
        let percent = m.percent.read().map_err(|e| err("percent", e))?;
        let sticky = m
            .sticky
            .iter()
            .enumerate()
            .map(|(i, k)| k.read().map_err(|e| err(&format!("sticky[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let methods = match &m.methods {
            Some(list) => list.iter().map(|x| x.to_ascii_uppercase().into()).collect(),
            None => DEFAULT_METHODS.iter().map(|x| (*x).into()).collect(),
        };
        let timeout = m.timeout.read().map_err(|e| err("timeout", e))?;
        Ok(Mirror {
            to,
            threshold: ((percent / 100.0) * f64::from(BUCKETS)).round() as u32,
            sampler: Split::new(&[(to, 1.0)], sticky, format!("{route}:mirror")),
            methods,
            max_body_bytes: m.max_body_bytes,
            timeout,
            max_in_flight: m.max_in_flight,
            compare: match &m.compare {
                Some(c) => {
                    Some(compile_compare(c).map_err(|(at, e)| err(&format!("compare.{at}"), e))?)
                }
                None => None,
            },
        })
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

fn compile_compare(c: &crate::config::CompareConfig) -> Result<Compare, (&'static str, String)> {
    let noise = c.noise_percent.read().map_err(|e| ("noise_percent", e))?;
    let relative = c.noise_relative.read().map_err(|e| ("noise_relative", e))?;
    let absolute = c.noise_absolute.read().map_err(|e| ("noise_absolute", e))?;
    Ok(Compare {
        ignore_headers: c
            .ignore_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        ignore_json: c.ignore_json.clone(),
        max_body_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
        noise_per_million: (noise * 10_000.0).round() as u32,
        noise_relative: relative / 100.0,
        noise_absolute: absolute / 100.0,
    })
}

/// The mirror a routed request should be copied to, if any: the route mirrors, the request's method is
/// mirrored, it was not routed to the mirror target anyway, and it falls in the sampled share.
pub fn mirror_for<'t>(
    table: &'t ReleaseTable,
    decision: &Decision,
    req: &RequestView<'_>,
    random: &mut dyn FnMut() -> u32,
) -> Option<&'t Mirror> {
    let m = table.route(decision.route)?.mirror.as_ref()?;
    if m.threshold == 0 || decision.target == m.to || !m.allows_method(req.method) {
        return None;
    }
    let client = decision.client.map(|c| table.client_name(c));
    let (bucket, _) = m.sampler.bucket_for(req, client, random);
    (bucket < m.threshold).then_some(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Valid;
    use crate::release::{decide, Outcome};
    use http::HeaderMap;

    fn table(mirror: &str) -> ReleaseTable {
        let yaml = format!(
            "upstreams:\n  v1: {{backends: [\"127.0.0.1:1\"]}}\n  v2: {{backends: [\"127.0.0.1:2\"]}}\nroutes:\n  - name: api\n    split: {{targets: {{v1: 90, v2: 10}}, baseline: v1, sticky: [header:X-User-Id]}}\n    mirror: {mirror}\n"
        );
        ReleaseTable::compile(&Valid::load(&yaml).unwrap()).unwrap()
    }

    fn mirrored(
        t: &ReleaseTable,
        method: &str,
        user: Option<&str>,
        rng: &mut dyn FnMut() -> u32,
    ) -> (bool, UpstreamId) {
        let mut headers = HeaderMap::new();
        if let Some(u) = user {
            headers.insert("x-user-id", u.parse().unwrap());
        }
        let view = RequestView {
            method,
            host: "",
            path: "/",
            query: None,
            headers: (&headers).into(),
            client_ip: None,
        };
        let Outcome::Routed(d) = decide(t, &view, rng) else {
            panic!("not routed")
        };
        (mirror_for(t, &d, &view, rng).is_some(), d.target)
    }

    #[test]
    fn sticky_sampling_mirrors_the_same_users_at_the_configured_share() {
        let t = table("{to: v2, percent: 30, sticky: [header:X-User-Id]}");
        let mut rng = {
            let mut x = 12345u32;
            move || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            }
        };
        let mut sampled = 0;
        let mut on_v1 = 0;
        for i in 0..10_000 {
            let user = format!("user-{i}");
            let (m, target) = mirrored(&t, "GET", Some(&user), &mut rng);
            assert_eq!(mirrored(&t, "GET", Some(&user), &mut rng).0, m, "sticky");
            if target == 1 {
                assert!(!m, "a request routed to the mirror target is not mirrored");
                continue;
            }
            on_v1 += 1;
            sampled += usize::from(m);
        }
        let share = sampled as f64 / on_v1 as f64;
        assert!((0.28..0.32).contains(&share), "{share}");
        // Only the listed (or default) methods.
        assert!(!(0..50).any(|i| mirrored(&t, "POST", Some(&format!("u{i}")), &mut rng).0));
        let none = table("{to: v2, percent: 0}");
        assert!(!(0..50).any(|_| mirrored(&none, "GET", None, &mut rng).0));
    }
}
