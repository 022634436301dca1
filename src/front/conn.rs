//! One client connection at the front door: its buffers (given back while idle), reading a request
//! head within the limits, lingering over an unread body, and writing to the client.

use super::head::head_complete;
use super::listener::PlainTcp;
use crate::config::Limits;
use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::time::fast_timeout::fast_timeout;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a kept-alive connection waits for its next request holding its buffers, as nginx frees
/// an idle connection's buffers: a busy connection never allocates them again, and an edge with many
/// idle clients holds little per connection.
pub const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// What one read of a body asks for.
pub const READ_CHUNK: usize = 16 * 1024;
/// Room for an upstream request head or a response head with the part of its body that came with
/// it, so that a typical head is written without growing its buffer.
pub const OUT_CAPACITY: usize = 1024;

/// How long after a connection gave its buffers back the worker thread hands freed memory back to
/// the system ([`give_back_memory_with`]): past the allocator's own purge delay (mimalloc's 1 s),
/// and within the few seconds an idle connection is measured after.
pub const GIVE_BACK_AFTER: Duration = Duration::from_millis(1500);

/// The allocator's collection, set once by the binary (`main.rs`: mimalloc's `mi_collect`).
static GIVE_BACK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

thread_local! {
    /// A connection of this worker thread will hand freed memory back.
    static GIVING_BACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets how freed memory goes back to the system. An allocator returns freed pages when it next
/// runs on the thread that freed them; a worker whose connections have all gone idle does not run
/// it, and would keep the buffers its idle connections gave back. So one idle connection per
/// worker thread calls `collect` there [`GIVE_BACK_AFTER`] after giving its buffers back, at most
/// once per that interval.
pub fn give_back_memory_with(collect: fn()) {
    let _ = GIVE_BACK.set(collect);
}

/// Held by the connection that will hand this thread's freed memory back.
pub struct GivingBack(());

impl GivingBack {
    /// This connection, unless another of this thread's already will (or nothing is set).
    fn elect() -> Option<GivingBack> {
        GIVE_BACK.get()?;
        (!GIVING_BACK.with(|g| g.replace(true))).then_some(GivingBack(()))
    }

    fn run(self) {
        if let Some(collect) = GIVE_BACK.get() {
            collect();
        }
    }
}

impl Drop for GivingBack {
    fn drop(&mut self) {
        GIVING_BACK.with(|g| g.set(false));
    }
}

/// One client connection. The buffers the engine reads and writes through are the connection's, so
/// that an idle connection gives all of them back.
pub struct Conn {
    pub stream: Stream,
    /// Bytes read from the client and not yet used.
    pub buf: BytesMut,
    /// Bytes read from the upstream.
    pub up_buf: BytesMut,
    /// The upstream request head (and the part of the body that came with it).
    pub req_out: Vec<u8>,
    /// The response head (and the part of the body that came with it).
    pub resp_out: Vec<u8>,
    /// The client's address, looked up (`getpeername`) the first time a decision needs it.
    pub client_ip: Option<Option<IpAddr>>,
    pub served: u32,
    pub limits: Limits,
    /// The buffers were given back while idle (see [`IDLE_RELEASE`]).
    pub lean: bool,
    /// This idle connection will hand its thread's freed memory back.
    pub giving_back: Option<GivingBack>,
}

impl Conn {
    pub fn new(stream: Stream, limits: Limits) -> Self {
        Conn {
            limits,
            lean: false,
            stream,
            buf: BytesMut::with_capacity(4096),
            up_buf: BytesMut::new(),
            req_out: Vec::with_capacity(OUT_CAPACITY),
            resp_out: Vec::with_capacity(OUT_CAPACITY),
            client_ip: None,
            served: 0,
            giving_back: None,
        }
    }
}

impl Conn {
    /// Gives back every buffer of an idle connection; they are taken again when its next request
    /// arrives.
    pub fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.up_buf = BytesMut::new();
        self.req_out = Vec::new();
        self.resp_out = Vec::new();
        self.lean = true;
        self.giving_back = GivingBack::elect();
    }
}

pub enum HeadRead {
    Complete,
    Closed,
    /// Larger than `limits.max_head_bytes` and not complete.
    TooLarge,
}

/// Reads until `c.buf` holds a whole request head. The head must arrive within
/// `limits.header_timeout` of its first byte (of accept, for a connection's first request): a client
/// sending it a byte at a time is closed (slowloris). An idle keep-alive connection waits up to
/// `limits.keepalive_timeout` for its next request, during a drain too (SPEC §1: a connection that may
/// have a request in flight is never closed under it).
pub async fn read_head(c: &mut Conn) -> HeadRead {
    let mut deadline = (c.served == 0).then(|| Instant::now() + c.limits.header_timeout);
    let idle_since = Instant::now();
    loop {
        if !c.buf.is_empty() && head_complete(&c.buf) {
            return HeadRead::Complete;
        }
        if c.buf.len() > c.limits.max_head_bytes {
            return HeadRead::TooLarge;
        }
        let idle = c.buf.is_empty();
        if c.buf.capacity() - c.buf.len() < 1024 {
            // A lean idle connection waits with a few bytes of buffer, not a head's worth.
            c.buf.reserve(if idle && c.lean { 64 } else { 4096 });
        }
        if !idle && deadline.is_none() {
            deadline = Some(Instant::now() + c.limits.header_timeout);
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => c
                .limits
                .keepalive_timeout
                .saturating_sub(idle_since.elapsed()),
        };
        let read = if !idle {
            fast_timeout(wait, c.stream.read_buf(&mut c.buf)).await
        } else {
            // Between requests, also once shutdown has begun: a request may already be on its way,
            // so the connection is not closed under it; its answer will say `Connection: close`.
            // After IDLE_RELEASE the buffers are given back.
            let release = deadline.is_none() && !c.lean && wait > IDLE_RELEASE;
            let give_back = c.giving_back.is_some() && wait > GIVE_BACK_AFTER;
            let wait = match (release, give_back) {
                (true, _) => IDLE_RELEASE,
                (false, true) => GIVE_BACK_AFTER,
                (false, false) => wait,
            };
            let r = fast_timeout(wait, c.stream.read_buf(&mut c.buf)).await;
            if r.is_err() && c.buf.is_empty() {
                if release {
                    c.release_buffers();
                    continue;
                }
                if give_back {
                    if let Some(g) = c.giving_back.take() {
                        g.run();
                    }
                    continue;
                }
            }
            r
        };
        match read {
            Ok(Ok(n)) if n > 0 => {
                c.lean = false;
                // Busy again: another idle connection of the thread may hand memory back.
                c.giving_back = None;
            }
            _ => return HeadRead::Closed,
        }
    }
}

/// Whether the request being served is the last `limits.max_requests_per_connection` allows: its
/// response then says `Connection: close`.
pub fn last_request(c: &Conn) -> bool {
    c.served.saturating_add(1) >= c.limits.max_requests_per_connection
}

/// Closes our side of a connection whose request body is still arriving, then reads and discards
/// the rest of it for a while: closing with unread bytes would reset the connection, and a reset can
/// destroy the answer before the client has read it. Bounded by the body's length, [`LINGER_IDLE`]
/// without data and [`LINGER_TOTAL`] in all.
pub async fn linger(c: &mut Conn, mut unread: u64) {
    const LINGER_IDLE: Duration = Duration::from_secs(1);
    const LINGER_TOTAL: Duration = Duration::from_secs(5);
    if c.stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER_TOTAL;
    // The connection's own buffer is the sink: an array here would be part of every request's
    // future.
    while unread > 0 && Instant::now() < until {
        c.buf.clear();
        c.buf.reserve(READ_CHUNK);
        match fast_timeout(LINGER_IDLE, c.stream.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => unread = unread.saturating_sub(n as u64),
            _ => return,
        }
    }
    c.buf.clear();
}

/// Writes all of `data` to the client; false when the client is gone. `last`: nothing more is
/// written on this connection, which closes after it.
///
/// Any other write goes out with Nagle's algorithm off, so that a small write never waits for the
/// ACK of the one before it. The last write does not need it (closing sends what is queued at
/// once), so a connection answered in one write and closed saves the system call, as with nginx.
///
/// A client that does not read for `send_timeout` is taken as gone.
pub async fn write_client(
    stream: &mut Stream,
    data: &[u8],
    last: bool,
    send_timeout: Duration,
) -> bool {
    if data.is_empty() {
        return true;
    }
    if !last {
        nodelay(stream);
    }
    let write = async { stream.write_all(data).await.is_ok() && stream.flush().await.is_ok() };
    fast_timeout(send_timeout, write).await.unwrap_or(false)
}

/// TCP_NODELAY on a client connection. Pingora's listeners set it on what they accept (TLS); the
/// front door's own plain-TCP connections get it here, once.
pub fn nodelay(stream: &Stream) {
    if let Some(tcp) = stream.as_any().downcast_ref::<PlainTcp>() {
        tcp.nodelay();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn nodelay_goes_on_before_a_write_that_is_not_the_last() {
        let (stream, mut client) = PlainTcp::accepted().await;
        let mut stream: Stream = Box::new(stream);
        let on = |s: &Stream| {
            s.as_any()
                .downcast_ref::<PlainTcp>()
                .unwrap()
                .nodelay_is_on()
        };
        assert!(!on(&stream));
        // A connection's last write goes out as it is.
        assert!(write_client(&mut stream, b"a", true, Duration::from_secs(5)).await);
        assert!(!on(&stream));
        // Any other turns Nagle's algorithm off first, and it stays off.
        assert!(write_client(&mut stream, b"b", false, Duration::from_secs(5)).await);
        assert!(on(&stream));
        assert!(write_client(&mut stream, b"c", true, Duration::from_secs(5)).await);
        assert!(on(&stream));
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }

    static COLLECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_collection() {
        COLLECTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// One idle connection per thread gives freed memory back, once, a while after its buffers;
    /// a connection that is busy again lets another do it.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_gives_its_threads_memory_back_once() {
        give_back_memory_with(count_collection);
        let (stream, mut client) = PlainTcp::accepted().await;
        let limits = Limits {
            keepalive_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let mut c = Conn::new(Box::new(stream), limits);
        c.served = 1;
        let waited = IDLE_RELEASE + GIVE_BACK_AFTER + Duration::from_millis(700);
        let idle = tokio::time::timeout(waited, read_head(&mut c)).await;
        assert!(idle.is_err(), "still waiting for a request");
        assert!(c.lean && c.giving_back.is_none());
        assert_eq!(COLLECTED.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Only one connection of a thread is elected at a time, until it is done.
        let first = GivingBack::elect();
        assert!(first.is_some() && GivingBack::elect().is_none());
        drop(first);
        assert!(GivingBack::elect().is_some());
        // The connection still serves its next request.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(read_head(&mut c).await, HeadRead::Complete));
    }
}
