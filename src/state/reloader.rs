//! Reload on SIGHUP: re-read the config file and apply it as a new revision by actor `file`. An invalid
//! file is refused with every error logged, and the running config stays. Handling SIGHUP here also
//! keeps its default action (ending the process) from applying. SIGHUP also reopens the access log
//! file, as logrotate expects.

use super::State;
use crate::proxy::AccessLog;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub struct Reloader {
    /// The config file; `None` for an embedded config (the demo), which has nothing to re-read.
    path: Option<PathBuf>,
    state: Arc<State>,
    /// Reopened on SIGHUP, so that a rotated log file is let go.
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

    /// Also reopen this access log on every SIGHUP.
    pub fn reopening(mut self, access_log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = access_log;
        self
    }

    /// One reload attempt; logs its outcome.
    pub fn reload(&self) {
        let Some(file) = &self.path else {
            log::warn!("SIGHUP ignored: this instance runs an embedded config, there is no file to re-read");
            return;
        };
        let path = file.display();
        let live = self.state.load();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                self.state.metrics().record_reload(false);
                log::error!(
                    "reload refused: cannot read {path}: {e}; still serving revision {}",
                    live.revision
                );
                return;
            }
        };
        match self.state.reload_file(&text) {
            Ok(next) => {
                self.state.metrics().record_reload(true);
                if next.config.server != live.config.server {
                    log::warn!("reload of {path}: changes under server: take effect at the next restart or upgrade");
                }
                log::info!("reloaded {path}: now serving revision {}", next.revision);
            }
            Err(e) => {
                self.state.metrics().record_reload(false);
                log::error!(
                    "reload of {path} refused, still serving revision {}: {e}",
                    live.revision
                );
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGHUP, reload by signal is unavailable: {e}");
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
                    if let Some(log) = &self.access_log {
                        log.reopen();
                    }
                    self.reload();
                }
            }
        }
    }
}
