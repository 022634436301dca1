//! A route's `rollout` as written (SPEC §6): the canary, the steps, the gates, the hooks.

use super::{Dur, Percent, StepConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    #[serde(default)]
    pub canary: String,
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    #[serde(default)]
    pub hold: Dur,
    #[serde(default = "default_rollout_interval")]
    pub interval: Dur,
    #[serde(default)]
    pub gates: GatesConfig,
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
    /// Receives every verdict as JSON (POST), never blocking the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// What `failure_limit` failed checks do: `rollback` (default) or `pause` (hold the step and
    /// notify, for releases that cannot be rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// A step not judged within this time pauses the rollout with reason `starved` (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout: Option<Dur>,
}

/// A hook the rollout calls (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `pre_step` (before a step is judged: a non-2xx answer fails the check), `post_rollout` (after
    /// success) or `rollback` (after a failure or an abort).
    #[serde(default)]
    pub when: String,
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Dur,
}

fn default_webhook_timeout() -> Dur {
    "10s".into()
}

fn default_rollout_interval() -> Dur {
    "30s".into()
}
fn default_failure_limit() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatesConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mirror_diff_rate: Option<Percent>,
    /// Confidence of the significance tests, 0.5 to 0.9999 (default 0.99): a difference counts when
    /// chance would explain it less often than `1 - confidence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}
