//! Behaviour that must be identical on both request paths (the HTTP/1 engine in `proxy::h1` and
//! Pingora's pipeline in `proxy`): written once here and called from both. Nothing in this tree knows
//! a parser's types; it takes bytes and strings.

pub mod headers;
pub mod request;
pub mod retry;
