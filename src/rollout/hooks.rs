//! Calls out of the controller: webhooks (`pre_step`, `post_rollout`, `rollback`) and `notify`. None of
//! them ever blocks the controller: each call runs on its own thread, a `pre_step` answer is picked up
//! by a later check, and notifications go through a bounded queue that drops (and counts) what it cannot
//! hold.

use crate::config::WebhookConfig;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a webhook or notification did not get a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The thread that would have called it could not be started.
    #[error("not called: {0}")]
    NotCalled(String),
}

/// POSTs `body` as JSON to `url`; `Ok` on a 2xx answer.
pub fn post(url: &str, body: &Value, timeout: Duration) -> Result<u16, HookError> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .build();
    match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) if (200..300).contains(&r.status()) => Ok(r.status()),
        Ok(r) => Err(HookError::Status {
            url: url.to_string(),
            status: r.status(),
        }),
        Err(ureq::Error::Status(status, _)) => Err(HookError::Status {
            url: url.to_string(),
            status,
        }),
        Err(ureq::Error::Transport(t)) => Err(HookError::Transport {
            url: url.to_string(),
            message: t.to_string(),
        }),
    }
}

fn timeout_of(hook: &WebhookConfig) -> Duration {
    hook.timeout.get()
}

/// The outcome of a step's `pre_step` webhooks, filled in by their thread.
#[derive(Debug, Clone, Default)]
pub struct PreStep(Arc<Mutex<Option<Result<(), HookError>>>>);

impl PreStep {
    /// Calls every `pre_step` hook in order on a thread of its own; the first that fails decides.
    pub fn start(hooks: Vec<WebhookConfig>, body: Value) -> PreStep {
        let out = PreStep::default();
        let slot = out.0.clone();
        let spawned = std::thread::Builder::new()
            .name("rollout pre_step".into())
            .spawn(move || {
                let mut result = Ok(());
                for h in &hooks {
                    if let Err(e) = post(&h.url, &body, timeout_of(h)) {
                        result = Err(e);
                        break;
                    }
                }
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            });
        if let Err(e) = spawned {
            *out.0.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Err(HookError::NotCalled(e.to_string())));
        }
        out
    }

    /// `None` while the hooks are still running.
    pub fn result(&self) -> Option<Result<(), HookError>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Calls the hooks of `when` (`post_rollout`, `rollback`) in the background; their answers only log.
pub fn fire(hooks: &[WebhookConfig], when: &str, body: Value) {
    let hooks: Vec<WebhookConfig> = hooks.iter().filter(|h| h.when == when).cloned().collect();
    if hooks.is_empty() {
        return;
    }
    let what = when.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("rollout {when}"))
        .spawn(move || {
            for h in &hooks {
                if let Err(e) = post(&h.url, &body, timeout_of(h)) {
                    log::warn!("rollout {what} webhook: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("rollout {when} webhooks not called: {e}");
    }
}

/// How many notifications wait at most; more are dropped and counted.
const NOTIFY_QUEUE: usize = 256;
/// Attempts per notification, with 0.5 s, 1 s between them.
const NOTIFY_ATTEMPTS: u32 = 3;

/// Delivers verdicts to `notify` URLs from one thread (started on first use), in order, with bounded
/// retries.
#[derive(Default)]
pub struct Notifier {
    queue: std::sync::OnceLock<Option<SyncSender<(String, Value)>>>,
    pub dropped: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Notifier {
    fn start(&self) -> Option<SyncSender<(String, Value)>> {
        let (queue, rx) = sync_channel::<(String, Value)>(NOTIFY_QUEUE);
        let failures = self.failed.clone();
        let spawned = std::thread::Builder::new()
            .name("rollout notify".into())
            .spawn(move || {
                for (url, body) in rx {
                    let mut last = String::new();
                    let delivered = (0..NOTIFY_ATTEMPTS).any(|attempt| {
                        if attempt > 0 {
                            std::thread::sleep(Duration::from_millis(500 << (attempt - 1)));
                        }
                        match post(&url, &body, Duration::from_secs(5)) {
                            Ok(_) => true,
                            Err(e) => {
                                last = e.to_string();
                                false
                            }
                        }
                    });
                    if !delivered {
                        failures.fetch_add(1, Relaxed);
                        log::warn!(
                            "rollout notify: giving up after {NOTIFY_ATTEMPTS} attempts: {last}"
                        );
                    }
                }
            });
        match spawned {
            Ok(_) => Some(queue),
            Err(e) => {
                log::error!("rollout notifications cannot be sent: {e}");
                None
            }
        }
    }

    /// Queues `body` for `url`; never waits.
    pub fn send(&self, url: &str, body: Value) {
        let queued = self
            .queue
            .get_or_init(|| self.start())
            .as_ref()
            .is_some_and(|q| match q.try_send((url.to_string(), body)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            });
        if !queued {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}
