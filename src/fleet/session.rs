//! The fleet's own thread: sessions with etcd (connect, catch up, watch), the heartbeat that renews
//! this instance's registration and publishes its counts, and the election of rollout leaders.

use super::*;

impl Fleet {
    /// Starts the fleet's own thread and runtime: connecting, catching up, watching, renewing the
    /// lease, publishing counts and electing rollout leaders, until the server stops. Called once,
    /// from the server's background service (after a daemon has forked).
    fn spawn(self: &Arc<Self>, state: Arc<State>) -> Result<(), FleetError> {
        let fleet = self.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("switchyard-fleet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("switchyard-fleet")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(FleetError::Local(e.to_string())));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let _ = fleet.handle.set(rt.handle().clone());
                rt.block_on(fleet.run(state));
            })
            .map_err(|e| FleetError::Local(e.to_string()))?;
        rx.recv().map_err(|e| FleetError::Local(e.to_string()))?
    }

    /// Sessions with etcd, one after another, with backoff between them.
    async fn run(self: Arc<Self>, state: Arc<State>) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                r = self.session(&state) => r,
                _ = stop.changed() => Ok(()),
            };
            match outcome {
                Ok(()) => {
                    self.leave().await;
                    return;
                }
                Err(e) => {
                    if self.connected() {
                        log::error!(
                            "fleet: lost etcd ({e}); serving revision {} and refusing changes until it is back",
                            state.load().revision
                        );
                    } else {
                        log::warn!("fleet: etcd unreachable: {e}; retrying in {backoff:?}");
                    }
                    self.set_connected(false, Some(e.to_string()));
                    self.leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            // Up to a quarter more, so that a fleet does not come back in lockstep.
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Gives up this instance's lease: its registration, counts and leaderships go at once, and
    /// another instance takes its rollouts over.
    async fn leave(&self) {
        self.set_connected(false, Some("this instance is leaving the fleet".into()));
        let lease = self.lease.swap(0, SeqCst);
        let client = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Some(mut client), true) = (client, lease != 0) {
            let revoke = client.lease_revoke(lease);
            match tokio::time::timeout(self.timeout, revoke).await {
                Ok(Ok(_)) => log::info!("fleet: left (lease revoked)"),
                Ok(Err(e)) => log::warn!("fleet: revoking the lease: {e}"),
                Err(_) => log::warn!("fleet: revoking the lease: no answer"),
            }
        }
        self.leaders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// One connection: catch up, then follow the watch until something fails (`Err`) or this
    /// instance hands over to a new process (`Ok`).
    async fn session(&self, state: &Arc<State>) -> Result<(), FleetError> {
        let mut client = self.connect().await?;
        let lease = self.lease(&mut client).await?;
        let (mut keeper, mut kept) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| FleetError::etcd("keeping the lease alive", e))?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());

        // No change is made here until this session is caught up (changes need `connected`), so
        // this session's first read is the newest: even one older than before (etcd restored from
        // a backup) is followed.
        self.applied_etcd.store(0, SeqCst);
        let mut watch_from = self.catch_up(state, &mut client).await?;
        let (_watcher, mut events) = client
            .watch(
                self.key(""),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(watch_from + 1),
                ),
            )
            .await
            .map_err(|e| FleetError::etcd(format!("watching {}", self.prefix), e))?;
        self.beat(state, &mut client).await?;
        self.set_connected(true, None);
        log::info!(
            "fleet: connected to etcd {} as {} (prefix {}), serving revision {}",
            self.cfg.endpoints.join(", "),
            self.id,
            self.prefix,
            state.load().revision
        );
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = events.message() => {
                    let resp = message
                        .map_err(|e| FleetError::etcd("watch", e))?
                        .ok_or_else(|| FleetError::Session("the watch ended".into()))?;
                    if resp.compact_revision() > 0 {
                        return Err(FleetError::Session(format!(
                            "the watch fell behind etcd's compaction (revision {}): reading everything again",
                            resp.compact_revision()
                        )));
                    }
                    if resp.canceled() {
                        return Err(FleetError::Session(format!("etcd cancelled the watch: {}", resp.cancel_reason())));
                    }
                    let revision_changed = self.on_watch(state, &resp);
                    if revision_changed {
                        watch_from = self.catch_up(state, &mut client).await?.max(watch_from);
                        // The registration says at once which revision this instance serves.
                        self.beat(state, &mut client).await?;
                    }
                }
                _ = renew.tick() => {
                    keeper.keep_alive().await.map_err(|e| FleetError::etcd("renewing the lease", e))?;
                }
                answer = kept.message() => {
                    let answer = answer
                        .map_err(|e| FleetError::etcd("lease keep-alive", e))?
                        .ok_or_else(|| FleetError::Session("the lease keep-alive stream ended".into()))?;
                    if answer.ttl() <= 0 {
                        self.lease.store(0, SeqCst);
                        return Err(FleetError::Session("this instance's lease expired".into()));
                    }
                }
                _ = beat.tick() => {
                    if state.is_handing_over() {
                        return Ok(());
                    }
                    self.beat(state, &mut client).await?;
                }
                _ = self.campaign_now.notified() => {
                    self.campaign(state, &mut client).await?;
                }
            }
        }
    }

    /// This instance's lease: the one still alive from before a short outage (it keeps this
    /// instance's leaderships), or a new one.
    async fn lease(&self, client: &mut Client) -> Result<i64, FleetError> {
        let lease = self.lease.load(SeqCst);
        if lease != 0 {
            let alive = client
                .lease_time_to_live(lease, None)
                .await
                .is_ok_and(|r| r.ttl() > 0);
            if alive {
                return Ok(lease);
            }
        }
        let ttl = self.ttl.as_secs().max(2) as i64;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| FleetError::etcd("granting a lease", e))?
            .id();
        self.lease.store(lease, SeqCst);
        Ok(lease)
    }

    /// Takes in what the watch saw: rollout records and leaders that went. Returns whether the
    /// fleet's revision moved past the one served here.
    fn on_watch(&self, state: &Arc<State>, resp: &etcd_client::WatchResponse) -> bool {
        let mut revision_changed = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&self.key("")) else {
                continue;
            };
            let deleted = event.event_type() == EventType::Delete;
            if rest == "revision" {
                let n = kv.value_str().ok().and_then(|v| v.parse::<u64>().ok());
                if n.is_some_and(|n| n > state.load().revision) {
                    revision_changed = true;
                }
            } else if let Some(route) = rest.strip_prefix("rollouts/") {
                let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
                if deleted {
                    followed.remove(route);
                } else {
                    followed.insert(route.to_string(), kv.value().to_vec());
                }
            } else if let Some(route) = rest.strip_prefix("leaders/") {
                if deleted {
                    self.leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(route);
                    self.campaign_now.notify_one();
                }
            }
        }
        revision_changed
    }

    /// Reads what this instance missed and applies it. Returns etcd's revision of the read.
    async fn catch_up(&self, state: &Arc<State>, client: &mut Client) -> Result<i64, FleetError> {
        let applied = state.load().revision;
        let mut catch = self.read_since(client, applied).await?;
        if catch.head.is_some_and(|h| h < applied) {
            catch = self.read_since(client, 0).await?;
        }
        {
            let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
            followed.clear();
            followed.extend(catch.rollouts.iter().cloned());
        }
        let etcd_revision = catch.etcd_revision;
        match catch.head {
            None => {
                // Nothing under the prefix yet: this instance's configuration becomes the fleet's
                // first revision (one instance wins; the others read it).
                let seeding = state.clone();
                let seeded = tokio::task::spawn_blocking(move || seeding.seed_fleet())
                    .await
                    .map_err(|e| FleetError::Local(e.to_string()))?;
                match seeded {
                    Ok(()) => {}
                    Err(e) => return Err(FleetError::Local(format!("seeding the fleet: {e}"))),
                }
                // Whoever won, read it (and watch from there).
                let catch = self.read_since(client, 0).await?;
                self.apply(state, catch).await
            }
            Some(head) => {
                self.fleet_revision.fetch_max(head, SeqCst);
                self.apply(state, catch).await.map(|r| r.max(etcd_revision))
            }
        }
    }

    async fn apply(&self, state: &Arc<State>, catch: CatchUp) -> Result<i64, FleetError> {
        let etcd_revision = catch.etcd_revision;
        if let Some(head) = catch.head {
            self.fleet_revision.fetch_max(head, SeqCst);
        }
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.apply_fleet(catch))
            .await
            .map_err(|e| FleetError::Local(e.to_string()))?
            .map_err(|e| FleetError::Local(e.to_string()))?;
        Ok(etcd_revision)
    }

    /// Every second: registration, counts, and leaderless rollouts.
    async fn beat(&self, state: &Arc<State>, client: &mut Client) -> Result<(), FleetError> {
        let lease = self.lease.load(SeqCst);
        let live = state.load();
        let registration = Registration {
            id: self.id.clone(),
            admin: self.admin.clone(),
            revision: live.revision,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at.clone(),
            updated_at: crate::time::now_rfc3339(),
        };
        let mut published = Published::default();
        let metrics = state.metrics();
        for r in live.config.routes.iter().filter(|r| r.rollout.is_some()) {
            let mut targets = BTreeMap::new();
            let names = r
                .split
                .iter()
                .flat_map(|s| s.targets.keys().map(str::to_string))
                .chain(r.rollout.iter().map(|ro| ro.canary.clone()));
            for target in names {
                let totals = metrics.totals(&r.name, &target);
                targets.insert(target, WireStats::from(&totals));
            }
            published.routes.insert(r.name.clone(), targets);
        }
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.key(&format!("instances/{}", self.id)),
                serde_json::to_string(&registration).unwrap_or_default(),
                Some(put.clone()),
            ),
            TxnOp::put(
                self.key(&format!("stats/{}", self.id)),
                serde_json::to_vec(&published).unwrap_or_default(),
                Some(put),
            ),
        ]);
        client
            .txn(txn)
            .await
            .map_err(|e| FleetError::etcd("registering", e))?;
        self.campaign(state, client).await
    }

    /// Tries to lead every route with a rollout that has no leader; notes who leads the others.
    async fn campaign(&self, state: &Arc<State>, client: &mut Client) -> Result<(), FleetError> {
        let lease = self.lease.load(SeqCst);
        let live = state.load();
        let me = json!({"id": self.id, "admin": self.admin}).to_string();
        let mut leaders = HashMap::new();
        for r in live.config.routes.iter().filter(|r| r.rollout.is_some()) {
            let key = self.key(&format!("leaders/{}", r.name));
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| FleetError::etcd(format!("rollout leadership of {}", r.name), e))?;
            let leader = if resp.succeeded() {
                log::info!(
                    "fleet: this instance ({}) now leads route {}'s rollout",
                    self.id,
                    r.name
                );
                Some((self.id.clone(), self.admin.clone()))
            } else {
                resp.op_responses().into_iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => {
                        g.kvs().first().and_then(|kv| leader_value(kv.value()))
                    }
                    _ => None,
                })
            };
            if let Some(l) = leader {
                leaders.insert(r.name.clone(), l);
            }
        }
        *self.leaders.lock().unwrap_or_else(|p| p.into_inner()) = leaders;
        Ok(())
    }
}

/// Runs the fleet's thread while the server runs; leaves the fleet when it stops.
pub struct FleetService {
    state: Arc<State>,
    fleet: Arc<Fleet>,
}

impl FleetService {
    pub fn new(state: Arc<State>, fleet: Arc<Fleet>) -> FleetService {
        FleetService { state, fleet }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let fleet = self.fleet.clone();
        if let Err(e) = fleet.spawn(self.state.clone()) {
            log::error!(
                "fleet: cannot start its thread: {e}; this instance stays on its cached revision"
            );
            return;
        }
        let _ = shutdown.changed().await;
        let _ = fleet.stop.send(true);
        // Leaving revokes the lease: another instance takes this one's rollouts at once.
        for _ in 0..20 {
            if fleet.lease.load(SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
