//! What `GET /v1/status` and `GET /v1/fleet` show of a fleet, and what each instance registers.

use serde::{Deserialize, Serialize};

/// This instance in its fleet (`store.etcd`, SPEC §8).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FleetStatus {
    /// This instance's id: `<host>-<pid>-<4 random hex digits>`.
    pub instance: String,
    /// The key prefix the fleet shares in etcd.
    pub prefix: String,
    pub endpoints: Vec<String>,
    /// Connected to etcd, caught up and watching: changes are taken.
    pub connected: bool,
    /// When the connection last came or went (RFC 3339).
    pub since: String,
    pub last_error: Option<String>,
    /// The fleet's live revision as last seen in etcd.
    pub fleet_revision: u64,
    /// Routes whose rollout this instance leads.
    pub leads: Vec<String>,
}

/// `GET /v1/fleet`: this instance, the revision it serves, and every live instance.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Fleet")]
pub struct FleetView {
    #[serde(flatten)]
    pub status: FleetStatus,
    /// The revision this instance serves.
    pub revision: u64,
    /// Every live instance, as registered with its lease.
    pub instances: Vec<Instance>,
}

/// What an instance registers under `P/instances/<id>`, renewed every second.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registration {
    pub id: String,
    /// Its admin address, where rollout control calls are handed.
    pub admin: Option<String>,
    /// The revision it serves.
    pub revision: u64,
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    pub updated_at: String,
}

/// A live instance and the rollouts it leads.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Instance {
    #[serde(flatten)]
    pub registration: Registration,
    pub leads: Vec<String>,
}

/// What went wrong with the fleet's store (etcd) or this instance's part in it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd refused or failed a call.
    #[error("{0}")]
    Etcd(#[source] Box<etcd_client::Error>),
    /// etcd refused or failed a call made for `doing`.
    #[error("{doing}: {source}")]
    EtcdDoing {
        doing: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// No answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Not connected to etcd (yet, or any more).
    #[error("not connected to etcd")]
    NotConnected,
    /// The watch or the lease ended or fell behind: the session starts again.
    #[error("{0}")]
    Session(String),
    /// What etcd holds cannot be read.
    #[error("{0}")]
    Malformed(String),
    /// This instance's own part: credentials, certificates, its thread, applying a revision.
    #[error("{0}")]
    Local(String),
}

impl FleetError {
    /// An etcd failure while `doing` something.
    pub fn etcd(doing: impl Into<String>, source: etcd_client::Error) -> FleetError {
        FleetError::EtcdDoing {
            doing: doing.into(),
            source: Box::new(source),
        }
    }
}

impl From<etcd_client::Error> for FleetError {
    fn from(e: etcd_client::Error) -> Self {
        FleetError::Etcd(Box::new(e))
    }
}
