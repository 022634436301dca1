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

mod view;
pub use crate::state::shared::{
    changes_local, compose, shared_yaml, with_local, CatchUp, CommitError, Entry, SharedStore,
};
pub use view::{FleetStatus, FleetView, Instance, Registration};

use crate::config::{parse, Config, EtcdConfig};
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
        let timeout = parse::duration(&cfg.timeout).unwrap_or(Duration::from_secs(2));
        let ttl = parse::duration(&cfg.lease_ttl).unwrap_or(Duration::from_secs(10));
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

    /// This instance's name in the fleet: `<host>-<pid>-<4 random hex digits>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether changes can be made now: connected to etcd, caught up and watching.
    pub fn connected(&self) -> bool {
        self.connected.load(SeqCst)
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

    /// Whether a read made at etcd revision `etcd_revision` is older than what this instance
    /// committed or applied since (it must not take the instance back).
    pub fn is_stale(&self, etcd_revision: i64) -> bool {
        etcd_revision < self.applied_etcd.load(SeqCst)
    }

    /// This instance now serves what etcd had at `etcd_revision`.
    pub fn note_applied(&self, etcd_revision: i64) {
        self.applied_etcd.fetch_max(etcd_revision, SeqCst);
    }

    /// Why changes are refused while etcd is away, in words.
    pub fn unavailable(&self) -> String {
        let (since, error) = self.since.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
        format!(
            "the fleet's store (etcd {}) is unreachable since {since}{why}; this instance keeps serving what it applied and takes changes again once it is back",
            self.cfg.endpoints.join(", ")
        )
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
        fut: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        let handle = self
            .handle
            .get()
            .ok_or_else(|| "not connected to etcd yet".to_string())?;
        let (tx, rx) = std::sync::mpsc::channel();
        let timeout = self.timeout;
        handle.spawn(async move {
            let r = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| Err(format!("etcd did not answer within {timeout:?}")));
            let _ = tx.send(r);
        });
        rx.recv_timeout(timeout + Duration::from_millis(500))
            .map_err(|_| format!("etcd did not answer within {timeout:?}"))?
    }

    fn client(&self) -> Result<Client, String> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| "not connected to etcd".to_string())
    }

    /// Commits revision `next` made against `base` (0: the fleet's first), with its shared
    /// configuration and audit line, in one compare-and-swap transaction. Blocking.
    pub fn commit(
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
            let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
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

    /// `route`'s rollout record as saved in etcd. Blocking.
    pub fn load_rollout(&self, route: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.client()?;
        let key = self.key(&format!("rollouts/{route}"));
        self.block(async move {
            let resp = client.get(key, None).await.map_err(|e| e.to_string())?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    /// Saves `route`'s rollout record, only while this instance still holds the route's
    /// leadership (a deposed leader never overwrites its successor's). Blocking.
    pub fn save_rollout(&self, route: &str, record: Vec<u8>) -> Result<(), String> {
        let mut client = self.client()?;
        let key = self.key(&format!("rollouts/{route}"));
        let leader = self.key(&format!("leaders/{route}"));
        let lease = self.lease.load(SeqCst);
        let txn = Txn::new()
            .when([Compare::lease(leader, CompareOp::Equal, lease)])
            .and_then([TxnOp::put(key, record.clone(), None)]);
        let saved = self.block(async move {
            let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
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
            Err(format!(
                "this instance no longer leads route {route}'s rollout"
            ))
        }
    }

    /// The counts every other instance published, by instance, route and target. Blocking.
    pub fn peer_counts(&self, route: &str) -> Result<FleetCounts, String> {
        let mut client = self.client()?;
        let prefix = self.key("stats/");
        let me = self.id.clone();
        let route = route.to_string();
        self.block(async move {
            let resp = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
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
    pub fn instances(&self) -> Result<Vec<Instance>, String> {
        let mut client = self.client()?;
        let prefix = self.key("instances/");
        let leaders_prefix = self.key("leaders/");
        self.block(async move {
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            let leaders = client
                .get(
                    leaders_prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| e.to_string())?;
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

    async fn connect(&self) -> Result<Client, String> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(2), self.timeout)
            .with_keep_alive_while_idle(true);
        if let Some(auth) = &self.cfg.auth {
            let password = std::fs::read_to_string(&auth.password_file).map_err(|e| {
                format!("store.etcd.auth.password_file {}: {e}", auth.password_file)
            })?;
            opts = opts.with_user(auth.user.clone(), password.trim().to_string());
        }
        if let Some(tls) = &self.cfg.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                let pem = std::fs::read(ca).map_err(|e| format!("store.etcd.tls.ca {ca}: {e}"))?;
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let c =
                    std::fs::read(cert).map_err(|e| format!("store.etcd.tls.cert {cert}: {e}"))?;
                let k = std::fs::read(key).map_err(|e| format!("store.etcd.tls.key {key}: {e}"))?;
                t = t.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(t);
        }
        let connect = Client::connect(&self.cfg.endpoints, Some(opts));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// What this instance missed since revision `from`, in one consistent read.
    async fn read_since(&self, client: &mut Client, from: u64) -> Result<CatchUp, String> {
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
        let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
        let etcd_revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(head), Some(revisions), Some(audit), Some(rollouts)) =
            (gets.next(), gets.next(), gets.next(), gets.next())
        else {
            return Err("etcd answered the catch-up read incompletely".into());
        };
        let head = head
            .kvs()
            .first()
            .map(|kv| {
                kv.value_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("{} is not a revision number", self.key("revision")))
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
    pub fn read_at_start(&self, from: u64) -> Result<CatchUp, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
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
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        })
    }

    /// Starts the fleet's own thread and runtime: connecting, catching up, watching, renewing the
    /// lease, publishing counts and electing rollout leaders, until the server stops. Called once,
    /// from the server's background service (after a daemon has forked).
    fn spawn(self: &Arc<Self>, state: Arc<State>) -> Result<(), String> {
        let fleet = self.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("switchyard-fleet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("switchyard-fleet")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let _ = fleet.handle.set(rt.handle().clone());
                rt.block_on(fleet.run(state));
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }

    /// Sessions with etcd, one after another, with backoff between them.
    async fn run(self: Arc<Self>, state: Arc<State>) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                r = self.session(&state) => r,
                _ = stop.changed() => Ok(()),
            };
            match outcome {
                Ok(()) => {
                    self.leave().await;
                    return;
                }
                Err(e) => {
                    if self.connected() {
                        log::error!(
                            "fleet: lost etcd ({e}); serving revision {} and refusing changes until it is back",
                            state.load().revision
                        );
                    } else {
                        log::warn!("fleet: etcd unreachable: {e}; retrying in {backoff:?}");
                    }
                    self.set_connected(false, Some(e));
                    self.leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            // Up to a quarter more, so that a fleet does not come back in lockstep.
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Gives up this instance's lease: its registration, counts and leaderships go at once, and
    /// another instance takes its rollouts over.
    async fn leave(&self) {
        self.set_connected(false, Some("this instance is leaving the fleet".into()));
        let lease = self.lease.swap(0, SeqCst);
        let client = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Some(mut client), true) = (client, lease != 0) {
            let revoke = client.lease_revoke(lease);
            match tokio::time::timeout(self.timeout, revoke).await {
                Ok(Ok(_)) => log::info!("fleet: left (lease revoked)"),
                Ok(Err(e)) => log::warn!("fleet: revoking the lease: {e}"),
                Err(_) => log::warn!("fleet: revoking the lease: no answer"),
            }
        }
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// One connection: catch up, then follow the watch until something fails (`Err`) or this
    /// instance hands over to a new process (`Ok`).
    async fn session(&self, state: &Arc<State>) -> Result<(), String> {
        let mut client = self.connect().await?;
        // A lease still alive from before a short outage keeps this instance's leaderships.
        let mut lease = self.lease.load(SeqCst);
        if lease != 0 {
            let alive = client
                .lease_time_to_live(lease, None)
                .await
                .is_ok_and(|r| r.ttl() > 0);
            if !alive {
                lease = 0;
            }
        }
        if lease == 0 {
            let ttl = self.ttl.as_secs().max(2) as i64;
            lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|e| format!("granting a lease: {e}"))?
                .id();
            self.lease.store(lease, SeqCst);
        }
        let (mut keeper, mut kept) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("keeping the lease alive: {e}"))?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());

        // No change is made here until this session is caught up (changes need `connected`), so
        // this session's first read is the newest: even one older than before (etcd restored from
        // a backup) is followed.
        self.applied_etcd.store(0, SeqCst);
        let mut watch_from = self.catch_up(state, &mut client).await?;
        let (_watcher, mut events) = client
            .watch(
                self.key(""),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(watch_from + 1),
                ),
            )
            .await
            .map_err(|e| format!("watching {}: {e}", self.prefix))?;
        self.beat(state, &mut client).await?;
        self.set_connected(true, None);
        log::info!(
            "fleet: connected to etcd {} as {} (prefix {}), serving revision {}",
            self.cfg.endpoints.join(", "),
            self.id,
            self.prefix,
            state.load().revision
        );
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = events.message() => {
                    let resp = message
                        .map_err(|e| format!("watch: {e}"))?
                        .ok_or("the watch ended")?;
                    if resp.compact_revision() > 0 {
                        return Err(format!(
                            "the watch fell behind etcd's compaction (revision {}): reading everything again",
                            resp.compact_revision()
                        ));
                    }
                    if resp.canceled() {
                        return Err(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
                    }
                    let mut revision_changed = false;
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        let Some(rest) = key.strip_prefix(&self.key("")) else { continue };
                        let deleted = event.event_type() == EventType::Delete;
                        if rest == "revision" {
                            let n = kv.value_str().ok().and_then(|v| v.parse::<u64>().ok());
                            if n.is_some_and(|n| n > state.load().revision) {
                                revision_changed = true;
                            }
                        } else if let Some(route) = rest.strip_prefix("rollouts/") {
                            let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
                            if deleted {
                                followed.remove(route);
                            } else {
                                followed.insert(route.to_string(), kv.value().to_vec());
                            }
                        } else if let Some(route) = rest.strip_prefix("leaders/") {
                            if deleted {
                                self.leaders.lock().unwrap_or_else(|p| p.into_inner()).remove(route);
                                self.campaign_now.notify_one();
                            }
                        }
                    }
                    if revision_changed {
                        watch_from = self.catch_up(state, &mut client).await?.max(watch_from);
                        // The registration says at once which revision this instance serves.
                        self.beat(state, &mut client).await?;
                    }
                }
                _ = renew.tick() => {
                    keeper.keep_alive().await.map_err(|e| format!("renewing the lease: {e}"))?;
                }
                answer = kept.message() => {
                    let answer = answer
                        .map_err(|e| format!("lease keep-alive: {e}"))?
                        .ok_or("the lease keep-alive stream ended")?;
                    if answer.ttl() <= 0 {
                        self.lease.store(0, SeqCst);
                        return Err("this instance's lease expired".into());
                    }
                }
                _ = beat.tick() => {
                    if state.is_handing_over() {
                        return Ok(());
                    }
                    self.beat(state, &mut client).await?;
                }
                _ = self.campaign_now.notified() => {
                    self.campaign(state, &mut client).await?;
                }
            }
        }
    }

    /// Reads what this instance missed and applies it. Returns etcd's revision of the read.
    async fn catch_up(&self, state: &Arc<State>, client: &mut Client) -> Result<i64, String> {
        let applied = state.load().revision;
        let mut catch = self.read_since(client, applied).await?;
        if catch.head.is_some_and(|h| h < applied) {
            catch = self.read_since(client, 0).await?;
        }
        {
            let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
            followed.clear();
            followed.extend(catch.rollouts.iter().cloned());
        }
        let etcd_revision = catch.etcd_revision;
        match catch.head {
            None => {
                // Nothing under the prefix yet: this instance's configuration becomes the fleet's
                // first revision (one instance wins; the others read it).
                let seeding = state.clone();
                let seeded = tokio::task::spawn_blocking(move || seeding.seed_fleet())
                    .await
                    .map_err(|e| e.to_string())?;
                match seeded {
                    Ok(()) => {}
                    Err(e) => return Err(format!("seeding the fleet: {e}")),
                }
                // Whoever won, read it (and watch from there).
                let catch = self.read_since(client, 0).await?;
                self.apply(state, catch).await
            }
            Some(head) => {
                self.fleet_revision.fetch_max(head, SeqCst);
                self.apply(state, catch).await.map(|r| r.max(etcd_revision))
            }
        }
    }

    async fn apply(&self, state: &Arc<State>, catch: CatchUp) -> Result<i64, String> {
        let etcd_revision = catch.etcd_revision;
        if let Some(head) = catch.head {
            self.fleet_revision.fetch_max(head, SeqCst);
        }
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.apply_fleet(catch))
            .await
            .map_err(|e| e.to_string())??;
        Ok(etcd_revision)
    }

    /// Every second: registration, counts, and leaderless rollouts.
    async fn beat(&self, state: &Arc<State>, client: &mut Client) -> Result<(), String> {
        let lease = self.lease.load(SeqCst);
        let live = state.load();
        let registration = Registration {
            id: self.id.clone(),
            admin: self.admin.clone(),
            revision: live.revision,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at.clone(),
            updated_at: crate::time::now_rfc3339(),
        };
        let mut published = Published::default();
        let metrics = state.metrics();
        for r in live.config.routes.iter().filter(|r| r.rollout.is_some()) {
            let mut targets = BTreeMap::new();
            let names = r
                .split
                .iter()
                .flat_map(|s| s.targets.keys().map(str::to_string))
                .chain(r.rollout.iter().map(|ro| ro.canary.clone()));
            for target in names {
                let totals = metrics.totals(&r.name, &target);
                targets.insert(target, WireStats::from(&totals));
            }
            published.routes.insert(r.name.clone(), targets);
        }
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.key(&format!("instances/{}", self.id)),
                serde_json::to_string(&registration).unwrap_or_default(),
                Some(put.clone()),
            ),
            TxnOp::put(
                self.key(&format!("stats/{}", self.id)),
                serde_json::to_vec(&published).unwrap_or_default(),
                Some(put),
            ),
        ]);
        client
            .txn(txn)
            .await
            .map_err(|e| format!("registering: {e}"))?;
        self.campaign(state, client).await
    }

    /// Tries to lead every route with a rollout that has no leader; notes who leads the others.
    async fn campaign(&self, state: &Arc<State>, client: &mut Client) -> Result<(), String> {
        let lease = self.lease.load(SeqCst);
        let live = state.load();
        let me = json!({"id": self.id, "admin": self.admin}).to_string();
        let mut leaders = HashMap::new();
        for r in live.config.routes.iter().filter(|r| r.rollout.is_some()) {
            let key = self.key(&format!("leaders/{}", r.name));
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| format!("rollout leadership of {}: {e}", r.name))?;
            let leader = if resp.succeeded() {
                log::info!(
                    "fleet: this instance ({}) now leads route {}'s rollout",
                    self.id,
                    r.name
                );
                Some((self.id.clone(), self.admin.clone()))
            } else {
                resp.op_responses().into_iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => {
                        g.kvs().first().and_then(|kv| leader_value(kv.value()))
                    }
                    _ => None,
                })
            };
            if let Some(l) = leader {
                leaders.insert(r.name.clone(), l);
            }
        }
        *self.leaders.lock().unwrap_or_else(|p| p.into_inner()) = leaders;
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the fleet's thread while the server runs; leaves the fleet when it stops.
pub struct FleetService {
    state: Arc<State>,
    fleet: Arc<Fleet>,
}

impl FleetService {
    pub fn new(state: Arc<State>, fleet: Arc<Fleet>) -> FleetService {
        FleetService { state, fleet }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let fleet = self.fleet.clone();
        if let Err(e) = fleet.spawn(self.state.clone()) {
            log::error!(
                "fleet: cannot start its thread: {e}; this instance stays on its cached revision"
            );
            return;
        }
        let _ = shutdown.changed().await;
        let _ = fleet.stop.send(true);
        // Leaving revokes the lease: another instance takes this one's rollouts at once.
        for _ in 0..20 {
            if fleet.lease.load(SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl SharedStore for Fleet {
    fn prefix(&self) -> &str {
        Fleet::prefix(self)
    }
    fn id(&self) -> &str {
        Fleet::id(self)
    }
    fn connected(&self) -> bool {
        Fleet::connected(self)
    }
    fn unavailable(&self) -> String {
        Fleet::unavailable(self)
    }
    fn commit(
        &self,
        base: u64,
        next: u64,
        shared: String,
        audit: &AuditEntry,
    ) -> Result<(), CommitError> {
        Fleet::commit(self, base, next, shared, audit)
    }
    fn read_at_start(&self, from: u64) -> Result<CatchUp, String> {
        Fleet::read_at_start(self, from)
    }
    fn is_stale(&self, store_revision: i64) -> bool {
        Fleet::is_stale(self, store_revision)
    }
    fn note_applied(&self, store_revision: i64) {
        Fleet::note_applied(self, store_revision)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
