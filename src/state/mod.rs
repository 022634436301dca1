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

pub mod reloader;
pub mod store;

use crate::config::{Config, ConfigErrors};
use crate::metrics::{Metrics, SeriesCells};
use crate::release::ReleaseTable;
use crate::upstream::Pools;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use store::{AuditEntry, Persisted, Store};

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
        let table = ReleaseTable::compile(&config)?;
        let pools = Pools::build(&config, previous.map(|p| &p.pools))?;
        let series = SeriesCells::new(&table);
        Ok(Snapshot {
            revision,
            config,
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
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Invalid(e) => write!(f, "invalid configuration:\n{e}"),
            ChangeError::Refused(m) | ChangeError::NotFound(m) | ChangeError::Conflict(m) => {
                f.write_str(m)
            }
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
    /// The rollouts of this instance's routes (SPEC §6).
    pub rollouts: crate::rollout::Rollouts,
}

struct Writer {
    store: Option<Store>,
    /// Digest of the config file the live revision was last loaded from.
    file_sha256: String,
    /// A successor that serves its config file, changed since the previous process loaded it, has
    /// not made that a revision yet (why it is loaded, for the audit line): it does on taking over.
    unsaved_file: Option<&'static str>,
}

impl State {
    /// A state kept in memory only (no `state_dir`).
    pub fn new(config: Config) -> Result<State, ConfigErrors> {
        let snapshot = Snapshot::build(config, 1, None)?;
        Ok(State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Writer {
                store: None,
                file_sha256: String::new(),
                unsaved_file: None,
            }),
            metrics: Arc::default(),
            handing_over: Default::default(),
            rollouts: Default::default(),
        })
    }

    /// Opens the persisted state in `config.server.state_dir`, following the start-up rule above.
    /// `file_text` is the config file as read from disk (its digest decides the rule).
    pub fn open(file_config: Config, file_text: &str) -> anyhow::Result<State> {
        Self::open_as(file_config, file_text, false)
    }

    /// As [`State::open`], for a process that will take the listening sockets over from a running
    /// one (`run -u`). Until it has ([`State::take_over`]), the previous process is still the writer
    /// and may commit at any moment, so this one only reads `state_dir`: no repair (it would see the
    /// previous process's commit half done and undo it) and no revision of its own.
    pub fn open_successor(file_config: Config, file_text: &str) -> anyhow::Result<State> {
        Self::open_as(file_config, file_text, true)
    }

    fn open_as(file_config: Config, file_text: &str, successor: bool) -> anyhow::Result<State> {
        let dir = file_config.server.state_dir.clone();
        let store = Store::open(Path::new(&dir))
            .map_err(|e| anyhow::anyhow!("state_dir {dir}: {e}"))?
            .retaining(file_config.server.retain_revisions);
        if !successor {
            for note in store
                .repair()
                .map_err(|e| anyhow::anyhow!("state_dir {dir}: repairing: {e}"))?
            {
                log::warn!("state_dir {dir}: {note}");
            }
        }
        let file_sha256 = sha256_hex(file_text.as_bytes());
        let persisted = store
            .persisted()
            .map_err(|e| anyhow::anyhow!("{dir}/state.json: {e}"))?;
        let state = |snapshot: Snapshot, writer: Writer| State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(writer),
            metrics: Arc::default(),
            handing_over: Default::default(),
            rollouts: Default::default(),
        };
        if let Some(p) = persisted.as_ref().filter(|p| p.file_sha256 == file_sha256) {
            match committed_config(&store, p.revision) {
                Ok(config) => {
                    let snapshot = Snapshot::build(config, p.revision, None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    log::info!("resuming revision {} from {dir}", p.revision);
                    let writer = Writer {
                        store: Some(store),
                        file_sha256,
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
        let reason = if persisted.is_some() {
            "config file changed while stopped"
        } else {
            "first start"
        };
        let snapshot =
            Snapshot::build(file_config, revision, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut writer = Writer {
            store: Some(store),
            file_sha256,
            unsaved_file: None,
        };
        if successor {
            // Made a revision once this process is the writer.
            writer.unsaved_file = Some("config file changed since the previous process loaded it");
        } else {
            let change = Change {
                actor: "file",
                action: "config.reload",
                route: None,
                reason: Some(reason),
            };
            persist(&writer, &change, None, &snapshot).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        if let (Some(reason), true) = (unsaved_file, file_is_newer) {
            let revision = persisted.as_ref().map_or(1, |p| p.revision + 1);
            let next = if revision == current.revision {
                Ok(current.clone())
            } else {
                Snapshot::build(current.config.clone(), revision, Some(&current)).map(Arc::new)
            };
            let change = Change {
                actor: "file",
                action: "config.reload",
                route: None,
                reason: Some(reason),
            };
            match next {
                Ok(next) => {
                    if let Err(e) = persist(&writer, &change, None, &next) {
                        log::error!("revision {revision} (the config file): {e}");
                    }
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
            Snapshot::build(c, p.revision, Some(&current)).map_err(|e| e.to_string())
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
        let previous = self.current.load_full();
        let config = edit(&previous)?;
        let next = Snapshot::build(config, previous.revision + 1, Some(&previous))
            .map_err(ChangeError::Invalid)?;
        let next = Arc::new(next);
        persist(writer, &change, Some(&previous), &next)?;
        self.current.store(next.clone());
        Ok(next)
    }

    /// Re-reads the config file (SIGHUP / `switchyard reload`). A file whose content equals the one last
    /// applied changes nothing (so a signal never undoes what an operator changed through the API since).
    /// A changed file becomes a new revision by actor `file`, whose audit entry names the API changes it
    /// replaced; its digest is remembered for the start-up rule. An invalid file changes nothing.
    pub fn reload_file(&self, text: &str) -> Result<Reload, ChangeError> {
        let digest = sha256_hex(text.as_bytes());
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ChangeError::HandingOver);
        }
        if digest == writer.file_sha256 {
            return Ok(Reload::Unchanged(self.current.load_full()));
        }
        let config = Config::load_str(text).map_err(ChangeError::Invalid)?;
        let replaced = api_changes_since_file(&writer);
        let reason = if replaced.is_empty() {
            "config file changed".to_string()
        } else {
            format!(
                "config file changed; replaces {} API change(s) made since the file was last applied: {}",
                replaced.len(),
                replaced.join("; ")
            )
        };
        let previous_sha = std::mem::replace(&mut writer.file_sha256, digest);
        let change = Change {
            actor: "file",
            action: "config.reload",
            route: None,
            reason: Some(&reason),
        };
        match self.change_locked(&writer, change, |_| Ok(config)) {
            Ok(snapshot) => Ok(Reload::Applied { snapshot, replaced }),
            Err(e) => {
                writer.file_sha256 = previous_sha;
                Err(e)
            }
        }
    }

    /// Saves the rollouts' state in `state_dir/rollouts.json` (nothing without one). Refused once this
    /// instance hands over to a new process, which saves it from then on.
    pub fn save_rollouts(&self, bytes: &[u8]) -> Result<(), ChangeError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_handing_over() {
            return Err(ChangeError::HandingOver);
        }
        match &writer.store {
            Some(store) => store::write_atomic(&store.dir().join("rollouts.json"), bytes)
                .map_err(|e| storage_error(store.dir(), &e)),
            None => Ok(()),
        }
    }

    /// The rollouts' state as last saved in `state_dir`.
    pub fn load_rollouts(&self) -> Option<Vec<u8>> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let store = writer.store.as_ref()?;
        std::fs::read(store.dir().join("rollouts.json")).ok()
    }

    /// Records the outcome of a reload by signal in `state_dir/reload.json` (nothing without one).
    pub fn record_reload_outcome(&self, outcome: serde_json::Value) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = &writer.store {
            if let Err(e) = store.write_reload_outcome(outcome) {
                log::warn!(
                    "cannot record the reload outcome in {}: {e}",
                    store.dir().display()
                );
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

/// The outcome of re-reading the config file.
#[derive(Debug)]
pub enum Reload {
    /// The file equals the one last applied: nothing changed, no revision was made.
    Unchanged(Arc<Snapshot>),
    /// The file became this new revision, replacing these API changes (described one a line).
    Applied {
        snapshot: Arc<Snapshot>,
        replaced: Vec<String>,
    },
}

impl Reload {
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Reload::Unchanged(s) | Reload::Applied { snapshot: s, .. } => s,
        }
    }
}

/// The changes made by anyone but the file since the file was last applied, from the audit log, e.g.
/// `revision 7 route.patch payments by ops ("raise to 5%")`.
fn api_changes_since_file(writer: &Writer) -> Vec<String> {
    let Some(entries) = writer.store.as_ref().and_then(|s| s.audit().ok()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .iter()
        .rev()
        .take_while(|e| e.actor != "file")
        .map(|e| {
            let route = e
                .route
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            let reason = e
                .reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(" ({r:?})"))
                .unwrap_or_default();
            format!(
                "revision {} {}{route} by {}{reason}",
                e.revision, e.action, e.actor
            )
        })
        .collect();
    out.reverse();
    out
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
    let describe = |s: Option<&Snapshot>| match (s, change.route) {
        (Some(s), Some(route)) => s
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(serde_json::Value::Null),
        (Some(s), None) => serde_json::json!({
            "revision": s.revision,
            "routes": s.config.routes.len(),
            "upstreams": s.config.upstreams.len(),
            // The new config was serialised above; only the previous one needs it here.
            "sha256": if std::ptr::eq(s, next) {
                sha256_hex(yaml.as_bytes())
            } else {
                sha256_hex(s.config.to_yaml().as_bytes())
            },
        }),
        (None, _) => serde_json::Value::Null,
    };
    let entry = AuditEntry {
        revision: next.revision,
        at: store::now_rfc3339(),
        actor: change.actor.to_string(),
        action: change.action.to_string(),
        route: change.route.map(str::to_string),
        before: describe(previous),
        after: describe(Some(next)),
        reason: change.reason.map(str::to_string),
    };
    store
        .commit(&persisted, &yaml, &entry)
        .map_err(|e| storage_error(store.dir(), &e))
}

/// The config of committed revision `revision`: its revision file (or `effective.yaml`, from before
/// revision files were read at start-up).
fn committed_config(store: &Store, revision: u64) -> Result<Config, String> {
    store
        .revision(revision)
        .or_else(|_| store.effective())
        .map_err(|e| e.to_string())
        .and_then(|t| Config::parse_str(&t).map_err(|e| e.to_string()))
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
