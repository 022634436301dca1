//! What `state_dir` holds, written so a crash never leaves a half-written file:
//!
//! - `effective.yaml`: the configuration serving now (file plus API changes);
//! - `state.json`: `{"revision", "file_sha256"}`: the live revision and the digest of the config file
//!   it was last loaded from;
//! - `revisions/<n>.yaml`: the configuration of every revision, for history and restore;
//! - `audit.jsonl`: one JSON object a line per change, newest last;
//! - `reload.json`: the outcome of the last reload by signal (`seq` counts them), which `switchyard
//!   reload` waits for.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the directory); audit
//! lines are appended and fsynced.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of `audit.jsonl` (SPEC §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub revision: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub route: Option<String>,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    pub reason: Option<String>,
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
}

impl Store {
    /// Opens (creating if missing) a state directory.
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir.join("revisions"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
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

    /// Records a new live revision: its config, the effective config and the state file.
    pub fn commit(&self, persisted: &Persisted, config_yaml: &str) -> io::Result<()> {
        write_atomic(
            &self.revision_path(persisted.revision),
            config_yaml.as_bytes(),
        )?;
        write_atomic(&self.dir.join("effective.yaml"), config_yaml.as_bytes())?;
        let state = serde_json::to_vec_pretty(persisted).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("state.json"), &state)
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

    /// Records the outcome of a reload by signal, numbering it one past the last recorded.
    pub fn write_reload_outcome(&self, mut outcome: serde_json::Value) -> io::Result<u64> {
        let seq = read_reload_outcome(&self.dir)
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)
            + 1;
        outcome["seq"] = seq.into();
        let bytes = serde_json::to_vec_pretty(&outcome).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("reload.json"), &bytes)?;
        Ok(seq)
    }

    fn revision_path(&self, n: u64) -> PathBuf {
        self.dir.join("revisions").join(format!("{n:010}.yaml"))
    }
}

/// The outcome of the last reload by signal recorded in state directory `dir`, if any.
pub fn read_reload_outcome(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(dir.join("reload.json")).ok()?).ok()
}

/// Replaces `path` with `data` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T21:45:03.120Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_383_903)),
            "2026-11-22T21:45:03.000Z"
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("switchyard-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        let p = Persisted {
            revision: 3,
            file_sha256: "ab".into(),
        };
        store.commit(&p, "routes: []\n").unwrap();
        store
            .commit(
                &Persisted {
                    revision: 4,
                    ..p.clone()
                },
                "routes: [] # 4\n",
            )
            .unwrap();
        assert_eq!(store.persisted().unwrap().unwrap().revision, 4);
        assert_eq!(store.effective().unwrap(), "routes: [] # 4\n");
        assert_eq!(store.revision(3).unwrap(), "routes: []\n");
        assert_eq!(store.revisions().unwrap(), vec![3, 4]);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
