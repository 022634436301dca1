//! Reload on SIGHUP: re-read the config file. A file equal to the one last applied changes nothing; a
//! changed one is merged onto the live config ([`crate::state::merge`]) as a new revision by actor `file`; an
//! invalid one, or one that conflicts with live changes (unless `switchyard reload --force` asked), is
//! refused with every error logged, and the running config stays. Each outcome is also written to `state_dir/reload.json`, which
//! `switchyard reload` waits for. Handling SIGHUP here also keeps its default action (ending the
//! process) from applying. SIGUSR1 reopens the access log file, as logrotate expects (as nginx does).

use crate::proxy::AccessLog;
use crate::state::{ChangeError, Reload, Snapshot, State};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub struct Reloader {
    /// The config file; `None` for an embedded config (the demo), which has nothing to re-read.
    path: Option<PathBuf>,
    state: Arc<State>,
    /// Reopened on SIGUSR1, so that a rotated log file is let go.
    access_log: Option<Arc<AccessLog>>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, state: Arc<State>) -> Self {
        Reloader {
            path,
            state,
            access_log: None,
        }
    }

    /// Reopen this access log on every SIGUSR1.
    pub fn reopening(mut self, access_log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = access_log;
        self
    }

    /// One reload attempt; logs its outcome and records it for `switchyard reload`.
    pub fn reload(&self) {
        let Some(file) = &self.path else {
            log::warn!("SIGHUP ignored: this instance runs an embedded config, there is no file to re-read");
            return;
        };
        let path = file.display();
        let live = self.state.load();
        let refused = |errors: Vec<String>| {
            self.state.metrics().record_reload(false);
            json!({"result": "refused", "revision": live.revision, "errors": errors})
        };
        let request = self.state.take_reload_request().unwrap_or_default();
        let force = request["force"].as_bool().unwrap_or(false);
        let same_file = |asked: &str| {
            let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
            canonical(std::path::Path::new(asked)) == canonical(file)
        };
        let outcome = match (request["file"].as_str(), std::fs::read_to_string(file)) {
            (Some(asked), _) if !same_file(asked) => {
                log::error!("reload refused: asked to reload {asked}, but this instance runs {path}; nothing was read");
                refused(vec![format!(
                    "this instance runs {path}, not {asked}; nothing was read (reload -c {path})"
                )])
            }
            (_, Err(e)) => {
                log::error!(
                    "reload refused: cannot read {path}: {e}; still serving revision {}",
                    live.revision
                );
                refused(vec![format!("cannot read {path}: {e}")])
            }
            (_, Ok(text)) => self.apply(&text, force, &live),
        };
        let mut outcome = outcome;
        outcome["pid"] = std::process::id().into();
        outcome["at"] = crate::time::now_rfc3339().into();
        self.state.record_reload_outcome(outcome);
    }
}

impl Reloader {
    /// Applies the file's text; the outcome as `switchyard reload` reads it.
    fn apply(&self, text: &str, force: bool, live: &Snapshot) -> serde_json::Value {
        let path = self
            .path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let result = self.state.reload_file(text, force);
        self.state.metrics().record_reload(result.is_ok());
        match result {
            Ok(Reload::Unchanged(s)) => {
                log::info!("reload of {path}: unchanged since it was last applied; still serving revision {}", s.revision);
                json!({"result": "unchanged", "revision": s.revision})
            }
            Ok(Reload::Same(s)) => {
                log::info!("reload of {path}: everything it changes is live already; still serving revision {}", s.revision);
                json!({"result": "same", "revision": s.revision})
            }
            Ok(Reload::Applied {
                snapshot,
                taken,
                undone,
            }) => {
                if snapshot.config.server != live.config.server {
                    log::warn!("reload of {path}: changes under server: take effect at the next restart or upgrade");
                }
                if snapshot.config.store != live.config.store {
                    log::warn!("reload of {path}: changes under store: take effect at the next restart or upgrade");
                }
                for u in &undone {
                    log::warn!("reload of {path} (forced) undid a live change: {u}");
                }
                log::info!(
                    "reloaded {path}: now serving revision {}",
                    snapshot.revision
                );
                json!({"result": "applied", "revision": snapshot.revision, "taken": taken, "undone": undone})
            }
            Err(e) => {
                log::error!(
                    "reload of {path} refused, still serving revision {}: {e}",
                    live.revision
                );
                let errors: Vec<String> = match e {
                    ChangeError::Invalid(errors) => {
                        errors.0.iter().map(ToString::to_string).collect()
                    }
                    other => other.to_string().lines().map(str::to_string).collect(),
                };
                json!({"result": "refused", "revision": live.revision, "errors": errors})
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (mut hangup, mut usr1) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) {
            (Ok(h), Ok(u)) => (h, u),
            (Err(e), _) | (_, Err(e)) => {
                log::error!(
                    "cannot watch SIGHUP and SIGUSR1, reload by signal is unavailable: {e}"
                );
                return;
            }
        };
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    self.reload();
                }
                received = usr1.recv() => {
                    if received.is_none() {
                        return;
                    }
                    if let Some(log) = &self.access_log {
                        log.reopen();
                        log::info!("SIGUSR1: access log reopened");
                    }
                }
            }
        }
    }
}
