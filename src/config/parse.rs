//! Parsers for the typed values of the configuration: durations, CIDRs, digests, percentages,
//! sticky keys, addresses. Each returns a message naming what was wrong; callers add the path.
//! Validation and table compilation use the same functions, so they can never disagree.

use super::PercentValue;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A duration as Kubernetes and Prometheus users write it: `100us`, `250ms`, `1.5s`, `1m30s`, `10m`, `24h`
/// (humantime's syntax: numbers with units, concatenated or spaced).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration {text:?}: {e} (expected e.g. 100us, 250ms, 1.5s, 1m30s, 10m, 24h)"
        )
    })
}

/// An `http://` or `https://` URL with a host, for webhooks.
pub fn http_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!(
            "invalid URL {text:?} (expected http://HOST[:PORT]/PATH or https://...)"
        )),
    }
}

/// A percentage in 0..=100: `10`, `0.5`, `"10%"`, `"0.5%"`. Returns the percent (not the fraction).
pub fn percent(value: &PercentValue) -> Result<f64, String> {
    let (n, shown) = match value {
        PercentValue::Number(n) => (*n, n.to_string()),
        PercentValue::Text(t) => {
            let body = t.trim().strip_suffix('%').unwrap_or(t.trim()).trim();
            let n = body
                .parse::<f64>()
                .map_err(|_| format!("invalid percentage {t:?} (expected a number from 0 to 100, e.g. 10 or \"0.5%\")"))?;
            (n, t.clone())
        }
    };
    if !n.is_finite() || !(0.0..=100.0).contains(&n) {
        return Err(format!(
            "invalid percentage {shown} (must be between 0 and 100)"
        ));
    }
    Ok(n)
}

/// A lowercase or uppercase hex SHA-256 digest (64 hex digits).
pub fn sha256_hex(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bad = || format!("invalid sha256 {text:?} (expected 64 hex digits)");
    if t.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in t.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// `ip:port` with a literal IP address (IPv6 in brackets).
pub fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        format!("invalid address {text:?} (expected IP:PORT, e.g. 10.0.0.1:8080 or [::1]:8080)")
    })
}

/// An IP network: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(net: &[u8], addr: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != addr[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (net[full] & mask) == (addr[full] & mask)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid CIDR {text:?} (expected e.g. 10.0.0.0/8 or 2001:db8::/32)");
        let t = text.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

/// Where the sticky identity of a request comes from (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StickyKey {
    /// `header:NAME`; the name is stored lowercase.
    Header(String),
    Cookie(String),
    Query(String),
    Client,
    Ip,
}

impl FromStr for StickyKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid sticky key {text:?} (expected header:NAME, cookie:NAME, query:NAME, client or ip)")
        };
        match text.trim() {
            "client" => return Ok(StickyKey::Client),
            "ip" => return Ok(StickyKey::Ip),
            _ => {}
        }
        let (kind, name) = text.trim().split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => {
                header_name(name).map_err(|_| bad())?;
                Ok(StickyKey::Header(name.to_ascii_lowercase()))
            }
            "cookie" => Ok(StickyKey::Cookie(name.to_string())),
            "query" => Ok(StickyKey::Query(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::Header(n) => write!(f, "header:{n}"),
            StickyKey::Cookie(n) => write!(f, "cookie:{n}"),
            StickyKey::Query(n) => write!(f, "query:{n}"),
            StickyKey::Client => f.write_str("client"),
            StickyKey::Ip => f.write_str("ip"),
        }
    }
}

/// A valid HTTP header name, returned lowercase.
pub fn header_name(text: &str) -> Result<String, String> {
    http::HeaderName::from_bytes(text.as_bytes())
        .map(|h| h.as_str().to_string())
        .map_err(|_| format!("invalid header name {text:?}"))
}

/// An HTTP method token, returned uppercase.
pub fn method(text: &str) -> Result<String, String> {
    let up = text.trim().to_ascii_uppercase();
    if up.is_empty() || !up.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("invalid HTTP method {text:?}"));
    }
    Ok(up)
}

/// The certificates of a PEM bundle (a private CA for `upstreams.*.tls.ca`), as DER, each checked to
/// be an X.509 certificate a TLS client can trust.
pub fn ca_bundle(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut out = Vec::new();
    for (i, cert) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let cert = cert.map_err(|e| format!("{path}: certificate {}: {e}", i + 1))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("{path}: certificate {} is not X.509: {e}", i + 1))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert.clone())
            .map_err(|e| format!("{path}: certificate {} cannot be trusted: {e}", i + 1))?;
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err(format!(
            "{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5", "s", "-1s", "5 parsecs", "1.5.5s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(percent(&PercentValue::Number(10.0)).unwrap(), 10.0);
        assert_eq!(percent(&PercentValue::Text("0.5%".into())).unwrap(), 0.5);
        assert!(percent(&PercentValue::Number(101.0)).is_err());
        assert!(percent(&PercentValue::Number(-1.0)).is_err());
        assert!(percent(&PercentValue::Text("ten".into())).is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        let c: Cidr = "192.168.1.0/25".parse().unwrap();
        assert!(c.contains("192.168.1.127".parse().unwrap()));
        assert!(!c.contains("192.168.1.128".parse().unwrap()));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains("2001:db8:1::1".parse().unwrap()));
        let c: Cidr = "127.0.0.1".parse().unwrap();
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sticky_keys() {
        assert_eq!(
            "header:X-User-Id".parse::<StickyKey>().unwrap(),
            StickyKey::Header("x-user-id".into())
        );
        assert_eq!(
            "cookie:uid".parse::<StickyKey>().unwrap(),
            StickyKey::Cookie("uid".into())
        );
        assert_eq!("client".parse::<StickyKey>().unwrap(), StickyKey::Client);
        for bad in ["user", "header:", "path:/x", "header:bad name"] {
            assert!(bad.parse::<StickyKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let d =
            sha256_hex("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").unwrap();
        assert_eq!(d[0], 0x9f);
        assert!(sha256_hex("9f86").is_err());
        assert!(sha256_hex(&"z".repeat(64)).is_err());
    }
}
