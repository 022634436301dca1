//! The plain-TCP listeners of the front door: one accept loop per listening socket, each accepted
//! connection given straight to the front door in a task of its own.
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
//! the listener is bound with `SO_REUSEADDR` and a backlog of 65,535; an accepted connection carries
//! a socket digest holding the client's address (Pingora's `Listener::accept`); the loop stops
//! accepting when shutdown begins, and the app's `cleanup` runs once every loop ended.
//!
//! An accepted connection is a [`PlainTcp`], not Pingora's `l4::Stream`: the front door needs none of
//! that type's layers (buffers, rewind, pending-time clocks), and its `Drop` asks the kernel for
//! `TCP_NODELAY` (a `getsockopt`) only to log a double close. `TCP_NODELAY` itself is set by the
//! front door before a write that is not the connection's last (see `conn::write_client`), as nginx
//! does: a connection answered in one write and then closed never needs it. With one connection per
//! request, both system calls were about 2 of the 11 a request makes.

use async_trait::async_trait;
use once_cell::sync::OnceCell;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections waiting to be accepted, per listening socket (Pingora's listeners use the same).
const BACKLOG: u32 = 65_535;

pub struct TcpListeners<A: ServerApp + Send + Sync + 'static> {
    app: Arc<A>,
    addrs: Vec<String>,
    name: String,
}

impl<A: ServerApp + Send + Sync + 'static> TcpListeners<A> {
    pub fn new(name: &str, app: A, addrs: Vec<String>) -> Self {
        TcpListeners {
            app: Arc::new(app),
            addrs,
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for TcpListeners<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for addr in &self.addrs {
            let listener = match listen(addr, fds.as_ref()) {
                Ok(l) => Arc::new(l),
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
                    self.app.clone(),
                    shutdown.clone(),
                )));
            }
        }
        for l in loops {
            let _ = l.await;
        }
        ServerApp::cleanup(&*self.app).await;
    }

    fn name(&self) -> &str {
        &self.name
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
    table.add(addr.to_string(), listener.as_raw_fd());
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

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    listener: Arc<TcpListener>,
    app: Arc<A>,
    mut shutdown: ShutdownWatch,
) {
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
            Ok((tcp, peer)) => {
                let stream = PlainTcp::new(tcp, peer);
                let app = app.clone();
                let shutdown = shutdown.clone();
                pingora_runtime::current_handle().spawn(async move {
                    app.process_new(Box::new(stream), &shutdown).await;
                });
            }
            Err(e) => {
                // A connection that was reset before it was accepted concerns that connection only.
                if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted) {
                    continue;
                }
                // Anything else (out of file descriptors, a listener being torn down) would fail
                // again at once: back off instead of spinning and flooding the log.
                log::error!("accept() failed: {e}; pausing this listener");
                let pause = if matches!(e.raw_os_error(), Some(23 | 24)) {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(50)
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// A plain-TCP client connection as Pingora's pipeline sees it (a `Stream` is a boxed `IO`), for the
/// connections the front door hands over: the client's address from `accept`, the time it was accepted,
/// and nothing layered over the socket.
#[derive(Debug)]
pub struct PlainTcp {
    tcp: TcpStream,
    peer: SocketAddr,
    accepted: SystemTime,
    /// Built the first time it is asked for: most requests never read the client's address.
    digest: OnceCell<Arc<SocketDigest>>,
    /// Whether TCP_NODELAY has been set (see [`PlainTcp::nodelay`]).
    nodelay: AtomicBool,
}

impl PlainTcp {
    pub fn new(tcp: TcpStream, peer: SocketAddr) -> Self {
        PlainTcp {
            tcp,
            peer,
            accepted: SystemTime::now(),
            digest: OnceCell::new(),
            nodelay: AtomicBool::new(false),
        }
    }

    /// Turns Nagle's algorithm off for this connection; only the first call asks the kernel.
    pub fn nodelay(&self) {
        if self.nodelay.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.tcp.set_nodelay(true) {
            log::debug!("TCP_NODELAY on a client connection: {e}");
        }
    }

    #[cfg(test)]
    pub fn nodelay_is_on(&self) -> bool {
        self.tcp.nodelay().unwrap_or(false)
    }

    /// A connection accepted on a loopback listener, and the client's end of it.
    #[cfg(test)]
    pub async fn accepted() -> (PlainTcp, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        (PlainTcp::new(tcp, peer), client)
    }
}

impl AsyncRead for PlainTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PlainTcp {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut self.tcp).await {
            log::debug!("shutting down a client connection: {e}");
        }
    }
}

impl UniqueID for PlainTcp {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for PlainTcp {}

#[async_trait]
impl Peek for PlainTcp {}

impl GetTimingDigest for PlainTcp {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.accepted,
            establishment_duration: None,
            offload_wait_duration: None,
        })]
    }
}

impl GetProxyDigest for PlainTcp {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PlainTcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(
            self.digest
                .get_or_init(|| {
                    let digest = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
                    let _ = digest.peer_addr.set(Some(self.peer.into()));
                    Arc::new(digest)
                })
                .clone(),
        )
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.digest = OnceCell::with_value(Arc::new(digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn plain_tcp_reports_the_client_and_sets_nodelay_only_when_asked() {
        let (stream, client) = PlainTcp::accepted().await;
        assert!(!stream.nodelay_is_on());
        let digest = stream.get_socket_digest().unwrap();
        let seen = digest.peer_addr().and_then(|a| a.as_inet()).copied();
        assert_eq!(seen, Some(client.local_addr().unwrap()));
        // Built once, then shared.
        assert!(Arc::ptr_eq(&digest, &stream.get_socket_digest().unwrap()));
        stream.nodelay();
        assert!(stream.nodelay_is_on());
    }
}
