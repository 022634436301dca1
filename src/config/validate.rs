//! Semantic validation of a parsed [`Config`]: every problem is collected, each with its path in the
//! file and the offending value, so an operator fixes a file in one pass.

use super::parse;
use super::{
    Config, ConfigError, MirrorConfig, RolloutConfig, RouteConfig, Step, UpstreamConfig,
    UpstreamProtocol, WhenConfig,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// Records the error of a parse result, if any.
    fn check<T>(&mut self, path: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.push(path, m);
                None
            }
        }
    }
}

/// Checks a parsed configuration; returns every problem found (empty when valid).
pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut e = Errors(Vec::new());
    server(config, &mut e);
    admin(config, &mut e);
    store(config, &mut e);
    clients(config, &mut e);
    for (name, up) in config.upstreams.iter() {
        upstream(&format!("upstreams.{name}"), up, &mut e);
    }
    if config.routes.is_empty() {
        e.push(
            "routes",
            "no routes: nothing would be served (add at least one route with a split or blue_green)",
        );
    }
    let mut names = HashSet::new();
    let mut matches: HashMap<(String, String), usize> = HashMap::new();
    for (i, route_cfg) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(route_cfg.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("duplicate route name {:?}", route_cfg.name),
            );
        }
        let key = (
            route_cfg
                .matcher
                .host
                .as_deref()
                .map(normalize_host)
                .unwrap_or_default(),
            normalize_prefix(route_cfg.matcher.path_prefix.as_deref().unwrap_or("/")),
        );
        if let Some(first) = matches.insert(key.clone(), i) {
            let host = if key.0.is_empty() {
                "any host".to_string()
            } else {
                format!("host {:?}", key.0)
            };
            e.push(
                format!("{path}.match"),
                format!("same {host} and path_prefix {:?} as routes[{first}]", key.1),
            );
        }
        route(&path, route_cfg, config, &mut e);
    }
    e.0
}

fn server(config: &Config, e: &mut Errors) {
    let s = &config.server;
    if s.listen.is_empty() && s.tls.is_empty() {
        e.push(
            "server.listen",
            "no listener: give at least one address in listen or tls",
        );
    }
    for (i, addr) in s.listen.iter().enumerate() {
        e.check(format!("server.listen[{i}]"), parse::socket_addr(addr));
    }
    for (i, tls) in s.tls.iter().enumerate() {
        e.check(
            format!("server.tls[{i}].listen"),
            parse::socket_addr(&tls.listen),
        );
        for (key, file) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !Path::new(file).is_file() {
                e.push(
                    format!("server.tls[{i}].{key}"),
                    format!("no such file {file:?}"),
                );
            }
        }
    }
    if s.threads == 0 {
        e.push("server.threads", "must be at least 1, got 0");
    }
    e.check("server.grace_period", s.grace_period.read());
    e.check("server.shutdown_timeout", s.shutdown_timeout.read());
    for (key, value) in [
        ("pid_file", &s.pid_file),
        ("upgrade_sock", &s.upgrade_sock),
        ("state_dir", &s.state_dir),
    ] {
        if value.trim().is_empty() {
            e.push(format!("server.{key}"), "must not be empty");
        }
    }
    if let Err(errors) = crate::config::Limits::from_config(&s.limits) {
        e.0.extend(errors);
    }
    if s.access_log.trim().is_empty() {
        e.push("server.access_log", "must be stdout, off or a file path");
    }
    for (i, f) in s.access_log_fields.iter().enumerate() {
        if !super::ACCESS_LOG_FIELDS.contains(&f.as_str()) {
            e.push(
                format!("server.access_log_fields[{i}]"),
                format!(
                    "unknown field {f:?}; the fields are: {}",
                    super::ACCESS_LOG_FIELDS.join(", ")
                ),
            );
        }
    }
}

fn admin(config: &Config, e: &mut Errors) {
    if let Some(m) = &config.metrics {
        if let Some(addr) = e.check("metrics.listen", parse::socket_addr(&m.listen)) {
            let admin = config
                .admin
                .as_ref()
                .and_then(|a| parse::socket_addr(&a.listen).ok());
            if admin == Some(addr) {
                e.push(
                    "metrics.listen",
                    "is admin.listen, which serves /metrics already: remove metrics, or give it an address of its own",
                );
            }
        }
    }
    let Some(admin) = &config.admin else { return };
    e.check("admin.listen", parse::socket_addr(&admin.listen));
    for (name, digest) in admin.tokens.iter() {
        if name.trim().is_empty() {
            e.push(
                "admin.tokens",
                "a token name (the actor in the audit log) must not be empty",
            );
        }
        e.check(format!("admin.tokens.{name}"), digest.read());
    }
}

fn store(config: &Config, e: &mut Errors) {
    let Some(store) = &config.store else { return };
    let etcd = &store.etcd;
    if etcd.endpoints.is_empty() {
        e.push(
            "store.etcd.endpoints",
            "no endpoints: name at least one etcd client URL, e.g. http://127.0.0.1:2379",
        );
    }
    for (i, url) in etcd.endpoints.iter().enumerate() {
        etcd_endpoint(&format!("store.etcd.endpoints[{i}]"), url, etcd, e);
    }
    let prefix = &etcd.prefix;
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        e.push(
            "store.etcd.prefix",
            format!("{prefix:?}: expected a key prefix like /switchyard/prod (starts with /, does not end with /)"),
        );
    } else if prefix.contains("//") || prefix.chars().any(|c| c.is_control() || c == ' ') {
        e.push(
            "store.etcd.prefix",
            format!("{prefix:?}: no empty segments, spaces or control characters"),
        );
    }
    if let Some(ttl) = e.check("store.etcd.lease_ttl", etcd.lease_ttl.read()) {
        if ttl < std::time::Duration::from_secs(2) || ttl > std::time::Duration::from_secs(3600) {
            e.push(
                "store.etcd.lease_ttl",
                format!(
                    "{:?}: must be between 2s and 1h (etcd's leases count whole seconds)",
                    etcd.lease_ttl
                ),
            );
        }
    }
    if let Some(t) = e.check("store.etcd.timeout", etcd.timeout.read()) {
        if t.is_zero() {
            e.push("store.etcd.timeout", "must be more than 0");
        }
    }
    if let Some(addr) = &etcd.advertise_admin {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            e.push(
                "store.etcd.advertise_admin",
                format!("{addr:?}: expected HOST:PORT"),
            );
        }
    }
    if let Some(tls) = &etcd.tls {
        for (name, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(file) = file {
                if let Err(err) = std::fs::read(file) {
                    e.push(
                        format!("store.etcd.tls.{name}"),
                        format!("cannot read {file}: {err}"),
                    );
                }
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            e.push(
                "store.etcd.tls",
                "a client certificate needs both cert and key",
            );
        }
    }
    if let Some(auth) = &etcd.auth {
        if auth.user.trim().is_empty() {
            e.push("store.etcd.auth.user", "must not be empty");
        }
        if let Err(err) = std::fs::read_to_string(&auth.password_file) {
            e.push(
                "store.etcd.auth.password_file",
                format!("cannot read {}: {err}", auth.password_file),
            );
        }
    }
}

/// An etcd client URL: `http://HOST:PORT`, or `https://` with `store.etcd.tls`.
fn etcd_endpoint(path: &str, url: &str, etcd: &crate::config::EtcdConfig, e: &mut Errors) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => e.push(
            path,
            format!(
                "{url:?} is not an etcd client URL: expected http://HOST:PORT or https://HOST:PORT"
            ),
        ),
        Some(hostport) => {
            let hostport = hostport.trim_end_matches('/');
            let port_ok = hostport.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok || hostport.contains('/') {
                e.push(
                    path,
                    format!("{url:?}: expected http://HOST:PORT or https://HOST:PORT"),
                );
            } else if url.starts_with("https://") && etcd.tls.is_none() {
                e.push(
                    path,
                    format!("{url:?} is https: add store.etcd.tls (at least its ca)"),
                );
            }
        }
    }
}

fn clients(config: &Config, e: &mut Errors) {
    let Some(clients) = &config.clients else {
        return;
    };
    e.check(
        "clients.api_key_header",
        parse::header_name(&clients.api_key_header),
    );
    let mut seen: HashMap<[u8; 32], &str> = HashMap::new();
    for (id, digest) in clients.keys.iter() {
        if !valid_ident(id) {
            e.push(
                format!("clients.keys.{id}"),
                format!("invalid client id {id:?} (use letters, digits, '.', '_', '-')"),
            );
        }
        if let Some(d) = e.check(format!("clients.keys.{id}"), digest.read()) {
            if let Some(other) = seen.insert(d, id) {
                e.push(
                    format!("clients.keys.{id}"),
                    format!("same key digest as client {other:?}"),
                );
            }
        }
    }
}

fn upstream(path: &str, up: &UpstreamConfig, e: &mut Errors) {
    if up.backends.is_empty() {
        e.push(format!("{path}.backends"), "no backends");
    }
    match (up.protocol, &up.tls) {
        (UpstreamProtocol::H2, None) => e.push(
            format!("{path}.protocol"),
            "h2 is HTTP/2 over TLS: add tls: {sni: NAME}, or use h2c for HTTP/2 without TLS",
        ),
        (UpstreamProtocol::H2c, Some(_)) => e.push(
            format!("{path}.tls"),
            "h2c is HTTP/2 without TLS: remove tls, or use protocol h2",
        ),
        _ => {}
    }
    if let Some(tls) = &up.tls {
        if tls.verify && tls.sni.is_empty() {
            e.push(
                format!("{path}.tls.sni"),
                "a verified TLS upstream needs the name its certificate is for (or verify: false)",
            );
        }
        if let Some(ca) = &tls.ca {
            if !tls.verify {
                e.push(
                    format!("{path}.tls.ca"),
                    "ca is what certificates are verified against, and verify is false: remove ca or verify",
                );
            } else {
                e.check(format!("{path}.tls.ca"), parse::ca_bundle(ca));
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, b) in up.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        if let Some(addr) = e.check(&bpath, parse::socket_addr(b.addr())) {
            if !seen.insert(addr) {
                e.push(&bpath, format!("duplicate backend {addr}"));
            }
        }
        if b.weight() < 1 {
            e.push(
                format!("{bpath}.weight"),
                format!("must be at least 1, got {}", b.weight()),
            );
        } else if b.weight() > 1000 {
            e.push(
                format!("{bpath}.weight"),
                format!("must be at most 1000, got {}", b.weight()),
            );
        }
    }
    if let Some(hc) = &up.health_check {
        if !hc.path.starts_with('/') {
            e.push(
                format!("{path}.health_check.path"),
                format!("must start with '/', got {:?}", hc.path),
            );
        }
        if let Some(d) = e.check(format!("{path}.health_check.interval"), hc.interval.read()) {
            if d.is_zero() {
                e.push(
                    format!("{path}.health_check.interval"),
                    "must be greater than 0",
                );
            }
        }
        e.check(format!("{path}.health_check.timeout"), hc.timeout.read());
        for (key, n) in [
            ("unhealthy_after", hc.unhealthy_after),
            ("healthy_after", hc.healthy_after),
        ] {
            if n == 0 {
                e.push(
                    format!("{path}.health_check.{key}"),
                    "must be at least 1, got 0",
                );
            }
        }
    }
    let t = &up.timeouts;
    for (key, value) in [
        ("connect", &t.connect),
        ("read", &t.read),
        ("write", &t.write),
        ("idle", &t.idle),
    ] {
        if let Some(v) = value {
            e.check(format!("{path}.timeouts.{key}"), v.read());
        }
    }
}

fn route(path: &str, r: &RouteConfig, config: &Config, e: &mut Errors) {
    if r.name.is_empty() {
        e.push(format!("{path}.name"), "missing: every route needs a name");
    } else if !valid_ident(&r.name) {
        e.push(
            format!("{path}.name"),
            format!(
                "invalid route name {:?} (use letters, digits, '.', '_', '-')",
                r.name
            ),
        );
    }
    if let Some(host) = &r.matcher.host {
        if let Err(m) = host_pattern(host) {
            e.push(format!("{path}.match.host"), m);
        }
    }
    if let Some(prefix) = &r.matcher.path_prefix {
        if !prefix.starts_with('/') {
            e.push(
                format!("{path}.match.path_prefix"),
                format!("must start with '/', got {prefix:?}"),
            );
        }
    }
    for (i, m) in r.matcher.methods.iter().enumerate() {
        e.check(format!("{path}.match.methods[{i}]"), parse::method(m));
    }
    let upstream_ref = |e: &mut Errors, at: String, name: &str| upstream_ref(config, e, at, name);
    if r.require_client && config.clients.as_ref().is_none_or(|c| c.keys.is_empty()) {
        e.push(
            format!("{path}.require_client"),
            "is true but no clients.keys are configured",
        );
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{i}]");
        when(&format!("{rpath}.when"), &rule.when, config, e);
        upstream_ref(e, format!("{rpath}.to"), &rule.to);
    }
    match (&r.split, &r.blue_green) {
        (Some(_), Some(_)) => e.push(path, "has both split and blue_green; use one"),
        (None, None) => e.push(path, "needs a split or a blue_green"),
        _ => {}
    }
    if let Some(sp) = &r.split {
        split(&format!("{path}.split"), sp, config, e);
    }
    if let Some(bg) = &r.blue_green {
        upstream_ref(e, format!("{path}.blue_green.blue"), &bg.blue);
        upstream_ref(e, format!("{path}.blue_green.green"), &bg.green);
        if bg.live != "blue" && bg.live != "green" {
            e.push(
                format!("{path}.blue_green.live"),
                format!("must be blue or green, got {:?}", bg.live),
            );
        }
    }
    if let Some(m) = &r.mirror {
        mirror(&format!("{path}.mirror"), m, e);
        upstream_ref(e, format!("{path}.mirror.to"), &m.to);
    }
    if let Some(ro) = &r.rollout {
        rollout(&format!("{path}.rollout"), ro, r, config, e);
        upstream_ref(e, format!("{path}.rollout.canary"), &ro.canary);
    }
}

/// An upstream a route names: it must exist (the nearest name is suggested).
fn upstream_ref(config: &Config, e: &mut Errors, at: String, name: &str) {
    if !config.upstreams.contains_key(name) {
        let known: Vec<&str> = config.upstreams.keys().collect();
        e.push(
            at,
            format!(
                "no such upstream {name:?}{}",
                super::suggestion(name, &known, "upstreams")
            ),
        );
    }
}

/// A route's split: known targets with finite weights that do not sum to 0, a baseline among them
/// (needed with two or more), and valid sticky keys.
fn split(path: &str, split: &crate::config::SplitConfig, config: &Config, e: &mut Errors) {
    if split.targets.is_empty() {
        e.push(format!("{path}.targets"), "no targets");
    }
    let mut sum = 0.0;
    for (name, w) in split.targets.iter() {
        let tpath = format!("{path}.targets.{name}");
        upstream_ref(config, e, tpath.clone(), name);
        if !w.is_finite() || *w < 0.0 {
            e.push(tpath, format!("weight must be a number >= 0, got {w}"));
        } else {
            sum += w;
        }
    }
    if !split.targets.is_empty() && sum <= 0.0 {
        e.push(format!("{path}.targets"), "weights sum to 0");
    }
    if !sum.is_finite() {
        e.push(
            format!("{path}.targets"),
            "weights sum to more than a number can hold; write them as shares, e.g. 90 and 10",
        );
    }
    match &split.baseline {
        None if split.targets.len() >= 2 => {
            let names: Vec<&str> = split.targets.keys().collect();
            e.push(
                format!("{path}.baseline"),
                format!(
                    "missing: a split with two or more targets needs `baseline: NAME`, the target that rollback and fallback send traffic to (one of {})",
                    names.join(", ")
                ),
            );
        }
        Some(b) if !split.targets.contains_key(b) => {
            let names: Vec<&str> = split.targets.keys().collect();
            e.push(
                format!("{path}.baseline"),
                format!(
                    "{b:?} is not one of the split's targets ({})",
                    names.join(", ")
                ),
            );
        }
        _ => {}
    }
    sticky_keys(&format!("{path}.sticky"), &split.sticky, e);
}

fn when(path: &str, w: &WhenConfig, config: &Config, e: &mut Errors) {
    if *w == WhenConfig::default() {
        e.push(path, "no conditions (use header, header_present, cookie, query, client_in, method or source_ip)");
    }
    for (name, _) in w.header.iter() {
        e.check(format!("{path}.header.{name}"), parse::header_name(name));
    }
    if let Some(h) = &w.header_present {
        e.check(format!("{path}.header_present"), parse::header_name(h));
    }
    if let Some(ids) = &w.client_in {
        if ids.is_empty() {
            e.push(format!("{path}.client_in"), "empty list");
        }
        let known = config.clients.as_ref();
        for (i, id) in ids.iter().enumerate() {
            if !known.is_some_and(|c| c.keys.contains_key(id)) {
                e.push(
                    format!("{path}.client_in[{i}]"),
                    format!("no such client {id:?} in clients.keys"),
                );
            }
        }
    }
    if let Some(methods) = &w.method {
        if methods.is_empty() {
            e.push(format!("{path}.method"), "empty list");
        }
        for (i, m) in methods.iter().enumerate() {
            e.check(format!("{path}.method[{i}]"), parse::method(m));
        }
    }
    if let Some(cidrs) = &w.source_ip {
        if cidrs.is_empty() {
            e.push(format!("{path}.source_ip"), "empty list");
        }
        for (i, c) in cidrs.iter().enumerate() {
            e.check(format!("{path}.source_ip[{i}]"), c.read());
        }
    }
}

fn sticky_keys(path: &str, keys: &[super::Sticky], e: &mut Errors) {
    for (i, k) in keys.iter().enumerate() {
        e.check(format!("{path}[{i}]"), k.read());
    }
}

fn mirror(path: &str, m: &MirrorConfig, e: &mut Errors) {
    e.check(format!("{path}.percent"), m.percent.read());
    sticky_keys(&format!("{path}.sticky"), &m.sticky, e);
    if let Some(methods) = &m.methods {
        for (i, x) in methods.iter().enumerate() {
            e.check(format!("{path}.methods[{i}]"), parse::method(x));
        }
    }
    e.check(format!("{path}.timeout"), m.timeout.read());
    if m.max_in_flight == 0 {
        e.push(format!("{path}.max_in_flight"), "must be at least 1, got 0");
    }
    if let Some(c) = &m.compare {
        for (at, problem) in c.problems() {
            e.push(format!("{path}.compare.{at}"), problem);
        }
    }
}

fn rollout(path: &str, ro: &RolloutConfig, r: &RouteConfig, config: &Config, e: &mut Errors) {
    match &r.split {
        None => e.push(path, "a rollout needs the route to have a split"),
        Some(split) => {
            if split.baseline_name() == Some(ro.canary.as_str()) {
                e.push(
                    format!("{path}.canary"),
                    format!(
                        "{:?} is the split's baseline; the canary must be another target",
                        ro.canary
                    ),
                );
            }
        }
    }
    if ro.steps.is_empty() {
        e.push(format!("{path}.steps"), "no steps");
    }
    steps(path, ro, config, e);
    e.check(format!("{path}.hold"), ro.hold.read());
    if let Some(t) = &ro.step_timeout {
        if let Some(d) = e.check(format!("{path}.step_timeout"), t.read()) {
            if d.is_zero() {
                e.push(format!("{path}.step_timeout"), "must be greater than 0");
            }
        }
    }
    if let Some(action) = ro.on_failure.as_deref() {
        if !matches!(action, "rollback" | "pause") {
            e.push(
                format!("{path}.on_failure"),
                format!("must be rollback or pause, got {action:?}"),
            );
        }
    }
    if let Some(d) = e.check(format!("{path}.interval"), ro.interval.read()) {
        if d.is_zero() {
            e.push(format!("{path}.interval"), "must be greater than 0");
        }
    }
    gates(path, &ro.gates, e);
    if ro.failure_limit == 0 {
        e.push(format!("{path}.failure_limit"), "must be at least 1, got 0");
    }
    for (i, h) in ro.webhooks.iter().enumerate() {
        let at = format!("{path}.webhooks[{i}]");
        if !matches!(h.when.as_str(), "pre_step" | "post_rollout" | "rollback") {
            e.push(
                format!("{at}.when"),
                format!(
                    "expected pre_step, post_rollout or rollback, got {:?}",
                    h.when
                ),
            );
        }
        e.check(format!("{at}.url"), parse::http_url(&h.url));
        e.check(format!("{at}.timeout"), h.timeout.read());
    }
    if let Some(url) = &ro.notify {
        e.check(format!("{path}.notify"), parse::http_url(url));
    }
}

/// A rollout's steps: weights above 0% and increasing, mirrors above 0%, headers named, clients
/// known.
fn steps(path: &str, ro: &RolloutConfig, config: &Config, e: &mut Errors) {
    let mut last: Option<f64> = None;
    for (i, s) in ro.steps.iter().enumerate() {
        let at = format!("{path}.steps[{i}]");
        if let Some(h) = &s.hold {
            e.check(format!("{at}.hold"), h.read());
        }
        match &s.kind {
            Step::Weight(w) => {
                if let Some(p) = e.check(at.clone(), w.read()) {
                    if p <= 0.0 {
                        e.push(at, format!("a weight step must be above 0%, got {p}"));
                    } else if let Some(l) = last.filter(|l| p <= *l) {
                        e.push(at, format!("weight steps must increase, got {p} after {l}"));
                    }
                    last = Some(p);
                }
            }
            Step::Mirror(m) => {
                if let Some(p) = e.check(at.clone(), m.read()) {
                    if p <= 0.0 {
                        e.push(at, format!("a mirror step must copy more than 0%, got {p}"));
                    }
                }
            }
            Step::Header(h) => {
                if h.is_empty() {
                    e.push(
                        format!("{at}.header"),
                        "no headers (e.g. {X-Version: beta})",
                    );
                }
                for (name, _) in h.iter() {
                    e.check(format!("{at}.header.{name}"), parse::header_name(name));
                }
            }
            Step::Clients(names) => {
                if names.is_empty() {
                    e.push(format!("{at}.clients"), "no clients (e.g. [globex])");
                }
                let known = config.clients.as_ref();
                for (j, name) in names.iter().enumerate() {
                    if !known.is_some_and(|c| c.keys.contains_key(name)) {
                        e.push(
                            format!("{at}.clients[{j}]"),
                            format!("no such client {name:?} in clients.keys"),
                        );
                    }
                }
            }
            Step::Pause => {}
        }
    }
}

/// A rollout's gates: percentages, a positive latency ratio, a confidence from 0.5 to 0.9999.
fn gates(path: &str, g: &crate::config::GatesConfig, e: &mut Errors) {
    for (key, v) in [
        ("max_error_rate", &g.max_error_rate),
        ("max_error_rate_increase", &g.max_error_rate_increase),
        ("max_mirror_diff_rate", &g.max_mirror_diff_rate),
    ] {
        if let Some(v) = v {
            e.check(format!("{path}.gates.{key}"), v.read());
        }
    }
    if let Some(ratio) = g.max_p99_ratio {
        if !ratio.is_finite() || ratio <= 0.0 {
            e.push(
                format!("{path}.gates.max_p99_ratio"),
                format!("must be a number > 0, got {ratio}"),
            );
        }
    }
    if let Some(c) = g.confidence {
        if !(0.5..=0.9999).contains(&c) {
            e.push(
                format!("{path}.gates.confidence"),
                format!("must be from 0.5 to 0.9999 (e.g. 0.99), got {c}"),
            );
        }
    }
}

/// Route names and client ids appear in URLs and metric labels.
fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `api.example.com` or `*.example.com`.
fn host_pattern(host: &str) -> Result<(), String> {
    let bad =
        || format!("invalid host {host:?} (expected a name like api.example.com or *.example.com)");
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty()
        || name.len() > 253
        || !name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Err(bad());
    }
    Ok(())
}

/// Host as routes compare it: lowercase, no trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Path prefix as routes compare it: no trailing slash, `/` becomes the empty prefix (matches all).
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}
