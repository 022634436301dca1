//! The live store: one [`Snapshot`] (compiled table + upstream pools + the config they came from),
//! published through `ArcSwap`. Requests load one snapshot and keep it to the end, so a change never
//! affects a request in flight. Every change goes through [`State::apply`].

use crate::config::{Config, ConfigErrors};
use crate::release::ReleaseTable;
use crate::upstream::Pools;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub config: Config,
    pub table: ReleaseTable,
    pub pools: Pools,
}

impl Snapshot {
    /// Validates and compiles `config`, reusing unchanged pools of `previous`.
    pub fn build(
        config: Config,
        revision: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let table = ReleaseTable::compile(&config)?;
        let pools = Pools::build(&config, previous.map(|p| &p.pools))?;
        Ok(Snapshot {
            revision,
            config,
            table,
            pools,
        })
    }
}

/// The single writer of the live snapshot.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Serialises writers: validate → compile → swap happens for one change at a time.
    writer: Mutex<()>,
}

impl State {
    pub fn new(config: Config) -> Result<State, ConfigErrors> {
        let snapshot = Snapshot::build(config, 1, None)?;
        Ok(State {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(()),
        })
    }

    /// The live snapshot. Lock-free.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the live config. On any error nothing changes and every problem is returned.
    pub fn apply(&self, config: Config) -> Result<Arc<Snapshot>, ConfigErrors> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current.load_full();
        let next = Arc::new(Snapshot::build(
            config,
            previous.revision + 1,
            Some(&previous),
        )?);
        self.current.store(next.clone());
        Ok(next)
    }
}
