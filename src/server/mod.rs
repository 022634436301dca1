//! Assembling and running the Pingora server from our own configuration: the proxy service on every
//! listener, the health checker, and Pingora's graceful upgrade (`-u`) and daemon (`-d`) modes.

use crate::config::{Config, Valid};
use crate::front::{Door, Drain, TcpListeners};
use crate::proxy::access_log::{AccessLog, Destination};
use crate::proxy::{Engine, Proxy};
mod reloader;
use crate::state::State;
use crate::upstream::HealthChecker;
use anyhow::Context;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use reloader::Reloader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long connections accepted just before shutdown have to send their first request (see
/// [`Door`]). The runtime's own shutdown timeout still bounds it.
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
    let grace = s.grace_period.read().map_err(anyhow::Error::msg)?;
    let shutdown = s.shutdown_timeout.read().map_err(anyhow::Error::msg)?;
    Ok(ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        // Pingora counts these in whole seconds: a sub-second setting is rounded up, never to zero.
        grace_period_seconds: Some(whole_seconds_up(grace)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds_up(shutdown)),
        // One single-threaded runtime per worker thread: no cross-thread task stealing, whose
        // bookkeeping costs more than it balances for short proxy requests.
        work_stealing: false,
        ..ServerConf::default()
    })
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The config a server runs from: its text, and the file it was read from (`None` when embedded, as
/// in the demo: then there is nothing for SIGHUP to re-read).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: Option<PathBuf>,
    pub text: String,
}

/// Builds the server with every service of `config`, ready to run. From a config file, the live state
/// is persisted in `server.state_dir` (see [`State::open`]) and SIGHUP re-reads the file; without one
/// (the demo) the state is kept in memory.
pub fn build(
    config: Valid,
    file: Option<&ConfigFile>,
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
    // In a fleet (`store.etcd`), the state's revisions are shared through etcd.
    let fleet = crate::fleet::Fleet::from_config(&config).map(Arc::new);
    let state = Arc::new(match (file, fleet.clone()) {
        (Some(f), Some(fleet)) => State::open_shared(config, &f.text, opts.upgrade, fleet)?,
        (Some(f), None) if opts.upgrade => State::open_successor(config, &f.text)?,
        (Some(f), None) => State::open(config, &f.text)?,
        (None, _) => State::new(config).map_err(|e| anyhow::anyhow!("{e}"))?,
    });

    let access_log = match Destination::from_setting(&state.load().config.server.access_log) {
        Some(dest) => Some(Arc::new(AccessLog::start(&dest, state.metrics().clone())?)),
        None => None,
    };
    let proxy_app = Proxy::new(state.clone(), access_log.clone());
    let mut full = pingora::proxy::http_proxy(&server.configuration, proxy_app.clone());
    // Requests per client connection on Pingora's pipeline (the engine counts its own): Pingora counts
    // reuses, the first request not included.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.keepalive_request_limit = Some(
        proxy_app
            .limits()
            .max_requests_per_connection
            .saturating_sub(1),
    );
    // A plain connection the front door found opening with the HTTP/2 preface is handed over whole; on TLS,
    // ALPN decides.
    options.h2c = state.load().config.server.h2c;
    full.server_options = Some(options);
    // One front door for every listener; `server.http1_engine: false` (the kill switch) only means
    // that it gives every request to Pingora's pipeline.
    let engine_on = config_engine(&state);
    if !engine_on {
        log::warn!("server.http1_engine is false: every request goes through Pingora's pipeline");
    }
    let door = Door::new(
        Engine::new(proxy_app, engine_on),
        full,
        FIRST_REQUEST_WINDOW,
    );
    if !tls.is_empty() {
        // TLS connections are accepted by Pingora's listening service, which runs the handshake
        // and then gives the connection to the same front door.
        let mut secure = Service::new("switchyard tls".to_string(), door.clone());
        add_tls(&mut secure, &tls)?;
        server.add_service(secure);
    }
    server.add_service(TcpListeners::new("switchyard proxy", door, listen));
    server.add_service(background_service(
        "health checks",
        HealthChecker::new({
            let state = state.clone();
            Box::new(move || state.load().pools.iter().cloned().collect())
        }),
    ));
    // The rollouts of this instance's routes (SPEC §6): walked by the controller, shown and
    // controlled through the admin API.
    let rollouts = Arc::new(crate::rollout::Rollouts::default());
    add_admin(&mut server, &state, &rollouts);
    let reloader =
        Reloader::new(file.and_then(|f| f.path.clone()), state.clone()).reopening(access_log);
    server.add_service(background_service("config reload", reloader));
    if let Some(fleet) = fleet {
        server.add_service(background_service(
            "fleet",
            crate::fleet::FleetService::new(state.clone(), fleet),
        ));
    }
    server.add_service(background_service(
        "rollouts",
        crate::rollout::Controller::new(state.clone(), rollouts),
    ));
    // The last lines of the access log are written within a few of its flush intervals.
    let settle = crate::proxy::access_log::FLUSH_INTERVAL * 3;
    server.add_service(background_service("drain", Drain { settle }));
    Ok((server, state))
}

/// The admin API on `admin.listen`, and `/metrics` on `metrics.listen`, when configured.
fn add_admin(server: &mut Server, state: &Arc<State>, rollouts: &Arc<crate::rollout::Rollouts>) {
    if let Some(admin) = state.load().config.admin.clone() {
        let api = crate::admin::AdminApi::new(state.clone(), rollouts.clone());
        let door = crate::admin::AdminFront::door(state.clone(), api);
        server.add_service(TcpListeners::new(
            "switchyard admin",
            door,
            vec![admin.listen],
        ));
    }
    if let Some(metrics) = state.load().config.metrics.clone() {
        let endpoint = crate::admin::MetricsEndpoint::new(state.clone(), rollouts.clone());
        let door = crate::admin::AdminFront::door(state.clone(), endpoint);
        server.add_service(TcpListeners::new(
            "switchyard metrics",
            door,
            vec![metrics.listen],
        ));
    }
}

fn config_engine(state: &State) -> bool {
    state.load().config.server.http1_engine
}

fn add_tls<A>(service: &mut Service<A>, tls: &[crate::config::TlsListener]) -> anyhow::Result<()> {
    for t in tls {
        // `h2` and `http/1.1` offered by ALPN: an HTTP/2 client gets HTTP/2.
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&t.cert, &t.key)
            .with_context(|| {
                format!("TLS listener {} (cert {}, key {})", t.listen, t.cert, t.key)
            })?;
        settings.enable_h2();
        // No 64 KB read buffer under TLS for each connection's life: rustls reads whole records
        // itself, and an idle TLS connection then holds rustls's state, not a buffer besides it.
        let buffers = pingora::listeners::L4BufferSettings::default().read(0);
        let listener = pingora::listeners::ListenerConfig::tcp(t.listen.as_str())
            .tls(settings)
            .l4_buffer(buffers);
        service.add_listener(listener);
    }
    Ok(())
}

/// Runs until told to stop by a signal (SIGTERM, SIGINT, or SIGQUIT for a graceful upgrade; SIGHUP
/// reloads the config file).
pub fn run(config: Valid, file: Option<&ConfigFile>, opts: RunOptions) -> anyhow::Result<()> {
    let pid_file = config.server.pid_file.clone();
    let (mut server, state) = build(config, file, opts)?;
    server.bootstrap();
    if opts.upgrade {
        // The previous process may have committed changes since this one read the state directory;
        // it took none after it began handing over.
        state.take_over();
    }
    log::info!("{}", startup_line(&state.load()));
    if !opts.daemon {
        // Pingora writes the pid file when it daemonizes; in the foreground `switchyard reload` needs
        // it too.
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {pid_file}"))?;
    }
    // Whether the instance behind the pid file runs as a daemon, for `switchyard upgrade`.
    let marker = daemon_marker(std::path::Path::new(&pid_file));
    if opts.daemon {
        std::fs::write(&marker, "run -d\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    } else if let Err(e) = std::fs::remove_file(&marker) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", marker.display());
        }
    }
    let upgrade_sock = PathBuf::from(&server.configuration.upgrade_sock);
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            upgrade_sock,
            state,
        }),
    });
    std::process::exit(0)
}

/// The signals that end a run (SPEC §1). SIGQUIT hands the listening sockets over only when a new
/// process waits for them on `upgrade_sock` (`run -u` binds it while it waits); without one, the
/// instance keeps serving instead of closing its listeners with nobody to take them. SIGTERM drains.
/// SIGINT stops at once.
struct Signals {
    upgrade_sock: PathBuf,
    state: Arc<State>,
}

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!(
                "cannot watch for signals: SIGTERM, SIGQUIT and SIGINT will not be handled"
            );
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if successor_waiting(&self.upgrade_sock) {
                        // One writer at a time: changes stop here before the new process can take any.
                        self.state.hand_over();
                        log::info!("SIGQUIT: handing the listening sockets to the new process, then draining; admin changes now go to the new process");
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    log::warn!(
                        "SIGQUIT, but no new process waits on {}: still serving (`switchyard upgrade` starts one and hands over)",
                        self.upgrade_sock.display()
                    );
                }
                _ = term.recv() => {
                    log::info!("SIGTERM: draining");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => {
                    log::info!("SIGINT: stopping at once");
                    std::process::exit(0);
                }
            }
        }
    }
}

/// The file next to the pid file that says the instance runs as a daemon (`run -d`).
pub fn daemon_marker(pid_file: &std::path::Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".daemon");
    PathBuf::from(name)
}

/// Whether a new process is waiting for the listening sockets: it binds a Unix socket at `path` while
/// it waits, and removes it once it has them or gives up.
pub fn successor_waiting(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// One line in words: version, revision, where it listens, where the admin API is.
fn startup_line(s: &crate::state::Snapshot) -> String {
    let c = &s.config;
    let mut listen: Vec<String> = c
        .server
        .listen
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    listen.extend(c.server.tls.iter().map(|t| format!("https://{}", t.listen)));
    let admin = match &c.admin {
        Some(a) => format!("admin API on http://{}", a.listen),
        None => "no admin API".to_string(),
    };
    format!(
        "switchyard {} serving revision {} ({} routes) on {}; {admin}; state in {}",
        env!("CARGO_PKG_VERSION"),
        s.revision,
        c.routes.len(),
        listen.join(", "),
        c.server.state_dir
    )
}

/// The pid in `pid_file`.
pub fn read_pid_file(pid_file: &std::path::Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(pid_file).with_context(|| {
        format!(
            "no running instance: cannot read pid file {}",
            pid_file.display()
        )
    })?;
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "pid file {} does not hold a pid: {:?}",
            pid_file.display(),
            text.trim()
        )
    })
}

/// Sends `signal` to the process named in `pid_file`; returns its pid.
pub fn signal_pid_file(
    pid_file: &std::path::Path,
    signal: nix::sys::signal::Signal,
) -> anyhow::Result<i32> {
    let pid = read_pid_file(pid_file)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("cannot signal pid {pid} from {}", pid_file.display()))?;
    Ok(pid)
}
