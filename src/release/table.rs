//! Compiling a validated [`Config`] into an immutable [`ReleaseTable`]: routes indexed for lookup,
//! header names parsed, client keys as digests, split ranges laid out. Done once per config change.

use super::matcher::{Cond, When};
use super::router::Router;
use super::split::Split;
use super::{ClientId, Colour, RouteId, UpstreamId};
use crate::config::parse;
use crate::config::{self, Config, ConfigError, ConfigErrors, RouteConfig};
use ahash::AHashMap;
use http::HeaderName;

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) when: When,
    pub(crate) to: UpstreamId,
}

#[derive(Debug, Clone)]
pub(crate) enum Strategy {
    Split(Split),
    BlueGreen {
        blue: UpstreamId,
        green: UpstreamId,
        live: Colour,
    },
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Box<str>,
    pub(crate) methods: Box<[Box<str>]>,
    pub require_client: bool,
    pub(crate) rules: Box<[Rule]>,
    pub(crate) strategy: Strategy,
    /// Shadow copies of this route's traffic, if mirrored.
    pub mirror: Option<super::Mirror>,
}

impl Route {
    /// Where traffic goes when the chosen pool is down: the split's baseline, or the live colour.
    pub fn baseline(&self) -> UpstreamId {
        match &self.strategy {
            Strategy::Split(s) => s.baseline(),
            Strategy::BlueGreen { blue, green, live } => match live {
                Colour::Blue => *blue,
                Colour::Green => *green,
            },
        }
    }

    /// Every upstream this route can send a request to: split targets (or blue, green), then rule
    /// targets, then the mirror target; each once.
    pub fn targets(&self) -> Vec<UpstreamId> {
        let mut out: Vec<UpstreamId> = match &self.strategy {
            Strategy::Split(s) => s.targets().collect(),
            Strategy::BlueGreen { blue, green, .. } => vec![*blue, *green],
        };
        for rule in self.rules.iter() {
            out.push(rule.to);
        }
        if let Some(m) = &self.mirror {
            out.push(m.to);
        }
        let mut seen = Vec::with_capacity(out.len());
        out.retain(|t| {
            let new = !seen.contains(t);
            seen.push(*t);
            new
        });
        out
    }

    /// Whether `f` holds for every upstream a random draw can pick for this route: its split's
    /// targets (or blue and green) and its mirror's target. Rules are not drawn: the same request
    /// always matches the same rule.
    pub fn all_drawn(&self, mut f: impl FnMut(UpstreamId) -> bool) -> bool {
        let drawn = match &self.strategy {
            Strategy::Split(s) => s.targets().all(&mut f),
            Strategy::BlueGreen { blue, green, .. } => f(*blue) && f(*green),
        };
        drawn && self.mirror.as_ref().is_none_or(|m| f(m.to))
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// Identified API clients: digest of key -> id.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    pub(crate) header: Option<HeaderName>,
    pub(crate) by_digest: AHashMap<[u8; 32], ClientId>,
    pub(crate) names: Vec<Box<str>>,
}

/// The compiled, immutable release table. Published whole; never mutated.
#[derive(Debug)]
pub struct ReleaseTable {
    pub(crate) routes: Vec<Route>,
    pub(crate) router: Router,
    pub(crate) upstreams: Vec<Box<str>>,
    pub(crate) clients: Clients,
    /// Some rule or sticky key reads the client's IP address.
    reads_client_ip: bool,
}

impl ReleaseTable {
    /// Compiles a validated configuration (validation is not repeated here). A problem only
    /// compiling finds is returned with its path.
    pub fn compile(config: &config::Valid) -> Result<ReleaseTable, ConfigErrors> {
        let config: &Config = config;
        let upstreams: Vec<Box<str>> = config.upstreams.keys().map(Into::into).collect();
        let upstream_ids: AHashMap<&str, UpstreamId> = upstreams
            .iter()
            .enumerate()
            .map(|(i, n)| (&**n, i as UpstreamId))
            .collect();
        let clients = compile_clients(config)?;
        let client_ids: AHashMap<&str, ClientId> = clients
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (&**n, i as ClientId))
            .collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut router = Router::default();
        for (i, rc) in config.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            routes.push(compile_route(&path, rc, &upstream_ids, &client_ids)?);
            let host = rc
                .matcher
                .host
                .as_deref()
                .map(config::normalize_host)
                .unwrap_or_default();
            let prefix = config::normalize_prefix(rc.matcher.path_prefix.as_deref().unwrap_or("/"));
            router.insert(&host, &prefix, i as RouteId);
        }
        let reads_client_ip = routes.iter().any(|r| {
            r.rules.iter().any(|rule| rule.when.reads_client_ip())
                || matches!(&r.strategy, Strategy::Split(s) if s.reads_client_ip())
                || r.mirror.as_ref().is_some_and(|m| m.reads_client_ip())
        });
        Ok(ReleaseTable {
            routes,
            router,
            upstreams,
            clients,
            reads_client_ip,
        })
    }

    /// Whether any decision of this table needs the client's IP address; when none does, the proxy
    /// need not look it up.
    pub fn reads_client_ip(&self) -> bool {
        self.reads_client_ip
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn route(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id as usize)
    }

    pub fn route_id(&self, name: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| &*r.name == name)
            .map(|i| i as RouteId)
    }

    /// Name of an upstream (a deployed version) by id.
    pub fn upstream_name(&self, id: UpstreamId) -> &str {
        self.upstreams.get(id as usize).map(|s| &**s).unwrap_or("")
    }

    pub fn client_id(&self, name: &str) -> Option<ClientId> {
        self.clients
            .names
            .iter()
            .position(|n| &**n == name)
            .map(|i| i as ClientId)
    }

    /// The sticky keys of a route's split, as written (`header:x-user-id`...).
    pub fn sticky_keys(&self, route: RouteId) -> Vec<String> {
        match self.route(route).map(|r| &r.strategy) {
            Some(Strategy::Split(s)) => s.sticky_names(),
            _ => Vec::new(),
        }
    }

    pub fn client_name(&self, id: ClientId) -> &str {
        self.clients
            .names
            .get(id as usize)
            .map(|s| &**s)
            .unwrap_or("")
    }

    /// The first route (most specific first) matching host, path and method.
    pub(crate) fn find_route(&self, host: &str, path: &str, method: &str) -> Option<RouteId> {
        self.router.candidates(host, path).find(|id| {
            self.routes
                .get(*id as usize)
                .is_some_and(|r| r.allows_method(method))
        })
    }
}

fn compile_clients(config: &Config) -> Result<Clients, ConfigErrors> {
    let Some(cc) = &config.clients else {
        return Ok(Clients::default());
    };
    let header = parse::header_name(&cc.api_key_header)
        .and_then(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string()))
        .map_err(|m| ConfigError::new("clients.api_key_header", m))?;
    let mut clients = Clients {
        header: Some(header),
        ..Clients::default()
    };
    for (i, (id, digest)) in cc.keys.iter().enumerate() {
        let d = digest
            .read()
            .map_err(|m| ConfigError::new(format!("clients.keys.{id}"), m))?;
        clients.by_digest.insert(d, i as ClientId);
        clients.names.push(id.into());
    }
    Ok(clients)
}

fn compile_route(
    path: &str,
    rc: &RouteConfig,
    upstreams: &AHashMap<&str, UpstreamId>,
    clients: &AHashMap<&str, ClientId>,
) -> Result<Route, ConfigErrors> {
    let up = |at: String, name: &str| {
        upstreams
            .get(name)
            .copied()
            .ok_or_else(|| ConfigError::new(at, format!("no such upstream {name:?}")))
    };
    let mut rules = Vec::with_capacity(rc.rules.len());
    for (i, r) in rc.rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{i}]");
        rules.push(Rule {
            when: compile_when(&format!("{rpath}.when"), &r.when, clients)?,
            to: up(format!("{rpath}.to"), &r.to)?,
        });
    }
    let strategy = if let Some(split) = &rc.split {
        // Bucket order: the baseline first, then the others by name (never the order written).
        let mut targets = Vec::with_capacity(split.targets.len());
        for (name, w) in split.ordered_targets() {
            targets.push((up(format!("{path}.split.targets.{name}"), name)?, w));
        }
        let sticky = split
            .sticky
            .iter()
            .enumerate()
            .map(|(i, k)| {
                k.read()
                    .map_err(|m| ConfigError::new(format!("{path}.split.sticky[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let salt = split.salt.clone().unwrap_or_else(|| rc.name.clone());
        Strategy::Split(Split::new(&targets, sticky, salt))
    } else if let Some(bg) = &rc.blue_green {
        let live = match bg.live.as_str() {
            "blue" => Colour::Blue,
            "green" => Colour::Green,
            other => {
                return Err(ConfigError::new(
                    format!("{path}.blue_green.live"),
                    format!("must be blue or green, got {other:?}"),
                )
                .into())
            }
        };
        Strategy::BlueGreen {
            blue: up(format!("{path}.blue_green.blue"), &bg.blue)?,
            green: up(format!("{path}.blue_green.green"), &bg.green)?,
            live,
        }
    } else {
        return Err(ConfigError::new(path, "needs a split or a blue_green").into());
    };
    let methods = rc
        .matcher
        .methods
        .iter()
        .map(|m| m.to_ascii_uppercase().into())
        .collect();
    let mirror = match &rc.mirror {
        Some(m) => Some(super::Mirror::compile(
            &format!("{path}.mirror"),
            &rc.name,
            m,
            up(format!("{path}.mirror.to"), &m.to)?,
        )?),
        None => None,
    };
    Ok(Route {
        name: rc.name.as_str().into(),
        methods,
        require_client: rc.require_client,
        rules: rules.into(),
        strategy,
        mirror,
    })
}

fn compile_when(
    path: &str,
    w: &config::WhenConfig,
    clients: &AHashMap<&str, ClientId>,
) -> Result<When, ConfigErrors> {
    let header = |at: String, name: &str| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::new(at, format!("invalid header name {name:?}")))
    };
    let mut conds = Vec::new();
    for (name, value) in w.header.iter() {
        conds.push(Cond::Header(
            header(format!("{path}.header.{name}"), name)?,
            value.as_bytes().into(),
        ));
    }
    if let Some(name) = &w.header_present {
        conds.push(Cond::HeaderPresent(header(
            format!("{path}.header_present"),
            name,
        )?));
    }
    for (name, value) in w.cookie.iter() {
        conds.push(Cond::Cookie(name.into(), value.as_str().into()));
    }
    for (name, value) in w.query.iter() {
        conds.push(Cond::Query(name.into(), value.as_str().into()));
    }
    if let Some(ids) = &w.client_in {
        let mut set = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let c = clients.get(id.as_str()).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.client_in[{i}]"),
                    format!("no such client {id:?}"),
                )
            })?;
            set.push(*c);
        }
        conds.push(Cond::ClientIn(set.into()));
    }
    if let Some(methods) = &w.method {
        conds.push(Cond::Method(
            methods
                .iter()
                .map(|m| m.to_ascii_uppercase().into())
                .collect(),
        ));
    }
    if let Some(cidrs) = &w.source_ip {
        let parsed = cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.read()
                    .map_err(|m| ConfigError::new(format!("{path}.source_ip[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        conds.push(Cond::SourceIp(parsed.into()));
    }
    Ok(When(conds.into()))
}
