//! Assembling and running the Pingora server from our own configuration: the proxy service on every
//! listener, the health checker, and Pingora's graceful upgrade (`-u`) and daemon (`-d`) modes.

use crate::config::{parse, Config};
use crate::proxy::{Draining, Proxy};
use crate::state::State;
use crate::upstream::HealthChecker;
use anyhow::Context;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// How long connections accepted just before shutdown have to send their first request (see
/// [`Draining`]). The runtime's own shutdown timeout still bounds it.
const FIRST_REQUEST_WINDOW: Duration = Duration::from_secs(1);

/// How the process starts, from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Take the listening sockets over from a running instance (Pingora graceful upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

/// Pingora's server settings derived from `server:` of our config.
fn server_conf(config: &Config) -> anyhow::Result<ServerConf> {
    let s = &config.server;
    let grace = parse::duration(&s.grace_period).map_err(anyhow::Error::msg)?;
    let shutdown = parse::duration(&s.shutdown_timeout).map_err(anyhow::Error::msg)?;
    Ok(ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(shutdown.as_secs()),
        ..ServerConf::default()
    })
}

/// Builds the server with every service of `config`, ready to run. With the text of the config file,
/// the live state is persisted in `server.state_dir` (see [`State::open`]); without, it is in memory.
pub fn build(
    config: Config,
    file_text: Option<&str>,
    opts: RunOptions,
) -> anyhow::Result<(Server, Arc<State>)> {
    let conf = server_conf(&config)?;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    let listen = config.server.listen.clone();
    let tls = config.server.tls.clone();
    let state = Arc::new(match file_text {
        Some(text) => State::open(config, text)?,
        None => State::new(config).map_err(|e| anyhow::anyhow!("{e}"))?,
    });

    let app = pingora::proxy::http_proxy(&server.configuration, Proxy::new(state.clone()));
    let mut proxy = Service::new(
        "switchyard proxy".to_string(),
        Draining::new(app, FIRST_REQUEST_WINDOW),
    );
    for addr in &listen {
        proxy.add_tcp(addr);
    }
    for t in &tls {
        proxy.add_tls(&t.listen, &t.cert, &t.key).with_context(|| {
            format!("TLS listener {} (cert {}, key {})", t.listen, t.cert, t.key)
        })?;
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(state.clone()),
    ));
    Ok((server, state))
}

/// Runs until told to stop by a signal (SIGTERM, SIGINT, or SIGQUIT for a graceful upgrade).
pub fn run(config: Config, file_text: &str, opts: RunOptions) -> anyhow::Result<()> {
    let (mut server, _state) = build(config, Some(file_text), opts)?;
    server.bootstrap();
    server.run_forever()
}
