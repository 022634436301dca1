//! The fleet (SPEC §8): many instances, one release. With `store.etcd`, etcd holds what the instances
//! share, under the fleet's `prefix`:
//!
//! - `P/revision`: the live revision, as decimal text. Every change is one etcd transaction that
//!   compares it with the revision the change was made against (compare-and-swap), and writes in the
//!   same transaction the new revision, its configuration and its audit line. A change made against
//!   an older revision than the fleet's is refused (409): two operators on two instances cannot
//!   overwrite each other.
//! - `P/revisions/<n>`: the shared part of revision `n`'s configuration (`clients`, `upstreams`,
//!   `routes`), as YAML. `server`, `admin`, `metrics` and `store` are each instance's own, from its
//!   file.
//! - `P/audit/<n>`: the audit line of revision `n` (JSON).
//! - `P/rollouts/<route>`: the state of a route's rollout, written by its leader.
//! - `P/leaders/<route>`: the instance leading the route's rollout, held with that instance's lease.
//! - `P/instances/<id>`: each live instance, the revision it serves, held with its lease.
//! - `P/stats/<id>`: each instance's counts for the routes with a rollout, held with its lease; the
//!   leader sums them to judge on the fleet's traffic.
//!
//! Every instance watches the prefix and applies a new revision as soon as it is committed. The
//! instance's `state_dir` keeps a copy of every revision and audit line it applied (`state_dir/fleet`):
//! reads of history are local, and a start with etcd down serves the last revision cached there.
//! While etcd is unreachable an instance keeps serving what it applied, refuses changes (503), and
//! reconnects with backoff; back, it reads what it missed (or everything, after a compaction) before
//! it takes changes again.

mod session;
mod view;
pub use crate::state::shared::{shared_yaml, CatchUp, CommitError, Entry, Local, SharedStore};
pub use session::FleetService;
pub use view::{FleetError, FleetStatus, FleetView, Instance, Registration};

use crate::config::{Config, EtcdConfig};
use crate::metrics::Stats;
use crate::state::store::AuditEntry;
use crate::state::State;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fleet `state` belongs to, if any.
pub fn of(state: &State) -> Option<&Fleet> {
    state.shared()?.as_any().downcast_ref::<Fleet>()
}

/// Longest pause between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an instance publishes its counts, renews its registration and looks for leaderless
/// rollouts.
const BEAT: Duration = Duration::from_secs(1);

/// A `P/leaders/<route>` value: the leading instance's id and admin address.
fn leader_value(bytes: &[u8]) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    Some((
        v["id"].as_str()?.to_string(),
        v["admin"].as_str().map(str::to_string),
    ))
}

/// Counts as an instance publishes them (the histogram as a list).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WireStats {
    status: [u64; 5],
    upstream_errors: u64,
    fallbacks: u64,
    buckets: Vec<u64>,
    sum_us: u64,
    mirror_sent: u64,
    mirror_compared: u64,
    mirror_diffs: u64,
    mirror_errors: u64,
}

impl From<&Stats> for WireStats {
    fn from(s: &Stats) -> Self {
        WireStats {
            status: s.status,
            upstream_errors: s.upstream_errors,
            fallbacks: s.fallbacks,
            buckets: s.latency.buckets.to_vec(),
            sum_us: s.latency.sum_us,
            mirror_sent: s.mirror_sent,
            mirror_compared: s.mirror_compared,
            mirror_diffs: s.mirror_diffs,
            mirror_errors: s.mirror_errors,
        }
    }
}

impl From<&WireStats> for Stats {
    fn from(w: &WireStats) -> Self {
        let mut s = Stats {
            status: w.status,
            upstream_errors: w.upstream_errors,
            fallbacks: w.fallbacks,
            mirror_sent: w.mirror_sent,
            mirror_compared: w.mirror_compared,
            mirror_diffs: w.mirror_diffs,
            mirror_errors: w.mirror_errors,
            ..Stats::default()
        };
        for (a, b) in s.latency.buckets.iter_mut().zip(w.buckets.iter()) {
            *a = *b;
        }
        s.latency.sum_us = w.sum_us;
        s
    }
}

/// `P/stats/<id>`: route → target → counts since the instance started.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Published {
    routes: BTreeMap<String, BTreeMap<String, WireStats>>,
}

/// Every instance's counts for one route's targets, by instance.
pub type FleetCounts = BTreeMap<String, BTreeMap<String, Stats>>;

/// This instance's membership of the fleet.
pub struct Fleet {
    cfg: EtcdConfig,
    prefix: String,
    id: String,
    admin: Option<String>,
    timeout: Duration,
    ttl: Duration,
    retain: u64,
    /// The runtime of the fleet's own thread, once started.
    handle: OnceCell<tokio::runtime::Handle>,
    client: Mutex<Option<Client>>,
    /// Connected, caught up and watching: changes may be made.
    connected: AtomicBool,
    /// The fleet's live revision as last seen.
    fleet_revision: AtomicU64,
    /// etcd's revision of the newest state this instance committed or applied: a catch-up read
    /// older than it (made before a commit of this instance's own) is stale and not applied.
    applied_etcd: AtomicI64,
    lease: AtomicI64,
    /// When the connection last came or went, and the last error.
    since: Mutex<(String, Option<String>)>,
    /// Route → the instance leading its rollout (id, admin address), as last read.
    leaders: Mutex<HashMap<String, (String, Option<String>)>>,
    /// Route → its rollout record as the leader last saved it.
    followed: Mutex<HashMap<String, Vec<u8>>>,
    /// Nudges the fleet's loop to look for leaderless rollouts at once.
    campaign_now: tokio::sync::Notify,
    stop: tokio::sync::watch::Sender<bool>,
    started_at: String,
}

impl Fleet {
    /// A member of the fleet `config.store.etcd` names (`None` without one).
    pub fn from_config(config: &Config) -> Option<Fleet> {
        let cfg = config.store.as_ref()?.etcd.clone();
        let timeout = cfg.timeout.get();
        let ttl = cfg.lease_ttl.get();
        let host = hostname();
        let admin = cfg.advertise_admin.clone().or_else(|| {
            let listen = &config.admin.as_ref()?.listen;
            let addr: std::net::SocketAddr = listen.parse().ok()?;
            Some(if addr.ip().is_unspecified() {
                format!("{host}:{}", addr.port())
            } else {
                listen.clone()
            })
        });
        Some(Fleet {
            prefix: cfg.prefix.clone(),
            // The pid alone could repeat across hosts (pid 1 in containers with one hostname).
            id: format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            admin,
            timeout,
            ttl,
            retain: config.server.retain_revisions.max(1) as u64,
            cfg,
            handle: OnceCell::new(),
            client: Mutex::new(None),
            connected: AtomicBool::new(false),
            fleet_revision: AtomicU64::new(0),
            applied_etcd: AtomicI64::new(0),
            lease: AtomicI64::new(0),
            since: Mutex::new((crate::time::now_rfc3339(), None)),
            leaders: Mutex::default(),
            followed: Mutex::default(),
            campaign_now: tokio::sync::Notify::new(),
            stop: tokio::sync::watch::channel(false).0,
            started_at: crate::time::now_rfc3339(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn numbered(&self, kind: &str, n: u64) -> String {
        format!("{}/{kind}/{n:020}", self.prefix)
    }

    /// The fleet's live revision as last seen in etcd.
    pub fn fleet_revision(&self) -> u64 {
        self.fleet_revision.load(SeqCst)
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.connected.swap(up, SeqCst);
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if was != up {
            since.0 = crate::time::now_rfc3339();
        }
        if error.is_some() || up {
            since.1 = error;
        }
    }

    /// For `/v1/status`.
    pub fn status(&self) -> FleetStatus {
        let (since, error) = self.since.lock().unwrap_or_else(|p| p.into_inner()).clone();
        FleetStatus {
            instance: self.id.clone(),
            prefix: self.prefix.clone(),
            endpoints: self.cfg.endpoints.clone(),
            connected: self.connected(),
            since,
            last_error: error,
            fleet_revision: self.fleet_revision.load(SeqCst),
            leads: self.led_routes(),
        }
    }

    /// The routes whose rollout this instance leads.
    pub fn led_routes(&self) -> Vec<String> {
        let leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes: Vec<String> = leaders
            .iter()
            .filter(|(_, (id, _))| *id == self.id)
            .map(|(r, _)| r.clone())
            .collect();
        routes.sort();
        routes
    }

    /// Whether this instance leads `route`'s rollout now (never while etcd is away).
    pub fn leads(&self, route: &str) -> bool {
        self.connected()
            && self
                .leaders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(route)
                .is_some_and(|(id, _)| *id == self.id)
    }

    /// The instance leading `route`'s rollout: its id and admin address.
    pub fn leader_of(&self, route: &str) -> Option<(String, Option<String>)> {
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned()
    }

    /// `route`'s rollout record as its leader last saved it.
    pub fn followed(&self, route: &str) -> Option<Vec<u8>> {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned()
    }

    /// Runs `fut` on the fleet's runtime and waits for it (at most the etcd timeout and a little
    /// more). For the blocking callers: admin calls, reloads and the rollout controller.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, FleetError>> + Send + 'static,
    ) -> Result<T, FleetError> {
        let handle = self.handle.get().ok_or(FleetError::NotConnected)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let timeout = self.timeout;
        handle.spawn(async move {
            let r = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or(Err(FleetError::Timeout(timeout)));
            let _ = tx.send(r);
        });
        rx.recv_timeout(timeout + Duration::from_millis(500))
            .map_err(|_| FleetError::Timeout(timeout))?
    }

    fn client(&self) -> Result<Client, FleetError> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(FleetError::NotConnected)
    }

    /// `route`'s rollout record as saved in etcd. Blocking.
    pub fn load_rollout(&self, route: &str) -> Result<Option<Vec<u8>>, FleetError> {
        let mut client = self.client()?;
        let key = self.key(&format!("rollouts/{route}"));
        self.block(async move {
            let resp = client.get(key, None).await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    /// Saves `route`'s rollout record, only while this instance still holds the route's
    /// leadership (a deposed leader never overwrites its successor's). Blocking.
    pub fn save_rollout(&self, route: &str, record: Vec<u8>) -> Result<(), FleetError> {
        let mut client = self.client()?;
        let key = self.key(&format!("rollouts/{route}"));
        let leader = self.key(&format!("leaders/{route}"));
        let lease = self.lease.load(SeqCst);
        let txn = Txn::new()
            .when([Compare::lease(leader, CompareOp::Equal, lease)])
            .and_then([TxnOp::put(key, record.clone(), None)]);
        let saved = self.block(async move {
            let resp = client.txn(txn).await?;
            Ok(resp.succeeded())
        })?;
        if saved {
            self.followed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(route.to_string(), record);
            Ok(())
        } else {
            self.leaders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(route);
            Err(FleetError::Local(format!(
                "this instance no longer leads route {route}'s rollout"
            )))
        }
    }

    /// The counts every other instance published, by instance, route and target. Blocking.
    pub fn peer_counts(&self, route: &str) -> Result<FleetCounts, FleetError> {
        let mut client = self.client()?;
        let prefix = self.key("stats/");
        let me = self.id.clone();
        let route = route.to_string();
        self.block(async move {
            let resp = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            let mut out = FleetCounts::new();
            for kv in resp.kvs() {
                let Some(id) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                if id == me {
                    continue;
                }
                let Ok(p) = serde_json::from_slice::<Published>(kv.value()) else {
                    continue;
                };
                let targets = p
                    .routes
                    .get(&route)
                    .map(|t| t.iter().map(|(k, w)| (k.clone(), Stats::from(w))).collect())
                    .unwrap_or_default();
                out.insert(id.to_string(), targets);
            }
            Ok(out)
        })
    }

    /// The live instances of the fleet, as they registered. Blocking.
    pub fn instances(&self) -> Result<Vec<Instance>, FleetError> {
        let mut client = self.client()?;
        let prefix = self.key("instances/");
        let leaders_prefix = self.key("leaders/");
        self.block(async move {
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let leaders = client
                .get(
                    leaders_prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                )
                .await?;
            let mut led: HashMap<String, Vec<String>> = HashMap::new();
            for kv in leaders.kvs() {
                let route = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(&leaders_prefix));
                if let (Some(route), Some((id, _))) = (route, leader_value(kv.value())) {
                    led.entry(id).or_default().push(route.to_string());
                }
            }
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Registration>(kv.value()).ok())
                .map(|registration| {
                    let mut leads = led.remove(&registration.id).unwrap_or_default();
                    leads.sort();
                    Instance {
                        registration,
                        leads,
                    }
                })
                .collect())
        })
    }

    async fn connect(&self) -> Result<Client, FleetError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(2), self.timeout)
            .with_keep_alive_while_idle(true);
        if let Some(auth) = &self.cfg.auth {
            let password = std::fs::read_to_string(&auth.password_file).map_err(|e| {
                FleetError::Local(format!(
                    "store.etcd.auth.password_file {}: {e}",
                    auth.password_file
                ))
            })?;
            opts = opts.with_user(auth.user.clone(), password.trim().to_string());
        }
        if let Some(tls) = &self.cfg.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| FleetError::Local(format!("store.etcd.tls.ca {ca}: {e}")))?;
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let c = std::fs::read(cert)
                    .map_err(|e| FleetError::Local(format!("store.etcd.tls.cert {cert}: {e}")))?;
                let k = std::fs::read(key)
                    .map_err(|e| FleetError::Local(format!("store.etcd.tls.key {key}: {e}")))?;
                t = t.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(t);
        }
        let connect = Client::connect(&self.cfg.endpoints, Some(opts));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => r.map_err(FleetError::from),
            Err(_) => Err(FleetError::Timeout(self.timeout)),
        }
    }

    /// What this instance missed since revision `from`, in one consistent read.
    async fn read_since(&self, client: &mut Client, from: u64) -> Result<CatchUp, FleetError> {
        let range = |kind: &str| {
            TxnOp::get(
                self.numbered(kind, from + 1),
                Some(GetOptions::new().with_range(self.key(&format!("{kind}/~")))),
            )
        };
        let txn = Txn::new().and_then([
            TxnOp::get(self.key("revision"), None),
            range("revisions"),
            range("audit"),
            TxnOp::get(self.key("rollouts/"), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = client.txn(txn).await?;
        let etcd_revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(head), Some(revisions), Some(audit), Some(rollouts)) =
            (gets.next(), gets.next(), gets.next(), gets.next())
        else {
            return Err(FleetError::Malformed(
                "etcd answered the catch-up read incompletely".into(),
            ));
        };
        let head = head
            .kvs()
            .first()
            .map(|kv| {
                kv.value_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        FleetError::Malformed(format!(
                            "{} is not a revision number",
                            self.key("revision")
                        ))
                    })
            })
            .transpose()?;
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        fn entry<'a>(
            entries: &'a mut BTreeMap<u64, Entry>,
            kv: &etcd_client::KeyValue,
        ) -> Option<&'a mut Entry> {
            let n = kv.key_str().ok()?.rsplit('/').next()?.parse::<u64>().ok()?;
            Some(entries.entry(n).or_insert(Entry {
                revision: n,
                shared: None,
                audit: None,
            }))
        }
        for kv in revisions.kvs() {
            if let Some(e) = entry(&mut entries, kv) {
                e.shared = kv.value_str().ok().map(str::to_string);
            }
        }
        for kv in audit.kvs() {
            if let Some(e) = entry(&mut entries, kv) {
                e.audit = serde_json::from_slice(kv.value()).ok();
            }
        }
        // Only what the live revision covers: a later commit comes with the watch.
        let entries = entries
            .into_values()
            .filter(|e| head.is_some_and(|h| e.revision <= h))
            .collect();
        let rollouts_prefix = self.key("rollouts/");
        let rollouts = rollouts
            .kvs()
            .iter()
            .filter_map(|kv| {
                let route = kv.key_str().ok()?.strip_prefix(&rollouts_prefix)?;
                Some((route.to_string(), kv.value().to_vec()))
            })
            .collect();
        Ok(CatchUp {
            head,
            entries,
            etcd_revision,
            rollouts,
        })
    }

    /// At start-up, before the server runs: what the fleet has past revision `from` (a temporary
    /// runtime; the fleet's own starts with the server). `Err`: etcd could not be read.
    pub fn read_at_start(&self, from: u64) -> Result<CatchUp, FleetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FleetError::Local(e.to_string()))?;
        let timeout = self.timeout * 2;
        rt.block_on(async {
            tokio::time::timeout(timeout, async {
                let mut client = self.connect().await?;
                let mut catch = self.read_since(&mut client, from).await?;
                if catch.head.is_some_and(|h| h < from) {
                    // The fleet is behind this instance's cache: etcd was restored or the prefix
                    // reset. The fleet is the truth.
                    catch = self.read_since(&mut client, 0).await?;
                }
                Ok(catch)
            })
            .await
            .unwrap_or(Err(FleetError::Timeout(timeout)))
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl SharedStore for Fleet {
    /// This instance's name in the fleet: `<host>-<pid>-<4 random hex digits>`.
    fn id(&self) -> &str {
        &self.id
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether changes can be made now: connected to etcd, caught up and watching.
    fn connected(&self) -> bool {
        self.connected.load(SeqCst)
    }

    /// Whether a read made at etcd revision `etcd_revision` is older than what this instance
    /// committed or applied since (it must not take the instance back).
    fn is_stale(&self, etcd_revision: i64) -> bool {
        etcd_revision < self.applied_etcd.load(SeqCst)
    }

    /// This instance now serves what etcd had at `etcd_revision`.
    fn note_applied(&self, etcd_revision: i64) {
        self.applied_etcd.fetch_max(etcd_revision, SeqCst);
    }

    /// Why changes are refused while etcd is away, in words.
    fn unavailable(&self) -> String {
        let (since, error) = self.since.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
        format!(
            "the fleet's store (etcd {}) is unreachable since {since}{why}; this instance keeps serving what it applied and takes changes again once it is back",
            self.cfg.endpoints.join(", ")
        )
    }

    /// Commits revision `next` made against `base` (0: the fleet's first), with its shared
    /// configuration and audit line, in one compare-and-swap transaction. Blocking.
    fn commit(
        &self,
        base: u64,
        next: u64,
        shared: String,
        audit: &AuditEntry,
    ) -> Result<(), CommitError> {
        if base != 0 && !self.connected() {
            return Err(CommitError::Unavailable(self.unavailable()));
        }
        let mut client = self
            .client()
            .map_err(|_| CommitError::Unavailable(self.unavailable()))?;
        let audit = serde_json::to_vec(audit).unwrap_or_default();
        let rev_key = self.key("revision");
        let compare = if base == 0 {
            Compare::create_revision(rev_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(rev_key.clone(), CompareOp::Equal, base.to_string())
        };
        let mut ops = vec![
            TxnOp::put(rev_key.clone(), next.to_string(), None),
            TxnOp::put(self.numbered("revisions", next), shared, None),
            TxnOp::put(self.numbered("audit", next), audit, None),
        ];
        if next > self.retain {
            ops.push(TxnOp::delete(
                self.numbered("revisions", next - self.retain),
                None,
            ));
        }
        let txn = Txn::new()
            .when([compare])
            .and_then(ops)
            .or_else([TxnOp::get(rev_key, None)]);
        let result = self.block(async move {
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                return Ok(Ok(resp.header().map_or(0, |h| h.revision())));
            }
            let head = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok()),
                _ => None,
            });
            Ok(Err(head.unwrap_or(0)))
        });
        match result {
            Ok(Ok(etcd_revision)) => {
                self.fleet_revision.fetch_max(next, SeqCst);
                self.note_applied(etcd_revision);
                Ok(())
            }
            Ok(Err(head)) => Err(CommitError::Conflict(head)),
            Err(e) => Err(CommitError::Unavailable(format!(
                "etcd: {e}; the change may not have been made: check GET /v1/audit before retrying"
            ))),
        }
    }

    fn read_at_start(&self, from: u64) -> Result<CatchUp, crate::state::StateError> {
        Fleet::read_at_start(self, from)
            .map_err(|e| crate::state::StateError::Unavailable(e.to_string()))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
