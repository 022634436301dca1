//! Which header fields cross the proxy (RFC 9110 §7.6.1), for both request paths: hop-by-hop fields
//! describe one connection and are never forwarded, nor is any field the `Connection` field names.
//! Pingora's pipeline strips the same ones itself (`proxy_common.rs`); the engine calls these.

/// The namespace of the proxy's own request fields (`X-Switchyard-Client`, `X-Switchyard-Shadow`).
pub const INTERNAL_PREFIX: &str = "x-switchyard-";
/// The request id, kept when a client's is sane and made otherwise; sent upstream and answered.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The API client a request was identified as (`clients.keys`), for the upstream.
pub const CLIENT_HEADER: &str = "x-switchyard-client";
/// Marks a shadow copy of a request (a dark release's mirror), for the upstream.
pub const SHADOW_HEADER: &str = "x-switchyard-shadow";

/// The fields the proxy adds to a request it sends upstream, on both request paths: the settled
/// request id, the client it was identified as, and on a shadow copy the shadow mark. A client's own
/// fields of these names never cross ([`internal`], and the request id is settled first).
pub fn added_upstream<'a>(
    request_id: &'a str,
    client: Option<&'a str>,
    shadow: bool,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    [
        (REQUEST_ID_HEADER, Some(request_id)),
        (CLIENT_HEADER, client),
        (SHADOW_HEADER, shadow.then_some("1")),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
}

/// A field in the proxy's own namespace: only the proxy speaks in it, so a client's is dropped on
/// both request paths (the bare prefix `X-Switchyard-` included).
pub fn internal(name: &[u8]) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

/// Request fields that are the proxy's own business and never forwarded.
pub fn hop_by_hop_request(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 10] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Response fields the proxy sets itself or that describe only the upstream connection.
pub fn hop_by_hop_response(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"trailer",
        b"x-request-id",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// How many `Connection` fields are remembered; a request with more goes where they are all seen.
const CONNECTION_FIELDS: usize = 2;

/// The field names a request's `Connection` fields nominate (`Connection: close, X-Hop`), which are
/// hop-by-hop too. `close` and `keep-alive` name no field worth a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nominated<'a> {
    values: [&'a [u8]; CONNECTION_FIELDS],
    count: usize,
}

impl<'a> Nominated<'a> {
    /// Adds one `Connection` field value; false when there are more than this can hold.
    pub fn add(&mut self, value: &'a [u8]) -> bool {
        let names_a_field = value.split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        });
        if !names_a_field {
            return true;
        }
        if self.count == CONNECTION_FIELDS {
            return false;
        }
        self.values[self.count] = value;
        self.count += 1;
        true
    }

    /// Whether `name` is one of the nominated fields.
    pub fn names(&self, name: &[u8]) -> bool {
        self.values[..self.count].iter().any(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_nominates_fields() {
        let mut n = Nominated::default();
        assert!(n.add(b"keep-alive"));
        assert!(!n.names(b"x-hop"));
        assert!(n.add(b"close, X-Hop"));
        assert!(n.names(b"x-hop") && n.names(b"X-HOP"));
        assert!(!n.names(b"x-other"));
        assert!(n.add(b"x-second"));
        assert!(
            !n.add(b"x-third"),
            "a third nominating field is more than is held"
        );
        assert!(n.add(b"close"), "close names no field");
    }
}
