//! When a failed upstream attempt is tried again — one policy for both request paths:
//!
//! - A connection that could not be made sent nothing: the request goes to another backend not yet
//!   tried, of the target's pool, then of the route's baseline (fallback), until none is left. The
//!   backend is passed over by the next requests for a while too (`upstream::PASSED_OVER`). Both
//!   paths pick it with `proxy::pick_backend`.
//! - A kept-alive connection the upstream had already closed (nothing received) is retried once, on a
//!   new connection to the same backend, and only for an idempotent request whose body was not
//!   streamed yet (it can be sent again whole).
//! - Anything else is answered (502/504), never sent twice.

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
