//! What `state_dir` holds, written so a crash never leaves a half-written file:
//!
//! - `effective.yaml`: the configuration serving now (file plus API changes);
//! - `state.json`: `{"revision", "file_sha256"}`: the live revision and the digest of the config file
//!   it was last loaded from;
//! - `revisions/<n>.yaml`: the configuration of every revision, for history and restore;
//! - `audit.jsonl`: one JSON object a line per change, newest last;
//! - `reload-request.json`: what `switchyard reload` asks of the next reload (the file it means,
//!   `--force`), taken by the instance when it handles the signal.
//! - `reload.json`: the outcome of the last reload by signal (`seq` counts them), which `switchyard
//!   reload` waits for.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the directory); audit
//! lines are appended and fsynced.
//!
//! A change is durable and all or nothing ([`Store::commit`]): its revision file, then its audit line,
//! then `state.json`, whose rename is the commit point. Whatever fails before that point is undone (the
//! audit file is cut back to its length before, the revision file removed), so a refused change leaves
//! nothing behind, a full disk included. At start-up [`Store::repair`] brings the directory back to the
//! last committed revision: audit lines and revision files past it (a crash before the commit point)
//! and a torn last audit line are removed, as are stray temporary files; `effective.yaml` is
//! rewritten from the revision file when they differ. Revision files beyond `retain` are pruned,
//! oldest first (the audit log keeps every change).

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One line of `audit.jsonl` (SPEC §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub revision: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub route: Option<String>,
    /// The route (or, for a whole-config change, the config) before and after the change.
    #[serde(default, deserialize_with = "side_or_none")]
    pub before: Option<AuditSide>,
    #[serde(default, deserialize_with = "side_or_none")]
    pub after: Option<AuditSide>,
    pub reason: Option<String>,
}

/// What an audit line shows of one side of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum AuditSide {
    /// A change of the whole config (file, `PUT /v1/config`, restore): its revision and size.
    Config(ConfigSummary),
    /// A change of one route: its settings.
    Route(Box<crate::config::RouteConfig>),
}

/// A whole config as an audit line names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSummary {
    pub revision: u64,
    /// How many routes and upstreams it has.
    pub routes: usize,
    pub upstreams: usize,
    /// SHA-256 of its YAML.
    pub sha256: String,
}

/// An audit side as written, or nothing when a line from another version does not read as one.
fn side_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AuditSide>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub revision: u64,
    pub file_sha256: String,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Revision files kept (`server.retain_revisions`).
    retain: usize,
}

impl Store {
    /// Opens (creating if missing) a state directory.
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir.join("revisions"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            retain: usize::MAX,
        })
    }

    /// Keeps at most `retain` revision files (at least the live one).
    pub fn retaining(mut self, retain: usize) -> Store {
        self.retain = retain.max(1);
        self
    }

    /// Brings the directory back to its last committed revision (see the module's comment). Returns
    /// what it did, in words, for the log.
    pub fn repair(&self) -> io::Result<Vec<String>> {
        let mut notes = Vec::new();
        for dir in [self.dir.clone(), self.dir.join("revisions")] {
            for entry in fs::read_dir(&dir)?.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp-") {
                    fs::remove_file(entry.path())?;
                    notes.push(format!(
                        "removed the interrupted write {}",
                        entry.path().display()
                    ));
                }
            }
        }
        let Some(live) = self.persisted()? else {
            return Ok(notes);
        };
        let audit_path = self.dir.join("audit.jsonl");
        if let Ok(bytes) = fs::read(&audit_path) {
            let mut kept = Vec::with_capacity(bytes.len());
            let mut dropped = 0;
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                let entry = line
                    .ends_with(b"\n")
                    .then(|| serde_json::from_slice::<AuditEntry>(line).ok())
                    .flatten();
                match entry {
                    Some(e) if e.revision <= live.revision => kept.extend_from_slice(line),
                    _ => dropped += 1,
                }
            }
            if dropped > 0 {
                write_atomic(&audit_path, &kept)?;
                notes.push(format!(
                    "removed {dropped} audit line(s) of changes never committed (past revision {}, or torn)",
                    live.revision
                ));
            }
        }
        for n in self.revisions()? {
            if n > live.revision {
                fs::remove_file(self.revision_path(n))?;
                notes.push(format!("removed revision {n}, never committed"));
            }
        }
        if let Ok(config) = self.revision(live.revision) {
            if self.effective().ok().as_deref() != Some(config.as_str()) {
                write_atomic(&self.dir.join("effective.yaml"), config.as_bytes())?;
                notes.push(format!(
                    "rewrote effective.yaml from revision {}",
                    live.revision
                ));
            }
        }
        self.prune(live.revision)?;
        Ok(notes)
    }

    /// Removes the oldest revision files beyond `retain`, never the live one.
    fn prune(&self, live: u64) -> io::Result<()> {
        let revisions = self.revisions()?;
        let excess = revisions.len().saturating_sub(self.retain);
        for n in revisions.into_iter().take(excess) {
            if n != live {
                fs::remove_file(self.revision_path(n))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The persisted state, if this directory has served before.
    pub fn persisted(&self) -> io::Result<Option<Persisted>> {
        match fs::read(self.dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn effective(&self) -> io::Result<String> {
        fs::read_to_string(self.dir.join("effective.yaml"))
    }

    pub fn revision(&self, n: u64) -> io::Result<String> {
        fs::read_to_string(self.revision_path(n))
    }

    /// Revision numbers kept on disk, ascending.
    pub fn revisions(&self) -> io::Result<Vec<u64>> {
        let mut out: Vec<u64> = fs::read_dir(self.dir.join("revisions"))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".yaml")?
                    .parse()
                    .ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Records a new live revision with its audit line, durably and all or nothing: the revision file,
    /// the audit line, then `state.json` (the commit point). On an error before the commit point
    /// nothing of the change is left; after it, the change stands.
    pub fn commit(
        &self,
        persisted: &Persisted,
        config_yaml: &str,
        audit: &AuditEntry,
    ) -> io::Result<()> {
        let revision_path = self.revision_path(persisted.revision);
        let audit_path = self.dir.join("audit.jsonl");
        let audit_len = match fs::metadata(&audit_path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let before_commit = || -> io::Result<PathBuf> {
            write_atomic(&revision_path, config_yaml.as_bytes())?;
            self.append_audit(audit)?;
            let state = serde_json::to_vec_pretty(persisted).map_err(io::Error::other)?;
            write_temporary(&self.dir.join("state.json"), &state)
        };
        let committed = before_commit().and_then(|tmp| {
            fs::rename(&tmp, self.dir.join("state.json")).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        });
        if let Err(e) = committed {
            // Undo: the audit file back to its length before, the revision file gone.
            if let Ok(f) = OpenOptions::new().write(true).open(&audit_path) {
                let _ = f.set_len(audit_len).and_then(|()| f.sync_all());
            }
            let _ = fs::remove_file(&revision_path);
            return Err(e);
        }
        // Committed. What follows cannot undo it: a failure is logged, and start-up repairs it.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            log::warn!("{}: fsync of the directory: {e}", self.dir.display());
        }
        if let Err(e) = write_atomic(&self.dir.join("effective.yaml"), config_yaml.as_bytes()) {
            log::warn!(
                "{}/effective.yaml: {e} (rewritten at start-up)",
                self.dir.display()
            );
        }
        if let Err(e) = self.prune(persisted.revision) {
            log::warn!("{}: pruning old revisions: {e}", self.dir.display());
        }
        Ok(())
    }

    /// Appends one audit line and fsyncs it.
    pub fn append_audit(&self, entry: &AuditEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("audit.jsonl"))?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Every audit entry, oldest first. Lines that do not parse (a torn last line) are skipped.
    pub fn audit(&self) -> io::Result<Vec<AuditEntry>> {
        match fs::read_to_string(self.dir.join("audit.jsonl")) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Empties the directory's revisions, audit log and state (a fleet's copy, when the fleet was
    /// reset behind it).
    pub fn reset(&self) -> io::Result<()> {
        for n in self.revisions()? {
            fs::remove_file(self.revision_path(n))?;
        }
        for name in ["audit.jsonl", "state.json", "effective.yaml"] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        File::open(&self.dir)?.sync_all()
    }

    pub fn revision_path(&self, n: u64) -> PathBuf {
        self.dir.join("revisions").join(format!("{n:010}.yaml"))
    }
}

/// Records the outcome of a reload by signal in `dir/reload.json`, numbering it one past the last
/// recorded.
pub fn write_reload_outcome(dir: &Path, mut outcome: serde_json::Value) -> io::Result<u64> {
    let seq = read_reload_outcome(dir)
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(0)
        + 1;
    outcome["seq"] = seq.into();
    let bytes = serde_json::to_vec_pretty(&outcome).map_err(io::Error::other)?;
    write_atomic(&dir.join("reload.json"), &bytes)?;
    Ok(seq)
}

/// Asks the instance whose state directory is `dir` what its next reload by signal should do:
/// `file` (the file the caller means; refused if the instance runs another) and `force`.
pub fn write_reload_request(dir: &Path, request: &serde_json::Value) -> io::Result<()> {
    let mut request = request.clone();
    request["at_unix"] = unix_now().into();
    let bytes = serde_json::to_vec(&request).map_err(io::Error::other)?;
    write_atomic(&dir.join("reload-request.json"), &bytes)
}

/// How long a reload request waits for its signal: one older than this (its `switchyard reload`
/// gave up, or never signalled) is ignored, so a later SIGHUP never inherits its `--force`.
const RELOAD_REQUEST_TTL_SECONDS: u64 = 60;

/// Takes (reads and removes) the request of [`write_reload_request`], if any and recent.
pub fn take_reload_request(dir: &Path) -> Option<serde_json::Value> {
    let path = dir.join("reload-request.json");
    let bytes = fs::read(&path).ok()?;
    let _ = fs::remove_file(&path);
    let request: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = request["at_unix"].as_u64()?;
    (unix_now().saturating_sub(at) <= RELOAD_REQUEST_TTL_SECONDS).then_some(request)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The outcome of the last reload by signal recorded in state directory `dir`, if any.
pub fn read_reload_outcome(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(dir.join("reload.json")).ok()?).ok()
}

/// Replaces `path` with `data` atomically: temporary file, fsync, rename, fsync of the directory. On an
/// error `path` is as it was and no temporary file is left.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = write_temporary(path, data)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Writes and fsyncs `data` to a temporary file next to `path`; returns its path. On an error none is
/// left.
fn write_temporary(path: &Path, data: &[u8]) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub use crate::time::{now_rfc3339, rfc3339};

#[cfg(test)]
mod reload_request_tests {
    use super::*;

    #[test]
    fn a_reload_request_is_taken_once_and_a_stale_one_is_ignored() {
        let dir = std::env::temp_dir().join(format!("switchyard-request-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let request = serde_json::json!({"file": "/etc/switchyard.yaml", "force": true});
        write_reload_request(&dir, &request).expect("write");
        let taken = take_reload_request(&dir).expect("taken");
        assert_eq!(taken["force"], true);
        assert!(take_reload_request(&dir).is_none(), "taken once");
        let stale = serde_json::json!({"force": true, "at_unix": 1});
        fs::write(dir.join("reload-request.json"), stale.to_string()).expect("write");
        assert!(
            take_reload_request(&dir).is_none(),
            "a stale request is ignored"
        );
        assert!(!dir.join("reload-request.json").exists(), "and removed");
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::now_rfc3339;

    fn entry(revision: u64) -> AuditEntry {
        AuditEntry {
            revision,
            at: now_rfc3339(),
            actor: "test".into(),
            action: "route.patch".into(),
            route: None,
            before: None,
            after: None,
            reason: None,
        }
    }

    fn commit(store: &Store, revision: u64, yaml: &str) {
        let p = Persisted {
            revision,
            file_sha256: "ab".into(),
        };
        store.commit(&p, yaml, &entry(revision)).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_commit_writes_revision_audit_and_state_and_leaves_no_temporary() {
        let dir = temp_dir("commit");
        let store = Store::open(&dir).unwrap();
        commit(&store, 3, "routes: []\n");
        commit(&store, 4, "routes: [] # 4\n");
        assert_eq!(store.persisted().unwrap().unwrap().revision, 4);
        assert_eq!(store.effective().unwrap(), "routes: [] # 4\n");
        assert_eq!(store.revision(3).unwrap(), "routes: []\n");
        assert_eq!(store.revisions().unwrap(), vec![3, 4]);
        let audited: Vec<u64> = store.audit().unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(audited, vec![3, 4]);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repair_returns_to_the_last_committed_revision() {
        let dir = temp_dir("repair");
        let store = Store::open(&dir).unwrap();
        commit(&store, 1, "routes: [] # 1\n");
        commit(&store, 2, "routes: [] # 2\n");
        // A crash before the commit point of revision 3: its revision file and audit line are
        // there, state.json still says 2; plus a torn line and an interrupted temporary file.
        fs::write(store.revision_path(3), "routes: [] # 3\n").unwrap();
        store.append_audit(&entry(3)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("audit.jsonl"))
            .unwrap();
        f.write_all(b"{\"revision\": 4, \"at").unwrap();
        fs::write(dir.join(".state.json.tmp-999"), "{").unwrap();
        fs::write(dir.join("effective.yaml"), "routes: [] # 3\n").unwrap();

        let notes = store.repair().unwrap();
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert_eq!(store.revisions().unwrap(), vec![1, 2]);
        let audited: Vec<u64> = store.audit().unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(audited, vec![1, 2]);
        assert!(fs::read_to_string(dir.join("audit.jsonl"))
            .unwrap()
            .ends_with("}\n"));
        assert_eq!(store.effective().unwrap(), "routes: [] # 2\n");
        assert!(!dir.join(".state.json.tmp-999").exists());
        // A second repair finds nothing to do.
        assert!(store.repair().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_commit_leaves_nothing_behind() {
        let dir = temp_dir("failed");
        let store = Store::open(&dir).unwrap();
        commit(&store, 1, "routes: [] # 1\n");
        let audit_before = fs::read(dir.join("audit.jsonl")).unwrap();
        // state.json cannot be replaced (a directory stands in its way): the commit fails before
        // its commit point.
        fs::remove_file(dir.join("state.json")).unwrap();
        fs::create_dir(dir.join("state.json")).unwrap();
        fs::write(dir.join("state.json").join("x"), "").unwrap();
        let p = Persisted {
            revision: 2,
            file_sha256: "ab".into(),
        };
        assert!(store.commit(&p, "routes: [] # 2\n", &entry(2)).is_err());
        assert_eq!(fs::read(dir.join("audit.jsonl")).unwrap(), audit_before);
        assert_eq!(store.revisions().unwrap(), vec![1]);
        assert_eq!(store.effective().unwrap(), "routes: [] # 1\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_revision_files_are_pruned_but_the_audit_keeps_every_change() {
        let dir = temp_dir("prune");
        let store = Store::open(&dir).unwrap().retaining(3);
        for n in 1..=6 {
            commit(&store, n, &format!("routes: [] # {n}\n"));
        }
        assert_eq!(store.revisions().unwrap(), vec![4, 5, 6]);
        assert_eq!(store.audit().unwrap().len(), 6);
        fs::remove_dir_all(&dir).unwrap();
    }
}
