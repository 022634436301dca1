//! The health checker: one background service that runs every pool's HTTP health check when it is due.
//! It reads the pools of the live snapshot each time it wakes (when the next check is due, and at least
//! once a second), so pools added by a config change are checked within a second, and removed ones
//! stop being checked.

use super::{monotonic_ms, Pool};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// The shortest wait between two looks at the pools: health intervals are honoured to this resolution.
const TICK: Duration = Duration::from_millis(50);
/// The longest: a pool with a health check added by a config change is first checked within it.
/// Without any health check configured, the checker wakes this seldom, so it costs the proxy's CPU
/// (the process is often pinned to one core) next to nothing.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The pools of the live config, read each time the checker wakes.
pub type LivePools = Box<dyn Fn() -> Vec<Arc<Pool>> + Send + Sync>;

pub struct HealthChecker {
    pools: LivePools,
}

impl HealthChecker {
    pub fn new(pools: LivePools) -> Self {
        HealthChecker { pools }
    }

    /// Starts the checks that are due, each on its own task so a slow backend never delays others,
    /// and says how long to wait before looking again.
    fn run_due_checks(&self) -> Duration {
        let now = monotonic_ms();
        let mut wait = IDLE_TICK;
        for pool in (self.pools)() {
            let Some(due_in) = pool.health_check_due_in(now) else {
                continue;
            };
            if due_in == 0 && pool.claim_health_check() {
                tokio::spawn(async move { pool.run_health_check().await });
            }
            wait = wait.min(Duration::from_millis(due_in));
        }
        wait.max(TICK)
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let wait = self.run_due_checks();
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
