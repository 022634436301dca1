//! The client connection as Pingora's pipeline sees it while serving one request. Its reads stop
//! where the request ends (the front door knows from the head how long it is), so the pipeline never
//! reads the start of the next request: a read past the end keeps those bytes here for the front door
//! and stays pending, and the pipeline's check for a client that went away still sees the end of
//! the stream. Without the fence a client that sends its next request before the answer to this
//! one (pipelining) has that request taken for stray data and refused.

use bytes::{Buf, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the next request one read past the end keeps.
const NEXT_READ: usize = 4096;

#[derive(Debug)]
pub(crate) struct Fenced {
    inner: Stream,
    /// Bytes of this request still to be read from the connection; `None`: no fence (a chunked
    /// body, an upgrade or a tunnel runs until the pipeline is done with the connection).
    left: Option<u64>,
    /// Bytes read past the end of this request: the start of the next one.
    next: BytesMut,
    /// Bytes already read from the connection that reads give first (a connection handed over
    /// after its first bytes were looked at).
    front: BytesMut,
}

impl Fenced {
    pub(crate) fn new(inner: Stream, left: Option<u64>) -> Self {
        Fenced {
            inner,
            left,
            next: BytesMut::new(),
            front: BytesMut::new(),
        }
    }

    /// The connection unfenced, `front` read again first: for a connection whose first bytes the
    /// front door read before handing it to Pingora whole (HTTP/2 with prior knowledge).
    pub(crate) fn rewound(inner: Stream, front: BytesMut) -> Self {
        Fenced {
            inner,
            left: None,
            next: BytesMut::new(),
            front,
        }
    }

    /// The connection back, with what was read of the next request.
    pub(crate) fn into_parts(self) -> (Stream, BytesMut) {
        (self.inner, self.next)
    }
}

impl AsyncRead for Fenced {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.front.is_empty() {
            let n = this.front.len().min(buf.remaining());
            buf.put_slice(&this.front[..n]);
            this.front.advance(n);
            if this.front.is_empty() {
                // Its buffer is given back, not kept for the life of the connection.
                this.front = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        match this.left {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(0) => {
                if !this.next.is_empty() {
                    // The next request has begun: nothing more for this one, ever.
                    return Poll::Pending;
                }
                let mut chunk = [0u8; NEXT_READ];
                let mut read = ReadBuf::new(&mut chunk);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    // The client closed: the pipeline sees the end of the stream.
                    return Poll::Ready(Ok(()));
                }
                this.next.extend_from_slice(read.filled());
                Poll::Pending
            }
            Some(left) => {
                let room =
                    usize::try_from(left).map_or(buf.remaining(), |l| l.min(buf.remaining()));
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                let n = limited.filled().len();
                buf.advance(n);
                this.left = Some(left - n as u64);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Fenced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait::async_trait]
impl Shutdown for Fenced {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Fenced {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Fenced {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

#[async_trait::async_trait]
impl Peek for Fenced {}

impl GetTimingDigest for Fenced {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Fenced {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Fenced {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::PlainTcp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn reads_stop_at_the_end_of_the_request_and_keep_the_next() {
        let (tcp, mut client) = PlainTcp::accepted().await;
        let mut fenced = Fenced::new(Box::new(tcp), Some(3));
        client.write_all(b"abcGET /next").await.unwrap();
        let mut got = [0u8; 16];
        let n = fenced.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"abc");
        // Past the end: pending, the bytes kept.
        let more = tokio::time::timeout(Duration::from_millis(100), fenced.read(&mut got)).await;
        assert!(more.is_err());
        let (_, next) = fenced.into_parts();
        assert_eq!(&next[..], b"GET /next");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_closes_is_seen_past_the_end() {
        let (tcp, client) = PlainTcp::accepted().await;
        let mut fenced = Fenced::new(Box::new(tcp), Some(0));
        drop(client);
        let mut got = [0u8; 4];
        assert_eq!(fenced.read(&mut got).await.unwrap(), 0);
    }
}
