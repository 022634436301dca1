//! Switchyard: an edge proxy on Pingora that separates deploying a new API version from releasing it.
//!
//! Data flows one way: [`config`] (YAML, read once into typed values) → [`release::ReleaseTable::compile`]
//! → [`state`] publishes a snapshot → every connection comes in through the [`front`] door, which
//! reads and classifies each head → [`proxy`] (the HTTP/1 engine, or Pingora's pipeline) reads one
//! snapshot per request and calls the pure [`release::decide`], then counts what happened in
//! [`metrics`].
//!
//! Modules sit on floors and import only from their own floor or below (`.ci/layers.py` fails CI
//! on an upward import or a cycle):
//!
//! 1. [`time`], [`config`], [`stats`]: timestamps; the configuration read into typed values; the
//!    anytime-valid tests the rollout's gates and the mirror's field judgments use.
//! 2. [`policy`], [`release`]: the rules both request paths share; the pure release decision.
//! 3. [`state`], [`upstream`], [`metrics`]: the live snapshot and its single writer (a fleet's
//!    store plugs in as a [`state::shared::SharedStore`]); backend pools and health; counters.
//! 4. [`rollout`], [`fleet`]: the rollout controller; the fleet on etcd.
//! 5. [`front`], then [`proxy`] and [`admin`] behind it: the front door of every listener; the
//!    request paths; the admin API, status page and Prometheus exposition.
//! 6. [`server`], [`upgrade`], [`demo`], [`ctl`], [`cli`]: assembling and running it all.

// Rooms of a readable size (thresholds in clippy.toml): tests may be longer.
#![deny(clippy::too_many_lines, clippy::cognitive_complexity)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod fleet;
pub mod front;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod release;
pub mod rollout;
pub mod server;
pub mod state;
pub mod stats;
pub mod time;
pub mod upgrade;
pub mod upstream;
