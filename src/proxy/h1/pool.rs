//! Idle upstream connections of the HTTP/1 engine, kept per worker thread.
//!
//! Each Pingora worker thread runs its own single-threaded runtime and a connection's task never
//! leaves it, so the pool is a thread-local map from backend address to a stack of idle connections:
//! no lock, no atomic, and a reused connection stays registered with the reactor of the thread that
//! uses it. The most recently used connection is reused first, so a light load keeps a few hot
//! connections rather than cycling through many.
//!
//! A connection the upstream closed while idle is noticed when it is taken: the reactor has marked it
//! readable, and a non-blocking read returns end-of-file (or bytes nobody asked for); it is dropped
//! and the next one tried. A connection idle longer than its pool's `idle` timeout (60 s when unset,
//! below the keep-alive timeout of common upstream servers) is dropped instead of reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per backend and thread; more are closed when returned.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// How long an idle connection is kept when its pool sets no `idle` timeout.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

struct Idle {
    conn: TcpStream,
    since: Instant,
}

/// Hashing a backend's address is on every request's path; SipHash's resistance to chosen keys is
/// not needed for addresses from the operator's own config.
type IdleMap = HashMap<SocketAddr, Vec<Idle>, ahash::RandomState>;

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
}

/// A live idle connection to `addr`, idle for at most `max_idle`.
pub fn take(addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let stack = idle.get_mut(&addr)?;
        while let Some(c) = stack.pop() {
            if c.since.elapsed() > max_idle {
                // Everything below it is older still.
                stack.clear();
                return None;
            }
            let mut probe = [0u8; 1];
            match c.conn.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(c.conn),
                // Closed by the upstream, an error, or bytes it was never asked for.
                _ => continue,
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to `addr`.
pub fn put(addr: SocketAddr, conn: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let stack = idle.entry(addr).or_default();
        if stack.len() >= MAX_IDLE_PER_BACKEND {
            stack.remove(0);
        }
        stack.push(Idle {
            conn,
            since: Instant::now(),
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_live_connections_and_drops_closed_or_expired_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();

        put(addr, client);
        let again = take(addr, DEFAULT_IDLE).expect("a live idle connection is reused");
        assert!(take(addr, DEFAULT_IDLE).is_none(), "taken once only");

        // The upstream closes it while idle: not reused.
        put(addr, again);
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr, DEFAULT_IDLE).is_none());

        // Idle longer than allowed: not reused.
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        put(addr, c);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(take(addr, Duration::from_millis(5)).is_none());

        // Unasked-for bytes: not reused.
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut s2, _) = listener.accept().await.unwrap();
        put(addr, c);
        s2.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr, DEFAULT_IDLE).is_none());
        s.shutdown().await.unwrap();
    }
}
