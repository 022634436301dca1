//! A state whose revisions are shared with a fleet ([`SharedStore`]): a change committed to the
//! store before it is served (the durable step of the one change flow, [`State::change`]), what
//! the others committed applied here, and the start-up of an instance of a fleet.

use super::*;

impl State {
    /// A fleet's instance that finds nothing under the prefix: its configuration becomes the fleet's
    /// first revision. Another instance seeding at the same time wins or loses as a whole.
    pub fn seed_fleet(&self) -> Result<(), StateError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let live = self.current.load_full();
        let next =
            Snapshot::build(live.config.clone(), 1, Some(&live)).map_err(StateError::Invalid)?;
        let reason = format!(
            "first revision of the fleet {}, from the configuration of instance {}",
            fleet.prefix(),
            fleet.id()
        );
        let change = Change {
            actor: "file",
            action: "config.reload",
            route: None,
            reason: Some(&reason),
        };
        let yaml = next.config.to_yaml();
        let entry = audit_entry(&change, None, &next, &yaml);
        match fleet.commit(0, 1, shared::shared_yaml(&next.config), &entry) {
            Ok(()) => {
                log::info!("fleet: {reason}");
                Ok(())
            }
            // Another instance was first; its revision is read next.
            Err(CommitError::Conflict(_)) => Ok(()),
            Err(CommitError::Unavailable(m)) => {
                drop(writer);
                Err(StateError::Unavailable(m))
            }
        }
    }

    /// Applies what the fleet committed since this instance's revision: each revision's audit line
    /// and configuration go to the copy in `state_dir`, the newest is served.
    pub fn apply_fleet(&self, catch: CatchUp) -> Result<(), StateError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_handing_over() {
            return Ok(());
        }
        if let Some(fleet) = &self.fleet {
            // Read before a change this instance committed meanwhile: already superseded.
            if fleet.is_stale(catch.etcd_revision) {
                return Ok(());
            }
            fleet.note_applied(catch.etcd_revision);
        }
        let Some(head) = catch.head else {
            return Ok(());
        };
        let current = self.current.load_full();
        if head == current.revision && current.revision != 0 {
            return Ok(());
        }
        let Some(local) = writer.local.clone() else {
            return Ok(());
        };
        if head < current.revision {
            log::warn!(
                "fleet: its revision {head} is older than this instance's {} (etcd restored or the prefix reset): following the fleet",
                current.revision
            );
            if writer.cache_writes {
                if let Some(store) = &writer.store {
                    if let Err(e) = store.reset() {
                        log::error!("{}: clearing the copy: {e}", store.dir().display());
                    }
                }
            }
        }
        let base = if head < current.revision {
            0
        } else {
            current.revision
        };
        let mut serving = None;
        for e in catch.entries.iter().filter(|e| e.revision > base) {
            let composed = e.shared.as_deref().map(|shared| local.compose(shared));
            if e.revision == head {
                let config = match composed {
                    Some(Ok(c)) => c,
                    Some(Err(err)) => {
                        log::error!("fleet: revision {head} cannot be read ({err}); still serving revision {}", current.revision);
                        return Ok(());
                    }
                    None => {
                        log::error!("fleet: revision {head} has no configuration in etcd; still serving revision {}", current.revision);
                        return Ok(());
                    }
                };
                let snapshot = match Snapshot::build(config, head, Some(&current)) {
                    Ok(s) => s,
                    Err(err) => {
                        log::error!("fleet: revision {head} cannot be served here ({err}); still serving revision {}", current.revision);
                        return Ok(());
                    }
                };
                if writer.cache_writes {
                    let yaml = snapshot.config.to_yaml();
                    let entry = e.audit.clone().unwrap_or_else(|| missing_audit(head));
                    cache(&writer, &entry, Some(&yaml));
                }
                serving = Some((snapshot, e.audit.clone()));
            } else if writer.cache_writes {
                let yaml = composed.and_then(Result::ok).map(|c| c.to_yaml());
                let entry = e.audit.clone().unwrap_or_else(|| missing_audit(e.revision));
                cache(&writer, &entry, yaml.as_deref());
            }
        }
        if let Some((snapshot, audit)) = serving {
            match audit {
                Some(a) => log::info!(
                    "fleet: now serving revision {head} ({} by {}{})",
                    a.action,
                    a.actor,
                    a.route.map(|r| format!(" on {r}")).unwrap_or_default()
                ),
                None => log::info!("fleet: now serving revision {head}"),
            }
            self.current.store(Arc::new(snapshot));
        }
        Ok(())
    }

    /// Opens an instance of a fleet (`store.etcd`): it serves the fleet's live revision, read from
    /// etcd at start; with etcd unreachable, the revision last copied to `state_dir/fleet` (or, with
    /// none, its config file) until etcd is back.
    pub(super) fn open_fleet(
        file_config: Valid,
        file_text: &str,
        successor: bool,
        fleet: Arc<dyn SharedStore>,
    ) -> anyhow::Result<State> {
        let dir = PathBuf::from(&file_config.server.state_dir).join("fleet");
        let store = open_store(&dir, &file_config, successor)?;
        let cached = store.persisted().ok().flatten().and_then(|p| {
            committed_config(&store, p.revision)
                .ok()
                .map(|c| (p.revision, c))
        });
        // The file was validated when it was read; the cached revision with this instance's
        // sections on it is validated here.
        let revision = cached.as_ref().map_or(0, |(n, _)| *n);
        let snapshot = match cached {
            Some((n, c)) => Snapshot::build(shared::Local::of(&file_config).onto(c), n, None),
            None => Snapshot::of_valid(file_config.clone(), 0, None),
        };
        let snapshot = snapshot.map_err(|e| anyhow::anyhow!("{e}"))?;
        let file_config = file_config.into_inner();
        let state = State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Writer {
                store: Some(store),
                state_dir: Some(PathBuf::from(&file_config.server.state_dir)),
                local: Some(shared::Local::of(&file_config)),
                cache_writes: !successor,
                file_sha256: sha256_hex(file_text.as_bytes()),
                base: file_config.clone(),
                unsaved_file: None,
            }),
            metrics: Arc::default(),
            handing_over: Default::default(),
            fleet: Some(fleet.clone()),
        };
        match fleet.read_at_start(revision) {
            Ok(catch) if catch.head.is_some() => {
                state.apply_fleet(catch).map_err(|e| anyhow::anyhow!("{e}"))?;
                log::info!(
                    "fleet {}: serving revision {}",
                    fleet.prefix(),
                    state.load().revision
                );
            }
            Ok(_) => log::info!(
                "fleet {}: nothing committed yet; this instance's configuration becomes its first revision once connected",
                fleet.prefix()
            ),
            Err(e) if revision > 0 => log::warn!(
                "fleet {}: etcd unreachable at start-up ({e}): serving revision {revision} as copied to {}; changes are refused until etcd is back",
                fleet.prefix(),
                dir.display()
            ),
            Err(e) => log::warn!(
                "fleet {}: etcd unreachable at start-up ({e}) and no revision copied to {}: serving the config file until etcd is back; changes are refused until then",
                fleet.prefix(),
                dir.display()
            ),
        }
        Ok(state)
    }
}

/// Makes a change durable in a fleet: commits `next` to the fleet's store against the revision
/// `previous` this instance serves (compare-and-swap, all or nothing), and keeps a copy in
/// `state_dir/fleet`. The others apply it from their watch.
pub(super) fn commit_shared(
    fleet: &dyn SharedStore,
    writer: &Writer,
    change: &Change<'_>,
    previous: &Snapshot,
    next: &Snapshot,
) -> Result<(), ChangeError> {
    let yaml = next.config.to_yaml();
    let entry = audit_entry(change, Some(previous), next, &yaml);
    let shared = shared::shared_yaml(&next.config);
    fleet
        .commit(previous.revision, next.revision, shared, &entry)
        .map_err(|e| match e {
            CommitError::Conflict(head) => ChangeError::Conflict(format!(
                "another instance of the fleet committed revision {head} since revision {} this change was made against: read again and retry",
                previous.revision
            )),
            CommitError::Unavailable(m) => ChangeError::Unavailable(m),
        })?;
    if writer.cache_writes {
        cache(writer, &entry, Some(&yaml));
    }
    Ok(())
}
