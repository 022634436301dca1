//! The proxy's plain-TCP listeners: one accept loop per listening socket, each accepted connection
//! given straight to the HTTP/1 engine in a task of its own.
//!
//! Pingora's listening service (`services/listening.rs`, `Service::run_endpoint`) would do the same
//! job, but the task it spawns per connection also holds the future of a TLS handshake under a 60 s
//! timeout (TLS is compiled in for the TLS listeners), so every accepted connection builds and moves a
//! future several kilobytes large: the spawn, the handshake step and the task's completion
//! (`Core::set_stage`) each copy it, about 4–5 % of the CPU a keep-alive-off request costs. TLS
//! listeners stay on Pingora's service, where the handshake belongs.
//!
//! What Pingora's listeners do that these must do too: a listening socket is taken from Pingora's
//! table of inherited sockets when the process was started with `--upgrade` (and put there when it is
//! bound here), so a graceful upgrade hands it to the next process without refusing a connection;
//! the listener is bound with `SO_REUSEADDR` and a backlog of 65,535; an accepted connection gets
//! `TCP_NODELAY` and a socket digest holding the client's address (Pingora's `Listener::accept`); the
//! loop stops accepting when shutdown begins, and the engine's `cleanup` runs once every loop ended.

use super::h1::Engine;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::listener::Listener;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// Connections waiting to be accepted, per listening socket (Pingora's listeners use the same).
const BACKLOG: u32 = 65_535;

pub struct TcpListeners {
    engine: Arc<Engine>,
    addrs: Vec<String>,
}

impl TcpListeners {
    pub fn new(engine: Arc<Engine>, addrs: Vec<String>) -> Self {
        TcpListeners { engine, addrs }
    }
}

#[async_trait]
impl Service for TcpListeners {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for addr in &self.addrs {
            let listener = match listen(addr, fds.as_ref()) {
                Ok(l) => Arc::new(Listener::from(l)),
                Err(e) => {
                    // Nothing can be served without it; Pingora's own listeners stop the same way.
                    log::error!("cannot listen on {addr}: {e}");
                    eprintln!("switchyard: cannot listen on {addr}: {e}");
                    std::process::exit(1);
                }
            };
            for _ in 0..listeners_per_fd.max(1) {
                loops.push(pingora_runtime::current_handle().spawn(accept_loop(
                    listener.clone(),
                    self.engine.clone(),
                    shutdown.clone(),
                )));
            }
        }
        for l in loops {
            let _ = l.await;
        }
        ServerApp::cleanup(&*self.engine).await;
    }

    fn name(&self) -> &str {
        "switchyard proxy"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addrs.clone())
    }
}

/// The listening socket for `addr`: the one inherited from the previous process, or a new one.
fn listen(addr: &str, fds: Option<&ListenFds>) -> std::io::Result<TcpListener> {
    let Some(fds) = fds else {
        return bind(addr);
    };
    // The table is shared with Pingora's listeners; an address is in it at most once.
    let mut table = fds.lock();
    if let Some(fd) = table.get(addr).copied() {
        return inherited(fd);
    }
    let listener = bind(addr)?;
    table.add(addr.to_string(), std::os::fd::AsRawFd::as_raw_fd(&listener));
    Ok(listener)
}

fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let sock_addr: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "resolves to no address")
    })?;
    let socket = match sock_addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sock_addr)?;
    socket.listen(BACKLOG)
}

/// Takes over a listening socket handed over by the previous process at a graceful upgrade.
#[allow(unsafe_code)]
fn inherited(fd: std::os::fd::RawFd) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` comes from Pingora's table of listening sockets received at upgrade (SCM_RIGHTS).
    // It is open, it is a listening TCP socket, and nothing else in this process owns it: the table
    // only records it, and each address is claimed by exactly one service (this one for the plain
    // listeners, Pingora's for the TLS ones), which is what Pingora's own listeners rely on as well.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

async fn accept_loop(listener: Arc<Listener>, engine: Arc<Engine>, mut shutdown: ShutdownWatch) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        match accepted {
            Ok(mut stream) => {
                if let Err(e) = stream.set_nodelay() {
                    log::debug!("TCP_NODELAY on an accepted connection: {e}");
                }
                let engine = engine.clone();
                let shutdown = shutdown.clone();
                pingora_runtime::current_handle().spawn(async move {
                    engine.process_new(Box::new(stream), &shutdown).await;
                });
            }
            Err(e) => {
                log::error!("accept() failed: {e}");
                // Out of file descriptors: accept() would fail again at once until some close.
                if matches!(e.raw_os_error(), Some(23 | 24)) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
