//! What operators see of backend health: every backend of every pool, up or down, since when, and the
//! last failed probe's error. The HTTP health check is wrapped so each probe and each transition is
//! recorded; a transition is logged as one line in words naming the upstream and the backend.

use crate::time::rfc3339;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One backend's health as last observed.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct BackendHealth {
    /// `IP:PORT`.
    pub backend: String,
    pub up: bool,
    /// When it last became up or down (or when the pool was built), RFC 3339.
    pub since: String,
    /// The error of the last failed probe, while it keeps failing or until it is up again.
    pub last_error: Option<String>,
    /// Whether a health check probes it; without one it always counts as up.
    pub checked: bool,
}

/// The health of one pool's backends, shared by the pool and its wrapped health check.
#[derive(Debug)]
pub struct Observed {
    upstream: String,
    backends: Mutex<BTreeMap<String, BackendHealth>>,
}

impl Observed {
    pub fn new(upstream: &str, backends: impl Iterator<Item = String>, checked: bool) -> Self {
        let since = rfc3339(SystemTime::now());
        let backends = backends
            .map(|b| {
                let health = BackendHealth {
                    backend: b.clone(),
                    up: true,
                    since: since.clone(),
                    last_error: None,
                    checked,
                };
                (b, health)
            })
            .collect();
        Observed {
            upstream: upstream.to_string(),
            backends: Mutex::new(backends),
        }
    }

    /// Every backend, in address order.
    pub fn backends(&self) -> Vec<BackendHealth> {
        let map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    fn update(&self, backend: &Backend, f: impl FnOnce(&mut BackendHealth)) {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get_mut(&backend.addr.to_string()) {
            f(h);
        }
    }
}

/// A health check that records what it sees in an [`Observed`].
pub struct ObservedCheck {
    pub inner: Box<dyn HealthCheck + Send + Sync>,
    pub observed: Arc<Observed>,
}

#[async_trait]
impl HealthCheck for ObservedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner.check(target).await;
        let error = result.as_ref().err().map(|e| probe_error(e));
        self.observed.update(target, |h| match error {
            Some(e) => h.last_error = Some(e),
            None if h.up => h.last_error = None,
            None => {}
        });
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let now = rfc3339(SystemTime::now());
        let mut last_error = None;
        self.observed.update(target, |h| {
            h.up = healthy;
            h.since = now;
            if healthy {
                h.last_error = None;
            }
            last_error = h.last_error.clone();
        });
        let (upstream, addr) = (&self.observed.upstream, &target.addr);
        if healthy {
            log::info!("upstream {upstream}: backend {addr} is up again: its health check passes");
        } else {
            log::warn!(
                "upstream {upstream}: backend {addr} is down: {}; its traffic goes to the other backends of {upstream}",
                last_error.as_deref().unwrap_or("its health check fails")
            );
        }
        self.inner.health_status_change(target, healthy).await;
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!(
            "upstream {} backend {}",
            self.observed.upstream, target.addr
        )
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// A probe's failure in words: the kind of error, and what it happened on.
fn probe_error(e: &pingora::Error) -> String {
    let kind = match &e.etype {
        pingora::ErrorType::CustomCode(what, code) => format!("{what} (HTTP {code})"),
        pingora::ErrorType::ConnectRefused => "connection refused".into(),
        pingora::ErrorType::ConnectTimedout => "connect timed out".into(),
        pingora::ErrorType::ReadTimedout => "read timed out".into(),
        pingora::ErrorType::ConnectionClosed => "connection closed".into(),
        other => other.as_str().to_string(),
    };
    match e.context.as_ref().map(ToString::to_string) {
        Some(c) if !c.is_empty() => format!("{kind} ({c})"),
        _ => kind,
    }
}
