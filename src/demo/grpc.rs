//! The demo's gRPC backend: `demo.Greeter/Hello` (see `conf/demo.proto`) over HTTP/2 without TLS,
//! answering `{message: "hello NAME", version: VERSION}` with `grpc-status` trailers, as a gRPC
//! server does. A name of `fail` gets UNAVAILABLE, to show a failing canary. It runs on the `h2`
//! crate Pingora itself uses; the two protobuf messages are small enough to encode here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// A gRPC backend running on its own thread; it stops when dropped.
pub struct RunningGrpc {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGrpc {
    /// Starts a greeter reporting `version` on `addr` (port 0 for any free port).
    pub fn start(version: &str, addr: &str) -> io::Result<RunningGrpc> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let version: &'static str = Box::leak(version.to_string().into_boxed_str());
        let thread = std::thread::Builder::new()
            .name(format!("grpc-{version}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept(listener, version) => {}
                        _ = rx => {}
                    }
                })
            })?;
        Ok(RunningGrpc {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for RunningGrpc {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(listener: TcpListener, version: &'static str) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((request, respond))) = conn.accept().await {
                tokio::spawn(call(request, respond, version));
            }
        });
    }
}

/// One call: reads the request message, answers with one message and `grpc-status` trailers.
async fn call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    version: &'static str,
) {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let mut received = BytesMut::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let head = |status: &str, message: &str| {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", status)
            .header("grpc-message", message)
            .body(())
    };
    if path != "/demo.Greeter/Hello" {
        if let Ok(h) = head("12", "unknown method") {
            let _ = respond.send_response(h, true);
        }
        return;
    }
    let name = unframe(&mut received)
        .and_then(|m| string_field(&m, 1))
        .unwrap_or_default();
    if name == "fail" {
        if let Ok(h) = head("14", &format!("{version} is failing on purpose")) {
            let _ = respond.send_response(h, true);
        }
        return;
    }
    let Ok(h) = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
    else {
        return;
    };
    let Ok(mut stream) = respond.send_response(h, false) else {
        return;
    };
    let mut reply = BytesMut::new();
    put_string(&mut reply, 1, &format!("hello {name}"));
    put_string(&mut reply, 2, version);
    let mut framed = BytesMut::with_capacity(5 + reply.len());
    framed.put_u8(0);
    framed.put_u32(reply.len() as u32);
    framed.extend_from_slice(&reply);
    let _ = stream.send_data(framed.freeze(), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// The first length-prefixed gRPC message of a body (uncompressed).
fn unframe(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 || buf[0] != 0 {
        return None;
    }
    buf.advance(1);
    let len = buf.get_u32() as usize;
    (buf.len() >= len).then(|| buf.split_to(len).freeze())
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// The string field `number` of a protobuf message (other fields skipped).
fn string_field(message: &[u8], number: u64) -> Option<String> {
    let mut buf = message;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let value = buf.get(..len)?;
                if key >> 3 == number {
                    return String::from_utf8(value.to_vec()).ok();
                }
                buf = &buf[len..];
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn put_string(out: &mut BytesMut, number: u64, value: &str) {
    let mut v = (number << 3) | 2;
    let mut len = value.len() as u64;
    for n in [&mut v, &mut len] {
        while *n >= 0x80 {
            out.put_u8((*n as u8) | 0x80);
            *n >>= 7;
        }
        out.put_u8(*n as u8);
    }
    out.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_the_protobuf_encoding() {
        let mut m = BytesMut::new();
        put_string(&mut m, 1, &"x".repeat(300));
        put_string(&mut m, 2, "v2");
        assert_eq!(string_field(&m, 1).as_deref(), Some(&*"x".repeat(300)));
        assert_eq!(string_field(&m, 2).as_deref(), Some("v2"));
        assert_eq!(string_field(&m, 3), None);
    }
}
