//! A route's `mirror:` and its `compare:` as written (SPEC §5).

use super::{parse, Dur, Percent, Sticky};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    #[serde(default)]
    pub to: String,
    #[serde(default = "default_mirror_percent")]
    pub percent: Percent,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sticky: Vec<Sticky>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: u64,
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareConfig>,
}

fn default_mirror_percent() -> Percent {
    Percent::from(100.0)
}
fn default_mirror_body() -> u64 {
    65536
}
fn default_mirror_timeout() -> Dur {
    "2s".into()
}
fn default_mirror_in_flight() -> u64 {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_json: Vec<String>,
    #[serde(default = "default_compare_body")]
    pub max_body_bytes: u64,
    /// Share of mirrored safe requests (GET, HEAD, OPTIONS without a body) sent a second time to
    /// the upstream that served the primary, to learn which fields differ anyway (0: none).
    #[serde(default = "default_noise_percent")]
    pub noise_percent: Percent,
    /// A field is significant when its shadow difference rate `r` exceeds its noise rate `n` with
    /// `(r − n) / (r + n)` above `noise_relative` and `r − n` above `noise_absolute`.
    #[serde(default = "default_noise_relative")]
    pub noise_relative: Percent,
    #[serde(default = "default_noise_absolute")]
    pub noise_absolute: Percent,
}

fn default_compare_body() -> u64 {
    1 << 20
}
fn default_noise_percent() -> Percent {
    Percent::from(5.0)
}
fn default_noise_relative() -> Percent {
    Percent::from(20.0)
}
fn default_noise_absolute() -> Percent {
    Percent::from(0.03)
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            ignore_headers: Vec::new(),
            ignore_json: Vec::new(),
            max_body_bytes: default_compare_body(),
            noise_percent: default_noise_percent(),
            noise_relative: default_noise_relative(),
            noise_absolute: default_noise_absolute(),
        }
    }
}

impl CompareConfig {
    /// What is wrong in it, each with its path under `compare`.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, h) in self.ignore_headers.iter().enumerate() {
            if let Err(e) = parse::header_name(h) {
                out.push((format!("ignore_headers[{i}]"), e));
            }
        }
        for (i, p) in self.ignore_json.iter().enumerate() {
            if !p.is_empty() && !p.starts_with('/') {
                let e = format!("invalid JSON pointer {p:?} (must start with '/')");
                out.push((format!("ignore_json[{i}]"), e));
            }
        }
        let noise = [
            ("noise_percent", &self.noise_percent),
            ("noise_relative", &self.noise_relative),
            ("noise_absolute", &self.noise_absolute),
        ];
        for (at, value) in noise {
            if let Err(e) = value.read() {
                out.push((at.to_string(), e));
            }
        }
        out
    }
}
