//! `switchyard upgrade -c FILE` (SPEC §1): a zero-downtime binary upgrade in one command.
//!
//! 1. The running instance is the pid in `server.pid_file`, and it must be alive.
//! 2. The new binary (this one, or `--binary`) starts as `run -c FILE -u` (`-d` too when the running
//!    instance is a daemon: it leaves `<pid_file>.daemon` to say so). While it waits for the listening sockets it binds `server.upgrade_sock`:
//!    that is the readiness signal, never a fixed sleep. If it exits first, or does not get there in
//!    time, it is stopped, nothing is signalled and the old instance keeps serving (exit 3).
//! 3. SIGQUIT to the old instance: it sends its listening sockets to the new one and drains. (A
//!    SIGQUIT without a successor waiting is ignored by the instance, so it never closes its
//!    listeners with nobody to take them.)
//! 4. Confirmed once the pid file names the new process, that process is alive, and every HTTP
//!    listener accepts. The command then reports old and new pid (exit 0).

use crate::config::Config;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

pub struct Upgrade<'a> {
    pub conf: &'a Path,
    pub config: &'a Config,
    pub binary: Option<PathBuf>,
    /// How long the new process may take to be ready, and then to serve.
    pub timeout: Duration,
}

pub fn run(u: Upgrade<'_>) -> ExitCode {
    match upgrade(&u) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard upgrade: {e}");
            ExitCode::from(3)
        }
    }
}

fn upgrade(u: &Upgrade<'_>) -> Result<String, String> {
    let server = &u.config.server;
    let pid_file = Path::new(&server.pid_file);
    let upgrade_sock = Path::new(&server.upgrade_sock);
    let old = read_pid(pid_file)?;
    if !alive(old) {
        return Err(format!(
            "pid {old} from {} is not running: nothing to upgrade (start it with `switchyard run`)",
            pid_file.display()
        ));
    }
    if crate::server::successor_waiting(upgrade_sock) {
        return Err(format!(
            "a new process already waits on {}: another upgrade is under way",
            upgrade_sock.display()
        ));
    }
    let binary = match &u.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
    };
    let daemon = crate::server::daemon_marker(pid_file).exists();
    let conf = std::fs::canonicalize(u.conf).unwrap_or_else(|_| u.conf.to_path_buf());
    let mut cmd = Command::new(&binary);
    cmd.arg("run").arg("-c").arg(&conf).arg("-u");
    if daemon {
        cmd.arg("-d");
    }
    // The new process outlives this command: its access log (stdout) and log (stderr) go where the
    // old process's went, so a journal or a log file keeps receiving them; where they cannot be
    // reopened (a socket), where this command's go.
    cmd.stdin(Stdio::null())
        .stdout(stdio_of(old, 1))
        .stderr(stdio_of(old, 2));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let new_started = child.id() as i32;

    wait_ready(u, &mut child, &binary, &conf, old, daemon)?;

    kill(Pid::from_raw(old), Signal::SIGQUIT)
        .map_err(|e| format!("cannot signal pid {old}: {e}"))?;

    // Serving: the pid file names a new, live process, and every listener accepts.
    let deadline = Instant::now() + u.timeout;
    let new = loop {
        if let Ok(pid) = read_pid(pid_file) {
            if pid != old && alive(pid) {
                break pid;
            }
        }
        if !daemon && matches!(child.try_wait(), Ok(Some(_))) {
            return Err(format!(
                "the new process (pid {new_started}) exited after SIGQUIT was sent to pid {old}; check both logs"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "SIGQUIT sent to pid {old}, but {} did not name a new process within {} s; check both logs",
                pid_file.display(),
                u.timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    };
    for addr in &server.listen {
        let serving = wait_until(deadline, || std::net::TcpStream::connect(addr).is_ok());
        if !serving {
            return Err(format!(
                "pid {new} took over, but {addr} does not accept connections"
            ));
        }
    }
    Ok(format!(
        "upgraded: pid {old} -> pid {new} ({}), now serving on {}; pid {old} drains what is in flight (at most grace_period {}) and exits",
        binary.display(),
        server.listen.join(", "),
        server.grace_period
    ))
}

/// Waits until the new process is ready: it waits for the sockets on `upgrade_sock`. A process that
/// exits first, or is not ready within the timeout (then stopped), leaves pid `old` serving.
fn wait_ready(
    u: &Upgrade<'_>,
    child: &mut std::process::Child,
    binary: &Path,
    conf: &Path,
    old: i32,
    daemon: bool,
) -> Result<(), String> {
    let upgrade_sock = Path::new(&u.config.server.upgrade_sock);
    let deadline = Instant::now() + u.timeout;
    loop {
        if crate::server::successor_waiting(upgrade_sock) {
            return Ok(());
        }
        match child.try_wait() {
            // A daemon's first process exits once it has forked; the daemon goes on.
            Ok(Some(status)) if !(daemon && status.success()) => {
                return Err(format!(
                    "the new process ({} run -c {} -u) exited with {status} before it was ready; pid {old} keeps serving (the new process's log says why)",
                    binary.display(),
                    conf.display()
                ));
            }
            Err(e) => return Err(format!("cannot watch the new process: {e}")),
            _ => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the new process did not wait for the sockets on {} within {} s; stopped it; pid {old} keeps serving",
                upgrade_sock.display(),
                u.timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The file behind descriptor `fd` of process `pid`, opened again for appending.
fn stdio_of(pid: i32, fd: u8) -> Stdio {
    std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_or_else(|_| Stdio::inherit(), Stdio::from)
}

fn wait_until(deadline: Instant, mut ok: impl FnMut() -> bool) -> bool {
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn read_pid(pid_file: &Path) -> Result<i32, String> {
    crate::server::read_pid_file(pid_file).map_err(|e| format!("{e:#}"))
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) is not serving.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let zombie = state
        .as_deref()
        .and_then(|s| s.rsplit_once(") "))
        .is_some_and(|(_, rest)| rest.starts_with('Z'));
    kill(Pid::from_raw(pid), None).is_ok() && !zombie
}
