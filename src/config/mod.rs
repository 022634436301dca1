//! The configuration file (SPEC §2): serde schema, loading and validation.
//!
//! The schema keeps values that need checking (durations, addresses, CIDRs, digests, percentages) as the
//! text the operator wrote, so that serde only fails on *structure* (unknown keys, wrong types) and the
//! validation pass in [`validate`] can report every semantic problem at once, each with its path.

mod access_log;
pub mod limits;
mod mirror;
mod ordered;
pub mod parse;
mod rollout;
mod step;
mod structure;
mod suggest;
mod typed;
mod valid;
mod validate;

pub use access_log::ACCESS_LOG_FIELDS;
pub use limits::Limits;
pub use mirror::{CompareConfig, MirrorConfig};
pub use ordered::OrderedMap;
pub use rollout::{GatesConfig, RolloutConfig, WebhookConfig};
pub use step::{Step, StepConfig};
pub use suggest::suggestion;
pub use typed::{Digest, Dur, Network, Percent, Read, Reading, Sticky};
pub use valid::Valid;
pub use validate::validate;
pub(crate) use validate::{normalize_host, normalize_prefix};

use serde::{Deserialize, Serialize};
use std::fmt;

/// One problem found in a configuration, with the path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem of one configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// The JSON Schema (draft 2020-12) of the configuration file, pretty-printed: what `switchyard
/// schema` prints and `conf/switchyard.schema.json` holds. It describes the shape (keys, types,
/// defaults); `check` also applies the rules between values (a baseline among the targets...).
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(Config);
    schema.insert("title".into(), "Switchyard configuration".into());
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// A listener of its own for `/metrics` (and `/healthz`), so Prometheus need not reach the admin
    /// API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Where a fleet of instances shares its configuration, revisions, audit and rollouts (SPEC §8).
    /// Without it, `server.state_dir` alone holds this instance's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<ClientsConfig>,
    #[serde(default)]
    pub upstreams: OrderedMap<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsListener>,
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period: Dur,
    pub shutdown_timeout: Dur,
    pub state_dir: String,
    /// `stdout`, `off` or a file path; `false` (what YAML 1.1 tools such as Helm and PyYAML make of an
    /// unquoted `off`) means `off`, `true` means `stdout`.
    #[serde(deserialize_with = "access_log_setting")]
    #[schemars(with = "AccessLogSetting")]
    pub access_log: String,
    /// The fields each access log line has (all when empty), e.g. `[ts, route, target, status,
    /// duration_ms]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_log_fields: Vec<String>,
    /// Revision files kept in `state_dir`; older ones are pruned (the audit log keeps every change).
    pub retain_revisions: usize,
    /// Plain HTTP/1.1 on Switchyard's own engine (true), or every request through Pingora's pipeline
    /// (false: the kill switch should the engine ever misbehave).
    pub http1_engine: bool,
    /// HTTP/2 with prior knowledge (h2c) on plain listeners, next to HTTP/1.1. TLS listeners offer
    /// `h2` and `http/1.1` by ALPN either way.
    pub h2c: bool,
    /// Per client connection: timeouts, head size, connections and requests per connection.
    #[serde(skip_serializing_if = "is_default")]
    pub limits: LimitsConfig,
}

/// `server.limits`, as written; read into [`Limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub header_timeout: Dur,
    pub body_timeout: Dur,
    pub send_timeout: Dur,
    pub keepalive_timeout: Dur,
    pub max_head_bytes: usize,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout: "10s".into(),
            body_timeout: "60s".into(),
            send_timeout: "60s".into(),
            keepalive_timeout: "60s".into(),
            max_head_bytes: 32 * 1024,
            max_connections: 100_000,
            max_requests_per_connection: 10_000,
        }
    }
}

/// `server.access_log` as written: text, or a boolean (`false` = `off`, `true` = `stdout`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum AccessLogSetting {
    Text(String),
    Switch(bool),
}

fn access_log_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match AccessLogSetting::deserialize(d) {
        Ok(AccessLogSetting::Text(t)) => Ok(t),
        Ok(AccessLogSetting::Switch(on)) => Ok(if on { "stdout" } else { "off" }.into()),
        Err(_) => Err(D::Error::custom(
            "expected stdout, off, or a file path (false means off)",
        )),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:8080".into()],
            tls: Vec::new(),
            threads: 2,
            pid_file: "/tmp/switchyard.pid".into(),
            upgrade_sock: "/tmp/switchyard_upgrade.sock".into(),
            grace_period: "30s".into(),
            shutdown_timeout: "5s".into(),
            state_dir: "/tmp/switchyard".into(),
            access_log: "stdout".into(),
            access_log_fields: Vec::new(),
            retain_revisions: 1000,
            http1_engine: true,
            h2c: true,
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    #[serde(default)]
    pub tokens: OrderedMap<Digest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/healthz` are served, open (no token), e.g. `0.0.0.0:9902`.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub etcd: EtcdConfig,
}

/// An etcd v3 cluster holding the fleet's state under `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://10.0.0.5:2379` (`https://` with `tls`).
    pub endpoints: Vec<String>,
    /// The key prefix of this fleet, e.g. `/switchyard/prod`: instances with the same prefix share
    /// one configuration.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EtcdAuth>,
    /// How long an instance's registration and its rollout leadership outlive it (etcd lease TTL):
    /// another instance takes a dead leader's rollouts over within this.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Dur,
    /// Longest wait for one etcd call; a change that gets no answer within it is refused (503).
    #[serde(default = "default_etcd_timeout")]
    pub timeout: Dur,
    /// The admin address other instances use to reach this one (rollout control calls go to the
    /// route's leader). Default: `admin.listen`, with this host's name for an unspecified address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_admin: Option<String>,
}

fn default_lease_ttl() -> Dur {
    "10s".into()
}

fn default_etcd_timeout() -> Dur {
    "2s".into()
}

/// TLS towards etcd: the CA that signed its certificates, and a client certificate if it asks for
/// one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// PEM bundle of the CA(s) that signed etcd's server certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM client certificate and its key, for etcd's `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// etcd's user authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuth {
    pub user: String,
    /// A file holding the password (its surrounding whitespace is ignored), kept out of the config.
    pub password_file: String,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    #[serde(default)]
    pub keys: OrderedMap<Digest>,
}

fn default_api_key_header() -> String {
    "X-Api-Key".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: TimeoutsConfig,
    /// How Switchyard speaks to the backends: `http1` (default), `h2` (HTTP/2 over TLS, needs
    /// `tls`), `h2c` (HTTP/2 without TLS, prior knowledge).
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: UpstreamProtocol,
    /// TLS to the backends (`https`): the name to send and verify, and whether to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
    H2c,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent (SNI) and, with `verify`, checked against the backend's certificate.
    #[serde(default)]
    pub sni: String,
    /// Verify the backend's certificate (default true): against the system's roots, or `ca`.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// A PEM file of the CA certificates to verify the backends against instead of the system's
    /// roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

fn default_true() -> bool {
    true
}

/// `"10.0.0.1:8080"` or `{addr: "10.0.0.1:8080", weight: 2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum BackendConfig {
    Addr(String),
    Weighted(WeightedBackend),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    #[serde(default)]
    pub addr: String,
    #[serde(default = "default_backend_weight")]
    pub weight: i64,
}

fn default_backend_weight() -> i64 {
    1
}

impl BackendConfig {
    pub fn addr(&self) -> &str {
        match self {
            BackendConfig::Addr(a) => a,
            BackendConfig::Weighted(w) => &w.addr,
        }
    }

    pub fn weight(&self) -> i64 {
        match self {
            BackendConfig::Addr(_) => 1,
            BackendConfig::Weighted(w) => w.weight,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive failures before a backend is marked down.
    #[serde(default = "default_threshold")]
    pub unhealthy_after: usize,
    /// Consecutive successes before a down backend is marked up again.
    #[serde(default = "default_threshold")]
    pub healthy_after: usize,
}

fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_interval() -> Dur {
    "5s".into()
}
fn default_health_timeout() -> Dur {
    "1s".into()
}
fn default_threshold() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub require_client: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutConfig>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub when: WhenConfig,
    #[serde(default)]
    pub to: String,
}

/// Conditions of a rule; every key given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenConfig {
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub header: OrderedMap<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_present: Option<String>,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub cookie: OrderedMap<String>,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub query: OrderedMap<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_in: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Vec<Network>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    #[serde(default)]
    pub targets: OrderedMap<f64>,
    /// Where rollback and fallback send traffic; required with two or more targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sticky: Vec<Sticky>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

impl SplitConfig {
    /// The baseline: the declared one, or the only target of a one-target split.
    pub fn baseline_name(&self) -> Option<&str> {
        match &self.baseline {
            Some(b) => Some(b.as_str()),
            None if self.targets.len() == 1 => self.targets.keys().next(),
            None => None,
        }
    }

    /// Gives each of `percents`' targets exactly that share of the split; the other targets but the
    /// baseline keep their shares, and the baseline takes the difference. Weights become shares in
    /// whole millionths of a percent (5% stays exactly 5).
    pub fn set_shares(&mut self, percents: &[(&str, f64)]) -> Result<(), String> {
        let baseline = self
            .baseline_name()
            .map(str::to_string)
            .ok_or_else(|| "the split has no baseline to take the difference".to_string())?;
        if let Some((t, _)) = percents.iter().find(|(t, _)| *t == baseline) {
            return Err(format!(
                "split.{t}: {t:?} is the baseline, which takes the difference; give the other targets' percentages"
            ));
        }
        let total: f64 = self.targets.iter().map(|(_, w)| *w).sum();
        let mut shares: Vec<(String, f64)> = self
            .targets
            .iter()
            .map(|(k, w)| {
                (
                    k.to_string(),
                    if total > 0.0 { w / total * 100.0 } else { 0.0 },
                )
            })
            .collect();
        for (target, p) in percents {
            match shares.iter_mut().find(|(k, _)| k == target) {
                Some(slot) => slot.1 = *p,
                None => shares.push((target.to_string(), *p)),
            }
        }
        let others: f64 = shares
            .iter()
            .filter(|(k, _)| *k != baseline)
            .map(|(_, s)| s)
            .sum();
        if others > 100.0 + 1e-9 {
            return Err(format!(
                "split: the targets other than the baseline would get {others:.4}% together, more than 100%"
            ));
        }
        for (k, share) in shares {
            let share = if k == baseline { 100.0 - others } else { share };
            self.targets.insert(k, (share.max(0.0) * 1e6).round() / 1e6);
        }
        Ok(())
    }

    /// The share of `target` in percent (0 when it is not a target or every weight is 0).
    pub fn share(&self, target: &str) -> f64 {
        let total: f64 = self.targets.iter().map(|(_, w)| *w).sum();
        match self.targets.get(target) {
            Some(w) if total > 0.0 => w / total * 100.0,
            _ => 0.0,
        }
    }

    /// Targets in bucket order (SPEC §3): the baseline first, then the others in byte order of their
    /// names. The order a file lists them in never matters.
    pub fn ordered_targets(&self) -> Vec<(&str, f64)> {
        let baseline = self.baseline_name();
        let mut out: Vec<(&str, f64)> = self.targets.iter().map(|(k, w)| (k, *w)).collect();
        out.sort_by(|a, b| {
            (Some(a.0) != baseline)
                .cmp(&(Some(b.0) != baseline))
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenConfig {
    #[serde(default)]
    pub blue: String,
    #[serde(default)]
    pub green: String,
    #[serde(default)]
    pub live: String,
}

/// A percentage written as a number (`10`) or a string (`"10%"`, `0.5%`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PercentValue {
    Number(f64),
    Text(String),
}

impl Config {
    /// `no such route "paymnts"; did you mean "payments"? (routes: …)`.
    pub fn no_such_route(&self, name: &str) -> String {
        let names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        format!(
            "no such route {name:?}{}",
            suggestion(name, &names, "routes")
        )
    }

    /// Parses YAML text, reporting every structural problem (YAML syntax with line and column, unknown
    /// keys with a "did you mean", wrong types), each with its path. Semantics are checked by
    /// [`validate`] (which [`Config::load_str`] and table compilation run).
    pub fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
        let read = structure::read(text);
        match read.config {
            Some(config) if read.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(read.errors)),
        }
    }

    /// Parses and validates YAML text: every problem is reported in one pass, structural and semantic
    /// together. A semantic error inside a malformed part, or about a place that holds one (`targets: no
    /// targets` once its only target was malformed), is left out: it would only repeat it.
    pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
        let read = structure::read(text);
        let mut errors = read.errors;
        let Some(config) = read.config else {
            return Err(ConfigErrors(errors));
        };
        let under = |path: &str, place: &str| {
            path.strip_prefix(place)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        errors.extend(validate(&config).into_iter().filter(|e| {
            !read
                .removed
                .iter()
                .any(|r| under(&e.path, r) || (!e.path.is_empty() && under(r, &e.path)))
        }));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The configuration as YAML text.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}
