//! Switchyard: an edge proxy on Pingora that separates deploying a new API version from releasing it.
//!
//! Data flows one way: [`config`] (YAML) → [`release::ReleaseTable::compile`] → [`state`] publishes a
//! snapshot → [`proxy`] reads one snapshot per request and calls the pure [`release::decide`].

pub mod config;
pub mod release;
pub mod state;
pub mod upstream;
pub mod proxy;
pub mod server;
pub mod demo;
pub mod cli;
