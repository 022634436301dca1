//! Passive health: a backend that could not be connected to (refused, unreachable, or no answer
//! within `connect_timeout`) is passed over for [`PASSED_OVER`], as nginx does with its default
//! `max_fails=1 fail_timeout=10s`. With every backend of a route's target passed over, the route
//! falls back to its baseline without waiting for a health check (or without one configured).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a backend that could not be connected to is passed over.
pub const PASSED_OVER: Duration = Duration::from_secs(10);

/// The backends of one pool passed over now, and until when.
#[derive(Debug, Default)]
pub struct Passive {
    /// Whether any is marked: the common case (none) reads no lock.
    any: AtomicBool,
    until: Mutex<Vec<(SocketAddr, Instant)>>,
}

impl Passive {
    /// `addr` could not be connected to.
    pub fn failed(&self, addr: SocketAddr) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let end = Instant::now() + PASSED_OVER;
        match until.iter_mut().find(|(a, _)| *a == addr) {
            Some(entry) => entry.1 = end,
            None => until.push((addr, end)),
        }
        self.any.store(true, Ordering::Release);
    }

    /// The backends passed over now, added to `exclude` (those already failed for the request).
    /// `None` when there are none to add.
    pub fn excluding(&self, exclude: &[SocketAddr]) -> Option<Vec<SocketAddr>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        until.retain(|(_, end)| *end > now);
        if until.is_empty() {
            self.any.store(false, Ordering::Release);
            return None;
        }
        let mut all = exclude.to_vec();
        all.extend(until.iter().map(|(a, _)| *a));
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_failed_is_passed_over() {
        let p = Passive::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(p.excluding(&[b]), None);
        p.failed(a);
        assert_eq!(p.excluding(&[b]), Some(vec![b, a]));
        p.failed(a);
        assert_eq!(
            p.excluding(&[]),
            Some(vec![a]),
            "once, however often it failed"
        );
    }
}
