//! A store the configuration is shared through with other instances: a fleet (`store.etcd`, SPEC
//! §8). [`State`](super::State) commits every change to it before serving it and applies what the
//! other instances committed; the fleet module implements it on etcd. Which sections are shared
//! (clients, upstreams, routes) and which stay each instance's own (server, admin, metrics, store)
//! is decided here.

use super::store::AuditEntry;
use crate::config::Config;
use serde::Serialize;

/// Where a fleet's revisions are committed and read.
pub trait SharedStore: Send + Sync + 'static {
    /// The key prefix the fleet shares.
    fn prefix(&self) -> &str;
    /// This instance's id in the fleet.
    fn id(&self) -> &str;
    /// Connected, caught up and watching: changes can be committed.
    fn connected(&self) -> bool;
    /// Why changes are refused while not connected.
    fn unavailable(&self) -> String;
    /// Commits revision `next` made against `base` (0: the fleet's first), with its shared
    /// configuration and audit line, all or nothing. Blocking.
    fn commit(
        &self,
        base: u64,
        next: u64,
        shared: String,
        audit: &AuditEntry,
    ) -> Result<(), CommitError>;
    /// What was committed after revision `from`, read at start-up. Blocking.
    fn read_at_start(&self, from: u64) -> Result<CatchUp, super::StateError>;
    /// Whether a read at this store revision is older than one already applied.
    fn is_stale(&self, store_revision: i64) -> bool;
    /// Notes the store revision of a read just applied.
    fn note_applied(&self, store_revision: i64);
    /// The concrete store, for the layers above that know it.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Why a change could not be committed to the fleet.
#[derive(Debug)]
pub enum CommitError {
    /// Another instance committed a revision since this one's (the fleet is at this one).
    Conflict(u64),
    /// etcd could not be reached, or did not answer in time.
    Unavailable(String),
}

/// One revision read from etcd.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    /// The shared configuration (`None` once pruned from etcd).
    pub shared: Option<String>,
    pub audit: Option<AuditEntry>,
}

/// What an instance missed: the fleet's live revision and every revision after the one it has.
#[derive(Debug, Clone)]
pub struct CatchUp {
    /// The fleet's live revision (`None`: nothing was ever committed under the prefix).
    pub head: Option<u64>,
    /// Ascending; the head's own entry is always there when `head` is.
    pub entries: Vec<Entry>,
    /// etcd's own revision of this read: the watch starts after it.
    pub etcd_revision: i64,
    /// Rollout records as their leaders saved them, by route.
    pub rollouts: Vec<(String, Vec<u8>)>,
}

/// The shared part of a configuration, as kept in `P/revisions/<n>`.
#[derive(Serialize)]
struct Shared<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: &'a Option<crate::config::ClientsConfig>,
    upstreams: &'a crate::config::OrderedMap<crate::config::UpstreamConfig>,
    routes: &'a Vec<crate::config::RouteConfig>,
}

/// The shared part of `config` as YAML.
pub fn shared_yaml(config: &Config) -> String {
    serde_yaml::to_string(&Shared {
        clients: &config.clients,
        upstreams: &config.upstreams,
        routes: &config.routes,
    })
    .unwrap_or_default()
}

/// The sections each instance of a fleet keeps as its own config file has them; the fleet shares
/// the rest (clients, upstreams, routes).
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    server: crate::config::ServerConfig,
    admin: Option<crate::config::AdminConfig>,
    metrics: Option<crate::config::MetricsConfig>,
    store: Option<crate::config::StoreConfig>,
}

impl Local {
    /// The instance's own sections of `config` (its file).
    pub fn of(config: &Config) -> Local {
        Local {
            server: config.server.clone(),
            admin: config.admin.clone(),
            metrics: config.metrics.clone(),
            store: config.store.clone(),
        }
    }

    /// `config` with these sections in place of its own.
    pub fn onto(&self, mut config: Config) -> Config {
        config.server = self.server.clone();
        config.admin = self.admin.clone();
        config.metrics = self.metrics.clone();
        config.store = self.store.clone();
        config
    }

    /// The first of these sections `next` changes (leaving one out keeps it), if any: those are
    /// changed in the instance's file, not through the fleet.
    pub fn changed_by(&self, next: &Config) -> Option<&'static str> {
        if next.server != self.server && next.server != Default::default() {
            Some("server")
        } else if next.admin.is_some() && next.admin != self.admin {
            Some("admin")
        } else if next.metrics.is_some() && next.metrics != self.metrics {
            Some("metrics")
        } else if next.store.is_some() && next.store != self.store {
            Some("store")
        } else {
            None
        }
    }

    /// This instance's configuration from the fleet's shared part (YAML, as kept in etcd).
    pub fn compose(&self, shared: &str) -> Result<Config, super::StateError> {
        let config = Config::parse_str(shared).map_err(super::StateError::NotAConfig)?;
        Ok(self.onto(config))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOCAL: &str = r#"
server: {listen: ["127.0.0.1:8080"], state_dir: /var/lib/a}
admin: {listen: "127.0.0.1:9901"}
store:
  etcd: {endpoints: ["http://127.0.0.1:2379"], prefix: /sy}
upstreams:
  v1: {backends: ["127.0.0.1:9001"]}
routes:
  - name: r
    split: {targets: {v1: 1}}
"#;

    #[test]
    fn the_fleet_shares_clients_upstreams_and_routes_and_each_instance_keeps_the_rest() {
        let local = Config::load_str(LOCAL).unwrap();
        let shared = shared_yaml(&local);
        for own in ["server", "admin", "store", "metrics"] {
            assert!(!shared.contains(&format!("{own}:")), "{shared}");
        }
        assert!(
            shared.contains("upstreams:") && shared.contains("routes:"),
            "{shared}"
        );
        let other = LOCAL
            .replace("/var/lib/a", "/var/lib/b")
            .replace("9001", "9002");
        let other = Config::load_str(&other).unwrap();
        // The other instance's shared sections, with this instance's own.
        let composed = Local::of(&local).compose(&shared_yaml(&other)).unwrap();
        assert_eq!(composed.server.state_dir, "/var/lib/a");
        assert_eq!(composed.upstreams, other.upstreams);
        assert_eq!(composed.admin, local.admin);
    }

    #[test]
    fn a_change_of_an_instances_own_section_is_named() {
        let config = Config::load_str(LOCAL).unwrap();
        let local = Local::of(&config);
        assert_eq!(local.changed_by(&config), None);
        let local_config = config.clone();
        let mut next = local_config.clone();
        next.server.state_dir = "/elsewhere".into();
        assert_eq!(local.changed_by(&next), Some("server"));
        let mut next = local_config.clone();
        next.admin = None;
        assert_eq!(local.changed_by(&next), None, "left out: kept");
        next.store = None;
        next.server = Default::default();
        assert_eq!(local.changed_by(&next), None);
        let mut next = local_config.clone();
        next.routes.clear();
        assert_eq!(local.changed_by(&next), None, "routes are shared");
        let composed = local.onto(next);
        assert!(composed.routes.is_empty());
        assert_eq!(composed.server, local_config.server);
    }
}
