//! The floor under an idle HTTP/2 connection: a bare h2c server on the `h2` crate with Switchyard's
//! runtime settings (one thread, mimalloc) and its HTTP/2 settings (streams, header list, windows),
//! answering every stream `200 ok` itself. perf/idle_memory.py measures it beside Switchyard and
//! nginx (peer `bare-h2`), so that what the `h2` crate holds per connection and what Switchyard adds
//! to it can be told apart.
//!
//! Run: `cargo run --release --example bare_h2 -- LISTEN` (default 127.0.0.1:18084; loopback only.)

use bytes::Bytes;
use std::error::Error;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18084".to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (socket, _) = listener.accept().await?;
            tokio::spawn(connection(socket));
        }
    })
}

async fn connection(socket: tokio::net::TcpStream) {
    let limits = switchyard::config::Limits::default();
    let Ok(mut conn) = switchyard::front::http2_settings(&limits)
        .handshake::<_, Bytes>(socket)
        .await
    else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        let response = http::Response::builder().status(200).body(());
        let Ok(response) = response else { return };
        if let Ok(mut body) = respond.send_response(response, false) {
            let _ = body.send_data(Bytes::from_static(b"ok"), true);
        }
    }
}
