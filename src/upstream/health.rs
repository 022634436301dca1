//! The health checker: one background service that runs every pool's HTTP health check when it is due.
//! It reads the pools of the live snapshot on each tick, so pools added by a config change are checked
//! from their first tick on, and removed ones stop being checked.

use super::monotonic_ms;
use crate::state::State;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the checker looks for due pools; health intervals are honoured to this resolution.
const TICK: Duration = Duration::from_millis(50);

pub struct HealthChecker {
    state: Arc<State>,
}

impl HealthChecker {
    pub fn new(state: Arc<State>) -> Self {
        HealthChecker { state }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let snapshot = self.state.load();
                    let now = monotonic_ms();
                    for pool in snapshot.pools.iter().filter(|p| p.claim_health_check(now)) {
                        let pool = pool.clone();
                        // Each pool's check runs on its own task so a slow backend never delays others.
                        tokio::spawn(async move { pool.run_health_check().await });
                    }
                }
            }
        }
    }
}
