//! The command line of SPEC §1. Exit codes: 0 success, 1 invalid input or config, 2 usage error
//! (clap's own), 3 could not reach or act on a running instance.

use crate::config::{self, Valid};
use crate::server::{self, RunOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Release new API versions safely: canary, sticky splits, blue/green, at the edge"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the demo: two versions, a canary, a blue/green route, on 127.0.0.1:8080. Needs no file.
    Demo,
    /// Run the proxy with a configuration file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        conf: PathBuf,
        /// Take the listening sockets over from a running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a configuration file and print every problem with its path.
    Check {
        #[arg(short, long, value_name = "FILE")]
        conf: PathBuf,
    },
    /// Print the JSON Schema of the configuration file (for editors and CI), generated from the same
    /// types the file is read into.
    Schema,
    /// Control a running instance through its admin API (SWITCHYARD_ADMIN, SWITCHYARD_TOKEN).
    Ctl {
        #[command(flatten)]
        options: crate::ctl::CtlOptions,
        #[command(subcommand)]
        command: crate::ctl::CtlCommand,
    },
    /// Zero-downtime binary upgrade: start the new binary with `run -u`, wait until it is ready for the
    /// listening sockets, hand them over (SIGQUIT to the running instance), confirm the new process
    /// serves, and report. If the new binary fails, the running instance keeps serving (exit 3).
    Upgrade {
        #[arg(short, long, value_name = "FILE")]
        conf: PathBuf,
        /// The new binary (default: this one).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long the new process may take to get ready, and then to serve.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::config::parse::duration)]
        timeout: std::time::Duration,
    },
    /// Ask the running instance to re-read its config file (SIGHUP to the pid in its pid file), wait for
    /// the outcome and print the revision now served, or the errors.
    Reload {
        /// The config file of the running instance (its server.pid_file names the pid file).
        #[arg(short, long, value_name = "FILE")]
        conf: Option<PathBuf>,
        /// The pid file, when not taken from a config file.
        #[arg(long, value_name = "PATH", conflicts_with = "conf")]
        pid_file: Option<PathBuf>,
        /// Take the file's value where a setting was changed both in the file and live (by the admin
        /// API or a rollout) since the file was last applied; the audit entry names what it undid.
        #[arg(long, requires = "conf")]
        force: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => init_logging("info"),
        Command::Run { .. } => init_logging("info"),
        Command::Check { .. }
        | Command::Schema
        | Command::Reload { .. }
        | Command::Ctl { .. }
        | Command::Upgrade { .. } => init_logging("warn"),
    }
    match cli.command {
        Command::Check { conf } => check(&conf),
        Command::Schema => {
            println!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Reload {
            conf,
            pid_file,
            force,
        } => reload(conf, pid_file, force),
        Command::Upgrade {
            conf,
            binary,
            timeout,
        } => match load(&conf) {
            Ok((config, _)) => crate::upgrade::run(crate::upgrade::Upgrade {
                conf: &conf,
                config: &config,
                binary,
                timeout,
            }),
            Err(code) => code,
        },
        Command::Ctl { options, command } => crate::ctl::run(options, command),
        Command::Run {
            conf,
            upgrade,
            daemon,
        } => {
            let (config, text) = match load(&conf) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Absolute, because a daemon changes its working directory.
            let path = std::fs::canonicalize(&conf).unwrap_or(conf);
            let file = server::ConfigFile {
                path: Some(path),
                text,
            };
            finish(server::run(
                config,
                Some(&file),
                RunOptions { upgrade, daemon },
            ))
        }
        Command::Demo => finish(crate::demo::run()),
    }
}

/// Reads and validates a config file; returns it with the text it was read from.
fn load(path: &std::path::Path) -> Result<(Valid, String), ExitCode> {
    let invalid = |errors: &[config::ConfigError]| {
        eprintln!("{}: invalid configuration", path.display());
        for e in errors {
            eprintln!("  {e}");
        }
        ExitCode::from(1)
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(&[config::ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )])
    })?;
    let config = Valid::load(&text).map_err(|errors| invalid(&errors.0))?;
    Ok((config, text))
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok((c, _)) => c,
        Err(code) => return code,
    };
    let clients = config.clients.as_ref().map_or(0, |c| c.keys.len());
    println!(
        "{}: ok: {} routes, {} upstreams, {} clients",
        path.display(),
        config.routes.len(),
        config.upstreams.len(),
        clients
    );
    ExitCode::SUCCESS
}

/// How long `switchyard reload` waits for the instance to record the outcome.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn reload(conf: Option<PathBuf>, pid_file: Option<PathBuf>, force: bool) -> ExitCode {
    let (pid_file, state_dir) = match (pid_file, conf.as_ref()) {
        (Some(p), _) => (p, None),
        // Validate first: a file the instance would refuse is reported here and nothing is signalled.
        (None, Some(conf)) => match load(conf) {
            Ok((c, _)) => (
                PathBuf::from(c.server.pid_file.clone()),
                Some(PathBuf::from(c.server.state_dir.clone())),
            ),
            Err(code) => return code,
        },
        (None, None) => (
            PathBuf::from(config::ServerConfig::default().pid_file),
            None,
        ),
    };
    let last_seq = |dir: &std::path::Path| {
        crate::state::store::read_reload_outcome(dir).and_then(|v| v["seq"].as_u64())
    };
    let before = state_dir.as_deref().and_then(last_seq);
    if let (Some(dir), Some(conf)) = (state_dir.as_deref(), conf.as_ref()) {
        // The instance reloads the file it runs; it refuses if that is not this one.
        let file = std::fs::canonicalize(conf).unwrap_or_else(|_| conf.clone());
        let request = serde_json::json!({"file": file, "force": force});
        if let Err(e) = crate::state::store::write_reload_request(dir, &request) {
            eprintln!("switchyard reload: cannot write to {}: {e}", dir.display());
            return ExitCode::from(3);
        }
    }
    let pid = match crate::server::signal_pid_file(&pid_file, nix::sys::signal::Signal::SIGHUP) {
        Ok(pid) => pid,
        Err(e) => {
            // Nothing was signalled: the request must not wait for a later SIGHUP.
            if let Some(dir) = state_dir.as_deref() {
                let _ = crate::state::store::take_reload_request(dir);
            }
            eprintln!("switchyard reload: {e:#}");
            return ExitCode::from(3);
        }
    };
    let Some(dir) = state_dir else {
        println!(
            "asked switchyard (pid {pid}) to reload its config file; the outcome is in its log"
        );
        return ExitCode::SUCCESS;
    };
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    let outcome = loop {
        if let Some(v) = crate::state::store::read_reload_outcome(&dir)
            .filter(|v| v["seq"].as_u64() > before && v["pid"].as_i64() == Some(i64::from(pid)))
        {
            break v;
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "switchyard reload: sent SIGHUP to pid {pid}, but it recorded no outcome in {} within {} s; see its log",
                dir.join("reload.json").display(),
                RELOAD_WAIT.as_secs()
            );
            return ExitCode::from(3);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    report_reload(pid, &outcome)
}

/// Says how the reload recorded in `outcome` went: applied (what the file changed, what a force
/// undid), nothing to change, or refused with every problem.
fn report_reload(pid: i32, outcome: &serde_json::Value) -> ExitCode {
    let revision = &outcome["revision"];
    match outcome["result"].as_str() {
        Some("applied") => {
            println!("reloaded (pid {pid}): now serving revision {revision}");
            let lines = |key: &str| -> Vec<String> {
                outcome[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for place in lines("taken") {
                println!("  from the file: {place}");
            }
            for undone in lines("undone") {
                println!("  undid (forced): {undone}");
            }
            ExitCode::SUCCESS
        }
        Some("same") => {
            println!(
                "nothing to change (pid {pid}): everything the file changes is live already; still serving revision {revision}"
            );
            ExitCode::SUCCESS
        }
        Some("unchanged") => {
            println!(
                "unchanged (pid {pid}): the file equals the one last applied; still serving revision {revision}, nothing changed"
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("reload refused (pid {pid}), still serving revision {revision}:");
            for e in outcome["errors"].as_array().into_iter().flatten() {
                eprintln!("  {}", e.as_str().unwrap_or_default());
            }
            ExitCode::from(1)
        }
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(default: &str) {
    let env = env_logger::Env::default().default_filter_or(default);
    // Backend health transitions are logged by Switchyard in words (naming upstream and backend);
    // pingora-load-balancing's own lines would repeat them.
    let _ = env_logger::Builder::from_env(env)
        .filter_module("pingora_load_balancing", log::LevelFilter::Error)
        .format_timestamp_millis()
        .try_init();
}
