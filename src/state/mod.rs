//! The live store: one [`Snapshot`] (compiled table + upstream pools + the config they came from),
//! published through `ArcSwap`. Requests load one snapshot and keep it to the end, so a change never
//! affects a request in flight.
//!
//! Every change — admin API, file reload, rollout controller — goes through [`State::change`]: one at a
//! time, validate → compile → persist → swap → one audit line. A change that fails at any step leaves
//! the live config, the revision and the files exactly as they were.
//!
//! Start-up rule (with a `state_dir`): if the config file on disk is the one last applied, Switchyard
//! resumes exactly what was serving, API changes included; if the file was edited since, the file wins
//! and becomes a new revision by actor `file`.

mod in_fleet;
use in_fleet::commit_shared;
pub mod merge;
mod reload;
pub mod shared;
pub use reload::Reload;
use reload::{merge_file_onto, write_base};
pub mod store;

use crate::config::{Config, ConfigErrors, Valid};
use crate::metrics::{Metrics, SeriesCells};
use crate::release::ReleaseTable;
use crate::upstream::Pools;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use shared::{CatchUp, CommitError, SharedStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{AuditEntry, AuditSide, Persisted, Store};

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub config: Config,
    pub table: ReleaseTable,
    pub pools: Pools,
    /// Where this snapshot's requests find their metrics series.
    pub series: SeriesCells,
}

impl Snapshot {
    /// Validates and compiles `config`, reusing unchanged pools of `previous`.
    pub fn build(
        config: Config,
        revision: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        Snapshot::of_valid(Valid::new(config)?, revision, previous)
    }

    /// Compiles a config that passed validation, reusing unchanged pools of `previous`.
    pub fn of_valid(
        config: Valid,
        revision: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let table = ReleaseTable::compile(&config)?;
        let pools = Pools::build(&config, previous.map(|p| &p.pools))?;
        let series = SeriesCells::new(&table);
        Ok(Snapshot {
            revision,
            config: config.into_inner(),
            table,
            pools,
            series,
        })
    }
}

/// Who changes what, and why: becomes the audit line.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub route: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// Why the state could not read what it keeps, or follow what the fleet committed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A kept revision could not be read from `state_dir`.
    #[error("revision {revision}: {source}")]
    Unreadable {
        revision: u64,
        source: std::io::Error,
    },
    /// Kept or shared YAML that does not read as a configuration.
    #[error("not a configuration: {0}")]
    NotAConfig(ConfigErrors),
    /// A configuration that does not validate or compile.
    #[error("invalid configuration: {0}")]
    Invalid(ConfigErrors),
    /// A configuration that could not be put in the form the merge compares, or read back from it.
    #[error("cannot merge the configurations: {0}")]
    Encode(#[from] serde_json::Error),
    /// The fleet's store could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug)]
pub enum ChangeError {
    /// The resulting config is invalid; nothing changed.
    Invalid(ConfigErrors),
    /// The change itself was refused (bad value...); nothing changed.
    Refused(String),
    /// The change names something that does not exist (a route); nothing changed.
    NotFound(String),
    /// The change was made against another revision than the live one; nothing changed.
    Conflict(String),
    /// The change could not be persisted; nothing changed.
    Storage(String),
    /// The state directory's device is full; nothing changed.
    NoSpace(String),
    /// This instance is handing over to a new process (an upgrade): changes go to the new one.
    HandingOver,
    /// The fleet's store (etcd) cannot be reached: nothing changed.
    Unavailable(String),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Invalid(e) => write!(f, "invalid configuration:\n{e}"),
            ChangeError::Refused(m)
            | ChangeError::NotFound(m)
            | ChangeError::Conflict(m)
            | ChangeError::Unavailable(m) => f.write_str(m),
            ChangeError::Storage(m) | ChangeError::NoSpace(m) => {
                write!(f, "cannot persist the change: {m}")
            }
            ChangeError::HandingOver => f.write_str(
                "this instance is handing over to a new process (upgrade); retry in a moment",
            ),
        }
    }
}

impl std::error::Error for ChangeError {}

/// The single writer of the live snapshot.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Serialises writers; holds the state directory when changes are persisted.
    writer: Mutex<Writer>,
    metrics: Arc<Metrics>,
    /// Set when the listening sockets go to a new process: from then on that process is the only
    /// writer, and changes here are refused (503, retried by `ctl`).
    handing_over: std::sync::atomic::AtomicBool,
    /// The fleet this instance belongs to (`store.etcd`), if any.
    fleet: Option<Arc<dyn SharedStore>>,
}

struct Writer {
    /// `state_dir`; in a fleet, its `fleet/` directory, a copy of the fleet's revisions.
    store: Option<Store>,
    /// `state_dir` itself: where the outcome of a reload is recorded.
    state_dir: Option<PathBuf>,
    /// In a fleet: this instance's config file, whose `server`, `admin`, `metrics` and `store` are
    /// its own (the rest comes from the fleet).
    local: Option<shared::Local>,
    /// In a fleet: whether this process keeps the copy in `store` (a successor does not until it
    /// takes over).
    cache_writes: bool,
    /// Digest of the config file the live revision was last loaded from.
    file_sha256: String,
    /// The config file as last applied: a reload applies the file's changes since it (SPEC §1).
    base: Config,
    /// A successor that serves its config file, changed since the previous process loaded it, has
    /// not made that a revision yet (why it is loaded, for the audit line): it does on taking over.
    unsaved_file: Option<String>,
}

impl State {
    /// A state kept in memory only (no `state_dir`).
    pub fn new(config: Valid) -> Result<State, ConfigErrors> {
        let snapshot = Snapshot::of_valid(config.clone(), 1, None)?;
        let config = config.into_inner();
        Ok(State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Writer {
                store: None,
                state_dir: None,
                local: None,
                cache_writes: false,
                file_sha256: String::new(),
                base: config.clone(),
                unsaved_file: None,
            }),
            metrics: Arc::default(),
            handing_over: Default::default(),
            fleet: None,
        })
    }

    /// Opens the persisted state in `config.server.state_dir`, following the start-up rule above.
    /// `file_text` is the config file as read from disk (its digest decides the rule).
    pub fn open(file_config: Valid, file_text: &str) -> anyhow::Result<State> {
        Self::open_as(file_config, file_text, false, None)
    }

    /// As [`State::open`], for an instance of a fleet (`store.etcd`): its revisions are shared
    /// through `shared` (the fleet's store), and `state_dir/fleet` keeps a copy.
    pub fn open_shared(
        file_config: Valid,
        file_text: &str,
        successor: bool,
        shared: Arc<dyn SharedStore>,
    ) -> anyhow::Result<State> {
        Self::open_as(file_config, file_text, successor, Some(shared))
    }

    /// As [`State::open`], for a process that will take the listening sockets over from a running
    /// one (`run -u`). Until it has ([`State::take_over`]), the previous process is still the writer
    /// and may commit at any moment, so this one only reads `state_dir`: no repair (it would see the
    /// previous process's commit half done and undo it) and no revision of its own.
    pub fn open_successor(file_config: Valid, file_text: &str) -> anyhow::Result<State> {
        Self::open_as(file_config, file_text, true, None)
    }

    fn open_as(
        file_config: Valid,
        file_text: &str,
        successor: bool,
        shared: Option<Arc<dyn SharedStore>>,
    ) -> anyhow::Result<State> {
        match (file_config.store.is_some(), shared) {
            (true, Some(shared)) => {
                return Self::open_fleet(file_config, file_text, successor, shared)
            }
            (true, None) => anyhow::bail!("store.etcd is configured but no fleet store was opened"),
            (false, _) => {}
        }
        let dir = file_config.server.state_dir.clone();
        let store = open_store(Path::new(&dir), &file_config, successor)?;
        let file_sha256 = sha256_hex(file_text.as_bytes());
        let persisted = store
            .persisted()
            .map_err(|e| anyhow::anyhow!("{dir}/state.json: {e}"))?;
        let state = |snapshot: Snapshot, writer: Writer| State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(writer),
            metrics: Arc::default(),
            handing_over: Default::default(),
            fleet: None,
        };
        if let Some(p) = persisted.as_ref().filter(|p| p.file_sha256 == file_sha256) {
            match committed_config(&store, p.revision) {
                Ok(config) => {
                    let snapshot = Snapshot::build(config, p.revision, None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    log::info!("resuming revision {} from {dir}", p.revision);
                    // The file is the one last applied: it is the base of the next reload.
                    write_base(&store, &file_config);
                    let writer = Writer {
                        store: Some(store),
                        state_dir: Some(PathBuf::from(&dir)),
                        local: None,
                        cache_writes: false,
                        file_sha256,
                        base: file_config.into_inner(),
                        unsaved_file: None,
                    };
                    return Ok(state(snapshot, writer));
                }
                Err(e) => log::error!(
                    "{dir}/effective.yaml cannot be served ({e}); loading the config file instead"
                ),
            }
        }
        let revision = persisted.as_ref().map_or(1, |p| p.revision + 1);
        // A file changed while stopped (or since the previous process loaded it) is merged onto the
        // state it left, as a reload would be (conflicts take the file's value: nobody is there to
        // ask); without a base to merge against, the file is served as it is.
        let merged = persisted
            .as_ref()
            .and_then(|p| merge_file_onto(&store, &file_config, p.revision));
        // The file was validated when it was read; a merge is validated here.
        let (snapshot, reason) = match (merged, persisted.is_some()) {
            (Some((config, reason)), _) => (Snapshot::build(config, revision, None), reason),
            (None, true) => (
                Snapshot::of_valid(file_config.clone(), revision, None),
                "config file changed while stopped".to_string(),
            ),
            (None, false) => (
                Snapshot::of_valid(file_config.clone(), revision, None),
                "first start".to_string(),
            ),
        };
        let snapshot = snapshot.map_err(|e| anyhow::anyhow!("{e}"))?;
        let file_config = file_config.into_inner();
        let mut writer = Writer {
            store: Some(store),
            state_dir: Some(PathBuf::from(&dir)),
            local: None,
            cache_writes: false,
            file_sha256,
            base: file_config.clone(),
            unsaved_file: None,
        };
        if successor {
            // Made a revision once this process is the writer.
            writer.unsaved_file =
                Some("config file changed since the previous process loaded it".to_string());
        } else {
            let change = Change {
                actor: "file",
                action: "config.reload",
                route: None,
                reason: Some(&reason),
            };
            persist(&writer, &change, None, &snapshot).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(store) = &writer.store {
                write_base(store, &file_config);
            }
        }
        Ok(state(snapshot, writer))
    }

    /// Stops taking changes: the listening sockets are about to go to a new process, which becomes the
    /// only writer. Returns once no change is in progress here.
    pub fn hand_over(&self) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this instance is handing over to a new process (see [`State::hand_over`]).
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After taking the listening sockets over from a previous process (which commits nothing once it
    /// has begun handing over): this process becomes the writer. It repairs `state_dir`, then serves
    /// the revision the previous process committed last when that is newer than the one read at start
    /// (changes made there between this process's start and the hand-over). A config file changed
    /// since the previous process loaded it wins, as at start-up, and becomes a revision now.
    pub fn take_over(&self) {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.fleet.is_some() {
            // The fleet's revisions come from etcd; from now on this process keeps their copy.
            writer.cache_writes = true;
            if let Some(store) = &writer.store {
                if let Err(e) = store.repair() {
                    log::error!("state_dir {}: repairing: {e}", store.dir().display());
                }
            }
            return;
        }
        let unsaved_file = writer.unsaved_file.take();
        let Some(store) = &writer.store else {
            return;
        };
        let dir = store.dir().display().to_string();
        match store.repair() {
            Ok(notes) => {
                for note in notes {
                    log::warn!("state_dir {dir}: {note}");
                }
            }
            Err(e) => log::error!("state_dir {dir}: repairing: {e}"),
        }
        let current = self.current.load_full();
        let persisted = match store.persisted() {
            Ok(p) => p,
            Err(e) => {
                log::error!(
                    "{dir}/state.json: {e}; serving revision {}",
                    current.revision
                );
                return;
            }
        };
        let file_is_newer = persisted
            .as_ref()
            .is_none_or(|p| p.file_sha256 != writer.file_sha256);
        if let (Some(reason), true) = (unsaved_file.clone(), file_is_newer) {
            let revision = persisted.as_ref().map_or(1, |p| p.revision + 1);
            // Merged onto what the previous process committed last, up to the hand-over.
            let merged = persisted
                .as_ref()
                .and_then(|p| merge_file_onto(store, &writer.base, p.revision));
            let (config, reason) = merged.unwrap_or((current.config.clone(), reason));
            let next = if revision == current.revision && config == current.config {
                Ok(current.clone())
            } else {
                Snapshot::build(config, revision, Some(&current)).map(Arc::new)
            };
            let change = Change {
                actor: "file",
                action: "config.reload",
                route: None,
                reason: Some(&reason),
            };
            match next {
                Ok(next) => {
                    if let Err(e) = persist(&writer, &change, None, &next) {
                        log::error!("revision {revision} (the config file): {e}");
                    }
                    write_base(store, &writer.base);
                    self.current.store(next);
                }
                Err(e) => log::error!("revision {revision} (the config file): {e}"),
            }
            return;
        }
        let Some(p) = persisted else {
            return;
        };
        if p.revision <= current.revision && unsaved_file.is_none() {
            return;
        }
        let loaded = committed_config(store, p.revision).and_then(|c| {
            Snapshot::build(c, p.revision, Some(&current)).map_err(StateError::Invalid)
        });
        match loaded {
            Ok(snapshot) => {
                log::info!(
                    "taking over at revision {} (committed by the previous process)",
                    p.revision
                );
                self.current.store(Arc::new(snapshot));
                // The file the previous process loaded last is the one a reload compares with.
                writer.file_sha256 = p.file_sha256;
            }
            Err(e) => log::error!(
                "revision {} of the previous process cannot be served ({e}); serving revision {}",
                p.revision,
                current.revision
            ),
        }
    }

    /// The metrics of this instance's traffic.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live snapshot. Lock-free.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies one change: `edit` derives the new config from the live one. On any error nothing
    /// changes. Returns the new live snapshot.
    pub fn change(
        &self,
        change: Change<'_>,
        edit: impl FnOnce(&Snapshot) -> Result<Config, ChangeError>,
    ) -> Result<Arc<Snapshot>, ChangeError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.change_locked(&writer, change, edit)
    }

    fn change_locked(
        &self,
        writer: &Writer,
        change: Change<'_>,
        edit: impl FnOnce(&Snapshot) -> Result<Config, ChangeError>,
    ) -> Result<Arc<Snapshot>, ChangeError> {
        if self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ChangeError::HandingOver);
        }
        if let Some(fleet) = self.fleet.as_ref().filter(|f| !f.connected()) {
            return Err(ChangeError::Unavailable(fleet.unavailable()));
        }
        let previous = self.current.load_full();
        let mut config = edit(&previous)?;
        // In a fleet, this instance's own sections stay as its file says.
        if let Some(local) = &writer.local {
            if let Some(section) = local.changed_by(&config) {
                return Err(ChangeError::Refused(format!(
                    "{section} is this instance's own in a fleet (store.etcd): change it in the instance's config file; the fleet shares clients, upstreams and routes"
                )));
            }
            config = local.onto(config);
        }
        let next = Snapshot::build(config, previous.revision + 1, Some(&previous))
            .map_err(ChangeError::Invalid)?;
        let next = Arc::new(next);
        // Durable before it is served: in `state_dir`, or in the fleet's store.
        match &self.fleet {
            Some(fleet) => commit_shared(fleet.as_ref(), writer, &change, &previous, &next)?,
            None => persist(writer, &change, Some(&previous), &next)?,
        }
        self.current.store(next.clone());
        Ok(next)
    }

    /// The store shared with the fleet this instance belongs to, if any.
    pub fn shared(&self) -> Option<&Arc<dyn SharedStore>> {
        self.fleet.as_ref()
    }

    /// Saves the rollouts' state in `state_dir/rollouts.json` (nothing without one). Refused once this
    /// instance hands over to a new process, which saves it from then on.
    pub fn save_rollouts(&self, bytes: &[u8]) -> Result<(), ChangeError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_handing_over() {
            return Err(ChangeError::HandingOver);
        }
        if self.fleet.is_some() {
            // A fleet's rollouts are kept in etcd by their leaders.
            return Ok(());
        }
        match &writer.store {
            Some(store) => store::write_atomic(&store.dir().join("rollouts.json"), bytes)
                .map_err(|e| storage_error(store.dir(), &e)),
            None => Ok(()),
        }
    }

    /// The rollouts' state as last saved in `state_dir`.
    pub fn load_rollouts(&self) -> Option<Vec<u8>> {
        if self.fleet.is_some() {
            return None;
        }
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let store = writer.store.as_ref()?;
        std::fs::read(store.dir().join("rollouts.json")).ok()
    }

    /// Takes what `switchyard reload` asked of this reload (`state_dir/reload-request.json`).
    pub fn take_reload_request(&self) -> Option<serde_json::Value> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        store::take_reload_request(writer.state_dir.as_ref()?)
    }

    /// Records the outcome of a reload by signal in `state_dir/reload.json` (nothing without one).
    pub fn record_reload_outcome(&self, outcome: serde_json::Value) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = &writer.state_dir {
            if let Err(e) = store::write_reload_outcome(dir, outcome) {
                log::warn!("cannot record the reload outcome in {}: {e}", dir.display());
            }
        }
    }

    /// Revisions kept in `state_dir`, ascending (empty without one).
    pub fn revisions(&self) -> Vec<u64> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer
            .store
            .as_ref()
            .and_then(|s| s.revisions().ok())
            .unwrap_or_default()
    }

    /// The config of revision `n`, as kept in `state_dir`.
    pub fn revision_config(&self, n: u64) -> Option<String> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.store.as_ref().and_then(|s| s.revision(n).ok())
    }

    /// The audit log, oldest first (empty without a `state_dir`).
    pub fn audit(&self) -> Vec<AuditEntry> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer
            .store
            .as_ref()
            .and_then(|s| s.audit().ok())
            .unwrap_or_default()
    }
}

/// Writes the new revision and its audit line. Nothing is written for an in-memory state.
fn persist(
    writer: &Writer,
    change: &Change<'_>,
    previous: Option<&Snapshot>,
    next: &Snapshot,
) -> Result<(), ChangeError> {
    let Some(store) = &writer.store else {
        return Ok(());
    };
    let yaml = next.config.to_yaml();
    let persisted = Persisted {
        revision: next.revision,
        file_sha256: writer.file_sha256.clone(),
    };
    let entry = audit_entry(change, previous, next, &yaml);
    store
        .commit(&persisted, &yaml, &entry)
        .map_err(|e| storage_error(store.dir(), &e))
}

/// Copies one of the fleet's revisions to `state_dir/fleet` (its configuration when etcd still has
/// it). A failure is logged: etcd holds the revision, and a later start reads it from there.
fn cache(writer: &Writer, entry: &AuditEntry, yaml: Option<&str>) {
    let Some(store) = &writer.store else { return };
    // Already there: copied by the previous process of an upgrade before it handed over.
    if store
        .persisted()
        .ok()
        .flatten()
        .is_some_and(|p| p.revision >= entry.revision)
    {
        return;
    }
    let result = match yaml {
        Some(yaml) => {
            let persisted = Persisted {
                revision: entry.revision,
                file_sha256: writer.file_sha256.clone(),
            };
            store.commit(&persisted, yaml, entry)
        }
        None => store.append_audit(entry),
    };
    if let Err(e) = result {
        log::warn!(
            "{}: copying revision {}: {e} (etcd keeps it)",
            store.dir().display(),
            entry.revision
        );
    }
}

/// The store in `dir`, repaired of a commit left half done (by the writer only: a successor would
/// undo the running process's commit in progress).
fn open_store(dir: &Path, file_config: &Config, successor: bool) -> anyhow::Result<Store> {
    let shown = dir.display();
    let store = Store::open(dir)
        .map_err(|e| anyhow::anyhow!("state_dir {shown}: {e}"))?
        .retaining(file_config.server.retain_revisions);
    if !successor {
        for note in store
            .repair()
            .map_err(|e| anyhow::anyhow!("state_dir {shown}: repairing: {e}"))?
        {
            log::warn!("state_dir {shown}: {note}");
        }
    }
    Ok(store)
}

/// The audit line of a revision whose line etcd does not have.
fn missing_audit(revision: u64) -> AuditEntry {
    AuditEntry {
        revision,
        at: crate::time::now_rfc3339(),
        actor: "unknown".into(),
        action: "unknown".into(),
        route: None,
        before: None,
        after: None,
        reason: Some("the fleet's store has no audit line for this revision".into()),
    }
}

/// The audit line of `change`, from `previous` to `next` (whose YAML is `yaml`).
fn audit_entry(
    change: &Change<'_>,
    previous: Option<&Snapshot>,
    next: &Snapshot,
    yaml: &str,
) -> AuditEntry {
    let describe = |s: Option<&Snapshot>| match (s, change.route) {
        (Some(s), Some(route)) => s
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| AuditSide::Route(Box::new(r.clone()))),
        (Some(s), None) => Some(AuditSide::Config(store::ConfigSummary {
            revision: s.revision,
            routes: s.config.routes.len(),
            upstreams: s.config.upstreams.len(),
            // The new config was serialised above; only the previous one needs it here.
            sha256: if std::ptr::eq(s, next) {
                sha256_hex(yaml.as_bytes())
            } else {
                sha256_hex(s.config.to_yaml().as_bytes())
            },
        })),
        (None, _) => None,
    };
    AuditEntry {
        revision: next.revision,
        at: crate::time::now_rfc3339(),
        actor: change.actor.to_string(),
        action: change.action.to_string(),
        route: change.route.map(str::to_string),
        before: describe(previous),
        after: describe(Some(next)),
        reason: change.reason.map(str::to_string),
    }
}

/// The config of committed revision `revision`: its revision file (or `effective.yaml`, from before
/// revision files were read at start-up).
pub(super) fn committed_config(store: &Store, revision: u64) -> Result<Config, StateError> {
    let text = store
        .revision(revision)
        .or_else(|_| store.effective())
        .map_err(|source| StateError::Unreadable { revision, source })?;
    Config::parse_str(&text).map_err(StateError::NotAConfig)
}

/// A change that could not be made durable: nothing of it stays. A full disk says so.
fn storage_error(dir: &Path, e: &std::io::Error) -> ChangeError {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        ChangeError::NoSpace(format!(
            "{}: no space left on the device; the change was not made, nothing of it was written",
            dir.display()
        ))
    } else {
        ChangeError::Storage(format!("{}: {e}; the change was not made", dir.display()))
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
