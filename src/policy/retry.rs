//! When a failed upstream attempt is tried again — one policy for both request paths:
//!
//! - A connection that could not be made sent nothing: the request goes to another backend of the
//!   same pool not yet tried, until every backend of the pool has failed once.
//! - A kept-alive connection the upstream had already closed (nothing received) is retried once, on a
//!   new connection to the same backend, and only for an idempotent request whose body was not
//!   streamed yet (it can be sent again whole).
//! - Anything else is answered (502/504), never sent twice.

/// A connect failure: whether another backend is worth trying, given how many of the pool's have
/// failed for this request.
pub fn after_connect_failure(failed: usize, pool_backends: usize) -> bool {
    failed < pool_backends
}

/// A failure on a connection taken from the keep-alive pool: whether to send the request once more
/// on a new connection.
pub fn after_reused_connection_failure(
    nothing_received: bool,
    idempotent: bool,
    body_replayable: bool,
    retried_already: bool,
) -> bool {
    nothing_received && idempotent && body_replayable && !retried_already
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_walk_the_pool_once() {
        assert!(after_connect_failure(1, 3));
        assert!(after_connect_failure(2, 3));
        assert!(!after_connect_failure(3, 3));
        assert!(!after_connect_failure(1, 1));
    }

    #[test]
    fn a_dead_keepalive_connection_is_retried_once_for_replayable_requests() {
        assert!(after_reused_connection_failure(true, true, true, false));
        assert!(
            !after_reused_connection_failure(true, true, true, true),
            "only once"
        );
        assert!(
            !after_reused_connection_failure(true, false, true, false),
            "POST"
        );
        assert!(
            !after_reused_connection_failure(true, true, false, false),
            "body streamed"
        );
        assert!(
            !after_reused_connection_failure(false, true, true, false),
            "an answer began"
        );
    }
}
