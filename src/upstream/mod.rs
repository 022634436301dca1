//! Upstream pools (one per deployed version) on pingora-load-balancing: weighted backends, optional HTTP
//! health checks, per-pool timeouts. Pools whose definition did not change are carried over from the
//! previous snapshot on every config change, so health history is never reset by an unrelated edit.

mod health;
mod observed;
mod passive;

pub use health::HealthChecker;
pub use observed::BackendHealth;
use observed::{Observed, ObservedCheck};
use passive::Passive;
pub use passive::PASSED_OVER;

use crate::config::{
    parse, Config, ConfigError, ConfigErrors, HealthCheckConfig, UpstreamConfig, UpstreamProtocol,
    UpstreamTls,
};
use pingora::http::RequestHeader;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Upstream connect timeout when a pool sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream read (and write) timeout when a pool sets none: the longest wait for the next bytes.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-pool timeouts applied to every connection to its backends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

/// When a pool's health check is due.
struct HealthSchedule {
    interval: Duration,
    /// Milliseconds since `epoch` at which the next check is due.
    next_due_ms: AtomicU64,
    running: AtomicBool,
}

/// One upstream pool.
pub struct Pool {
    pub name: String,
    definition: UpstreamConfig,
    lb: LoadBalancer<RoundRobin>,
    backend_count: usize,
    /// The only backend of a one-backend pool without a health check: nothing can make it
    /// unavailable, so selecting it needs no load-balancer round.
    sole: Option<Backend>,
    timeouts: Timeouts,
    protocol: UpstreamProtocol,
    tls: Option<PeerTls>,
    health: Option<HealthSchedule>,
    /// Every backend's health as last observed (for status and metrics).
    observed: Arc<Observed>,
    /// Backends passed over for a while after a connection to them could not be made.
    passive: Passive,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backend_count)
            .finish()
    }
}

impl Pool {
    fn build(name: &str, def: &UpstreamConfig) -> Result<Pool, ConfigErrors> {
        let path = format!("upstreams.{name}");
        let mut set = BTreeSet::new();
        for (i, b) in def.backends.iter().enumerate() {
            let weight = usize::try_from(b.weight()).unwrap_or(1).max(1);
            let backend = Backend::new_with_weight(b.addr(), weight)
                .map_err(|e| ConfigError::new(format!("{path}.backends[{i}]"), e.to_string()))?;
            set.insert(backend);
        }
        let backend_count = set.len();
        let mut lb =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(Static::new(set.clone())));
        // Static discovery completes without awaiting anything: one poll publishes the backends.
        let polled = {
            let mut update = std::pin::pin!(lb.update());
            update
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        };
        match polled {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(ConfigError::new(path, e.to_string()).into()),
            Poll::Pending => {
                return Err(ConfigError::new(path, "backend discovery did not complete").into())
            }
        }
        // Read when the config was (and validated with it).
        let dur = |v: &Option<crate::config::Dur>| v.as_ref().map(crate::config::Dur::get);
        let t = &def.timeouts;
        // Safe defaults, as nginx's proxy_connect_timeout and proxy_read_timeout: a backend that
        // accepts and never answers does not hold a request for ever.
        let timeouts = Timeouts {
            connect: dur(&t.connect).or(Some(DEFAULT_CONNECT_TIMEOUT)),
            read: dur(&t.read).or(Some(DEFAULT_READ_TIMEOUT)),
            write: dur(&t.write).or(Some(DEFAULT_READ_TIMEOUT)),
            idle: dur(&t.idle),
        };
        let tls = def
            .tls
            .as_ref()
            .map(|t| PeerTls::new(t).map_err(|m| ConfigError::new(format!("{path}.tls.ca"), m)))
            .transpose()?;
        let observed = Arc::new(Observed::new(
            name,
            set.iter().map(|b| b.addr.to_string()),
            def.health_check.is_some(),
        ));
        let health = match &def.health_check {
            Some(hc) => {
                lb.set_health_check(Box::new(ObservedCheck {
                    inner: http_check(&path, hc, def, tls.as_ref())?,
                    observed: observed.clone(),
                }));
                let interval = hc.interval.get();
                Some(HealthSchedule {
                    interval,
                    next_due_ms: AtomicU64::new(0),
                    running: AtomicBool::new(false),
                })
            }
            None => None,
        };
        let sole = match (backend_count, &health) {
            (1, None) => set.into_iter().next(),
            _ => None,
        };
        Ok(Pool {
            name: name.to_string(),
            definition: def.clone(),
            lb,
            backend_count,
            sole,
            timeouts,
            protocol: def.protocol,
            tls,
            health,
            observed,
            passive: Passive::default(),
        })
    }

    /// Every backend of this pool with its health, in address order.
    pub fn backend_health(&self) -> Vec<BackendHealth> {
        self.observed.backends()
    }

    /// A healthy backend, skipping those in `exclude` (already failed for this request) and those
    /// passed over since a connection to them could not be made.
    pub fn select(&self, exclude: &[SocketAddr]) -> Option<Backend> {
        match self.passive.excluding(exclude) {
            None => self.select_among(exclude),
            Some(all) => self.select_among(&all),
        }
    }

    /// A connection to `addr` could not be made: it is passed over for [`PASSED_OVER`].
    pub fn connect_failed(&self, addr: SocketAddr) {
        self.passive.failed(addr);
    }

    fn select_among(&self, exclude: &[SocketAddr]) -> Option<Backend> {
        if let Some(b) = &self.sole {
            let excluded = b.addr.as_inet().is_some_and(|a| exclude.contains(a));
            return (!excluded).then(|| b.clone());
        }
        let n = self.backend_count * 2 + 1;
        if exclude.is_empty() {
            return self.lb.select(b"", n);
        }
        self.lb.select_with(b"", n, |b, healthy| {
            healthy && b.addr.as_inet().is_none_or(|a| !exclude.contains(a))
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    pub fn backend_count(&self) -> usize {
        self.backend_count
    }

    /// The peer for a selected backend, with this pool's timeouts, protocol and TLS.
    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let mut peer = peer_for(backend.addr.clone(), self.protocol, self.tls.as_ref());
        let t = self.timeouts;
        peer.options.connection_timeout = t.connect;
        peer.options.read_timeout = t.read;
        peer.options.write_timeout = t.write;
        peer.options.idle_timeout = t.idle;
        Box::new(peer)
    }

    /// Whether this pool speaks HTTP/2 (`h2` or `h2c`).
    pub fn http2(&self) -> bool {
        self.protocol != UpstreamProtocol::Http1
    }

    /// Whether this pool speaks HTTP/1.1 without TLS, as Switchyard's HTTP/1 engine does itself
    /// (other pools are reached through Pingora's pipeline).
    pub fn plain_http1(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1 && self.tls.is_none()
    }

    /// Milliseconds until this pool's next health check is due (0: due now, or running); `None`
    /// when the pool has no health check.
    fn health_check_due_in(&self, now_ms: u64) -> Option<u64> {
        self.health
            .as_ref()
            .map(|h| h.next_due_ms.load(Ordering::Relaxed).saturating_sub(now_ms))
    }

    /// Claims this pool's health check, due by `health_check_due_in`, unless it is already running.
    fn claim_health_check(&self) -> bool {
        self.health
            .as_ref()
            .is_some_and(|h| !h.running.swap(true, Ordering::AcqRel))
    }

    /// Runs a claimed health check and schedules the next one.
    async fn run_health_check(&self) {
        let Some(h) = &self.health else { return };
        self.lb.backends().run_health_check(true).await;
        h.next_due_ms.store(
            monotonic_ms() + h.interval.as_millis() as u64,
            Ordering::Relaxed,
        );
        h.running.store(false, Ordering::Release);
    }
}

/// How many requests share one HTTP/2 connection to a backend.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// TLS to a pool's backends, ready for its peers (the CA bundle read once, when the pool is built).
#[derive(Debug, Clone)]
struct PeerTls {
    sni: String,
    verify: bool,
    ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Digest of the CA bundle (0 without one). Pingora's connection reuse key leaves the CA out, so
    /// it goes into the peer's group key: a connection verified against one CA is never reused for a
    /// pool that trusts another (or the system's roots).
    ca_digest: u64,
}

impl PeerTls {
    fn new(t: &UpstreamTls) -> Result<PeerTls, String> {
        let mut ca_digest = 0;
        let ca = match (&t.ca, t.verify) {
            (Some(path), true) => {
                let bundle = parse::ca_bundle(path)?;
                ca_digest = xxhash_rust::xxh3::xxh3_64(&bundle.concat()).max(1);
                let certs: Vec<_> = bundle
                    .into_iter()
                    .map(|der| {
                        pingora::utils::tls::WrappedX509::new(der, pingora::utils::tls::parse_x509)
                    })
                    .collect();
                Some(Arc::from(certs))
            }
            _ => None,
        };
        Ok(PeerTls {
            sni: t.sni.clone(),
            verify: t.verify,
            ca,
            ca_digest,
        })
    }
}

/// A peer at `addr` speaking `protocol`, over TLS when `tls` is given.
fn peer_for(
    addr: pingora::protocols::l4::socket::SocketAddr,
    protocol: UpstreamProtocol,
    tls: Option<&PeerTls>,
) -> HttpPeer {
    let sni = tls.map(|t| t.sni.clone()).unwrap_or_default();
    let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
    if let Some(t) = tls {
        peer.options.verify_cert = t.verify;
        peer.options.verify_hostname = t.verify;
        peer.options.ca = t.ca.clone();
        peer.group_key = t.ca_digest;
    }
    match protocol {
        UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
    }
    peer
}

fn http_check(
    path: &str,
    hc: &HealthCheckConfig,
    def: &UpstreamConfig,
    tls: Option<&PeerTls>,
) -> Result<Box<HttpHealthCheck>, ConfigErrors> {
    let timeout = hc.timeout.get();
    let host = def
        .tls
        .as_ref()
        .map_or("localhost", |t| t.sni.as_str())
        .to_string();
    let mut check = HttpHealthCheck::new(&host, def.tls.is_some());
    // Checked over the pool's own protocol (and TLS).
    let template = peer_for(check.peer_template._address.clone(), def.protocol, tls);
    check.peer_template = template;
    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
        .map_err(|e| ConfigError::new(format!("{path}.health_check.path"), e.to_string()))?;
    req.insert_header("Host", host.as_str())
        .and_then(|_| req.insert_header("User-Agent", "switchyard-health-check"))
        .map_err(|e| ConfigError::new(format!("{path}.health_check"), e.to_string()))?;
    check.req = req;
    check.consecutive_failure = hc.unhealthy_after;
    check.consecutive_success = hc.healthy_after;
    check.peer_template.options.connection_timeout = Some(timeout);
    check.peer_template.options.read_timeout = Some(timeout);
    check.validator = Some(Box::new(|resp| {
        if resp.status.is_success() {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::CustomCode("non-2xx health check", resp.status.as_u16()),
                "during health check",
            )
        }
    }));
    Ok(Box::new(check))
}

/// All pools of a config, in the order of `config.upstreams` (the table's upstream ids).
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Arc<Pool>>,
    /// Every pool speaks plain HTTP/1.1: the engine asks this per request, so it is settled once.
    all_plain_http1: bool,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            pools: Vec::new(),
            all_plain_http1: true,
        }
    }
}

impl Pools {
    /// Builds the pools of `config`, reusing every pool of `previous` whose definition is unchanged.
    pub fn build(config: &Config, previous: Option<&Pools>) -> Result<Pools, ConfigErrors> {
        let mut pools = Vec::with_capacity(config.upstreams.len());
        let mut errors = Vec::new();
        for (name, def) in config.upstreams.iter() {
            let reused = previous.and_then(|p| {
                p.pools
                    .iter()
                    .find(|old| old.name == name && old.definition == *def)
            });
            match reused {
                Some(p) => pools.push(p.clone()),
                None => match Pool::build(name, def) {
                    Ok(p) => pools.push(Arc::new(p)),
                    Err(e) => errors.extend(e.0),
                },
            }
        }
        if errors.is_empty() {
            let all_plain_http1 = pools.iter().all(|p| p.plain_http1());
            Ok(Pools {
                pools,
                all_plain_http1,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Whether every pool speaks plain HTTP/1.1 (see [`Pool::plain_http1`]).
    pub fn all_plain_http1(&self) -> bool {
        self.all_plain_http1
    }

    pub fn get(&self, id: u32) -> Option<&Arc<Pool>> {
        self.pools.get(id as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter()
    }
}

/// Milliseconds on a process-local monotonic clock.
fn monotonic_ms() -> u64 {
    static EPOCH: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests;
