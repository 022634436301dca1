//! The fields of an access-log line (`server.access_log_fields`).

/// Every field of a line, in order: what `server.access_log_fields` may select from.
pub const ACCESS_LOG_FIELDS: [&str; 24] = [
    "ts",
    "request_id",
    "route",
    "target",
    "reason",
    "client",
    "method",
    "path",
    "protocol",
    "status",
    "upstream",
    "duration_ms",
    "mirrored",
    "fallback_from",
    "error",
    "client_addr",
    "x_forwarded_for",
    "host",
    "user_agent",
    "request_bytes",
    "response_bytes",
    "upstream_ttfb_ms",
    "tls_version",
    "traceparent",
];
