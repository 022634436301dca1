//! Re-reading the config file (SIGHUP / `switchyard reload`, SPEC §1): the file's own changes since
//! the base (the file last applied) go onto the live config by a three-way merge ([`super::merge`]),
//! so that nothing changed live — by the admin API or a rollout — is undone by an unrelated edit.

use super::committed_config;
use super::merge::{self, Conflict};
use super::store::AuditEntry;
use super::store::{self, Store};
use super::{sha256_hex, Change, ChangeError, Snapshot, State};
use crate::config::Config;
use std::sync::Arc;

/// The outcome of re-reading the config file.
#[derive(Debug)]
pub enum Reload {
    /// The file equals the one last applied: nothing changed, no revision was made.
    Unchanged(Arc<Snapshot>),
    /// The file differs from the one last applied, but everything it changed is live already (e.g.
    /// the live config exported to it): it became the base, no revision was made.
    Same(Arc<Snapshot>),
    /// The file's changes became this new revision: the places it took, and (forced) those it undid
    /// with who had changed them live.
    Applied {
        snapshot: Arc<Snapshot>,
        taken: Vec<String>,
        undone: Vec<String>,
    },
}

impl Reload {
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Reload::Unchanged(s) | Reload::Same(s) | Reload::Applied { snapshot: s, .. } => s,
        }
    }
}

impl State {
    /// Re-reads the config file. A file whose content equals the base changes nothing. Otherwise
    /// its changes since the base are merged onto the live config; a setting changed both in the file
    /// and live since the base is a conflict: refused (one line each, naming who changed it live and
    /// when) unless `force`, which takes the file's values and names what it undid in the audit
    /// entry. An invalid file, or an invalid merge, changes nothing.
    pub fn reload_file(&self, text: &str, force: bool) -> Result<Reload, ChangeError> {
        let digest = sha256_hex(text.as_bytes());
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ChangeError::HandingOver);
        }
        let live = self.current.load_full();
        if digest == writer.file_sha256 {
            return Ok(Reload::Unchanged(live));
        }
        let file = Config::load_str(text).map_err(ChangeError::Invalid)?;
        let merged = merge::three_way(&writer.base, &file, &live.config, force)
            .map_err(|e| ChangeError::Refused(e.to_string()))?;
        let audit = writer
            .store
            .as_ref()
            .and_then(|s| s.audit().ok())
            .unwrap_or_default();
        let conflicts: Vec<String> = merged
            .conflicts
            .iter()
            .map(|c| conflict_line(c, &audit))
            .collect();
        if !conflicts.is_empty() && !force {
            return Err(ChangeError::Refused(format!(
                "{} setting(s) changed both in the file and live since the file was last applied (reload --force takes the file's values):\n{}",
                conflicts.len(),
                conflicts.join("\n")
            )));
        }
        // In a fleet the file's own sections (server, admin, metrics, store) are this instance's.
        let local = writer
            .local
            .is_some()
            .then(|| super::shared::Local::of(&file));
        if merged.config == live.config {
            writer.file_sha256 = digest;
            if let Some(store) = &writer.store {
                write_base(store, &file);
            }
            writer.base = file;
            if local.is_some() {
                writer.local = local;
            }
            return Ok(Reload::Same(live));
        }
        let mut reason = if merged.taken.is_empty() {
            "config file changed".to_string()
        } else {
            format!("config file changed: {}", merged.taken.join(", "))
        };
        if !conflicts.is_empty() {
            reason.push_str(&format!("; forced, undoing: {}", conflicts.join("; ")));
        }
        let previous = (
            std::mem::replace(&mut writer.file_sha256, digest),
            writer.local.clone(),
        );
        if local.is_some() {
            writer.local = local;
        }
        let change = Change {
            actor: "file",
            action: "config.reload",
            route: None,
            reason: Some(&reason),
        };
        let config = merged.config;
        match self.change_locked(&writer, change, |_| Ok(config)) {
            Ok(snapshot) => {
                if let Some(store) = &writer.store {
                    write_base(store, &file);
                }
                writer.base = file;
                Ok(Reload::Applied {
                    snapshot,
                    taken: merged.taken,
                    undone: conflicts,
                })
            }
            Err(e) => {
                (writer.file_sha256, writer.local) = previous;
                Err(e)
            }
        }
    }
}

/// One conflict in words: place, file value, live value, and who changed it live and when (the
/// newest change on that route, or on the whole config, not made by the file).
fn conflict_line(c: &Conflict, audit: &[AuditEntry]) -> String {
    let who = audit
        .iter()
        .rev()
        .filter(|e| e.actor != "file")
        .find(|e| e.route.is_none() || e.route == c.route)
        .map(|e| {
            format!(
                "changed live by {} ({} at revision {}, {})",
                e.actor, e.action, e.revision, e.at
            )
        })
        .unwrap_or_else(|| "changed live".into());
    format!("{}: file {}, live {} ({who})", c.place(), c.file, c.live)
}

/// Keeps `base` (the file last applied) in `state_dir/base.yaml`: what a reload, or a start with a
/// changed file, merges against.
pub(super) fn write_base(store: &Store, base: &Config) {
    let path = store.dir().join("base.yaml");
    if let Err(e) = store::write_atomic(&path, base.to_yaml().as_bytes()) {
        log::warn!(
            "{}: {e}; the next reload merges against an older base",
            path.display()
        );
    }
}

/// The config file merged onto revision `revision` (file minus the base in `state_dir/base.yaml`),
/// conflicts taking the file's value, with the audit reason. `None` without a readable base.
pub(super) fn merge_file_onto(
    store: &Store,
    file: &Config,
    revision: u64,
) -> Option<(Config, String)> {
    let base = std::fs::read_to_string(store.dir().join("base.yaml")).ok()?;
    let base = Config::parse_str(&base).ok()?;
    let live = committed_config(store, revision).ok()?;
    let merged = merge::three_way(&base, file, &live, true)
        .inspect_err(|e| {
            log::warn!("the config file could not be merged onto revision {revision}: {e}")
        })
        .ok()?;
    let mut reason = format!(
        "config file changed while stopped: {}",
        if merged.taken.is_empty() {
            "nothing to take".to_string()
        } else {
            merged.taken.join(", ")
        }
    );
    if !merged.conflicts.is_empty() {
        let undone: Vec<String> = merged
            .conflicts
            .iter()
            .map(|c| format!("{} (file {}, was {})", c.place(), c.file, c.live))
            .collect();
        log::warn!(
            "the changed config file undoes live changes: {}",
            undone.join("; ")
        );
        reason.push_str(&format!(
            "; the file's values replace live ones at {}",
            undone.join("; ")
        ));
    }
    Some((merged.config, reason))
}
