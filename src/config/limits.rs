//! Per-connection limits of `server.limits` (SPEC §2), as typed values read once from the config and
//! applied by both request paths: how long a request head may take to arrive, how long a body or a response may stall,
//! how long an idle keep-alive connection is kept, how large a head may be, how many connections and
//! how many requests per connection are served. A stalled client never pins an upstream connection
//! past them.

use super::{ConfigError, LimitsConfig};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head must arrive within this (from its first byte, or from accept).
    pub header_timeout: Duration,
    /// Longest pause while reading a request body.
    pub body_timeout: Duration,
    /// Longest pause while the client does not read its response.
    pub send_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(60),
            max_head_bytes: 32 * 1024,
            max_connections: 100_000,
            max_requests_per_connection: 10_000,
        }
    }
}

/// Smallest and largest `max_head_bytes` accepted.
pub const HEAD_BYTES_RANGE: (usize, usize) = (1024, 1 << 20);

impl Limits {
    /// The limits of a config, or every problem with them (each with its path).
    pub fn from_config(c: &LimitsConfig) -> Result<Limits, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut duration = |key: &str, d: &super::Dur| match d.read() {
            Ok(d) if d.is_zero() => {
                errors.push(ConfigError::new(
                    format!("server.limits.{key}"),
                    "must be greater than 0",
                ));
                Duration::ZERO
            }
            Ok(d) => d,
            Err(m) => {
                errors.push(ConfigError::new(format!("server.limits.{key}"), m));
                Duration::ZERO
            }
        };
        let limits = Limits {
            header_timeout: duration("header_timeout", &c.header_timeout),
            body_timeout: duration("body_timeout", &c.body_timeout),
            send_timeout: duration("send_timeout", &c.send_timeout),
            keepalive_timeout: duration("keepalive_timeout", &c.keepalive_timeout),
            max_head_bytes: c.max_head_bytes,
            max_connections: c.max_connections,
            max_requests_per_connection: c.max_requests_per_connection,
        };
        let (low, high) = HEAD_BYTES_RANGE;
        if !(low..=high).contains(&c.max_head_bytes) {
            errors.push(ConfigError::new(
                "server.limits.max_head_bytes",
                format!("must be from {low} to {high}, got {}", c.max_head_bytes),
            ));
        }
        if c.max_connections == 0 {
            errors.push(ConfigError::new(
                "server.limits.max_connections",
                "must be at least 1, got 0",
            ));
        }
        if c.max_requests_per_connection == 0 {
            errors.push(ConfigError::new(
                "server.limits.max_requests_per_connection",
                "must be at least 1, got 0",
            ));
        }
        if errors.is_empty() {
            Ok(limits)
        } else {
            Err(errors)
        }
    }
}
