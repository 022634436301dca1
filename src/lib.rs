//! Switchyard: an edge proxy on Pingora that separates deploying a new API version from releasing it.
//!
//! Data flows one way: [`config`] (YAML) → [`release::ReleaseTable::compile`] → [`state`] publishes a
//! snapshot → [`proxy`] reads one snapshot per request and calls the pure [`release::decide`], then
//! counts what happened in [`metrics`].

pub mod admin;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod fleet;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod release;
pub mod rollout;
pub mod server;
pub mod state;
pub mod time;
pub mod upgrade;
pub mod upstream;
